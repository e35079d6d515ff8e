"""The operator's CLI, ``edgeproof-provision``: fleets, devices, recipients, broker files.

A *fleet directory* holds everything an operator generates (layout in
:mod:`provisioning.fleet`): the gateway's signing key, admin token and broker credential,
the gateway's config, one bundle per device ready to be copied onto it, recipient keys, and
the Mosquitto password file and ACL derived from the device records.

Provisioning imports only :mod:`protocol`; it talks to the gateway over its HTTP API
(:mod:`provisioning.gateway_api`), never by importing it.
"""

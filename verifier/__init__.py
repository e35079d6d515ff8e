"""``edgeproof-verify``: offline verification for auditors and decryption for recipients.

Imports only :mod:`protocol`; talks to a gateway's public HTTP API and, for anchors, to an
Ethereum JSON-RPC node. Trusts neither: everything fetched is checked by ``protocol``.
"""

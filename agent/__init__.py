"""The on-device runtime: sensors, usage meter and credit, outbox, uplink, config, CLI.

Imports only :mod:`protocol` (never the gateway, never firmware_sim).
"""

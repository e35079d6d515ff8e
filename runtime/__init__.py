"""OS-facing helpers the runtime packages (agent, gateway) share, each written once.

Imports :mod:`protocol` and the standard library only (docs/ARCHITECTURE.md).
"""

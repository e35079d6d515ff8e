"""edgeproof's shared language: records, signatures, encryption, Merkle log, checkpoints.

Pure functions and frozen types; the only I/O is reading and writing secret key files
(:mod:`protocol.keys`). Nothing here imports the agent, the gateway or provisioning.
"""

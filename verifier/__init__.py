"""``edgeproof-verify``: offline verification for auditors and decryption for recipients.

Imports :mod:`protocol` and :mod:`osutil` only (never agent or gateway code: an auditor
trusts neither); talks to a gateway's public HTTP API and, for anchors, to an Ethereum
JSON-RPC node through :class:`osutil.jsonrpc.JsonRpc`. Trusts neither: everything fetched
is size-capped and checked by ``protocol``, which fails closed.
"""

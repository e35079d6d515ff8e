"""The one exception tree of edgeproof.

Every error edgeproof raises on purpose descends from :class:`EdgeproofError` and is
grouped by whose fault it is, so a caller can decide once what to do with a whole family:

- :class:`ConfigError`: the operator's input is wrong; fix the file or the flag.
- :class:`SensorReadError`: a sensor read failed; transient, counted, retried later.
- :class:`StorageError`: the local database or filesystem failed.
- :class:`TransportError`: the network or broker failed; transient, retry with back-off.
- :class:`RejectedByPeer`: the peer refused for good (bad credentials, not authorised,
  a record rejected with a reason code); never retried unchanged.
- :class:`VerificationError`: a signature, proof or format check failed. Verification
  fails closed: callers get a value or this exception, never a bool.

Library exceptions (nacl, paho, sqlite3) never cross a public API: they are caught at the
edge of the module that uses the library and re-raised as one of these.
"""

from __future__ import annotations


class EdgeproofError(Exception):
    """Root of every error edgeproof raises on purpose."""


class ConfigError(EdgeproofError):
    """Configuration or operator input is invalid; the message names the key."""


class KeyFileError(ConfigError):
    """A key file is missing, malformed, or readable by group or others."""


class SensorReadError(EdgeproofError):
    """A sensor could not produce a fresh reading (transient)."""

    def __init__(self, sensor: str, reason: str) -> None:
        super().__init__(f"{sensor}: {reason}")
        self.sensor = sensor
        self.reason = reason


class StorageError(EdgeproofError):
    """The local store (SQLite, files) failed."""


class TransportError(EdgeproofError):
    """The network or the broker failed (transient: retry with back-off)."""


class RejectedByPeer(EdgeproofError):
    """The peer refused permanently (bad credentials, not authorised, rejected record)."""


class VerificationError(EdgeproofError):
    """A signature, proof, checkpoint or format check failed (fail closed)."""


class MalformedRecord(VerificationError):
    """Bytes that do not decode to a well-formed edgeproof object.

    ``reason`` is a short stable code (for example ``"cbor_depth"``) that callers may count.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RejectedDocument(VerificationError):
    """A well-formed, validly signed document that breaks a rule (not the owner's device, a
    consent wider than its request, a stale revocation counter, ...).

    ``reason`` is a code of :class:`protocol.reasons.DocumentReason`.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

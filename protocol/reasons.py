"""Reason codes: why the gateway rejected a record, or why the agent dropped one.

Every rejection and drop carries one of these stable codes. They are counted per code in
``/metrics`` and ``status``, sent back to the device in receipts, and documented in
docs/PROTOCOL.md ("Reason codes"). Add codes; never change the meaning of one.

The codes are :class:`enum.StrEnum` members: code that decides takes and returns the enum,
so a misspelt code is a type error; the wire carries the member's value (a text string),
and what arrives from the wire stays a plain ``str``, since a newer peer may send a code
this version does not know. The module-level names are the members under their old names.
"""

from __future__ import annotations

from enum import StrEnum, unique
from typing import Final


@unique
class Reason(StrEnum):
    """Why the gateway rejected a record (sent in receipts; permanent for that record)."""

    MALFORMED = "malformed"                # bytes are not a well-formed signed record
    TOO_LARGE = "too_large"                # over a size cap
    BAD_SIGNATURE = "bad_signature"        # signature does not verify under the device key
    UNKNOWN_DEVICE = "unknown_device"      # kid is not a registered device
    REVOKED_DEVICE = "revoked_device"      # the device was revoked
    WRONG_TOPIC = "wrong_topic"            # signer differs from the device in the topic
    EQUIVOCATION = "equivocation"          # another record already holds this sequence number
    CHAIN_MISMATCH = "chain_mismatch"      # prev hash disagrees with the neighbouring record
    FUTURE_TIMESTAMP = "future_timestamp"  # synced wall clock beyond the allowed skew
    USAGE_OVERLAP = "usage_overlap"        # usage interval overlaps an earlier one
    USAGE_TOO_LONG = "usage_too_long"      # more usage than elapsed time
    USAGE_FUTURE = "usage_future"          # interval ends after the record was made
    RATE_MISMATCH = "rate_mismatch"        # claimed rate differs from the device's policy
    BAD_ROTATION = "bad_rotation"          # key rotation not acceptable


@unique
class DropReason(StrEnum):
    """Why the agent dropped records before sending (declared to the gateway in gaps)."""

    OUTBOX_FULL = "outbox_full"        # the outbox byte cap applied its full policy
    OUTBOX_CORRUPT = "outbox_corrupt"  # the outbox database was unreadable and moved aside
    UNCLEAN_REBOOT = "unclean_reboot"  # a power cut or kernel crash lost uncommitted numbers
    REVOKED = "revoked"                # unsent records of a grant its owner revoked


@unique
class DocumentReason(StrEnum):
    """Why a signed document (request, consent, revocation) was refused, by the gateway or
    by a device; counted per code in ``/metrics`` and the agent's status."""

    MALFORMED = "malformed"                    # not a well-formed document (or nested too deep)
    TOO_LARGE = "too_large"                    # over the document size cap
    BAD_SIGNATURE = "bad_signature"            # signature does not verify under its signer key
    UNKNOWN_SIGNER = "unknown_signer"          # a request from a recipient not registered
    NOT_OWNER = "not_owner"                    # signer is not the owner of the device(s)
    UNKNOWN_DEVICE = "unknown_device"          # a named device is not registered (or revoked)
    UNKNOWN_STREAM = "unknown_stream"          # a stream the device does not have
    UNKNOWN_REQUEST = "unknown_request"        # consent for a request that was never logged
    REQUEST_EXPIRED = "request_expired"        # consent for a request whose period has ended
    WIDER_THAN_REQUEST = "wider_than_request"  # consent grants more than the request asked
    NOT_TARGETED = "not_targeted"              # consent for a device the request did not target
    UNKNOWN_CONSENT = "unknown_consent"        # revocation of a consent that was never logged
    STALE_COUNTER = "stale_counter"            # revocation counter not above the last one
    DUPLICATE = "duplicate"                    # this exact document is already logged
    WRONG_TYPE = "wrong_type"                  # a document type not accepted here
    UNSIGNED_POLICY = "unsigned_policy"        # a device got a document its owner did not sign
    # Refused by a device only (agent/policy.py):
    NO_OWNER_KEY = "no_owner_key"              # the device pins no owner key: it applies none
    OTHER_DEVICE = "other_device"              # a consent that does not name this device
    CONSENT_EXPIRED = "consent_expired"        # a consent whose period has provably ended
    CONSENT_REVOKED = "consent_revoked"        # a consent its owner already revoked (a replay)
    GRANTS_FULL = "grants_full"                # the device's grant book is at its cap
    NO_LAPSE_TERM = "no_lapse_term"            # a lapse notice for a consent without the term
    # quality attestations (docs/PROTOCOL.md §20)
    UNKNOWN_LEAF = "unknown_leaf"              # a leaf that is no record of that device/stream
    NOT_READABLE = "not_readable"              # names a record the validator was not granted
    OUTSIDE_WINDOW = "outside_window"          # names a record made outside the attested window
    CONFLICTING = "conflicting"                # another attestation of this validator, site, window


MALFORMED: Final = Reason.MALFORMED
TOO_LARGE: Final = Reason.TOO_LARGE
BAD_SIGNATURE: Final = Reason.BAD_SIGNATURE
UNKNOWN_DEVICE: Final = Reason.UNKNOWN_DEVICE
REVOKED_DEVICE: Final = Reason.REVOKED_DEVICE
WRONG_TOPIC: Final = Reason.WRONG_TOPIC
EQUIVOCATION: Final = Reason.EQUIVOCATION
CHAIN_MISMATCH: Final = Reason.CHAIN_MISMATCH
FUTURE_TIMESTAMP: Final = Reason.FUTURE_TIMESTAMP
USAGE_OVERLAP: Final = Reason.USAGE_OVERLAP
USAGE_TOO_LONG: Final = Reason.USAGE_TOO_LONG
USAGE_FUTURE: Final = Reason.USAGE_FUTURE
RATE_MISMATCH: Final = Reason.RATE_MISMATCH
BAD_ROTATION: Final = Reason.BAD_ROTATION

GATEWAY_REASONS: Final = frozenset(Reason)

OUTBOX_FULL: Final = DropReason.OUTBOX_FULL
OUTBOX_CORRUPT: Final = DropReason.OUTBOX_CORRUPT
UNCLEAN_REBOOT: Final = DropReason.UNCLEAN_REBOOT
REVOKED: Final = DropReason.REVOKED

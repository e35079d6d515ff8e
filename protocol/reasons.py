"""Reason codes: why the gateway rejected a record, or why the agent dropped one.

Every rejection and drop carries one of these stable codes. They are counted per code in
``/metrics`` and ``status``, sent back to the device in receipts, and documented in
docs/PROTOCOL.md ("Reason codes"). Add codes; never change the meaning of one.
"""

from __future__ import annotations

from typing import Final

# Rejected by the gateway (sent in receipts; permanent for that record).
MALFORMED: Final = "malformed"                # bytes are not a well-formed signed record
TOO_LARGE: Final = "too_large"                # over a size cap
BAD_SIGNATURE: Final = "bad_signature"        # signature does not verify under the device key
UNKNOWN_DEVICE: Final = "unknown_device"      # kid is not a registered device
REVOKED_DEVICE: Final = "revoked_device"      # the device was revoked
WRONG_TOPIC: Final = "wrong_topic"            # signer differs from the device in the topic
EQUIVOCATION: Final = "equivocation"          # another record already holds this sequence number
CHAIN_MISMATCH: Final = "chain_mismatch"      # prev hash disagrees with the neighbouring record
FUTURE_TIMESTAMP: Final = "future_timestamp"  # synced wall clock beyond the allowed skew
USAGE_OVERLAP: Final = "usage_overlap"        # usage interval overlaps an earlier one
USAGE_TOO_LONG: Final = "usage_too_long"      # more usage than elapsed time
USAGE_FUTURE: Final = "usage_future"          # interval ends after the record was made
RATE_MISMATCH: Final = "rate_mismatch"        # claimed rate differs from the device's policy
BAD_ROTATION: Final = "bad_rotation"          # key rotation not acceptable

GATEWAY_REASONS: Final = frozenset({
    MALFORMED, TOO_LARGE, BAD_SIGNATURE, UNKNOWN_DEVICE, REVOKED_DEVICE, WRONG_TOPIC,
    EQUIVOCATION, CHAIN_MISMATCH, FUTURE_TIMESTAMP, USAGE_OVERLAP, USAGE_TOO_LONG,
    USAGE_FUTURE, RATE_MISMATCH, BAD_ROTATION,
})

# Dropped by the agent before sending (declared to the gateway in gap records).
OUTBOX_FULL: Final = "outbox_full"            # the outbox byte cap applied its full policy
OUTBOX_CORRUPT: Final = "outbox_corrupt"      # the outbox database was unreadable and moved aside

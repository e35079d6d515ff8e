"""The gateway's signed payout notice for one owner (document type ``"payout_notice"``).

After an epoch's root is on chain (docs/PROTOCOL.md §19.2), the gateway answers
``GET /v1/payouts/notice/{owner id}`` with this document, signed with its gateway key (the
key devices pin for receipts): the owner's bound address, the cumulative amount the posted
root gives that address and what the distributor says was claimed so far, in micro-credits.
A device shows it to its owner (Home Assistant, docs/AGENT.md) only after
:func:`verify_payout_notice`: signed by the pinned gateway key, for the pinned owner. It is
never logged and nothing a device signs depends on it. Body (PROTOCOL.md §19.5):

    1  owner           bstr 16, the owner id (signer id of the owner key)
    2  epoch           uint, the posted epoch the amount comes from
    3  address         bstr 20, the owner's bound address
    4  entitled_micro  uint, the address's cumulative amount in that root, in micro-credits
    5  claimed_micro   uint, OPTIONAL: ``claimed(address)`` as the gateway read it when
                       signing, in micro-credits (absent: the chain did not answer)
    6  chain_id        uint
    7  distributor     bstr 20
    8  root            bstr 32, the epoch's root
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import cbor
from protocol.document_envelope import (
    Document,
    register_body,
    require_bytes,
    require_map,
    require_uint,
    verify_document,
)
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import SIGNER_ID_BYTES, signer_id

PAYOUT_NOTICE = "payout_notice"
ADDRESS_BYTES = 20


def _uint(value: cbor.Value, name: str) -> int:
    require_uint(value, name)
    assert isinstance(value, int)
    return value


@dataclass(frozen=True)
class PayoutNotice:
    """What an owner can claim, as the gateway read it at one posted epoch."""

    TYPE = PAYOUT_NOTICE
    owner: bytes
    epoch: int
    address: bytes
    entitled_micro: int
    claimed_micro: int | None
    chain_id: int
    distributor: bytes
    root: bytes

    def __post_init__(self) -> None:
        require_bytes(self.owner, "owner", SIGNER_ID_BYTES)
        require_bytes(self.address, "address", ADDRESS_BYTES)
        require_bytes(self.distributor, "distributor", ADDRESS_BYTES)
        require_bytes(self.root, "root", 32)
        for name in ("epoch", "entitled_micro", "chain_id"):
            require_uint(getattr(self, name), name)
        if self.claimed_micro is not None:
            require_uint(self.claimed_micro, "claimed_micro")

    @property
    def claimable_micro(self) -> int | None:
        """What the address can still claim (None when the claimed amount is unknown)."""
        if self.claimed_micro is None:
            return None
        return max(0, self.entitled_micro - self.claimed_micro)

    def to_cbor_value(self) -> cbor.Value:
        body: dict[cbor.Value, cbor.Value] = {
            1: self.owner, 2: self.epoch, 3: self.address, 4: self.entitled_micro,
            6: self.chain_id, 7: self.distributor, 8: self.root}
        if self.claimed_micro is not None:
            body[5] = self.claimed_micro
        return body

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> PayoutNotice:
        m = require_map(value, frozenset({1, 2, 3, 4, 6, 7, 8}), frozenset({5}))
        return cls(require_bytes(m[1], "owner", SIGNER_ID_BYTES), _uint(m[2], "epoch"),
                   require_bytes(m[3], "address", ADDRESS_BYTES),
                   _uint(m[4], "entitled_micro"),
                   _uint(m[5], "claimed_micro") if 5 in m else None,
                   _uint(m[6], "chain_id"), require_bytes(m[7], "distributor", ADDRESS_BYTES),
                   require_bytes(m[8], "root", 32))


register_body(PAYOUT_NOTICE, PayoutNotice.from_cbor_value)


def verify_payout_notice(data: bytes, gateway_key: bytes, owner_key: bytes) -> PayoutNotice:
    """Verify a notice under ``gateway_key`` and check it is for the owner of ``owner_key``;
    return its body. Raises MalformedRecord or VerificationError (fails closed)."""
    doc: Document = verify_document(data, gateway_key, PAYOUT_NOTICE)
    body = doc.body
    if not isinstance(body, PayoutNotice):
        raise MalformedRecord("bad_document", "not a payout notice body")
    if body.owner != signer_id(owner_key):
        raise VerificationError("the payout notice is for another owner")
    return body

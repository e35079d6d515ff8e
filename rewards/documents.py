"""The reward documents: an owner's wallet binding and the gateway's payout epoch.

Bodies of :mod:`protocol.document_envelope` (docs/PROTOCOL.md §19), registered on import:

- :class:`WalletBinding` (type ``"wallet"``), signed by an OWNER key: the Ethereum address
  the owner's payouts go to. The owner it binds is the signer (its owner id); in the
  gateway's balances table an owner with a key is named by its owner id in lowercase hex
  (32 characters), so a binding can only ever name its own signer's balance.
- :class:`PayoutEpoch` (type ``"payout_epoch"``), signed by the GATEWAY key: epoch number,
  the checkpoint it was computed at (size and SHA-256 of its balances table), the root and
  total of the cumulative amounts, the chain, the distributor and the rate; optionally (key
  14) the block the distributor was deployed in, where a verifier starts reading its events.

Amounts in documents are micro-credits (uint64, like the balances table); token base units
are ``micro x rate`` (:data:`BASE_UNITS_PER_MICRO`), computed where they are needed.
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
)
from protocol.documents import verify_document
from protocol.errors import MalformedRecord, VerificationError
from protocol.keys import SIGNER_ID_BYTES, signer_id

WALLET, PAYOUT_EPOCH = "wallet", "payout_epoch"
# 1 credit = 1,000,000 micro-credits = 1 token = 10**18 base units (18 decimals).
BASE_UNITS_PER_MICRO = 10**12
ADDRESS_BYTES = 20
MAX_VALIDATORS = 64  # trusted quality validators an epoch names (key 13)


def owner_name(owner_id: bytes) -> str:
    """The owner string the balances table uses for an owner id: lowercase hex."""
    return owner_id.hex()


@dataclass(frozen=True)
class WalletBinding:
    """An owner's signed binding of its payouts to an Ethereum address (type ``"wallet"``)."""

    TYPE = WALLET
    owner: bytes  # the owner id (signer id of the owner key); must be the signer's
    address: bytes  # 20 bytes
    chain_id: int

    def to_cbor_value(self) -> cbor.Value:
        return {1: self.owner, 2: self.address, 3: self.chain_id}

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> WalletBinding:
        body = require_map(value, frozenset({1, 2, 3}))
        require_uint(body[3], "chain_id")
        chain_id = body[3]
        assert isinstance(chain_id, int)
        return cls(require_bytes(body[1], "owner", SIGNER_ID_BYTES),
                   require_bytes(body[2], "address", ADDRESS_BYTES), chain_id)

    @property
    def checksum_address(self) -> str:
        """The address in 0x EIP-55 form."""
        from eth_utils.address import to_checksum_address  # noqa: PLC0415 - only here

        return str(to_checksum_address(self.address))


@dataclass(frozen=True)
class PayoutEpoch:
    """The gateway's signed statement of one distribution epoch (type ``"payout_epoch"``)."""

    TYPE = PAYOUT_EPOCH
    epoch: int
    checkpoint_size: int
    balances_hash: bytes  # SHA-256 of the checkpoint's canonical balances table
    root: bytes  # the distribution tree's root
    total_micro: int  # sum of the cumulative amounts, in micro-credits
    owners: int  # leaves of the tree
    locked_micro: int  # settled credit of owners with no wallet binding (not in the tree)
    chain_id: int
    distributor: bytes  # 20 bytes
    rate: int  # token base units per micro-credit
    wallets: int  # how many wallet bindings (the first, in the order logged) it used
    # Consent-gated epochs (§19.4) only: the block up to which Funded events were read.
    funding_block: int | None = None
    # Consent-gated epochs that follow quality (§19.4 rule 5): the trusted validators' signer
    # ids, sorted; empty: no verdict counts (key 13 absent).
    validators: tuple[bytes, ...] = ()
    # The block the distributor was deployed in (key 14; None: not stated, events are read
    # from block 0). A verifier checks it on chain before reading from it (§19.2).
    distributor_block: int | None = None

    def __post_init__(self) -> None:
        if list(self.validators) != sorted(set(self.validators)) \
                or len(self.validators) > MAX_VALIDATORS:
            raise MalformedRecord("bad_document", "validators must be sorted, unique, "
                                  f"at most {MAX_VALIDATORS}")
        for validator in self.validators:
            require_bytes(validator, "validator", SIGNER_ID_BYTES)

    def to_cbor_value(self) -> cbor.Value:
        body: dict[cbor.Value, cbor.Value] = {
            1: self.epoch, 2: self.checkpoint_size, 3: self.balances_hash, 4: self.root,
            5: self.total_micro, 6: self.owners, 7: self.locked_micro, 8: self.chain_id,
            9: self.distributor, 10: self.rate, 11: self.wallets}
        if self.funding_block is not None:
            body[12] = self.funding_block
        if self.validators:
            body[13] = list(self.validators)
        if self.distributor_block is not None:
            body[14] = self.distributor_block
        return body

    @classmethod
    def from_cbor_value(cls, value: cbor.Value) -> PayoutEpoch:
        body = require_map(value, frozenset(range(1, 12)), optional=frozenset({12, 13, 14}))
        validators = body.get(13, [])
        if not isinstance(validators, list) or (13 in body and not validators):
            raise MalformedRecord("bad_document", "validators must be a non-empty array")
        ints = {}
        for key, name in ((1, "epoch"), (2, "checkpoint_size"), (5, "total_micro"),
                          (6, "owners"), (7, "locked_micro"), (8, "chain_id"), (10, "rate"),
                          (11, "wallets"), *(((12, "funding_block"),) if 12 in body else ()),
                          *(((14, "distributor_block"),) if 14 in body else ())):
            require_uint(body[key], name)
            number = body[key]
            assert isinstance(number, int)
            ints[name] = number
        return cls(balances_hash=require_bytes(body[3], "balances_hash", 32),
                   root=require_bytes(body[4], "root", 32),
                   distributor=require_bytes(body[9], "distributor", ADDRESS_BYTES),
                   validators=tuple(require_bytes(v, "validator", SIGNER_ID_BYTES)
                                    for v in validators), **ints)

    @property
    def total_base_units(self) -> int:
        """The total in token base units (what postRoot is given)."""
        return self.total_micro * self.rate


register_body(WALLET, WalletBinding.from_cbor_value)
register_body(PAYOUT_EPOCH, PayoutEpoch.from_cbor_value)


def verify_wallet_binding(data: bytes) -> tuple[Document, WalletBinding]:
    """Verify a wallet binding; raise MalformedRecord/VerificationError.

    The binding must be signed by the owner it names (its owner id is the signer id).
    """
    doc = verify_document(data, expected_type=WALLET)
    body = doc.body
    assert isinstance(body, WalletBinding)
    if body.owner != signer_id(doc.signer):
        raise VerificationError("wallet binding names another owner than its signer")
    return doc, body


def verify_payout_epoch(data: bytes, gateway_key: bytes) -> tuple[Document, PayoutEpoch]:
    """Verify a payout epoch signed by ``gateway_key``; raise MalformedRecord/VerificationError."""
    doc = verify_document(data, expected_signer=gateway_key, expected_type=PAYOUT_EPOCH)
    body = doc.body
    assert isinstance(body, PayoutEpoch)
    return doc, body

"""The payout endpoints: wallet bindings in, epochs, trees and claim proofs out (all public).

``POST /v1/wallets`` takes an owner's signed wallet binding (hex of its COSE bytes); the
signature and "signed by the owner it binds" are checked before anything is stored, and a
refusal answers 400/409 with one line and is counted by reason. Everything else is
read-only. Without a ``[payout]`` section every endpoint answers 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

from eth_utils.address import to_checksum_address
from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.payout import PayoutWorker, WalletRefused
from gateway.payout_book import StoredEpoch
from gateway.store import MAX_PAGE, MAX_STORED_INT
from protocol.documents import parse_document
from protocol.payout_notice import PayoutNotice
from rewards.documents import PayoutEpoch, WalletBinding, owner_name
from rewards.tree import checked_address

MAX_DOCUMENT_HEX = 2 * 8 * 1024
_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
_OWNER_ID = r"^[0-9a-f]{32}$"


class WalletIn(BaseModel):
    document: str = Field(max_length=MAX_DOCUMENT_HEX, pattern=r"^([0-9a-f]{2})+$",
                          description="the signed wallet binding (COSE_Sign1), hex")


class WalletOut(BaseModel):
    owner: str
    address: str
    leaf_index: int = Field(description="where the binding sits in the log")
    document: str


class EpochOut(BaseModel):
    epoch: int
    status: str
    checkpoint_size: int
    leaf_index: int | None = Field(description="where the epoch document sits in the log")
    root: str
    total_micro: int
    total_base_units: str
    owners: int
    locked_micro: int
    tx_hash: str | None
    block_number: int | None
    detail: str | None
    document: str = Field(description="the gateway-signed payout_epoch document, hex")
    checkpoint_note: str = Field(description="the signed checkpoint it was computed at")
    balances: str = Field(description="that checkpoint's canonical balances table, hex")


class NoticeOut(BaseModel):
    owner: str = Field(description="the owner id (hex)")
    epoch: int
    address: str
    entitled_micro: int = Field(description="the address's cumulative amount in the posted "
                                "root, in micro-credits")
    claimed_micro: int | None = Field(description="claimed(address) on the distributor when "
                                      "signed; null if the chain did not answer")
    claimable_micro: int | None
    document: str = Field(description="the gateway-signed payout_notice document, hex "
                          "(PROTOCOL.md §19.5); the rest repeats it for people")


class ProofOut(BaseModel):
    epoch: int
    root: str
    address: str
    amount: str = Field(description="cumulative amount in token base units (decimal)")
    proof: list[str]
    distributor: str
    chain_id: int


def _epoch_out(epoch: StoredEpoch) -> EpochOut:
    body = parse_document(epoch.document).body
    assert isinstance(body, PayoutEpoch)
    return EpochOut(epoch=epoch.epoch, status=epoch.status, checkpoint_size=epoch.checkpoint_size,
                    leaf_index=epoch.leaf_index,
                    root="0x" + body.root.hex(), total_micro=body.total_micro,
                    total_base_units=str(body.total_base_units), owners=body.owners,
                    locked_micro=body.locked_micro, tx_hash=epoch.tx_hash,
                    block_number=epoch.block_number, detail=epoch.detail,
                    document=epoch.document.hex(), checkpoint_note=epoch.note,
                    balances=epoch.balances.hex())


def payout_routes(app: FastAPI, worker: PayoutWorker | None,
                  wall_ms: Callable[[], int]) -> None:
    """Add the payout endpoints to ``app``."""

    def configured() -> PayoutWorker:
        if worker is None:
            raise HTTPException(404, "payouts are not configured on this gateway")
        return worker

    _wallet_routes(app, configured, wall_ms)
    _epoch_routes(app, configured)


def _wallet_routes(app: FastAPI, configured: Callable[[], PayoutWorker],
                   wall_ms: Callable[[], int]) -> None:

    @app.post("/v1/wallets", status_code=201, response_model=WalletOut, tags=["payout"],
              summary="Submit an owner's signed wallet binding (logged as a leaf)")
    def add_wallet(body: WalletIn) -> WalletOut:
        payout = configured()
        raw = bytes.fromhex(body.document)
        try:
            binding, index = payout.bind_wallet(raw)
        except WalletRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return WalletOut(owner=owner_name(binding.owner), address=binding.checksum_address,
                         leaf_index=index, document=raw.hex())

    @app.get("/v1/wallets", response_model=list[WalletOut], tags=["payout"],
             summary="The wallet bindings with their signed bytes, a page at a time",
             description="Bindings logged after leaf `after`, in log order, at most `limit`; "
             "the next page starts after the last `leaf_index` returned. A page shorter than "
             "`limit` is the last.")
    def wallets(after: Annotated[int, Query(ge=-1, le=MAX_STORED_INT)] = -1,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
                ) -> list[WalletOut]:
        payout = configured()
        out = []
        # Read, not verified again: each was verified before it was logged, and a public
        # listing must not cost a signature check a binding.
        for index, raw in payout.book.wallet_documents(after, limit):
            binding = parse_document(raw).body
            assert isinstance(binding, WalletBinding)
            out.append(WalletOut(owner=owner_name(binding.owner), leaf_index=index,
                                 address=binding.checksum_address, document=raw.hex()))
        return out



def _epoch_routes(app: FastAPI, configured: Callable[[], PayoutWorker]) -> None:
    @app.get("/v1/payouts/latest", response_model=EpochOut, tags=["payout"],
             summary="The latest epoch whose root is on chain")
    def latest() -> EpochOut:
        found = configured().posted_tree()
        if found is None:
            raise HTTPException(404, "no epoch has been posted yet")
        return _epoch_out(found[0])

    @app.get("/v1/payouts/epochs/{epoch}", response_model=EpochOut, tags=["payout"],
             summary="One epoch: its signed document and the state of its root post")
    def epoch(epoch: Annotated[int, Path(ge=1, le=MAX_STORED_INT)]) -> EpochOut:
        stored = configured().book.get(epoch)
        if stored is None:
            raise HTTPException(404, f"no epoch {epoch}")
        return _epoch_out(stored)

    @app.get("/v1/payouts/epochs/{epoch}/tree", tags=["payout"],
             summary="The epoch's tree as an OpenZeppelin StandardMerkleTree dump")
    def tree(epoch: Annotated[int, Path(ge=1, le=MAX_STORED_INT)]) -> JSONResponse:
        stored = configured().book.get(epoch)
        if stored is None:
            raise HTTPException(404, f"no epoch {epoch}")
        return JSONResponse(json.loads(stored.tree))

    @app.get("/v1/payouts/notice/{owner}", response_model=NoticeOut, tags=["payout"],
             summary="An owner's signed payout notice: entitled, claimed and claimable in "
             "the latest posted epoch")
    def notice(owner: Annotated[str, Path(pattern=_OWNER_ID)]) -> NoticeOut:
        doc = configured().notice(bytes.fromhex(owner))
        if doc is None:
            raise HTTPException(404, f"owner {owner} has no bound wallet with an amount in a "
                                "posted epoch")
        body = doc.body
        assert isinstance(body, PayoutNotice)
        return NoticeOut(owner=owner, epoch=body.epoch,
                         address=to_checksum_address(body.address),
                         entitled_micro=body.entitled_micro, claimed_micro=body.claimed_micro,
                         claimable_micro=body.claimable_micro, document=doc.raw.hex())

    @app.get("/v1/payouts/proof/{address}", response_model=ProofOut, tags=["payout"],
             summary="An address's cumulative amount and proof in the latest posted epoch")
    def proof(address: Annotated[str, Path(pattern=_ADDRESS)]) -> ProofOut:
        payout = configured()
        found = payout.posted_tree()
        if found is None:
            raise HTTPException(404, "no epoch has been posted yet")
        stored, distribution = found
        try:
            checked = checked_address(address)
            leaf = distribution.leaf(checked)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except KeyError:
            raise HTTPException(404, f"{address} has no amount in epoch {stored.epoch}") from None
        return ProofOut(epoch=stored.epoch, root="0x" + distribution.root.hex(),
                        address=leaf.address, amount=str(leaf.amount),
                        proof=["0x" + p.hex() for p in distribution.proof(checked)],
                        distributor=payout.config.distributor, chain_id=payout.config.chain_id)

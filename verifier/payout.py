"""Recompute a payout epoch from the log and compare it with the root on chain.

Trusting neither the gateway nor the node: the epoch document must be signed by the
gateway key and be a leaf of the gateway's latest checkpoint; the checkpoint it names must
be signed by that key and commit (its ``balances`` line) to the balances table served with
it; the bindings logged below that checkpoint's size must each be signed by the owner they
bind (the first of an owner counts), be leaves of that checkpoint's tree (inclusion proofs)
and be ``wallets`` in number. From those alone the tree is rebuilt (:mod:`rewards.epoch`,
:mod:`rewards.tree`); its root, total and locked credit must be the document's, and the
distributor's ``RootPosted`` event for that epoch must carry the same root and total.
A consent-gated epoch's consents, revocations, lapse notices, usage records and quality
verdicts are each proven to be leaves of that checkpoint, every listing is checked complete
against a scan of the log below it (:mod:`verifier.proven`; ``scan=False`` proves inclusion
only), and the checkpoint must be consistent with the latest one (a consistency proof: one
log, not a fork served for the epoch). Lapse notices are checked against the chain
(verifier/gating.py). The distributor's events are read from block 0, or from the deployment
block the epoch states (key 14) once a transaction of that block is shown to have created
the distributor (:func:`rewards.funding.check_deployed_in`): a later block would hide events.
Every mismatch raises VerificationError; an epoch document no checkpoint covers yet raises
TransportError (exit 2: try again).
"""

from __future__ import annotations

import base64
import hashlib

from osutil.jsonrpc import JsonRpc
from protocol import merkle
from protocol.checkpoint import Checkpoint
from protocol.errors import TransportError, VerificationError
from protocol.note import NoteVerifier
from rewards import distributor as abi
from rewards.documents import owner_name, verify_payout_epoch, verify_wallet_binding
from rewards.epoch import decode_balances, epoch_amounts, gated_amounts
from rewards.funding import check_deployed_in
from verifier.client import DocumentClient, GatewayClient
from verifier.gating import Chain, funded_at, gated_from_log
from verifier.proven import ProvenLog


def verify_payout(client: DocumentClient, gateway_key: str, rpc: JsonRpc,
                  epoch: int | None = None, *, scan: bool = True) -> dict[str, object]:
    """Recompute an epoch (None: the latest posted); return what was checked, or raise.

    ``scan``: read every leaf below the epoch's checkpoint so that no listing can hide a
    leaf (1,000 a request); without it each leaf used is still proven included."""
    verifier = NoteVerifier.from_text(gateway_key)
    raw, leaf_index, note, balances = client.payout_epoch(epoch)
    _, body = verify_payout_epoch(raw, verifier.public_key)
    latest = _check_logged(client, verifier, raw, leaf_index)
    checkpoint = Checkpoint.from_note(note, verifier)
    digest = hashlib.sha256(balances).digest()
    if checkpoint.size != body.checkpoint_size or digest != body.balances_hash:
        raise VerificationError("epoch names another checkpoint than the one served with it")
    if f"balances {base64.b64encode(digest).decode()}" not in checkpoint.extensions:
        raise VerificationError("the checkpoint does not commit to the served balances table")
    _check_consistent(client, checkpoint, latest)
    wallets: dict[str, str] = {}
    for index, binding_raw in sorted(client.wallet_bindings()):
        if index >= checkpoint.size:
            continue  # logged after the checkpoint: a later epoch's
        _, binding = verify_wallet_binding(binding_raw)
        merkle.verify_inclusion(merkle.leaf_hash(binding_raw), index, checkpoint.size,
                                client.inclusion_proof(index, checkpoint.size),
                                checkpoint.root_hash)
        if binding.chain_id != body.chain_id:
            raise VerificationError("a wallet binding is for another chain")
        wallets.setdefault(owner_name(binding.owner), binding.checksum_address)
    if len(wallets) != body.wallets:
        raise VerificationError(f"epoch used {body.wallets} wallet bindings, the gateway "
                                f"serves {len(wallets)} logged below size {checkpoint.size}")
    if rpc.chain_id() != body.chain_id:
        raise VerificationError(f"node is on chain {rpc.chain_id()}, epoch on {body.chain_id}")
    distributor = "0x" + body.distributor.hex()
    first = 0  # no deployment block stated (a gateway before key 14): from genesis
    if body.distributor_block is not None:
        check_deployed_in(rpc, distributor, body.distributor_block)
        first = body.distributor_block
    if body.funding_block is None:
        amounts = epoch_amounts(decode_balances(balances), wallets)
    else:  # consent-gated (§19.4): from the consents, revocations, usage and Funded events
        funded = funded_at(rpc, distributor, body.funding_block, body.rate, from_block=first)
        chain = Chain(rpc, distributor, body.rate, body.chain_id, first)
        log = ProvenLog(client, checkpoint, scan=scan)
        gated = gated_from_log(log, funded, gateway=verifier.public_key, chain=chain,
                               trusted=body.validators)
        amounts = gated_amounts(gated.owners, sum(m for _, m in decode_balances(balances)),
                                wallets)
    root = amounts.tree().root
    if (root, amounts.total_micro, amounts.locked_micro) != (
            body.root, body.total_micro, body.locked_micro):
        raise VerificationError(f"recomputed root 0x{root.hex()} / total {amounts.total_micro} "
                                f"differ from the epoch's 0x{body.root.hex()} / "
                                f"{body.total_micro}")
    posted = _posted_root(rpc, distributor, body.epoch, first)
    if posted != (body.root, body.total_base_units):
        raise VerificationError(f"the distributor holds no root {body.root.hex()} with total "
                                f"{body.total_base_units} for epoch {body.epoch}")
    return {"epoch": body.epoch, "checkpoint_size": body.checkpoint_size,
            "root": "0x" + root.hex(), "owners": len(amounts.values),
            "total_micro": amounts.total_micro, "locked_micro": amounts.locked_micro,
            "distributor": distributor, "chain_id": body.chain_id,
            "distributor_block": body.distributor_block,
            "consent_gated": body.funding_block is not None,
            "log_scanned": body.funding_block is not None and scan,
            "quality_validators": [v.hex() for v in body.validators]}


def _check_logged(client: GatewayClient, verifier: NoteVerifier, raw: bytes,
                  leaf_index: int | None) -> Checkpoint:
    """The epoch document must be a leaf of the gateway's latest checkpoint (returned)."""
    latest = Checkpoint.from_note(client.checkpoint(), verifier)
    if leaf_index is None or leaf_index >= latest.size:
        raise TransportError("the epoch document is not covered by a checkpoint yet; "
                             "try again after the next checkpoint")
    merkle.verify_inclusion(merkle.leaf_hash(raw), leaf_index, latest.size,
                            client.inclusion_proof(leaf_index, latest.size), latest.root_hash)
    return latest


def _check_consistent(client: GatewayClient, old: Checkpoint, new: Checkpoint) -> None:
    """The epoch's checkpoint must be a prefix of the latest one: the epoch was computed on
    the log whose later leaf holds it, not on a fork served for the purpose."""
    if old.size > new.size:
        raise VerificationError(f"the epoch's checkpoint (size {old.size}) is ahead of the "
                                f"latest one (size {new.size})")
    if old.size == 0:
        return
    try:
        merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash,
                                  client.consistency_proof(old.size, new.size))
    except VerificationError as exc:
        raise VerificationError(f"the epoch's checkpoint (size {old.size}) is not a prefix "
                                f"of the latest one (size {new.size}): {exc}") from None


def _posted_root(rpc: JsonRpc, distributor: str, epoch: int,
                 first: int) -> tuple[bytes, int] | None:
    """The (root, total) of the distributor's RootPosted event for ``epoch`` in blocks
    ``first``.. the head, or None."""
    topic = "0x" + epoch.to_bytes(32, "big").hex()
    for entry in rpc.logs(distributor, abi.ROOT_POSTED, first, rpc.block_number()):
        topics = entry.get("topics") or []
        if len(topics) == 2 and str(topics[1]).lower() == topic:
            data = bytes.fromhex(str(entry.get("data", ""))[2:])
            if len(data) == 64:
                return data[:32], int.from_bytes(data[32:], "big")
    return None

"""Recompute consent-gated credit (docs/PROTOCOL.md §19.4) from the log and the chain.

From the gateway: every consent and revocation logged below a checkpoint (signatures verified;
a consent must be signed by the pinned owner of every device it names, a revocation by its
consent's signer) and every usage record of the devices those consents name (signatures
verified under the device's key for that sequence number; the credit recomputed with the one
rule of §10). From the chain: the distributor's ``Funded`` events up to ``block`` (from its
deployment block when the epoch states one, checked on chain first: §19.2 key 14). Then
:func:`rewards.gating.gate`. Anything that does not verify raises VerificationError.

Lapse notices (§19.4) count as revocations of their consents, each checked: signed by the
gateway key, embedding a logged consent (same signer) that carries ``lapses_on_shortfall``
and names the notice's request, logged after its ``short_at`` leaf, and, with the chain at
hand, TRUE: at its ``funding_block`` the request's ``Funded`` total does not cover what the
request earned up to ``short_at`` (the rule run on the leaves up to it).

Every leaf read comes through :class:`verifier.proven.ProvenLog`: proven to be the leaf at
its index of a verified checkpoint, and (with its scan, the default) every listing checked
complete against the log itself, so a gateway that serves a consent the log does not hold,
or hides a revocation, a lapse notice, a verdict or a usage record, is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from osutil.jsonrpc import JsonRpc
from protocol.checkpoint import Checkpoint
from protocol.contract import Consent, Lapse, Revocation
from protocol.documents import verify_document
from protocol.errors import VerificationError
from protocol.keys import signer_id
from protocol.note import NoteVerifier
from protocol.signed import verify_signed_record
from rewards.funding import funded_totals
from rewards.gating import (
    Event,
    Gated,
    RevocationLeaf,
    UsageLeaf,
    consent_event,
    gate,
    micro_of,
    revocation_event,
    usage_event,
)
from rewards.quality import QualityJudge, VerdictLeaf, verdict_events
from verifier.client import DocumentClient
from verifier.documents import lapsed_consent
from verifier.proven import ProvenLog


def funded_at(rpc: JsonRpc, distributor: str, block: int, rate: int, *,
              from_block: int = 0) -> dict[bytes, int]:
    """Funding per request (micro-credits) from the distributor's Funded events in blocks
    ``from_block``..``block`` (read in windows, :mod:`rewards.funding`). ``from_block`` must
    be proven to be no later than the deployment (:func:`rewards.funding.check_deployed_in`):
    any later one hides funding."""
    return micro_of(funded_totals(rpc, distributor, from_block, block), rate)


def quality_judge(log: ProvenLog, trusted: tuple[bytes, ...]) -> QualityJudge:
    """The verdicts of the ``trusted`` validators logged below the checkpoint (signatures
    verified; an untrusted signer's attestation is skipped: it changes nothing, §19.4
    rule 5)."""
    verdicts: list[VerdictLeaf] = []
    for logged in log.documents("quality") if trusted else []:
        doc = verify_document(logged.raw, expected_type="quality")
        if signer_id(doc.signer) in trusted:
            verdicts.extend(verdict_events(doc, logged.index))
    return QualityJudge(verdicts, trusted)


@dataclass(frozen=True)
class Chain:
    """Where lapse notices are checked: the node, the distributor, the micro-credit rate,
    and the block its Funded events are read from (its deployment block, once checked)."""

    rpc: JsonRpc
    distributor: str
    rate: int
    chain_id: int
    first_block: int = 0


def gated_from_log(log: ProvenLog, funded: dict[bytes, int], *,
                   gateway: bytes | None = None, chain: Chain | None = None,
                   trusted: tuple[bytes, ...] = ()) -> Gated:
    """Gate the credit of the leaves below ``log``'s checkpoint with ``funded`` (request id
    -> micro).

    ``gateway`` is the gateway's Ed25519 key (lapse notices without it raise); ``chain``
    checks each notice's shortfall on chain (None: their signatures and consents only); the
    ``trusted`` validators' faulty verdicts withhold credit (§19.4 rule 5)."""
    events: list[Event] = []
    signers: dict[bytes, bytes] = {}  # consent id -> owner key
    devices: set[bytes] = set()
    client = log.client
    for logged in log.documents("consent"):
        doc = verify_document(logged.raw, expected_type="consent")
        body = doc.body
        assert isinstance(body, Consent)
        for device in body.devices:
            if client.owner_key(device) != doc.signer:
                raise VerificationError(f"consent {doc.id.hex()} is not signed by the "
                                        f"pinned owner of device {device.hex()}")
        signers[doc.id] = doc.signer
        devices.update(body.devices)
        events.append(consent_event(doc, logged.index))
    for logged in log.documents("revocation"):
        doc = verify_document(logged.raw, expected_type="revocation")
        revocation = doc.body
        assert isinstance(revocation, Revocation)
        if signers.get(revocation.consent, doc.signer) != doc.signer:
            raise VerificationError(f"revocation {doc.id.hex()} is not signed by its "
                                    "consent's owner")
        events.append(revocation_event(doc, logged.index))
    notices = _lapses(log, gateway, signers)
    events.extend(RevocationLeaf(index, lapse.consent_id) for index, lapse in notices)
    for device in sorted(devices):
        events.extend(_usage(log, device))
    withheld = quality_judge(log, trusted).withheld
    if chain is not None:
        for index, lapse in notices:
            check_shortfall(events, index, lapse, chain, withheld)
    return gate(events, funded, withheld)


def _lapses(log: ProvenLog, gateway: bytes | None,
            signers: dict[bytes, bytes]) -> list[tuple[int, Lapse]]:
    found = []
    for logged in log.documents("lapse"):
        if gateway is None:
            raise VerificationError("the log holds lapse notices: give the gateway key")
        lapse = verify_document(logged.raw, gateway, "lapse").body
        assert isinstance(lapse, Lapse)
        try:
            consent_doc = lapsed_consent(lapse)
        except VerificationError as exc:
            raise VerificationError(f"lapse at leaf {logged.index}: {exc}") from None
        if signers.get(consent_doc.id) != consent_doc.signer:
            raise VerificationError(f"lapse at leaf {logged.index} embeds no logged consent")
        if lapse.short_at >= logged.index:
            raise VerificationError(f"lapse at leaf {logged.index} precedes its short_at")
        found.append((logged.index, lapse))
    return found


def check_shortfall(events: list[Event], index: int, lapse: Lapse, chain: Chain,
                    withheld: Callable[[UsageLeaf], bool] = lambda _: False) -> None:
    """Raise VerificationError unless, at the notice's funding block, its request's funding
    does not cover what it earned up to ``short_at`` (§19.4; ``withheld``: rule 5, as the
    gateway gated it: a withheld record earns no request anything)."""
    if (lapse.chain_id, "0x" + lapse.distributor.hex()) != (chain.chain_id,
                                                             chain.distributor.lower()):
        raise VerificationError(f"lapse at leaf {index} names another chain or distributor")
    funded = funded_at(chain.rpc, chain.distributor, lapse.funding_block, chain.rate,
                       from_block=chain.first_block)
    before = gate([e for e in events if e.leaf <= lapse.short_at], funded, withheld)
    if before.short_at.get(lapse.request) != lapse.short_at:
        raise VerificationError(f"lapse at leaf {index}: request {lapse.request.hex()[:16]}… "
                                f"was not short at leaf {lapse.short_at} with the funding of "
                                f"block {lapse.funding_block}")


def _usage(log: ProvenLog, device: bytes) -> list[UsageLeaf]:
    keys = log.client.device_keys(device)
    found = []
    for logged in log.usage(device):
        key = [k for from_seq, k in keys if from_seq <= logged.seq][-1:]
        if not key:
            raise VerificationError(f"no key of device {device.hex()} for seq {logged.seq}")
        event = usage_event(verify_signed_record(logged.record, key[0], device).record, device,
                            logged.index)
        if event is None:
            raise VerificationError(f"leaf {logged.index} on 'usage' is not a usage record")
        found.append(event)
    return found


def recompute(client: DocumentClient, rpc: JsonRpc, distributor: str, rate: int, *,
              gateway_key: str, scan: bool = True) -> tuple[int, Gated]:
    """Funding from the chain (latest block) and the log below the gateway's latest
    checkpoint (verified under ``gateway_key``, a note verifier key), gated; lapse notices
    checked against the chain. Returns (the checkpoint's size, what it gates)."""
    verifier = NoteVerifier.from_text(gateway_key)
    checkpoint = Checkpoint.from_note(client.checkpoint(), verifier)
    return checkpoint.size, gated_from_log(
        ProvenLog(client, checkpoint, scan=scan),
        funded_at(rpc, distributor, rpc.block_number(), rate),
        gateway=verifier.public_key, chain=Chain(rpc, distributor, rate, rpc.chain_id()))

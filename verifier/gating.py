"""Recompute consent-gated credit (docs/PROTOCOL.md §19.4) from the log and the chain.

From the gateway: every consent and revocation logged below ``size`` (signatures verified;
a consent must be signed by the pinned owner of every device it names, a revocation by its
consent's signer) and every usage record of the devices those consents name (signatures
verified under the device's key for that sequence number; the credit recomputed with the one
rule of §10). From the chain: the distributor's ``Funded`` events up to ``block``. Then
:func:`rewards.gating.gate`. Anything that does not verify raises VerificationError.

Lapse notices (§19.4) count as revocations of their consents, each checked: signed by the
gateway key, embedding a logged consent (same signer) that carries ``lapses_on_shortfall``
and names the notice's request, logged after its ``short_at`` leaf, and, with the chain at
hand, TRUE: at its ``funding_block`` the request's ``Funded`` total does not cover what the
request earned up to ``short_at`` (the rule run on the leaves up to it).

Not checked here yet: the inclusion of those leaves in a signed checkpoint (``edgeproof-verify
payout`` does that for wallet bindings), and that the gateway served every leaf (a gateway
withholding a revocation or a usage record is caught by a full log audit, not by this).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from osutil.jsonrpc import JsonRpc
from protocol.contract import Consent, Lapse, Revocation
from protocol.documents import verify_document
from protocol.errors import VerificationError
from protocol.keys import signer_id
from protocol.signed import verify_signed_record
from rewards import distributor as abi
from rewards.gating import (
    Event,
    Gated,
    RevocationLeaf,
    UsageLeaf,
    consent_event,
    funded_micro,
    gate,
    revocation_event,
    usage_event,
)
from rewards.quality import QualityJudge, VerdictLeaf, verdict_events
from verifier.client import DocumentClient
from verifier.documents import lapsed_consent


def fundings(rpc: JsonRpc, distributor: str, block: int) -> list[abi.Funding]:
    """The distributor's Funded events in blocks 0..``block``."""
    return [abi.decode_funded(entry) for entry in rpc.logs(distributor, abi.FUNDED, 0, block)]


def quality_judge(client: DocumentClient, size: int,
                  trusted: tuple[bytes, ...]) -> QualityJudge:
    """The verdicts of the ``trusted`` validators logged below ``size`` (signatures verified;
    an untrusted signer's attestation is skipped: it changes nothing, §19.4 rule 5)."""
    verdicts: list[VerdictLeaf] = []
    for logged in client.all_documents("quality") if trusted else []:
        if logged.index < size:
            doc = verify_document(logged.raw, expected_type="quality")
            if signer_id(doc.signer) in trusted:
                verdicts.extend(verdict_events(doc, logged.index))
    return QualityJudge(verdicts, trusted)


@dataclass(frozen=True)
class Chain:
    """Where lapse notices are checked: the node, the distributor, the micro-credit rate."""

    rpc: JsonRpc
    distributor: str
    rate: int
    chain_id: int


def gated_from_log(client: DocumentClient, size: int, funded: dict[bytes, int], *,
                   gateway: bytes | None = None, chain: Chain | None = None,
                   trusted: tuple[bytes, ...] = ()) -> Gated:
    """Gate the credit of the leaves below ``size`` with ``funded`` (request id -> micro).

    ``gateway`` is the gateway's Ed25519 key (lapse notices without it raise); ``chain``
    checks each notice's shortfall on chain (None: their signatures and consents only); the
    ``trusted`` validators' faulty verdicts withhold credit (§19.4 rule 5)."""
    events: list[Event] = []
    signers: dict[bytes, bytes] = {}  # consent id -> owner key
    devices: set[bytes] = set()
    for logged in client.all_documents("consent"):
        if logged.index >= size:
            continue
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
    for logged in client.all_documents("revocation"):
        if logged.index >= size:
            continue
        doc = verify_document(logged.raw, expected_type="revocation")
        revocation = doc.body
        assert isinstance(revocation, Revocation)
        if signers.get(revocation.consent, doc.signer) != doc.signer:
            raise VerificationError(f"revocation {doc.id.hex()} is not signed by its "
                                    "consent's owner")
        events.append(revocation_event(doc, logged.index))
    notices = _lapses(client, size, gateway, signers)
    events.extend(RevocationLeaf(index, lapse.consent_id) for index, lapse in notices)
    for device in sorted(devices):
        events.extend(_usage(client, device, size))
    withheld = quality_judge(client, size, trusted).withheld
    if chain is not None:
        for index, lapse in notices:
            check_shortfall(events, index, lapse, chain, withheld)
    return gate(events, funded, withheld)


def _lapses(client: DocumentClient, size: int, gateway: bytes | None,
            signers: dict[bytes, bytes]) -> list[tuple[int, Lapse]]:
    found = []
    for logged in client.all_documents("lapse"):
        if logged.index >= size:
            continue
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
    funded = funded_micro(fundings(chain.rpc, chain.distributor, lapse.funding_block),
                          chain.rate)
    before = gate([e for e in events if e.leaf <= lapse.short_at], funded, withheld)
    if before.short_at.get(lapse.request) != lapse.short_at:
        raise VerificationError(f"lapse at leaf {index}: request {lapse.request.hex()[:16]}… "
                                f"was not short at leaf {lapse.short_at} with the funding of "
                                f"block {lapse.funding_block}")


def _usage(client: DocumentClient, device: bytes, size: int) -> list[UsageLeaf]:
    keys = client.device_keys(device)
    found = []
    for logged in client.all_device_records(device):
        if logged.index >= size or logged.stream != "usage":
            continue
        key = [k for from_seq, k in keys if from_seq <= logged.seq][-1:]
        if not key:
            raise VerificationError(f"no key of device {device.hex()} for seq {logged.seq}")
        event = usage_event(verify_signed_record(logged.record, key[0], device).record, device,
                            logged.index)
        if event is None:
            raise VerificationError(f"leaf {logged.index} on 'usage' is not a usage record")
        found.append(event)
    return found


def recompute(client: DocumentClient, rpc: JsonRpc, distributor: str, size: int,
              rate: int, *, gateway: bytes | None = None) -> Gated:
    """Funding from the chain (latest block) and the log below ``size``, gated; lapse
    notices checked against the chain."""
    return gated_from_log(client, size, funded_micro(
        fundings(rpc, distributor, rpc.block_number()), rate), gateway=gateway,
        chain=Chain(rpc, distributor, rate, rpc.chain_id()))

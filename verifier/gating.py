"""Recompute consent-gated credit (docs/PROTOCOL.md §19.4) from the log and the chain.

From the gateway: every consent and revocation logged below ``size`` (signatures verified;
a consent must be signed by the pinned owner of every device it names, a revocation by its
consent's signer) and every usage record of the devices those consents name (signatures
verified under the device's key for that sequence number; the credit recomputed with the one
rule of §10). From the chain: the distributor's ``Funded`` events up to ``block``. Then
:func:`rewards.gating.gate`. Anything that does not verify raises VerificationError.

Not checked here yet: the inclusion of those leaves in a signed checkpoint (``edgeproof-verify
payout`` does that for wallet bindings), and that the gateway served every leaf (a gateway
withholding a revocation or a usage record is caught by a full log audit, not by this).
"""

from __future__ import annotations

from osutil.jsonrpc import JsonRpc
from protocol.contract import Consent, Revocation
from protocol.documents import verify_document
from protocol.errors import VerificationError
from protocol.keys import signer_id
from protocol.signed import verify_signed_record
from rewards import distributor as abi
from rewards.gating import (
    Event,
    Gated,
    UsageLeaf,
    consent_event,
    funded_micro,
    gate,
    revocation_event,
    usage_event,
)
from rewards.quality import QualityJudge, VerdictLeaf, verdict_events
from verifier.client import DocumentClient


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


def gated_from_log(client: DocumentClient, size: int, funded: dict[bytes, int],
                   trusted: tuple[bytes, ...] = ()) -> Gated:
    """Gate the credit of the leaves below ``size`` with ``funded`` (request id -> micro),
    withholding what the ``trusted`` validators' faulty verdicts exclude."""
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
    for device in sorted(devices):
        events.extend(_usage(client, device, size))
    return gate(events, funded, quality_judge(client, size, trusted).withheld)


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
              rate: int) -> Gated:
    """Funding from the chain (latest block) and the log below ``size``, gated."""
    return gated_from_log(client, size, funded_micro(
        fundings(rpc, distributor, rpc.block_number()), rate))

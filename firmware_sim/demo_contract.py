"""The demo's contract story (issue 14), told with the real parts while the devices run.

1. A company, ``biolab``, registered as a recipient with a signing key of its own, asks for
   the **temperature only** of one device, at most **one reading a minute**, for an hour.
2. The device's owner (whose key the device pinned at enrolment) consents; the gateway
   logs both documents and delivers the consent; the device starts a key epoch naming it.
3. biolab opens what the gateway logged with its own key: the temperature of the derived
   stream decrypts; humidity, which only the full stream (sealed to the owner) carries,
   does not open for it; and it got one reading while the device made many.
4. The owner revokes; the device starts a key epoch without biolab; every later reading
   stays closed to biolab.
5. The log shows all of it: the key epochs that name the consent, from which record to
   which, and the audit (``edgeproof-verify audit``: verifier.audit, protocol.audit) built
   from the logged leaves with their inclusion proofs and verified under the owner key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.stack import Interrupted, SimDevice, Stack, StackError
from protocol.audit import AuditBundle, verify_audit
from protocol.contract import Consent, DataRequest, Revocation, Terms
from protocol.documents import Document, sign_document
from protocol.errors import EdgeproofError
from protocol.keys import OwnerKey, RecipientKey, SigningKey, load_recipient_key
from protocol.record import KeyEpoch, Record
from protocol.signed import parse_signed_record
from verifier.audit import NotCovered, build_audit
from verifier.client import DocumentClient, GatewayClient
from verifier.recipient import Opened, open_records

COMPANY = "biolab"
STREAM, FIELD, OTHER_FIELD = "climate", "Cel", "%RH"
RATE_S = 60
HOUR_MS = 3_600_000
WAIT_S = 60.0


@dataclass
class StoryResult:
    """What each act showed (the demo summary's ``contract`` member)."""

    request_index: int | None = None
    request_id: str = ""  # hex; the terms a company funds the distributor for
    consent_index: int | None = None
    revocation_index: int | None = None
    temperature: list[str] = field(default_factory=list)
    humidity_opened: int = 0
    humidity_closed: int = 0
    readings_while_granted: int = 0
    granted_readings: int = 0
    opened_after_revocation: int = 0
    closed_after_revocation: int = 0
    epochs_naming_consent: list[int] = field(default_factory=list)
    epoch_without_consent: int | None = None
    audit: str = ""
    ok: bool = False
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


class ContractStory:
    """Runs the story against a running stack; :meth:`run` returns what it showed."""

    def __init__(self, stack: Stack, device: SimDevice, owner: OwnerKey,
                 note: Callable[[str], None], check: Callable[[], None]) -> None:
        self.stack, self.device, self.owner = stack, device, owner
        self.device_id = bytes.fromhex(device.device_id)
        self.note, self.check = note, check
        self.gateway = GatewayClient(stack.gateway_url)
        self.documents = DocumentClient(stack.gateway_url)
        self.result = StoryResult()
        self.company: RecipientKey | None = None  # biolab's keys, once registered
        self.signing: SigningKey | None = None

    def run(self) -> StoryResult:
        """Every act in order; a failure is recorded in ``result.error``, never raised
        (except Interrupted, from ``check``)."""
        try:
            company, signing = self._register_company()
            consent = self._request_and_consent(company, signing)
            self._company_reads(company, consent)
            self._owner_revokes(company, consent)
            self._audit(consent)
            self.result.ok = self._held()
        except Interrupted:
            raise
        except (EdgeproofError, OSError) as exc:
            self.result.error = f"contract story: {exc}"
        return self.result

    # --- the acts ------------------------------------------------------------------------

    def _register_company(self) -> tuple[RecipientKey, SigningKey]:
        company = load_recipient_key(self.stack.add_recipient(COMPANY))
        signing = SigningKey.generate()  # biolab's request key, made where biolab lives
        self.stack.provision("recipient", "register", COMPANY, "--signing-key",
                             signing.public_key.hex(), "--fleet", str(self.stack.fleet_dir))
        self.note(f"contract: '{COMPANY}' is a registered recipient (X25519 to read, Ed25519 "
                  f"to sign requests)")
        self.company, self.signing = company, signing
        return company, signing

    def _request_and_consent(self, company: RecipientKey, signing: SigningKey) -> Document:
        self._wait("the device's first climate records",
                   lambda: any(r.stream == STREAM for r in self._records()))
        now = _now_ms()
        terms = Terms(((STREAM, (FIELD,)),), RATE_S, now - 60_000, now + HOUR_MS)
        request = sign_document(DataRequest(company.public_key, (self.device_id,), (), terms,
                                            "indoor temperature study", 1000), signing, now)
        self.result.request_index = self._submit(request)
        self.result.request_id = request.id.hex()
        self.note(f"contract: {COMPANY} requests {self.device.name}'s temperature only "
                  f"({STREAM}:{FIELD}), at most one reading per {RATE_S} s, for an hour "
                  f"(logged as leaf {self.result.request_index})")
        consent = sign_document(Consent(request.id, company.public_key, (self.device_id,),
                                        terms), self.owner.signing, _now_ms())
        self.result.consent_index = self._submit(consent)
        self.note(f"contract: the owner consents (leaf {self.result.consent_index}); the "
                  f"gateway delivers it, the device checks it against the owner key it pinned")
        return consent

    def _company_reads(self, company: RecipientKey, consent: Document) -> None:
        derived = f"{STREAM}~{consent.id[:6].hex()}"
        self._wait(f"a reading on {derived}",
                   lambda: any(r.stream == derived for r in self._records()))
        epochs = self._epochs_naming(consent.id)
        first = min(epochs) if epochs else 0
        self._wait("more readings", lambda: sum(
            1 for r in self._records() if r.stream == STREAM and r.seq > first) >= 4)
        opened = self._open(company)
        temps = [o for o in opened if o.stream == derived and o.status == "decrypted"]
        full = [o for o in opened if o.stream == STREAM and o.seq > first]
        r = self.result
        r.temperature = [f"{m.value} {m.unit}" for o in temps for m in o.values]
        r.humidity_opened = sum(1 for o in full if o.status == "decrypted")
        r.humidity_closed = sum(1 for o in full if o.status != "decrypted")
        r.readings_while_granted, r.granted_readings = len(full), len(temps)
        self.note(f"contract: {COMPANY} decrypts the temperature: {', '.join(r.temperature)} "
                  f"({derived}, key epoch {first} names the consent)")
        self.note(f"contract: humidity travels only in '{STREAM}', sealed to the owner: "
                  f"{r.humidity_closed} of {len(full)} readings fail to open for {COMPANY}; "
                  f"rate: {r.granted_readings} granted reading(s) while the device made "
                  f"{len(full)}")

    def _owner_revokes(self, company: RecipientKey, consent: Document) -> None:
        revocation = sign_document(Revocation(consent.id, 1, "owner"), self.owner.signing,
                                   _now_ms())
        self.result.revocation_index = self._submit(revocation)
        self.note(f"contract: the owner revokes (leaf {self.result.revocation_index})")
        self._wait("a key epoch without the consent", lambda: self._epoch_after(consent.id)
                   is not None)
        after = self._epoch_after(consent.id)
        assert after is not None
        self._wait("readings after the revocation", lambda: sum(
            1 for r in self._records() if r.stream == STREAM and r.seq > after) >= 3)
        later = [o for o in self._open(company) if o.seq > after]
        r = self.result
        r.epoch_without_consent = after
        r.epochs_naming_consent = self._epochs_naming(consent.id)
        r.opened_after_revocation = sum(1 for o in later if o.status == "decrypted")
        r.closed_after_revocation = sum(1 for o in later if o.status != "decrypted")
        self.note(f"contract: after key epoch {after} (no consent named) {COMPANY} opens "
                  f"{r.opened_after_revocation} of {len(later)} later records")
        self.note(f"contract: the log shows it: key epochs {r.epochs_naming_consent} name the "
                  f"consent, key epoch {after} and later do not")

    def _audit(self, consent: Document) -> None:
        """The audit of the device over the logged leaves, once a checkpoint covers them."""
        key = self.gateway.verifier_key()
        bundles: list[AuditBundle] = []

        def covered() -> bool:
            try:
                bundles.append(build_audit(self.documents, self.device_id, 0, _now_ms(), key))
            except NotCovered:
                return False
            return True

        self._wait("checkpoint covering the story", covered)
        audit = verify_audit(bundles[-1], key, self.owner.public_key)
        grant = next(g for g in audit.grants if g.consent.id == consent.id)
        until = (f"revocation at leaf {grant.revocation_leaf}" if grant.revocation is not None
                 else "not revoked")
        self.result.audit = (
            f"verified from {len(bundles[-1].leaves)} logged leaves in checkpoint "
            f"{audit.checkpoint.size}: {COMPANY} could decrypt "
            f"{', '.join(f for _, fs in grant.body.terms.streams for f in fs)} from consent "
            f"leaf {grant.consent_leaf}, applied by key epochs "
            f"{[e.seq for e in grant.epochs]}, until {until}")
        self.note(f"contract: audit {self.result.audit}")

    def _held(self) -> bool:
        r = self.result
        return bool(r.temperature) and r.humidity_opened == 0 and r.humidity_closed > 0 \
            and r.granted_readings < r.readings_while_granted \
            and r.opened_after_revocation == 0 and r.closed_after_revocation > 0 \
            and bool(r.audit)

    # --- helpers -------------------------------------------------------------------------

    def _submit(self, doc: Document) -> int:
        index, _ = self.documents.submit(doc.raw)
        return index

    def _records(self) -> list[Record]:
        return [parse_signed_record(r.record)[1]
                for r in self.gateway.all_device_records(self.device_id)]

    def _open(self, who: RecipientKey) -> list[Opened]:
        return open_records(self.gateway.all_device_records(self.device_id),
                            self.gateway.device_keys(self.device_id), who)

    def _epochs_naming(self, consent_id: bytes) -> list[int]:
        return [r.seq for r in self._records() if isinstance(r.body, KeyEpoch)
                and any(h == consent_id for _, h in r.body.consents)]

    def _epoch_after(self, consent_id: bytes) -> int | None:
        naming = self._epochs_naming(consent_id)
        if not naming:
            return None
        return next((r.seq for r in self._records() if isinstance(r.body, KeyEpoch)
                     and r.seq > max(naming)), None)

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            self.check()
            if time.monotonic() > deadline:
                raise StackError(f"no {what} within {WAIT_S:.0f} s")
            time.sleep(0.5)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

"""Reward payout epochs: amounts from the log, a root posted on chain, proofs for owners.

Every ``payout.interval_s`` the worker takes the latest checkpoint, computes every bound
owner's cumulative amount from the balances table that checkpoint commits to and the
wallet bindings (:func:`rewards.epoch.epoch_amounts`), builds the OpenZeppelin standard
tree, signs a ``payout_epoch`` document with the gateway key, persists it (with the tree)
and posts its root to the distributor in a transaction signed with the ``[payout]`` key
(``postRoot(epoch, root, total)``). Nothing changed since the last posted epoch: no epoch.

The chain is the judge of "posted": before (re)sending, the worker reads ``epoch()`` and
``merkleRoot()``; if the chain already holds this epoch's root, the epoch is done, whatever
happened to our receipts. The contract refuses an epoch number that does not increase, so
a root can never be posted twice. The raw transaction is persisted before it is broadcast;
if the node loses it (restart, dropped) the same bytes are sent again; one pending for
``resend_after_s`` (stuck) is replaced with the same nonce and a 12.5% higher gas price; a
reverted post is re-signed up to ``max_attempts`` times, then the epoch fails and the next
one (cumulative, so nothing is lost) replaces it. A total the distributor's funding cannot
cover is not posted (``underfunded``). Every outcome is counted in ``/metrics``.

The node must report ``payout.chain_id`` (``eth_chainId``), and a stated
``payout.distributor_block`` is proven on chain (:func:`rewards.funding.check_deployed_in`,
as every verifier does), before the first epoch states them: a wrong one refuses to start
the worker (:meth:`PayoutWorker.start`) rather than sign epochs auditors refuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import PayoutConfig
from gateway.contracts import Logged
from gateway.duty_tables import shared_store
from gateway.payout_book import FAILED, PENDING, POSTED, PayoutBook, StoredEpoch
from gateway.payout_funding import FundingLedger
from gateway.payout_gating import (
    IGNORED_REASONS,
    GatingSettings,
    IncrementalGating,
    SnapshotIgnored,
    restore,
)
from gateway.payout_lapse import Shortfall, issue_lapses
from gateway.store import LogStore, NewDocument, NotSequencer
from osutil.jsonrpc import JsonRpc, RpcError, node_address, quantity
from protocol.documents import Document, parse_document, sign_document
from protocol.errors import (
    ConfigError,
    MalformedRecord,
    StorageError,
    TransportError,
    VerificationError,
)
from protocol.keys import SigningKey
from protocol.payout_notice import PayoutNotice
from rewards import distributor as abi
from rewards.documents import (
    BASE_UNITS_PER_MICRO,
    PayoutEpoch,
    WalletBinding,
    owner_name,
    verify_wallet_binding,
)
from rewards.epoch import decode_balances, epoch_amounts, gated_amounts
from rewards.ethkey import load_eth_key, sign_transaction
from rewards.funding import check_deployed_in
from rewards.gating import micro_of
from rewards.tree import DistributionTree

log = logging.getLogger(__name__)
# How long a payout notice reuses the distributor's claimed(address) it read, and for how
# many addresses at most (the cache is emptied when full).
CLAIMED_TTL_S = 5.0
MAX_CLAIMED_CACHE = 10_000
BOOK_FILE = "payout.sqlite"
PREFIX = "edgeproof_gateway_payout"
EPOCH_OUTCOMES = ("posted", "failed", "underfunded", "unchanged", "no_wallets")
WALLET_REFUSALS = ("malformed", "bad_signature", "wrong_chain", "unknown_owner",
                   "wallet_taken", "not_sequencer")
RETRY_REASONS = ("dropped", "stuck", "reverted", "nonce_taken")


class WalletRefused(Exception):
    """A wallet binding was refused: ``reason`` (counted), HTTP ``status``, one-line detail."""

    def __init__(self, reason: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.status, self.detail = reason, status, detail


def open_book(store: LogStore, data_dir: Path, *, shared: bool) -> PayoutBook:
    """The payout book: ``payout.sqlite`` in ``data_dir``, or, for a shared log, tables of
    ``store`` (its PostgreSQL database). Raises StorageError/ConfigError."""
    if not shared:
        return PayoutBook.in_file(data_dir / BOOK_FILE)
    return PayoutBook.in_store(shared_store(store))


def log_document(store: LogStore, doc: Document, now_ms: int) -> int:
    """Append a verified document as a leaf of the log (once); return its leaf index."""
    with store.transaction() as tx:
        existing = tx.document(doc.id)
        if existing is not None:
            return existing.index
        return tx.append_document(NewDocument(doc.id, doc.type, doc.signer, doc.raw, None, 0,
                                              (), now_ms))


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.epochs = Counter(f"{PREFIX}_epochs", "Epoch attempts by outcome", ["outcome"],
                              registry=r)
        for outcome in EPOCH_OUTCOMES:
            self.epochs.labels(outcome=outcome)
        self.retries = Counter(f"{PREFIX}_retries", "Root posts re-sent, per reason",
                               ["reason"], registry=r)
        for reason in RETRY_REASONS:
            self.retries.labels(reason=reason)
        self.wallets_refused = Counter(f"{PREFIX}_wallets_refused",
                                       "Wallet bindings refused, per reason", ["reason"],
                                       registry=r)
        for reason in WALLET_REFUSALS:
            self.wallets_refused.labels(reason=reason)
        self.transactions = Counter(f"{PREFIX}_transactions", "Root posts broadcast",
                                    registry=r)
        self.rpc_errors = Counter(f"{PREFIX}_rpc_errors", "Node calls that failed",
                                  ["kind"], registry=r)
        for kind in ("unreachable", "refused", "internal", "notice_claimed"):
            self.rpc_errors.labels(kind=kind)
        self.notices = Counter(f"{PREFIX}_notices", "Payout notices signed for owners "
                               "(GET /v1/payouts/notice/{owner}, PROTOCOL.md §19.5)",
                               registry=r)
        self.locked = Gauge(f"{PREFIX}_locked_micro",
                            "Settled credit of owners with no wallet (latest epoch)", registry=r)
        self.short = Gauge(f"{PREFIX}_requests_short",
                           "Requests whose funding does not cover what their consents earned "
                           "(latest consent-gated epoch)", registry=r)
        self.withheld = Gauge(f"{PREFIX}_withheld_micro",
                              "Settled credit withheld by a trusted validator's faulty verdict "
                              "(latest consent-gated epoch, PROTOCOL.md §19.4 rule 5)",
                              registry=r)
        self.lapses = Counter(f"{PREFIX}_lapses",
                              "Lapse notices logged: consents of short requests ended "
                              "(PROTOCOL.md §19.4)", registry=r)
        self.unlapsable = Gauge(f"{PREFIX}_short_consents_without_lapse_term",
                                "Consents of short requests whose owner did not allow a lapse "
                                "(latest consent-gated epoch)", registry=r)
        self.posted_epoch = Gauge(f"{PREFIX}_posted_epoch", "Latest epoch on chain",
                                  registry=r)
        self.funding_block = Gauge(f"{PREFIX}_funding_block", "Block up to which the "
                                   "distributor's Funded events were read", registry=r)
        self.funding_rereads = Counter(f"{PREFIX}_funding_rereads", "Funding read again from "
                                       "the deployment block: the chain changed under it",
                                       registry=r)
        self.stopped = Gauge(f"{PREFIX}_stopped", "1 while the payout worker signs nothing: "
                             "the node refutes its payout.chain_id or distributor_block (see "
                             "/healthz payout_fatal)", registry=r)
        self.gating_rebuilds = Counter(f"{PREFIX}_gating_rebuilds", "Consent gating state "
                                       "built again from the whole log: re-read funding was "
                                       "lower than what it had paid", registry=r)
        self.snapshots_ignored = Counter(f"{PREFIX}_gating_snapshots_ignored",
                                         "Stored consent gating states not used at start, "
                                         "per reason: the state was built from the whole "
                                         "log instead", ["reason"], registry=r)
        for reason in IGNORED_REASONS:
            self.snapshots_ignored.labels(reason=reason)


class PayoutWorker:
    """Computes epochs and posts their roots, on its own thread."""

    def __init__(self, config: PayoutConfig, store: LogStore, book: PayoutBook,
                 signer: SigningKey, *, wall_ms: Callable[[], int],
                 monotonic: Callable[[], float], registry: CollectorRegistry) -> None:
        """Load the key; raise KeyFileError. The worker owns ``book`` (:meth:`close`)."""
        self.config = config
        self._key, self.address = load_eth_key(config.key_file)
        self._store, self._signer = store, signer
        self._wall_ms, self._monotonic = wall_ms, monotonic
        self.book = book
        self._rpc = JsonRpc(config.rpc_url, timeout_s=5.0)
        # The API's reads of claimed() (payout notices), apart from the worker's connection.
        self._api_rpc = JsonRpc(config.rpc_url, timeout_s=5.0)
        self._api_rpc_lock = threading.Lock()
        # claimed(address) as last read, by address: (monotonic time, raw answer). A public
        # route reads it; each address costs the node one call per CLAIMED_TTL_S at most,
        # however often anyone asks (the operator's node quota, the API's threads).
        self._claimed_cache: dict[str, tuple[float, bytes]] = {}
        self.metrics = _Metrics(registry)
        self._funding = FundingLedger(
            self.book, self._rpc, config.distributor, first_block=config.distributor_block,
            confirmations=config.funding_confirmations,
            on_reread=lambda _why: self.metrics.funding_rereads.inc())
        # The node is on payout.chain_id, and payout.distributor_block is proven on chain,
        # before any epoch states them (block 0: none stated, nothing to prove); a chain or
        # a block the node refutes is this worker's fatal error.
        self._chain_checked = False
        self._block_checked = config.distributor_block == 0
        self.fatal: str | None = None
        self._next_epoch_at = 0.0
        self._errors = 0
        self._trees: dict[int, DistributionTree] = {}
        self._gating: IncrementalGating | None = None  # consent gating's running state
        self._restore = True  # the next epoch starts from the book's snapshot, if it can
        self._pending_since: dict[str, float] = {}  # tx hash -> when first seen pending
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._binding = threading.Lock()  # one binding decision at a time
        self.on_logged: Callable[[Logged], None] = lambda logged: None  # delivery (§17)

    def start(self) -> None:
        """Check ``payout.chain_id`` and ``payout.distributor_block`` against the node, then
        start the worker thread (again after :meth:`stop`), from what the book holds.

        Raises ConfigError if the node reports another chain id (every epoch would state a
        chain its funding was not read from, and the poster's transactions would not be
        valid there) or if no transaction of that block created the distributor: the
        worker's funding ledger would skip the Funded events before it and every epoch would
        state a block auditors refuse. A node that cannot be reached (or has not that block
        yet) is not an error here, as for every other node call: the worker checks it
        before anything else and signs no epoch until it has.
        """
        if self._thread is not None:
            return
        if not (self._chain_checked and self._block_checked):
            rpc = JsonRpc(self.config.rpc_url, timeout_s=5.0)  # the worker's may be busy still
            try:
                self._check_node(rpc)
            except (TransportError, RpcError) as exc:
                log.warning("payout: cannot check payout.chain_id %d and distributor_block "
                            "%d on the node yet (%s); no epoch is signed until it answers",
                            self.config.chain_id, self.config.distributor_block, exc)
            finally:
                rpc.close()
        if self.fatal:
            raise ConfigError(self.fatal)
        # Its memory starts afresh: a shared log's book may have been worked by another
        # process since (gateway.cluster); the pending epoch and its transaction are read
        # from the book at each step.
        self._next_epoch_at, self._errors = 0.0, 0
        self._pending_since.clear()
        self._gating, self._restore = None, True  # the book's gating snapshot is read again
        log.info("payout: distributor %s on chain %d, poster %s", self.config.distributor,
                 self.config.chain_id, self.address)
        self._stop = threading.Event()  # the worker's own: one that outlives stop() exits
        self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                        name="gateway-payout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (a shared log's sequencer that lost the lock); the book stays
        open for the API, and :meth:`start` resumes a pending epoch from it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=20)
            if self._thread.is_alive():
                log.error("payout: the worker did not stop within 20 s; it exits after its "
                          "current step")
            self._thread = None

    def wake(self) -> None:
        """Make the worker look now (an epoch is due at once)."""
        self._next_epoch_at = 0.0
        self._wake.set()

    def close(self) -> None:
        """Stop the worker; a pending epoch is resumed by the next run (or sequencer)."""
        self.stop()
        self._rpc.close()
        with self._api_rpc_lock:
            self._api_rpc.close()
        self.book.close()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                delay = self.step()
            except StorageError as exc:
                log.error("payout: book failed: %s", exc)
                delay = 60.0
            except Exception:  # the worker must not die silently; the error is logged
                log.exception("payout: unexpected error in the worker")
                self.metrics.rpc_errors.labels(kind="internal").inc()
                delay = 60.0
            self._wake.wait(timeout=delay)
            self._wake.clear()

    # --- wallet bindings -----------------------------------------------------------------------

    def bind_wallet(self, raw: bytes) -> tuple[WalletBinding, int]:
        """Check an owner's binding, log it as a leaf and record it; return it and its index.

        The same binding again returns where it was logged. Raises WalletRefused (counted).
        """
        try:
            doc, binding = self._checked_binding(raw)
            with self._binding:
                index = self._binding_logged(doc, binding)
        except WalletRefused as exc:
            self.metrics.wallets_refused.labels(reason=exc.reason).inc()
            raise
        self.wake()
        return binding, index

    def _binding_logged(self, doc: Document, binding: WalletBinding) -> int:
        """Log and record a binding; a shared log's follower refuses (only the sequencer
        appends to the log and writes the book, docs/SCALING.md)."""
        try:
            return self._record_binding(doc, binding)
        except NotSequencer:
            raise WalletRefused("not_sequencer", 503, "this gateway process does not "
                                "sequence the log: submit the binding to the one that "
                                "does (GET /healthz says its role), or retry") from None

    def _record_binding(self, doc: Document, binding: WalletBinding) -> int:
        owner = owner_name(binding.owner)
        known = self.book.wallet_of(owner)
        if known is not None and known != doc.raw:
            raise WalletRefused("wallet_taken", 409, f"owner {owner} is already bound to a "
                                "wallet; a binding is final")
        index = log_document(self._store, doc, self._wall_ms())
        if known is None:
            self.book.add_wallet(owner, binding.checksum_address, doc.raw, index,
                                 self._wall_ms())
        return index

    def _checked_binding(self, raw: bytes) -> tuple[Document, WalletBinding]:
        try:
            doc, binding = verify_wallet_binding(raw)
        except MalformedRecord as exc:
            raise WalletRefused("malformed", 400, f"not a wallet binding: {exc}") from None
        except VerificationError as exc:
            raise WalletRefused("bad_signature", 400, f"wallet binding refused: {exc}") from None
        if binding.chain_id != self.config.chain_id:
            raise WalletRefused("wrong_chain", 400, f"wallet binding is for chain "
                                f"{binding.chain_id}, payouts are on {self.config.chain_id}")
        owner = owner_name(binding.owner)
        # Only an owner with a registered device: a stranger minting owner keys cannot
        # grow the log with bindings.
        if all(balance.owner != owner for balance in self._store.balances()):
            raise WalletRefused("unknown_owner", 404, f"no registered device has owner {owner}")
        return doc, binding

    # --- one step ------------------------------------------------------------------------------

    def _check_node(self, rpc: JsonRpc) -> None:
        """Check once that the node is on ``payout.chain_id`` and prove
        ``payout.distributor_block`` (rewards.funding.check_deployed_in); set :attr:`fatal`
        if the node refutes either. Raises TransportError/RpcError (not checked yet)."""
        if self.fatal:
            return
        if not self._chain_checked:
            node_chain = rpc.chain_id()
            if node_chain != self.config.chain_id:
                self._stop_for(f"payout.chain_id is {self.config.chain_id} but the node at "
                               f"{node_address(self.config.rpc_url)} reports chain id "
                               f"{node_chain}")
                return
            self._chain_checked = True
        if self._block_checked:
            return
        block, distributor = self.config.distributor_block, self.config.distributor
        try:
            check_deployed_in(rpc, distributor, block)
        except VerificationError:
            self._stop_for(f"payout.distributor_block = {block} is not the deployment block "
                           f"of the distributor {distributor}: no transaction of that block "
                           "created it")
            return
        self._block_checked = True

    def _stop_for(self, why: str) -> None:
        """A configuration the node refutes: no epoch is signed (``payout_stopped``)."""
        self.fatal = why
        log.error("payout: %s; no epoch is signed", why)
        self.metrics.stopped.set(1)

    def step(self) -> float:
        """Post the pending epoch or make a due one; return seconds until the next step.

        Nothing at all while :attr:`fatal` (a deployment block the chain refutes)."""
        try:
            self._check_node(self._rpc)
            if self.fatal:
                return 60.0
            pending = self.book.latest(PENDING)
            if pending is not None:
                self._post(pending)
            elif self._monotonic() >= self._next_epoch_at:
                self._next_epoch_at = self._monotonic() + self.config.interval_s
                self._new_epoch()
        except (TransportError, RpcError) as exc:
            kind = "refused" if isinstance(exc, RpcError) else "unreachable"
            self.metrics.rpc_errors.labels(kind=kind).inc()
            self._errors += 1
            delay = min(60.0, 0.5 * 2.0 ** (self._errors - 1))
            log.warning("payout: %s; retrying in %.1f s", exc, delay)
            return delay
        self._errors = 0
        return 0.2 if self.book.latest(PENDING) is not None else min(
            1.0, max(0.05, self._next_epoch_at - self._monotonic()))

    def _view(self, name: str, *addresses: str) -> bytes:
        return self._rpc.eth_call(self.config.distributor, abi.view(name, *addresses))

    def _new_epoch(self) -> None:
        checkpoint = self._store.latest_checkpoint()
        if checkpoint is None or checkpoint.size == 0:
            return
        wallets = self.book.wallets(before_size=checkpoint.size)
        funding_block = None
        if self.config.consent_gated:
            funding_block, funded_base = self._funding.read()
            self.metrics.funding_block.set(funding_block)
            gating = self._gated_to(checkpoint.size)
            try:
                gated = gating.settle(micro_of(funded_base, BASE_UNITS_PER_MICRO))
            except ValueError as exc:  # funding re-read lower than what was paid: rebuild
                log.warning("payout: gating state rebuilt from the whole log: %s", exc)
                self.metrics.gating_rebuilds.inc()
                self._gating = None
                self.book.drop_gating_snapshot()  # a restart must not load it again
                gating = self._gated_to(checkpoint.size)
                gated = gating.settle(micro_of(funded_base, BASE_UNITS_PER_MICRO))
            self.metrics.withheld.set(gated.withheld_micro)
            amounts = gated_amounts(gated.owners, _settled(checkpoint.balances), wallets)
            self.metrics.short.set(len(gated.short_at))
            self._lapse(gating.state.ended,
                        Shortfall(gated.short_at, funding_block, self.config.chain_id,
                                  bytes.fromhex(self.config.distributor[2:])),
                        checkpoint.size)
        else:
            amounts = epoch_amounts(decode_balances(checkpoint.balances), wallets)
        self.metrics.locked.set(amounts.locked_micro)
        if not amounts.values:
            self.metrics.epochs.labels(outcome="no_wallets").inc()
            return
        tree = amounts.tree()
        last = self.book.latest(POSTED)
        if last is not None and _body(last).root == tree.root:
            self.metrics.epochs.labels(outcome="unchanged").inc()
            return
        total = amounts.total_micro * BASE_UNITS_PER_MICRO
        funded = abi.uint(self._view("totalFunded"))
        if total > funded:
            self.metrics.epochs.labels(outcome="underfunded").inc()
            log.warning("payout: epoch total %d exceeds the distributor's funding %d; "
                        "not posted", total, funded)
            return
        newest = self.book.latest()
        number = max(newest.epoch if newest else 0, abi.uint(self._view("epoch"))) + 1
        body = PayoutEpoch(number, checkpoint.size, hashlib.sha256(checkpoint.balances).digest(),
                           tree.root, amounts.total_micro, len(amounts.values),
                           amounts.locked_micro, self.config.chain_id,
                           bytes.fromhex(self.config.distributor[2:]), BASE_UNITS_PER_MICRO,
                           len(wallets), funding_block, self.config.quality_validators,
                           self.config.distributor_block or None)
        doc = sign_document(body, self._signer, self._wall_ms())
        snapshot = None
        if self.config.consent_gated and self._gating is not None:  # what this epoch paid
            snapshot = self._gating.snapshot(self._settings(), self._store)
        self.book.add_epoch(number, checkpoint, doc.raw, json.dumps(tree.dump()),
                            self._wall_ms(), gating=snapshot)
        posted = last.epoch if last is not None else None
        self._trees = {e: t for e, t in self._trees.items() if e == posted} | {number: tree}
        log.info("payout: epoch %d at checkpoint size %d: %d owners, %d micro-credits "
                 "(%d locked)", number, checkpoint.size, body.owners, body.total_micro,
                 body.locked_micro)
        self._wake.set()

    def _gated_to(self, size: int) -> IncrementalGating:
        """The gating state fed up to ``size``: only the leaves since the last epoch are read
        (gateway/payout_gating.py), since the book's snapshot after a start; a state that
        failed midway is built again."""
        gating = self._gating
        if gating is None and self._restore:  # again after a storage error, until it works
            gating = self._restored(size)
        gating = gating or IncrementalGating(self.config.quality_validators)
        self._gating = None
        gating.advance(self._store, size)
        self._gating, self._restore = gating, False
        return gating

    def _settings(self) -> GatingSettings:
        return GatingSettings(self.config.consent_gated, self.config.quality_validators,
                              bytes.fromhex(self.config.distributor[2:]), self.config.chain_id)

    def _restored(self, size: int) -> IncrementalGating | None:
        """The book's gating snapshot, if it is this worker's state of this log below
        ``size``; None (counted per reason, one warning) to build it from the whole log."""
        stored = self.book.gating_snapshot()
        if stored is None:
            return None
        epoch, _, raw = stored
        try:
            gating = restore(raw, self._settings(), self._store, at_most=size)
        except MalformedRecord as exc:
            reason = "other_version" if exc.reason == "bad_version" else "malformed"
            self._ignored(epoch, reason, str(exc))
            return None
        except SnapshotIgnored as exc:
            self._ignored(epoch, exc.reason, exc.detail)
            return None
        log.info("payout: gating state of epoch %d loaded (log size %d)", epoch, gating.size)
        return gating

    def _ignored(self, epoch: int, reason: str, detail: str) -> None:
        self.metrics.snapshots_ignored.labels(reason=reason).inc()
        log.warning("payout: gating snapshot of epoch %d ignored (%s: %s); building the "
                    "state from the whole log", epoch, reason, detail)

    def _lapse(self, ended: Set[bytes], shortfall: Shortfall, size: int) -> None:
        """Log (and hand to delivery) a lapse notice per lapsable consent of a short request
        (PROTOCOL.md §19.4, gateway/payout_lapse.py)."""
        outcome = issue_lapses(self._store, self._signer, ended, shortfall, size=size,
                               now_ms=self._wall_ms())
        self.metrics.unlapsable.set(outcome.no_term)
        for logged in outcome.logged:
            self.metrics.lapses.inc()
            log.warning("payout: consent %s… lapses, its request short of funding "
                        "(notice at leaf %d)", (logged.document.ref or b"").hex()[:16],
                        logged.document.index)
            self.on_logged(logged)

    def _post(self, epoch: StoredEpoch) -> None:
        if epoch.leaf_index is None:  # logged before it is posted
            doc = parse_document(epoch.document)
            self.book.set_leaf(epoch.epoch, log_document(self._store, doc, self._wall_ms()))
        body = _body(epoch)
        on_chain = abi.uint(self._view("epoch"))
        if on_chain >= epoch.epoch:
            if on_chain == epoch.epoch and self._view("merkleRoot") == body.root:
                self._finish_posted(epoch)
            else:
                self._fail(epoch, f"chain is at epoch {on_chain} with another root")
            return
        if epoch.tx_hash is None:
            self._send(epoch, body)
            return
        receipt = self._rpc.receipt(epoch.tx_hash)
        if receipt is not None and receipt.get("blockNumber") is not None:
            if quantity(receipt.get("status"), "receipt status") == 1:
                self._finish_posted(epoch)  # mined after our view: seen next time anyway
            else:
                self._reverted(epoch, "root post reverted on chain")
            return
        pending = self._rpc.transaction(epoch.tx_hash)
        if pending is not None:
            self._follow_pending(epoch, body, pending)
            return
        assert epoch.nonce is not None
        assert epoch.raw_tx is not None
        if self._rpc.nonce(self.address, "latest") > epoch.nonce:
            self.metrics.retries.labels(reason="nonce_taken").inc()
            self.book.clear_tx(epoch.epoch, "nonce_taken", reverted=False)
            return
        self.metrics.retries.labels(reason="dropped").inc()
        log.warning("payout: node lost root post %s of epoch %d; sending it again",
                    epoch.tx_hash, epoch.epoch)
        self._broadcast(epoch.raw_tx)

    def _follow_pending(self, epoch: StoredEpoch, body: PayoutEpoch,
                        pending: dict[str, Any]) -> None:
        """A post pending for ``resend_after_s`` is replaced: same nonce, 12.5% more gas price."""
        assert epoch.tx_hash is not None
        since = self._pending_since.setdefault(epoch.tx_hash, self._monotonic())
        if self._monotonic() - since < self.config.resend_after_s:
            return
        price = quantity(pending.get("gasPrice"), "gas price")
        self.metrics.retries.labels(reason="stuck").inc()
        log.warning("payout: root post %s of epoch %d pending for %.0f s; replacing it",
                    epoch.tx_hash, epoch.epoch, self._monotonic() - since)
        self._pending_since.pop(epoch.tx_hash, None)
        self._send(epoch, body, nonce=epoch.nonce, min_price=price + price // 8 + 1)

    def _send(self, epoch: StoredEpoch, body: PayoutEpoch, *, nonce: int | None = None,
              min_price: int = 0) -> None:
        data = abi.post_root(epoch.epoch, body.root, body.total_base_units)
        try:
            estimate = self._rpc.estimate_gas(self.address, self.config.distributor, data)
        except RpcError as exc:
            if not exc.reverted:
                raise
            self._reverted(epoch, f"eth_estimateGas: {exc.message}")
            return
        if nonce is None:
            nonce = self._rpc.nonce(self.address, "pending")
        tx: dict[str, Any] = {"nonce": nonce, "gasPrice": max(self._rpc.gas_price(), min_price),
                              "to": self.config.distributor,
                              "gas": estimate + estimate // 5, "value": 0, "data": data,
                              "chainId": self.config.chain_id}
        signed = sign_transaction(tx, self._key.value)
        self.book.record_tx(epoch.epoch, signed.tx_hash, signed.raw, tx["nonce"])
        self._broadcast(signed.raw)

    def _broadcast(self, raw: bytes) -> None:
        self.metrics.transactions.inc()
        self._rpc.send_raw(raw)

    def _reverted(self, epoch: StoredEpoch, detail: str) -> None:
        if epoch.attempts + 1 >= self.config.max_attempts:
            self._fail(epoch, detail)
            return
        self.metrics.retries.labels(reason="reverted").inc()
        log.warning("payout: epoch %d: %s; signing it again", epoch.epoch, detail)
        self.book.clear_tx(epoch.epoch, detail, reverted=True)

    def _fail(self, epoch: StoredEpoch, detail: str) -> None:
        self.metrics.epochs.labels(outcome="failed").inc()
        log.error("payout: epoch %d NOT posted: %s", epoch.epoch, detail)
        self.book.finish(epoch.epoch, FAILED, self._wall_ms(), detail=detail)

    def _finish_posted(self, epoch: StoredEpoch) -> None:
        block = None
        if epoch.tx_hash:
            receipt = self._rpc.receipt(epoch.tx_hash)
            if receipt is not None and receipt.get("blockNumber") is not None:
                block = quantity(receipt.get("blockNumber"), "receipt block number")
        self.book.finish(epoch.epoch, POSTED, self._wall_ms(), block_number=block)
        self.metrics.epochs.labels(outcome="posted").inc()
        self.metrics.posted_epoch.set(epoch.epoch)
        log.info("payout: epoch %d root posted (block %s)", epoch.epoch, block)

    # --- what the API serves -------------------------------------------------------------------

    def posted_tree(self) -> tuple[StoredEpoch, DistributionTree] | None:
        """The latest epoch whose root is on chain, with its tree (None before the first)."""
        epoch = self.book.latest(POSTED)
        if epoch is None:
            return None
        tree = self._trees.get(epoch.epoch)
        if tree is None:
            tree = DistributionTree.load(epoch.tree)
            self._trees = {epoch.epoch: tree}
        return epoch, tree

    def notice(self, owner_id: bytes) -> Document | None:
        """The owner's payout notice (PROTOCOL.md §19.5), signed now: its bound address,
        that address's cumulative amount in the latest posted root and ``claimed(address)``
        read from the distributor (left out if the chain does not answer, counted). None
        before the first posted epoch, without a binding, or with no amount in that root."""
        found = self.posted_tree()
        binding_raw = self.book.wallet_of(owner_name(owner_id))
        if found is None or binding_raw is None:
            return None
        stored, tree = found
        body = _body(stored)
        _, binding = verify_wallet_binding(binding_raw)
        try:
            leaf = tree.leaf(binding.checksum_address)
        except KeyError:
            return None
        claimed = self._claimed_micro(leaf.address, body.rate)
        notice = PayoutNotice(owner_id, stored.epoch, binding.address, leaf.amount // body.rate,
                              claimed, body.chain_id, body.distributor, body.root)
        self.metrics.notices.inc()
        return sign_document(notice, self._signer, self._wall_ms())

    def _claimed_micro(self, address: str, rate: int) -> int | None:
        """``claimed(address)`` on the distributor in micro-credits; None (counted, logged)
        if the node does not answer or answers nonsense."""
        try:
            with self._api_rpc_lock:  # one call at a time; a cached answer is reused
                cached = self._claimed_cache.get(address)
                if cached is not None and self._monotonic() - cached[0] < CLAIMED_TTL_S:
                    raw = cached[1]
                else:
                    raw = self._api_rpc.eth_call(self.config.distributor,
                                                 abi.view("claimed", address))
                    if len(self._claimed_cache) >= MAX_CLAIMED_CACHE:
                        self._claimed_cache.clear()
                    self._claimed_cache[address] = (self._monotonic(), raw)
        except (TransportError, RpcError) as exc:
            self.metrics.rpc_errors.labels(kind="notice_claimed").inc()
            log.warning("payout: claimed(%s) unreadable for a notice: %s", address, exc)
            return None
        if len(raw) != 32:
            self.metrics.rpc_errors.labels(kind="notice_claimed").inc()
            log.warning("payout: claimed(%s) answered %d bytes", address, len(raw))
            return None
        return abi.uint(raw) // rate


def _settled(balances: bytes) -> int:
    """All settled credit of a checkpoint's balances table."""
    return sum(micro for _, micro in decode_balances(balances))


def _body(epoch: StoredEpoch) -> PayoutEpoch:
    body = parse_document(epoch.document).body
    assert isinstance(body, PayoutEpoch)
    return body

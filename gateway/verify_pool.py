"""Stateless verification in worker processes, so one gateway verifies on every core.

:func:`gateway.verify.prepare_batch` (decode, caps, Ed25519) holds the GIL for most of a
record's cost, so threads cannot spread it over cores. :class:`VerifyPool` runs it in
``[gateway] verify_workers`` processes instead (default: one per core the process may run
on; ``0`` keeps it on a thread pool inside the gateway process, as before) and hands the
:class:`~gateway.verify.PreparedBatch` back to the sequencer, which keeps the parsed
records: it never decodes or verifies a record again, except when the device's key
changed meanwhile.

- **Keys.** A worker has no store. With each message the sequencer sends the registry's
  snapshot of the device the topic names (read when the message leaves the fair queue);
  a record signed by any other kid is rejected by the rules before its signature matters.
  Each record remembers the key its signature verified (or failed) under
  (``PreparedRecord.good_key``/``bad_key``); the sequencer compares that with the key its
  own transaction reads and verifies again when they differ, so a rotation or revocation
  that lands while a batch is in a worker never lets a record in under a stale key.
- **Bounded.** The pool holds only what the sequencer hands it, which the service bounds
  (``MAX_GROUP_BATCHES`` messages, ``MAX_INFLIGHT_BYTES``); there is no queue of its own.
- **A worker dies** (kill -9, out of memory): when the executor reports it (at once for
  the jobs it held, else at the next job), every job it and its siblings had is sent
  again to a fresh set of workers (``gateway_verify_worker_restarts_total``). A job that
  broke the pool twice is verified in the gateway process instead, so a message never
  loops. Nothing is acknowledged before its records are committed, so nothing is lost,
  and the job's result is delivered once, so nothing is committed twice.
- **Start and stop.** Workers fork from a small server process started with the pool
  (``forkserver``: the gateway's threads are never forked); :meth:`VerifyPool.start` waits
  until every worker answered once, and a pool (first or restarted) starts all its
  workers however slowly jobs come (each waits for its siblings before it takes one).
  Workers ignore SIGINT and SIGTERM (systemd signals the whole unit): the gateway
  finishes its batch in progress and then stops them. A gateway killed with SIGKILL takes
  them along: the forkserver dies with the gateway (:mod:`gateway.forkserver_init`) and
  each worker with the forkserver (a parent-death signal), and the resource tracker exits
  when their pipes close.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier as BarrierType

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import Limits
from gateway.metrics import PREFIX
from gateway.store import Device
from gateway.verify import (
    Header,
    KeyLookup,
    PreparedBatch,
    PreparedRecord,
    RuleBody,
    prepare_batch,
)
from osutil.deathsig import die_with_parent
from protocol.reasons import Reason

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 2  # a job that broke the pool this often is verified in-process
_START_TIMEOUT_S = 60.0
_WATCH_S = 1.0  # how often the watchdog looks for a dead worker its executor missed
_limits = Limits()  # set in each worker by _init_worker
# Young-generation collections every GC_THRESHOLD allocations net (CPython's default, 700,
# runs one every few records here): the per-record objects die by reference count anyway,
# and a full collection still comes every GC_THRESHOLD * 20 * 100 allocations.
GC_THRESHOLD = (20_000, 20, 100)


def settle_heap() -> None:
    """After start-up: keep what exists out of every later collection, collect less often.

    Measured on the sequencer's side of a group commit: about 15 % of its CPU time went
    to the cyclic garbage collector with CPython's default thresholds (docs/GATEWAY.md
    "Performance"). Called by the gateway once it serves, and by each verify worker.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _init_worker(limits: Limits, started: BarrierType) -> None:
    global _limits  # noqa: PLW0603 - per-process state of a pool worker
    _limits = limits
    # The forkserver dies with the gateway, even after a kill -9 (gateway.forkserver_init);
    # a worker waiting for work would not notice (it holds the pipes that would tell it),
    # so the kernel ends it then.
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settle_heap()
    # Idle only once every worker of the pool has started (VerifyPool._new_executor). A
    # timeout raises here, the executor reports itself broken, and the pool restarts.
    started.wait(_START_TIMEOUT_S)


def _ping() -> int:
    return os.getpid()


def _lookup(device: Device | None) -> KeyLookup:
    """The registry as a worker sees it: just the topic's device, as the sequencer read it."""
    def lookup(kid: bytes) -> Device | None:
        return device if device is not None and kid == device.device_id else None
    return lookup


def _prepare_in_worker(topic: str, payload: bytes, arrived: float,
                       device: Device | None) -> _Packed:
    return pack(prepare_batch(topic, payload, arrived, _limits, _lookup(device)))


# A PreparedBatch as plain tuples: pickling the objects themselves costs about four times
# as much on each side (measured: docs/GATEWAY.md "Performance"), and the parent's side
# holds the sequencer's GIL. The record's Sign1 stays behind (see signature_valid), and so
# does a body no stateful rule reads (gateway.verify.Header).
_Header = tuple[int, int, bytes, int, bool, int, str, RuleBody | None]
_PackedRecord = tuple[bytes, bytes, Reason | None, bytes | None, bytes | None, bytes,
                      _Header | None]
_Packed = tuple[bytes | None, bytes, int | None, Reason | None, list[_PackedRecord]]


def pack(batch: PreparedBatch) -> _Packed:
    """The batch as tuples for the trip back to the gateway process (no Sign1)."""
    records: list[_PackedRecord] = []
    for item in batch.records:
        header: _Header | None = None
        if item.record is not None:
            r = item.record
            body = r.body if isinstance(r.body, RuleBody) else None
            header = (r.boot, r.seq, r.prev, r.wall_ms, r.clock_synced, r.mono_ms, r.stream,
                      body)
        records.append((item.raw, item.hash, item.reject, item.good_key, item.bad_key,
                        item.signer, header))
    return batch.topic_device, batch.payload_hash, batch.batch_id, batch.reject, records


def unpack(topic: str, arrived: float, packed: _Packed) -> PreparedBatch:
    """Rebuild what :func:`pack` sent; records were validated in the worker already."""
    topic_device, payload_hash, batch_id, reject, packed_records = packed
    records = [PreparedRecord(raw, digest, None, None if header is None else Header(*header),
                              why, good, bad, signer)
               for raw, digest, why, good, bad, signer, header in packed_records]
    return PreparedBatch(topic, topic_device, arrived, payload_hash, batch_id, reject, records)


@dataclass(frozen=True)
class _Job:
    topic: str
    payload: bytes
    arrived: float
    device: Device | None


class VerifyPool:
    """``workers`` verifying processes (or, with 0, ``threads`` threads in this process)."""

    def __init__(self, workers: int, threads: int, limits: Limits,
                 registry: CollectorRegistry) -> None:
        """Prepare the pool; no process starts before :meth:`start`."""
        self.workers, self._limits = workers, limits
        self._lock = threading.Lock()
        self._closing = False
        self._generation = 0
        self._local = ThreadPoolExecutor(max_workers=threads,
                                         thread_name_prefix="gateway-verify")
        self._executor: Executor = self._local
        # Jobs in a worker process: inner future -> (job, outer future, attempt, generation).
        # Whoever pops a job's entry delivers or resends it: its own callback, or the
        # watchdog when the executor stopped reporting (once, either way).
        self._inflight: dict[Future[_Packed], tuple[_Job, Future[PreparedBatch], int, int]] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.restarts = Counter(f"{PREFIX}_verify_worker_restarts",
                                "Times the verify worker processes were replaced after one "
                                "died (their jobs were verified again)", registry=registry)
        self.fallbacks = Counter(f"{PREFIX}_verify_inprocess_fallbacks",
                                 "Batches verified in the gateway process because workers "
                                 "died twice on them", registry=registry)
        self.unreported = Counter(f"{PREFIX}_verify_worker_unreported_deaths",
                                  "Worker deaths the executor did not report (a worker killed "
                                  "while it sent a result stalls it), found by the pool's "
                                  "watchdog, which restarted the workers", registry=registry)
        Gauge(f"{PREFIX}_verify_workers", "Verify worker processes (0: verifying on threads "
              "in the gateway process)", registry=registry).set(workers)

    def start(self) -> None:
        """Start the workers and wait until each answered; raise OSError if they cannot."""
        if self.workers:
            with self._lock:
                self._executor, pings = self._new_executor()
            for ping in pings:
                ping.result(timeout=_START_TIMEOUT_S)
            self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                              name="gateway-verify-watchdog")
            self._watchdog.start()

    def submit(self, topic: str, payload: bytes, arrived: float,
               device: Device | None) -> Future[PreparedBatch]:
        """Verify one message against ``device`` (the registry's entry for the topic)."""
        job = _Job(topic, payload, arrived, device)
        outer: Future[PreparedBatch] = Future()
        if not self.workers:
            return self._local.submit(self._in_process, job)
        self._send(job, outer, 1)
        return outer

    def worker_pids(self) -> list[int]:
        """The worker processes' ids now (empty with 0 workers or before :meth:`start`)."""
        with self._lock:
            executor = self._executor
        return sorted(_processes(executor))

    def close(self) -> None:
        """Stop the workers (jobs not started are cancelled; the messages stay unacked)."""
        with self._lock:
            self._closing = True
            executor = self._executor
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        executor.shutdown(wait=True, cancel_futures=True)
        self._local.shutdown(wait=True, cancel_futures=True)

    # --- internals -----------------------------------------------------------------------

    def _new_executor(self) -> tuple[ProcessPoolExecutor, list[Future[int]]]:
        """A new executor with one trivial job per worker already in (its pings)."""
        context = multiprocessing.get_context("forkserver")
        # gateway.forkserver_init first: the server dies with this process, even after a
        # kill -9, and with it the workers and the resource tracker.
        context.set_forkserver_preload(["gateway.forkserver_init", "gateway.verify_pool"])
        # ProcessPoolExecutor starts a worker for a job only when none is idle: jobs that
        # come slower than one worker finishes them never start the others, so a pool
        # restarted under a trickle (or busy with the batches it resent) went on with one
        # worker. Each worker waits in its initializer until all have started; none is idle
        # before then, so the first `workers` jobs, the pings submitted here before anyone
        # else sees the executor, start them all.
        started = context.Barrier(self.workers)
        executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                       initializer=_init_worker,
                                       initargs=(self._limits, started))
        return executor, [executor.submit(_ping) for _ in range(self.workers)]

    def _in_process(self, job: _Job) -> PreparedBatch:
        return prepare_batch(job.topic, job.payload, job.arrived, self._limits,
                             _lookup(job.device))

    def _send(self, job: _Job, outer: Future[PreparedBatch], attempt: int) -> None:
        with self._lock:
            executor, generation, closing = self._executor, self._generation, self._closing
        if closing:
            outer.cancel()
            return
        if attempt > MAX_ATTEMPTS:
            self.fallbacks.inc()
            log.error("verify workers died twice on a batch from %s: verifying it in the "
                      "gateway process", job.topic)
            _complete(outer, lambda: self._in_process(job))
            return
        try:
            inner = executor.submit(_prepare_in_worker, job.topic, job.payload, job.arrived,
                                    job.device)
        except (BrokenProcessPool, RuntimeError):  # broken, or shut down by a restart
            self._restart(generation)
            self._send(job, outer, attempt + 1)
            return
        with self._lock:  # before the callback exists, so it always finds the entry
            self._inflight[inner] = (job, outer, attempt, generation)
        inner.add_done_callback(lambda done: self._finished(done, executor=executor))

    def _finished(self, inner: Future[_Packed], *, executor: Executor) -> None:
        with self._lock:
            entry = self._inflight.pop(inner, None)
        if entry is None:
            return  # the watchdog has sent this job again: its answer comes from there
        job, outer, attempt, generation = entry
        if inner.cancelled():
            outer.cancel()
            return
        error = inner.exception()
        if isinstance(error, BrokenProcessPool):
            _kill_workers(executor)
            self._restart(generation)
            self._send(job, outer, attempt + 1)
        elif error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(unpack(job.topic, job.arrived, inner.result()))

    def _restart(self, generation: int) -> None:
        """Replace a broken executor once, however many of its jobs report it."""
        with self._lock:
            if self._closing or generation != self._generation:
                return
            old = self._executor
            self._executor, _ = self._new_executor()
            self._generation += 1
        self.restarts.inc()
        log.error("a verify worker died; restarted the workers and sent their batches again")
        _kill_workers(old)
        old.shutdown(wait=False)  # its jobs fail as broken and are sent again

    def _watch(self) -> None:
        """Restart the workers when one is dead and its executor has not said so by the
        next look.

        ProcessPoolExecutor reads every worker's results from ONE pipe: a worker killed
        while it wrote a result leaves half a message there, and the executor's thread
        waits for the rest for ever, looking at nothing else, so none of its jobs would
        ever finish (and, the worker having held the pipe's lock, its siblings block too).
        """
        suspect = -1  # the generation that had a dead worker at the previous look
        while not self._stop.wait(_WATCH_S):
            with self._lock:
                executor, generation = self._executor, self._generation
            if not _a_worker_died(executor):
                suspect = -1
            elif suspect != generation:
                suspect = generation  # give the executor one look's time to report it
            elif getattr(executor, "_broken", False):
                self._restart(generation)  # reported, but no job has come to hear it
            else:
                self._replace_stalled(executor, generation)

    def _replace_stalled(self, executor: Executor, generation: int) -> None:
        """Restart the workers and send every job ``executor`` held to the new ones."""
        with self._lock:
            stranded = [(inner, entry) for inner, entry in self._inflight.items()
                        if entry[3] == generation]
            for inner, _ in stranded:
                del self._inflight[inner]
        self.unreported.inc()
        log.error("a verify worker died and its executor did not report it (killed while "
                  "it sent a result?): restarting the workers, sending %d batches again",
                  len(stranded))
        # The executor's thread waits for the rest of a half-written result: with every
        # worker dead and our copy of the pipe's write end closed, it reads end-of-file,
        # reports the pool broken (to callbacks that find nothing left to do) and ends;
        # else it would also hold up the interpreter's exit. (Before the restart, which
        # shuts the executor down and drops its queue.)
        writer = getattr(getattr(executor, "_result_queue", None), "_writer", None)
        _kill_workers(executor)
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
        self._restart(generation)
        for _, (job, outer, attempt, _) in stranded:
            self._send(job, outer, attempt + 1)


def _processes(executor: Executor) -> dict[int, multiprocessing.process.BaseProcess]:
    """The executor's live worker processes by pid (it has no public view of them)."""
    if not isinstance(executor, ProcessPoolExecutor):
        return {}
    return dict(executor._processes or {})  # noqa: SLF001


def _a_worker_died(executor: Executor) -> bool:
    sentinels = []
    for process in _processes(executor).values():
        with contextlib.suppress(ValueError):  # closed: the executor has reaped it
            sentinels.append(process.sentinel)
    return bool(multiprocessing.connection.wait(sentinels, 0))


def _kill_workers(executor: Executor) -> None:
    """SIGKILL what is left of a broken executor's workers.

    The executor ends them with SIGTERM and waits, but workers ignore SIGTERM (see the
    module docstring), so it would wait for ever.
    """
    for process in _processes(executor).values():
        with contextlib.suppress(OSError, ValueError):
            process.kill()


def _complete(outer: Future[PreparedBatch], work: Callable[[], PreparedBatch]) -> None:
    try:
        outer.set_result(work())
    except Exception as exc:  # noqa: BLE001 - handed to whoever waits for the result
        outer.set_exception(exc)

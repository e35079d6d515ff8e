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
- **One pipe per worker.** A job goes down its worker's own socket pair at once, to the
  worker with the fewest jobs outstanding, and the worker answers on the same pair, in
  order; a single thread in the gateway reads every worker's answers. No queue sits in
  between and no thread feeds one, and a worker that dies half-way through an answer
  leaves the broken message on its own pipe only (the reader gets end-of-file there).
  A job the pipe has no room for (a batch bigger than the socket's buffer, or a busy
  worker's pipe already full) goes down from a thread of its own, with the worker's jobs
  after it, so the sequencer never waits for a busy worker to read.
- **Bounded.** The pool holds only what the sequencer hands it, which the service bounds
  (``MAX_GROUP_BATCHES`` messages, ``MAX_INFLIGHT_BYTES``); a worker's outbox holds only
  some of those, never more.
- **A worker dies** (kill -9, out of memory): the reader sees its process end (or its pipe
  close), starts a new worker in its place and sends the jobs the dead one held to the
  workers left (``gateway_verify_worker_restarts_total``); the other workers' jobs go on
  untouched. A job that was in a worker when it died twice is verified in the gateway
  process instead, so a message never loops. A worker that cannot be started is counted
  (``gateway_verify_worker_start_failures_total``) and tried again every second; with no
  worker alive, jobs are verified in the gateway process. Nothing is acknowledged before
  its records are committed, so nothing is lost, and a job's result is delivered once, so
  nothing is committed twice.
- **Start and stop.** Workers fork from a small server process started with the pool
  (``forkserver``: the gateway's threads are never forked); :meth:`VerifyPool.start` waits
  until every worker answered once. Workers ignore SIGINT and SIGTERM (systemd signals the
  whole unit): the gateway finishes its batch in progress and then closes their pipes, and
  each worker exits at end-of-file. A gateway killed with SIGKILL takes them along: the
  forkserver dies with the gateway (:mod:`gateway.forkserver_init`) and each worker with
  the forkserver (a parent-death signal), and the resource tracker exits when their pipes
  close.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import struct
import termios
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

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
MAX_ATTEMPTS = 2  # a job that was in a dying worker this often is verified in-process
_START_TIMEOUT_S = 60.0
_RETRY_START_S = 1.0  # how often a pool short of workers tries to start one again
_STOP_TIMEOUT_S = 10.0
_PING = b""  # a job of no bytes: the worker answers with its pid
# A job goes straight down its worker's pipe, from the thread that submits it, only while
# the pipe has room for it with this much to spare (the kernel counts each write's
# bookkeeping too); else a thread of its own sends it (VerifyPool._drain).
_PIPE_SLACK = 8192
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


def _serve(conn: Connection, limits: Limits) -> None:
    """A worker's life: answer each job on ``conn``, in order, until end-of-file."""
    # The forkserver dies with the gateway, even after a kill -9 (gateway.forkserver_init);
    # a worker waiting for work might not notice, so the kernel ends it then.
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settle_heap()
    while True:
        try:
            job = conn.recv_bytes()
            answer = _answer(job, limits)
            conn.send_bytes(answer)
        except (EOFError, OSError):
            return  # the gateway closed the pool (or is gone), maybe while we verified


def _answer(job: bytes, limits: Limits) -> bytes:
    """The pickled answer to one pickled job: (True, packed batch) or (False, error)."""
    if job == _PING:
        return pickle.dumps((True, os.getpid()), pickle.HIGHEST_PROTOCOL)
    try:
        topic, payload, arrived, device = pickle.loads(job)  # noqa: S301 - from the gateway
        answer: tuple[bool, object] = (True, pack(prepare_batch(topic, payload, arrived, limits,
                                                                _lookup(device))))
    except Exception as exc:  # noqa: BLE001 - a bug: the gateway raises it for the batch
        answer = (False, f"{type(exc).__name__}: {exc}")
    return pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)


def _lookup(device: Device | None) -> KeyLookup:
    """The registry as a worker sees it: just the topic's device, as the sequencer read it."""
    def lookup(kid: bytes) -> Device | None:
        return device if device is not None and kid == device.device_id else None
    return lookup


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


class VerifyWorkerError(RuntimeError):
    """A worker raised while it verified a batch (a bug: bad input is rejected, not raised)."""


@dataclass(frozen=True)
class _Job:
    topic: str
    payload: bytes
    arrived: float
    device: Device | None


@dataclass(eq=False)  # compared and hashed by identity
class _Worker:
    """One worker process, its end of the pipe, and the jobs it holds, oldest first."""

    process: BaseProcess
    conn: Connection
    # (job, outer future, attempt). Appended under send_lock in the order they go down the
    # pipe (straight, or through the outbox), which is the order of the answers.
    jobs: deque[tuple[_Job, Future[PreparedBatch], int]] = field(default_factory=deque)
    # The pipe's room (the socket's send buffer), and the jobs waiting for room, oldest
    # first, which a thread of their own sends while ``sending`` (VerifyPool._drain).
    room: int = 0
    outbox: deque[bytes] = field(default_factory=deque)
    sending: bool = False
    send_lock: threading.Lock = field(default_factory=threading.Lock)  # all but the pipe
    write_lock: threading.Lock = field(default_factory=threading.Lock)  # the pipe itself
    dead: bool = False


class VerifyPool:
    """``workers`` verifying processes (or, with 0, ``threads`` threads in this process)."""

    def __init__(self, workers: int, threads: int, limits: Limits,
                 registry: CollectorRegistry) -> None:
        """Prepare the pool; no process starts before :meth:`start`."""
        self.workers, self._limits = workers, limits
        self._lock = threading.Lock()  # guards _workers and the choice of a worker
        self._workers: list[_Worker] = []
        self._next = 0  # where the search for the least busy worker starts (round robin)
        self._closing = False
        self._local = ThreadPoolExecutor(max_workers=threads,
                                         thread_name_prefix="gateway-verify")
        self._context = multiprocessing.get_context("forkserver")
        # gateway.forkserver_init first: the server dies with this process, even after a
        # kill -9, and with it the workers and the resource tracker.
        self._context.set_forkserver_preload(["gateway.forkserver_init",
                                              "gateway.verify_pool"])
        self._wake_r, self._wake_w = self._context.Pipe(duplex=False)
        self._reader: threading.Thread | None = None
        self.restarts = Counter(f"{PREFIX}_verify_worker_restarts",
                                "Verify worker processes replaced after one died (the jobs "
                                "it held were verified again)", registry=registry)
        self.start_failures = Counter(f"{PREFIX}_verify_worker_start_failures",
                                      "Verify worker processes that could not be started "
                                      "(tried again every second)", registry=registry)
        self.reader_errors = Counter(f"{PREFIX}_verify_reader_errors",
                                     "Errors in the thread that reads the verify workers' "
                                     "answers (a bug; it logs them and goes on)",
                                     registry=registry)
        self.fallbacks = Counter(f"{PREFIX}_verify_inprocess_fallbacks",
                                 "Batches verified in the gateway process because workers "
                                 "died twice on them, or none was running",
                                 registry=registry)
        Gauge(f"{PREFIX}_verify_workers", "Verify worker processes (0: verifying on threads "
              "in the gateway process)", registry=registry).set(workers)

    def start(self) -> None:
        """Start the workers and wait until each answered; raise OSError if they cannot."""
        if not self.workers:
            return
        atexit.register(self.close)  # before multiprocessing's own exit handler joins them
        for _ in range(self.workers):  # kept at once, so close() stops them whatever fails
            self._workers.append(self._start_worker())
        for worker in self._workers:
            worker.conn.send_bytes(_PING)
        for worker in self._workers:
            if not worker.conn.poll(_START_TIMEOUT_S):
                raise OSError(f"verify worker {worker.process.pid} did not answer in "
                              f"{_START_TIMEOUT_S:.0f} s")
            worker.conn.recv_bytes()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="gateway-verify-results")
        self._reader.start()

    def submit(self, topic: str, payload: bytes, arrived: float,
               device: Device | None) -> Future[PreparedBatch]:
        """Verify one message against ``device`` (the registry's entry for the topic)."""
        job = _Job(topic, payload, arrived, device)
        if not self.workers:
            return self._local.submit(self._in_process, job)
        outer: Future[PreparedBatch] = Future()
        self._send(job, outer, 1)
        return outer

    def worker_pids(self) -> list[int]:
        """The live worker processes' ids (empty with 0 workers or before :meth:`start`)."""
        with self._lock:
            return sorted(w.process.pid for w in self._workers
                          if not w.dead and w.process.pid is not None)

    def close(self) -> None:
        """Stop the workers (jobs they hold are cancelled; the messages stay unacked)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        atexit.unregister(self.close)
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")
        if self._reader is not None:
            self._reader.join()
        for worker in self._workers:
            with worker.send_lock:
                worker.outbox.clear()
            # A job half-sent to a worker that reads nothing (hung) holds the pipe: kill it.
            if not worker.write_lock.acquire(timeout=_STOP_TIMEOUT_S):
                worker.process.kill()
                worker.write_lock.acquire()
            worker.conn.close()  # the worker reads end-of-file and exits
            worker.write_lock.release()
        for worker in self._workers:
            worker.process.join(_STOP_TIMEOUT_S)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            while worker.jobs:
                worker.jobs.popleft()[1].cancel()
        self._workers = []
        self._wake_r.close()
        self._wake_w.close()
        self._local.shutdown(wait=True, cancel_futures=True)

    # --- internals -----------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_serve, args=(theirs, self._limits),
                                        name="gateway-verify", daemon=True)
        try:
            process.start()
        finally:
            theirs.close()  # the worker's copy only: its death then reads as end-of-file
        return _Worker(process, ours, room=_send_buffer(ours))

    def _in_process(self, job: _Job) -> PreparedBatch:
        return prepare_batch(job.topic, job.payload, job.arrived, self._limits,
                             _lookup(job.device))

    def _fallback(self, job: _Job, outer: Future[PreparedBatch], why: str) -> None:
        self.fallbacks.inc()
        log.error("verifying a batch from %s in the gateway process: %s", job.topic, why)
        self._local.submit(_complete, outer, lambda: self._in_process(job))

    def _send(self, job: _Job, outer: Future[PreparedBatch], attempt: int) -> None:
        if attempt > MAX_ATTEMPTS:
            self._fallback(job, outer, "workers died twice while they held it")
            return
        data = pickle.dumps((job.topic, job.payload, job.arrived, job.device),
                            pickle.HIGHEST_PROTOCOL)
        while True:
            with self._lock:
                if self._closing:
                    outer.cancel()
                    return
                live = [w for w in self._workers if not w.dead]
                if not live:
                    break
                self._next += 1
                worker = min(live[self._next % len(live):] + live[:self._next % len(live)],
                             key=lambda w: len(w.jobs))
            with worker.send_lock:
                if worker.dead:
                    continue  # the reader took its jobs meanwhile: choose again
                worker.jobs.append((job, outer, attempt))
                # If it died, the reader sends what it held again, this job too.
                if not worker.sending and _has_room(worker, len(data)):
                    with worker.write_lock, contextlib.suppress(OSError):
                        worker.conn.send_bytes(data)  # all fits in the pipe: no wait
                else:  # on a thread of its own, or behind the jobs it sends already
                    worker.outbox.append(data)
                    if not worker.sending:
                        worker.sending = True
                        threading.Thread(target=self._drain, args=(worker,), daemon=True,
                                         name="gateway-verify-send").start()
            return
        self._fallback(job, outer, "no verify worker is running")

    def _drain(self, worker: _Worker) -> None:
        """Send ``worker`` the jobs its pipe had no room for, in order, then end.

        A batch bigger than the socket's buffer (batches may be 512 KiB; the buffer is
        about 200 KiB) would otherwise hold the sequencer thread, which sends, until the
        worker had finished the jobs before it. While this runs, the worker's later jobs
        queue behind it (the order on the pipe is the order of the answers).
        """
        while True:
            with worker.send_lock:
                if worker.dead or not worker.outbox:
                    worker.outbox.clear()
                    worker.sending = False  # the next job may go straight down again
                    return
                data = worker.outbox.popleft()
            with worker.write_lock, contextlib.suppress(OSError):
                worker.conn.send_bytes(data)  # closed meanwhile: the reader resends its jobs

    def _read(self) -> None:
        """The reader thread: every worker's answers, and their deaths, until close."""
        while not self._closing:
            try:
                self._read_once()
            except Exception:  # a bug here would stall every batch: say so and go on
                self.reader_errors.inc()
                log.exception("verify pool: reading the workers' answers failed")
                self._wake_r.poll(_RETRY_START_S)

    def _read_once(self) -> None:
        with self._lock:
            workers = list(self._workers)
            short = self.workers - len(workers)
        by_conn = {w.conn: w for w in workers}
        by_sentinel = {w.process.sentinel: w for w in workers}
        ready = multiprocessing.connection.wait(
            [self._wake_r, *by_sentinel, *by_conn], _RETRY_START_S if short else None)
        if self._closing:
            return
        died = {by_sentinel[s] for s in ready if s in by_sentinel}
        for conn in ready:
            worker = by_conn.get(conn)  # type: ignore[call-overload]
            if worker is None or worker in died:
                continue
            try:
                answer = worker.conn.recv_bytes()
            except (EOFError, OSError):
                died.add(worker)
                continue
            self._deliver(worker, answer)
        for worker in died:
            self._bury(worker)
        if died or short:
            self._replenish()

    def _deliver(self, worker: _Worker, answer: bytes) -> None:
        job, outer, _ = worker.jobs.popleft()

        def result() -> PreparedBatch:
            ok, value = pickle.loads(answer)  # noqa: S301 - our own worker's answer
            if not ok:
                raise VerifyWorkerError(value)
            return unpack(job.topic, job.arrived, value)
        _complete(outer, result)

    def _bury(self, worker: _Worker) -> None:
        """Forget a dead worker and send what it held to the others (on another thread:
        this one must go on reading, or a worker answering a big batch and the sender
        could wait for each other)."""
        with worker.send_lock:
            worker.dead = True
            held = list(worker.jobs)
            worker.jobs.clear()
            worker.outbox.clear()
        with self._lock:
            self._workers.remove(worker)
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()  # first: a write to its pipe then fails at once
        with worker.write_lock:
            worker.conn.close()
        worker.process.join(_STOP_TIMEOUT_S)
        self.restarts.inc()
        log.error("verify worker %s died (exit %s); sending the %d batches it held again",
                  worker.process.pid, worker.process.exitcode, len(held))
        for job, outer, attempt in held:
            self._local.submit(self._send, job, outer, attempt + 1)

    def _replenish(self) -> None:
        """Start workers until the pool has its number again (failures retried later)."""
        while True:
            with self._lock:
                if self._closing or len(self._workers) >= self.workers:
                    return
            try:
                worker = self._start_worker()
            except (OSError, ValueError) as exc:
                self.start_failures.inc()
                log.error("could not start a verify worker (trying again in %.0f s): %s",
                          _RETRY_START_S, exc)
                return
            with self._lock:
                self._workers.append(worker)


def _send_buffer(conn: Connection) -> int:
    """How many bytes the kernel lets wait on ``conn``'s socket unread."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    finally:
        sock.detach()  # the Connection keeps its descriptor


def _has_room(worker: _Worker, size: int) -> bool:
    """Whether ``size`` more bytes fit in the worker's pipe, so sending them cannot block."""
    try:
        queued = fcntl.ioctl(worker.conn.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return False  # closed: the thread that sends will find out
    (waiting,) = struct.unpack("i", queued)
    return int(waiting) + size + _PIPE_SLACK <= worker.room


def _complete(outer: Future[PreparedBatch], work: Callable[[], PreparedBatch]) -> None:
    try:
        outer.set_result(work())
    except Exception as exc:  # noqa: BLE001 - handed to whoever waits for the result
        outer.set_exception(exc)

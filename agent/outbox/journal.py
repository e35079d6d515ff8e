"""The outbox's journal: what happened since the last group commit, handed to the kernel.

A process crash is not a power cut: bytes passed to ``write(2)`` live in the kernel's page
cache and survive the death of the process that wrote them; only ``fsync`` makes them
survive a power cut. The outbox appends every change it has not yet committed to SQLite
(each signed record, each drop, each refused number) here with one unbuffered ``write``
and no fsync, then commits to SQLite once per window. The next start replays it, so a
``kill -9`` loses nothing that was written here.

There are two journal files, used in turn (:class:`Journals`): when a group commit is
handed to the background thread, appends go on in the other file at once, and the file
the commit covers is emptied once that commit has reached SQLite. The next start replays
every file whose generation is not yet committed, oldest first, and stops at the first
record whose number does not follow the one before (a power cut can empty the older file
and keep the newer one: nothing after such a hole is replayed, so the loss is a tail and
is declared as one).

Format: a header ``b"EPJ1"`` + the 8-byte commit generation it follows (big-endian), then
frames ``length (4) | crc32 (4) | payload``. A payload is an operation byte and its fields:

- ``R`` seq (8), protected (1), stream length (1), stream, record bytes: a stored record;
- ``D`` seq (8) ...: records dropped by the full policy;
- ``X`` seq (8): a number refused (burned) by the ``reject-new`` policy.

Reading stops at the first frame that is short or fails its CRC: a write torn by a power
cut (or a kill inside ``write``) is a tail that never returned to the writer, so nothing
it held was ever sent. A ``write`` that fails part-way (the disk filled, an I/O error)
returns to the writer with an error, and the journal cuts off what it left before anything
else is appended, so a torn frame is only ever the file's last.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import StorageError

MAGIC = b"EPJ1"
_HEADER = struct.Struct(">4sQ")
_FRAME = struct.Struct(">II")
_SEQ = struct.Struct(">Q")
_RECORD = struct.Struct(">QBB")
MAX_FRAME = 1 << 24
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def kernel_boot_id() -> str:
    """The running kernel's boot id (a new one after every reboot); '' if unreadable.

    It tells a crash of the agent process (same kernel: the page cache and so the journal
    survived) from a reboot after a power cut or a kernel crash (it may not have).
    """
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Stored:
    seq: int
    stream: str
    protected: bool
    raw: bytes


@dataclass(frozen=True)
class Dropped:
    seqs: tuple[int, ...]


@dataclass(frozen=True)
class Refused:
    seq: int


Op = Stored | Dropped | Refused


def _encode(op: Op) -> bytes:
    if isinstance(op, Stored):
        name = op.stream.encode()
        return b"R" + _RECORD.pack(op.seq, int(op.protected), len(name)) + name + op.raw
    if isinstance(op, Dropped):
        return b"D" + b"".join(_SEQ.pack(s) for s in op.seqs)
    return b"X" + _SEQ.pack(op.seq)


def _decode(payload: bytes) -> Op | None:
    kind, body = payload[:1], payload[1:]
    if kind == b"R" and len(body) >= _RECORD.size:
        seq, protected, n = _RECORD.unpack_from(body)
        start = _RECORD.size
        return Stored(seq, body[start:start + n].decode(errors="replace"), bool(protected),
                      bytes(body[start + n:]))
    if kind == b"D" and len(body) % _SEQ.size == 0:
        return Dropped(tuple(s for (s,) in _SEQ.iter_unpack(body)))
    if kind == b"X" and len(body) == _SEQ.size:
        return Refused(_SEQ.unpack(body)[0])
    return None


def read_journal(path: Path) -> tuple[int | None, list[Op]]:
    """Return the generation the journal at ``path`` follows and its intact operations.

    ``(None, [])`` if there is no journal or no header. Raises StorageError if the file
    exists but cannot be read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, []
    except OSError as exc:
        raise StorageError(f"{path}: cannot read the outbox journal: {exc.strerror}") from None
    if len(data) < _HEADER.size:
        return None, []
    magic, generation = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return None, []
    ops: list[Op] = []
    at = _HEADER.size
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size:at + _FRAME.size + length]
        if length > MAX_FRAME or len(payload) != length or zlib.crc32(payload) != crc:
            break  # a torn tail: never returned to the writer, so never sent
        op = _decode(payload)
        if op is None:
            break
        ops.append(op)
        at += _FRAME.size + length
    return generation, ops


class Journal:
    """The append side: one file descriptor, one ``write`` per operation, never fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pending_header = b""  # written with the first operation of a generation
        self.bytes_written = 0
        self._end = 0  # where the last whole frame ends: the next one is written there
        # Set when a failed write's partial frame could not be cut off: appending after it
        # would put operations where no replay reaches them. Cleared by start().
        self._broken: str | None = None

    def start(self, generation: int) -> None:
        """Empty the journal; later operations follow commit ``generation``.

        The header is written with the first operation, so a window without changes
        writes nothing. Raises StorageError.
        """
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot reset the outbox journal: "
                               f"{exc.strerror}") from None
        self._pending_header = _HEADER.pack(MAGIC, generation)
        self._end = 0
        self._broken = None

    def append(self, op: Op) -> None:
        """Hand one operation to the kernel (survives a crash of this process).

        Raises StorageError (disk full, I/O error); the caller then stores nothing.
        """
        self._write(_encode(op))

    def append_record(self, seq: int, stream: str, protected: bool, raw: bytes) -> None:
        """:meth:`append` of ``Stored(seq, stream, protected, raw)``, on the hot path."""
        name = stream.encode()
        self._write(b"".join((b"R", _RECORD.pack(seq, protected, len(name)), name, raw)))

    def _write(self, payload: bytes) -> None:
        if self._fd is None:
            raise StorageError(f"{self.path}: the outbox journal is not open")
        if self._broken is not None:
            raise StorageError(self._broken)
        frame = b"".join((self._pending_header, _FRAME.pack(len(payload), zlib.crc32(payload)),
                          payload))
        try:
            written = os.write(self._fd, frame)
            while written < len(frame):
                written += os.write(self._fd, frame[written:])
        except OSError as exc:
            self._cut_partial_frame()
            raise StorageError(f"{self.path}: cannot append to the outbox journal: "
                               f"{exc.strerror}") from None
        self._pending_header = b""
        self._end += len(frame)
        self.bytes_written += len(frame)

    def _cut_partial_frame(self) -> None:
        """After a failed write: cut off what it left, so the next frame follows the last
        whole one. A replay ends at the first damaged frame, so a torn frame left in place
        would hide every operation appended after it (records already offered to the
        uplink, their numbers then reused after a crash). Shrinking a file needs no free
        space; if it still fails, the journal refuses appends until :meth:`start`."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._end)
            os.lseek(self._fd, self._end, os.SEEK_SET)
        except OSError as exc:
            self._broken = (f"{self.path}: cannot append to the outbox journal: a failed "
                            f"write left a partial frame that could not be cut off "
                            f"({exc.strerror})")

    def truncate(self) -> None:
        """Empty the file without starting a generation (its changes are committed).

        Raises StorageError."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot empty the outbox journal: "
                               f"{exc.strerror}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Journals:
    """The two journal files used in turn (see the module doc).

    Appends go to the *current* file. :meth:`switch` makes the other one current (a group
    commit was handed to the background thread; the file it leaves holds that commit's
    changes until :meth:`truncate_other` empties it); :meth:`start` empties both (every
    change in them is committed).
    """

    def __init__(self, path: Path) -> None:
        self.paths = (path, path.with_name(path.name + "2"))
        self._files = (Journal(self.paths[0]), Journal(self.paths[1]))
        self._use(0)

    def _use(self, index: int) -> None:
        self._current = index
        # The current file's own methods, bound once: append_record is on the hot path.
        self.append = self._files[index].append
        self.append_record = self._files[index].append_record

    def start(self, generation: int) -> None:
        """Empty both files; later changes follow commit ``generation``. Raises
        StorageError."""
        self._use(0)
        self._files[1].start(generation)
        self._files[0].start(generation)

    def switch(self, generation: int) -> None:
        """Append to the other file from now on (emptied first), after commit
        ``generation``; the file left keeps its changes. Raises StorageError."""
        self._files[1 - self._current].start(generation)
        self._use(1 - self._current)

    def truncate_other(self) -> None:
        """Empty the file :meth:`switch` left (its commit is in SQLite). Raises
        StorageError."""
        self._files[1 - self._current].truncate()

    def read(self) -> list[tuple[int, list[Op]]]:
        """Both files' generations and intact operations, oldest generation first.

        Raises StorageError if a file exists but cannot be read."""
        found = [read_journal(path) for path in self.paths]
        return sorted(((generation, ops) for generation, ops in found
                       if generation is not None), key=lambda item: item[0])

    @property
    def bytes_written(self) -> int:
        return self._files[0].bytes_written + self._files[1].bytes_written

    def close(self) -> None:
        for journal in self._files:
            journal.close()

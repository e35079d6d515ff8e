"""A TCP proxy on a loopback port whose link can be cut and restored, for fault tests.

Agents connect to the proxy instead of the broker; the proxy forwards bytes both ways. A
test can then take the network away without touching the broker or the agent:

- :meth:`NetProxy.cut` with ``mode="reset"`` closes every open connection and closes new
  ones as soon as they arrive (a cable pulled, a NAT that forgot the flow);
- ``mode="blackhole"`` keeps the connections open but stops forwarding in both
  directions (packets vanish; only keep-alives and time-outs notice);
- :meth:`NetProxy.restore` forwards again (a blackholed connection resumes with whatever
  was buffered; a reset one must reconnect).

Everything runs on daemon threads of this process (one accept thread, two per connection);
the proxy never sends a byte of its own.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Literal

CutMode = Literal["reset", "blackhole"]
_CHUNK = 65536


@dataclass
class ProxyCounters:
    """What the proxy saw: connections accepted and refused, bytes forwarded."""

    accepted: int = 0
    refused: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class NetProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until cut."""

    target_port: int
    target_host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port at start
    counters: ProxyCounters = field(default_factory=ProxyCounters)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._cut: CutMode | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    def start(self) -> NetProxy:
        """Listen and start accepting; return self."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept_loop, name=f"netproxy-{self.port}",
                         daemon=True).start()
        return self

    def cut(self, mode: CutMode = "reset") -> None:
        """Take the link away (see the module docstring for the two modes)."""
        with self._lock:
            self._cut = mode
            if mode == "blackhole":
                self._flowing.clear()
                return
            pairs, self._pairs = self._pairs, []
        self.counters.resets += len(pairs)
        for pair in pairs:
            pair.close()

    def restore(self) -> None:
        """Forward again."""
        with self._lock:
            self._cut = None
            self._flowing.set()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed.set()
        self._flowing.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- threads --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut == "reset":
                self.counters.refused += 1
                with contextlib.suppress(OSError):
                    client.close()
                continue
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((self.target_host, self.target_port), timeout=5)
        except OSError:  # the target is down: the client sees its connection close
            self.counters.refused += 1
            with contextlib.suppress(OSError):
                client.close()
            return
        server.settimeout(None)
        client.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        with self._lock:
            self._pairs.append(pair)
        self.counters.accepted += 1
        for src, dst, up in ((client, server, True), (server, client, False)):
            threading.Thread(target=self._pump, args=(pair, src, dst, up),
                             name=f"netproxy-{self.port}-pump", daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not pair.closed:
                data = src.recv(_CHUNK)
                if not data:
                    break
                self._flowing.wait()  # blackhole: hold the bytes until restored or closed
                if pair.closed:
                    break
                # Counted before the send: once the peer has the bytes, a test may read the
                # counters at once (counting after sendall raced with it).
                if up:
                    self.counters.bytes_up += len(data)
                else:
                    self.counters.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()
            with self._lock, contextlib.suppress(ValueError):
                self._pairs.remove(pair)

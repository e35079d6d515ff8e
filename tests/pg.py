"""A private PostgreSQL cluster for the test session, like the private Mosquitto.

``initdb`` from Debian's postgresql package (in /usr/lib/postgresql/<v>/bin, off PATH)
builds a cluster in a fresh temporary directory, and its ``postgres`` server runs on a free
loopback port with its socket in that directory, so a PostgreSQL that the machine already
runs (on 5432) changes nothing: no test ever connects to it, and PG* variables of the
environment are not passed on. initdb and postgres refuse to run as root, which our machines
and CI are: then both run as the ``postgres`` user in a directory it owns.

The server is a direct child of the test process (not daemonised by ``pg_ctl``), in its own
process group and asked by the kernel to shut down when the test process dies
(``firmware_sim.procs.die_with_parent``), so an interrupted run leaves no server behind.

Password authentication (scram-sha-256) over TCP: an admin role creates one database per
test, owned by the ``edgeproof`` role whose password is in a mode-0600 file, the way an
operator sets up a gateway (docs/OPERATIONS.md).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from firmware_sim.broker import free_port
from firmware_sim.procs import die_with_parent
from protocol.keys import write_secret_file

ADMIN = "edgeproof_admin"
USER = "edgeproof"
_START_TIMEOUT_S = 120  # a loaded 2-core machine starts a cluster slowly
_STOP_TIMEOUT_S = 60
_START_ATTEMPTS = 3  # the free port may be taken between probing and listening


class PostgresMissing(RuntimeError):
    """initdb / postgres are not installed."""


def postgres_bin_dir() -> Path:
    """Return the directory holding initdb and postgres (newest Debian version first).

    Raises PostgresMissing saying what to install.
    """
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([0-9.]+)/", path)
        return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        raise PostgresMissing("PostgreSQL's initdb was not found; install it with: "
                              "apt-get install postgresql (make test does so as root)")
    return Path(found[-1]).parent


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables (PGHOST, PGPORT, PGDATA... of this machine)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


@dataclass
class PostgresCluster:
    """One private PostgreSQL server: its directory, port and the gateway role's password."""

    workdir: Path
    bin_dir: Path = field(default_factory=postgres_bin_dir)
    port: int = 0
    durable: bool = False  # fsync on (benchmarks); tests run without it
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _server: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def password_file(self) -> Path:
        """The ``edgeproof`` role's password, mode 0600 (what ``[store] password_file`` names)."""
        return self.workdir / "edgeproof.password"

    def dsn(self, dbname: str) -> str:
        """A password-less DSN for ``dbname`` as the ``edgeproof`` role."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={USER}"

    def _owner(self) -> tuple[int, int] | None:
        """(uid, gid) of the postgres user when running as root (initdb and postgres refuse
        root); None otherwise."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresMissing("running as root, PostgreSQL needs the 'postgres' user "
                                  "(Debian's postgresql package creates it)") from None
        return entry.pw_uid, entry.pw_gid

    def start(self) -> None:
        """initdb, then start the server on a free port; create the ``edgeproof`` role."""
        self.workdir.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.workdir / "admin.password"
        pwfile.write_text(self._admin_password)
        pwfile.chmod(0o600)
        owner = self._owner()
        if owner is not None:
            for path in (self.workdir, pwfile):
                os.chown(path, *owner)
        result = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", ADMIN,
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
             "--no-sync"],
            cwd=self.workdir, env=_clean_env(), capture_output=True, text=True, check=False,
            user=owner[0] if owner else None, group=owner[1] if owner else None,
            extra_groups=[] if owner else None)
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")
        for attempt in range(_START_ATTEMPTS):
            if self._serve(owner):
                break
            if attempt == _START_ATTEMPTS - 1:
                raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}")
        with self._admin() as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}'".encode())
        write_secret_file(self.password_file, self.password.encode())

    def _serve(self, owner: tuple[int, int] | None) -> bool:
        """Start postgres on a free port; return whether it accepts connections.

        False if it exited (the port was taken between probing and listening).
        """
        self.port = free_port()
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-h", "127.0.0.1", "-k", str(self.workdir), "-c", "max_connections=200"]
        if not self.durable:  # a test cluster: nothing in it must survive a power cut
            argv += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with open(self.workdir / "server.log", "ab") as log:
            self._server = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.workdir,
                env=_clean_env(), process_group=0,
                user=owner[0] if owner else None, group=owner[1] if owner else None,
                extra_groups=[] if owner else None,
                # after the uid change (which would clear it), before exec
                preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                return False
            try:
                self._admin().close()
            except psycopg.OperationalError:
                time.sleep(0.05)
            else:
                return True
        raise RuntimeError(f"PostgreSQL did not accept connections within "
                           f"{_START_TIMEOUT_S} s: {self.log_tail()}")

    @property
    def server_pid(self) -> int | None:
        """The postmaster's process id (its children are the server's other processes)."""
        return None if self._server is None else self._server.pid

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, dbname="postgres", user=ADMIN,
                               password=self._admin_password, autocommit=True)

    def create_database(self) -> str:
        """Create an empty database owned by ``edgeproof``; return its name."""
        name = f"edgeproof_test_{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {USER}".encode())
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test database, closing whatever still uses it."""
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())

    def execute_as_admin(self, dbname: str, query: str,
                         params: tuple[object, ...]) -> list[tuple[object, ...]]:
        """Run one statement in ``dbname`` as the admin (tests that tamper with a log or look
        at the server's sessions); return its rows, if any."""
        with psycopg.connect(host="127.0.0.1", port=self.port, dbname=dbname, user=ADMIN,
                             password=self._admin_password, autocommit=True) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        """Stop the server (fast shutdown: SIGINT) and remove its directory."""
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> PostgresCluster:
    """Start a private cluster in a new temporary directory (``/tmp/edgeproof-pg-*``);
    ``durable`` keeps fsync on (what a benchmark must measure).

    Not under pytest's tmp_path: that tree is private to root, and the cluster runs as the
    postgres user. Raises PostgresMissing if PostgreSQL is not installed.
    """
    bin_dir = postgres_bin_dir()
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="edgeproof-pg-")), bin_dir,
                              durable=durable)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster

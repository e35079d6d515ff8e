"""Shared fixtures: a real Mosquitto on a free loopback port per test that asks for one, and
a private PostgreSQL cluster per session for the tests that ask for one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from tests.duty_tables import TABLE_KINDS, DutyTables, duty_tables_for
from tests.pg import PostgresCluster, PostgresMissing, start_cluster
from tests.stores import STORE_KINDS, StoreFactory, store_factory_for


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto (anonymous access, persistence on) for one test."""
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session (tests/pg.py), never the machine's own.

    Skipped where PostgreSQL is not installed, except under CI, where that is a failure.
    """
    try:
        cluster = start_cluster()
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL: {exc}")
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(postgres: PostgresCluster) -> Iterator[str]:
    """An empty database of the private cluster for one test; yields its name."""
    name = postgres.create_database()
    try:
        yield name
    finally:
        postgres.drop_database(name)


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens a log store of each kind in turn (SQLite, then PostgreSQL)."""
    return store_factory_for(request, str(request.param), tmp_path)


@pytest.fixture(params=TABLE_KINDS)
def duty_tables(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DutyTables]:
    """The chain duties' tables of each kind in turn (a SQLite file, then PostgreSQL)."""
    tables = duty_tables_for(request, str(request.param), tmp_path)
    try:
        yield tables
    finally:
        tables.close()

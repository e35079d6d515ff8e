"""The PostgreSQL store where it differs from SQLite: configuration, the password file, a
server that is down or drops the connection, several processes opening one database."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from firmware_sim.broker import free_port
from gateway.config import StoreConfig, dsn_keys, load_config
from gateway.pg_store import PostgresLogStore
from gateway.service import open_store
from gateway.store import NewLeaf
from protocol import merkle
from protocol.errors import ConfigError, KeyFileError, StorageError
from tests.harness.waiting import eventually
from tests.pg import PostgresCluster

HEAD = '[gateway]\ndata_dir = "d"\nkey_file = "k"\nadmin_token_file = "t"\n' \
       '[broker]\nurl = "mqtt://h"\n'


def leaf(i: int) -> NewLeaf:
    return NewLeaf(b"d" * 16, i, bytes(32), bytes(32), f"record {i}".encode(), "s", 0)


def _config(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(HEAD + "[store]\n" + store)
    return path


@pytest.mark.parametrize("dsn", [
    "host=db port=5432 dbname=log user=gw password=hunter2",
    "host=db user=gw password = 'with spaces'",
    "postgresql://gw:hunter2@db:5432/log",
    "postgresql://gw@db/log?password=hunter2",
])
def test_password_in_the_dsn_is_refused(tmp_path: Path, dsn: str) -> None:
    path = _config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"\n')
    with pytest.raises(ConfigError, match="must not contain a password") as caught:
        load_config(path)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("store", "named"), [
    ('backend = "mysql"\n', "store.backend"),
    ('backend = "postgresql"\n', "store.dsn"),
    ('dsn = "host=db"\n', "store.dsn applies only"),
    ('backend = "postgresql"\ndsn = "host=\'db"\n', "unterminated"),
    ('backend = "postgresql"\ndsn = "host db"\n', "expected key=value"),
    ('backend = "postgresql"\ndsn = "host=db"\nbogus = 1\n', "store.bogus"),
    ('shared = true\n', "store.shared applies only"),
    ('backend = "postgresql"\ndsn = "host=db"\nshared = "yes"\n', "must be true or false"),
    ('backend = "postgresql"\ndsn = "host=db"\nshared = true\n', "broker.shared_group"),
])
def test_bad_store_config_names_the_key(tmp_path: Path, store: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(_config(tmp_path, store))


def test_dsn_values_may_be_quoted_and_escaped() -> None:
    assert dsn_keys(r"host=db application_name='a \'b\' c' user=gw") == {
        "host": "db", "application_name": "a 'b' c", "user": "gw"}
    assert dsn_keys("postgresql://gw@db:5433/log?sslmode=require") == {
        "sslmode": "require", "user": "gw", "host": "db"}


def test_sqlite_stays_the_default(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert config.store == StoreConfig(backend="sqlite")
    config = load_config(_config(tmp_path, 'backend = "postgresql"\ndsn = "host=db"\n'
                                           'password_file = "pw"\n'))
    assert config.store == StoreConfig("postgresql", "host=db", tmp_path / "pw")


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o644)
    config = load_config(_config(tmp_path, 'backend = "postgresql"\ndsn = "host=127.0.0.1"\n'
                                           'password_file = "pw"\n'))
    with pytest.raises(KeyFileError, match="0644"):
        open_store(config)


def test_gateway_opens_the_database_with_the_password_file(
        tmp_path: Path, postgres: PostgresCluster, pg_database: str) -> None:
    dsn = postgres.dsn(pg_database)
    config = load_config(_config(tmp_path, f'backend = "postgresql"\ndsn = "{dsn}"\n'
                                           f'password_file = "{postgres.password_file}"\n'))
    store = open_store(config)
    try:
        assert isinstance(store, PostgresLogStore)
        assert store.size() == 0
    finally:
        store.close()


def test_wrong_password_is_a_storage_error_that_does_not_echo_it(
        postgres: PostgresCluster, pg_database: str) -> None:
    with pytest.raises(StorageError, match="gateway store: open failed") as caught:
        PostgresLogStore(postgres.dsn(pg_database), "not-the-password")
    assert "not-the-password" not in str(caught.value)


def test_server_down_is_a_storage_error_not_a_crash(postgres: PostgresCluster) -> None:
    with pytest.raises(StorageError, match="gateway store: open failed"):
        PostgresLogStore(f"host=127.0.0.1 port={free_port()} dbname=x user=x "
                         "connect_timeout=5", "pw")


def _drop_connections(postgres: PostgresCluster, dbname: str) -> None:
    """End every session on ``dbname`` (as a server restart or failover does)."""
    postgres.execute_as_admin(
        "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))


def test_connection_dropped_mid_batch_rolls_back_and_the_next_batch_continues_the_tree(
        postgres: PostgresCluster, pg_database: str) -> None:
    store = PostgresLogStore(postgres.dsn(pg_database), postgres.password)
    with store.transaction() as tx:
        for i in range(3):
            tx.append(leaf(i))
    assert store.leaf(0) is not None  # this thread's reader connection is open

    def batch_cut_off() -> None:
        with store.transaction() as tx:
            tx.append(leaf(3))
            # The server (or a failover) drops every connection of the gateway mid-batch.
            _drop_connections(postgres, pg_database)
            tx.append(leaf(4))

    with pytest.raises(StorageError):
        batch_cut_off()
    assert store.size() == 3
    with store.transaction() as tx:  # a new connection; the frontier is rebuilt
        assert tx.append(leaf(3)) == 3
    hashes = [merkle.leaf_hash(f"record {i}".encode()) for i in range(4)]
    assert store.size() == 4
    assert store.root(4) == merkle.root(hashes)
    store.close()


def test_after_a_lost_commit_answer_the_tree_is_rebuilt_from_the_database(
        postgres: PostgresCluster, pg_database: str) -> None:
    store = PostgresLogStore(postgres.dsn(pg_database), postgres.password)
    with store.transaction() as tx:
        tx.append(leaf(0))

    def batch_cut_off() -> None:
        with store.transaction() as tx:
            tx.append(leaf(1))
            _drop_connections(postgres, pg_database)

    with pytest.raises(StorageError):
        batch_cut_off()
    # As if that COMMIT had happened and only its answer was lost: the leaf is in the
    # database (written here by another writer while the lock was free).
    other = PostgresLogStore(postgres.dsn(pg_database), postgres.password)
    with other.transaction() as tx:
        assert tx.append(leaf(1)) == 1
    other.close()
    # A checkpoint write reconnects the writer in between; the frontier must still be
    # rebuilt before the next batch, or it would append over leaf 1.
    store.add_checkpoint(1, store.root(1), "note", 1, b"")
    with store.transaction() as tx:
        assert tx.append(leaf(2)) == 2
    hashes = [merkle.leaf_hash(f"record {i}".encode()) for i in range(3)]
    assert store.size() == 3
    assert store.root(3) == merkle.root(hashes)
    store.close()


def test_second_writer_on_one_database_is_refused_instead_of_forking_the_frontier(
        postgres: PostgresCluster, pg_database: str) -> None:
    first = PostgresLogStore(postgres.dsn(pg_database), postgres.password)
    with pytest.raises(StorageError, match="another gateway process writes this database"):
        PostgresLogStore(postgres.dsn(pg_database), postgres.password, writer_wait_s=0.2)
    with first.transaction() as tx:
        tx.append(leaf(0))
    first.close()  # the lock goes with the session
    second = PostgresLogStore(postgres.dsn(pg_database), postgres.password, writer_wait_s=0.2)
    with second.transaction() as tx:
        assert tx.append(leaf(1)) == 1
    second.close()


def test_writer_killed_without_closing_releases_the_log_to_the_next_one(
        postgres: PostgresCluster, pg_database: str) -> None:
    first = PostgresLogStore(postgres.dsn(pg_database), postgres.password)
    opened: list[PostgresLogStore] = []
    failed: list[StorageError] = []

    def open_second() -> None:  # waits for the writer lock
        try:
            opened.append(PostgresLogStore(postgres.dsn(pg_database), postgres.password))
        except StorageError as exc:
            failed.append(exc)

    waiter = threading.Thread(target=open_second)
    waiter.start()
    eventually(lambda: postgres.execute_as_admin(
        "postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = %s "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'", (pg_database,)),
        "the second writer waiting for the lock", 60)
    # The first process dies (its sessions end without a goodbye): only the lock waiter stays.
    postgres.execute_as_admin(
        "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
        "AND pid <> pg_backend_pid() AND wait_event_type IS DISTINCT FROM 'Lock'",
        (pg_database,))
    waiter.join()
    assert not failed
    assert len(opened) == 1
    opened[0].close()
    first.close()


def test_database_of_another_schema_version_is_refused(
        postgres: PostgresCluster, pg_database: str) -> None:
    PostgresLogStore(postgres.dsn(pg_database), postgres.password).close()
    postgres.execute_as_admin(pg_database,
                              "UPDATE meta SET value = '99' WHERE key = 'schema_version'", ())
    with pytest.raises(StorageError, match="schema version 99"):
        PostgresLogStore(postgres.dsn(pg_database), postgres.password)

"""The ``ethereum`` anchor against a real ganache node (firmware_sim.chain): what only this
backend does. What every anchor backend must do is in tests/contracts/test_anchor_contract.py.

Most tests drive :meth:`EthereumAnchor.step` directly with an injected monotonic clock, so
intervals, back-off and re-send time-outs pass without sleeping; the node, its chain and
the transactions are real. What is on chain is checked by scanning every block for
transactions from the anchor's sender.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from prometheus_client import Counter

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.chain import ETHER, GanacheNode
from gateway.cli import main as gateway_main
from gateway.config import EthereumAnchorConfig, parse_config
from gateway.eth_anchor import EthereumAnchor, EthTiming, anchor_data
from gateway.eth_queue import CONFIRMED, FAILED, SUPERSEDED
from protocol.checkpoint import checkpoint_hash
from protocol.errors import ConfigError, KeyFileError
from protocol.keys import write_secret_file
from tests.checkpoint_notes import Notes, make_notes
from tests.duty_tables import DutyTables
from tests.gateway.chainkit import (
    address_of,
    anchored_hashes,
    eth_key,
    running_chain,
    sender_txs,
)
from tests.gateway.conftest import start_gateway
from tests.gateway.gwkit import DeviceClient, TestDevice, register, write_gateway_files
from tests.harness.waiting import eventually

CHAIN_ID = 1337
# Runtime code PUSH1 0 PUSH1 0 REVERT, behind init code that copies and returns it.
REVERTING_RUNTIME = bytes.fromhex("60006000fd")
REVERTING_INIT = bytes.fromhex("6005600c60003960056000f3") + REVERTING_RUNTIME


def counted(counter: Counter) -> float:
    """A prometheus counter's value (or a labelled child's), read through collect()."""
    return next(sample.value for family in counter.collect() for sample in family.samples
                if sample.name.endswith("_total"))


DEPLOYER = eth_key(0)
_NAMES = ["hashes", "latest", "stuck", "revert", "estimate", "taken", "gateway", "restart"]
KEYS = {name: eth_key(i) for i, name in enumerate(_NAMES, 1)}
# The tests of the queue run on each kind of tables (tests/duty_tables.py), each kind with
# keys of its own: one chain serves the module, and every test counts its sender's nonces.
KIND_KEYS = {"file": KEYS,
             "postgresql": {name: eth_key(100 + i) for i, name in enumerate(_NAMES, 1)}}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GanacheNode]:
    """One instamine ganache for the module; every test anchors from its own funded key."""
    senders = [key for keys in KIND_KEYS.values() for key in keys.values()]
    yield from running_chain(tmp_path_factory.mktemp("chain"), [DEPLOYER, *senders])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notes() -> Notes:
    return make_notes()


def write_key(path: Path, key: str) -> Path:
    write_secret_file(path, key.encode("ascii") + b"\n")
    return path


def make_anchor(tables: DutyTables, node: GanacheNode, key: str, clock: FakeClock,
                **overrides: object) -> EthereumAnchor:
    """An anchor on ``tables`` (the same queue each time it is made again)."""
    key_file = tables.workdir / "eth.key"
    if not key_file.exists():
        write_key(key_file, key)
    config = EthereumAnchorConfig(rpc_url=node.url, key_file=key_file, chain_id=CHAIN_ID,
                                  interval_s=5.0, resend_after_s=30.0)
    config = replace(config, **overrides)  # type: ignore[arg-type]
    queue = tables.anchor_queue()
    try:
        return EthereumAnchor(config, queue, wall_ms=lambda: 1, monotonic=clock,
                              timing=EthTiming(rpc_timeout_s=10.0))
    except BaseException:
        queue.close()
        raise


def drive(anchor: EthereumAnchor, clock: FakeClock, done: Callable[[], bool],
          max_steps: int = 60) -> list[float]:
    """Step the worker until ``done``, advancing the fake clock by each returned delay."""
    delays: list[float] = []
    for _ in range(max_steps):
        if done():
            return delays
        delay = anchor.step()
        delays.append(delay)
        clock.now += delay
    raise AssertionError(f"not done after {max_steps} steps: {delays}")


def state(anchor: EthereumAnchor, note: str) -> str | None:
    entry = anchor.entry(note)
    return entry.state if entry else None


def deploy_reverting_contract(node: GanacheNode) -> str:
    deployer = address_of(DEPLOYER)
    nonce = int(node.rpc("eth_getTransactionCount", deployer, "pending"), 16)
    signed = Account.sign_transaction(
        {"nonce": nonce, "gasPrice": int(node.rpc("eth_gasPrice"), 16), "gas": 100_000,
         "value": 0, "data": REVERTING_INIT, "chainId": CHAIN_ID}, DEPLOYER)
    tx_hash = node.rpc("eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())
    receipt = node.rpc("eth_getTransactionReceipt", tx_hash)
    address = receipt["contractAddress"]
    assert node.rpc("eth_getCode", address, "latest") == "0x" + REVERTING_RUNTIME.hex()
    return str(address)


def warm_up(anchor: EthereumAnchor, clock: FakeClock, notes: Notes) -> None:
    """Anchor one checkpoint first: ganache 7.9 mines BOTH a nonce-0 transaction and its
    replacement (only an account's first nonce is affected), which real nodes never do."""
    note = notes.next()
    anchor.anchor(note)
    drive(anchor, clock, lambda: state(anchor, note) == CONFIRMED)
    clock.now += anchor.config.interval_s


# --- anchoring ---------------------------------------------------------------------------


def test_checkpoint_hashes_appear_in_the_anchoring_transactions_input(
        chain: GanacheNode, duty_tables: DutyTables, notes: Notes) -> None:
    clock = FakeClock()
    anchor = make_anchor(duty_tables, chain, KIND_KEYS[duty_tables.kind]["hashes"], clock)
    sent = []
    for _ in range(3):
        sent.append(notes.next())
        anchor.anchor(sent[-1])  # queued (returns None): the worker anchors it
        drive(anchor, clock, lambda: state(anchor, sent[-1]) == CONFIRMED)
    for note in sent:
        entry = anchor.entry(note)
        assert entry is not None
        assert entry.status == 1
        assert entry.chain_id == CHAIN_ID
        tx = chain.rpc("eth_getTransactionByHash", entry.tx_hash)
        assert bytes.fromhex(tx["input"][2:]) == b"EPv1" + checkpoint_hash(note)
        assert bytes.fromhex(tx["input"][2:]) == anchor_data(note)
        assert tx["to"].lower() == anchor.address.lower()  # default target: the sender
        assert int(tx["value"], 16) == 0
        assert int(tx["blockNumber"], 16) == entry.block_number
    on_chain = sender_txs(chain, anchor.address)
    assert anchored_hashes(on_chain) == [checkpoint_hash(n) for n in sent]
    assert [tx.nonce for tx in on_chain] == [0, 1, 2]
    # lookup, listing, idempotence and restarts: tests/contracts/test_anchor_contract.py
    anchor.close()


def test_checkpoints_queued_within_an_interval_anchor_only_the_latest(
        chain: GanacheNode, duty_tables: DutyTables, notes: Notes) -> None:
    clock = FakeClock()
    anchor = make_anchor(duty_tables, chain, KIND_KEYS[duty_tables.kind]["latest"], clock)
    first = notes.next()
    anchor.anchor(first)
    drive(anchor, clock, lambda: state(anchor, first) == CONFIRMED)
    later = [notes.next() for _ in range(4)]  # issued before the interval is over
    for note in later:
        anchor.anchor(note)
    drive(anchor, clock, lambda: state(anchor, later[-1]) == CONFIRMED)
    assert [state(anchor, n) for n in later[:-1]] == [SUPERSEDED] * 3
    assert anchored_hashes(sender_txs(chain, anchor.address)) == [
        checkpoint_hash(first), checkpoint_hash(later[-1])]
    assert counted(anchor.metrics.superseded) == 3
    anchor.close()


def test_stuck_transaction_is_replaced_with_the_same_nonce(
        chain: GanacheNode, duty_tables: DutyTables, notes: Notes) -> None:
    clock = FakeClock()
    anchor = make_anchor(duty_tables, chain, KIND_KEYS[duty_tables.kind]["stuck"], clock)
    warm_up(anchor, clock, notes)
    note = notes.next()
    anchor.anchor(note)
    chain.rpc("miner_stop")
    try:
        anchor.step()  # sent; it stays pending while the miner is stopped
        first = anchor.entry(note)
        assert first is not None
        assert first.state == "sending"
        clock.now += 31  # resend_after_s passed: replace it (same nonce, higher gas price)
        anchor.step()
        assert counted(anchor.metrics.retries.labels(reason="stuck")) == 1
    finally:
        chain.rpc("miner_start")
    drive(anchor, clock, lambda: state(anchor, note) == CONFIRMED)
    entry = anchor.entry(note)
    assert entry is not None
    assert entry.nonce == 1
    # What the anchor persisted before sending (its write-ahead log) has no public reader.
    original, replacement = anchor._queue.txs(entry.checkpoint_hash, 1)  # noqa: SLF001
    assert replacement.gas_price > original.gas_price
    assert entry.tx_hash == replacement.tx_hash
    # ganache 7.9 files a replacement under a block its block list does not show, so the
    # chain is checked through receipts and the account's nonce instead of a block scan.
    assert chain.rpc("eth_getTransactionReceipt", original.tx_hash) is None
    assert int(chain.rpc("eth_getTransactionCount", anchor.address, "latest"), 16) == 2
    mined = chain.rpc("eth_getTransactionByHash", entry.tx_hash)
    assert bytes.fromhex(mined["input"][2:]) == anchor_data(note)
    anchor.close()


def test_nonce_used_by_another_transaction_is_not_counted_as_an_anchor(
        chain: GanacheNode, duty_tables: DutyTables, notes: Notes) -> None:
    clock = FakeClock()
    key = KIND_KEYS[duty_tables.kind]["taken"]
    anchor = make_anchor(duty_tables, chain, key, clock)
    warm_up(anchor, clock, notes)
    note = notes.next()
    anchor.anchor(note)
    chain.rpc("miner_stop")
    try:
        anchor.step()  # pending with nonce 1
        # Someone else with the same key replaces it (same nonce, much higher price).
        other = Account.sign_transaction(
            {"nonce": 1, "gasPrice": 10 * int(chain.rpc("eth_gasPrice"), 16), "gas": 21_000,
             "to": address_of(DEPLOYER), "value": 1, "chainId": CHAIN_ID}, key)
        chain.rpc("eth_sendRawTransaction", "0x" + bytes(other.raw_transaction).hex())
    finally:
        chain.rpc("miner_start")
    drive(anchor, clock, lambda: state(anchor, note) == CONFIRMED)
    assert counted(anchor.metrics.retries.labels(reason="nonce_taken")) == 1
    entry = anchor.entry(note)
    assert entry is not None
    assert entry.nonce == 2
    # What the anchor persisted before sending (its write-ahead log) has no public reader.
    (lost,) = anchor._queue.txs(entry.checkpoint_hash, 1)  # noqa: SLF001
    assert chain.rpc("eth_getTransactionReceipt", lost.tx_hash) is None
    assert int(chain.rpc("eth_getTransactionCount", anchor.address, "latest"), 16) == 3
    mined = chain.rpc("eth_getTransactionByHash", entry.tx_hash)
    assert bytes.fromhex(mined["input"][2:]) == anchor_data(note)
    assert int(mined["nonce"], 16) == 2
    anchor.close()


# --- failures ----------------------------------------------------------------------------


def test_reverted_anchor_is_retried_then_reported_as_a_failure(
        chain: GanacheNode, duty_tables: DutyTables, notes: Notes) -> None:
    contract = deploy_reverting_contract(chain)
    clock = FakeClock()
    # A fixed gas limit: the node cannot refuse up front, the transactions revert on chain.
    anchor = make_anchor(duty_tables, chain, KIND_KEYS[duty_tables.kind]["revert"], clock,
                         to_address=contract, gas_limit=60_000, max_attempts=2)
    note = notes.next()
    anchor.anchor(note)
    drive(anchor, clock, lambda: state(anchor, note) == FAILED)
    on_chain = sender_txs(chain, anchor.address)
    assert [tx.status for tx in on_chain] == [0, 0]  # two attempts, both reverted
    assert all(tx.to.lower() == contract.lower() for tx in on_chain)
    assert anchored_hashes(on_chain) == []
    assert counted(anchor.metrics.retries.labels(reason="reverted")) == 1
    assert counted(anchor.metrics.failures) == 1
    entry = anchor.entry(note)
    assert entry is not None
    assert entry.status == 0
    assert entry.tx_hash == on_chain[-1].hash
    assert anchor.lookup(None) is None  # a failed anchor is never served as one
    # The next checkpoint is tried afresh.
    nxt = notes.next()
    anchor.anchor(nxt)
    drive(anchor, clock, lambda: anchor.entry(nxt) is not None
          and anchor.entry(nxt).attempts == 1)  # type: ignore[union-attr]
    anchor.close()


def test_target_that_would_revert_is_never_sent(
        chain: GanacheNode, duty_tables: DutyTables, notes: Notes) -> None:
    contract = deploy_reverting_contract(chain)
    clock = FakeClock()
    anchor = make_anchor(duty_tables, chain, KIND_KEYS[duty_tables.kind]["estimate"], clock,
                         to_address=contract, max_attempts=3)
    note = notes.next()
    anchor.anchor(note)
    drive(anchor, clock, lambda: state(anchor, note) == FAILED)
    assert sender_txs(chain, anchor.address) == []  # eth_estimateGas said it would revert
    assert counted(anchor.metrics.retries.labels(reason="reverted")) == 2
    assert counted(anchor.metrics.failures) == 1
    entry = anchor.entry(note)
    assert entry is not None
    assert "revert" in (entry.detail or "")
    anchor.close()


def test_key_file_readable_by_others_is_refused(chain: GanacheNode, tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "eth.key", KEYS["hashes"])
    key_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        make_anchor(DutyTables("file", tmp_path), chain, KEYS["hashes"], FakeClock())


def test_key_file_that_is_not_a_key_is_refused_without_echoing_it(
        chain: GanacheNode, tmp_path: Path) -> None:
    write_secret_file(tmp_path / "eth.key", b"0x" + b"zz" * 32)
    with pytest.raises(KeyFileError) as err:
        make_anchor(DutyTables("file", tmp_path), chain, KEYS["hashes"], FakeClock())
    assert "zz" not in str(err.value)


def test_wrong_chain_id_refuses_to_start(chain: GanacheNode, tmp_path: Path) -> None:
    anchor = make_anchor(DutyTables("file", tmp_path), chain, KEYS["hashes"], FakeClock(),
                         chain_id=1)
    with pytest.raises(ConfigError, match=r"anchor.chain_id is 1 but .* reports chain id 1337"):
        anchor.start()
    anchor.close()


# --- the node goes away ------------------------------------------------------------------


def test_node_restart_mid_run_loses_and_duplicates_no_anchor(
        duty_tables: DutyTables, notes: Notes) -> None:
    key = KIND_KEYS[duty_tables.kind]["restart"]
    node = GanacheNode(duty_tables.workdir / "chain", accounts=((key, 10 * ETHER),))
    node.start()
    clock = FakeClock()
    try:
        anchor = make_anchor(duty_tables, node, key, clock)
        first = notes.next()
        anchor.anchor(first)
        drive(anchor, clock, lambda: state(anchor, first) == CONFIRMED)

        # A transaction goes out but is not mined yet; then the GATEWAY restarts.
        node.rpc("miner_stop")
        clock.now += 5
        second = notes.next()
        anchor.anchor(second)
        anchor.step()
        assert state(anchor, second) == "sending"
        anchor.close()
        anchor = make_anchor(duty_tables, node, key, clock)
        anchor.step()  # resumes tracking the same transaction; sends nothing new
        assert state(anchor, second) == "sending"

        # Then the NODE stops: its pending transaction is gone with it.
        node.stop()
        third, fourth = notes.next(), notes.next()
        anchor.anchor(third)  # queued while the node is down: nothing is lost
        anchor.anchor(fourth)
        backoff = []
        for _ in range(4):
            backoff.append(anchor.step())
            clock.now += backoff[-1]
        assert backoff == [1.0, 2.0, 4.0, 8.0]  # exponential back-off
        assert counted(anchor.metrics.rpc_errors.labels(kind="unreachable")) == 4

        node.start()  # same database, same port; the pool is empty (instamine again)
        drive(anchor, clock, lambda: state(anchor, fourth) == CONFIRMED)
        assert state(anchor, second) == CONFIRMED
        assert state(anchor, third) == SUPERSEDED
        assert counted(anchor.metrics.retries.labels(reason="dropped")) == 1
        on_chain = sender_txs(node, anchor.address)
        assert anchored_hashes(on_chain) == [checkpoint_hash(n) for n in (first, second, fourth)]
        assert [tx.nonce for tx in on_chain] == [0, 1, 2]
        assert len(on_chain) == 3
        anchor.close()
    finally:
        node.kill()


# --- the whole gateway -------------------------------------------------------------------


def test_gateway_anchors_its_checkpoints_and_serves_them(
        chain: GanacheNode, broker: MosquittoBroker, tmp_path: Path) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    write_key(gw_dir / "eth.key", KEYS["gateway"])
    extra = f"""
[anchor]
backend = "ethereum"
rpc_url = "{chain.url}"
key_file = "eth.key"
chain_id = {CHAIN_ID}
interval_s = 0.2
"""
    files = write_gateway_files(gw_dir, broker.port, interval_s=0.2, extra=extra)
    running = start_gateway(files)
    devices = DeviceClient(broker.port, running.verifier)
    try:
        dev = TestDevice.create("dev-eth", 61)
        register(running.base_url, dev)
        for batch in range(1, 4):
            devices.send(dev, dev.records(4), batch_id=batch)
            devices.wait_for(dev.device_id, batch)
        answer = wait_for_anchor(running.base_url, size=12)
        note = str(answer["note"])
        tx = chain.rpc("eth_getTransactionByHash", answer["tx_hash"])
        assert bytes.fromhex(tx["input"][2:]) == b"EPv1" + checkpoint_hash(note)
        assert answer["checkpoint_hash"] == checkpoint_hash(note).hex()
        assert answer["block_number"] == int(tx["blockNumber"], 16)
        assert answer["chain_id"] == CHAIN_ID
        assert answer["status"] == 1
        served = {c["note"] for c in httpx.get(f"{running.base_url}/v1/checkpoints").json()}
        assert note in served
        # The dashboard shows the transaction next to its checkpoint.
        rows = httpx.get(f"{running.base_url}/v1/dashboard/summary").json()[
            "recent_checkpoints"]
        on_page = {r["size"]: r["anchor"] for r in rows}
        assert on_page[answer["size"]]["tx_hash"] == answer["tx_hash"]
        assert on_page[answer["size"]]["block_number"] == answer["block_number"]
        metrics = httpx.get(f"{running.base_url}/metrics").text
        assert "edgeproof_gateway_anchors_confirmed_total" in metrics
        listed = httpx.get(f"{running.base_url}/v1/anchors/list",
                           params={"after_size": 0, "limit": 1000}).json()
        assert note in [a["note"] for a in listed]
        assert [a["size"] for a in listed] == sorted({a["size"] for a in listed})
        assert all(a["size"] >= 1 for a in listed)
        first = httpx.get(f"{running.base_url}/v1/anchors/list", params={"limit": 1}).json()
        assert first == listed[:1]
        empty_note = httpx.get(f"{running.base_url}/v1/checkpoints").json()[0]
        assert empty_note["size"] == 0
    finally:
        devices.close()
        running.stop()
    assert not running.errors, running.errors
    on_chain = anchored_hashes(sender_txs(chain, address_of(KEYS["gateway"])))
    assert len(on_chain) == len(set(on_chain)) >= 1  # every anchor distinct
    assert checkpoint_hash(note) in on_chain
    assert checkpoint_hash(empty_note["note"]) not in on_chain  # size 0: never anchored


def wait_for_anchor(base_url: str, size: int, timeout: float = 60.0) -> dict[str, object]:
    def anchor() -> dict[str, object] | None:
        response = httpx.get(f"{base_url}/v1/anchors", params={"size": size})
        if response.status_code == 200:
            body: dict[str, object] = response.json()
            return body
        assert response.status_code == 404, response.text
        return None
    return eventually(anchor, f"an anchor covering size {size}", timeout, every_s=0.1)


def test_gateway_on_the_wrong_chain_exits_with_one_line(
        chain: GanacheNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    write_key(gw_dir / "eth.key", KEYS["gateway"])
    extra = f"""
[anchor]
backend = "ethereum"
rpc_url = "{chain.url}"
key_file = "eth.key"
chain_id = 1
"""
    files = write_gateway_files(gw_dir, free_port(), extra=extra)
    assert gateway_main(["run", "--config", str(files.config), "--log-level", "ERROR"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "anchor.chain_id is 1" in err[0]
    assert "1337" in err[0]


def test_gateway_with_a_world_readable_anchor_key_exits_with_one_line(
        chain: GanacheNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    write_key(gw_dir / "eth.key", KEYS["gateway"]).chmod(0o644)
    extra = f"""
[anchor]
backend = "ethereum"
rpc_url = "{chain.url}"
key_file = "eth.key"
chain_id = {CHAIN_ID}
"""
    files = write_gateway_files(gw_dir, free_port(), extra=extra)
    assert gateway_main(["run", "--config", str(files.config)]) == 2  # a configuration error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "eth.key" in err[0]
    assert "0644" in err[0]


# --- configuration -----------------------------------------------------------------------

BASE = {"gateway": {"data_dir": "d", "key_file": "k", "admin_token_file": "t"},
        "broker": {"url": "mqtt://127.0.0.1:1883"}}


def config_with(anchor: dict[str, object]) -> dict[str, object]:
    return {**BASE, "anchor": anchor}


ETH = {"backend": "ethereum", "rpc_url": "http://127.0.0.1:8545", "key_file": "eth.key",
       "chain_id": 1337}


def test_ethereum_anchor_config_is_parsed_with_defaults(tmp_path: Path) -> None:
    config = parse_config(config_with(dict(ETH)), tmp_path)
    eth = config.ethereum
    assert config.anchor == "ethereum"
    assert eth is not None
    assert eth.key_file == tmp_path / "eth.key"
    assert eth.chain_id == 1337
    assert (eth.confirmations, eth.to_address, eth.gas_limit) == (1, None, None)


@pytest.mark.parametrize(("anchor", "named"), [
    ({**ETH, "colour": "blue"}, "anchor.colour"),
    ({"backend": "local", "rpc_url": "http://x:1"}, "anchor.rpc_url"),
    ({k: v for k, v in ETH.items() if k != "rpc_url"}, "anchor.rpc_url"),
    ({k: v for k, v in ETH.items() if k != "chain_id"}, "anchor.chain_id"),
    ({**ETH, "rpc_url": "ws://127.0.0.1:8546"}, "anchor.rpc_url"),
    ({**ETH, "chain_id": "1337"}, "anchor.chain_id"),
    ({**ETH, "to_address": "0x1234"}, "anchor.to_address"),
    ({**ETH, "confirmations": 0}, "anchor.confirmations"),
    ({**ETH, "gas_limit": 100}, "anchor.gas_limit"),
    ({**ETH, "interval_s": -1}, "anchor.interval_s"),
])
def test_bad_anchor_config_is_refused_naming_the_key(anchor: dict[str, object], named: str,
                                                     tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_config(config_with(anchor), tmp_path)


def test_ethereum_anchor_of_a_shared_store_is_accepted(tmp_path: Path) -> None:
    # Once refused ("one process must own the chain queue"): the queue is in the database
    # and only the sequencer works it (tests/gateway/test_gateway_shared_duties.py).
    shared = {**config_with(dict(ETH)),
              "broker": {"url": "mqtt://127.0.0.1:1883", "shared_group": "g"},
              "store": {"backend": "postgresql", "dsn": "host=x", "shared": True}}
    config = parse_config(shared, tmp_path)
    assert config.store.shared
    assert config.anchor == "ethereum"


def test_mixed_case_to_address_with_a_bad_checksum_is_refused(
        chain: GanacheNode, tmp_path: Path) -> None:
    good = address_of(DEPLOYER)
    bad = good[:2] + good[2:].swapcase()
    if bad[2:] in (bad[2:].lower(), bad[2:].upper()):  # pragma: no cover - digits only
        pytest.skip("address has no letters to mis-case")
    with pytest.raises(ConfigError, match="EIP-55"):
        make_anchor(DutyTables("file", tmp_path), chain, KEYS["hashes"], FakeClock(),
                    to_address=bad)


def test_anchor_never_blocks_the_caller_when_the_node_is_down(
        duty_tables: DutyTables, notes: Notes) -> None:
    dead = GanacheNode(duty_tables.workdir / "dead")  # never started: nothing listens on it
    clock = FakeClock()
    anchor = make_anchor(duty_tables, dead, KIND_KEYS[duty_tables.kind]["hashes"], clock)
    anchor.start()  # unreachable is not an error: anchors queue
    note = notes.next()
    anchor.anchor(note)  # returns at once: nothing talks to the node on the caller's thread
    assert state(anchor, note) == "queued"
    anchor.close()
    reopened = make_anchor(duty_tables, dead, KIND_KEYS[duty_tables.kind]["hashes"], clock)
    assert state(reopened, note) == "queued"  # the queue survives a restart
    reopened.close()

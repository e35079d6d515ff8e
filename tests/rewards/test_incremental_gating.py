"""Consent gating carried from epoch to epoch (gateway/payout_gating.py, rewards.gating
GatingState): each epoch reads only the leaves logged since the last one, and pays exactly
what the rule of PROTOCOL.md §19.4 pays on the whole log from scratch."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.chain import GanacheNode
from firmware_sim.solidity import Deployment
from gateway.payout_gating import IncrementalGating, gate_log
from rewards.gating import ConsentLeaf, Event, Gated, GatingState, RevocationLeaf, UsageLeaf, split
from tests.gateway.conftest import RunningGateway
from tests.gateway.contractkit import submitted
from tests.rewards.test_consent_gating import EARNED, World, random_log
from tests.rewards.test_payout_end_to_end import wait_for


def rule_from_scratch(events: list[Event], funded: Mapping[bytes, int],
                      withheld: Callable[[UsageLeaf], bool]) -> Gated:
    """The rule as PROTOCOL.md §19.4 words it, share by share, written out independently of
    GatingState: ``min(s, max(0, funded - e))`` with ``e`` earned before the share."""
    in_force: dict[bytes, ConsentLeaf] = {}
    out = Gated()
    for event in sorted(events, key=lambda e: e.leaf):
        if isinstance(event, ConsentLeaf):
            in_force[event.consent] = event
        elif isinstance(event, RevocationLeaf):
            in_force.pop(event.consent, None)
        else:
            out.settled_micro += event.credit_micro
            if withheld(event):
                out.withheld_micro += event.credit_micro
                continue
            covering = {c.request: c.owner for c in in_force.values()
                        if event.device in c.devices
                        and c.not_before_ms <= event.wall_ms < c.not_after_ms}
            if not covering or event.credit_micro == 0:
                continue
            for request, share in split(event.credit_micro, sorted(covering)):
                before = out.earned.get(request, 0)
                out.earned[request] = before + share
                pay = min(share, max(0, funded.get(request, 0) - before))
                if pay < share:
                    out.short_at.setdefault(request, event.leaf)
                if pay:
                    owner = covering[request]
                    out.owners[owner] = out.owners.get(owner, 0) + pay
                    out.paid[request] = out.paid.get(request, 0) + pay
    out.locked_micro = out.settled_micro - out.total_micro
    return out


@pytest.mark.parametrize("seed", range(30))
def test_epoch_after_epoch_pays_what_the_whole_log_pays_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    events = random_log(rng, 400)
    faulty = {e.leaf for e in events if isinstance(e, UsageLeaf) and rng.random() < 0.1}

    def withheld(usage: UsageLeaf) -> bool:
        return usage.leaf in faulty

    funded = {bytes([r]) * 32: rng.randrange(100_000) for r in range(3)}
    state = GatingState()
    cuts = [*sorted(rng.sample(range(1, 400), 6)), 400]
    fed = 0
    for cut in cuts:
        state.feed(events[fed:cut], withheld)
        fed = cut
        funded = {r: f + rng.choice((0, 0, rng.randrange(60_000))) for r, f in funded.items()}
        carried = state.settle(funded)
        scratch = rule_from_scratch(events[:cut], funded, withheld)
        assert (carried.owners, carried.paid, carried.earned, carried.short_at) == (
            scratch.owners, scratch.paid, scratch.earned, scratch.short_at)
        assert (carried.settled_micro, carried.locked_micro, carried.withheld_micro) == (
            scratch.settled_micro, scratch.locked_micro, scratch.withheld_micro)


def test_a_state_refuses_leaves_it_has_fed_and_funding_that_shrank() -> None:
    request, device = b"\x07" * 32, b"\x01" * 16
    state = GatingState()
    state.feed([ConsentLeaf(0, b"\x0c" * 32, b"\x0a" * 16, request, frozenset({device}),
                            0, 10**15), UsageLeaf(1, device, 5, 10)])
    assert state.settle({request: 10}).owners == {b"\x0a" * 16: 10}
    with pytest.raises(ValueError, match="fed before"):
        state.feed([UsageLeaf(1, device, 5, 10)])
    with pytest.raises(ValueError, match="already paid"):
        state.settle({request: 9})


@pytest.fixture
def world(payout_gateway: RunningGateway, broker: MosquittoBroker, chain: GanacheNode,
          deployed: Deployment) -> Iterator[tuple[World, RunningGateway]]:
    made = World(payout_gateway, broker, chain, deployed)
    try:
        yield made, payout_gateway
    finally:
        made.devices.close()


def test_the_gateway_reads_only_the_leaves_logged_since_its_last_epoch(
        world: tuple[World, RunningGateway]) -> None:
    world_, running = world
    worker = running.service.payout
    assert worker is not None
    request = world_.parties.request()
    submitted(world_.base, request)
    world_.fund(request, 100 * EARNED)
    submitted(world_.base, world_.parties.consent(request))
    world_.use()
    world_.use()

    def caught_up() -> int | None:
        size = int(httpx.get(f"{world_.base}/v1/stats").json()["log_size"])
        gating = worker._gating  # noqa: SLF001 - what the worker carries is what is tested
        return gating.leaves_read if gating is not None and gating.size >= size else None

    read = wait_for("the worker's state at the log's size", caught_up)
    epochs = worker.metrics.epochs.labels(outcome="no_wallets")
    seen = epochs._value.get()  # noqa: SLF001
    wait_for("three more epochs", lambda: epochs._value.get() >= seen + 3)  # noqa: SLF001
    assert caught_up() == read  # nothing new logged: nothing read again
    world_.use()
    assert wait_for("the new record read", caught_up) == read + 1  # one usage record, once
    # Fed in two steps (its own state, not the worker's), it pays what the whole log pays.
    store, size, funded = running.service.store, worker._gating.size, {request.id: 10**9}  # noqa: SLF001
    stepwise = IncrementalGating(())
    stepwise.advance(store, size // 2)
    stepwise.settle(funded)
    stepwise.advance(store, size)
    assert stepwise.settle(funded).owners == gate_log(store, size, funded).owners == {
        world_.owner_id: 3 * EARNED}

"""Property: over any sequence of edges, claims, outbox commits and crashes, the usage
that reaches the outbox is exactly the observed on-time minus what each crash lost since
its last checkpoint (each loss under one checkpoint interval), and no interval is emitted
twice."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.credits import UsageMeter
from protocol.record import Usage, credit_micro

INTERVAL_S = 10
INTERVAL_MS = INTERVAL_S * 1000
RATE = 3_600_001  # a rate that makes per-record flooring visible

step = st.tuples(st.just("step"), st.integers(0, INTERVAL_MS), st.booleans())
op = st.one_of(
    step, step, step,
    st.tuples(st.just("take")),
    st.tuples(st.just("to_outbox")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("crash"), st.integers(0, 10**7)),
)


@dataclass
class Device:
    """A service stand-in: the meter, a durable outbox, and the truth to compare with."""

    path: Path
    boot: int = 1
    now: int = 0
    is_on: bool = False
    outbox: list[tuple[int, Usage]] = field(default_factory=list)
    staged: Usage | None = None
    observed_on_ms: int = 0
    lost_ms: int = 0
    # (time, state) observations of the current boot, to compute a crash's loss exactly
    timeline: list[tuple[int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.meter = self._open()
        self._observe(self.is_on)

    def _open(self) -> UsageMeter:
        return UsageMeter(self.path, "tv", RATE, INTERVAL_S, self.boot)

    def _observe(self, is_on: bool) -> None:
        self.meter.observe(is_on, self.now)
        self.timeline.append((self.now, is_on))
        self.is_on = is_on

    def step(self, delta: int, is_on: bool) -> None:
        if self.is_on:
            self.observed_on_ms += delta
        self.now += delta
        self._observe(is_on)
        self.meter.tick(self.now)

    def take(self) -> None:
        self.staged = self.meter.take_usage(self.now)

    def to_outbox(self) -> None:
        if self.staged is not None and (self.boot, self.staged) not in self.outbox:
            self.outbox.append((self.boot, self.staged))

    def commit(self) -> None:
        if self.staged is not None and (self.boot, self.staged) in self.outbox:
            self.meter.commit_emitted(self.staged)
            self.staged = None

    def crash(self, restart_mono: int) -> None:
        checkpoint = self.meter.last_checkpoint_mono_ms
        assert checkpoint is not None
        lost = on_time_between(self.timeline, checkpoint, self.now)
        assert lost <= INTERVAL_MS  # the durability window
        self.lost_ms += lost
        del self.meter  # the process dies: no close, no final checkpoint
        self.boot += 1
        self.now, self.staged, self.timeline = restart_mono, None, []
        self.meter = self._open()
        self.resolve_pending()
        self._observe(self.is_on)  # the TV kept its state; the new boot sees it from now

    def resolve_pending(self) -> None:
        """What the service does at start: emit or confirm every pending claim."""
        for claim in self.meter.pending_claims():
            if (claim.boot, claim.usage) not in self.outbox:
                self.outbox.append((claim.boot, claim.usage))
            self.meter.commit_emitted(claim.usage, claim.boot)

    def finish(self) -> None:
        """Emit everything: a pending claim first, then the rest of the open window."""
        self.resolve_pending()
        self.staged = None
        self.take()
        self.to_outbox()
        self.commit()
        assert self.meter.take_usage(self.now) is None


def on_time_between(timeline: list[tuple[int, bool]], start: int, end: int) -> int:
    """On-time in (start, end] given state observations (state holds until the next)."""
    total = 0
    for (t, on), (t_next, _) in zip(timeline, [*timeline[1:], (end, False)], strict=True):
        if on:
            total += max(0, min(t_next, end) - max(t, start))
    return total


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=60))
def test_crashes_lose_at_most_a_checkpoint_interval_and_never_double_count(
        ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        device = Device(Path(tmp) / "usage.sqlite")
        for name, *args in ops:
            getattr(device, str(name))(*args)
        device.finish()

        emitted = [usage for _, usage in device.outbox]
        assert sum(u.usage_ms for u in emitted) == device.observed_on_ms - device.lost_ms
        assert device.meter.emitted_ms == device.observed_on_ms - device.lost_ms
        assert device.meter.emitted_micro == sum(credit_micro(u.usage_ms, RATE)
                                                 for u in emitted)
        assert device.meter.pending_claims() == []
        assert len(set(device.outbox)) == len(device.outbox)
        by_boot: dict[int, list[Usage]] = {}
        for boot, usage in device.outbox:
            assert 0 < usage.usage_ms <= usage.end_mono_ms - usage.start_mono_ms
            by_boot.setdefault(boot, []).append(usage)
        for usages in by_boot.values():
            usages.sort(key=lambda u: u.start_mono_ms)
            for before, after in itertools.pairwise(usages):
                assert before.end_mono_ms <= after.start_mono_ms  # no overlap in a boot
        device.meter.close()

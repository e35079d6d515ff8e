"""osutil.lograte: one failure repeated thousands of times must not flood the journal."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from gateway import cli
from osutil.lograte import RepeatLimiter
from protocol.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, RepeatLimiter, Clock]]:
    out, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    limiter = RepeatLimiter(burst=3, window_s=60.0, clock=clock)
    handler.addFilter(limiter)
    logger = logging.getLogger("test.lograte")
    logger.addHandler(handler)
    logger.propagate = False
    # Its own level: another test (a CLI run in this process) may leave the root at ERROR.
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, out, limiter, clock
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_ten_thousand_identical_errors_write_three_lines_and_count_the_rest(logged) -> None:
    logger, out, limiter, clock = logged
    for n in range(10_000):
        logger.error("accept failed: %s (fd %d)", "Too many open files", n)
    assert out.getvalue().count("accept failed") == 3
    assert limiter.suppressed_total == 9_997
    clock.now += 60.0
    logger.error("accept failed: %s (fd %d)", "Too many open files", 10_000)
    last = out.getvalue().splitlines()[-1]
    assert last == ("ERROR accept failed: Too many open files (fd 10000) "
                    "[9997 more like this suppressed in the 60 s before]")


def test_other_kinds_of_lines_pass_while_one_kind_is_suppressed(logged) -> None:
    logger, out, _, _ = logged
    for _ in range(100):
        logger.error("flood %d", 1)
    logger.warning("flood %d", 1)  # another level: another kind
    logger.error("something else")
    exc_lines = out.getvalue().splitlines()
    assert exc_lines.count("ERROR flood 1") == 3
    assert exc_lines[-2:] == ["WARNING flood 1", "ERROR something else"]


def test_report_at_shutdown_counts_what_is_still_suppressed(logged, caplog) -> None:
    logger, _, limiter, _ = logged
    for _ in range(10):
        logger.error("broker refused: %s", "bad credentials")
    with caplog.at_level(logging.INFO, logger="osutil.lograte"):
        limiter.report()
    assert ("7 more lines like test.lograte: 'broker refused: %s' were suppressed"
            in caplog.messages)


def test_the_gateway_cli_limits_repeats_on_its_log_handler_and_leaves_no_logging_behind(
        tmp_path, capsys, monkeypatch) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    seen: list[bool] = []

    def load_config(path: object) -> None:  # the run fails here, with the limiter on
        seen.append(any(isinstance(f, RepeatLimiter) for h in root.handlers for f in h.filters))
        raise ConfigError(f"{path}: missing")

    monkeypatch.setattr(cli, "load_config", load_config)
    assert cli.main(["run", "--config", str(tmp_path / "missing.toml"),
                     "--log-level", "ERROR"]) == 2  # config error
    assert seen == [True]
    # main() may run again in this process (tests): a later run, or a later test, must not
    # log into this run's stdout (closed by then) or at its level.
    assert (list(root.handlers), root.level) == before

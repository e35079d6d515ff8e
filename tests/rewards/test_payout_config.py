"""The [payout] section: each bad value is refused with one line naming it; nothing starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_config
from protocol.errors import ConfigError

BASE = ('[gateway]\ndata_dir = "d"\nkey_file = "k"\nadmin_token_file = "t"\n'
        '[broker]\nurl = "mqtt://h"\nshared_group = "g"\n')
GOOD = ('[payout]\nrpc_url = "http://127.0.0.1:8545"\nkey_file = "p.key"\nchain_id = 1337\n'
        'distributor = "0x' + "ab" * 20 + '"\n')


def load(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "g.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize(("change", "named"), [
    (('rpc_url = "http://127.0.0.1:8545"', 'rpc_url = "ws://x"'), "payout.rpc_url"),
    (('distributor = "0x', 'distributor = "1x'), "payout.distributor"),
    (("chain_id = 1337", "chain_id = 0"), "payout.chain_id"),
    (("chain_id = 1337\n", "chain_id = 1337\nbogus = 1\n"), "payout.bogus"),
    (('key_file = "p.key"\n', ""), "payout.key_file"),
])
def test_bad_payout_value_is_refused_naming_it(tmp_path: Path, change: tuple[str, str],
                                      named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(tmp_path, BASE + GOOD.replace(*change))


def test_payout_on_a_shared_store_is_accepted(tmp_path: Path) -> None:
    # Once refused ("one process must own the payout book"): the book is in the database
    # and only the sequencer works it (tests/gateway/test_gateway_shared_duties.py).
    config = load(tmp_path, BASE + GOOD + '[store]\nbackend = "postgresql"\n'
                                          'dsn = "host=x"\nshared = true\n')
    assert config.store.shared
    assert config.payout is not None


def test_good_payout_section_is_read(tmp_path: Path) -> None:
    config = load(tmp_path, BASE + GOOD)
    assert config.payout is not None
    assert config.payout.chain_id == 1337


def test_payouts_are_consent_gated_unless_the_unsafe_ungated_mode_is_named(
        tmp_path: Path) -> None:
    default = load(tmp_path, BASE + GOOD).payout
    assert default is not None
    assert default.consent_gated
    ungated = load(tmp_path, BASE + GOOD + "unsafe_ungated = true\n").payout
    assert ungated is not None
    assert not ungated.consent_gated
    with pytest.raises(ConfigError, match=r"payout\.unsafe_ungated = true"):
        load(tmp_path, BASE + GOOD + "consent_gated = false\n")


@pytest.mark.parametrize("extra", [
    'consent_gated = true\nquality_validators = ["xyz"]\n',  # not a signer id
    'consent_gated = true\nquality_validators = ["' + "ab" * 15 + '"]\n',  # too short
    'unsafe_ungated = true\nquality_validators = ["' + "ab" * 16 + '"]\n',  # ungated
])
def test_bad_quality_validators_are_refused_naming_them(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError, match=r"payout\.quality_validators"):
        load(tmp_path, BASE + GOOD + extra)


def test_quality_validators_are_read_as_sorted_signer_ids(tmp_path: Path) -> None:
    config = load(tmp_path, BASE + GOOD + 'consent_gated = true\nquality_validators = ["'
                  + "cd" * 16 + '", "' + "AB" * 16 + '"]\n')
    assert config.payout is not None
    assert config.payout.quality_validators == (b"\xab" * 16, b"\xcd" * 16)

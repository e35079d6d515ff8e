"""Each verify worker imports the gateway's command module again before its first job
(multiprocessing's forkserver prepares a child from the parent's __main__), so whatever
that module loads at import is paid again on every worker restart: after a kill -9 of a
worker under load that cost showed as messages dropped `over_share`."""

from __future__ import annotations

import subprocess
import sys

from gateway import cli
from rewards.contracts import TOKEN_SUPPLY


def test_gateway_command_loads_no_ethereum_library_until_a_chain_command_runs() -> None:
    probe = ("import sys, gateway.cli; "
             "print(sorted(m for m in ('eth_abi', 'eth_account', 'eth_utils', "
             "'rewards.contracts') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "[]"


def test_gateway_service_loads_no_eth_account_until_a_transaction_is_signed() -> None:
    # eth_account builds py_ecc's curve tables at import: about 0.4 s of every start.
    probe = "import sys, gateway.service; print('eth_account' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "False"


def test_chain_deploy_default_supply_is_the_contracts_supply() -> None:
    assert cli.TOKEN_SUPPLY == TOKEN_SUPPLY

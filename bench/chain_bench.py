"""Reward distribution benchmark on a real ganache node: gas per claim and per root post, and
the time to build an epoch's tree for 10,000 owners.

1. Bare baselines in the same run: the gas of a plain ERC-20 ``transfer`` to a fresh address
   (what any payout costs at least), the gas of a plain 0-value transaction (21,000), and
   the time of the bare keccak256 calls a 10,000-leaf tree needs (3n - 1 hashes).
2. The epoch for ``--owners`` bound owners (seeded balances and addresses), timed as the
   gateway does it: decode the checkpoint's balances table, compute the amounts
   (:mod:`rewards.epoch`), build the tree and its JSON dump.
3. The distributor (contracts/, compiled by solcjs) funded, its root posted ``--posts``
   times (the first post writes a zero slot, the later ones overwrite; the worst is
   reported), then ``--claims`` first claims of different owners sent by a relayer (each
   pays an address that held no token: the expensive case), gas from the receipts.
4. ``recompute_matches``: the tree rebuilt from the same amounts given in another order has
   the root the contract holds (``merkleRoot()``).
5. A consent-gated epoch's rule (PROTOCOL.md §19.4) on ``--history`` usage records of 1,000
   consented devices, timed from scratch (what every epoch cost before the state was
   carried) and carried (``GatingState``: feed the ``--new`` records of one epoch, settle),
   with the bare loop over the new records as the baseline. The rule only, not the store.

Goals (issue 15): gas_per_claim <= 90,000, gas_per_root_post <= 60,000,
epoch_build_s_at_10k_owners <= 2, recompute_matches true.
Prints progress to stderr and ends with ONE line of JSON on stdout. Never asserts.
Run: ``python bench/chain_bench.py [--owners 10000] [--claims 20] [--posts 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from eth_hash.auto import keccak

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim.chain import ETHER, GanacheNode  # noqa: E402
from firmware_sim.solidity import Deployment, address_of  # noqa: E402
from protocol import cbor  # noqa: E402
from protocol.keys import Secret  # noqa: E402
from rewards import distributor as abi  # noqa: E402
from rewards.epoch import decode_balances, epoch_amounts  # noqa: E402
from rewards.gating import ConsentLeaf, Event, GatingState, UsageLeaf, gate  # noqa: E402
from rewards.tree import DistributionTree, checked_address  # noqa: E402

TERMS = bytes(32)


def key(name: str) -> Secret:
    return Secret(bytes(keccak(b"edgeproof-chain-bench:" + name.encode())))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def gas(receipt: dict[str, object]) -> int:
    return int(str(receipt["gasUsed"]), 16)


def bare_hash_s(count: int) -> float:
    data = [random.Random(1).randbytes(64) for _ in range(64)]
    start = time.perf_counter()
    for i in range(count):
        keccak(data[i % 64])
    return time.perf_counter() - start


def build_epoch(table: bytes, wallets: dict[str, str]) -> tuple[DistributionTree, float]:
    """What the gateway does per epoch: decode the checkpoint's balances table, compute
    the amounts of the bound owners, build the tree and its JSON dump."""
    start = time.perf_counter()
    tree = epoch_amounts(decode_balances(table), wallets).tree()
    json.dumps(tree.dump())
    return tree, time.perf_counter() - start


def gated_epoch(history: int, new: int) -> tuple[float, float, float]:
    """Seconds for the gating rule: whole log from scratch, one epoch carried, bare loop."""
    rng = random.Random(19)
    devices = [rng.randbytes(16) for _ in range(1000)]
    requests = [rng.randbytes(32) for _ in range(5)]
    events: list[Event] = [ConsentLeaf(i, rng.randbytes(32), d[:16], requests[i % 5],
                                       frozenset({d}), 0, 10**15)
                           for i, d in enumerate(devices)]
    events += [UsageLeaf(len(devices) + i, rng.choice(devices), 1000, rng.randrange(1, 500))
               for i in range(history + new)]
    funded = {r: 10**12 for r in requests}
    start = time.perf_counter()
    gate(events, funded)
    scratch_s = time.perf_counter() - start
    state = GatingState()
    state.feed(events[:-new])
    state.settle(funded)
    start = time.perf_counter()
    state.feed(events[-new:])
    state.settle(funded)
    carried_s = time.perf_counter() - start
    start = time.perf_counter()
    for event in sorted(events[-new:], key=lambda e: e.leaf):
        _ = event.leaf + 1
    return scratch_s, carried_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--owners", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--posts", type=int, default=3)
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--new", type=int, default=1_000)
    args = parser.parse_args()
    say(f"load average {os.getloadavg()}")
    scratch_s, carried_s, loop_s = gated_epoch(args.history, args.new)
    say(f"gated epoch: from scratch over {args.history} records {scratch_s:.3f} s, carried "
        f"with {args.new} new {carried_s:.4f} s (bare loop {loop_s:.4f} s)")
    rng = random.Random(15)
    balances = [(rng.randbytes(16).hex(), rng.randrange(1, 10**9)) for _ in range(args.owners)]
    wallets = {owner: checked_address("0x" + rng.randbytes(20).hex()) for owner, _ in balances}
    table = cbor.encode([[owner, micro] for owner, micro in sorted(balances)])
    bare_s = bare_hash_s(3 * args.owners - 1)
    tree, build_s = build_epoch(table, wallets)
    values = [(leaf.address, leaf.amount) for leaf in tree.leaves]
    total = sum(n for _, n in values)
    say(f"tree of {args.owners} owners: {build_s:.3f} s (bare keccak {bare_s:.3f} s)")

    names = ("issuer", "gateway", "company", "relayer")
    keys = {name: key(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="chain-bench-") as work:
        node = GanacheNode(Path(work), accounts=tuple(("0x" + k.value.hex(), 1000 * ETHER)
                                                      for k in keys.values()))
        with node:
            made = Deployment.on(node, keys["issuer"], keys["gateway"])
            company = address_of(keys["company"])
            made.give(company, total)
            made.fund(keys["company"], total, TERMS)
            fresh = checked_address("0x" + rng.randbytes(20).hex())
            transfer_gas = gas(made.send(keys["issuer"], made.token,
                                         abi.transfer(fresh, 10**18)))
            plain_gas = gas(made.send(keys["relayer"], fresh, b""))
            posts = []
            for epoch in range(1, args.posts + 1):
                receipt = made.send(keys["gateway"], made.distributor,
                                    abi.post_root(epoch, tree.root, total))
                posts.append(gas(receipt))
            say(f"root posts: {posts} gas")
            claims = []
            for address, amount in values[: args.claims]:
                receipt = made.send(keys["relayer"], made.distributor,
                                    abi.claim(address, amount, tree.proof(address)))
                claims.append(gas(receipt))
            say(f"claims: mean {statistics.mean(claims):.0f}, max {max(claims)} gas "
                f"(proof length {len(tree.proof(values[0][0]))})")
            on_chain = made.rpc.eth_call(made.distributor, abi.view("merkleRoot"))
    again = DistributionTree.build(sorted(values, key=lambda v: v[1]))
    print(json.dumps({
        "owners": args.owners,
        "gas_per_claim": max(claims),
        "gas_per_claim_mean": round(statistics.mean(claims)),
        "bare_erc20_transfer_gas": transfer_gas,
        "claim_to_bare_transfer_ratio": round(max(claims) / transfer_gas, 2),
        "gas_per_root_post": max(posts),
        "gas_per_root_post_after_first": min(posts),
        "bare_tx_gas": plain_gas,
        "root_post_to_bare_tx_ratio": round(max(posts) / plain_gas, 2),
        "epoch_build_s_at_10k_owners": round(build_s * 10_000 / args.owners, 3),
        "bare_keccak_s": round(bare_s, 3),
        "epoch_build_to_bare_keccak_ratio": round(build_s / bare_s, 2),
        "recompute_matches": again.root == on_chain == tree.root,
        "gated_epoch_s_from_scratch": round(scratch_s, 3),
        "gated_epoch_s_carried": round(carried_s, 4),
        "gated_history_records": args.history,
        "gated_new_records": args.new,
        "gated_carried_to_bare_loop_ratio": round(carried_s / loop_s, 1),
        "gated_scratch_to_carried_ratio": round(scratch_s / carried_s, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()

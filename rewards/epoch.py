"""What one epoch pays: cumulative amounts per owner address from a checkpoint's balances.

The input is the canonical balances table a checkpoint commits to (docs/PROTOCOL.md §9:
``[[owner, balance_micro], ...]``, the settled usage credit of each owner's devices at that
tree size) and the owners' wallet bindings. An owner with a binding is paid its whole
settled credit, cumulatively: ``amount = balance_micro x BASE_UNITS_PER_MICRO``; settled
credit never decreases, so neither does an owner's cumulative amount, and the distributor
pays each claim the difference to what was already claimed. An owner without a binding
stays out of the tree: its credit is counted as ``locked_micro`` and paid in full by the
first epoch after it binds. Several owners bound to one address share its leaf (summed).
Integers only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocol import cbor
from protocol.errors import VerificationError
from rewards.documents import BASE_UNITS_PER_MICRO
from rewards.tree import DistributionTree

MAX_BALANCES_BYTES = 64 * 1024 * 1024
_BALANCES_LIMITS = cbor.Limits(max_bytes=MAX_BALANCES_BYTES, max_depth=2,
                               max_items=4_000_000, max_string=1024)


@dataclass(frozen=True)
class EpochAmounts:
    """The tree's values (address, base units) and what they add up to."""

    values: tuple[tuple[str, int], ...]  # sorted by address (its 20 bytes)
    total_micro: int
    locked_micro: int

    def tree(self) -> DistributionTree:
        """The distribution tree (ValueError if no owner is bound yet)."""
        return DistributionTree.build(list(self.values))


def decode_balances(data: bytes) -> list[tuple[str, int]]:
    """Decode a canonical balances table; raise VerificationError if it is not one."""
    table = cbor.decode(data, _BALANCES_LIMITS)
    if not isinstance(table, list):
        raise VerificationError("balances table is not a CBOR array")
    rows = []
    for row in table:
        if (not isinstance(row, list) or len(row) != 2 or not isinstance(row[0], str)
                or not isinstance(row[1], int) or isinstance(row[1], bool) or row[1] < 0):
            raise VerificationError("balances table rows must be [owner text, uint]")
        rows.append((row[0], row[1]))
    return rows


def epoch_amounts(balances: list[tuple[str, int]], wallets: Mapping[str, str]) -> EpochAmounts:
    """Cumulative amounts of the owners in ``wallets`` (owner name -> 0x address)."""
    per_address: dict[str, int] = {}
    total = locked = 0
    for owner, micro in balances:
        address = wallets.get(owner)
        if address is None:
            locked += micro
            continue
        total += micro
        per_address[address] = per_address.get(address, 0) + micro
    values = tuple(sorted(((a, m * BASE_UNITS_PER_MICRO) for a, m in per_address.items()
                           if m > 0), key=lambda v: v[0].lower()))
    return EpochAmounts(values, total, locked)

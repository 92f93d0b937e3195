"""Which due package builds first: the one the machine spends most time in.

A profile's counts are where time went: its count sum (every counter of every level, taken at
the last checkpoint, schedule/maturity.py) is the number of basic blocks and calls the
package's programs ran while profiled, so the package with the largest sum gains most from an
optimized build of the same relative speedup. Ties (and packages never measured) keep the
configuration's order. Status shows the order (daemon.build_queue).
"""

from __future__ import annotations

from collections.abc import Iterable

from pgod.state.db import Package


def build_order(due: Iterable[Package], configured: list[str]) -> list[Package]:
    position = {name: index for index, name in enumerate(configured)}
    return sorted(due, key=lambda row: (-(row.count_sum or 0), position.get(row.name, len(position))))

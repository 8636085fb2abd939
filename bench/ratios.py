"""The table every A-against-B bench prints: each side's median, range and ratio to the baseline,
then the median of the per-repeat ratios (each repeat ran both sides, one after the other), which
the machine's drift between repeats moves less than the ratio of medians."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.table import Table


def alternating(sides: dict[str, Callable], repeats: int) -> Iterator[tuple[str, Callable]]:
    """Each side once per repeat, the order flipped every repeat (A B, B A, A B, ...): whichever
    side runs second in a pair (after the other has warmed caches, or left dirty pages to flush)
    does so in half the repeats, so that order does not bias the ratio."""
    names = list(sides)
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            yield name, sides[name]


def print_ratio_table(
    console: Console, title: str, values: dict[str, list[float]], baseline: str, fmt: str, first_column: str
) -> float:
    """Print the table of `values` (side -> one figure per repeat, in repeat order) against
    `baseline`; return the paired ratio of the other side (the first one that is not the baseline)."""
    table = Table(title=title, title_justify="left")
    for col in (first_column, "median", "min", "max", f"ratio to {baseline}"):
        table.add_column(col, justify="left" if col == first_column else "right")
    base = statistics.median(values[baseline])
    for name, series in values.items():
        median = statistics.median(series)
        table.add_row(name, format(median, fmt), format(min(series), fmt), format(max(series), fmt), f"{median / base:.3f}")
    console.print(table)
    other = next(name for name in values if name != baseline)
    return statistics.median(a / b for a, b in zip(values[other], values[baseline], strict=True))

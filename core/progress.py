"""Progress bars for the shards of a flow, one bar per step, drawn while the futures finish."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def wait_with_progress(groups: dict[str, list[Any]], poll: float = 0.2) -> None:
    """Block until every Prefect future in `groups` is final; a bar per group on a terminal.
    Failures surface later, where the caller asks for `.result()`."""
    futures = [f for fs in groups.values() for f in fs]
    if not futures:
        return
    if not sys.stderr.isatty():
        for f in futures:
            f.wait()
        return
    with Progress(
        TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=False,
    ) as progress:
        bars = {name: progress.add_task(name, total=len(fs)) for name, fs in groups.items() if fs}
        while True:
            pending = 0
            for name, fs in groups.items():
                done = sum(1 for f in fs if f.state.is_final())
                pending += len(fs) - done
                if name in bars:
                    progress.update(bars[name], completed=done)
            if not pending:
                break
            time.sleep(poll)

"""Progress bars on stderr: live in a terminal, a line every 30 s in a log file."""

from __future__ import annotations

import sys


def progress_bar(total: int, *, desc: str, unit: str, initial: int = 0, shown: bool = True):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        disable=not shown,
        mininterval=0.5 if interactive else 30,
        file=sys.stderr,
    )

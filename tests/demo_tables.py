"""What the demo configuration's Table 1 and Table 2 must hold, for every test that runs the demo DAG."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

# The paper's tables (docs: paper.md), as the CSV files must repeat them.
PAPER_TABLE1 = {  # group: warping, Rand and pixel error
    "human values": (0.000005, 0.0021, 0.0010),
    "u-net": (0.000353, 0.0382, 0.0611),
    "DIVE-SCI": (0.000355, 0.0305, 0.0584),
    "IDSIA": (0.000420, 0.0504, 0.0613),
    "DIVE": (0.000430, 0.0545, 0.0582),
    "IDSIA-SCI": (0.000653, 0.0189, 0.1027),
}
PAPER_TABLE2 = {  # method: PhC-U373, DIC-HeLa SEG
    "IMCB-SG (2014)": (0.2669, 0.2935),
    "KTH-SE (2014)": (0.7953, 0.4607),
    "HOUS-US (2014)": (0.5323, None),
    "second-best 2015": (0.83, 0.46),
    "u-net (2015)": (0.9203, 0.7756),
}
# The demo's held-out runs: 3 ISBI folds, 2 CTC directions, one seed.
DEMO_ISBI_RUNS = 3
DEMO_CTC_RUNS = 2


def check_demo_tables(tables: Path) -> None:
    """Both tables: the paper's rows verbatim, then ours with error rates and SEG in [0, 1] over the demo's runs."""
    table1 = pd.read_csv(tables / "table1.csv").set_index("group")
    for group, errors in PAPER_TABLE1.items():
        assert tuple(table1.loc[group, ["warping_error", "rand_error", "pixel_error"]]) == errors, group
    assert list(table1.index) == [*PAPER_TABLE1, "ours (demo-em)"]
    ours = table1.loc["ours (demo-em)"]
    assert ours["n"] == DEMO_ISBI_RUNS
    for metric in ("warping_error", "rand_error", "pixel_error"):
        assert _is_rate(ours[metric]), f"table 1, ours: {metric} = {ours[metric]}"

    table2 = pd.read_csv(tables / "table2.csv").set_index("method")
    for method, (phc, dic) in PAPER_TABLE2.items():
        assert table2.loc[method, "PhC-C2DH-U373 SEG"] == phc, method
        assert _same(table2.loc[method, "DIC-C2DH-HeLa SEG"], dic), method
    ours = table2.loc["ours"]
    assert ours["demo-cells n"] == DEMO_CTC_RUNS
    assert _is_rate(ours["demo-cells SEG"]), f"table 2, ours: SEG = {ours['demo-cells SEG']}"
    assert list(table2.index) == [*PAPER_TABLE2, "ours"]


def _is_rate(value: float) -> bool:
    return math.isfinite(value) and 0 <= value <= 1


def _same(value: float, expected: float | None) -> bool:
    return math.isnan(value) if expected is None else value == expected

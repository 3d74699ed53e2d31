"""Table 1 and Table 2 of the paper, with our measurements beside the paper's numbers.

Our numbers come from the score files of the evaluation stage,
`results/scores/{dataset}/{run}/seed{seed}.json`: scores with `seg` (CTC-protocol
data sets, and folder data sets with instance masks) go to Table 2, the others
with `warping_error` (ISBI-protocol data sets, and folder data sets with binary
masks) to Table 1. Each of our rows is the mean +- sample standard deviation over
the held-out runs (cross-validation folds, or the two sequence directions) and
seeds; `n` says how many runs it averages. A folder data set (your own images,
`unet.folder`) gets its row or columns like the paper's, with no paper value.

The paper's numbers were computed by the challenge organisers on test data whose
labels were never published; ours score held-out parts of the public training
data. The tables say so next to the numbers.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd

from unet.figures import figure
from unet.io import OUTPUT_FOLDER, DataError, atomic_path, claim_outputs, read_json
from unet.pipeline import FOLDER, RUN_PATTERN, parse_model_file, parse_score_path

# Table 1 of the paper: ISBI 2012 leaderboard of 6 March 2015, sorted by warping error.
PAPER_TABLE1 = [
    ("-", "human values", 0.000005, 0.0021, 0.0010),
    ("1", "u-net", 0.000353, 0.0382, 0.0611),
    ("2", "DIVE-SCI", 0.000355, 0.0305, 0.0584),
    ("3", "IDSIA", 0.000420, 0.0504, 0.0613),
    ("4", "DIVE", 0.000430, 0.0545, 0.0582),
    ("10", "IDSIA-SCI", 0.000653, 0.0189, 0.1027),
]
# Table 2 of the paper: ISBI cell tracking challenge 2015, segmentation ("IOU" in the paper: the SEG measure).
PAPER_TABLE2_COLUMNS = {"PhC-C2DH-U373": "PhC-U373", "DIC-C2DH-HeLa": "DIC-HeLa"}
PAPER_TABLE2 = [
    ("IMCB-SG (2014)", 0.2669, 0.2935),
    ("KTH-SE (2014)", 0.7953, 0.4607),
    ("HOUS-US (2014)", 0.5323, None),
    ("second-best 2015", 0.83, 0.46),
    ("u-net (2015)", 0.9203, 0.7756),
]

TABLE1_METRICS = ["warping_error", "rand_error", "pixel_error"]
TABLE1_EXTRA = ["vrand", "vinfo", "rand_error_unrestricted"]
TABLE2_METRICS = ["seg"]
TABLE2_EXTRA = ["iou"]

ISBI_PROTOCOL = (
    "Ours: held-out contiguous blocks of the public training slices (30 for ISBI 2012; cross-validation), "
    "scored with the challenge's metrics as Fiji computes them. "
    "Paper: the 30 hidden test slices, scored by the organisers."
)
CTC_PROTOCOL = (
    "Ours: SEG (the challenge's measure) on the annotated frames of one public training sequence, "
    "model trained on the other sequence (both directions). Paper: the hidden test sequences, scored by the organisers."
)


FOLDER_SOURCE = "cross-validation folds of its own images"
FOLDER_NOTE = (
    "{names}: your own annotated images (protocol folder), scored on the images each cross-validation fold held "
    "out; the paper has no value for them."
)


@dataclass(frozen=True)
class Score:
    dataset: str
    run: str
    seed: int
    values: dict[str, float]
    protocol: str | None = None  # as the score file's meta says (`folder`); None for the challenges' data sets


def read_score(path: str | Path) -> Score:
    """One score file; the data set, run and seed come from its path `{dataset}/{run}/seed{seed}.json`."""
    path = Path(path)
    named = parse_score_path(path)
    if not named:
        raise DataError(
            f"{path}: score files must be named {{dataset}}/{{run}}/seed{{seed}}.json, the run one of {RUN_PATTERN}"
        )
    raw = read_json(path)
    values = {}
    for key, entry in raw.items():
        value = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
    if not ({"warping_error", "seg"} & set(values)):
        raise DataError(f"{path}: neither ISBI scores (warping_error, ...) nor CTC scores (seg, ...)")
    meta = raw.get("meta")
    return Score(*named, values, meta.get("protocol") if isinstance(meta, dict) else None)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_sd(mean: float, sd: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _summary(scores: list[Score], metrics: list[str]) -> dict[str, tuple[float, float]]:
    summary = {}
    for metric in metrics:
        values = [s.values[metric] for s in scores if metric in s.values]
        summary[metric] = mean_sd(values) if values else (math.nan, math.nan)
    return summary


def _by_dataset(scores: list[Score], key: str, unless: str | None = None) -> dict[str, list[Score]]:
    """The scores that have `key` (and not `unless`), by data set."""
    grouped: dict[str, list[Score]] = {}
    for score in scores:
        if key in score.values and unless not in score.values:
            grouped.setdefault(score.dataset, []).append(score)
    return grouped


def folder_datasets(scores: list[Score]) -> list[str]:
    return sorted({score.dataset for score in scores if score.protocol == FOLDER})


# What produced our rows (from the models' run.json, `unet.provenance`): one column each.
PROVENANCE = (
    "commit",
    "python",
    "torch",
    "numpy",
    "snakemake",
    "cuda",
    "cudnn",
    "device",
    "precision",
    "seeds",
    "train_wall_s",
)
RunKey = tuple[str, str, int]  # dataset, run, seed


def read_runs(paths: Sequence[str | Path], snakemake_version: str | None = None) -> dict[RunKey, dict]:
    """The run records (`run.json` of each model folder), by (dataset, run, seed) from their paths. A record
    made where snakemake was not installed (a job's conda environment) gets `snakemake_version`, the version
    of the Snakemake that ran the workflow."""
    runs = {}
    for path in paths:
        key = parse_model_file(path)
        if key is None:
            raise DataError(f"{path}: run records must be named {{dataset}}/{{run}}/seed{{seed}}/run.json")
        record = read_json(path)
        runs[key] = record | {"snakemake": record.get("snakemake") or snakemake_version}
    return runs


def provenance(scores: list[Score], runs: dict[RunKey, dict]) -> dict[str, object]:
    """The provenance columns of a row of ours: each value the runs had (joined if they differ), the seeds, and
    the training time summed over the runs. Empty without run records."""
    records = [_shown(runs[key]) for key in ((s.dataset, s.run, s.seed) for s in scores) if key in runs]
    if not records:
        return {}
    row = {key: "; ".join(sorted({str(record.get(key)) for record in records})) for key in PROVENANCE[:-2]}
    row["seeds"] = ",".join(str(seed) for seed in sorted({s.seed for s in scores}))
    row["train_wall_s"] = round(sum(record.get("train_wall_s") or 0.0 for record in records), 1)
    return row


def _shown(record: dict) -> dict:
    """A run record as the tables show it: the commit shortened, `+dirty` for uncommitted changes."""
    commit = record.get("commit")
    return record | {"commit": f"{commit[:12]}{'+dirty' if record.get('dirty') else ''}" if commit else "unknown"}


def table1(scores: list[Score], runs: dict[RunKey, dict] | None = None) -> pd.DataFrame:
    """The paper's Table 1 rows, then ours per ISBI-protocol data set (with their provenance, given `runs`)."""
    rows = [
        {
            "rank": rank,
            "group": group,
            "source": "paper (hidden test set)",
            "n": None,
            "warping_error": w,
            "warping_error_sd": None,
            "rand_error": r,
            "rand_error_sd": None,
            "pixel_error": p,
            "pixel_error_sd": None,
        }
        for rank, group, w, r, p in PAPER_TABLE1
    ]
    for dataset, group in sorted(_by_dataset(scores, "warping_error", unless="seg").items()):
        summary = _summary(group, TABLE1_METRICS + TABLE1_EXTRA)
        row = {
            "rank": "-",
            "group": f"ours ({dataset})",
            "source": FOLDER_SOURCE if folder_datasets(group) else "held-out folds of public training data",
            "n": len(group),
        }
        for metric, (mean, sd) in summary.items():
            row[metric], row[f"{metric}_sd"] = mean, sd
        rows.append(row | provenance(group, runs or {}))
    return pd.DataFrame(rows)


def table2(scores: list[Score], runs: dict[RunKey, dict] | None = None) -> pd.DataFrame:
    """The paper's Table 2 rows, then ours; one column pair (SEG, IoU) per CTC-protocol data set (and the
    provenance of our runs, given `runs`)."""
    grouped = _by_dataset(scores, "seg")
    datasets = list(PAPER_TABLE2_COLUMNS) + sorted(set(grouped) - set(PAPER_TABLE2_COLUMNS))
    rows = []
    for method, *values in PAPER_TABLE2:
        row = {"method": method, "source": "paper (hidden test set)"}
        for dataset, value in zip(PAPER_TABLE2_COLUMNS, values):
            row[f"{dataset} SEG"] = value
        rows.append(row)
    ours = {"method": "ours", "source": "other public training sequence"}
    for dataset in datasets:
        if dataset in grouped:
            summary = _summary(grouped[dataset], TABLE2_METRICS + TABLE2_EXTRA)
            ours[f"{dataset} SEG"], ours[f"{dataset} SEG_sd"] = summary["seg"]
            ours[f"{dataset} IoU"], ours[f"{dataset} IoU_sd"] = summary["iou"]
            ours[f"{dataset} n"] = len(grouped[dataset])
    ours |= provenance([score for group in grouped.values() for score in group], runs or {})
    rows.append(ours)
    columns = ["method", "source"] + [
        f"{d} {suffix}" for d in datasets for suffix in ("SEG", "SEG_sd", "IoU", "IoU_sd", "n")
    ]
    return pd.DataFrame(rows).reindex(columns=columns + [key for key in PROVENANCE if key in ours])


@dataclass(frozen=True)
class Document:
    """A table as the reader gets it: title, protocol, header and rows of formatted cells, notes."""

    title: str
    protocol: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]

    def markdown(self) -> str:
        lines = [
            f"# {self.title}",
            "",
            self.protocol,
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + "---|" * len(self.header),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """A page of its own: the report shows HTML results inline (CSV files it only offers to download)."""
        header = "".join(f"<th>{escape(cell)}</th>" for cell in self.header)
        rows = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in self.rows)
        notes = "".join(f"<p>{escape(note)}</p>" for note in self.notes)
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(self.title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{escape(self.title)}</h1><p>{escape(self.protocol)}</p>"
            f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>{notes}</body></html>\n"
        )


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} "
    "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right} td:nth-child(2){text-align:left}"
)


def table1_document(frame: pd.DataFrame, settings_note: str, folders: Sequence[str] = ()) -> Document:
    rows = []
    for row in frame.to_dict("records"):
        ours = row["source"] != "paper (hidden test set)"
        cells = [
            _cell(row, metric, digits, ours)
            for metric, digits in (("warping_error", 6), ("rand_error", 4), ("pixel_error", 4))
        ]
        extras = [_cell(row, metric, 4, ours) if ours else "" for metric in ("vrand", "vinfo")]
        rows.append([str(row["rank"]), row["group"], *cells, *extras, _count(row.get("n"))])
    header = ["rank", "group", "warping error", "Rand error", "pixel error", "V_rand", "V_info", "n"]
    shown = [name for name in folders if f"ours ({name})" in set(frame["group"])]
    notes = [*_folder_note(shown), _differences(settings_note), *_provenance_lines(frame, "group")]
    return Document("Table 1: ISBI 2012 EM segmentation", ISBI_PROTOCOL, header, rows, notes)


def table2_document(frame: pd.DataFrame, settings_note: str, folders: Sequence[str] = ()) -> Document:
    datasets = [c[: -len(" SEG")] for c in frame.columns if c.endswith(" SEG")]
    names = [PAPER_TABLE2_COLUMNS.get(d, d) for d in datasets]
    rows = []
    for row in frame.to_dict("records"):
        ours = row["source"] != "paper (hidden test set)"
        seg = [_cell(row, f"{d} SEG", 4, ours, sd_key=f"{d} SEG_sd") for d in datasets]
        iou = [_cell(row, f"{d} IoU", 4, ours, sd_key=f"{d} IoU_sd") if ours else "" for d in datasets]
        rows.append([row["method"], *seg, *iou])
    ours = frame.iloc[-1]
    counts = ", ".join(
        f"{PAPER_TABLE2_COLUMNS.get(d, d)}: n = {_count(ours.get(f'{d} n'))}"
        for d in datasets
        if _count(ours.get(f"{d} n"))
    )
    notes = [
        *_folder_note([name for name in folders if name in datasets]),
        f"Our rows average the runs and seeds ({counts}). IoU is the plain foreground IoU, scored outside the "
        "cells that the ground truth shows but leaves unannotated (unannotated.tif); a different and usually "
        'higher number than SEG, which counts annotated cells only; the paper\'s "IOU" is the SEG measure.',
        _differences(settings_note),
        *_provenance_lines(frame, "method"),
    ]
    header = ["method", *(f"{name} SEG" for name in names), *(f"{name} IoU" for name in names)]
    return Document("Table 2: ISBI cell tracking challenge 2015, segmentation (SEG)", CTC_PROTOCOL, header, rows, notes)


def _folder_note(names: Sequence[str]) -> list[str]:
    return [FOLDER_NOTE.format(names=", ".join(names))] if names else []


def _cell(row: dict, key: str, digits: int, ours: bool, sd_key: str | None = None) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not ours:
        return f"{value:.{digits}f}"
    return format_mean_sd(value, row.get(sd_key or f"{key}_sd") or 0.0, digits)


def _provenance_lines(frame: pd.DataFrame, name: str) -> list[str]:
    """A line per row of ours that has provenance: what produced it."""
    lines = []
    for row in frame.to_dict("records"):
        if isinstance(row.get("commit"), str):
            parts = [f"{key.replace('_', ' ')} {row[key]}" for key in PROVENANCE if _given(row.get(key))]
            lines.append(f"Provenance of {row[name]}: " + ", ".join(parts) + ".")
    return lines


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _count(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value))


def _differences(settings_note: str) -> str:
    text = "Differences to the paper: the evaluation data (above)"
    return text + (f"; our settings: {settings_note}." if settings_note else ".")


def write_tables(
    score_files: list[str | Path],
    out_dir: str | Path,
    settings_note: str = "",
    run_files: Sequence = (),
    snakemake_version: str | None = None,
) -> None:
    """Write table1 and table2 (.csv, .md, .html) into `out_dir`, our rows with the provenance of `run_files`."""
    scores = [read_score(path) for path in score_files]
    runs = read_runs(run_files, snakemake_version)
    out_dir = Path(out_dir)
    for name, frame, document in (
        ("table1", table1(scores, runs), table1_document),
        ("table2", table2(scores, runs), table2_document),
    ):
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        text = document(frame, settings_note, folder_datasets(scores))
        for suffix, content in (("md", text.markdown()), ("html", text.html())):
            with atomic_path(out_dir / f"{name}.{suffix}") as tmp:
                tmp.write_text(content)


def rule_times(benchmark_dir: str | Path, exclude_datasets: Sequence[str] = ()) -> pd.DataFrame:
    """Per rule: jobs, total, mean and longest wall time, and peak memory, from Snakemake's benchmark files
    (`{benchmark_dir}/{rule}/...tsv`).

    Files of `exclude_datasets` (named `{dataset}/...`, `{dataset}-...` or `{dataset}.tsv` below their
    rule's folder), such as an earlier run's demo data sets, are left out.
    """
    benchmark_dir = Path(benchmark_dir)
    rows = []
    for path in sorted(benchmark_dir.rglob("*.tsv")):
        name = path.relative_to(benchmark_dir).as_posix().split("/", 1)[-1]
        if any(name.startswith((f"{d}/", f"{d}-", f"{d}.tsv")) for d in exclude_datasets):
            continue
        frame = pd.read_csv(path, sep="\t")
        if "s" not in frame:
            raise DataError(f"{path}: not a Snakemake benchmark file (no column 's')")
        rule = path.relative_to(benchmark_dir).parts[0]
        rows += [{"rule": rule, "s": s, "max_rss": rss} for s, rss in zip(frame["s"], frame.get("max_rss", math.nan))]
    if not rows:
        raise DataError(f"{benchmark_dir}: no benchmark files")
    jobs = pd.DataFrame(rows)
    summary = jobs.groupby("rule").agg(
        jobs=("s", "size"),
        total_s=("s", "sum"),
        mean_s=("s", "mean"),
        max_s=("s", "max"),
        max_rss_mb=("max_rss", "max"),
    )
    return summary.sort_values("total_s", ascending=False).reset_index()


def write_rule_times(benchmark_dir: str | Path, out_dir: str | Path, exclude_datasets: Sequence[str] = ()) -> None:
    """`rule_times.csv` and a bar chart `rule_times.png` of the total time per rule."""
    summary = rule_times(benchmark_dir, exclude_datasets)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "rule_times.csv") as tmp:
        summary.to_csv(tmp, index=False, float_format="%.3f")
    with figure(out_dir / "rule_times.png", size=(7, 0.4 * len(summary) + 1), layout="tight") as (_, axes):
        axes[0, 0].barh(summary["rule"], summary["total_s"])
        axes[0, 0].invert_yaxis()
        axes[0, 0].set_xlabel("wall time summed over jobs (s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", nargs="*", help="score files named {dataset}/{run}/seed{seed}.json")
    parser.add_argument("--out", required=True, help="folder for table1.csv/.md and table2.csv/.md")
    parser.add_argument("--settings-note", default="", help="how our settings differ from the paper's, for the tables")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=[],
        metavar="RUN_JSON",
        help="the run.json of each scored model ({dataset}/{run}/seed{seed}/run.json): provenance",
    )
    parser.add_argument(
        "--snakemake-version",
        help="the version of the Snakemake that ran the workflow, for "
        "run records made without it (jobs in conda environments)",
    )
    parser.add_argument(
        "--rule-times",
        metavar="BENCHMARK_DIR",
        help="instead of the tables, summarise Snakemake's per-job benchmark files into "
        "rule_times.csv and rule_times.png",
    )
    parser.add_argument(
        "--exclude-datasets",
        nargs="*",
        default=[],
        metavar="DATASET",
        help="with --rule-times: leave out the benchmark files of these data sets",
    )


def run(args: argparse.Namespace) -> int:
    with claim_outputs((args.out, OUTPUT_FOLDER)):
        if args.rule_times:
            write_rule_times(args.rule_times, args.out, args.exclude_datasets)
        else:
            write_tables(args.scores, args.out, args.settings_note, args.runs, args.snakemake_version)
    return 0

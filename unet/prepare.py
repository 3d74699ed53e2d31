"""Data preparation: `unet prepare` turns a data set's official layout into the canonical form of `unet.io`
(`write_split`), one folder per split: isbi `train` (binary labels, 1 = cell) and `test` (no labels); ctc `01`
and `02` (every frame, uint16 instance labels of the annotated frames, matched by frame number); folder `train`
(a folder of your own images and masks, `unet.folder`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from unet.errors import UsageError
from unet.fetch import CATALOGUE, PARTS, protocol_of
from unet.folder import read_folder_split
from unet.io import (
    OUTPUT_FOLDER,
    DataError,
    Split,
    check_finite,
    check_output,
    numbered_files,
    read_stack,
    read_tiff,
    write_split,
)
from unet.pipeline import FOLDER, FOLDER_FOLDS, PROTOCOLS, SPLITS


def prepare(
    dataset: str,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    protocol: str | None = None,
    splits: Iterable[str] | None = None,
    part: str = "train",
    folder_options: dict | None = None,
) -> list[Path]:
    """Write the canonical form of each split of `raw` into `out/<split>/`; returns the split folders.
    `folder_options`: `unet.folder.read_folder_split`'s `folds`, `ignore_label` and `channel` (protocol folder).

    Every split is read and checked before any is written, so bad input leaves each earlier
    prepared split as it was (and each split folder is replaced whole, `unet.io.write_split`).
    """
    protocol = protocol_of(dataset, protocol, PROTOCOLS)
    raw, out = Path(raw), Path(out)
    if folder_options and protocol != FOLDER:
        raise UsageError(f"{dataset}: --folds, --ignore-label and --channel go with --protocol {FOLDER}")
    if protocol == FOLDER and part != "train":
        raise UsageError(f"{dataset}: a folder data set has no --part {part}")
    if protocol != FOLDER and not raw.is_dir():
        raise DataError(f"{raw}: no such folder (fetch or synthesize {dataset} first)")
    names = list(splits or SPLITS[protocol])
    for split in names:
        if split not in SPLITS[protocol]:
            raise DataError(f"{dataset}: split {split!r} is not one of the {protocol} splits {SPLITS[protocol]}")
    if protocol == FOLDER:
        prepared = [read_folder_split(dataset, raw, **(folder_options or {}))]
    else:
        reader = read_isbi_split if protocol == "isbi" else read_ctc_split
        prepared = [reader(dataset, raw, split, labelled=part == "train") for split in names]
    for split in prepared:
        write_split(out / split.split, split)
    return [out / split for split in names]


def read_isbi_split(dataset: str, raw: Path, split: str, *, labelled: bool = True) -> Split:
    """ISBI layout -> `Split`: train with binary labels (255 = cell becomes 1), test without."""
    images = read_stack(raw / f"{split}-volume.tif")
    check_finite(images, str(raw / f"{split}-volume.tif"))
    frames = list(range(len(images)))
    if split == "test" or not labelled:
        return Split(dataset, split, "binary", images, frames)
    path = raw / "train-labels.tif"
    labels = read_stack(path)
    if labels.shape != images.shape:
        raise DataError(f"{path}: shape {labels.shape} differs from train-volume.tif {images.shape}")
    if np.any((labels != 0) & (labels != 255)):  # np.unique would sort the whole stack
        raise DataError(f"{path}: expected 255 = cell and 0 = membrane, found values {np.unique(labels)[:10].tolist()}")
    return Split(dataset, split, "binary", images, frames, (labels == 255).astype(np.uint8), frames)


def read_ctc_split(dataset: str, raw: Path, sequence: str, *, labelled: bool = True) -> Split:
    """CTC layout -> `Split`: every frame `XX/tTTT.tif`; labels from `XX_GT/SEG/man_segTTT.tif`, by frame number."""
    frame_files = numbered_files(raw / sequence, "t")
    if not frame_files:
        raise DataError(f"{raw / sequence}: no frames tTTT.tif")
    _check_no_gaps(frame_files, raw / sequence, "t")
    images = _stack(frame_files.values())
    frames = list(frame_files)
    if not labelled:
        return Split(dataset, sequence, "instance", images, frames)
    seg = raw / f"{sequence}_GT" / "SEG"
    label_files = numbered_files(seg, "man_seg")
    if not label_files:
        raise DataError(f"{seg}: no annotated frames man_segTTT.tif")
    for frame, path in label_files.items():
        if frame not in frame_files:
            raise DataError(f"{path}: frame {frame} has no raw frame in {raw / sequence}")
    labels = _stack(label_files.values(), shape=images.shape[1:], instances=True).astype(np.uint16)
    unannotated = unannotated_extents(raw, sequence, labels, list(label_files))
    return Split(dataset, sequence, "instance", images, frames, labels, list(label_files), unannotated)


def _check_no_gaps(files: dict[int, Path], folder: Path, prefix: str) -> None:
    """A `DataError` naming the first missing file if the numbered `files` skip a frame (a sequence may start at
    any frame number, but a gap is a file lost on the way)."""
    frames = list(files)
    missing = sorted(set(range(frames[0], frames[-1] + 1)) - set(frames))
    if missing:
        raise DataError(
            f"{_numbered(files, folder, prefix, missing[0])}: no such file, but the sequence runs from frame "
            f"{frames[0]} to {frames[-1]} ({len(missing)} missing)"
        )


def _numbered(files: dict[int, Path], folder: Path, prefix: str, frame: int) -> Path:
    """The file of `frame` in `folder`, numbered with as many digits as the other `files` (t007.tif beside t006.tif)."""
    digits = len(next(iter(files.values())).name) - len(prefix) - len(".tif")
    return folder / f"{prefix}{frame:0{digits}d}.tif"


def unannotated_extents(raw: Path, sequence: str, labels: np.ndarray, frames: list[int]) -> np.ndarray:
    """`unannotated_cells` of each labelled frame of a CTC sequence, from its tracking markers (`XX_GT/TRA`)
    and its silver truth (`XX_ST/SEG`) where the data set has one. Cells without either: a disc of the radius
    of the sequence's median annotated cell (the equivalent radius of its area).

    Where the sequence has markers, every labelled frame needs its own, and each of its markers must be a track
    of `man_track.txt` (where there is one) that spans the frame: otherwise the markers are of something else.
    """
    tracking = raw / f"{sequence}_GT" / "TRA"
    markers = numbered_files(tracking, "man_track")
    tracks = read_tracks(tracking / TRACKS) if (tracking / TRACKS).is_file() else None
    silver = numbered_files(raw / f"{sequence}_ST" / "SEG", "man_seg")
    areas = np.concatenate([np.bincount(label.ravel())[1:] for label in labels])
    radius = float(np.sqrt(np.median(areas[areas > 0]) / np.pi)) if (areas > 0).any() else 0.0
    extents = np.zeros(labels.shape, dtype=bool)
    if not markers:  # no tracking ground truth: no cell is known to lack its mask
        return extents
    for row, (frame, label) in enumerate(zip(frames, labels)):
        if frame not in markers:
            missing = _numbered(markers, tracking, "man_track", frame)
            raise DataError(f"{missing}: no such file: the tracking markers of annotated frame {frame}")
        frame_markers = _label_image(markers[frame], label.shape)
        if tracks is not None:
            _check_tracked(frame_markers, frame, tracks, markers[frame])
        frame_silver = _label_image(silver[frame], label.shape) if frame in silver else None
        extents[row] = unannotated_cells(label, frame_markers, frame_silver, radius)
    return extents


TRACKS = "man_track.txt"  # one line per track: its label, first frame, last frame, parent track (0: none)


def read_tracks(path: Path) -> dict[int, tuple[int, int]]:
    """A Cell Tracking Challenge `man_track.txt`: label -> (first frame, last frame); anything that is not
    lines of four whole numbers `L B E P` (L > 0 once each, B <= E, P 0 or a listed label) is a `DataError`."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file of tracks `L B E P`") from None
    tracks, parents = {}, {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        values = [int(field) for field in fields if field.isdecimal()]
        if len(fields) != 4 or len(values) != 4 or values[0] == 0 or values[1] > values[2] or values[0] in tracks:
            raise DataError(
                f"{path}: line {number} {line.strip()[:40]!r} is not a track `L B E P`: a new label L > 0, first "
                "and last frame B <= E, parent P (0: none)"
            )
        label, first, last, parents[label] = values
        tracks[label] = (first, last)
    unknown = sorted(parent for parent in parents.values() if parent and parent not in tracks)
    if unknown:
        raise DataError(f"{path}: parent tracks {unknown[:5]} are not listed")
    return tracks


def _check_tracked(markers: np.ndarray, frame: int, tracks: dict[int, tuple[int, int]], path: Path) -> None:
    for marker in np.unique(markers[markers > 0]).tolist():
        first, last = tracks.get(marker, (None, None))
        if first is None or not first <= frame <= last:
            spans = "is not listed" if first is None else f"spans frames {first} to {last}"
            raise DataError(f"{path}: marker {marker} is not a track at frame {frame}: in {TRACKS} it {spans}")


def _label_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A 2D integer label image of `shape`; anything else is a `DataError` naming the file."""
    return _stack([path], shape=shape, instances=True)[0]


def unannotated_cells(
    annotated: np.ndarray, markers: np.ndarray, silver: np.ndarray | None, fallback_radius: float
) -> np.ndarray:
    """Where a labelled frame shows cells that its ground truth leaves without a mask: a bool (H, W) mask.

    The paper trains on "partially annotated" images. A cell counts as shown when the
    challenge's tracking ground truth marks it (`markers`, `XX_GT/TRA`), and as unannotated when
    no pixel of its marker lies in an object of the segmentation ground truth (`annotated`,
    `XX_GT/SEG`). Its extent is the silver-truth object under most of its marker (`silver`,
    `XX_ST/SEG`, where the data set has one); without one, a disc of `fallback_radius` around the
    marker's centre (choice). Annotated objects are never part of it.
    """
    shown = np.zeros(annotated.shape, dtype=bool)
    for marker in np.unique(markers[markers > 0]):
        where = markers == marker
        if not (annotated[where] > 0).any():
            extent = _silver_object(silver, where)
            shown |= extent if extent is not None else _disc(annotated.shape, where, fallback_radius)
    return shown & (annotated == 0)


def _silver_object(silver: np.ndarray | None, where: np.ndarray) -> np.ndarray | None:
    """The silver-truth object under most of the pixels `where`, or None."""
    if silver is None:
        return None
    under = silver[where]
    under = under[under > 0]
    return silver == np.bincount(under).argmax() if under.size else None


def _disc(shape: tuple[int, int], where: np.ndarray, radius: float) -> np.ndarray:
    """A disc of `radius` around the centre of the pixels `where`."""
    rows, columns = np.indices(shape)
    centre_row, centre_column = (float(np.mean(axis)) for axis in np.nonzero(where))
    return (rows - centre_row) ** 2 + (columns - centre_column) ** 2 <= radius**2


def _stack(paths: Iterable[Path], shape: tuple[int, ...] | None = None, *, instances: bool = False) -> np.ndarray:
    """Read 2D images of one shape and dtype into a (N, H, W) stack; a misfit names its file. Images must be
    finite; `instances` (label images) must hold integers from 0 to 65535."""
    arrays = []
    for path in paths:
        array = read_tiff(path)
        if array.ndim != 2:
            raise DataError(f"{path}: expected a 2D image, found shape {array.shape}")
        if instances and (array.dtype.kind not in "ui" or array.min() < 0 or array.max() > np.iinfo(np.uint16).max):
            raise DataError(f"{path}: instance labels must be non-negative integers below 65536, found {array.dtype}")
        check_finite(array, str(path))
        shape = shape or array.shape
        if array.shape != shape or (arrays and array.dtype != arrays[0].dtype):
            raise DataError(
                f"{path}: {array.shape} {array.dtype} differs from the other frames ({shape}"
                f"{f' {arrays[0].dtype}' if arrays else ''})"
            )
        arrays.append(array)
    return np.stack(arrays)


# --- CLI ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help=f"data set name ({', '.join(CATALOGUE)} or another with --protocol)")
    parser.add_argument(
        "--raw",
        required=True,
        type=Path,
        help="the official layout, e.g. results/raw/DATASET; protocol folder: your folder of images/ and masks/",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder; each split goes to OUT/SPLIT/")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="for a data set outside the catalogue: isbi or ctc (their layouts), folder (your own images and masks)",
    )
    parser.add_argument("--splits", nargs="+", help="splits to write (default: isbi train test, ctc 01 02)")
    parser.add_argument(
        "--part", choices=PARTS, default="train", help="test: the CTC challenge's test sequences, which have no labels"
    )
    folder = parser.add_argument_group("protocol folder (unet/folder.py)")
    folder.add_argument(
        "--folds",
        type=int,
        metavar="N",
        help=f"the cross-validation it is for: needs N images (default {FOLDER_FOLDS})",
    )
    folder.add_argument(
        "--ignore-label", type=int, metavar="V", help="the mask value of pixels that are not annotated (no weight)"
    )
    folder.add_argument(
        "--channel", type=int, metavar="C", help="the channel of RGB or multichannel images, as in `unet predict`"
    )


def run(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in ("folds", "ignore_label", "channel")}
    check_output(args.out, OUTPUT_FOLDER, inputs=[args.raw])  # its split folders are locked as they are written
    folders = prepare(
        args.dataset,
        args.raw,
        args.out,
        protocol=args.protocol,
        splits=args.splits,
        part=args.part,
        folder_options={key: value for key, value in options.items() if value is not None},
    )
    for folder in folders:
        print(f"{args.dataset}: prepared {folder}", file=sys.stderr)
    return 0

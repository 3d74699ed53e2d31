"""The embedded demo data: small data sets that look like the paper's two problems, made from a seed.

`unet synthesize em OUT` writes the ISBI 2012 layout (`train-volume.tif`,
`train-labels.tif` with 255 = cell and 0 = membrane, `test-volume.tif`): EM-like
sections of cells (a warped, weighted Voronoi partition) separated by thin dark
membranes of varying width, with textured interiors, dark organelles that are
not membranes, blur and noise.

`unet synthesize cells OUT` writes the Cell Tracking Challenge layout for
sequences `01` and `02` (`tTTT.tif`, `XX_GT/SEG/man_segTTT.tif` for the annotated
frames, `XX_GT/TRA/man_trackTTT.tif` for every frame and `man_track.txt`): clusters
of irregular, touching cells with bright textured bodies, a darker nucleus, a
bright halo and a faint dark seam where two cells touch, drifting from frame to
frame. Every cell stays in view for the whole sequence, so each is one track
from the first frame to the last, and its track id is its label in every mask.

Both are written exactly as the official data, so `unet prepare` reads them with
the same code. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from unet.io import OUTPUT_TREE, atomic_directory, claim_outputs, write_tiff
from unet.pipeline import CTC_SEQUENCES
from unet.settings import SyntheticCellsSettings, SyntheticEmSettings, from_arguments
from unet.settings import add_arguments as add_settings_arguments


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (noise - noise.mean()) / (noise.std() + 1e-8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


# --- EM sections ------------------------------------------------------------------------------------


def em_section(rng: np.random.Generator, size: int, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """One EM-like section: (uint8 image, uint8 label with 255 = cell, 0 = membrane)."""
    cell, gap = power_partition(rng, size, cell_size)
    half_width = 1.1 + 0.7 * (1 + np.tanh(smooth_noise(rng, (size, size), size / 16)))
    membrane = gap < half_width

    interior = rng.uniform(0.55, 0.8, cell.max() + 1).astype(np.float32)[cell]
    interior += 0.07 * smooth_noise(rng, (size, size), 1.2) + 0.05 * smooth_noise(rng, (size, size), 6)
    interior -= 0.35 * organelles(rng, size, cell_size, inside=gap > half_width + 2)
    strength = 1 / (1 + np.exp(np.clip(2.5 * (gap - half_width), -50, 50)))  # soft membrane profile
    darkness = rng.uniform(0.12, 0.28) + 0.04 * smooth_noise(rng, (size, size), 3)
    image = interior * (1 - strength) + darkness * strength
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.1))
    contrast = rng.uniform(0.85, 1.15)
    image = 0.5 + contrast * (image - 0.5) + rng.normal(0, 0.05, image.shape)
    return to_uint8(image), np.where(membrane, 0, 255).astype(np.uint8)


def power_partition(rng: np.random.Generator, size: int, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """A warped power diagram of random sites: (cell index per pixel, distance in pixels to its edge).

    Power-diagram edges are straight, and a pixel's distance to the edge between
    its two nearest sites is exact, so membranes get the width asked for;
    warping the coordinates with a smooth field bends the edges like cell outlines.
    """
    count = max(4, round(1.3 * size * size / cell_size**2))
    margin = 0.1 * size
    sites = rng.uniform(-margin, size + margin, (count, 2)).astype(np.float32)
    weights = (rng.uniform(-0.25, 0.25, count) * cell_size**2).astype(np.float32)
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    grid += 0.3 * cell_size * np.stack([smooth_noise(rng, (size, size), cell_size) for _ in range(2)])
    power = ((grid[None] - sites[:, :, None, None]) ** 2).sum(axis=1) - weights[:, None, None]
    first, second = np.argpartition(power, 1, axis=0)[:2]
    first_power = np.take_along_axis(power, first[None], 0)[0]
    second_power = np.take_along_axis(power, second[None], 0)[0]
    separation = np.linalg.norm(sites[first] - sites[second], axis=-1)
    return first, (second_power - first_power) / (2 * separation)


def organelles(rng: np.random.Generator, size: int, cell_size: float, inside: np.ndarray) -> np.ndarray:
    """Small soft dark blobs (vesicles) inside cells: dark, but not membranes."""
    blobs = np.zeros((size, size), np.float32)
    candidates = np.argwhere(inside)
    if len(candidates) == 0:
        return blobs
    count = max(1, round(size * size / cell_size**2))
    for y, x in candidates[rng.integers(0, len(candidates), count)]:
        blobs[y, x] = 1.0
    radius = max(1.0, cell_size / 20)
    blobs = ndimage.gaussian_filter(blobs, radius) * (2 * np.pi * radius**2)
    return np.clip(blobs, 0, 1) * inside


def em_volume(rng: np.random.Generator, slices: int, size: int, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    sections = [em_section(rng, size, cell_size) for _ in range(slices)]
    return np.stack([image for image, _ in sections]), np.stack([label for _, label in sections])


def synthesize_em(
    out: str | os.PathLike,
    *,
    seed: int = SyntheticEmSettings.seed,
    size: int = SyntheticEmSettings.size,
    train_slices: int = SyntheticEmSettings.train_slices,
    test_slices: int = SyntheticEmSettings.test_slices,
    cell_size: float = SyntheticEmSettings.cell_size,
) -> Path:
    """Write an EM-like data set in the ISBI 2012 layout into `out`."""
    SyntheticEmSettings(seed, size, train_slices, test_slices, cell_size)  # checks the values
    train_rng, test_rng = (np.random.default_rng([seed, part]) for part in (0, 1))
    train_images, train_labels = em_volume(train_rng, train_slices, size, cell_size)
    test_images, _ = em_volume(test_rng, test_slices, size, cell_size)
    with atomic_directory(out) as tmp:
        write_tiff(tmp / "train-volume.tif", train_images, axes="ZYX")
        write_tiff(tmp / "train-labels.tif", train_labels, axes="ZYX")
        write_tiff(tmp / "test-volume.tif", test_images, axes="ZYX")
    return Path(out)


# --- cell sequences ---------------------------------------------------------------------------------


@dataclass
class Cells:
    """Cells of one sequence at frame 0 and how they move."""

    centres: np.ndarray  # (n, 2) y, x
    radii: np.ndarray  # (n,)
    shape: np.ndarray  # (n, 3) amplitudes of the 2nd..4th angular harmonics
    phases: np.ndarray  # (n, 3)
    velocity: np.ndarray  # (n, 2) pixels per frame
    brightness: np.ndarray  # (n,)


def place_cells(rng: np.random.Generator, count: int, size: int, cell_size: float) -> Cells:
    """Cells in clusters: most are placed against an earlier one, overlapping its outline, so they touch."""
    radii = rng.uniform(0.4, 0.6, count) * cell_size
    low, high = 0.3 * cell_size, size - 0.3 * cell_size
    centres: list[np.ndarray] = []
    for i in range(count):
        for _ in range(100):
            if centres and rng.random() < 0.8:
                j = rng.integers(len(centres))
                angle = rng.uniform(0, 2 * np.pi)
                step = rng.uniform(0.75, 0.9) * (radii[i] + radii[j])
                candidate = centres[j] + step * np.array([np.sin(angle), np.cos(angle)])
            else:
                candidate = rng.uniform(low, high, 2)
            apart = all(np.hypot(*(candidate - c)) > 0.7 * (radii[i] + radii[k]) for k, c in enumerate(centres))
            if np.all((candidate > low) & (candidate < high)) and apart:
                break
        centres.append(candidate)
    return Cells(
        np.array(centres, np.float32),
        radii.astype(np.float32),
        rng.uniform(0, 0.12, (count, 3)).astype(np.float32),
        rng.uniform(0, 2 * np.pi, (count, 3)).astype(np.float32),
        rng.normal(0, 0.8, (count, 2)).astype(np.float32),
        rng.uniform(-0.06, 0.08, count).astype(np.float32),
    )


def cell_frame(rng: np.random.Generator, cells: Cells, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: (uint8 image, uint16 instance labels 1..n)."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    offset = grid[None] - cells.centres[:, :, None, None]  # (n, 2, H, W)
    angle = np.arctan2(offset[:, 0], offset[:, 1])
    harmonics = np.arange(2, 5, dtype=np.float32)[None, :, None, None]
    outline = 1 + (
        cells.shape[:, :, None, None] * np.cos(harmonics * angle[:, None] + cells.phases[:, :, None, None])
    ).sum(axis=1)
    rho = np.hypot(offset[:, 0], offset[:, 1]) / (cells.radii[:, None, None] * outline)  # < 1 inside cell i
    nearest = np.argmin(rho, axis=0)
    two = np.partition(rho, 1, axis=0)[:2] if len(rho) > 1 else np.stack([rho[0], np.full_like(rho[0], np.inf)])
    inside = two[0] < 1
    labels = np.where(inside, nearest + 1, 0).astype(np.uint16)

    image = 0.42 + 0.04 * smooth_noise(rng, (size, size), size / 4) + 0.02 * smooth_noise(rng, (size, size), 1)
    body = 0.62 + cells.brightness[nearest] + 0.05 * smooth_noise(rng, (size, size), 2)
    body -= 0.07 * (two[0] < 0.45)  # nucleus
    body -= 0.12 * np.clip(1 - (1 - two[0]) / 0.12, 0, 1)  # dark rim inside the outline
    body -= 0.14 * ((two[1] < 1.05) & (two[1] - two[0] < 0.08))  # seam between touching cells
    image = np.where(inside, body, image + 0.22 * np.clip(1 - (two[0] - 1) / 0.25, 0, 1))  # bright halo
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 0.03, image.shape)
    return to_uint8(image), labels


def cell_sequence(
    rng: np.random.Generator, frames: int, size: int, count: int, cell_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """A sequence: (uint8 images (T, H, W), uint16 labels (T, H, W)); cells drift and wobble but stay in view."""
    cells = place_cells(rng, count, size, cell_size)
    low, high = 0.3 * cell_size, size - 0.3 * cell_size
    images, labels = [], []
    for _ in range(frames):
        image, label = cell_frame(rng, cells, size)
        images.append(image)
        labels.append(label)
        cells.centres += cells.velocity + rng.normal(0, 0.4, cells.centres.shape)
        outside = (cells.centres < low) | (cells.centres > high)
        cells.velocity[outside] *= -1  # bounce off the margins
        cells.centres = np.clip(cells.centres, low, high)
        cells.phases += rng.normal(0, 0.08, cells.phases.shape).astype(np.float32)
    return np.stack(images), np.stack(labels)


def annotated_frames(frames: int, annotated: int) -> list[int]:
    """`annotated` frame numbers spread evenly over the sequence (first and last included)."""
    return sorted({int(round(t)) for t in np.linspace(0, frames - 1, min(annotated, frames))})


def write_ctc_sequence(root: Path, sequence: str, images: np.ndarray, labels: np.ndarray, annotated: list[int]) -> None:
    """Write one sequence in the Cell Tracking Challenge layout (each label is one track over all frames)."""
    digits = max(3, len(str(len(images) - 1)))
    for t, (image, label) in enumerate(zip(images, labels)):
        write_tiff(root / sequence / f"t{t:0{digits}d}.tif", image, imagej=False)
        write_tiff(root / f"{sequence}_GT" / "TRA" / f"man_track{t:0{digits}d}.tif", label, imagej=False)
        if t in annotated:
            write_tiff(root / f"{sequence}_GT" / "SEG" / f"man_seg{t:0{digits}d}.tif", label, imagej=False)
    tracks = [f"{track} 0 {len(images) - 1} 0" for track in sorted(set(np.unique(labels).tolist()) - {0})]
    (root / f"{sequence}_GT" / "TRA" / "man_track.txt").write_text("\n".join(tracks) + "\n")


def synthesize_cells(
    out: str | os.PathLike,
    *,
    seed: int = SyntheticCellsSettings.seed,
    size: int = SyntheticCellsSettings.size,
    frames: int = SyntheticCellsSettings.frames,
    annotated: int = SyntheticCellsSettings.annotated,
    cell_count: int = SyntheticCellsSettings.cell_count,
    cell_size: float = SyntheticCellsSettings.cell_size,
) -> Path:
    """Write sequences `01` and `02` of touching cells in the Cell Tracking Challenge layout into `out`."""
    SyntheticCellsSettings(seed, size, frames, annotated, cell_count, cell_size)  # checks the values
    with atomic_directory(out) as tmp:
        for index, sequence in enumerate(CTC_SEQUENCES):
            rng = np.random.default_rng([seed, index])
            images, labels = cell_sequence(rng, frames, size, cell_count, cell_size)
            write_ctc_sequence(tmp, sequence, images, labels, annotated_frames(frames, annotated))
    return Path(out)


# --- CLI --------------------------------------------------------------------------------------------


SETTINGS = {"em": SyntheticEmSettings, "cells": SyntheticCellsSettings}
GENERATORS = {"em": synthesize_em, "cells": synthesize_cells}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    helps = {
        "em": "EM sections with binary membrane labels (ISBI 2012 layout)",
        "cells": "sequences of touching cells with instance labels (CTC layout)",
    }
    for kind, settings_class in SETTINGS.items():
        sub = kinds.add_parser(kind, help=helps[kind])
        sub.add_argument("out", type=Path, help=f"output folder, e.g. results/raw/demo-{kind}")
        add_settings_arguments(sub, settings_class)


def run(args: argparse.Namespace) -> int:
    settings = from_arguments(SETTINGS[args.kind], args)
    with claim_outputs((args.out, OUTPUT_TREE)):
        out = GENERATORS[args.kind](args.out, **dataclasses.asdict(settings))
    print(f"synthetic {args.kind} data (seed {settings.seed}) in {out}", file=sys.stderr)
    return 0

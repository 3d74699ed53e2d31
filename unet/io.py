"""Files in and out: atomic writes, TIFF stacks and the canonical prepared data form.

Every stage writes through `atomic_path`, so a crash, a kill or bad input never
leaves a half-written file where a finished one is expected. A command claims its
outputs when it starts (`claim_outputs`): it replaces only what it wrote before
(`check_output`), one process writes an output at a time (`output_lock`), and a
failed write names the user's path and its cause (no space left, read-only).

The canonical form of a prepared data set split (`results/data/{dataset}/{split}/`):

- `images.tif`: every frame of the split, (N, H, W), uint8 or uint16 as acquired.
- `labels.tif`: the annotated frames only, (M, H, W); uint8 with values {0, 1}
  (1 = cell) for `kind: binary`, uint16 instance ids (0 = background) for
  `kind: instance`. Absent when the split has no labels (e.g. a test volume).
- `unannotated.tif`: beside `labels.tif`, (M, H, W) uint8, 1 where the frame shows a
  cell that its ground truth leaves without a mask (`unet.prepare.unannotated_cells`;
  all 0 for fully annotated data such as ISBI 2012). Training gives these pixels no weight.
- `frames.json`: `{"dataset", "split", "kind", "frames": [...], "labelled": [...]}`;
  `frames[i]` is the frame id of `images[i]`, `labelled[j]` the frame id of `labels[j]`.
  Images of different sizes (a folder data set, `unet.folder`) are padded to the largest height
  and width by mirroring, at the bottom and the right; `"sizes": [[height, width], ...]` then
  gives each frame's true extent (`images[i][:height, :width]`), in the order of `frames`. The
  padding is no part of the data: its labels are 0, its weights 0 (`unet.weightmap`), and
  scaling, prediction and scores see the true extent only (`per_extent`). A folder split also
  records where its frames came from (`"folder"`: the source folder, each frame's image and mask
  file, the mask values).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile

from unet.errors import UsageError

KINDS = ("binary", "instance")
# What a stack of each kind of labelled data is, for Fiji: EM sections are slices, cell sequences frames.
STACK_AXES = {"binary": "ZYX", "instance": "TYX"}
UNANNOTATED = "unannotated.tif"


class DataError(UsageError):
    """Input data that cannot be used; the message names the file and the problem."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the final suffix (writers such as tifffile and
    matplotlib choose the format from it). Temporaries of `path` that a killed
    earlier write left behind are removed first. A failed write (no space, a
    read-only disk...) is an `OutputError` naming `path`, and leaves nothing; so does
    another process writing `path` at the same time (`output_lock`).

    It replaces whatever file is at `path`: the names it is given are the command's own
    (model.pt, target.tif) or ones that `check_output` has cleared.
    """
    path = Path(path)
    tmp = None
    try:
        with output_lock(path), _write_errors_named(path):
            remove_leftovers(path)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=path.parent
            )
            os.close(fd)
            tmp = Path(tmp)
            yield tmp
            _give_default_mode(tmp, 0o666)
            os.replace(tmp, path)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def remove_leftovers(path: str | os.PathLike) -> None:
    """Delete the temporaries (`.NAME.*` beside `path`) that `atomic_path` or `atomic_directory` left when the
    process writing `path` was killed; a later write of the same output owns them. Lock files (`output_lock`)
    stay: the lock may be this process's own."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if leftover.name.endswith(LOCK_SUFFIX):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` (and all it held) only if the block succeeds.

    For outputs that are whole folders (a downloaded data set, the synthetic data):
    a failure leaves the previous `path`, or nothing, never a half-filled folder.
    Only a folder that this function wrote (its `MARKER` lists what it holds) or an
    empty one is replaced; anything else is refused before the block runs (`check_output`).
    """
    path = Path(path)
    check_output(path, OUTPUT_TREE)
    tmp = None
    try:
        with output_lock(path), _write_errors_named(path):
            remove_leftovers(path)  # a killed earlier attempt's staging folder (downloads can be hundreds of MB)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            yield tmp
            _mark_as_ours(tmp)
            _give_default_mode(tmp, 0o777)
            _replace_folder(tmp, path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, path: Path) -> None:
    """Rename `new` onto `path`, moving an existing `path` aside first (a folder cannot be renamed onto another)."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, old / path.name)
    os.replace(new, path)
    shutil.rmtree(old)


def _give_default_mode(path: Path, mode: int) -> None:
    """Give a temporary file or folder the permissions of a normally created one (mkstemp/mkdtemp make them
    private), so that results are as readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


# --- outputs: replace only what we wrote, one writer at a time, write errors that name the user's path -----

# In every folder that `atomic_directory` writes: the files it holds, so that a later write may replace it.
MARKER = ".unet-output.json"
LOCK_SUFFIX = ".lock"
FOLDER_LOCK = ".unet.lock"
_HELD: set[Path] = set()  # the lock files this process holds (`output_lock`)
# The kinds of output `check_output` knows. A file of a kind is recognised by its first bytes (JSON by parsing).
FILE_KINDS = {
    "tiff": (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"),
    "png": (b"\x89PNG",),
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "json": (),
}
OUTPUT_FOLDER = "folder"  # a folder that files with the command's own names go into (train, predict --images...)
OUTPUT_TREE = "tree"  # a folder written whole by `atomic_directory` (fetch, synthesize, export, a CTC result folder)
# What a failed write's errno means to a user.
_WRITE_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or the file size limit (ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "a file stands where a folder is needed",
    errno.EISDIR: "a folder is in the way",
}


class OutputError(UsageError):
    """An output that cannot be written: it is not ours to replace, another process writes it, or the write
    failed (no space, read-only); the message names the user's path and what to do."""


@contextlib.contextmanager
def claim_outputs(*outputs: tuple[str | os.PathLike | None, str], inputs: Iterable = ()) -> Iterator[None]:
    """Check each (path, kind) output (`check_output`; None paths are skipped), then hold their locks
    (`output_lock`) while the block runs. A command calls it first, so that a bad output fails before any work."""
    outputs = [(Path(path), kind) for path, kind in outputs if path is not None]
    resolved = [path.resolve() for path, _ in outputs]
    twice = next((path for (path, _), same in zip(outputs, resolved) if resolved.count(same) > 1), None)
    if twice is not None:
        raise OutputError(f"{twice}: given for two outputs of this command; give each its own path")
    for path, kind in outputs:
        check_output(path, kind, inputs=inputs)
    with contextlib.ExitStack() as locks:
        for path, kind in outputs:
            locks.enter_context(output_lock(path, inside=kind == OUTPUT_FOLDER))
        yield


def check_output(path: str | os.PathLike, kind: str, *, inputs: Iterable = ()) -> None:
    """Refuse an output that the command must not replace or cannot write (`OutputError`), before any work.

    A command replaces only what it wrote before:
    - a file of a kind in `FILE_KINDS` (a TIFF, PNG, zip or JSON at a path the user names): an existing file is
      replaced only if it holds that kind (an earlier result); a folder or another file (notes.txt) is refused.
    - `OUTPUT_TREE`, a folder written whole: an existing one is replaced only if empty, or if it holds nothing
      but what `atomic_directory` wrote there (its `MARKER` lists that); a file there is refused.
    - `OUTPUT_FOLDER`: the command writes files with its own names into it (model.pt, NAME_probabilities.tif),
      which replace those of an earlier run; a file there is refused.
    Nor may an output be one of `inputs` (None ones are skipped), or (a file or a tree) hold one, or be the
    current folder or hold it. A file on the way to `path` is refused here; a folder
    that cannot be written in is refused by `output_lock`.
    """
    path = Path(path)
    resolved = path.resolve()
    if kind != OUTPUT_FOLDER and resolved in (Path.cwd(), *Path.cwd().parents):
        raise OutputError(f"{path}: is the current folder or holds it; name a new folder for the output")
    for source in (Path(given) for given in inputs if given is not None):
        if source.resolve() == resolved:
            raise OutputError(f"{path}: is also an input of this command; write the output elsewhere")
        if kind != OUTPUT_FOLDER and resolved in source.resolve().parents:
            raise OutputError(f"{path}: holds the input {source}, which it would replace; write the output elsewhere")
    blocker = next((folder for folder in path.parents if folder.exists() and not folder.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{path}: {blocker} is a file, not a folder; choose another path")
    if not path.exists():
        return
    refusal = _why_not_replaceable(path, kind)
    if refusal:
        raise OutputError(f"{path}: {refusal}")


def _why_not_replaceable(path: Path, kind: str) -> str | None:
    """Why the existing `path` is not an output of `kind` that a command may replace, or None if it is."""
    if kind == OUTPUT_FOLDER:
        return None if path.is_dir() else "is a file, not a folder; choose a folder for the results"
    if kind == OUTPUT_TREE:
        if not path.is_dir():
            return "is a file, and the output is a folder; choose another path"
        foreign = _foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            return (
                f"exists and holds what unet did not write there ({shown}); choose another path, "
                "or delete or rename the folder yourself"
            )
        return None
    if path.is_dir():
        return f"is a folder; name a {kind.upper()} file"
    if not _holds_kind(path, kind):
        return f"exists and is not a {kind.upper()} file; choose another path, or delete or rename it yourself"
    return None


def _holds_kind(path: Path, kind: str) -> bool:
    """Whether the file at `path` holds a `kind` of `FILE_KINDS`."""
    try:
        if kind == "json":
            json.loads(path.read_bytes())
            return True
        with open(path, "rb") as handle:
            return handle.read(8).startswith(FILE_KINDS[kind])
    except (OSError, ValueError):
        return False


def _entries(folder: Path) -> set[str]:
    """Every file, link and folder under `folder`, as paths relative to it."""
    found = set()
    for root, folders, files in os.walk(folder):
        found.update(os.path.relpath(os.path.join(root, name), folder) for name in folders + files)
    return found


def _mark_as_ours(folder: Path) -> None:
    entries = sorted(_entries(folder))
    note = "written by unet; a later unet command replaces this folder while it holds nothing but these files"
    (folder / MARKER).write_text(json.dumps({"note": note, "files": entries}, indent=1) + "\n")


def _foreign_entries(folder: Path) -> list[str]:
    """What `folder` holds beyond the files its `MARKER` lists (everything, without a marker)."""
    try:
        written = set(json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    return sorted(_entries(folder) - written - {MARKER})


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, *, inside: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on the output `path` while the block runs; if another process holds it, refuse at
    once with an `OutputError` naming the process.

    The lock is an OS file lock (flock) on `path/.unet.lock` (`inside`: a folder written into, created here) or
    on `.NAME.lock` beside `path` (an output replaced whole): the OS releases it when the process ends, even by
    kill -9. The lock file holds the holder's PID and is removed on release, as is the folder made for it if it
    stayed empty. Creating it is also the first write where the output goes: a read-only folder or a full disk is
    refused here, before any work.
    """
    path = Path(path)
    lock = path / FOLDER_LOCK if inside else path.parent / f".{path.name}{LOCK_SUFFIX}"
    if lock.resolve() in _HELD:  # this process holds it already (a command's lock, then its write's)
        yield
        return
    created = not lock.parent.exists()
    with _write_errors_named(path, lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        descriptor = _take_lock(lock, path)
    held = lock.resolve()
    _HELD.add(held)
    try:
        with _write_errors_named(path, lock):
            os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        _HELD.discard(held)
        lock.unlink(missing_ok=True)
        os.close(descriptor)
        if created:  # a command that failed before writing leaves no empty folder
            with contextlib.suppress(OSError):
                lock.parent.rmdir()


def _take_lock(lock: Path, path: Path) -> int:
    """The descriptor of `lock`, flocked; retried when its previous holder removed the file meanwhile."""
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise OutputError(
                f"{path}: another unet process (PID {holder}) is writing it; wait for it to end, or choose another path"
            ) from None
        if _is_file(descriptor, lock):
            os.ftruncate(descriptor, 0)
            return descriptor
        os.close(descriptor)


def _is_file(descriptor: int, path: Path) -> bool:
    """Whether `path` still names the file open as `descriptor`."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _write_errors_named(path: Path, *ours: Path) -> Iterator[None]:
    """Turn a failed write (no space, read-only, no permission: also inside torch's RuntimeError) of `path`, its
    temporaries (`.NAME.*` beside it), its folders or `ours` into an `OutputError` that names `path`."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        failure = _os_error_behind(error)
        if failure is None or not _concerns(failure, path, ours):
            raise
        cause = _WRITE_CAUSES.get(failure.errno, failure.strerror)
        raise OutputError(f"{path}: cannot be written: {cause}") from error


def _os_error_behind(error: BaseException | None) -> OSError | None:
    """The OSError that `error` is or was raised while handling (torch.save wraps a failed write in a
    RuntimeError), if it has an errno."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _concerns(failure: OSError, path: Path, ours: tuple[Path, ...]) -> bool:
    """Whether `failure` is about writing `path`: its file is `path`, a folder on its way, a temporary of it
    (`.NAME.*` beside it) or one of `ours`; or it names no file and is a write's error (a full disk)."""
    if failure.filename is None:
        return failure.errno in _WRITE_CAUSES
    name = Path(failure.filename)
    if name == path or name in path.parents or name in ours:
        return True
    try:
        return name.relative_to(path.parent).parts[0].startswith(f".{path.name}.")
    except (ValueError, IndexError):
        return False


def write_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    axes: str | None = None,
    imagej: bool = True,
    compression: str | None = None,
) -> None:
    """Write a 2D image or a (N, H, W) stack atomically.

    ImageJ-compatible by default, as a hyperstack whose `axes` tell Fiji what the stack is: `ZYX` for the
    slices of a volume (EM sections), `TYX` for the frames of a time-lapse (cells; see `STACK_AXES`). Without
    them Fiji would read a stack as channels.
    """
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    imagej = imagej and array.dtype != np.int64
    if imagej and array.ndim == 3 and axes not in ("ZYX", "TYX"):
        raise UsageError(f"{path}: a stack needs its axes, ZYX (slices) or TYX (frames), found {axes!r}")
    metadata = {"axes": axes if array.ndim == 3 else "YX"} if imagej else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, imagej=imagej, metadata=metadata, compression=compression)


def read_tiff(path: str | os.PathLike, *, shown_as: str | None = None) -> np.ndarray:
    """Read a TIFF image or stack, every page decoded; a missing, unreadable or truncated file raises `DataError`
    naming it (as `shown_as`, if given: e.g. where the user's copy of a temporary file came from).

    tifffile only logs a warning for a broken page chain (a truncated multi-page file) and returns the pages
    before the break: such a warning is an error here.
    """
    return read_tiff_with_axes(path, shown_as=shown_as)[0]


def read_tiff_with_axes(path: str | os.PathLike, *, shown_as: str | None = None) -> tuple[np.ndarray, str]:
    """`read_tiff`, and the axes of the array as tifffile names them (YX, ZYX, TYX, YXS, CYX...)."""
    path = Path(path)
    name = shown_as or str(path)
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    try:
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tiff:
            array, axes = tiff.asarray(), tiff.series[0].axes
    except Exception as error:  # tifffile raises many types for corrupt files
        raise DataError(f"{name}: not a readable TIFF ({error})") from error
    if warnings:
        raise DataError(f"{name}: a damaged or truncated TIFF ({warnings[0]})")
    if array.dtype.kind == "c":  # numpy would drop the imaginary part silently, with a ComplexWarning
        raise DataError(f"{name}: complex pixels ({array.dtype}); save the image's magnitude or real part instead")
    return array, axes


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect what tifffile logs at warning level while the block runs (and keep it off the console)."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record.getMessage())

    logger, handler = logging.getLogger("tifffile"), Collect(logging.WARNING)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF as a (N, H, W) stack: a single 2D image becomes a stack of one."""
    array = read_tiff(path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 2D image or a (N, H, W) stack, found shape {array.shape}")
    return array


def numbered_files(folder: str | os.PathLike, prefix: str) -> dict[int, Path]:
    """Frame number -> file, in frame order, for the `<prefix>TTT.tif` files of a Cell Tracking Challenge folder
    (`tTTT.tif`, `man_segTTT.tif`, `maskTTT.tif`; any number of digits). A missing folder has none; a frame
    numbered twice (`mask001.tif` and `mask0001.tif`) is a `DataError`."""
    folder = Path(folder)
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.tif")
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match:
            frame = int(match.group(1))
            if frame in found:
                raise DataError(f"{folder}: frame {frame} twice ({found[frame].name} and {path.name})")
            found[frame] = path
    return dict(sorted(found.items()))


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object (`{...}`) in `path`; each of our JSON files holds one. Anything else is a `DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object {{...}}, found {json.dumps(value)[:40]}")
    return value


# The intensity percentiles of an image that the network sees as 0 and 1 (`normalize_intensity`).
NORMALIZATION_PERCENTILES = (1.0, 99.0)


def normalize_intensity(
    images: np.ndarray,
    percentiles: tuple[float, float] = NORMALIZATION_PERCENTILES,
    sizes: list[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Scale each image of a (N, H, W) stack (or one image) so that its 1st and 99th percentiles map to 0 and 1.

    Percentiles, not the minimum and maximum: a DIC-HeLa frame spans 29-255 through a few
    bright pixels while 98 % of it lies within 90-149, so min-max scaling would squeeze the
    cells into a quarter of the range, below the +-0.1 gray-value augmentation (with it, the
    quick profile's HeLa models did not learn in 1,500 iterations). Values beyond the
    percentiles are kept, not clipped. Per image, so that a frame gets the same input whether
    it is predicted alone or within its sequence. An image whose percentiles coincide (mostly
    one value) falls back to its minimum and maximum; a constant image maps to zeros. With
    `sizes` (a padded stack), each image's scale comes from its true extent alone, so a frame
    gets the same input as its own file would.
    """
    images = np.asarray(images, dtype=np.float32)
    if sizes is None or all(tuple(size) == images.shape[-2:] for size in sizes):
        return _scaled(images, images, percentiles)
    return np.stack(
        [_scaled(image, image[:height, :width], percentiles) for image, (height, width) in zip(images, sizes)]
    )


def _scaled(images: np.ndarray, reference: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """`images` scaled by the percentiles of `reference` (each image's, over its last two axes)."""
    axes = (-2, -1)
    low, high = np.percentile(reference, percentiles, axis=axes, keepdims=True).astype(np.float32)
    span = high - low
    mostly_one_value = span <= 0
    low = np.where(mostly_one_value, reference.min(axis=axes, keepdims=True), low)
    span = np.where(mostly_one_value, reference.max(axis=axes, keepdims=True) - low, span)
    return (images - low) / np.where(span > 0, span, 1.0)


# --- frames of different sizes in one stack (see the module docstring) ------------------------------------


def mirror_pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`image` (H, W) padded at the bottom and right to `shape` by mirroring (NumPy's `reflect`, as overlap-tile
    mirrors; repeated where the padding exceeds the image)."""
    padding = [(0, target - size) for size, target in zip(image.shape, shape)]
    return np.pad(image, padding, mode="reflect") if any(after for _, after in padding) else image


def crops(stack: np.ndarray, sizes: list[tuple[int, int]] | None) -> list[np.ndarray]:
    """Each image of a padded stack at its true extent (without `sizes`, as it is)."""
    if sizes is None:
        return list(stack)
    return [image[:height, :width] for image, (height, width) in zip(stack, sizes)]


def per_extent(function, stack: np.ndarray, sizes: list[tuple[int, int]] | None) -> np.ndarray:
    """`function` ((k, h, w) -> (k, h, w)) applied to the images of a padded stack at their true extents, the
    images of one size together; the padding of the result is 0. To the whole stack where nothing is padded."""
    if sizes is None or all(tuple(size) == stack.shape[1:] for size in sizes):
        return function(stack)
    groups: dict[tuple[int, int], list[int]] = {}
    for row, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(row)
    result = None
    for (height, width), rows in groups.items():
        values = function(stack[rows, :height, :width])
        if result is None:
            result = np.zeros(stack.shape, dtype=values.dtype)
        result[rows, :height, :width] = values
    return result


@dataclass
class Split:
    """One prepared split of a data set (see the module docstring for the files)."""

    dataset: str
    split: str
    kind: str
    images: np.ndarray
    frames: list[int]
    labels: np.ndarray | None = None
    labelled: list[int] = field(default_factory=list)
    # bool (M, H, W), beside `labels`: cells the ground truth shows but leaves without a mask (`unet.prepare`).
    unannotated: np.ndarray | None = None
    # (height, width) of each frame's true extent, in the order of `frames`; None: every frame fills the stack.
    sizes: list[tuple[int, int]] | None = None
    folder: dict | None = None  # a folder split's origin (`unet.folder`), as frames.json records it

    @property
    def axes(self) -> str:
        """The ImageJ axes of its stacks (`STACK_AXES`)."""
        return STACK_AXES[self.kind]

    def labelled_images(self) -> np.ndarray:
        """The images that have labels, in the order of `labels`."""
        return self.images[self._labelled_rows()]

    def true_sizes(self) -> list[tuple[int, int]]:
        """Each frame's (height, width) without padding, in the order of `frames`."""
        return list(self.sizes) if self.sizes is not None else [tuple(self.images.shape[1:])] * len(self.frames)

    def labelled_sizes(self, rows: list[int] | None = None) -> list[tuple[int, int]]:
        """The true sizes of the labelled frames (or of the labelled `rows`), in the order of `labels`."""
        sizes = self.true_sizes()
        labelled = [sizes[row] for row in self._labelled_rows()]
        return labelled if rows is None else [labelled[row] for row in rows]

    def _labelled_rows(self) -> list[int]:
        index = {frame: i for i, frame in enumerate(self.frames)}
        return [index[frame] for frame in self.labelled]


def write_split(directory: str | os.PathLike, split: Split) -> None:
    """Write a split in the canonical form, into a folder that replaces `directory` whole when complete."""
    _validate_split(split, source=str(directory))
    with atomic_directory(directory) as staging:
        _write_split_files(staging, split)


def _write_split_files(directory: Path, split: Split) -> None:
    write_tiff(directory / "images.tif", split.images, axes=split.axes)
    if split.labels is not None:
        write_tiff(directory / "labels.tif", split.labels, axes=split.axes)
        unannotated = split.unannotated if split.unannotated is not None else np.zeros(split.labels.shape, bool)
        write_tiff(directory / UNANNOTATED, unannotated, axes=split.axes, compression="zlib")  # mostly zeros
    meta = {
        "dataset": split.dataset,
        "split": split.split,
        "kind": split.kind,
        "frames": [int(f) for f in split.frames],
        "labelled": [int(f) for f in split.labelled],
    }
    if split.sizes is not None:
        meta["sizes"] = [[int(height), int(width)] for height, width in split.sizes]
    if split.folder is not None:
        meta["folder"] = split.folder
    write_json(directory / "frames.json", meta)


def read_split(directory: str | os.PathLike, *, labels: bool = True) -> Split:
    """Read and validate a prepared split; any inconsistency raises `DataError` naming the file. Without
    `labels`, only its images and frames are read (what prediction needs)."""
    directory = Path(directory)
    meta_path = directory / "frames.json"
    meta = read_json(meta_path)
    missing = {"dataset", "split", "kind", "frames", "labelled"} - set(meta)
    if missing:
        raise DataError(f"{meta_path}: missing keys {sorted(missing)}")
    label_stack = read_stack(directory / "labels.tif") if meta["labelled"] and labels else None
    unannotated = directory / UNANNOTATED
    split = Split(
        dataset=meta["dataset"],
        split=meta["split"],
        kind=meta["kind"],
        images=read_stack(directory / "images.tif"),
        frames=list(meta["frames"]),
        labels=label_stack,
        labelled=list(meta["labelled"]),
        unannotated=read_stack(unannotated) > 0 if label_stack is not None and unannotated.is_file() else None,
        sizes=[tuple(size) for size in meta["sizes"]] if "sizes" in meta else None,
        folder=meta.get("folder"),
    )
    _validate_split(split, source=str(directory), labels_read=labels)
    return split


def _validate_split(split: Split, *, source: str, labels_read: bool = True) -> None:
    def fail(message: str) -> None:
        raise DataError(f"{source}: {message}")

    if split.kind not in KINDS:
        fail(f"kind must be one of {KINDS}, found {split.kind!r}")
    if split.images.ndim != 3:
        fail(f"images.tif must be a (N, H, W) stack, found shape {split.images.shape}")
    if split.images.dtype not in (np.uint8, np.uint16, np.float32):
        fail(f"images.tif must be uint8, uint16 or float32, found {split.images.dtype}")
    if len(split.frames) != len(split.images):
        fail(f"frames.json lists {len(split.frames)} frames but images.tif has {len(split.images)}")
    if len(set(split.frames)) != len(split.frames):
        fail("frames.json lists a frame id twice")
    check_finite(split.images, f"{source}/images.tif", frames=split.frames)
    if split.sizes is not None:
        _validate_sizes(split.sizes, split.images.shape, fail)
    if split.labels is None:
        if split.labelled and labels_read:
            fail("frames.json lists labelled frames but there is no labels.tif")
        return
    if split.labels.ndim != 3 or split.labels.shape[1:] != split.images.shape[1:]:
        fail(f"labels.tif shape {split.labels.shape} does not match images.tif {split.images.shape}")
    if len(set(split.labelled)) != len(split.labelled):
        fail("frames.json lists a labelled frame id twice")
    if len(split.labelled) != len(split.labels):
        fail(f"frames.json lists {len(split.labelled)} labelled frames but labels.tif has {len(split.labels)}")
    unknown = sorted(set(split.labelled) - set(split.frames))
    if unknown:
        fail(f"labelled frames {unknown} are not among the frames of images.tif")
    if split.kind == "binary":
        if split.labels.dtype != np.uint8:
            fail(f"binary labels.tif must be uint8, found {split.labels.dtype}")
        if split.labels.max(initial=0) > 1:  # uint8: a maximum of 1 means 0/1 only, without sorting
            fail(f"binary labels.tif must hold only 0 and 1, found values {np.unique(split.labels)[:10].tolist()}")
    elif split.labels.dtype not in (np.uint8, np.uint16):
        fail(f"instance labels.tif must be uint16 (or uint8), found {split.labels.dtype}")
    if split.unannotated is not None:
        if split.unannotated.shape != split.labels.shape:
            fail(f"{UNANNOTATED} shape {split.unannotated.shape} does not match labels.tif {split.labels.shape}")
        if (split.unannotated & (split.labels > 0)).any():
            fail(f"{UNANNOTATED} marks pixels of annotated objects")


def _validate_sizes(sizes, shape: tuple[int, ...], fail) -> None:
    if len(sizes) != shape[0]:
        fail(f"frames.json gives {len(sizes)} sizes for the {shape[0]} frames of images.tif")
    for size in sizes:
        if not (len(size) == 2 and all(isinstance(n, int) and 1 <= n <= limit for n, limit in zip(size, shape[1:]))):
            fail(f"frames.json: size {list(size)} is not a (height, width) within images.tif's {shape[1:]}")


def check_finite(images: np.ndarray, source: str, *, frames: list[int] | None = None) -> None:
    """A `DataError` naming `source`, the count and the first pixel (frame, row, column) if a float image holds
    NaN or infinity: caught where the data enters, not as a NaN loss or a NaN prediction later."""
    if not np.issubdtype(images.dtype, np.floating):
        return
    bad = ~np.isfinite(images)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        if images.ndim == 3:
            where = f"frame {frames[first[0]] if frames else first[0]}, pixel ({first[1]}, {first[2]})"
        else:
            where = f"pixel {first}"
        raise DataError(
            f"{source}: {int(bad.sum())} pixels are NaN or infinite (the first at {where}: {images[first]})"
        )


def parse_frames(spec: str) -> list[int]:
    """Frame ids from a SPEC such as `0-9,20-29` (inclusive ranges), in the order given."""
    frames: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        try:
            start, stop = int(first), int(last or first)
        except ValueError:
            raise UsageError(f"frame selection {spec!r}: {part!r} is not a number or a range like 0-9") from None
        if stop < start:
            raise UsageError(f"frame selection {spec!r}: range {part!r} runs backwards")
        frames.extend(range(start, stop + 1))
    if not frames:
        raise UsageError(f"frame selection {spec!r} selects no frames")
    return frames


def format_frames(frames: list[int]) -> str:
    """The shortest SPEC for `frames` (the inverse of `parse_frames`)."""
    parts, start = [], None
    for i, frame in enumerate(frames):
        if start is None:
            start = frame
        if i + 1 == len(frames) or frames[i + 1] != frame + 1:
            parts.append(f"{start}-{frame}" if frame != start else f"{frame}")
            start = None
    return ",".join(parts)


# --- a user's own images -------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass
class ImageFile:
    """A user's image or stack, ready to predict: (N, H, W) pixels and the axes to write its results with."""

    path: Path
    images: np.ndarray
    axes: str  # "YX" for one image; "ZYX" (slices) or "TYX" (frames) for a stack, as the file says


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The image files among `paths`: files as given, folders by their TIFF and PNG files in name order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not inside:
                raise DataError(f"{path}: no TIFF or PNG images in this folder")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return found


def read_image_file(path: Path, channel: int | None = None) -> ImageFile:
    """A 2D image or a stack of 2D images from a TIFF or PNG file, one channel of it if it has several.

    An RGB or multichannel image is refused unless `channel` picks one: the networks take one gray channel.
    """
    if path.suffix.lower() == ".png":
        array = _read_png(path)
        axes = "YXS" if array.ndim == 3 else "YX"
        channel_axis = 2 if array.ndim == 3 else None
    else:
        array, axes = read_tiff_with_axes(path)
        channel_axis = next((i for i, axis in enumerate(axes) if axis in "CS"), None)
    if channel_axis is not None:
        array, axes = _one_channel(path, array, axes, channel_axis, channel)
    elif channel is not None:
        raise DataError(f"{path}: --channel {channel} given, but the image has a single channel")
    check_finite(array, str(path))
    stack_axes = "TYX" if axes[0] == "T" else "ZYX"
    if array.ndim == 2:
        return ImageFile(path, array[None], "YX")
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 2D image or a stack of them, found axes {axes} of shape {array.shape}")
    return ImageFile(path, array, stack_axes)


def _read_png(path: Path) -> np.ndarray:
    from skimage import io as skimage_io

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return skimage_io.imread(path)
    except Exception as error:  # imageio raises many types for a file it cannot decode
        raise DataError(f"{path}: not a readable PNG ({str(error).splitlines()[0]})") from error


def _one_channel(path: Path, array: np.ndarray, axes: str, channel_axis: int, channel: int | None):
    count = array.shape[channel_axis]
    if channel is None:
        kind = "an RGB" if axes[channel_axis] == "S" and count in (3, 4) else f"a {count}-channel"
        raise DataError(
            f"{path}: {kind} image (axes {axes}, shape {array.shape}); the network takes one gray "
            f"channel: pick one with --channel 0 to {count - 1}, or convert it to grayscale"
        )
    if not 0 <= channel < count:
        raise DataError(f"{path}: --channel {channel} is out of range: the image has channels 0 to {count - 1}")
    return np.take(array, channel, axis=channel_axis), axes.replace(axes[channel_axis], "", 1)


# --- training data: a prepared split with its weight maps (`unet weightmap`) -----------------------------


class TrainingSet(NamedTuple):
    images: np.ndarray  # float32 (M, H, W), normalised with `normalize_intensity`
    targets: np.ndarray  # uint8 (M, H, W)
    weights: np.ndarray  # float32 (M, H, W); 0 on padding
    frames: list[int]  # frame ids
    sizes: list[tuple[int, int]]  # each frame's true (height, width)


# Beside a split's weight maps: the split they were computed from (as `--data` named it), the digest of its labels
# (`labels_digest`) and the weight map settings. Training refuses maps whose digest is not that of its `--data`.
WEIGHT_RECORD = "weightmap.json"


def labels_digest(split: Split) -> str:
    """SHA-256 of all that a split's weight maps are computed from: its kind, its labels with their frame ids and
    sizes, and its unannotated cells."""
    unannotated = split.unannotated if split.unannotated is not None else np.zeros(split.labels.shape, bool)
    layout = {
        "kind": split.kind,
        "labelled": [int(frame) for frame in split.labelled],
        "sizes": [[int(n) for n in size] for size in split.labelled_sizes()],
        "labels": [list(split.labels.shape), str(split.labels.dtype)],
    }
    digest = hashlib.sha256(json.dumps(layout).encode())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    digest.update(np.packbits(unannotated).tobytes())
    return digest.hexdigest()


def write_weight_maps(
    weight_dir: str | Path, split: Split, targets: np.ndarray, weights: np.ndarray, *, data_dir, settings: dict
) -> None:
    """`target.tif`, `weights.tif` and their `WEIGHT_RECORD` in `weight_dir`. The record of any earlier maps goes
    first and the new one comes last, so that maps interrupted half-written have none (and are refused)."""
    weight_dir = Path(weight_dir)
    (weight_dir / WEIGHT_RECORD).unlink(missing_ok=True)
    write_tiff(weight_dir / "target.tif", targets, axes=split.axes)
    write_tiff(weight_dir / "weights.tif", weights, axes=split.axes)
    record = {"data": str(data_dir), "labels_sha256": labels_digest(split), "weightmap": settings}
    write_json(weight_dir / WEIGHT_RECORD, record)


def check_weight_record(weight_dir: str | Path, data_dir: str | Path, split: Split) -> None:
    """A `DataError` naming both folders unless the maps in `weight_dir` were computed from the labels of `split`
    (read from `data_dir`). Maps without a record (older ones, or not written by `unet weightmap`) are refused too:
    nothing says what they belong to, and recomputing them takes seconds."""
    recompute = f"compute them for it: unet weightmap {data_dir} {weight_dir}"
    path = Path(weight_dir) / WEIGHT_RECORD
    if not path.is_file():
        raise DataError(f"{weight_dir}: no {WEIGHT_RECORD} says which labels these weight maps are of; {recompute}")
    record = read_json(path)
    if record.get("labels_sha256") != labels_digest(split):
        source = record.get("data")
        origin = f"{source} as it was before" if str(source) == str(data_dir) else source
        raise DataError(f"{weight_dir}: weight maps of {origin}, not of the labels of {data_dir}; {recompute}")


def load_training_set(data_dir: str | Path, weight_dir: str | Path, frames: list[int] | None = None) -> TrainingSet:
    """The labelled frames of a prepared split (all, or `frames` in that order) with their targets and weights."""
    split = read_split(data_dir)
    if split.labels is None:
        raise DataError(f"{data_dir}: the split has no labelled frames")
    check_weight_record(weight_dir, data_dir, split)
    targets, weights = (read_stack(Path(weight_dir) / name) for name in ("target.tif", "weights.tif"))
    for name, stack in (("target.tif", targets), ("weights.tif", weights)):
        if stack.shape != split.labels.shape:
            raise DataError(
                f"{Path(weight_dir) / name}: shape {stack.shape} does not match the labels "
                f"{split.labels.shape} of {data_dir}; recompute it with `unet weightmap`"
            )
    chosen, rows = select_labelled(split, data_dir, frames)
    sizes = split.labelled_sizes(rows)
    images = normalize_intensity(split.labelled_images()[rows], sizes=sizes)
    return TrainingSet(images, targets[rows], weights[rows].astype(np.float32), chosen, sizes)


def select_labelled(
    split: Split, data_dir: str | os.PathLike, frames: Iterable[int] | None
) -> tuple[list[int], list[int]]:
    """The chosen frames (all labelled ones, or `frames`) and their rows in the labelled stacks."""
    chosen = split.labelled if frames is None else list(frames)
    unknown = sorted(set(chosen) - set(split.labelled))
    if unknown:
        raise DataError(f"{data_dir}: frames {unknown} are not labelled (labelled: {split.labelled})")
    return chosen, [split.labelled.index(frame) for frame in chosen]

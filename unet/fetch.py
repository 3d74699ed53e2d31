"""Data acquisition: `unet fetch` puts a data set into `results/raw/{dataset}/` in its official layout:

- isbi: `train-volume.tif`, `train-labels.tif` (255 = cell, 0 = membrane), `test-volume.tif`;
- ctc: `01/tTTT.tif`, `01_GT/SEG/man_segTTT.tif`, `01_GT/TRA/man_trackTTT.tif` +
  `man_track.txt`, the same for `02` (the challenge's test archives: `01/`, `02/` only).

A source is an http(s):// or file:// URL (one file, or a folder URL ending in `/`
from which the official file names are fetched), a local file (TIFF, .zip,
.tar(.gz) archive, or the ISBI HDF5 repackaging), or a local folder already in
the official layout. Downloads are retried, checked against a pinned checksum and
renamed into place only then; archives are unpacked only if no member could land
outside the target. The whole layout is assembled in a temporary folder that
replaces the output only when everything is verified, so a failure leaves no
partial data set.

Checksums: URL and file sources are verified against `CATALOGUE`'s pinned
digests (or the per-name overrides of `datasets.<name>.checksums`). A local folder
(and a `mirror`) is not: the copies in ../shared/data differ from the official
files byte for byte (other TIFF headers) although their pixels do not. A folder
source is instead checked for a complete, readable layout, against the mirror's
`SHA256SUMS` when it has one, and against any checksum given for a file of it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from unet.errors import UsageError
from unet.io import (
    OUTPUT_TREE,
    DataError,
    atomic_directory,
    atomic_path,
    claim_outputs,
    numbered_files,
    read_tiff,
    write_tiff,
)
from unet.pipeline import CHALLENGE_PROTOCOLS, CTC_SEQUENCES

PARTS = ("train", "test")
ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")
MIRROR_LISTING = "SHA256SUMS"


# --- the catalogue: official sources and their pinned checksums -------------------------------------


@dataclass(frozen=True)
class Remote:
    """One file to download: its URL, the name it is saved as, and the digests accepted for it."""

    url: str
    name: str
    checksums: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A data set of the catalogue: its protocol and its default sources per part."""

    protocol: str
    parts: Mapping[str, tuple[Remote, ...]]

    def remotes(self, dataset: str, part: str) -> tuple[Remote, ...]:
        if part not in self.parts:
            raise DataError(f"{dataset}: has no {part!r} part (parts: {sorted(self.parts)})")
        return self.parts[part]


ISBI_BASE = "http://brainiac2.mit.edu/isbi_challenge/sites/default/files/"
CTC_BASE = "http://data.celltrackingchallenge.net/"
# The ISBI 2012 training data repackaged as one HDF5 file (torch-em's source); no test volume.
ISBI_HDF5 = Remote(
    "https://oc.embl.de/index.php/s/h0TkwqxU0PJDdMd/download",
    "isbi.h5",
    ("sha256:0e10fe909a1243084d91773470856993b7d40126a12e85f0f1345a7a9e512f29",),
)


def _ctc(name: str, train: tuple[str, ...], test: tuple[str, ...]) -> Entry:
    def remote(folder: str, digests: tuple[str, ...]) -> tuple[Remote, ...]:
        return (Remote(f"{CTC_BASE}{folder}/{name}.zip", f"{name}.zip", tuple(f"sha256:{d}" for d in digests)),)

    return Entry("ctc", {"train": remote("training-datasets", train), "test": remote("test-datasets", test)})


CATALOGUE: dict[str, Entry] = {
    # md5 as pinned by torchvision's sstem loader.
    "isbi2012": Entry(
        "isbi",
        {
            "train": tuple(
                Remote(ISBI_BASE + name, name, (f"md5:{digest}",))
                for name, digest in zip(
                    ISBI_FILES,
                    (
                        "465461edbe0254630c4ec5577f1e7764",
                        "657fe6b728c6dd0152e295c6d800001d",
                        "9767660d7abe4e0ecbdd0061a16058ad",
                    ),
                )
            )
        },
    ),
    # sha256 as pinned by torch-em; HeLa's training archive was re-released (the second digest is another
    # library's pin), so both are accepted.
    "DIC-C2DH-HeLa": _ctc(
        "DIC-C2DH-HeLa",
        train=(
            "832fed2d05bb7488cf9c51a2994b75f8f3f53b3c3098856211f2d39023c34e1a",
            "fac24746fa0ad5ddf6f27044c785edef36bfa39f7917da4ad79730a7748787af",
        ),
        test=("5e5d5f2aa90aef99d750cf03f5c12d799d50b892f98c86950e07a2c5955ac01f",),
    ),
    "PhC-C2DH-U373": _ctc(
        "PhC-C2DH-U373",
        train=("b18185c18fce54e8eeb93e4bbb9b201d757add9409bbf2283b8114185a11bc9e",),
        test=("7aa3162e4363a416b259149adc13c9b09cb8aecfe8165eb1428dd534b66bec8a",),
    ),
}
# Sources known by URL alone (alternatives to a catalogue default).
KNOWN_REMOTES = {ISBI_HDF5.url: ISBI_HDF5}


def protocol_of(dataset: str, protocol: str | None = None, protocols: tuple[str, ...] = CHALLENGE_PROTOCOLS) -> str:
    """The protocol of `dataset`: its catalogue entry's, or `protocol` (one of `protocols`) for a name outside the
    catalogue."""
    known = CATALOGUE[dataset].protocol if dataset in CATALOGUE else None
    if protocol is not None and protocol not in protocols:
        raise DataError(f"{dataset}: protocol must be one of {protocols}, found {protocol!r}")
    if known and protocol and protocol != known:
        raise DataError(f"{dataset}: the catalogue's protocol is {known!r}, not {protocol!r}")
    if not (known or protocol):
        raise DataError(
            f"{dataset}: not in the catalogue ({sorted(CATALOGUE)}); give its protocol ({' or '.join(protocols)})"
        )
    return known or protocol


def mirror_path(mirror: str | os.PathLike, dataset: str, protocol: str, part: str = "train") -> Path:
    """Where a mirror laid out like ../shared/data keeps a data set.

    isbi: `<mirror>/<dataset>/` (`isbi2012/`); ctc: `<mirror>/ctc/<dataset>/`, and the
    challenge's test sequences in `<mirror>/ctc-test/<dataset>/` (where its archive unpacks).
    """
    if protocol == "isbi":
        return Path(mirror) / dataset
    return Path(mirror) / ("ctc-test" if part == "test" else "ctc") / dataset


def parse_checksum(text: str, *, what: str) -> str:
    """Check an `algo:hex` checksum (md5 or sha256) and return it in lower case."""
    algorithm, _, digest = text.strip().lower().partition(":")
    lengths = {"md5": 32, "sha256": 64}
    if algorithm not in lengths or not re.fullmatch(f"[0-9a-f]{{{lengths[algorithm]}}}", digest):
        raise DataError(f"{what}: checksum must be md5:<32 hex> or sha256:<64 hex>, found {text!r}")
    return f"{algorithm}:{digest}"


# --- where the files come from ---------------------------------------------------------------------


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "file")


def _url_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def remotes_for(dataset: str, part: str, source: str | None) -> tuple[Remote, ...]:
    """The files to fetch for a URL source (None = the catalogue's), with the checksums pinned for them.

    A URL ending in `/` is a folder holding the official file names; another URL is
    one file, pinned if the catalogue knows its URL or its name.
    """
    defaults = CATALOGUE[dataset].remotes(dataset, part) if dataset in CATALOGUE else ()
    if source is None:
        if not defaults:
            raise DataError(f"{dataset}: not in the catalogue: give a source (URL, file or folder)")
        return defaults
    if source.endswith("/"):
        if not defaults:
            raise DataError(f"{dataset}: {source}: a folder URL needs the catalogue's file names; name the file")
        return tuple(replace(remote, url=urllib.parse.urljoin(source, remote.name)) for remote in defaults)
    if source in KNOWN_REMOTES:
        return (KNOWN_REMOTES[source],)
    name = _url_name(source)
    pinned = next((remote.checksums for remote in defaults if remote.name == name), ())
    return (Remote(source, name, pinned),)


def with_overrides(remote: Remote, overrides: Mapping[str, str]) -> Remote:
    """`remote` with the checksum given for its name (or URL) in `overrides`, if any."""
    digest = overrides.get(remote.url) or overrides.get(remote.name)
    return replace(remote, checksums=(digest,)) if digest else remote


# --- downloading and verifying ---------------------------------------------------------------------


class _Retryable(Exception):
    """A transfer failure that another attempt may not meet (connection, timeout, truncation, 5xx)."""


class _Final(Exception):
    """A transfer failure that retrying cannot cure (404, a missing local file)."""


def _hashers(checksums: Iterable[str]) -> dict[str, hashlib._Hash]:
    algorithms = {checksum.partition(":")[0] for checksum in checksums} or {"sha256"}
    return {algorithm: hashlib.new(algorithm) for algorithm in sorted(algorithms)}


def verify_digests(dataset: str, source: str, checksums: tuple[str, ...], hashers: Mapping) -> None:
    """Raise a `DataError` naming the data set, the source, the expected and the actual checksum on a mismatch.

    Without any pinned checksum the file is refused too, and the message gives its
    digest so that the user can pin it after checking it.
    """
    actual = {algorithm: hasher.hexdigest() for algorithm, hasher in hashers.items()}
    if any(actual.get(c.partition(":")[0]) == c.partition(":")[2] for c in checksums):
        return
    found = ", ".join(f"{algorithm}:{digest}" for algorithm, digest in actual.items())
    if not checksums:
        raise DataError(
            f"{dataset}: {source}: no checksum is pinned for {_url_name(source) or source}; its "
            f"checksum is {found}: check the file and add it to datasets.{dataset}.checksums"
        )
    raise DataError(f"{dataset}: {source}: checksum mismatch: expected {' or '.join(checksums)}, actual {found}")


def file_hashers(path: Path, checksums: tuple[str, ...]) -> dict:
    hashers = _hashers(checksums)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(chunk)
    return hashers


def download(
    dataset: str,
    remote: Remote,
    target: Path,
    *,
    attempts: int = 4,
    timeout: float = 60.0,
    backoff: float = 2.0,
    progress: bool = True,
) -> None:
    """Download `remote` to `target`: retried, checksummed, and renamed into place only when verified."""
    if attempts < 1:
        raise UsageError(f"attempts must be at least 1, found {attempts}")
    errors = []
    with atomic_path(target) as tmp:
        for attempt in range(1, attempts + 1):
            try:
                hashers = _transfer(remote, tmp, timeout=timeout, progress=progress)
                break
            except _Retryable as error:
                errors.append(str(error))
                if attempt < attempts:
                    time.sleep(backoff * 2 ** (attempt - 1))
            except _Final as error:
                raise DataError(f"{dataset}: {remote.url}: {error}; no file was written") from None
        else:
            raise DataError(
                f"{dataset}: {remote.url}: unreachable after {attempts} attempts "
                f"(last error: {errors[-1]}); no file was written"
            )
        verify_digests(dataset, remote.url, remote.checksums, hashers)


def _transfer(remote: Remote, tmp: Path, *, timeout: float, progress: bool) -> dict:
    """One attempt: stream the URL into `tmp` (overwritten), hashing on the way."""
    from tqdm import tqdm

    hashers = _hashers(remote.checksums)
    received = 0
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            # A log file (not a terminal) gets an update every 10 s rather than a stream of them.
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=remote.name,
                file=sys.stderr,
                disable=not progress,
                mininterval=0.5 if sys.stderr.isatty() else 10,
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    for hasher in hashers.values():
                        hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code in (408, 429) or error.code >= 500:
            raise _Retryable(f"HTTP {error.code} {error.reason}") from error
        raise _Final(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        message = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
        if remote.url.startswith("file:"):
            raise _Final(message) from error
        raise _Retryable(message) from error
    if expected is not None and received != expected:
        raise _Retryable(f"truncated: received {received} of {expected} bytes")
    return hashers


# --- unpacking --------------------------------------------------------------------------------------


def file_kind(path: Path, *, label: str | None = None) -> str:
    """What a fetched file is, from its first bytes: zip, tar, hdf5 or tiff (`label` names it in errors)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if tarfile.is_tarfile(path):
        return "tar"
    raise DataError(f"{label or path}: neither a TIFF, a .zip or .tar archive, nor an HDF5 file")


def _check_member(label: str, name: str, target: Path) -> None:
    """Refuse a member whose path is absolute or climbs out of `target`."""
    absolute = name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
    climbs = ".." in Path(name.replace("\\", "/")).parts
    if absolute or climbs or not (target / name).resolve().is_relative_to(target.resolve()):
        raise DataError(f"{label}: refusing member {name!r}: it would land outside the target folder")


def extract(archive: Path, target: Path, *, label: str | None = None) -> None:
    """Unpack a .zip or .tar(.gz) into `target`, after checking every member: no absolute paths, no
    `..`, no symbolic or hard links, no devices. A refused member stops the whole extraction.
    `label` names the archive in errors (default: its path)."""
    label = label or str(archive)
    target.mkdir(parents=True, exist_ok=True)
    if file_kind(archive, label=label) == "zip":
        with zipfile.ZipFile(archive) as handle:
            for info in handle.infolist():
                _check_member(label, info.filename, target)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{label}: refusing member {info.filename!r}: it is a symbolic link")
            handle.extractall(target)
        return
    with tarfile.open(archive) as handle:
        members = handle.getmembers()
        for member in members:
            _check_member(label, member.name, target)
            if not (member.isfile() or member.isdir()):
                raise DataError(
                    f"{label}: refusing member {member.name!r}: only plain files and folders are "
                    "accepted, not links or devices"
                )
        # Python's own "data" filter (where it exists) re-checks the same things.
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        handle.extractall(target, members=members, **extra)


def isbi_from_hdf5(path: Path, target: Path, *, label: str | None = None) -> None:
    """Write `train-volume.tif` and `train-labels.tif` from the ISBI HDF5 repackaging.

    The file holds `raw` and `labels/membranes` (plus a 3D-postprocessed
    `labels/gt_segmentation`, which is not the challenge's annotation and is not
    used). How `labels/membranes` encodes the two classes is not documented: the
    reader decides it from the data, because membranes are the minority class (22 %
    of the ISBI training pixels). It requires exactly two values and accepts the
    higher one as membrane when it covers 5-45 % of the pixels, as cell when it
    covers 55-95 %; anything else is refused.
    """
    label = label or str(path)
    try:
        import h5py
    except ImportError as error:
        raise DataError(f"{label}: reading the ISBI HDF5 file needs h5py (pip install h5py)") from error
    with h5py.File(path, "r") as handle:
        for key in ("raw", "labels/membranes"):
            if key not in handle:
                raise DataError(f"{label}: no dataset {key!r} (found {sorted(handle.keys())})")
        raw, membranes = handle["raw"][()], handle["labels/membranes"][()]
    if raw.ndim != 3 or raw.shape != membranes.shape:
        raise DataError(f"{label}: raw {raw.shape} and labels/membranes {membranes.shape} must be equal (N, H, W)")
    cell = ~membrane_mask(membranes, source=f"{label}:labels/membranes")
    write_tiff(target / "train-volume.tif", raw, axes="ZYX")
    write_tiff(target / "train-labels.tif", np.where(cell, 255, 0).astype(np.uint8), axes="ZYX")


def membrane_mask(labels: np.ndarray, *, source: str) -> np.ndarray:
    """The membrane pixels of a two-valued label volume whose encoding is unknown (see `isbi_from_hdf5`)."""
    values = np.unique(labels)
    if len(values) != 2:
        raise DataError(f"{source}: expected two label values (membrane, cell), found {values[:10].tolist()}")
    high = labels == values[1]
    fraction = float(high.mean())
    if 0.05 <= fraction <= 0.45:
        return high
    if 0.55 <= fraction <= 0.95:
        return ~high
    raise DataError(
        f"{source}: value {values[1]} covers {fraction:.1%} of the pixels; membranes should cover "
        "5-45 %, so neither reading of the encoding is plausible"
    )


# --- the official layouts ---------------------------------------------------------------------------


def required_files(root: Path, protocol: str, part: str = "train") -> list[Path]:
    """The files a complete layout must have (CTC frames are listed by what is there).

    ISBI's `test-volume.tif` is checked when present but not required: the HDF5
    repackaging has none (the `test` split then cannot be prepared, and says so).
    """
    if protocol == "isbi":
        optional = [root / "test-volume.tif"] if (root / "test-volume.tif").exists() else []
        return [root / "train-volume.tif", root / "train-labels.tif", *optional]
    files = []
    for sequence in CTC_SEQUENCES:
        frames = numbered_files(root / sequence, "t")
        files += list(frames.values()) or [root / sequence / "t000.tif"]
        if part == "train":
            gt = root / f"{sequence}_GT"
            files += list(numbered_files(gt / "SEG", "man_seg").values()) or [gt / "SEG" / "man_seg000.tif"]
            files += [gt / "TRA" / "man_track.txt"]
            files += [gt / "TRA" / f"man_track{path.name[1:]}" for path in frames.values()]
    return files


def check_layout(dataset: str, root: Path, protocol: str, part: str = "train", *, source: str | None = None) -> None:
    """Every required file of the official layout is there and every TIFF decodes whole; otherwise a `DataError`.

    `root` may be a temporary folder: errors name the files as paths inside `source` (default: `root`).
    """
    source = source or str(root)
    missing = [path for path in required_files(root, protocol, part) if not path.is_file()]
    if missing:
        shown = ", ".join(str(path.relative_to(root)) for path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{dataset}: {source} is not in the official {protocol} layout: missing {shown}{more}")
    for path in required_files(root, protocol, part):
        if path.suffix == ".tif":
            read_tiff(path, shown_as=f"{dataset}: {_inside(source, path.relative_to(root))}")


def _inside(source: str, relative: Path) -> str:
    """How to name a file of the layout for the user: a path in their folder, or a member of their archive."""
    return str(Path(source) / relative) if Path(source).is_dir() else f"{source} (member {relative.as_posix()})"


def layout_root(folder: Path, protocol: str) -> Path:
    """The folder inside an unpacked archive that holds the layout (archives often add a top folder)."""
    marker = "train-volume.tif" if protocol == "isbi" else CTC_SEQUENCES[0]
    candidates = sorted((path.parent for path in folder.rglob(marker)), key=lambda path: len(path.parts))
    return candidates[0] if candidates else folder


def check_listing(dataset: str, listing: Path, relative: str, copy: Path) -> None:
    """Verify the files of a copied mirror folder against the mirror's `SHA256SUMS` lines under `relative/`."""
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*").removeprefix("./")
        if not name.startswith(relative + "/"):
            continue
        path = copy / name[len(relative) + 1 :]
        if not path.is_file():
            raise DataError(f"{dataset}: {listing}:{number} lists {name}, which the copy lacks")
        expected = (f"sha256:{digest.lower()}",)
        verify_digests(dataset, str(listing.parent / name), expected, file_hashers(path, expected))


def check_given_checksums(dataset: str, root: Path, overrides: Mapping[str, str]) -> None:
    """Verify the checksums given by file name (relative path) for a folder source."""
    for name, checksum in overrides.items():
        path = root / name
        if not path.is_file():
            raise DataError(f"{dataset}: a checksum is given for {name}, but {root} has no such file")
        verify_digests(dataset, str(path), (checksum,), file_hashers(path, (checksum,)))


# --- fetch ------------------------------------------------------------------------------------------


def fetch(
    dataset: str,
    out: str | os.PathLike,
    *,
    source: str | None = None,
    mirror: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    protocol: str | None = None,
    part: str = "train",
    attempts: int = 4,
    timeout: float = 60.0,
    backoff: float = 2.0,
    progress: bool = True,
) -> Path:
    """Put `dataset` into `out` in its official layout from `source`, `mirror` or the catalogue.

    `checksums` (file name or URL -> `algo:hex`) override the pinned ones. Returns `out`.
    """
    protocol = protocol_of(dataset, protocol)
    if part not in PARTS:
        raise DataError(f"{dataset}: part must be one of {PARTS}, found {part!r}")
    if protocol == "isbi" and part == "test":
        raise DataError(f"{dataset}: an isbi data set's test volume comes with its training files (part train)")
    if source == "synthetic":
        raise DataError(f"{dataset}: source 'synthetic' is made by `unet synthesize`, not fetched")
    if mirror is not None:
        if source is not None:
            raise DataError(f"{dataset}: give a source or a mirror, not both")
        source = str(mirror_path(mirror, dataset, protocol, part))
        if not Path(source).is_dir():
            raise DataError(
                f"{dataset}: the mirror {mirror} has no {Path(source).relative_to(mirror)}/ "
                f"(expected the official {protocol} layout at {source})"
            )
    overrides = {
        key: parse_checksum(value, what=f"{dataset}: checksum of {key}") for key, value in (checksums or {}).items()
    }
    out = Path(out)
    with atomic_directory(out) as staging:
        if source is not None and not _is_url(source):
            root = _from_local(dataset, Path(source), staging, protocol, part, overrides)
        else:
            root = _from_urls(
                dataset,
                source,
                staging,
                protocol,
                part,
                overrides,
                attempts=attempts,
                timeout=timeout,
                backoff=backoff,
                progress=progress,
            )
        if mirror is not None and (Path(mirror) / MIRROR_LISTING).is_file():
            check_listing(dataset, Path(mirror) / MIRROR_LISTING, str(Path(source).relative_to(mirror)), root)
        check_layout(dataset, root, protocol, part, source=_source_name(dataset, source, part))
        if root != staging:
            _replace_contents(staging, root)
    return out


def _source_name(dataset: str, source: str | None, part: str) -> str:
    """The source as the user knows it: their folder, file or URL, or the catalogue's."""
    if source is not None:
        return source
    remotes = CATALOGUE[dataset].remotes(dataset, part)
    return remotes[0].url if len(remotes) == 1 else remotes[0].url.rsplit("/", 1)[0] + "/"


def _from_urls(dataset, source, staging, protocol, part, overrides, **transfer) -> Path:
    remotes = remotes_for(dataset, part, source)
    _check_override_names(dataset, overrides, {key for remote in remotes for key in (remote.name, remote.url)})
    downloads = staging / ".downloads"
    for remote in remotes:
        remote = with_overrides(remote, overrides)
        download(dataset, remote, downloads / remote.name, **transfer)
        _unpack(downloads / remote.name, staging, move=True, label=f"{dataset}: {remote.url}")
    shutil.rmtree(downloads)
    return layout_root(staging, protocol)


def _from_local(dataset, source: Path, staging, protocol, part, overrides) -> Path:
    if source.is_dir():
        check_given_checksums(dataset, source, overrides)  # on the user's files, so errors name them
        copy_files(source, staging)
        return staging
    if not source.is_file():
        raise DataError(f"{dataset}: source {source} is neither a URL nor an existing file or folder")
    defaults = CATALOGUE[dataset].parts.get(part, ()) if dataset in CATALOGUE else ()
    pinned = next(
        (remote for remote in defaults + tuple(KNOWN_REMOTES.values()) if remote.name == source.name),
        Remote(str(source), source.name),
    )
    _check_override_names(dataset, overrides, {source.name, str(source)})
    remote = with_overrides(replace(pinned, url=str(source)), overrides)
    verify_digests(dataset, str(source), remote.checksums, file_hashers(source, remote.checksums))
    _unpack(source, staging, move=False, label=f"{dataset}: {source}")
    return layout_root(staging, protocol)


def _check_override_names(dataset: str, overrides: Mapping[str, str], names: set[str]) -> None:
    """A checksum given for a file that is not fetched is a typo, not something to ignore."""
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise DataError(
            f"{dataset}: checksums are given for {unknown}, which this source does not provide "
            f"(it provides {sorted(names)})"
        )


def copy_files(source: Path, target: Path) -> None:
    """Copy the files under `source` into `target`, but not their permissions: a read-only mirror must not
    give a read-only output that the workflow cannot delete later."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copyfile(path, destination)


def _unpack(path: Path, staging: Path, *, move: bool, label: str) -> None:
    """Unpack an archive or convert an HDF5 file into `staging`; a TIFF is moved (or copied) there as it is."""
    kind = file_kind(path, label=label)
    if kind in ("zip", "tar"):
        extract(path, staging, label=label)
    elif kind == "hdf5":
        isbi_from_hdf5(path, staging, label=label)
    elif move:
        os.replace(path, staging / path.name)
    else:
        shutil.copyfile(path, staging / path.name)


def _replace_contents(folder: Path, root: Path) -> None:
    """Make `folder` hold exactly what its subfolder `root` holds."""
    keep = folder / ".layout"
    os.replace(root, keep)
    for path in list(folder.iterdir()):
        if path != keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in list(keep.iterdir()):
        os.replace(path, folder / path.name)
    keep.rmdir()


# --- CLI --------------------------------------------------------------------------------------------


def _checksum_flag(text: str) -> tuple[str, str]:
    name, sep, checksum = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=algo:hex, found {text!r}")
    return name, checksum


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help=f"data set name ({', '.join(CATALOGUE)} or another with --protocol)")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. results/raw/DATASET")
    parser.add_argument(
        "--source",
        help="URL (http, https, file; a folder URL ends in /), local file or archive, "
        "or local folder in the official layout (default: the catalogue's)",
    )
    parser.add_argument(
        "--mirror", type=Path, help="local folder laid out like ../shared/data (isbi2012/, ctc/NAME/, ctc-test/NAME/)"
    )
    parser.add_argument(
        "--checksum",
        action="append",
        type=_checksum_flag,
        default=[],
        metavar="NAME=ALGO:HEX",
        help="accept this checksum (md5: or sha256:) for the file or archive NAME (or URL); repeatable",
    )
    parser.add_argument(
        "--protocol", choices=CHALLENGE_PROTOCOLS, help="isbi or ctc, for a data set outside the catalogue"
    )
    parser.add_argument(
        "--part",
        choices=PARTS,
        default="train",
        help="train: the training data; test: the CTC challenge's test sequences",
    )
    parser.add_argument("--attempts", type=int, default=4, help="download attempts before giving up")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before an attempt fails")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr"
    )


def run(args: argparse.Namespace) -> int:
    with claim_outputs((args.out, OUTPUT_TREE), inputs=[args.mirror, args.source]):
        out = fetch(
            args.dataset,
            args.out,
            source=args.source,
            mirror=args.mirror,
            checksums=dict(args.checksum),
            protocol=args.protocol,
            part=args.part,
            attempts=args.attempts,
            timeout=args.timeout,
            progress=args.progress,
        )
    print(f"{args.dataset}: official layout in {out}", file=sys.stderr)
    return 0

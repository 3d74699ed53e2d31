"""`unet fetch`: downloads from a real HTTP server on 127.0.0.1, archives, mirrors, the HDF5 source."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet.fetch import CATALOGUE, Remote, download, extract, fetch, verify_digests
from unet.io import MARKER, DataError, read_split
from unet.prepare import prepare
from unet.synthetic import synthesize_cells, synthesize_em

from helpers import unet

FAST = {"attempts": 2, "backoff": 0.0, "timeout": 5.0, "progress": False}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    """Serves `routes` (path -> bytes); `truncate` sends half the bytes under the full length, `fail` answers
    503 that many times first. `requests` counts the requests per path."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.slow: set[str] = set()  # sent in 64 KiB pieces, 50 ms apart
        self.fail: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                if server.fail.get(self.path, 0) > 0:
                    server.fail[self.path] -= 1
                    self.send_error(503)
                    return
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.slow:
                    for start in range(0, len(body), 1 << 16):
                        self.wfile.write(body[start : start + (1 << 16)])
                        time.sleep(0.05)
                    return
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = Server()
    yield server
    server.close()


def leftovers(folder: Path) -> list[str]:
    """What `folder` holds, but for the marker of a folder that unet wrote (`unet.io.MARKER`)."""
    return sorted(path.name for path in folder.iterdir() if path.name != MARKER) if folder.exists() else []


def test_a_good_download_is_verified_and_renamed_into_place(server, tmp_path):
    body = b"pixels" * 100_000
    server.routes["/a.tif"] = body
    target = tmp_path / "a.tif"
    download("demo", Remote(server.url + "/a.tif", "a.tif", (sha256(body),)), target, **FAST)
    assert target.read_bytes() == body
    assert leftovers(tmp_path) == ["a.tif"]
    assert stat.S_IMODE(target.stat().st_mode) & 0o044, "a result must not be private to its writer"


def test_a_truncated_download_is_retried_then_fails_leaving_no_file(server, tmp_path):
    server.routes["/a.tif"] = b"x" * 10_000
    server.truncate.add("/a.tif")
    with pytest.raises(
        DataError,
        match=r"demo: http://127\.0\.0\.1:\d+/a\.tif: unreachable after 2 attempts.*"
        r"truncated: received 5000 of 10000 bytes",
    ):
        download("demo", Remote(server.url + "/a.tif", "a.tif", (sha256(b"x" * 10_000),)), tmp_path / "a.tif", **FAST)
    assert server.requests["/a.tif"] == 2
    assert leftovers(tmp_path) == []


def test_a_server_error_is_retried_and_a_missing_file_is_not(server, tmp_path):
    body = b"ok" * 1000
    server.routes["/a.tif"] = body
    server.fail["/a.tif"] = 1
    download("demo", Remote(server.url + "/a.tif", "a.tif", (sha256(body),)), tmp_path / "a.tif", **FAST)
    assert server.requests["/a.tif"] == 2 and (tmp_path / "a.tif").read_bytes() == body
    with pytest.raises(DataError, match="HTTP 404"):
        download("demo", Remote(server.url + "/gone.tif", "gone.tif", (sha256(b""),)), tmp_path / "gone.tif", **FAST)
    assert server.requests["/gone.tif"] == 1
    assert leftovers(tmp_path) == ["a.tif"]


def test_a_checksum_mismatch_names_everything_and_leaves_no_file(server, tmp_path):
    body = b"not the official file"
    server.routes["/train-volume.tif"] = body
    expected = "md5:" + "0" * 32
    remote = Remote(server.url + "/train-volume.tif", "train-volume.tif", (expected,))
    with pytest.raises(DataError) as error:
        download("isbi2012", remote, tmp_path / "train-volume.tif", **FAST)
    message = str(error.value)
    for part in ("isbi2012", remote.url, expected, "md5:" + hashlib.md5(body).hexdigest()):
        assert part in message
    assert leftovers(tmp_path) == []


def test_an_unreachable_source_stops_with_an_error_and_no_output(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match=rf"isbi2012: http://127\.0\.0\.1:{port}/train-volume\.tif: unreachable"):
        fetch("isbi2012", tmp_path / "raw", source=f"http://127.0.0.1:{port}/", **FAST)
    assert leftovers(tmp_path) == []


def test_isbi_from_a_folder_url_with_checksums_given_per_file(server, shared_data, tmp_path):
    files = {
        name: (shared_data / "isbi2012" / name).read_bytes()
        for name in ("train-volume.tif", "train-labels.tif", "test-volume.tif")
    }
    for name, body in files.items():
        server.routes[f"/isbi/{name}"] = body
    # The shared copies are not byte-identical to the official files: the pinned md5 must refuse them ...
    with pytest.raises(DataError, match="checksum mismatch: expected md5:465461edbe0254630c4ec5577f1e7764"):
        fetch("isbi2012", tmp_path / "raw", source=server.url + "/isbi/", **FAST)
    assert leftovers(tmp_path) == []
    # ... and checksums given per file name override the pins.
    out = fetch(
        "isbi2012",
        tmp_path / "raw",
        source=server.url + "/isbi/",
        checksums={name: sha256(body) for name, body in files.items()},
        **FAST,
    )
    assert {name: (out / name).read_bytes() for name in files} == files
    assert leftovers(out) == sorted(files)


def test_a_url_without_any_pinned_checksum_is_refused_with_its_digest(server, tmp_path):
    body = b"some archive"
    server.routes["/unknown.zip"] = body
    with pytest.raises(DataError, match=f"no checksum is pinned for unknown.zip; its checksum is {sha256(body)}"):
        fetch("mine", tmp_path / "raw", source=server.url + "/unknown.zip", protocol="ctc", **FAST)
    assert leftovers(tmp_path) == []


def test_a_checksum_for_a_file_the_source_does_not_provide_is_an_error(server, tmp_path):
    with pytest.raises(DataError, match=r"checksums are given for \['train-volume.tiff'\], which this source"):
        fetch(
            "isbi2012",
            tmp_path / "raw",
            source=server.url + "/isbi/",
            checksums={"train-volume.tiff": "md5:" + "0" * 32},
            **FAST,
        )
    assert server.requests == {} and leftovers(tmp_path) == []


def test_a_re_released_archive_matches_either_pinned_checksum():
    assert len(CATALOGUE["DIC-C2DH-HeLa"].parts["train"][0].checksums) == 2
    body = b"second release"
    hasher = hashlib.sha256(body)
    verify_digests("demo", "archive.zip", ("sha256:" + "0" * 64, sha256(body)), {"sha256": hasher})
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_digests("demo", "archive.zip", ("sha256:" + "0" * 64,), {"sha256": hashlib.sha256(body)})


def _ctc_archive(root: Path, fmt: str) -> bytes:
    """The synthetic CTC layout packed like the official archive: under a top folder named after the data set."""
    buffer = io.BytesIO()
    files = sorted(path for path in root.rglob("*") if path.is_file())
    if fmt == "zip":
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in files:
                archive.write(path, f"MyCells/{path.relative_to(root)}")
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in files:
                archive.add(path, f"MyCells/{path.relative_to(root)}")
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_a_ctc_archive_is_downloaded_unpacked_and_prepared(server, tmp_path, fmt):
    synthesize_cells(tmp_path / "made", seed=3, size=64, frames=3, annotated=2, cell_count=3, cell_size=24)
    body = _ctc_archive(tmp_path / "made", fmt)
    server.routes[f"/MyCells.{fmt}"] = body
    out = fetch(
        "MyCells",
        tmp_path / "raw",
        source=f"{server.url}/MyCells.{fmt}",
        protocol="ctc",
        checksums={f"MyCells.{fmt}": sha256(body)},
        **FAST,
    )
    assert sorted(leftovers(out)) == ["01", "01_GT", "02", "02_GT"]
    prepare("MyCells", out, tmp_path / "data", protocol="ctc")
    split = read_split(tmp_path / "data" / "01")
    assert split.frames == [0, 1, 2] and split.labelled == [0, 2]
    np.testing.assert_array_equal(split.labels[1], tifffile.imread(tmp_path / "made" / "01_GT/SEG/man_seg002.tif"))


def _zip_with(name: str, *, symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("MyCells/01/t000.tif", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd" if symlink else "escaped")
    return buffer.getvalue()


def _tar_with(member: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(member, io.BytesIO(b"escaped") if member.isfile() else None)
    return buffer.getvalue()


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, target
    member.size = len(b"escaped") if kind == tarfile.REGTYPE else 0
    return member


@pytest.mark.parametrize(
    ("archive", "refused"),
    [
        (_zip_with("../evil.txt"), "../evil.txt"),
        (_zip_with("/tmp/evil.txt"), "/tmp/evil.txt"),
        (_zip_with("MyCells/../../evil.txt"), "MyCells/../../evil.txt"),
        (_zip_with("MyCells/link", symlink=True), "symbolic link"),
        (_tar_with(_tar_member("../evil.txt")), "../evil.txt"),
        (_tar_with(_tar_member("/evil.txt")), "/evil.txt"),
        (_tar_with(_tar_member("link", tarfile.SYMTYPE, "/etc/passwd")), "not links"),
        (_tar_with(_tar_member("hard", tarfile.LNKTYPE, "../outside")), "not links"),
    ],
    ids=[
        "zip-dotdot",
        "zip-absolute",
        "zip-nested-dotdot",
        "zip-symlink",
        "tar-dotdot",
        "tar-absolute",
        "tar-symlink",
        "tar-hardlink",
    ],
)
def test_an_archive_with_a_member_outside_the_target_is_refused_whole(tmp_path, archive, refused):
    path = tmp_path / "archive"
    path.write_bytes(archive)
    with pytest.raises(DataError, match="refusing member") as error:
        extract(path, tmp_path / "target")
    assert refused in str(error.value)
    assert leftovers(tmp_path / "target") == [] and leftovers(tmp_path) == ["archive", "target"]


def test_a_zip_slip_download_leaves_no_output(server, tmp_path):
    body = _zip_with("../../evil.txt")
    server.routes["/MyCells.zip"] = body
    with pytest.raises(DataError, match="refusing member '../../evil.txt'"):
        fetch(
            "MyCells",
            tmp_path / "work" / "raw",
            source=server.url + "/MyCells.zip",
            protocol="ctc",
            checksums={"MyCells.zip": sha256(body)},
            **FAST,
        )
    assert leftovers(tmp_path / "work") == [] and leftovers(tmp_path) == ["work"]


def test_a_mirror_is_copied_writable_and_checked_against_its_sha256sums(shared_data, tmp_path):
    out = fetch("isbi2012", tmp_path / "raw", mirror=shared_data)
    for name in ("train-volume.tif", "train-labels.tif", "test-volume.tif"):
        assert (out / name).read_bytes() == (shared_data / "isbi2012" / name).read_bytes()
        assert os.access(out / name, os.W_OK)

    mirror = tmp_path / "mirror"
    synthesize_em(mirror / "demo-em", seed=0, size=64, train_slices=2, test_slices=1)
    listing = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(mirror)}"
        for path in sorted((mirror / "demo-em").iterdir())
    ]
    (mirror / "SHA256SUMS").write_text("\n".join(listing) + "\n")
    fetch("demo-em", tmp_path / "copy", mirror=mirror, protocol="isbi")
    (mirror / "demo-em" / "test-volume.tif").write_bytes(b"corrupt")
    with pytest.raises(DataError, match=r"demo-em: .*mirror/demo-em/test-volume.tif: checksum mismatch"):
        fetch("demo-em", tmp_path / "copy2", mirror=mirror, protocol="isbi")
    assert not (tmp_path / "copy2").exists()


def test_a_mirror_without_the_data_set_or_with_an_incomplete_layout_is_an_error(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"PhC-C2DH-U373: the mirror .* has no ctc/PhC-C2DH-U373/"):
        fetch("PhC-C2DH-U373", tmp_path / "raw", mirror=tmp_path)
    (tmp_path / "ctc" / "Partial" / "01").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "ctc" / "Partial" / "01" / "t000.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"Partial: .* not in the official ctc layout: missing 01_GT/SEG/man_seg000"):
        fetch("Partial", tmp_path / "raw", mirror=tmp_path, protocol="ctc")
    assert not (tmp_path / "raw").exists()


def test_the_ctc_test_sequences_come_from_the_mirror_s_ctc_test_folder(tmp_path):
    synthesize_cells(
        tmp_path / "mirror" / "ctc-test" / "MyCells", seed=2, size=48, frames=2, annotated=1, cell_count=2, cell_size=20
    )
    for sequence in ("01", "02"):  # the challenge's test archives have no ground truth
        shutil.rmtree(tmp_path / "mirror" / "ctc-test" / "MyCells" / f"{sequence}_GT")
    out = fetch("MyCells", tmp_path / "raw", mirror=tmp_path / "mirror", protocol="ctc", part="test")
    assert leftovers(out) == ["01", "02"]
    prepare("MyCells", out, tmp_path / "data", protocol="ctc", part="test")
    assert read_split(tmp_path / "data" / "02").frames == [0, 1]
    with pytest.raises(DataError, match="not in the official ctc layout: missing 01_GT/SEG/man_seg000.tif"):
        fetch("MyCells", tmp_path / "raw2", source=str(out), protocol="ctc")


def _isbi_hdf5(path: Path, shared_data: Path, *, membrane_value: int | None) -> bytes:
    h5py = pytest.importorskip("h5py")  # in the test extra: present in CI
    raw = tifffile.imread(shared_data / "isbi2012" / "train-volume.tif")[:4]
    labels = tifffile.imread(shared_data / "isbi2012" / "train-labels.tif")[:4]
    with h5py.File(path, "w") as handle:
        handle["raw"] = raw
        membranes = (
            np.full(labels.shape, 0.5, np.float32)
            if membrane_value is None
            else (np.where(labels == 0, membrane_value, 1 - membrane_value).astype(np.uint8))
        )
        handle["labels/membranes"] = membranes
        handle["labels/gt_segmentation"] = (labels > 0).astype(np.uint32)
    return path.read_bytes()


@pytest.mark.parametrize("membrane_value", [1, 0])
def test_the_isbi_hdf5_repackaging_is_read_whichever_class_is_1(shared_data, tmp_path, membrane_value):
    body = _isbi_hdf5(tmp_path / "isbi.h5", shared_data, membrane_value=membrane_value)
    out = fetch("isbi2012", tmp_path / "raw", source=str(tmp_path / "isbi.h5"), checksums={"isbi.h5": sha256(body)})
    assert leftovers(out) == ["train-labels.tif", "train-volume.tif"]
    prepare("isbi2012", out, tmp_path / "data", splits=["train"])
    split = read_split(tmp_path / "data" / "train")
    expected = tifffile.imread(shared_data / "isbi2012" / "train-labels.tif")[:4] == 255
    np.testing.assert_array_equal(split.labels, expected.astype(np.uint8))
    with pytest.raises(DataError, match="test-volume.tif: no such file"):
        prepare("isbi2012", out, tmp_path / "data", splits=["test"])


def test_an_hdf5_label_volume_of_unknown_encoding_is_refused(shared_data, tmp_path):
    body = _isbi_hdf5(tmp_path / "isbi.h5", shared_data, membrane_value=None)
    with pytest.raises(DataError, match=r"isbi.h5:labels/membranes: expected two label values"):
        fetch("isbi2012", tmp_path / "raw", source=str(tmp_path / "isbi.h5"), checksums={"isbi.h5": sha256(body)})
    assert not (tmp_path / "raw").exists()


def test_the_fetch_command_reports_errors_and_exit_code(tmp_path):
    result = unet("fetch", "PhC-C2DH-U373", "--out", tmp_path / "r", "--mirror", tmp_path, "--no-progress")
    assert result.returncode == 2
    assert "unet fetch: error: PhC-C2DH-U373: the mirror" in result.stderr
    result = unet("fetch", "x", "--out", tmp_path / "r", "--checksum", "bad")
    assert result.returncode == 2 and "expected NAME=algo:hex" in result.stderr


def test_a_fetch_killed_during_its_download_leaves_no_staging_folder_once_fetched_again(server, tmp_path):
    """kill -9 leaves the hidden staging folder (a CTC archive is hundreds of MB); the next fetch removes it."""
    synthesize_cells(tmp_path / "made", seed=3, size=64, frames=3, annotated=2, cell_count=3, cell_size=24)
    (tmp_path / "made" / "padding.bin").write_bytes(os.urandom(2 << 20))  # a download of seconds
    body = _ctc_archive(tmp_path / "made", "zip")
    server.routes["/MyCells.zip"] = body
    server.slow.add("/MyCells.zip")
    out = tmp_path / "raw"
    command = [
        sys.executable,
        "-m",
        "unet.cli",
        "fetch",
        "MyCells",
        "--out",
        str(out),
        "--protocol",
        "ctc",
        "--source",
        f"{server.url}/MyCells.zip",
        "--checksum",
        f"MyCells.zip={sha256(body)}",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".raw.*/.downloads/.MyCells.zip.*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The staging folder, and the killed fetch's lock file (unlocked by the OS; the next fetch removes it too).
    left = [path.name for path in tmp_path.iterdir() if path.name not in ("made", ".raw.lock")]
    assert len(left) == 1 and left[0].startswith(".raw."), left

    server.slow.clear()
    fetch(
        "MyCells",
        out,
        source=f"{server.url}/MyCells.zip",
        protocol="ctc",
        checksums={"MyCells.zip": sha256(body)},
        **FAST,
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["made", "raw"]


def test_layout_and_tiff_errors_name_the_users_source_not_a_temporary_folder(shared_data, tmp_path):
    source = tmp_path / "my-isbi"
    shutil.copytree(shared_data / "isbi2012", source)
    (source / "train-labels.tif").unlink()
    with pytest.raises(
        DataError,
        match=rf"^isbi2012: {source} is not in the official isbi layout: missing "
        r"train-labels.tif$",
    ):
        fetch("isbi2012", tmp_path / "raw", source=str(source))
    shutil.copy(shared_data / "isbi2012" / "train-labels.tif", source)
    with pytest.raises(DataError, match=rf"^isbi2012: {source / 'train-volume.tif'}: checksum mismatch"):
        fetch("isbi2012", tmp_path / "raw", source=str(source), checksums={"train-volume.tif": "md5:" + "0" * 32})
    with pytest.raises(DataError, match=rf"^isbi2012: a checksum is given for gone.tif, but {source} has no"):
        fetch("isbi2012", tmp_path / "raw", source=str(source), checksums={"gone.tif": "md5:" + "0" * 32})
    (source / "test-volume.tif").write_bytes(b"II*\0 not a TIFF")
    with pytest.raises(DataError, match=rf"^isbi2012: {source / 'test-volume.tif'}: (not a readable|a damaged)"):
        fetch("isbi2012", tmp_path / "raw", source=str(source))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["my-isbi"]


def test_a_truncated_multipage_tiff_in_a_folder_source_is_refused_naming_it(shared_data, tmp_path):
    """tifffile reads the pages before a break in the page chain without an error: the layout check reads every
    page and refuses the file, instead of `prepare` later blaming the labels for a short volume."""
    source = tmp_path / "my-isbi"
    shutil.copytree(shared_data / "isbi2012", source)
    volume = source / "train-volume.tif"
    volume.write_bytes(volume.read_bytes()[: volume.stat().st_size * 99 // 100])
    with pytest.raises(DataError, match=rf"^isbi2012: {volume}: a damaged or truncated TIFF"):
        fetch("isbi2012", tmp_path / "raw", source=str(source))
    assert not (tmp_path / "raw").exists()

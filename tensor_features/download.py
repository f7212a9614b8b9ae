"""Fetch the lab's image data: the cat class of CIFAR-10, verified, into a local cache.

    python -m tensor_features.download [--dest DIR] [--force] [--timeout SECONDS]

The archive (cifar-10-python.tar.gz, 163 MB) comes from its authors' site through
torchvision's own downloader (progress bar with size and speed). It is written under a
temporary name, its MD5 checksum is verified, and only then is it renamed into place, so a
download cut short never passes for a good one. The 6,000 cat images (label 3) are then
saved as one uint8 tensor, cifar10_cats.pt (18 MB), which load_cat_images reads; a cats
file that cannot be read is extracted again from the verified archive. A server that
sends nothing for --timeout seconds (20) ends the download with one line; so does Ctrl-C
(exit code 130), and neither leaves a partial file or a folder this run made.

Where: --dest, else $TENSOR_FEATURES_DATA, else ./data under the working directory. Nothing
is written anywhere else. The lab runs without this download: load_cat_images falls back
to a photo that ships with the package.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import os
import pickle
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tensor_features.cli import (OneLineArgumentParser, float_in_range, missing_folders, remove_empty, stdout_error,
                                 whole_file)
from tensor_features.load_data import CATS_FILE, DATA_ENV, data_dir, read_cached_cats  # noqa: F401
from tensor_features.utils import stderr_line

CAT_LABEL = 3  # CIFAR-10 classes: airplane, automobile, bird, cat, ...


@dataclass(frozen=True)
class Source:
    url: str
    md5: str
    filename: str


CIFAR10 = Source(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",  # the checksum torchvision's CIFAR10 dataset verifies
    filename="cifar-10-python.tar.gz",
)


class DownloadError(Exception):
    """A failure that the command line reports as one line with exit code 2."""


class _OutputFailed(Exception):
    """stdout refused a line (full, closed): the program's problem, not the download's (run_main says it)."""


def _tell(text: str) -> None:
    """Print a line now; a stdout that refuses it is kept apart from the download's own OSErrors."""
    try:
        print(text, flush=True)
    except OSError as err:
        raise _OutputFailed from err


def _remove(path: Path) -> None:
    """Delete a partial file if it is there; a folder we cannot even list has nothing to delete."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def extract_cats(archive: Path) -> torch.Tensor:
    """All cat images of the CIFAR-10 python archive as a uint8 tensor [N, 3, 32, 32]."""
    batches = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not (name.startswith("data_batch_") or name == "test_batch"):
                continue
            # The archive's checksum was verified, so unpickling its batches is what torchvision does too.
            entry = pickle.load(tar.extractfile(member), encoding="latin1")
            labels = torch.tensor(entry["labels"])
            images = torch.from_numpy(entry["data"]).reshape(-1, 3, 32, 32)
            batches.append(images[labels == CAT_LABEL])
    if not batches:
        raise DownloadError(f"{archive}: no CIFAR-10 batches inside; delete it and run again with --force")
    return torch.cat(batches)


TIMEOUT_SECONDS = 20.0  # the longest wait for any answer of the server (connect, headers, each block)


@contextmanager
def socket_timeout(seconds: float):
    """Every socket made inside the block gives up after `seconds` without data (TimeoutError).

    torchvision's downloader calls urlopen without a timeout, which waits forever on a server that
    accepted the connection and never answers; the default timeout of new sockets is the one knob.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_cat_images(dest: str | os.PathLike | None = None, force: bool = False,
                        source: Source = CIFAR10, timeout: float = TIMEOUT_SECONDS) -> Path:
    """Make sure dest holds the verified archive and the extracted cats; return the cats file.

    A second call finds the verified cache and downloads nothing, unless force=True; a cats file
    that cannot be read is extracted again from the verified archive, without a download.
    """
    from torchvision.datasets.utils import check_integrity, download_url  # only when downloading

    root = data_dir(dest)
    # The folders this call makes; a failed or interrupted download takes them away again.
    created = missing_folders(root)
    try:
        with socket_timeout(timeout):
            return _download_into(root, force, source, check_integrity, download_url, timeout)
    except BaseException:  # DownloadError, and Ctrl-C too: nothing left behind
        remove_empty(created)
        raise


def _download_into(root: Path, force: bool, source: Source, check_integrity, download_url, timeout: float) -> Path:
    archive, cats = root / source.filename, root / CATS_FILE
    partial = root / (source.filename + ".part")
    host = urllib.parse.urlsplit(source.url).hostname or source.url
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):  # writable? ask before reaching for the network
            pass
        verified = not force and check_integrity(str(archive), source.md5)
        if verified and cats.exists():
            try:
                read_cached_cats(cats)
                _tell(f"cached: {archive} (checksum ok) and {cats}; nothing to download")
                return cats
            except ValueError as err:
                _tell(f"{err}; extracting the cats again from the verified archive")
        if not verified:
            _remove(partial)  # a leftover .part would look "already downloaded" to download_url
            _tell(f"downloading {source.url} -> {archive}")
            download_url(source.url, str(root), filename=partial.name, md5=None)
            if not check_integrity(str(partial), source.md5):
                _remove(partial)
                # A connection closed mid-file also ends here: urllib returns the bytes it got.
                raise DownloadError(f"checksum mismatch for {source.url} (expected MD5 {source.md5}; "
                                    "a corrupt or incomplete download); the bad file was removed")
            partial.replace(archive)  # atomic: the final name only ever holds a verified archive
        images = extract_cats(archive)
        with whole_file(cats) as temporary:  # a cut-off save never passes for the cats file
            torch.save(images, temporary)
        _tell(f"verified {archive} ({archive.stat().st_size / 1e6:.0f} MB); saved {len(images)} cat images to {cats}")
        return cats
    except BaseException as err:
        _remove(partial)  # whatever stopped it (an error, Ctrl-C), no partial archive stays
        if isinstance(err, _OutputFailed):
            raise err.__cause__ from None  # run_main's one line about stdout
        if isinstance(err, OSError) and stdout_error():  # tqdm flushes stdout too: the same, found there
            raise
        if isinstance(err, urllib.error.HTTPError):
            raise DownloadError(f"HTTP {err.code} ({err.reason}) from {source.url}") from None
        if isinstance(err, TimeoutError) or (isinstance(err, urllib.error.URLError)
                                             and isinstance(err.reason, TimeoutError)):
            raise DownloadError(f"{host} sent nothing for {timeout:g} s (--timeout); nothing was kept, "
                                "run it again later") from None
        if isinstance(err, urllib.error.URLError):
            raise DownloadError(f"could not reach {host}: {err.reason}; "
                                "the lab runs without this download, see README") from None
        if isinstance(err, (http.client.HTTPException, ConnectionError)):
            raise DownloadError(f"download from {host} was cut short ({type(err).__name__}); "
                                "nothing was kept, run it again") from None
        if isinstance(err, OSError):
            if err.errno == errno.ENOSPC:
                raise DownloadError(f"no space left in {root} (the archive needs 163 MB)") from None
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
                raise DownloadError(f"cannot write to {root}: {err.strerror}; choose another --dest") from None
            raise DownloadError(f"{root}: {err.strerror or err}") from None
        if isinstance(err, RuntimeError) and "write" in str(err):  # torch.save's own report of a full disk
            raise DownloadError(f"could not save the cats into {root} ({err}); nothing was kept") from None
        raise


def main(argv: list[str] | None = None, source: Source = CIFAR10) -> int:
    parser = OneLineArgumentParser(prog="python -m tensor_features.download", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", help=f"cache folder (default: ${DATA_ENV}, else ./data)")
    parser.add_argument("--force", action="store_true", help="download again even if the cache is verified")
    parser.add_argument("--timeout", type=float_in_range(0.0, 3600.0, low_inclusive=False), default=TIMEOUT_SECONDS,
                        metavar="SECONDS", help="give up when the server sends nothing for this long, in (0, 3600] "
                        "(default: %(default)g)")
    args = parser.parse_args(argv)
    if args.dest is not None and not args.dest.strip():
        parser.error("--dest needs a folder name")
    try:
        download_cat_images(args.dest, args.force, source, args.timeout)
    except DownloadError as err:
        stderr_line(f"{parser.prog}: error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    from tensor_features.cli import run_main

    sys.exit(run_main(main))

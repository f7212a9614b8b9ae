"""Fetch the lab's image data: the cat class of CIFAR-10, verified, into a local cache.

    python -m tensor_features.download [--dest DIR] [--force]

The archive (cifar-10-python.tar.gz, 163 MB) comes from its authors' site through
torchvision's own downloader (progress bar with size and speed). It is written under a
temporary name, its MD5 checksum is verified, and only then is it renamed into place, so a
download cut short never passes for a good one. The 6,000 cat images (label 3) are then
saved as one uint8 tensor, cifar10_cats.pt (18 MB), which load_cat_images reads.

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
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from tensor_features.cli import OneLineArgumentParser
from tensor_features.utils import stderr_line

DATA_ENV = "TENSOR_FEATURES_DATA"
CATS_FILE = "cifar10_cats.pt"
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


def _remove(path: Path) -> None:
    """Delete a partial file if it is there; a folder we cannot even list has nothing to delete."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def data_dir(dest: str | os.PathLike | None = None) -> Path:
    """--dest, else $TENSOR_FEATURES_DATA, else ./data under the working directory."""
    return Path(dest or os.environ.get(DATA_ENV) or "data")


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


def download_cat_images(dest: str | os.PathLike | None = None, force: bool = False,
                        source: Source = CIFAR10) -> Path:
    """Make sure dest holds the verified archive and the extracted cats; return the cats file.

    A second call finds the verified cache and downloads nothing, unless force=True.
    """
    from torchvision.datasets.utils import check_integrity, download_url  # only when downloading

    root = data_dir(dest)
    # The folders this call makes; a failed download takes them away again (nothing left behind).
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        return _download_into(root, force, source, check_integrity, download_url)
    except DownloadError:
        for folder in created:  # deepest first; only folders that are still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _download_into(root: Path, force: bool, source: Source, check_integrity, download_url) -> Path:
    archive, cats = root / source.filename, root / CATS_FILE
    partial = root / (source.filename + ".part")
    host = urllib.parse.urlsplit(source.url).hostname or source.url
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):  # writable? ask before reaching for the network
            pass
        if not force and cats.exists() and check_integrity(str(archive), source.md5):
            print(f"cached: {archive} (checksum ok) and {cats}; nothing to download")
            return cats
        _remove(partial)  # a leftover .part would look "already downloaded" to download_url
        print(f"downloading {source.url} -> {archive}")
        download_url(source.url, str(root), filename=partial.name, md5=None)
        if not check_integrity(str(partial), source.md5):
            _remove(partial)
            # A connection closed mid-file also ends here: urllib returns the bytes it got.
            raise DownloadError(f"checksum mismatch for {source.url} (expected MD5 {source.md5}; "
                                "a corrupt or incomplete download); the bad file was removed")
        partial.replace(archive)  # atomic: the final name only ever holds a verified archive
        images = extract_cats(archive)
        temporary = root / (CATS_FILE + ".part")
        torch.save(images, temporary)
        temporary.replace(cats)
        print(f"verified {archive} ({archive.stat().st_size / 1e6:.0f} MB); "
              f"saved {len(images)} cat images to {cats}")
        return cats
    except urllib.error.HTTPError as err:
        _remove(partial)
        raise DownloadError(f"HTTP {err.code} ({err.reason}) from {source.url}") from None
    except urllib.error.URLError as err:
        _remove(partial)
        raise DownloadError(f"could not reach {host}: {err.reason}; "
                            "the lab runs without this download, see README") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as err:
        _remove(partial)
        raise DownloadError(f"download from {host} was cut short ({type(err).__name__}); "
                            "nothing was kept, run it again") from None
    except OSError as err:
        _remove(partial)
        if err.errno == errno.ENOSPC:
            raise DownloadError(f"no space left in {root} (the archive needs 163 MB)") from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise DownloadError(f"cannot write to {root}: {err.strerror}; choose another --dest") from None
        raise DownloadError(f"{root}: {err.strerror or err}") from None


def main(argv: list[str] | None = None, source: Source = CIFAR10) -> int:
    parser = OneLineArgumentParser(prog="python -m tensor_features.download", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", help=f"cache folder (default: ${DATA_ENV}, else ./data)")
    parser.add_argument("--force", action="store_true", help="download again even if the cache is verified")
    args = parser.parse_args(argv)
    if args.dest is not None and not args.dest.strip():
        parser.error("--dest needs a folder name")
    try:
        download_cat_images(args.dest, args.force, source)
    except DownloadError as err:
        stderr_line(f"{parser.prog}: error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    from tensor_features.cli import run_main

    sys.exit(run_main(main))

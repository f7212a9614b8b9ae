"""tensor_features.download against a local HTTP server on 127.0.0.1 (never the internet),
serving a tiny archive in CIFAR-10's python format that the test builds; plus the image loaders."""

import hashlib
import io
import pickle
import signal
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from tests.support import free_port, usage_error
from tensor_features import download
from tensor_features.cli import run_main
from tensor_features.load_data import CAT_SIZE, EMBEDDED_CAT, cat_images_source, load_cat_images, read_cached_cats
from tensor_features.utils import display_images

LABELS = [3, 0, 3, 5, 3]  # three cats among five images

MUTANTS = [  # the image loader (the download itself is tested against the local server)
    ("tensor_features/load_data.py", "        torch.manual_seed(seed)", "        torch.manual_seed(0)"),
    ("tensor_features/load_data.py", "with torch.random.fork_rng(devices=[]):", "with torch.no_grad():"),
    ("tensor_features/load_data.py", "return read_cached_cats(cached)[:n]",
     "return read_cached_cats(cached)[-n:]"),
    ("tensor_features/load_data.py", "        while len(crops) < n:", "        while len(crops) < max(n - 1, 1):"),
]


def tiny_cifar_archive() -> bytes:
    """A .tar.gz laid out like cifar-10-python.tar.gz, with one batch of five 32×32 images."""
    data = np.stack([np.full(3 * 32 * 32, i * 10, dtype=np.uint8) for i in range(len(LABELS))])
    batch = pickle.dumps({"data": data, "labels": LABELS})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(batch)
        tar.addfile(info, io.BytesIO(batch))
    return buffer.getvalue()


class Server:
    """A local server with a mode per test: 'ok', 'corrupt', 'cut' (closes mid-file) or 404."""

    def __init__(self, body: bytes):
        self.body, self.mode, self.requests = body, "ok", 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests += 1
                if server.mode == "404":
                    self.send_error(404, "Not Found")
                    return
                body = server.body if server.mode != "corrupt" else server.body[:-1] + bytes([server.body[-1] ^ 1])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if server.mode != "cut" else body[: len(body) // 2])
                if server.mode == "cut":
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        port = self.httpd.server_address[1]
        self.source = download.Source(f"http://127.0.0.1:{port}/cifar-10-python.tar.gz",
                                      hashlib.md5(body).hexdigest(), "cifar-10-python.tar.gz")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    served = Server(tiny_cifar_archive())
    yield served
    served.close()


def test_download_verifies_extracts_and_caches(server, tmp_path, capsys):
    dest = tmp_path / "data"
    assert download.main(["--dest", str(dest)], source=server.source) == 0
    served = server.requests
    cats = torch.load(dest / download.CATS_FILE, weights_only=True)
    # Oracle: the archive the test built holds cats at indices 0, 2, 4, filled with 0, 20, 40.
    assert cats.shape == (3, 3, 32, 32) and cats.dtype == torch.uint8
    assert [int(c.unique()) for c in cats] == [0, 20, 40]
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-python.tar.gz", "cifar10_cats.pt"]

    assert download.main(["--dest", str(dest)], source=server.source) == 0
    assert server.requests == served  # the verified cache: nothing downloaded
    assert "nothing to download" in capsys.readouterr().out
    assert download.main(["--dest", str(dest), "--force"], source=server.source) == 0
    assert server.requests == 2 * served


def test_environment_variable_chooses_the_folder(server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.DATA_ENV, str(tmp_path / "from-env"))
    assert download.main([], source=server.source) == 0
    assert (tmp_path / "from-env" / download.CATS_FILE).exists()


@pytest.mark.parametrize("mode, message", [
    ("corrupt", "checksum mismatch"),
    ("cut", "incomplete download"),  # urllib hands back the bytes it got; the checksum catches it
    ("404", "HTTP 404"),
])
def test_failures_leave_no_file_that_passes_for_good(server, tmp_path, capsys, mode, message):
    server.mode = mode
    dest = tmp_path / "data"
    assert download.main(["--dest", str(dest)], source=server.source) == 2
    # stderr also carries tqdm's progress bar; the failure itself is one line.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not dest.exists()  # no archive, no .part, no cats, and not the folder this run made


def test_a_failed_download_keeps_a_folder_that_was_there(server, tmp_path, capsys):
    server.mode = "404"
    dest = tmp_path / "mine"
    dest.mkdir()
    assert download.main(["--dest", str(dest)], source=server.source) == 2
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_an_empty_dest_is_a_usage_error(capsys):
    assert "--dest" in usage_error(download.main, ["--dest", " "], capsys)


def test_connection_refused_says_the_lab_runs_without_it(tmp_path, capsys):
    port = free_port()  # a port nobody listens on
    source = download.Source(f"http://127.0.0.1:{port}/x.tar.gz", "0" * 32, "x.tar.gz")
    assert download.main(["--dest", str(tmp_path)], source=source) == 2
    err = capsys.readouterr().err
    assert "could not reach 127.0.0.1" in err and "the lab runs without this download" in err


def test_unwritable_destination_is_one_line(tmp_path, capsys, server):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert download.main(["--dest", str(blocker / "data")], source=server.source) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_load_cat_images_from_the_cache(server, tmp_path):
    download.main(["--dest", str(tmp_path)], source=server.source)
    batch = load_cat_images(n=2, root=tmp_path)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8
    # Oracle: the archive the test built; its first two cats are filled with 0 and 20.
    assert [int(c.unique()) for c in batch] == [0, 20]
    assert cat_images_source(tmp_path).startswith("CIFAR-10 cats from")


def test_the_embedded_photo_is_the_451_by_300_rgb_png_its_readme_names():
    from PIL import Image

    with Image.open(EMBEDDED_CAT) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (451, 300))


def test_offline_n_distinct_seeded_crops_of_the_embedded_photo(tmp_path):
    empty = tmp_path / "empty"
    torch.manual_seed(123)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(123)
    crops = load_cat_images(12, root=empty, seed=7)
    assert torch.equal(torch.rand(3), expected_next_draw)  # the caller's random state is untouched
    assert crops.shape == (12, 3, CAT_SIZE, CAT_SIZE) and CAT_SIZE == 32 and crops.dtype == torch.uint8
    assert len({crop.numpy().tobytes() for crop in crops}) == 12  # 12 distinct crops
    assert torch.equal(load_cat_images(12, root=empty, seed=7), crops)  # the same seed, the same crops
    other = load_cat_images(12, root=empty, seed=8)
    assert not any(torch.equal(a, b) for a, b in zip(other, crops))
    assert torch.equal(load_cat_images(3, root=empty, seed=7), crops[:3])  # a smaller n: the first crops
    source = cat_images_source(empty)
    assert source == f"random crops and flips of one photo, chelsea.png (no CIFAR-10 download in {empty})"
    assert not empty.exists()  # looking for the cache creates nothing


def test_load_cat_images_needs_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        load_cat_images(0, root=tmp_path)


def test_display_images_writes_a_png_of_the_grid_size(tmp_path):
    from PIL import Image

    batch = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    path = display_images(batch, tmp_path / "grid.png", nrow=3)
    with Image.open(path) as image:
        # make_grid: 3 tiles of 32 in a row, padding 2 around each: 3 * (32 + 2) + 2 by 32 + 2 * 2.
        assert image.format == "PNG" and image.size == (3 * 34 + 2, 36)


# -- whatever the environment: a silent server, Ctrl-C mid-transfer, a corrupt cache ------------------------

class SilentServer:
    """Accepts connections on 127.0.0.1 and then sends `head` (nothing, by default) and no more."""

    def __init__(self, head: bytes = b""):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.head, self.connections = head, []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        port = self.listener.getsockname()[1]
        self.source = download.Source(f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", "0" * 32,
                                      "cifar-10-python.tar.gz")

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections.append(connection)
            if self.head:
                connection.recv(65536)  # the request
                connection.sendall(self.head)

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()


def test_a_server_that_never_answers_times_out_with_one_line(tmp_path, capsys):
    silent = SilentServer()
    dest = tmp_path / "new" / "data"
    start = time.monotonic()
    try:
        assert download.main(["--dest", str(dest), "--timeout", "1"], source=silent.source) == 2
    finally:
        silent.close()
    assert time.monotonic() - start < 30  # one --timeout per wait (at most a few waits), not forever
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == ["python -m tensor_features.download: error: 127.0.0.1 sent nothing for 1 s (--timeout); "
                      "nothing was kept, run it again later"]
    assert list(tmp_path.iterdir()) == []  # no .part, no folder this run made


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_ctrl_c_mid_transfer_leaves_no_partial_file_and_no_folder(tmp_path, capsys):
    """A real SIGINT to this process once the download has begun writing (the server then stalls)."""
    head = b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n" + bytes(40000)
    stalling = SilentServer(head)
    dest = tmp_path / "new" / "data"
    partial = dest / "cifar-10-python.tar.gz.part"

    def press_ctrl_c():
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # by now the transfer waits for the bytes that do not come
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal would: the main thread

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        code = run_main(lambda: download.main(["--dest", str(dest), "--timeout", "20"], source=stalling.source))
    finally:
        presser.join()
        stalling.close()
    assert code == 130
    assert capsys.readouterr().err.splitlines()[-1].endswith(": interrupted")
    assert list(tmp_path.iterdir()) == []  # the partial archive and the folders it made are gone


def test_a_corrupt_cats_file_is_said_and_rebuilt(server, tmp_path, capsys):
    download.main(["--dest", str(tmp_path)], source=server.source)
    cats = tmp_path / download.CATS_FILE
    good = cats.read_bytes()
    offline = load_cat_images(2, root=tmp_path / "none")
    for bad in (good[: len(good) // 2], b"\x89PNG\r\n\x1a\n not a tensor", b""):
        cats.write_bytes(bad)
        # The loader counts it as no cache (the crops of the embedded photo) and says why, with the fix.
        assert torch.equal(load_cat_images(2, root=tmp_path), offline)
        source = cat_images_source(tmp_path)
        assert f"{cats} cannot be read" in source and "python -m tensor_features.download rebuilds it" in source
        # The download rebuilds it from the verified archive, without asking the server again.
        served = server.requests
        assert download.main(["--dest", str(tmp_path)], source=server.source) == 0
        assert server.requests == served and "extracting the cats again" in capsys.readouterr().out
        assert cats.read_bytes() != bad and read_cached_cats(cats).shape == (3, 3, 32, 32)
    torch.save(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), cats)  # a tensor, but not 32×32 RGB images
    assert "does not hold uint8 images [N, 3, 32, 32]" in cat_images_source(tmp_path)

"""MNIST downloads against a misbehaving local server: a deadline for the whole transfer, a size
cap, no .part file left behind, and cached files verified before use. No real network; small
limits patched in, so the whole file takes a few seconds."""

import gzip
import hashlib
import http.server
import os
import threading
import time

import numpy as np
import pytest

from xpmlp import datasets
from xpmlp.datasets import DataError, load_mnist

NAMES = list(datasets.MNIST_FILES)


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape) + a.astype(np.uint8).tobytes()


@pytest.fixture
def mnist(monkeypatch, tmp_path):
    """A tiny MNIST (its checksums patched in), small limits, and no $XPMLP_DATA or user cache."""
    rng = np.random.default_rng(0)
    content = {
        "train-images-idx3-ubyte": _idx(rng.integers(0, 256, size=(6, 28, 28))),
        "train-labels-idx1-ubyte": _idx(rng.integers(0, 10, size=6)),
        "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, size=(3, 28, 28))),
        "t10k-labels-idx1-ubyte": _idx(rng.integers(0, 10, size=3)),
    }
    monkeypatch.setattr(datasets, "MNIST_FILES", {k: hashlib.sha256(v).hexdigest() for k, v in content.items()})
    monkeypatch.setattr(datasets, "DOWNLOAD_READ_TIMEOUT", 0.5)
    monkeypatch.setattr(datasets, "DOWNLOAD_DEADLINE", 0.6)
    monkeypatch.setattr(datasets, "DOWNLOAD_MAX_BYTES", 50_000)  # the biggest archive here is ~5 KB
    monkeypatch.setattr(datasets, "MNIST_MAX_CONTENT", 20_000)  # the biggest content is 4720 bytes
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    monkeypatch.setenv("XPMLP_CACHE", str(tmp_path / "user-cache"))
    return {k: gzip.compress(v) for k, v in content.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<name>.gz: the archive, served as ``mode`` says. At most ~3 s per request."""

    def do_GET(self):
        mode, name = self.path.strip("/").split("/")
        body = self.server.files[name.removesuffix(".gz")]
        if mode == "corrupt":
            raw = bytearray(gzip.decompress(body))
            raw[-1] ^= 0xFF
            body = gzip.compress(bytes(raw))
        length = {"huge": 10**12, "short": 2 * len(body)}.get(mode, len(body))
        self.send_response(200)
        if mode != "endless":
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.server.served.append(mode)
        try:
            if mode == "trickle":  # a byte every 20 ms: each read waits far less than its timeout
                stop = time.monotonic() + 3
                for i in range(len(body)):
                    if time.monotonic() > stop:
                        break
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.02)
            elif mode in ("huge", "endless"):  # junk until the client hangs up (or 3 s)
                stop = time.monotonic() + 3
                while time.monotonic() < stop:
                    self.wfile.write(b"\0" * 8192)
            else:
                self.wfile.write(body)
        except OSError:  # the client gave up: that is the point of most modes
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server(mnist):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.served = mnist, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_trickling_server_meets_the_deadline(server, tmp_path):
    httpd, url = server
    started = time.monotonic()
    with pytest.raises(DataError, match=r"trickle/train-images-idx3-ubyte.gz: not complete after 0.6 s .*gave up"):
        load_mnist(mirrors=[url + "/trickle/"], cache_dir=tmp_path / "c", progress=False)
    assert time.monotonic() - started < 1.5
    assert _leftovers(tmp_path / "c") == []


def test_an_announced_size_above_the_cap_is_refused_before_reading(server, tmp_path):
    httpd, url = server
    started = time.monotonic()
    with pytest.raises(DataError, match=r"announces 1000000000000 bytes, more than the 50000 allowed .*without reading"):
        load_mnist(mirrors=[url + "/huge/"], cache_dir=tmp_path / "c", progress=False)
    assert time.monotonic() - started < 1.0 and _leftovers(tmp_path / "c") == []


def test_an_endless_body_is_cut_at_the_cap(server, tmp_path):
    httpd, url = server
    with pytest.raises(DataError, match=r"endless/train-images-idx3-ubyte.gz: sent more than the 50000 bytes allowed"):
        load_mnist(mirrors=[url + "/endless/"], cache_dir=tmp_path / "c", progress=False)
    assert _leftovers(tmp_path / "c") == []


def test_a_body_shorter_than_announced_is_refused(server, tmp_path):
    httpd, url = server
    with pytest.raises(DataError, match=r"short/train-images-idx3-ubyte.gz: the transfer ended after (\d+) of the \d+ bytes"):
        load_mnist(mirrors=[url + "/short/"], cache_dir=tmp_path / "c", progress=False)
    assert _leftovers(tmp_path / "c") == []


def test_a_bad_mirror_then_a_good_one(server, tmp_path):
    httpd, url = server
    (Xtr, ytr), (Xte, yte) = load_mnist(mirrors=[url + "/corrupt/", url + "/ok/"], cache_dir=tmp_path / "c",
                                        progress=False)
    assert Xtr.shape == (6, 784) and Xte.shape == (3, 784)
    assert _leftovers(tmp_path / "c") == sorted(n + ".gz" for n in NAMES)


def test_ctrl_c_during_a_download_leaves_no_part_file(server, tmp_path, monkeypatch):
    httpd, url = server
    import tqdm.auto

    class Interrupting(tqdm.auto.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.auto, "tqdm", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        load_mnist(mirrors=[url + "/ok/"], cache_dir=tmp_path / "c", progress=False)
    assert httpd.served == ["ok"] and _leftovers(tmp_path / "c") == []


def test_stale_part_files_of_a_killed_download_are_removed(server, tmp_path):
    httpd, url = server
    cache = tmp_path / "c"
    cache.mkdir()
    stale = cache / ".train-images-idx3-ubyte.x1y2.part"
    fresh = cache / ".train-images-idx3-ubyte.z3w4.part"  # another process may be writing it now
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    load_mnist(mirrors=[url + "/ok/"], cache_dir=cache, progress=False)
    assert not stale.exists() and fresh.exists()


def test_cached_files_are_verified_before_use(server, tmp_path, mnist):
    httpd, url = server
    cache = tmp_path / "c"
    (X, _), _ = load_mnist(mirrors=[url + "/ok/"], cache_dir=cache, progress=False)
    assert httpd.served == ["ok"] * 4
    # a cached file damaged after the download: one flipped pixel
    damaged = bytearray(gzip.decompress(mnist["train-images-idx3-ubyte"]))
    damaged[100] ^= 0xFF
    (cache / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(damaged)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: the cached file's content has SHA-256 .*"
                                        r"corrupted .*Delete it, or call load_mnist with download=True"):
        load_mnist(download=False, cache_dir=cache)
    with pytest.warns(UserWarning, match="train-images-idx3-ubyte.gz: the cached file's .*downloading it again"):
        (X2, _), _ = load_mnist(mirrors=[url + "/ok/"], cache_dir=cache, progress=False)
    np.testing.assert_array_equal(X2, X)
    assert httpd.served == ["ok"] * 5


def test_a_gzip_bomb_in_the_cache_is_refused(mnist, tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    for name, body in mnist.items():
        (cache / (name + ".gz")).write_bytes(body)
    (cache / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 10_000_000))  # 10 KB -> 10 MB
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: holds more than 20000 bytes"):
        load_mnist(download=False, cache_dir=cache)
    # an uncompressed file is not read past the limit either
    (cache / "train-images-idx3-ubyte.gz").unlink()
    (cache / "train-images-idx3-ubyte").write_bytes(b"\0" * 30_000)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: holds more than 20000 bytes"):
        load_mnist(download=False, cache_dir=cache)

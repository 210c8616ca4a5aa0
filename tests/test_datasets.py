import functools
import gzip
import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import datasets
from xpmlp.datasets import DataError, load_heart_disease, load_mnist, make_sine, make_spirals, make_xor, read_idx
from xpmlp.testing import gradcheck


# -- small generated MNIST-format files ----------------------------------------------------------
def _idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    return header + a.astype(np.uint8).tobytes()


def _fake_mnist(folder: Path, n_train=12, n_test=5, gz=True, seed=0):
    """Write the four IDX files of a tiny MNIST; returns {name: decompressed bytes}."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for name, a in arrays.items():
        contents[name] = _idx_bytes(a)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(contents[name]))
        else:
            (folder / name).write_bytes(contents[name])
    return contents


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache; keep $XPMLP_DATA only for the tests that ask for it."""
    monkeypatch.setenv("XPMLP_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_gzipped_or_not(tmp_path, monkeypatch, gz):
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    contents = _fake_mnist(tmp_path / "m", gz=gz)
    (Xtr, ytr), (Xte, yte) = load_mnist(tmp_path / "m", download=False)
    assert Xtr.shape == (12, 784) and Xte.shape == (5, 784) and Xtr.dtype == np.uint8
    assert ytr.dtype == np.int64 and ytr.shape == (12,)
    raw = np.frombuffer(contents["train-images-idx3-ubyte"], np.uint8, offset=16)
    np.testing.assert_array_equal(Xtr.ravel(), raw)
    (X28, _), _ = load_mnist(tmp_path / "m", download=False, flatten=False)
    assert X28.shape == (12, 28, 28)


@pytest.mark.parametrize("header", [True, False])
def test_reads_the_csv_layout(tmp_path, monkeypatch, header):
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    rng = np.random.default_rng(1)
    folder = tmp_path / "csv"
    folder.mkdir()
    for name, n in (("mnist_train.csv", 7), ("mnist_test.csv", 3)):
        rows = np.column_stack([rng.integers(0, 10, n), rng.integers(0, 256, (n, 784))])
        head = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n" if header else ""
        (folder / name).write_text(head + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    (Xtr, ytr), (Xte, yte) = load_mnist(folder, download=False)
    assert Xtr.shape == (7, 784) and Xte.shape == (3, 784) and ytr.dtype == np.int64
    expected = np.loadtxt(folder / "mnist_test.csv", delimiter=",", skiprows=int(header), dtype=np.int64)
    np.testing.assert_array_equal(yte, expected[:, 0])
    np.testing.assert_array_equal(Xte, expected[:, 1:])


def test_truncated_and_corrupted_files_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    contents = _fake_mnist(tmp_path / "m", gz=False)
    images = tmp_path / "m" / "train-images-idx3-ubyte"
    images.write_bytes(contents["train-images-idx3-ubyte"][:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: expected 9408 bytes.*found 9308.*truncated"):
        load_mnist(tmp_path / "m", download=False)
    gz = tmp_path / "t.gz"
    gz.write_bytes(gzip.compress(contents["train-labels-idx1-ubyte"])[:-8])
    with pytest.raises(DataError, match="t.gz: cannot be decompressed"):
        read_idx(gz)
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="junk: not an IDX file"):
        read_idx(tmp_path / "junk")


def test_search_order_path_then_data_then_cache(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "given", n_train=3, seed=1)
    _fake_mnist(tmp_path / "data" / "mnist", n_train=4, seed=2)
    cached = _fake_mnist(tmp_path / "cache" / "mnist", n_train=5, seed=3)
    # the cache is verified against the checksums; the user's folders are not
    monkeypatch.setattr(datasets, "MNIST_FILES", {k: hashlib.sha256(v).hexdigest() for k, v in cached.items()})
    monkeypatch.setenv("XPMLP_DATA", str(tmp_path / "data"))
    assert len(load_mnist(tmp_path / "given", download=False)[0][0]) == 3
    assert len(load_mnist(download=False)[0][0]) == 4
    monkeypatch.delenv("XPMLP_DATA")
    assert len(load_mnist(download=False)[0][0]) == 5


def test_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    with pytest.raises(DataError, match=r"(?s)MNIST was not found\. Put the four files.*"
                                         + str(tmp_path / "nowhere").replace("\\", "\\\\")):
        load_mnist(tmp_path / "nowhere", download=False)
    # download=True with no reachable mirror: same guidance, plus what failed
    with pytest.raises(DataError, match=r"could not download MNIST(.|\n)*127\.0\.0\.1(.|\n)*Put the four files"):
        load_mnist(tmp_path / "nowhere", mirrors=["http://127.0.0.1:9/"], progress=False)
    assert not any((tmp_path / "cache" / "mnist").glob("*")), "nothing half-written in the cache"


@pytest.fixture
def served(tmp_path, data_dir):
    """An HTTP server on 127.0.0.1 serving MNIST archives: the real ones when $XPMLP_DATA has
    them, else small generated ones (with their checksums patched in)."""
    root = tmp_path / "www"
    real = data_dir / "mnist" if data_dir is not None and (data_dir / "mnist").is_dir() else None
    if real is not None:
        shutil.copytree(real, root)
    else:
        contents = _fake_mnist(root)
        sums = {k: hashlib.sha256(v).hexdigest() for k, v in contents.items()}
        patch = pytest.MonkeyPatch()
        patch.setattr(datasets, "MNIST_FILES", sums)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/", real is not None
    server.shutdown()
    server.server_close()
    if real is None:
        patch.undo()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_verifies_and_caches(served, tmp_path, monkeypatch):
    root, url, real = served
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    cache = tmp_path / "dl"
    (Xtr, ytr), (Xte, yte) = load_mnist(mirrors=["http://127.0.0.1:9/", url], cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted(n + ".gz" for n in datasets.MNIST_FILES)
    assert len(Xtr) == (60000 if real else 12) and len(Xte) == (10000 if real else 5)
    # a second call reads the cache and downloads nothing
    (X2, _), _ = load_mnist(mirrors=[], cache_dir=cache)
    np.testing.assert_array_equal(X2, Xtr)


def test_corrupted_download_fails_and_leaves_nothing(served, tmp_path, monkeypatch):
    root, url, _ = served
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    target = root / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[-1] ^= 0xFF  # one flipped label
    target.write_bytes(gzip.compress(bytes(content)))
    cache = tmp_path / "dl"
    with pytest.raises(DataError, match="checksum mismatch for .*t10k-labels-idx1-ubyte.gz"):
        load_mnist(mirrors=[url], cache_dir=cache, progress=False)
    leftovers = [p.name for p in cache.iterdir()]
    assert "t10k-labels-idx1-ubyte.gz" not in leftovers and not any(n.endswith(".part") for n in leftovers)


def test_real_mnist_when_present(data_dir):
    if data_dir is None or not (data_dir / "mnist").is_dir():
        pytest.skip("real MNIST not in $XPMLP_DATA")
    (Xtr, ytr), (Xte, yte) = load_mnist(download=False)
    assert Xtr.shape == (60000, 784) and Xte.shape == (10000, 784)
    np.testing.assert_array_equal(ytr[:8], [5, 0, 4, 1, 9, 2, 1, 3])
    np.testing.assert_array_equal(np.bincount(yte), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


# -- heart disease ---------------------------------------------------------------------------------
HEART_ROWS = ["63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0",
              "67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2",
              "53.0,0.0,3.0,128.0,216.0,0.0,2.0,115.0,0.0,0.0,1.0,0.0,?,0",
              "52.0,1.0,3.0,138.0,223.0,0.0,0.0,169.0,0.0,0.0,1.0,?,7.0,4"]


def _heart_file(data_dir, tmp_path):
    real = data_dir / "uci-heart" / "processed.cleveland.data" if data_dir is not None else None
    if real is not None and real.is_file():
        return real, True
    path = tmp_path / "processed.cleveland.data"
    path.write_text("\n".join(HEART_ROWS) + "\n")
    return path, False


def test_heart_disease_policies_and_targets(data_dir, tmp_path):
    path, real = _heart_file(data_dir, tmp_path)
    X, y = load_heart_disease(path)
    frame = load_heart_disease(path, missing="median", as_frame=True)
    _, severity = load_heart_disease(path, missing="median", target="num")
    assert X.shape[1] == 13 and X.dtype == np.float64 and set(np.unique(y)) <= {0, 1}
    assert not np.isnan(frame.to_numpy()).any() and list(frame.columns[-2:]) == ["num", "disease"]
    np.testing.assert_array_equal(frame["disease"], severity > 0)
    if real:
        assert X.shape == (297, 13) and len(frame) == 303
        np.testing.assert_array_equal(np.bincount(severity), [164, 55, 36, 35, 13])
    else:
        assert X.shape == (2, 13) and len(frame) == 4
        np.testing.assert_array_equal(severity, [0, 2, 0, 4])
        assert frame.loc[2, "thal"] == 6.0  # median of 6, 3 and 7


def test_heart_disease_bad_files(tmp_path):
    with pytest.raises(DataError, match="nope.data: file not found"):
        load_heart_disease(tmp_path / "nope.data")
    bad = tmp_path / "bad.data"
    bad.write_text(HEART_ROWS[0] + "\n" + HEART_ROWS[1].replace("286.0", "high") + "\n")
    with pytest.raises(DataError, match=r"bad.data: row 2, column 'chol': 'high' is not a number"):
        load_heart_disease(bad)
    short = tmp_path / "short.data"
    short.write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"short.data: expected 14 columns \(.*\), found 3"):
        load_heart_disease(short)


# -- generators and Standardize ---------------------------------------------------------------------
def test_generators_are_seeded_and_shaped():
    X, y = make_xor(100, bias_column=True, seed=3)
    assert X.shape == (100, 3) and np.all(X[:, 0] == 1) and set(np.unique(y)) == {0, 1}
    np.testing.assert_array_equal(make_xor(50, seed=1)[0], make_xor(50, seed=1)[0])
    Xs, ys = make_sine(64, seed=0)
    assert Xs.shape == ys.shape == (64, 1) and np.allclose(ys, np.abs(np.sin(Xs)))
    Xp, yp = make_spirals(90, n_classes=3, seed=0)
    assert Xp.shape == (90, 2) and np.bincount(yp).tolist() == [30, 30, 30]


def test_standardize_learns_and_gradchecks(case64):
    rng = np.random.default_rng(0)
    raw = rng.normal(100.0, 25.0, size=(30, 4))
    raw[:, 2] = 7.0  # a constant column: std 0 -> divided by 1
    layer = xpmlp.Standardize()
    layer.build(4, case64.backend, "float64", None)
    with case64.activate():  # a layer used directly runs on the current device (CuPy)
        layer.adapt(case64.asarray(raw))
        out = xpmlp.to_numpy(layer.forward(case64.asarray(raw)))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), [1, 1, 0, 1], atol=1e-12)
    gradcheck(layer, case64.asarray(raw[:5]))


def test_standardize_makes_unscaled_inputs_work(case):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)) * [1000.0, 0.001, 50.0] + [5000.0, 0.0, -300.0]
    y = ((X[:, 0] - 5000) / 1000 + (X[:, 1] / 0.001) > 0).astype(np.int64)
    model = xpmlp.MLP([3, 16, 2], standardize=True, seed=0, **case.model_kwargs())
    model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01), epochs=30, batch_size=32)
    assert np.mean(xpmlp.to_numpy(model.predict(X)).argmax(axis=1) == y) > 0.97
    assert isinstance(model.layers[0], xpmlp.Standardize) and model.layers[0].adapted


# -- train_test_split ---------------------------------------------------------------------------------
def _test_counts_of(y_test, classes):
    return [int(np.sum(y_test == c)) for c in classes]


def test_split_of_a_continuous_target_is_a_random_split():
    """Every value of a continuous target is unique: stratifying by it used to give an empty test set."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, seed=1)
    assert len(X_test) == len(y_test) == 10 and len(X_train) == 40
    np.testing.assert_array_equal(np.sort(np.concatenate([y_train, y_test])), np.sort(y))
    # same split as asking for no stratification
    _, _, _, y_plain = datasets.train_test_split(X, y, test_size=0.2, stratify=False, seed=1)
    np.testing.assert_array_equal(y_test, y_plain)


@pytest.mark.parametrize("counts,test_size,n_test,expected", [
    # hand-computed largest-remainder shares
    ([3] * 10, 0.5, 15, None),          # exact shares 1.5 each: 5 classes give 1, 5 give 2 (was 2 each: 20)
    ([5, 5, 5], 0.1, 2, None),          # n_test = round(1.5) = 2; shares 0.5 each (was 0 each: no test rows)
    ([164, 55, 36, 35, 13], 0.25, 76, [41, 14, 9, 9, 3]),  # heart disease severities: shares 41, 13.75, 9, 8.75, 3.25
    ([90, 7, 3], 0.2, 20, [18, 1, 1]),  # shares 18, 1.4, 0.6: one leftover row, to the 0.6 remainder
    ([6, 6, 6, 2], 0.25, 5, None),      # shares 1.5, 1.5, 1.5, 0.5: all tie, two of the four get 2
])
def test_split_gives_each_class_its_rounded_share(counts, test_size, n_test, expected):
    y = np.repeat(np.arange(len(counts)), counts)
    X = np.arange(len(y))
    for seed in range(5):
        X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=test_size, seed=seed)
        got = _test_counts_of(y_test, range(len(counts)))
        assert sum(got) == n_test == len(X_test) and len(X_train) == len(y) - n_test
        exact = np.array(counts) * n_test / len(y)
        assert np.all(np.abs(np.array(got) - exact) < 1), (got, exact)
        if expected is not None:
            assert got == expected
        np.testing.assert_array_equal(y[X_test], y_test)  # rows stay paired
        assert sorted(np.concatenate([X_train, X_test]).tolist()) == X.tolist()


def test_split_shares_match_scikit_learn():
    """Where no two classes tie on their remainder (so no random tie-break) and test_size * n is a
    whole number (scikit-learn rounds it up), scikit-learn's stratified split gives the same counts."""
    sk = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(300):
        counts = rng.integers(2, 40, size=rng.integers(2, 7))
        counts[-1] += -counts.sum() % 8  # n a multiple of 8: test_size * n is whole
        y = np.repeat(np.arange(len(counts)), counts)
        n = len(y)
        test_size = float(rng.choice([0.125, 0.25, 0.5, 0.375]))
        n_test = int(test_size * n)
        remainders = (counts * n_test) % n
        nonzero = remainders[remainders > 0]
        if len(set(nonzero.tolist())) != len(nonzero) or min(n_test, n - n_test) < len(counts):
            continue  # a random tie-break, or a split scikit-learn refuses
        _, y_test, = datasets.train_test_split(y, y, test_size=test_size, seed=1)[1::2]
        _, sk_test = sk.train_test_split(y, test_size=test_size, stratify=y, random_state=1)
        assert np.bincount(y_test, minlength=len(counts)).tolist() == np.bincount(sk_test, minlength=len(counts)).tolist()
        compared += 1
    assert compared >= 50, compared


def test_split_stratifies_labels_of_any_kind():
    y = np.array(["cat", "dog"] * 10 + ["cat"] * 10)  # 20 cat, 10 dog
    _, _, _, y_test = datasets.train_test_split(np.zeros((30, 2)), y, test_size=0.3, seed=0)
    assert sorted(y_test.tolist()) == ["cat"] * 6 + ["dog"] * 3
    onehot = np.eye(3)[np.repeat([0, 1, 2], [12, 6, 2])]
    _, _, _, t = datasets.train_test_split(np.arange(20), onehot, test_size=0.5, seed=0)
    assert t.sum(axis=0).tolist() == [6, 3, 1]


def test_split_as_fit_calls_it():
    """fit(validation_split=...) splits row numbers by class labels, or by zeros for regression."""
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, val, _, y_val = datasets.train_test_split(np.arange(100), labels, test_size=0.1, stratify=True, seed=7)
    assert np.bincount(y_val).tolist() == [5, 3, 2] and len(np.intersect1d(train, val)) == 0
    train, val, _, _ = datasets.train_test_split(np.arange(100), np.zeros(100), test_size=0.1, stratify=False, seed=7)
    assert len(val) == 10 and len(train) == 90


# -- CSV files that cannot be used name the file and the column ----------------------------------------
_PIXELS = ",".join(f"pixel{i}" for i in range(784))


@pytest.mark.parametrize("train_text,message", [
    ("", r"mnist_train.csv: the file is empty"),
    ("label," + _PIXELS + "\n", r"mnist_train.csv: has a header row but no data rows"),
    ("label," + _PIXELS + "\n" + "3," + ",".join(["0"] * 783) + ",dark\n",
     r"mnist_train.csv: row 1, column 'pixel783': 'dark' is not a number"),
    ("label," + _PIXELS + "\n" + "3," + ",".join(["0"] * 783) + ",\n", r"mnist_train.csv: row 1, column 'pixel783' is empty"),
    (_PIXELS + "\n" + ",".join(["0"] * 784) + "\n", r"mnist_train.csv: expected 785 columns \(the label, then 784"),
])
def test_unusable_mnist_csv_names_file_and_column(tmp_path, monkeypatch, train_text, message):
    monkeypatch.delenv("XPMLP_DATA", raising=False)
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "mnist_train.csv").write_text(train_text)
    (folder / "mnist_test.csv").write_text("1," + ",".join(["0"] * 784) + "\n")
    with pytest.raises(DataError, match=message):
        load_mnist(folder, download=False)


def test_unusable_heart_files_name_file_and_column(tmp_path):
    empty = tmp_path / "empty.data"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.data: the file is empty"):
        load_heart_disease(empty)
    no_target = tmp_path / "no_target.data"
    no_target.write_text("\n".join(row.rsplit(",", 1)[0] for row in HEART_ROWS) + "\n")
    with pytest.raises(DataError, match=r"no_target.data: expected 14 columns .*the last, 'num', is the target\), found 13"):
        load_heart_disease(no_target)
    header = tmp_path / "header.data"
    header.write_text(",".join(datasets.HEART_COLUMNS) + "\n" + HEART_ROWS[0] + "\n")
    with pytest.raises(DataError, match=r"header.data: row 1, column 'age': 'age' is not a number \(the file has no header row"):
        load_heart_disease(header)

"""fit on data larger than memory (xpmlp.chunked): memmaps, chunk files, Dask arrays; streamed, shuffled, bounded."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import xpmlp
from xpmlp import chunked
from xpmlp.chunked import Chunked, ChunkedData

CE = "softmax_cross_entropy"
N, D = 1000, 4


def _problem(n=N, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, D))
    y = np.argmax(X @ r.normal(size=(D, 3)), axis=1)
    return X, y


def _model(**kw):
    return xpmlp.MLP([D, 8, 3], activation="tanh", **{"device": "cpu", "dtype": "float64", "seed": 0, **kw})


def _memmap(tmp_path, X, name="X.npy"):
    np.save(tmp_path / name, X)
    return np.load(tmp_path / name, mmap_mode="r")


def _files(tmp_path, X, rows):
    paths = []
    for i, a in enumerate(range(0, len(X), rows)):
        paths.append(tmp_path / f"X{i}.npy")
        np.save(paths[-1], X[a:a + rows])
    return paths


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_a_memmap_without_shuffling_trains_bitwise_as_the_arrays(tmp_path):
    """Blocks (300 rows) that neither batches (32) nor the rows (1000) divide: the same batches, the same run."""
    X, y = _problem()
    w = np.random.default_rng(1).uniform(0.5, 2, size=N)
    kw = dict(loss=CE, epochs=2, batch_size=32, shuffle=False, sample_weight=w, verbose=0)
    arrays, streamed = _model(), _model()
    a = arrays.fit(X, y, **kw)
    b = streamed.fit(Chunked(_memmap(tmp_path, X), chunk_rows=300), y, **kw)
    assert _same(arrays, streamed)
    assert a["loss"] == b["loss"]


def test_chunk_files_without_shuffling_train_as_the_arrays_on_every_backend(case, tmp_path):
    """Each pair of blocks is copied to the case's device and its batches sliced there: the same batches as
    in memory, so the same updates, bitwise (as an iterable of the same batches is)."""
    X, y = _problem()
    kw = dict(loss=CE, epochs=2, batch_size=32, shuffle=False, validation_data=(X[:100], y[:100]), verbose=0)
    arrays, streamed = (xpmlp.MLP([D, 8, 3], seed=0, **case.model_kwargs()) for _ in range(2))
    a, b = arrays.fit(X, y, **kw), streamed.fit(Chunked(_files(tmp_path, X, 300), chunk_rows=128), y, **kw)
    assert _same(arrays, streamed)
    assert a["val_loss"] == b["val_loss"]


def test_fit_streams_a_bare_memmap_and_an_array_viewing_one(tmp_path, monkeypatch):
    X, y = _problem()
    mm = _memmap(tmp_path, X)
    view = np.asarray(mm)[:, :]  # an ndarray whose .base chain ends in the memmap
    assert type(view) is np.ndarray and chunked.is_out_of_core(view) and not chunked.is_out_of_core(X)
    made = []
    monkeypatch.setattr(chunked.ChunkedData, "adapt", lambda self: made.append(self))
    _model().fit(view, y, loss=CE, epochs=1, verbose=0)
    assert len(made) == 1


def _epoch_ids(data):
    """Each batch's row ids (carried by the rows' sample weights) and X rows, for one epoch."""
    ids, rows = [], []
    for xb, yb, wb, row_loss in data.epoch():
        assert row_loss.shape[0] == xb.shape[0] == wb.shape[0]
        ids.append(np.asarray(wb).astype(int))
        rows.append(np.asarray(xb))
    return ids, rows


def _data(X, y, seed, chunk_rows=300, batch_size=64, shuffle=True, model=None):
    model = model or _model()
    return ChunkedData(model, xpmlp.losses.get_loss(CE), X, y, batch_size, shuffle, seed, None, 0.0, None,
                        np.arange(N, dtype=float), []), model


def test_shuffling_uses_every_row_once_per_epoch_mixes_chunks_and_a_seed_repeats_it(tmp_path):
    X, y = _problem()
    mm = Chunked(_memmap(tmp_path, X), chunk_rows=300)
    data, _ = _data(mm, y, seed=5)
    epochs = [_epoch_ids(data) for _ in range(2)]
    for ids, rows in epochs:
        assert [len(b) for b in ids] == [64] * 15 + [40]
        assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(N))  # each row exactly once
        np.testing.assert_array_equal(np.concatenate(rows), X[np.concatenate(ids)])  # rows stay with their ids
        assert len(np.unique(np.concatenate(ids[:4]) // 300)) >= 2  # the first batches mix two blocks
    assert not np.array_equal(np.concatenate(epochs[0][0]), np.concatenate(epochs[1][0]))  # reshuffled
    again, _ = _data(mm, y, seed=5)
    assert all(np.array_equal(np.concatenate(_epoch_ids(again)[0]), np.concatenate(ids)) for ids, _ in epochs)
    other, _ = _data(mm, y, seed=6)
    assert not np.array_equal(np.concatenate(_epoch_ids(other)[0]), np.concatenate(epochs[0][0]))


def test_the_order_a_seed_gives_is_the_documented_one(tmp_path):
    """Blocks permuted, taken in pairs, each pair's rows permuted: re-derived here from the same rng draws."""
    X, y = _problem()
    data, _ = _data(Chunked(_memmap(tmp_path, X), chunk_rows=300), y, seed=9)
    got = np.concatenate(_epoch_ids(data)[0])
    rng = np.random.default_rng(9)
    blocks = [np.arange(a, min(a + 300, N)) for a in range(0, N, 300)]
    order = rng.permutation(len(blocks))
    expected = []
    for k in range(0, len(order), 2):
        rows = np.concatenate([blocks[b] for b in order[k:k + 2]])
        expected.append(rows[rng.permutation(len(rows))])
    np.testing.assert_array_equal(got, np.concatenate(expected))


def test_at_most_chunk_rows_are_read_at_once(tmp_path, monkeypatch):
    X, y = _problem()
    sizes, read = [], chunked._read
    monkeypatch.setattr(chunked, "_read", lambda part, a, b: sizes.append(b - a) or read(part, a, b))
    _model().fit(Chunked(_memmap(tmp_path, X), chunk_rows=128), y, loss=CE, epochs=2, batch_size=50, seed=0,
                 verbose=0)
    assert max(sizes) == 128 and sum(sizes) == 2 * (2 * N + 128)  # x and y per epoch, and the first block


def test_the_next_pair_is_read_on_a_background_thread_and_changes_nothing(tmp_path, monkeypatch):
    """prefetch=True (the default) reads each pair after the first of an epoch on the reader thread while
    the caller trains on the pair before; the run is bitwise the run without prefetching (the random
    draws stay on fit's thread, in the same order)."""
    import threading

    X, y = _problem()
    threads, read = [], chunked._read
    monkeypatch.setattr(chunked, "_read", lambda part, a, b: threads.append(threading.current_thread().name)
                        or read(part, a, b))
    kw = dict(loss=CE, epochs=2, batch_size=50, seed=4, verbose=0)
    ahead, inline = _model(), _model()
    ahead.fit(Chunked(_memmap(tmp_path, X), chunk_rows=128), y, **kw)
    on_reader = sum(name.startswith("xpmlp-chunk-reader") for name in threads)
    assert on_reader == len(threads) - 2  # all but the first block's x and y, read by fit as it starts
    threads.clear()
    inline.fit(Chunked(_memmap(tmp_path, X), chunk_rows=128, prefetch=False), y, **kw)
    assert threads and not any(name.startswith("xpmlp-chunk-reader") for name in threads)
    assert _same(ahead, inline)
    with pytest.raises(TypeError, match="prefetch must be True or False"):
        Chunked(_memmap(tmp_path, X), prefetch="yes")


def test_a_read_error_on_the_reader_thread_reaches_fit_and_leaves_no_thread(tmp_path, monkeypatch):
    import threading

    X, y = _problem()
    calls, read = [], chunked._read

    def failing(part, a, b):
        calls.append(a)
        if len(calls) == 9:  # in the first epoch, on the reader thread
            raise OSError("disk went away")
        return read(part, a, b)

    monkeypatch.setattr(chunked, "_read", failing)
    with pytest.raises(OSError, match="disk went away"):
        _model().fit(Chunked(_memmap(tmp_path, X), chunk_rows=128), y, loss=CE, epochs=2, batch_size=50, verbose=0)
    assert not any(t.name.startswith("xpmlp-chunk-reader") for t in threading.enumerate())


def test_chunk_files_train_as_the_memmap(tmp_path):
    """Files of 300 rows are the memmap's blocks of 300 rows: the same seeded run, bitwise."""
    X, y = _problem()
    kw = dict(loss=CE, epochs=2, batch_size=32, seed=3, verbose=0)
    from_files, from_memmap = _model(), _model()
    from_files.fit([str(p) for p in _files(tmp_path, X, 300)], y, **kw)
    from_memmap.fit(Chunked(_memmap(tmp_path, X), chunk_rows=300), y, **kw)
    assert _same(from_files, from_memmap)
    # y as a matching list of files, and a generator of paths through Chunked: the same again
    ys = [tmp_path / f"y{i}.npy" for i in range(4)]
    for i, p in enumerate(ys):
        np.save(p, y[300 * i:300 * i + 300])
    paired = _model()
    paired.fit(Chunked((p for p in _files(tmp_path, X, 300)), chunk_rows=1000), ys, **kw)
    assert _same(paired, from_memmap)


def test_a_dask_array_trains_as_the_memmap(tmp_path):
    da = pytest.importorskip("dask.array")
    X, y = _problem()
    kw = dict(loss=CE, epochs=2, batch_size=32, seed=3, verbose=0)
    from_dask, from_memmap = _model(), _model()
    from_dask.fit(Chunked(da.from_array(X, chunks=(250, D)), chunk_rows=300), da.from_array(y, chunks=250), **kw)
    from_memmap.fit(Chunked(_memmap(tmp_path, X), chunk_rows=300), y, **kw)
    assert _same(from_dask, from_memmap)
    bare_dask, bare_memmap = _model(), _model()  # given as they are: read with chunk_rows=CHUNK_ROWS
    bare_dask.fit(da.from_array(X, chunks=(250, D)), y, **kw)
    bare_memmap.fit(_memmap(tmp_path, X, "X2.npy"), y, **kw)
    assert _same(bare_dask, bare_memmap)


def test_bad_out_of_core_inputs_get_clear_errors(tmp_path):
    X, y = _problem()
    paths = _files(tmp_path, X, 300)
    fit = lambda X, y, **kw: _model().fit(X, y, loss=CE, verbose=0, **kw)  # noqa: E731
    with pytest.raises(FileNotFoundError, match=r"chunk 1 of X: no such file .*missing\.npy"):
        fit([paths[0], tmp_path / "missing.npy"], y[:300])
    with pytest.raises(ValueError, match="X and y have different lengths: 1000 and 999"):
        fit(paths, y[:-1])
    with pytest.raises(ValueError, match="chunk 2 of y has 299 rows but chunk 2 of X has 300"):
        fit(paths, [y[:300], y[300:600], y[600:899], y[899:]])
    with pytest.raises(ValueError, match="y has 2 chunks but X has 4"):
        fit(paths, [y[:500], y[500:]])
    np.save(tmp_path / "narrow.npy", X[:10, :3])
    with pytest.raises(ValueError, match=r"chunk 1 of X .*narrow\.npy.* has 3 features but chunk 0 of X .* has 4"):
        fit([paths[0], tmp_path / "narrow.npy"], y[:310])
    np.save(tmp_path / "text.npy", np.array([["a"] * D] * 5))
    with pytest.raises(TypeError, match=r"chunk 0 of X .*text\.npy.* has dtype <U1: it must be real numbers"):
        fit([tmp_path / "text.npy"], y[:5])
    np.save(tmp_path / "objects.npy", np.array([[None] * D] * 5), allow_pickle=True)
    with pytest.raises(ValueError, match=r"chunk 0 of X .*objects\.npy.* is not a numeric \.npy array"):
        fit([tmp_path / "objects.npy"], y[:5])
    with pytest.raises(ValueError, match="out of core.*validation_split"):
        fit(paths, y, validation_split=0.2)
    with pytest.raises(ValueError, match="class_weight='balanced'"):
        fit(paths, y, class_weight="balanced")
    with pytest.raises(ValueError, match="Standardize.*adapt"):
        _model(standardize=True).fit(paths, y, loss=CE, verbose=0)
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        Chunked(paths, chunk_rows=0)
    mm = _memmap(tmp_path, X.copy())
    bad = np.lib.format.open_memmap(tmp_path / "nan.npy", mode="w+", shape=X.shape)
    bad[:] = X
    bad[700, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit(Chunked(bad, chunk_rows=300), y, shuffle=False)
    assert np.array_equal(mm, X)  # caller data never modified


def test_validation_data_stays_in_memory_and_is_reported(tmp_path):
    X, y = _problem()
    Xv, yv = _problem(200, seed=1)
    kw = dict(loss=CE, epochs=2, batch_size=32, shuffle=False, validation_data=(Xv, yv), metrics=["accuracy"],
              verbose=0)
    arrays, streamed = _model(), _model()
    a, b = arrays.fit(X, y, **kw), streamed.fit(_files(tmp_path, X, 300), y, **kw)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert a[key] == b[key], key


CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import xpmlp
    from xpmlp.chunked import Chunked

    path, limit, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # warm up before the limit: lazy imports, and OpenBLAS's buffers (allocated at its first call)
    warm = xpmlp.MLP([64, 32, 2], device="cpu", dtype="float64", seed=0)
    warm.fit(np.ones((2048, 64), np.float32), np.zeros(2048, int), loss="softmax_cross_entropy", batch_size=1024,
             verbose=0)
    def data_bytes():
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmData")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + limit, resource.RLIM_INFINITY))
    X = np.load(path + "X.npy", mmap_mode="r")
    y = np.load(path + "y.npy")
    try:
        np.array(X)  # the whole set does not fit under the limit
    except MemoryError:
        pass
    else:
        raise SystemExit("the memory limit did not hold: X was read whole")
    model = xpmlp.MLP([X.shape[1], 32, 2], device="cpu", dtype="float64", seed=0)
    model.fit(Chunked(X, chunk_rows=rows), y, loss="softmax_cross_entropy", optimizer="adam", epochs=1,
              batch_size=1024, seed=0, verbose=0)
    print(xpmlp.train.evaluate(model, X[:20000], y[:20000], metrics=["accuracy"])["accuracy"])
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and /proc/self/status are Linux's")
def test_training_on_a_memmap_four_times_larger_than_the_memory_limit_matches_in_memory_accuracy(tmp_path):
    """A child process with 64 MB of data memory above its start trains on a 256 MB memmap (float32, 64
    features, 1M rows), streamed in 8192-row blocks (2 MB; a pair
    of them, its float64 copy and the batches' work stay well under the limit), and reaches the accuracy of the same training in memory
    (here, without a limit) within 1 point.

    RLIMIT_DATA, not RLIMIT_AS: a file's read-only mapping counts towards the address space but not towards
    data. The model is float64, so the in-memory path would convert X into a 512 MB array and fail under the
    limit (a float32 model on NumPy would use the memmap's pages as they are, which proves nothing)."""
    n, d, limit = 2**20, 64, 64 * 2**20
    r = np.random.default_rng(0)
    teacher = r.normal(size=d).astype(np.float32)
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    y = np.empty(n, dtype=np.int64)
    for a in range(0, n, 2**16):
        X[a:a + 2**16] = r.normal(size=(2**16, d)).astype(np.float32)
        y[a:a + 2**16] = X[a:a + 2**16] @ teacher > 0
    X.flush()
    np.save(tmp_path / "y.npy", y)
    assert X.nbytes >= 4 * limit
    # one BLAS thread (each thread's buffers count as data); glibc's fixed mmap threshold returns every freed
    # large array to the system at once (its adaptive one may keep freed pairs on the heap, fragmented)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": str(2**17)}
    out = subprocess.run([sys.executable, "-c", CHILD, f"{tmp_path}/", str(limit), str(2**13)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout
    streamed = float(out.stdout.split()[-1])
    model = xpmlp.MLP([d, 32, 2], device="cpu", dtype="float64", seed=0)
    model.fit(np.array(X), y, loss=CE, optimizer="adam", epochs=1, batch_size=1024, seed=0, verbose=0)
    in_memory = xpmlp.train.evaluate(model, X[:20000], y[:20000], metrics=["accuracy"])["accuracy"]
    assert in_memory > 0.95
    assert abs(streamed - in_memory) <= 0.01, (streamed, in_memory)


@pytest.mark.fakegpu
def test_on_cupy_each_pair_is_copied_from_pinned_memory_on_a_second_stream_while_the_pair_before_trains(tmp_path):
    """On the CuPy stand-in (whose second-stream copies stay NaN until ordered before use): every
    streamed pair's X and y go through Backend.copy_ahead (pinned source, second stream); the next
    pair's copy starts before the first batch of the pair before it trains; the host syncs do not
    grow with the number of batches; and the run is bitwise the same as on NumPy. Not run on a GPU."""
    import fake_cupy
    from xpmlp.callbacks import Callback

    X, y = _problem()
    path = _memmap(tmp_path, X)

    class Submits(Callback):  # at each batch's end: how many pairs had been submitted this epoch
        def on_epoch_begin(self, epoch, logs=None):
            self.start = len(fake_cupy.COUNTS.copies)
            self.seen = []

        def on_batch_end(self, batch, logs=None):
            self.seen.append((len(fake_cupy.COUNTS.copies) - self.start) // 2)  # X and y per pair

    def run(batch_size, device):
        spy = Submits()
        model = xpmlp.MLP([D, 8, 3], activation="tanh", device=device, dtype="float64", seed=0)
        fake_cupy.COUNTS.reset()
        model.fit(Chunked(path, chunk_rows=128), y, loss=CE, epochs=2, batch_size=batch_size, seed=5, verbose=0,
                  callbacks=[spy])
        return model, spy, list(fake_cupy.COUNTS.copies), fake_cupy.COUNTS.sync_reasons.copy()

    with fake_cupy.installed():
        run(10, "cuda")  # once first: the process's one-time reads (the kernels' first use) are not counted
        _, _, _, syncs10 = run(10, "cuda")
        model, spy, copies, syncs50 = run(50, "cuda")
        weights = [xpmlp.to_numpy(w) for w in model.get_weights()]
    # 1000 rows in blocks of 128: 4 pairs (256, 256, 256, 232 rows) per epoch, X and y each
    assert copies == [("second", True)] * (2 * 4 * 2)
    # batches of 50: each pair trains 5 (a pair's last rows are carried to the next: 256 -> 250, 6 + 256
    # -> 250, 12 + 256 -> 250, 18 + 232 = 250)
    pair_of_batch = [k // 5 for k in range(20)]
    assert spy.seen == [min(p + 2, 4) for p in pair_of_batch]
    assert syncs10 == syncs50, (syncs10, syncs50)  # five times the batches, the same host syncs
    assert syncs50["Event.synchronize"] == 2 * 2  # the third and fourth pairs refill a slot, each epoch
    on_numpy = _model()
    on_numpy.fit(Chunked(path, chunk_rows=128), y, loss=CE, epochs=2, batch_size=50, seed=5, verbose=0)
    # the same batches as on NumPy (a copy not ordered before use would have fed NaN); the fused CuPy
    # step's kernels round differently from NumPy's operations
    for a, b in zip(weights, on_numpy.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_a_bad_pair_stops_the_reader_while_its_error_is_still_held(tmp_path):
    """A NaN in a later block raises when its pair is checked; the reader thread (reading ahead) is
    already gone while the exception - which holds fit's frames - is still alive (as in a REPL)."""
    import threading

    X, y = _problem()
    X[900, 1] = np.nan
    with pytest.raises(ValueError, match="NaN") as caught:
        _model().fit(Chunked(_memmap(tmp_path, X), chunk_rows=128), y, loss=CE, epochs=1, batch_size=50,
                     shuffle=False, verbose=0)
    assert caught.value.__traceback__ is not None  # still held here
    assert not any(t.name.startswith("xpmlp-chunk-reader") for t in threading.enumerate())


def test_reading_a_pair_holds_at_most_the_pair_and_one_block(tmp_path):
    """Blocks are scattered into their permuted places as they are read: tracemalloc's peak while a
    pair is read stays near one pair plus one block (the concatenation and its permuted copy
    together would be two pairs)."""
    import tracemalloc

    r = np.random.default_rng(0)
    X = r.normal(size=(4000, 50))
    y = np.zeros(4000, dtype=np.int64)
    data = ChunkedData(xpmlp.MLP([50, 4, 3], device="cpu", dtype="float64", seed=0), xpmlp.losses.get_loss(CE),
                        Chunked(_memmap(tmp_path, X), chunk_rows=1000), y, 64, True, 3, None, 0.0, None, None, [])
    pair = [data.blocks[2], data.blocks[0]]
    perm = np.random.default_rng(1).permutation(2000)
    tracemalloc.start()
    got = data._read_pair(pair, perm)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_pair = 2000 * 50 * 8
    assert peak < 1.6 * one_pair, peak / one_pair
    expected = np.concatenate([X[2000:3000], X[0:1000]])[perm]
    np.testing.assert_array_equal(got[0], expected)
    np.testing.assert_array_equal(got[1], np.zeros(2000, dtype=np.int64))

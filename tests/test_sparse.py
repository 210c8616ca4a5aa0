"""Sparse input (issue 15, point 5): SciPy CSR/CSC matrices train, predict and evaluate without
being densified; the first Dense layer multiplies sparse by dense (SciPy on the CPU, cupyx on CuPy).

The data set is text-like: TF-IDF rows of a bag of words drawn from a seeded Zipf vocabulary
(about 4% of the entries stored), built here with no download.

Sparse against dense. Each sparse run is compared with the same run on the dense copy of the
matrix. They compute the same products of the same stored values, but not in the same order
(BLAS's GEMM sums over every column, zeros included; SciPy's CSR kernel over the stored values,
row by row), so the results differ by rounding, which a few Adam steps carry on. The tolerance
is an absolute 64 units of roundoff (float32: 7.6e-6, float64: 1.4e-14) on weights and outputs of
order 0.1 to 1; the differences seen are about 100 times smaller. Runs that go through the same
sparse products (every sparse format, the fused and the reference step) are compared bitwise.
"""

from __future__ import annotations

import inspect
import tracemalloc
import warnings

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

import fake_cupy  # noqa: E402
import xpmlp  # noqa: E402
from xpmlp import to_numpy  # noqa: E402
from xpmlp.backend import DeviceMismatchError  # noqa: E402
from xpmlp.layers import Dense, Dropout, ReLU  # noqa: E402
from xpmlp.step import FusedStep, ReferenceStep, make_train_step  # noqa: E402

N, VOCAB, CLASSES = 240, 400, 3


def _counts(n=N, vocab=VOCAB, seed=0):
    """Word counts (n, vocab), int64 CSR: documents of 5-29 words from a Zipf vocabulary."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 30, n)
    p = 1.0 / np.arange(1, vocab + 1)
    words = rng.choice(vocab, size=int(lengths.sum()), p=p / p.sum())
    rows = np.repeat(np.arange(n), lengths)
    return sp.coo_matrix((np.ones(words.size, dtype=np.int64), (rows, words)), shape=(n, vocab)).tocsr()


def _tfidf(counts):
    """Log-scaled term frequency times smoothed inverse document frequency, rows of unit length (CSR)."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    x = counts.astype(np.float64)
    x.data = np.log1p(x.data) * idf[x.indices]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / norms) @ x)


COUNTS = _counts()
X = _tfidf(COUNTS)
_R = np.random.default_rng(1).normal(size=(VOCAB, CLASSES))
Y = np.argmax(X @ _R * 5 + np.random.default_rng(2).normal(size=(N, CLASSES)), axis=1)
Y_REG = X @ _R[:, 0]
W = np.random.default_rng(3).uniform(0.2, 3.0, N)  # sample weights
X_VAL, Y_VAL = X[:60], Y[:60]


def _tol(dtype):
    return 64 * float(np.finfo(dtype).eps)


def _model(dtype="float64", device="cpu", hidden=16, out=CLASSES):
    return xpmlp.MLP([VOCAB, hidden, out], dtype=dtype, device=device, seed=0)


def _fit(x, dtype="float64", device="cpu", **kw):
    model = _model(dtype, device)
    options = dict(loss="softmax_cross_entropy", epochs=3, batch_size=32, seed=5, sample_weight=W)
    options.update(kw)
    history = model.fit(x, Y, **options)
    return model, history


def _assert_close(a, b, dtype):
    np.testing.assert_allclose(a, b, rtol=0, atol=_tol(dtype))


def _assert_same_weights(a, b):
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(p, q)


# -- sparse against dense ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_training_matches_dense(fmt, dtype):
    xs = X.asformat(fmt)
    sparse, hs = _fit(xs, dtype, validation_data=(X_VAL.asformat(fmt), Y_VAL), metrics=["accuracy"])
    dense, hd = _fit(X.toarray(), dtype, validation_data=(X_VAL.toarray(), Y_VAL), metrics=["accuracy"])
    for p, q in zip(sparse.get_weights(), dense.get_weights()):
        _assert_close(p, q, dtype)
    for key in ("loss", "val_loss"):
        _assert_close(hs[key], hd[key], dtype)
    assert hs["accuracy"] == hd["accuracy"] and hs["val_accuracy"] == hd["val_accuracy"]
    probs = sparse.predict(xs, batch_size=50)  # several inference batches
    assert isinstance(probs, np.ndarray) and probs.shape == (N, CLASSES) and probs.dtype == np.dtype(dtype)
    _assert_close(probs, dense.predict(X.toarray(), batch_size=50), dtype)
    _assert_close(probs, dense.predict(xs), dtype)  # a model trained on dense data predicts sparse data too
    got = sparse.evaluate(xs, Y, metrics=["accuracy"], batch_size=70)
    want = dense.evaluate(X.toarray(), Y, metrics=["accuracy"], batch_size=70)
    _assert_close(got["loss"], want["loss"], dtype)
    assert got["accuracy"] == want["accuracy"]


def test_sparse_regression_with_a_validation_split_and_no_shuffle_matches_dense():
    def run(x):
        model = _model("float64", out=1)
        history = model.fit(x, Y_REG, loss="mse", epochs=4, batch_size=20, seed=2, validation_split=0.25,
                            shuffle=False, metrics=["r2", lambda y, p: float(np.mean(np.abs(y - p)))])
        return model, history

    (sparse, hs), (dense, hd) = run(X.tocsc()), run(X.toarray())
    for p, q in zip(sparse.get_weights(), dense.get_weights()):
        _assert_close(p, q, "float64")
    _assert_close(hs["val_loss"], hd["val_loss"], "float64")
    _assert_close(hs["val_r2"], hd["val_r2"], "float64")
    _assert_close(hs["val_<lambda>"], hd["val_<lambda>"], "float64")
    _assert_close(sparse.predict(X), dense.predict(X.toarray()), "float64")


def test_training_actually_learns_from_sparse_data():
    model, history = _fit(X, "float32", epochs=30, sample_weight=None, optimizer=xpmlp.Adam(lr=1e-2))
    assert history["loss"][-1] < 0.1 * history["loss"][0]
    assert np.mean(np.argmax(to_numpy(model.predict(X)), axis=1) == Y) > 0.9


# -- every sparse route gives the same run, bit for bit ---------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_sparse_format_and_integer_counts_give_the_same_run(dtype):
    reference, _ = _fit(COUNTS.astype(dtype), dtype)
    for x in (COUNTS, sp.csr_array(COUNTS), COUNTS.tocsc(), sp.csc_array(COUNTS), COUNTS.tocoo(), COUNTS.tolil()):
        model, _ = _fit(x, dtype)
        _assert_same_weights(model, reference)
        np.testing.assert_array_equal(model.predict(x), reference.predict(COUNTS))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_step_equals_the_reference_step_on_sparse_batches(dtype, monkeypatch):
    model = _model(dtype)
    model.build(VOCAB)
    loss, optimizer = xpmlp.losses.get_loss("softmax_cross_entropy"), xpmlp.Adam()
    assert isinstance(make_train_step(model, loss, optimizer), FusedStep)
    fused, _ = _fit(X, dtype, epochs=2)
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    assert isinstance(make_train_step(model, loss, optimizer), ReferenceStep)
    reference, _ = _fit(X, dtype, epochs=2)
    _assert_same_weights(fused, reference)


def test_duplicate_entries_are_summed_and_the_callers_matrix_is_untouched():
    coo = COUNTS.tocoo()
    # every stored value split in two halves, stored twice in its row: a CSR matrix with duplicates
    rows = np.concatenate([coo.row, coo.row])
    order = np.argsort(rows, kind="stable")
    doubled = sp.csr_matrix((np.concatenate([coo.data, coo.data])[order] / 2.0,
                             np.concatenate([coo.col, coo.col])[order], 2 * COUNTS.indptr), shape=COUNTS.shape)
    assert doubled.nnz == 2 * COUNTS.nnz and not doubled.has_canonical_format
    before = [a.copy() for a in (doubled.data, doubled.indices, doubled.indptr)]
    model, _ = _fit(doubled)
    reference, _ = _fit(COUNTS.astype(np.float64))
    _assert_same_weights(model, reference)
    for a, b in zip((doubled.data, doubled.indices, doubled.indptr), before):
        np.testing.assert_array_equal(a, b)


# -- memory: the matrix is never dense --------------------------------------------------------------
def test_a_matrix_too_large_to_densify_trains_and_predicts_sparse(monkeypatch):
    """400 MB dense (2000 x 50000 float32), 1 MB sparse: no dense copy, by two independent checks.

    SciPy's own densifying methods raise, and NumPy's allocations (which tracemalloc sees) peak at
    a few MB: the weights, the optimiser's state, one batch.
    """
    import scipy.sparse._base as base
    import scipy.sparse._compressed as compressed
    import scipy.sparse._coo as coo

    def refuse(self, *a, **k):
        raise AssertionError("a sparse matrix was densified")

    for cls, name in ((compressed._cs_matrix, "toarray"), (coo._coo_base, "toarray"), (base._spbase, "toarray"),
                      (base._spbase, "todense"), (base.spmatrix, "todense")):
        monkeypatch.setattr(cls, name, refuse)
    n, d = 2000, 50_000
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(n), 20)
    x = sp.csr_matrix((rng.random(rows.size, dtype=np.float32), (rows, rng.integers(0, d, rows.size))), shape=(n, d))
    y = rng.integers(0, 2, n)
    dense_bytes = n * d * 4
    model = xpmlp.MLP([d, 4, 2], dtype="float32", device="cpu", seed=0)
    tracemalloc.start()
    try:
        model.fit(x, y, loss="softmax_cross_entropy", epochs=1, batch_size=256, validation_data=(x[:500], y[:500]))
        p = model.predict(x)
        model.evaluate(x, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.shape == (n, 2)
    assert peak < dense_bytes / 20, f"peak {peak / 1e6:.1f} MB while the dense matrix is {dense_bytes / 1e6:.0f} MB"


# -- what sparse input refuses, clearly --------------------------------------------------------------
def test_a_first_layer_that_would_densify_is_refused_by_name():
    with pytest.raises(ValueError, match="first layer is Standardize, not Dense.*drop standardize=True.*MaxAbsScaler"):
        xpmlp.MLP([VOCAB, 8, CLASSES], standardize=True, device="cpu", seed=0).fit(X, Y, loss="softmax_cross_entropy")
    dropout_first = xpmlp.Sequential([Dropout(0.1), Dense(8), ReLU(), Dense(CLASSES)], device="cpu", seed=0)
    with pytest.raises(ValueError, match="first layer is Dropout, not Dense"):
        dropout_first.fit(X, Y, loss="softmax_cross_entropy")
    dropout_first.fit(X.toarray(), Y, loss="softmax_cross_entropy")  # dense data: fine
    with pytest.raises(ValueError, match="X is a sparse matrix, but the model's first layer is Dropout"):
        dropout_first.predict(X)
    with pytest.raises(ValueError, match="X_val is a sparse matrix"):
        dropout_first.fit(X.toarray(), Y, validation_data=(X_VAL, Y_VAL))


@pytest.mark.parametrize("lib", ["torch", "array_api_strict"])
def test_backends_without_sparse_matrices_refuse_them(lib):
    xp = pytest.importorskip(lib)
    model = xpmlp.MLP([VOCAB, 8, CLASSES], xp=xp, seed=0)
    with pytest.raises(TypeError, match="only with the NumPy .* and CuPy .* backends.*toarray"):
        model.fit(X, Y, loss="softmax_cross_entropy")


def test_bad_sparse_input_is_refused_with_the_reason():
    model, _ = _fit(X, epochs=1)
    bad = X.copy()
    bad.data[7] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinity \\(in its stored values"):
        _model().fit(bad, Y, loss="softmax_cross_entropy")
    bad.data[7] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        model.predict(bad)
    big = sp.csr_matrix(np.array([[0.0, 1e39]]))  # finite in float64, inf in float32
    with pytest.raises(ValueError, match="after conversion to float32"), np.errstate(over="ignore"):
        xpmlp.MLP([2, 3, 2], device="cpu", seed=0).predict(big)
    with pytest.raises(ValueError, match="X has 399 features but the model expects 400"):
        model.predict(X[:, :399])
    with pytest.raises(ValueError, match="X has no samples"):
        model.predict(X[:0])
    with pytest.raises(ValueError, match="2-D"):
        model.predict(sp.coo_array(np.ones(VOCAB)))
    with pytest.raises(ValueError, match="real numbers"):
        model.predict(X.astype(np.complex128))
    with pytest.raises(ValueError, match="different lengths"):
        model.evaluate(X, Y[:-1])


def test_the_unscaled_input_warning_reads_the_stored_values():
    def warned(x):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xpmlp.MLP([x.shape[1], 4, 2], device="cpu", seed=0).fit(x, np.arange(x.shape[0]) % 2,
                                                                     loss="softmax_cross_entropy")
        return [str(w.message) for w in caught if "unscaled" in str(w.message)]

    assert warned(X) == []
    scaled = X.copy()
    scaled.data[3] = -500.0  # the largest |value| is a stored one
    assert "largest absolute value is 500" in warned(scaled)[0]
    counts = COUNTS.astype(np.float64) * 100  # 0-255 would say pixels; counts x 100 reach well past
    message = warned(counts)
    assert message and f"{counts.max():g}" in message[0]


def test_sparse_statistics_are_those_of_the_dense_matrix():
    """The largest and smallest values (for the warning above) count the implicit zeros too."""
    from xpmlp.train import prepare_X

    negative = -X  # every stored value negative: the largest value is an implicit 0
    full = sp.csr_matrix(np.arange(1.0, 7.0).reshape(2, 3))  # no implicit zero
    empty = sp.csr_matrix((3, VOCAB))  # nothing stored
    for x in (X, negative, full, empty):
        model = xpmlp.MLP([x.shape[1], 2, 2], dtype="float64", device="cpu", seed=0)
        _, high, low = prepare_X(model, x, stats=True)
        dense = x.toarray()
        assert (high, low) == (dense.max(), dense.min())


# -- the GPU path, on the CuPy stand-in -------------------------------------------------------------
@pytest.fixture
def fake():
    with fake_cupy.installed(device_count=2) as cupy:
        fake_cupy.COUNTS.reset()
        yield cupy


def test_fake_cupyx_keeps_the_signatures_of_real_cupyx():
    real = pytest.importorskip("cupyx.scipy.sparse")
    from cupyx.scipy.sparse import _compressed

    def params(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    for cls, fake_cls in ((real.csr_matrix, fake_cupy.csr_matrix), (real.csc_matrix, fake_cupy.csc_matrix)):
        for name in fake_cupy.SPARSE_METHODS_CHECKED:
            # csr_matrix.__init__ is spmatrix's (*args, **kwargs) wrapper around the compressed one's
            want = _compressed._compressed_sparse_matrix.__init__ if name == "__init__" else getattr(cls, name)
            assert params(want) == params(getattr(fake_cls, name)), (cls.__name__, name)
        assert isinstance(cls.device, property) and isinstance(cls.T, property)
    assert params(real.issparse) == params(fake_cupy.issparse)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparse_training_on_the_fake_gpu_matches_the_cpu(fake, dtype):
    cpu, _ = _fit(X, dtype)
    gpu, history = _fit(X.tocsc(), dtype, device="cuda:1", validation_data=(X_VAL, Y_VAL))
    assert gpu.backend.name == "cupy" and gpu.backend.device == fake.cuda.Device(1)
    for p, q in zip(gpu.get_weights(), cpu.get_weights()):
        _assert_close(p, q, dtype)
    # cupyx reads each gathered batch's count of stored values back: one host sync per batch
    assert fake_cupy.COUNTS.sync_reasons["sparse row gather (nnz)"] == 3 * -(-N // 32)
    probs = to_numpy(gpu.predict(X))
    _assert_close(probs, cpu.predict(X), dtype)


def test_cupyx_matrices_are_taken_on_their_own_device_only(fake):
    import cupyx.scipy.sparse as cusparse

    with fake.cuda.Device(1):
        on_gpu1 = cusparse.csr_matrix(X.tocsc())
    model = _model(device="cuda:1")
    model.fit(on_gpu1, Y, loss="softmax_cross_entropy", epochs=1)
    reference = _model(device="cuda:1")
    reference.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    _assert_same_weights(model, reference)
    with pytest.raises(DeviceMismatchError, match="on device .*1.* but the model is on .*0"):
        _model(device="cuda:0").fit(on_gpu1, Y, loss="softmax_cross_entropy")
    with pytest.raises(DeviceMismatchError, match="cupyx \\(GPU\\) sparse matrix but the model runs on numpy"):
        _model().fit(on_gpu1, Y, loss="softmax_cross_entropy")

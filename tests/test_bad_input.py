"""Each bad input raises an error that names the problem, and leaves the caller's arrays as they were."""

import numpy as np
import pytest

import xpmlp

rng = np.random.default_rng(0)
X_OK = rng.normal(size=(6, 3))
LABELS_OK = np.array([0, 1, 2, 0, 1, 2])


def _with_nan(a, i=(1, 1)):
    a = a.copy()
    a[i] = np.nan
    return a


def _with_inf(a):
    a = a.copy()
    a[2, 0] = np.inf
    return a


BAD_FIT = [
    # id, X, y, fit kwargs, error type, message pattern
    ("X-1d", X_OK[:, 0], LABELS_OK, {}, ValueError, r"X must be 2-D \(n_samples, n_features\), got shape \(6,\).*reshape"),
    ("X-3d", X_OK.reshape(6, 3, 1), LABELS_OK, {}, ValueError, r"X must be 2-D.*\(6, 3, 1\)"),
    ("X-features", rng.normal(size=(6, 4)), LABELS_OK, {}, ValueError, "X has 4 features but the model expects 3"),
    ("X-empty", np.zeros((0, 3)), np.zeros(0, dtype=int), {}, ValueError, "X has no samples"),
    ("X-complex", X_OK + 1j, LABELS_OK, {}, ValueError, "X must hold real numbers, got dtype complex128"),
    ("X-strings", np.full((6, 3), "a"), LABELS_OK, {}, ValueError, "X must hold real numbers"),
    ("lengths", X_OK, LABELS_OK[:5], {}, ValueError, "X and y have different lengths: 6 and 5"),
    ("X-nan", _with_nan(X_OK), LABELS_OK, {}, ValueError, "X contains NaN or infinity"),
    ("X-inf", _with_inf(X_OK), LABELS_OK, {}, ValueError, "X contains NaN or infinity"),
    ("y-nan", X_OK, _with_nan(rng.normal(size=(6, 3))), {"loss": "mse"}, ValueError, "y contains NaN or infinity"),
    ("labels-float", X_OK, np.array([0, 1, 2.5, 0, 1, 2]), {}, ValueError, "class labels must be integers; y holds non-integer"),
    ("labels-range", X_OK, np.array([0, 1, 3, 0, 1, 2]), {}, ValueError, r"class labels must be integers in \[0, 3\).*from 0 to 3"),
    ("labels-negative", X_OK, np.array([0, -1, 2, 0, 1, 2]), {}, ValueError, r"in \[0, 3\).*from -1 to 2"),
    ("labels-strings", X_OK, np.array(list("abcabc")), {}, ValueError, "y must hold real numbers, got dtype <U1"),
    ("labels-onehot-width", X_OK, np.eye(4)[[0, 1, 2, 3, 0, 1]], {}, ValueError, "y has 4 columns but the model has 3 outputs"),
    ("y-width", X_OK, rng.normal(size=(6, 2)), {"loss": "mse"}, ValueError, r"y has shape \(6, 2\) but the model has 3 output"),
    ("bce-range", X_OK, rng.normal(size=(6, 3)) * 5, {"loss": "bce"}, ValueError, r"targets must lie in \[0, 1\]"),
    ("loss-name", X_OK, LABELS_OK, {"loss": "hinge"}, ValueError, "unknown loss 'hinge'; valid names: .*softmax_cross_entropy"),
    ("optimizer-name", X_OK, LABELS_OK, {"optimizer": "lbfgs"}, ValueError, "unknown optimizer 'lbfgs'; valid names: adagrad, adam"),
    ("batch-zero", X_OK, LABELS_OK, {"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
    ("batch-negative", X_OK, LABELS_OK, {"batch_size": -4}, ValueError, "batch_size must be a positive integer, got -4"),
    ("batch-float", X_OK, LABELS_OK, {"batch_size": 2.5}, ValueError, "batch_size must be a positive integer, got 2.5"),
    ("epochs-zero", X_OK, LABELS_OK, {"epochs": 0}, ValueError, "epochs must be a positive integer"),
]


@pytest.mark.parametrize("X,y,kwargs,error,pattern", [c[1:] for c in BAD_FIT], ids=[c[0] for c in BAD_FIT])
def test_bad_fit_input_raises_and_leaves_data_alone(X, y, kwargs, error, pattern):
    model = xpmlp.MLP([3, 4, 3], seed=0, device="cpu")
    before = model.get_weights()
    X_copy, y_copy = X.copy(), y.copy()
    kwargs = {"loss": "softmax_cross_entropy", **kwargs}
    with pytest.raises(error, match=pattern):
        model.fit(X, y, **kwargs)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    for a, b in zip(model.get_weights(), before):  # nothing trained on bad input
        np.testing.assert_array_equal(a, b)


def test_fit_never_modifies_the_callers_arrays(case):
    X = rng.normal(size=(20, 3)).astype(case.dtype)
    y = rng.integers(0, 3, size=20)
    X_copy, y_copy = X.copy(), y.copy()
    model = xpmlp.MLP([3, 4, 3], seed=0, **case.model_kwargs())
    model.fit(X, y, loss="softmax_cross_entropy", epochs=2, batch_size=7)
    model.predict(X)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)


def test_device_arrays_are_not_modified(case):
    X = case.asarray(rng.normal(size=(20, 3)))
    y = case.asarray(rng.normal(size=(20, 3)))
    X_copy, y_copy = xpmlp.to_numpy(X).copy(), xpmlp.to_numpy(y).copy()
    model = xpmlp.MLP([3, 4, 3], seed=0, **case.model_kwargs())
    model.fit(X, y, loss="mse", epochs=2, batch_size=7)
    np.testing.assert_array_equal(xpmlp.to_numpy(X), X_copy)
    np.testing.assert_array_equal(xpmlp.to_numpy(y), y_copy)


def test_first_fit_needs_a_loss():
    model = xpmlp.MLP([3, 3], seed=0, device="cpu")
    with pytest.raises(ValueError, match="fit needs a loss on its first call"):
        model.fit(X_OK, LABELS_OK)


def test_predict_checks_its_input():
    model = xpmlp.MLP([3, 3], seed=0, device="cpu")
    with pytest.raises(ValueError, match="X has 2 features but the model expects 3"):
        model.predict(X_OK[:, :2])
    with pytest.raises(ValueError, match="X contains NaN"):
        model.predict(_with_nan(X_OK))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.predict(X_OK, batch_size=0)
    unbuilt = xpmlp.Sequential([xpmlp.Dense(2)], device="cpu")
    with pytest.raises(ValueError, match="no weights yet"):
        unbuilt.predict(X_OK)


@pytest.mark.parametrize("make,pattern", [
    (lambda: xpmlp.MLP([3, 4, 2], activation="relu6"), "unknown activation 'relu6'; valid names: .*tanh"),
    (lambda: xpmlp.MLP([3, 4, 4, 2], activation=["relu"]), "got 1 activations for 2 hidden layers"),
    (lambda: xpmlp.MLP([3]), "at least an input and an output"),
    (lambda: xpmlp.MLP([3, 0, 2]), "all positive"),
    (lambda: xpmlp.MLP([3, 2], dtype="float16"), r"dtype must be one of \('float32', 'float64'\)"),
    (lambda: xpmlp.Dense(0), "Dense units must be a positive integer"),
    (lambda: xpmlp.Sequential([xpmlp.ReLU()]), "needs at least one Dense layer"),
    (lambda: xpmlp.Sequential(["dense"]), "Sequential takes Layer objects"),
])
def test_bad_model_construction(make, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make()


def test_lazy_model_infers_width_then_checks_it():
    model = xpmlp.Sequential([xpmlp.Dense(4), xpmlp.ReLU(), xpmlp.Dense(3)], device="cpu", seed=0)
    model.fit(X_OK, LABELS_OK, loss="softmax_cross_entropy", epochs=1)
    assert model.in_features == 3
    with pytest.raises(ValueError, match="X has 5 features but the model expects 3"):
        model.fit(rng.normal(size=(6, 5)), LABELS_OK)

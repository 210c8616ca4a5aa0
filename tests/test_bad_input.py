"""Each bad input raises an error that names the problem, and leaves the caller's arrays as they were."""

import re

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
    ("y-scalar-labels", X_OK, np.array(2), {}, ValueError,
     r"y must be an array with one target per sample, of shape \(n,\) or \(n, k\); got a scalar"),
    ("y-scalar-mse", X_OK, np.array(0.5), {"loss": "mse"}, ValueError, r"y must be an array with one target per sample.*scalar"),
    ("y-scalar-bce", X_OK, np.array(1.0), {"loss": "bce"}, ValueError, r"y must be an array with one target per sample.*scalar"),
    ("metric-top-0", X_OK, LABELS_OK, {"metrics": ["top_0_accuracy"]}, ValueError,
     "metric 'top_0_accuracy': k in top_K_accuracy must be a positive integer"),
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


# -- argument checks at the call ---------------------------------------------------------------------------------
@pytest.mark.parametrize("y", [2, 0.5, np.float64(1.0), np.array(1)], ids=["int", "float", "numpy-scalar", "0-d"])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "bce"])
def test_a_scalar_y_is_refused_by_fit_and_evaluate(y, loss):
    model = xpmlp.MLP([3, 4, 3], seed=0, device="cpu")
    pattern = r"y must be an array with one target per sample, of shape \(n,\) or \(n, k\); got a scalar"
    with pytest.raises(ValueError, match=pattern):
        model.fit(X_OK, y, loss=loss)
    with pytest.raises(ValueError, match=pattern):
        model.evaluate(X_OK, y, loss=loss)


def test_softmax_cross_entropy_on_one_output_is_refused():
    """The softmax of one output is always 1: the loss would be 0 and nothing would learn."""
    model = xpmlp.MLP([3, 4, 1], seed=0, device="cpu")
    before = model.get_weights()
    pattern = (r"loss='softmax_cross_entropy' needs a model with at least 2 outputs, but it has 1.*"
               r"use loss='sigmoid_binary_cross_entropy' with 0/1 targets, or give the model 2 outputs")
    with pytest.raises(ValueError, match=pattern):
        model.fit(X_OK, np.array([0, 1, 0, 1, 1, 0]), loss="softmax_cross_entropy", epochs=2)
    with pytest.raises(ValueError, match=pattern):
        model.evaluate(X_OK, np.zeros(6, dtype=int), loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match=pattern):  # the loss on its own, at its forward
        xpmlp.SoftmaxCrossEntropy()(np.zeros((4, 1)), np.zeros(4, dtype=np.int64))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [0, -1, 2.5, 2.0, True, "3", None])
def test_top_k_must_be_a_positive_integer(k):
    from xpmlp.metrics import TopKAccuracy

    with pytest.raises(ValueError, match=rf"TopKAccuracy's k must be a positive integer .*got {re.escape(repr(k))}"):
        TopKAccuracy(k)


@pytest.mark.parametrize("name,pattern", [
    ("top_0_accuracy", "metric 'top_0_accuracy': k in top_K_accuracy must be a positive integer"),
    ("top_00_accuracy", "metric 'top_00_accuracy': k in top_K_accuracy must be a positive integer"),
    ("top_-1_accuracy", "unknown metric 'top_-1_accuracy'"),
    ("top_\u00b2_accuracy", "unknown metric"),  # a superscript two: a digit to str.isdigit, not a number
])
def test_top_k_metric_names(name, pattern):
    from xpmlp.metrics import TopKAccuracy, get_metric

    with pytest.raises(ValueError, match=pattern):
        get_metric(name)
    assert get_metric("top_2_accuracy").k == 2 and TopKAccuracy(np.int64(3)).name == "top_3_accuracy"


@pytest.mark.parametrize("loss", ["mse", "bce", "huber"])
def test_a_1d_y_for_several_outputs_asks_for_the_right_shape(loss):
    """(n,) is valid only for one output: the message asks for (n, k) alone, never "(n,) or (n, k)"."""
    model = xpmlp.MLP([3, 4, 3], seed=0, device="cpu")
    with pytest.raises(ValueError) as info:
        model.fit(X_OK, np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]), loss=loss)
    message = str(info.value)
    assert message.startswith("y has shape (6,) but the model has 3 output(s): y must have shape (6, 3), "
                              "one column per output"), message
    assert "(6,) or" not in message and "expected" not in message


def test_target_shape_messages_for_one_output_and_for_labels():
    one = xpmlp.MLP([3, 4, 1], seed=0, device="cpu")
    with pytest.raises(ValueError, match=r"^y has shape \(6, 2\) but the model has 1 output\(s\): y must have "
                                         r"shape \(6,\) or \(6, 1\)$"):
        one.fit(X_OK, rng.normal(size=(6, 2)), loss="mse")
    three = xpmlp.MLP([3, 4, 3], seed=0, device="cpu")
    with pytest.raises(ValueError, match=r"y has 4 columns but the model has 3 outputs: one-hot or probability rows "
                                         r"need 3 columns, or give integer labels of shape \(6,\)"):
        three.fit(X_OK, np.eye(4)[[0, 1, 2, 3, 0, 1]], loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]; y holds values from -1 to 2"):
        three.fit(X_OK, np.array([[-1, 0, 2]] * 6, dtype=float), loss="bce")


def test_target_messages_name_validation_targets():
    loss = xpmlp.losses.get_loss("mse")
    backend = xpmlp.resolve("cpu")
    with pytest.raises(ValueError, match=r"^y_val has shape \(6,\) but the model has 2 output\(s\): y_val must"):
        loss.prepare_targets(np.zeros(6), backend, "float64", 2, what="y_val")
    with pytest.raises(ValueError, match="y_val must be an array with one target per sample"):
        xpmlp.losses.get_loss("softmax_cross_entropy").prepare_targets(3, backend, "float64", 3, what="y_val")

"""The MLP doctor's checks before training (xpmlp.diagnose): each fires on the mistake it names,
with its numbers, and all stay quiet on healthy MNIST, XOR and regression setups."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import doctor
from xpmlp.backend import to_numpy
from xpmlp.datasets import make_sine, make_xor
from xpmlp.doctor import CHECKS, Finding, Report, diagnose, first_nonfinite_layer
from xpmlp.layers import Dense, Dropout, ReLU, Sigmoid, Softmax, Standardize, Tanh


@pytest.fixture(scope="module")
def mnist():
    """2000 training rows of real MNIST (pixels / 255) and 500 test rows, or a skip."""
    path = os.environ.get("XPMLP_DATA")
    if not path or not (Path(path) / "mnist").is_dir():
        pytest.skip("MNIST not in $XPMLP_DATA")
    (X, y), (Xt, yt) = xpmlp.datasets.load_mnist(Path(path) / "mnist", download=False)
    return X[:2000] / 255.0, y[:2000], Xt[:500] / 255.0, yt[:500]


def _blobs(n=300, k=3, d=4, seed=0):
    """k well-separated Gaussian blobs in d dimensions, labels 0..k-1 in random order."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    centres = rng.normal(0.0, 2.0, size=(k, d))
    return centres[y] + rng.normal(0.0, 0.5, size=(n, d)), y


def _only(report, check) -> Finding:
    """The one finding of ``check`` in the report (and fail if there are others of it)."""
    found = [f for f in report if f.check == check]
    assert len(found) == 1, report
    return found[0]


# -- healthy setups: quiet -------------------------------------------------------------------------
def test_quiet_on_healthy_mnist(mnist):
    X, y, Xt, yt = mnist
    for seed in (0, 1):
        model = xpmlp.MLP([784, 128, 10], seed=seed)
        report = diagnose(model, X, y, loss="softmax_cross_entropy", validation_data=(Xt, yt), seed=seed)
        assert report == [] and report.ok
    # MNIST's own order is not grouped by class: shuffle=False alone is no finding
    assert diagnose(xpmlp.MLP([784, 128, 10], seed=0), X, y, loss="softmax_cross_entropy", shuffle=False) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quiet_on_xor(seed):
    X, y = make_xor(400, seed=seed)
    assert diagnose(xpmlp.MLP([2, 8, 2], seed=seed), X, y, loss="softmax_cross_entropy", seed=seed) == []
    assert diagnose(xpmlp.MLP([2, 8, 1], "tanh", seed=seed), X, y, loss="sigmoid_binary_cross_entropy") == []


def test_quiet_on_regressions():
    X, y = make_sine(500)
    for seed in (0, 1, 2):
        assert diagnose(xpmlp.MLP([1, 64, 64, 1], "tanh", seed=seed), X, y, loss="mse") == []
        assert diagnose(xpmlp.MLP([1, 64, 64, 1], seed=seed), X, y, loss="mse", shuffle=False) == []
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5))
    y = X @ rng.normal(size=5) + 0.1 * rng.normal(size=500)
    assert diagnose(xpmlp.MLP([5, 32, 1], seed=0), X, y, loss="mse") == []
    assert diagnose(xpmlp.MLP([5, 32, 1], seed=0), X, y, loss="huber") == []


def test_check_names_are_the_documented_ones():
    assert CHECKS == ("unscaled_inputs", "feature_scales", "single_output_softmax", "continuous_targets",
                      "label_range", "missing_classes", "targets_outside_output_range", "unscaled_targets",
                      "probabilities_as_logits", "sorted_classes", "validation_one_class", "initial_loss", "overfit")
    assert xpmlp.diagnose is diagnose and xpmlp.Report is Report and xpmlp.Finding is Finding
    assert xpmlp.DoctorWarning is doctor.DoctorWarning


# -- inputs ----------------------------------------------------------------------------------------
def test_unscaled_inputs_raw_pixels_agree_with_fit():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(300, 16)).astype(np.uint8)
    X[0, 0] = 255
    y = rng.integers(0, 3, size=300)
    f = _only(diagnose(xpmlp.MLP([16, 8, 3], seed=0), X, y, loss="softmax_cross_entropy", overfit=False),
              "unscaled_inputs")
    assert f.severity == "warning" and f.evidence == {"min": 0.0, "max": 255.0, "limit": 100.0}
    assert "raw 0-255 pixels" in f.message and "255" in f.fix
    with pytest.warns(UserWarning, match="looks unscaled"):  # fit says the same about the same X
        xpmlp.MLP([16, 8, 3], seed=0).fit(X, y, loss="softmax_cross_entropy", verbose=0)
    # fixed: divided by 255, or a Standardize layer
    assert "unscaled_inputs" not in diagnose(xpmlp.MLP([16, 8, 3], seed=0), X / 255.0, y,
                                             loss="softmax_cross_entropy").checks()
    assert diagnose(xpmlp.MLP([16, 8, 3], standardize=True, seed=0), X, y, loss="softmax_cross_entropy") == []


def test_feature_scales():
    rng = np.random.default_rng(1)
    X = rng.uniform(-0.5, 0.5, size=(400, 5))
    X[:, 3] = rng.uniform(-90, 90, size=400)  # within fit's |x| <= 100: only this check sees it
    y = (X[:, 0] > 0).astype(int)
    f = _only(diagnose(xpmlp.MLP([5, 8, 2], seed=0), X, y, loss="softmax_cross_entropy", overfit=False),
              "feature_scales")
    std = X.std(axis=0)
    assert f.evidence["feature"] == 3 and f.evidence["std"] == pytest.approx(std[3])
    assert f.evidence["ratio"] == pytest.approx(std[3] / np.median(std)) and f.evidence["ratio"] > 100
    assert "unscaled_inputs" not in diagnose(xpmlp.MLP([5, 8, 2], seed=0), X, y, loss="softmax_cross_entropy",
                                             overfit=False).checks()
    X[:, 3] /= 100
    assert diagnose(xpmlp.MLP([5, 8, 2], seed=0), X, y, loss="softmax_cross_entropy") == []


# -- targets against output and loss ------------------------------------------------------------------
def test_single_output_softmax_is_a_finding_not_an_exception():
    X, y = make_xor(200)
    model = xpmlp.MLP([2, 8, 1], seed=0)
    report = diagnose(model, X, y, loss="softmax_cross_entropy")
    assert report.checks() == ["single_output_softmax"] and not report.ok
    assert report[0].severity == "error" and "sigmoid_binary_cross_entropy" in report[0].fix
    with pytest.raises(ValueError, match="at least 2 outputs"):  # what fit does with it
        model.fit(X, y, loss="softmax_cross_entropy", verbose=0)


def test_continuous_targets_with_a_classification_loss():
    X, _ = _blobs()
    y = X[:, 0] * 0.37 + 0.05
    f = _only(diagnose(xpmlp.MLP([4, 8, 3], seed=0), X, y, loss="softmax_cross_entropy"), "continuous_targets")
    assert f.severity == "error" and f.evidence["distinct"] == np.unique(y).size
    assert f.evidence["min"] == pytest.approx(y.min()) and "mse" in f.fix


def test_one_based_labels():
    X, y = _blobs(k=10, n=400)
    report = diagnose(xpmlp.MLP([4, 16, 10], seed=0), X, y + 1, loss="softmax_cross_entropy")
    assert report.checks() == ["label_range"]  # no crash in the loss-based checks, and nothing else
    f = report[0]
    assert f.evidence == {"min": 1, "max": 10, "outputs": 10} and "1-based" in f.message and "y - 1" in f.fix
    # too many classes for the outputs, not 1-based
    f = _only(diagnose(xpmlp.MLP([4, 16, 5], seed=0), X, y, loss="softmax_cross_entropy"), "label_range")
    assert f.evidence["max"] == 9 and "10 distinct labels" in f.message


def test_labels_that_skip_classes():
    X, y = _blobs(k=5, n=400)
    f = _only(diagnose(xpmlp.MLP([4, 16, 10], seed=0), X, 2 * y, loss="softmax_cross_entropy", overfit=False),
              "missing_classes")
    assert f.severity == "warning" and f.evidence["missing"] == [1, 3, 5, 7, 9] and f.evidence["classes"] == 10
    # one-hot rows with a column never hot, and 0/1 labels that are all 0
    onehot = np.eye(4)[y % 3]
    assert _only(diagnose(xpmlp.MLP([4, 8, 4], seed=0), X, onehot, loss="softmax_cross_entropy", overfit=False),
                 "missing_classes").evidence["missing"] == [3]
    assert _only(diagnose(xpmlp.MLP([4, 8, 1], seed=0), X, np.zeros(400), loss="bce"),
                 "missing_classes").evidence["missing"] == [1]


def test_sigmoid_output_with_targets_0_to_4():
    X, y = _blobs(k=5, n=400)
    report = diagnose(xpmlp.MLP([4, 16, 1], seed=0), X, y, loss="sigmoid_binary_cross_entropy")
    f = _only(report, "targets_outside_output_range")
    assert f.severity == "error" and f.evidence["min"] == 0 and f.evidence["max"] == 4
    assert "all pile up at 1" in f.message and "'softmax_cross_entropy' with 5 outputs" in f.fix
    # the same mistake as a final Sigmoid layer with mse: outputs all 1
    model = xpmlp.Sequential([Dense(16, in_features=4), ReLU(), Dense(1), Sigmoid()], seed=0)
    f = _only(diagnose(model, X, y.astype(float), loss="mse"), "targets_outside_output_range")
    assert "final Sigmoid" in f.message
    model = xpmlp.Sequential([Dense(16, in_features=4), ReLU(), Dense(1), Tanh()], seed=0)
    assert _only(diagnose(model, X, y - 1.0, loss="mse"), "targets_outside_output_range").evidence["output_min"] == -1
    assert diagnose(model, X, y * 0.25 - 0.5, loss="mse") == []  # within [-1, 1]


def test_unscaled_regression_targets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = 2e5 + 3e4 * (X @ np.array([1.0, -2.0, 0.5]))
    f = _only(diagnose(xpmlp.MLP([3, 16, 1], seed=0), X, y, loss="mse"), "unscaled_targets")
    assert f.evidence["mean"] == pytest.approx(y.mean()) and f.evidence["max_abs"] == pytest.approx(np.abs(y).max())
    assert diagnose(xpmlp.MLP([3, 16, 1], seed=0), X, (y - y.mean()) / y.std(), loss="mse") == []


# -- probabilities where logits are expected ---------------------------------------------------------
@pytest.mark.parametrize("k", [10, 2])
def test_double_softmax(k):
    X, y = _blobs(k=k, n=400, d=6)
    model = xpmlp.Sequential([Dense(32, in_features=6), ReLU(), Dense(k), Softmax()], seed=0)
    report = diagnose(model, X, y, loss="softmax_cross_entropy")
    assert report.checks() == ["probabilities_as_logits", "overfit"]
    assert report[0].evidence == {"last_layer": "Softmax", "loss": "softmax_cross_entropy"}
    over = report[1].evidence
    # the floor of a double softmax: ln((e + k - 1) / e) for a one-hot target, far above 10% of the labels' entropy
    assert over["final"] >= math.log((math.e + k - 1) / math.e) - 1e-3 and over["fraction"] > 0.4
    # fixed: the Softmax layer removed
    fixed = xpmlp.Sequential([Dense(32, in_features=6), ReLU(), Dense(k)], seed=0)
    assert diagnose(fixed, X, y, loss="softmax_cross_entropy") == []


def test_sigmoid_layer_before_sigmoid_bce():
    X, y = make_xor(300)
    model = xpmlp.Sequential([Dense(8, in_features=2), Tanh(), Dense(1), Sigmoid(), Dropout(0.1)], seed=0)
    report = diagnose(model, X, y, loss="bce")
    assert report.checks() == ["probabilities_as_logits", "overfit"]
    assert report[0].evidence["last_layer"] == "Sigmoid"
    assert report[1].evidence["final"] > 0.5  # sigmoid of a probability is in (0.5, 0.73): label 0 costs >= ln 2


# -- order and validation --------------------------------------------------------------------------
def test_sorted_classes_with_shuffle_off():
    X, y = _blobs(n=600, k=3)
    order = np.argsort(y, kind="stable")
    f = _only(diagnose(xpmlp.MLP([4, 8, 3], seed=0), X[order], y[order], loss="softmax_cross_entropy",
                       shuffle=False), "sorted_classes")
    p = np.bincount(y) / y.size
    assert f.evidence["runs"] == 3 and f.evidence["expected_runs"] == pytest.approx(1 + 599 * (1 - np.sum(p * p)))
    assert "shuffle=True" in f.fix
    # blocks of 10 rows of one class are caught too; shuffling (fit's default) is fine
    blocks = np.repeat(np.arange(60) % 3, 10)
    assert "sorted_classes" in diagnose(xpmlp.MLP([4, 8, 3], seed=0), X, blocks, loss="softmax_cross_entropy",
                                        shuffle=False, overfit=False).checks()
    assert diagnose(xpmlp.MLP([4, 8, 3], seed=0), X[order], y[order], loss="softmax_cross_entropy") == []
    assert diagnose(xpmlp.MLP([4, 8, 3], seed=0), X, y, loss="softmax_cross_entropy", shuffle=False) == []


def test_validation_data_of_one_class():
    X, y = _blobs(n=600, k=3)
    f = _only(diagnose(xpmlp.MLP([4, 8, 3], seed=0), X[:400], y[:400], loss="softmax_cross_entropy",
                       validation_data=(X[400:][y[400:] == 2], y[400:][y[400:] == 2])), "validation_one_class")
    assert f.evidence == {"class": 2, "rows": int(np.sum(y[400:] == 2))}
    assert diagnose(xpmlp.MLP([4, 8, 3], seed=0), X[:400], y[:400], loss="softmax_cross_entropy",
                    validation_data=(X[400:], y[400:])) == []


# -- the loss at initialisation and the overfit test ---------------------------------------------------
def test_initial_loss_far_above_ln_k():
    X, y = _blobs(n=500, k=4, d=5)
    model = xpmlp.MLP([5, 32, 4], seed=0)
    weights = model.get_weights()
    weights[2] = weights[2] * 60  # the last layer's weights far too large: confidently wrong at the start
    model.set_weights(weights)
    f = _only(diagnose(model, X, y, loss="softmax_cross_entropy", overfit=False), "initial_loss")
    # by hand: mean cross-entropy of the initial logits over the rows diagnose used (all 500 here)
    z = to_numpy(model.forward(model.backend.from_host(X.astype(np.float32)))).astype(np.float64)
    zmax = z.max(axis=1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    expected_value = -logp[np.arange(500), y].mean()
    assert f.evidence["loss"] == pytest.approx(expected_value, rel=1e-4)
    assert f.evidence["expected"] == pytest.approx(math.log(4))
    assert f.evidence["ratio"] == pytest.approx(expected_value / math.log(4), rel=1e-4) and f.evidence["ratio"] > 3


def test_overfit_fails_when_rows_cannot_be_told_apart():
    """X with every row the same (a loading bug): no network can memorise a batch's different labels."""
    _, y = _blobs(n=300, k=3)
    X = np.tile(np.linspace(-1.0, 1.0, 4), (300, 1))
    report = diagnose(xpmlp.MLP([4, 16, 3], seed=0), X, y, loss="softmax_cross_entropy")
    f = _only(report, "overfit")
    assert report.checks() == ["overfit"] and f.severity == "error"
    assert f.evidence["steps"] == doctor.OVERFIT_STEPS and f.evidence["rows"] == doctor.OVERFIT_ROWS
    assert f.evidence["fraction"] > 0.9 and f.evidence["floor"] == 0.0
    assert "something between the data and the loss is broken" in f.message
    assert "overfit" not in diagnose(xpmlp.MLP([4, 16, 3], seed=0), X, y, loss="softmax_cross_entropy",
                                     overfit=False).checks()


# -- the model and the caller's data are left alone ------------------------------------------------------
def _state(model):
    opt = model.optimizer.state_dict()
    return ({k: (to_numpy(v).copy() if hasattr(v, "shape") else dict(v)) for k, v in model.state_dict().items()},
            opt["t"], {k: to_numpy(v).copy() for k, v in opt["state"].items()}, model.get_rng_state(),
            [layer.counter for layer in model.layers if isinstance(layer, Dropout)])


def _assert_same(a, b):
    for name, value in a[0].items():
        assert np.array_equal(value, b[0][name]) if isinstance(value, np.ndarray) else value == b[0][name]
    assert a[1] == b[1] and a[3] == b[3] and a[4] == b[4]
    assert all(np.array_equal(a[2][k], b[2][k]) for k in a[2])


def test_diagnose_changes_nothing(case):
    X, y = _blobs(n=200, k=3)
    model = xpmlp.MLP([4, 16, 3], dropout=0.2, standardize=True, seed=0, **case.model_kwargs())
    model.fit(case.asarray(X), case.asarray(y), loss="softmax_cross_entropy", epochs=1, batch_size=50, verbose=0)
    loss = model.loss
    before = _state(model)
    Xd, yd = case.asarray(X), case.asarray(y)
    Xh, yh, Xd_before = X.copy(), y.copy(), to_numpy(Xd).copy()
    report = diagnose(model, Xd, yd, shuffle=False, validation_data=(Xd, yd), seed=3)
    assert report == []
    _assert_same(before, _state(model))
    assert model.loss is loss and np.array_equal(to_numpy(Xd), Xd_before) and np.array_equal(to_numpy(yd), yh)
    assert np.array_equal(X, Xh) and np.array_equal(y, yh)


def test_every_backend_finds_the_same(case):
    """The same findings from arrays of every library (the failing overfit test, all its steps, runs on NumPy
    in the tests above; here the passing one, which stops after a few dozen steps)."""
    X, y = _blobs(n=300, k=4, d=5)
    model = xpmlp.Sequential([Dense(16, in_features=5), ReLU(), Dense(4), Softmax()], seed=0, **case.model_kwargs())
    report = diagnose(model, case.asarray(X), case.asarray(y), loss="softmax_cross_entropy", overfit=False)
    assert report.checks() == ["probabilities_as_logits"]
    model = xpmlp.MLP([5, 16, 4], seed=0, **case.model_kwargs())
    report = diagnose(model, case.asarray(X), case.asarray(y + 1), loss="softmax_cross_entropy")
    assert report.checks() == ["label_range"]
    assert diagnose(model, case.asarray(X * 300), case.asarray(y), loss="softmax_cross_entropy",
                    overfit=False).checks() == ["unscaled_inputs", "initial_loss"]
    assert diagnose(model, case.asarray(X), case.asarray(y), loss="softmax_cross_entropy", shuffle=False) == []


def test_an_unbuilt_model_is_built_as_fit_would_build_it():
    X, y = _blobs()
    a = xpmlp.Sequential([Dense(8), ReLU(), Dense(3)], seed=5)
    b = xpmlp.Sequential([Dense(8), ReLU(), Dense(3)], seed=5)
    assert diagnose(a, X, y, loss="softmax_cross_entropy") == [] and a.built and a.in_features == 4
    for m in (a, b):
        m.fit(X, y, loss="softmax_cross_entropy", epochs=2, verbose=0)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_pandas_lists_and_sparse_inputs():
    pd = pytest.importorskip("pandas")
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _blobs(n=200, k=3)
    X[:, 2] *= 100  # unscaled: the finding names it from every kind of input
    expected = diagnose(xpmlp.Sequential([Dense(8), ReLU(), Dense(3)], seed=0), X, y, loss="softmax_cross_entropy",
                        overfit=False)
    assert "unscaled_inputs" in expected.checks()
    for Xa, ya in ((pd.DataFrame(X), pd.Series(y)), (X.tolist(), y.tolist()), (sparse.csr_matrix(X), y)):
        model = xpmlp.Sequential([Dense(8), ReLU(), Dense(3)], seed=0)  # built from the data's width
        report = diagnose(model, Xa, ya, loss="softmax_cross_entropy", overfit=False)
        assert report.checks() == expected.checks()
        for f, g in zip(report, expected):
            assert f.evidence == pytest.approx(g.evidence, rel=1e-5)  # sparse X is read in float32, as fit does


# -- bad arguments --------------------------------------------------------------------------------
def test_bad_arguments():
    X, y = _blobs()
    model = xpmlp.MLP([4, 8, 3], seed=0)
    with pytest.raises(ValueError, match="needs a loss"):
        diagnose(model, X, y)
    with pytest.raises(TypeError, match="xpmlp model"):
        diagnose("model", X, y, loss="mse")
    with pytest.raises(ValueError, match="must be 2-D"):
        diagnose(model, X[:, 0], y, loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="has 3 features but the model expects 4"):
        diagnose(model, X[:, :3], y, loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="different lengths: 300 and 299"):
        diagnose(model, X, y[:-1], loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="NaN or infinity"):
        diagnose(model, np.where(X > 3, np.nan, X), y, loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="must hold numbers"):
        diagnose(model, X, np.array(["a", "b", "c"])[y], loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="validation_data must be a pair"):
        diagnose(model, X, y, loss="softmax_cross_entropy", validation_data=X)
    with pytest.raises(ValueError, match="X_val and y_val have different lengths"):
        diagnose(model, X, y, loss="softmax_cross_entropy", validation_data=(X, y[:10]))
    with pytest.raises(ValueError, match="unknown loss"):
        diagnose(model, X, y, loss="hinge")
    with pytest.raises(ValueError, match="seed must be an integer"):
        diagnose(model, X, y, loss="softmax_cross_entropy", seed=0.5)
    with pytest.raises(ValueError, match="has 2 columns but the model has 3 outputs"):  # fit's own message
        diagnose(model, X, np.eye(2)[y % 2], loss="softmax_cross_entropy")


# -- the report --------------------------------------------------------------------------------------
def test_printed_report_and_frame_on_real_findings():
    X, y = _blobs(k=5, n=400)
    report = diagnose(xpmlp.MLP([4, 16, 1], seed=0), X * 300, y, loss="sigmoid_binary_cross_entropy")
    assert report.checks()[0] == "targets_outside_output_range" and "unscaled_inputs" in report.checks()
    text = str(report)
    assert text.startswith("MLP doctor: 1 error, ")
    assert "1. [error] targets_outside_output_range (before training)" in text
    assert "   Fix: For class labels 0..4 use loss='softmax_cross_entropy'" in text
    assert "Evidence: min=0, max=4, output_min=0, output_max=1" in text
    frame = report.to_frame()
    assert list(frame.columns) == ["check", "severity", "when", "message", "fix", "evidence"]
    assert list(frame["check"]) == report.checks() and frame.loc[0, "severity"] == "error"
    assert frame.loc[0, "evidence"]["max"] == 4.0
    with pytest.warns(xpmlp.DoctorWarning) as caught:
        report.warn()
    assert [str(w.message) for w in caught] == [str(f) for f in report]


# -- first_nonfinite_layer ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_first_nonfinite_layer(case):
    X, _ = _blobs(n=50, d=4)
    model = xpmlp.MLP([4, 8, 8, 2], seed=0, **case.model_kwargs())  # Dense, ReLU, Dense, ReLU, Dense
    assert first_nonfinite_layer(model, case.asarray(X)) is None
    weights = model.get_weights()
    big = np.finfo(case.dtype).max
    weights[2] = np.full_like(weights[2], big)  # layers.2.W: its products overflow to inf
    model.set_weights(weights)
    assert first_nonfinite_layer(model, case.asarray(np.abs(X) + 1)) == (2, "Dense")
    weights = model.get_weights()
    weights[2], weights[4] = np.ones_like(weights[2]), np.full_like(weights[4], np.nan)
    model.set_weights(weights)
    before = [w.copy() for w in model.get_weights()]
    assert first_nonfinite_layer(model, case.asarray(X)) == (4, "Dense")
    assert all(np.array_equal(u, v, equal_nan=True) for u, v in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match="no weights yet"):
        first_nonfinite_layer(xpmlp.Sequential([Dense(3)]), X)


def test_standardize_layer_not_adapted_yet():
    """diagnose uses the data's own statistics for it (as fit would adapt it), and leaves it unadapted."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(300, 8)).astype(float)
    y = (X[:, 0] > 128).astype(int)
    model = xpmlp.Sequential([Standardize(), Dense(8, in_features=8), ReLU(), Dense(2)], seed=0)
    assert diagnose(model, X, y, loss="softmax_cross_entropy") == []
    assert not model.layers[0].adapted

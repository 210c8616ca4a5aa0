"""pandas DataFrames and Series are taken wherever NumPy arrays are (pandas 2 and 3).

Rows are read by position (an index is never used to align or reorder), nullable columns give
their NumPy dtype, a missing value is refused naming its column and row, and the caller's
objects are never modified. Each test compares with the same call on NumPy arrays.
``.ci/oldest-pandas`` runs this file with the oldest supported pandas.
"""

import subprocess
import sys

import numpy as np
import pytest

import xpmlp

pd = pytest.importorskip("pandas")

rng = np.random.default_rng(0)
N = 48
INDEX = rng.permutation(N) * 3 + 100  # neither default, nor sorted, nor the positions


def _frame():
    """Mixed int, float, nullable Int64 / Float64 / boolean columns, numeric categorical; odd index."""
    r = np.random.default_rng(1)
    return pd.DataFrame({
        "count": r.integers(0, 5, N),
        "x": r.normal(size=N),
        "n_int": pd.array(r.integers(-3, 3, N), dtype="Int64"),
        "n_float": pd.array(r.normal(size=N), dtype="Float64"),
        "flag": pd.array(r.random(N) > 0.5, dtype="boolean"),
        "level": pd.Categorical(r.integers(1, 4, N)),
    }, index=INDEX)


def _numpy(frame):
    """The same values as a float64 NumPy array, built column by column, by hand."""
    return np.column_stack([np.array(list(frame[c]), dtype=np.float64) for c in frame.columns])


def _labels(frame):
    return (frame["x"].to_numpy() + frame["count"].to_numpy() > 2).astype(int) + (frame["count"].to_numpy() > 3)


class Unchanged:
    """Copies pandas objects on entry and checks on exit that they are exactly as they were."""

    def __init__(self, *objects):
        self.objects = objects
        self.copies = [o.copy(deep=True) for o in objects]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for obj, copy in zip(self.objects, self.copies):
            if isinstance(obj, pd.DataFrame):
                pd.testing.assert_frame_equal(obj, copy, check_exact=True)
            else:
                pd.testing.assert_series_equal(obj, copy, check_exact=True)
        return False


# -- MLP: fit, predict, evaluate --------------------------------------------------------------------------
def test_mlp_takes_dataframes_and_series_by_position():
    frame = _frame()
    y = pd.Series(_labels(frame), index=INDEX, name="label")
    weights = pd.Series(np.linspace(0.5, 1.5, N), index=INDEX)
    X_val, y_val = frame.iloc[:10], y.iloc[:10]
    runs = []
    for data in ("pandas", "numpy"):
        model = xpmlp.MLP([6, 8, 3], seed=0, device="cpu")
        if data == "pandas":
            with Unchanged(frame, y, weights, X_val, y_val):
                history = model.fit(frame, y, loss="softmax_cross_entropy", epochs=3, batch_size=16,
                                    sample_weight=weights, validation_data=(X_val, y_val), metrics=["accuracy"])
                out = (history.history, xpmlp.to_numpy(model.predict(frame)),
                       model.evaluate(frame, y, metrics=["accuracy"]))
        else:
            history = model.fit(_numpy(frame), _labels(frame), loss="softmax_cross_entropy", epochs=3, batch_size=16,
                                sample_weight=np.linspace(0.5, 1.5, N),
                                validation_data=(_numpy(frame)[:10], _labels(frame)[:10]), metrics=["accuracy"])
            out = (history.history, xpmlp.to_numpy(model.predict(_numpy(frame))),
                   model.evaluate(_numpy(frame), _labels(frame), metrics=["accuracy"]))
        runs.append(out)
    (h_pd, p_pd, e_pd), (h_np, p_np, e_np) = runs
    assert h_pd["loss"] == h_np["loss"] and h_pd["val_accuracy"] == h_np["val_accuracy"]
    np.testing.assert_array_equal(p_pd, p_np)
    assert e_pd == e_np


@pytest.mark.filterwarnings("error")  # e.g. torch warning that it shares a read-only array
def test_dataframes_on_every_backend(case):
    """Host data is copied to the model's device: pandas like NumPy, on every library."""
    frame = _frame()
    losses = []
    for X, y in ((frame, pd.Series(_labels(frame), index=INDEX)), (_numpy(frame), _labels(frame))):
        model = xpmlp.MLP([6, 4, 3], seed=0, **case.model_kwargs())
        model.fit(X, y, loss="softmax_cross_entropy", epochs=2, batch_size=16)
        losses.append((model.history["loss"], xpmlp.to_numpy(model.predict(X)), model.evaluate(X, y)))
    assert losses[0][0] == losses[1][0] and losses[0][2] == losses[1][2]
    np.testing.assert_array_equal(losses[0][1], losses[1][1])


def test_a_series_index_is_not_used_to_align():
    """y with another index than X (here the default one) is still read row by row."""
    frame = _frame()
    y_other_index = pd.Series(_labels(frame))  # RangeIndex, while X has INDEX
    a = xpmlp.MLP([6, 5, 3], seed=0, device="cpu")
    a.fit(frame, y_other_index, loss="softmax_cross_entropy", epochs=2)
    b = xpmlp.MLP([6, 5, 3], seed=0, device="cpu")
    b.fit(_numpy(frame), _labels(frame), loss="softmax_cross_entropy", epochs=2)
    assert a.history["loss"] == b.history["loss"]


def test_regression_with_nullable_float_targets_and_a_dataframe_of_targets():
    frame = _frame()
    Y = pd.DataFrame({"a": pd.array(frame["x"].to_numpy() * 2, dtype="Float64"), "b": frame["count"]}, index=INDEX)
    with Unchanged(frame, Y):
        model = xpmlp.MLP([6, 4, 2], seed=0, device="cpu")
        model.fit(frame, Y, loss="mse", epochs=2)
        single = xpmlp.MLP([6, 4, 1], seed=0, device="cpu")
        single.fit(frame, Y["a"], loss="mse", epochs=2)
    ref = xpmlp.MLP([6, 4, 2], seed=0, device="cpu")
    ref.fit(_numpy(frame), np.column_stack([frame["x"].to_numpy() * 2, frame["count"].to_numpy()]), loss="mse", epochs=2)
    assert model.history["loss"] == ref.history["loss"]
    assert model.evaluate(frame, Y) == ref.evaluate(_numpy(frame), np.column_stack([frame["x"] * 2, frame["count"]]))


@pytest.mark.parametrize("where,call", [
    ("X", lambda m, X, y: m.fit(X, y, loss="softmax_cross_entropy")),
    ("X", lambda m, X, y: m.predict(X)),
    ("X", lambda m, X, y: m.evaluate(X, y, loss="softmax_cross_entropy")),
    ("y", lambda m, X, y: m.fit(X, y, loss="softmax_cross_entropy")),
    ("y", lambda m, X, y: m.evaluate(X, y, loss="softmax_cross_entropy")),
], ids=["fit-X", "predict-X", "evaluate-X", "fit-y", "evaluate-y"])
def test_missing_values_are_refused_naming_column_and_row(where, call):
    frame = _frame()
    y = pd.Series(pd.array(_labels(frame), dtype="Int64"), index=INDEX, name="label")
    if where == "X":
        frame.loc[INDEX[5], "n_int"] = pd.NA
        pattern = rf"X has a missing value \(pd.NA, None or NaN\) in column 'n_int', row 5 \(index label {INDEX[5]}\)"
    else:
        y.iloc[7] = pd.NA
        pattern = rf"y has a missing value \(pd.NA, None or NaN\) in row 7 \(index label {INDEX[7]}\) of Series 'label'"
    model = xpmlp.MLP([6, 4, 3], seed=0, device="cpu")
    before = model.get_weights()
    with Unchanged(frame, y), pytest.raises(ValueError, match=pattern):
        call(model, frame, y)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_nan_in_a_float_column_is_named_too():
    frame = _frame()
    frame.loc[INDEX[3], "x"] = np.nan
    with pytest.raises(ValueError, match=r"X has a missing value .* in column 'x', row 3"):
        xpmlp.MLP([6, 3], seed=0, device="cpu").fit(frame, _labels(frame), loss="softmax_cross_entropy")


def test_a_string_column_is_named():
    frame = _frame().assign(city=["Oslo", "Lima"] * (N // 2))
    with pytest.raises(ValueError, match=r"X must hold real numbers, got non-numeric column\(s\) 'city'"):
        xpmlp.MLP([7, 3], seed=0, device="cpu").fit(frame, _labels(frame), loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="y must hold real numbers.*MLPClassifier takes labels of any type"):
        xpmlp.MLP([6, 3], seed=0, device="cpu").fit(_frame(), pd.Series(["a", "b", "c"] * (N // 3)),
                                                      loss="softmax_cross_entropy")


# -- estimators ------------------------------------------------------------------------------------------
sklearn = pytest.importorskip("sklearn")
from xpmlp import MLPClassifier, MLPRegressor  # noqa: E402

NAMES = np.array(["amber", "blue", "coral"])


def _clf():
    return MLPClassifier(hidden_layer_sizes=(8,), max_iter=15, n_iter_no_change=100, random_state=0)


def _same_fit(est_pd, est_np, X_pd, X_np):
    assert est_pd.loss_curve_ == est_np.loss_curve_
    np.testing.assert_array_equal(est_pd.predict(X_pd), est_np.predict(X_np))


@pytest.mark.parametrize("kind", ["str", "object", "category"])
def test_classifier_takes_string_and_categorical_labels(kind):
    """pandas 3's default string dtype, plain objects, and categoricals, as a Series with an odd index."""
    frame = _frame()
    names = NAMES[_labels(frame)]
    y = pd.Series(names, index=INDEX, dtype={"str": None, "object": object, "category": "category"}[kind])
    with Unchanged(frame, y):
        clf = _clf().fit(frame, y)
        pred = clf.predict(frame)
        score = clf.score(frame, y)
    assert clf.classes_.tolist() == NAMES.tolist() and set(pred) <= set(NAMES)
    assert list(clf.feature_names_in_) == list(frame.columns)
    ref = _clf().fit(_numpy(frame), names)
    _same_fit(clf, ref, frame, _numpy(frame))
    assert score == ref.score(_numpy(frame), names)


@pytest.mark.parametrize("dtype", ["Int64", "category", "int64"])
def test_classifier_keeps_integer_labels_integers(dtype):
    """Nullable Int64 and integer categoricals give integer classes_, as a NumPy int array does."""
    frame = _frame()
    labels = _labels(frame) * 10
    y = pd.Series(labels, index=INDEX).astype(dtype)
    clf = _clf().fit(frame, y)
    assert clf.classes_.dtype.kind == "i" and clf.classes_.tolist() == [0, 10, 20]
    assert clf.predict(frame).dtype.kind == "i"
    _same_fit(clf, _clf().fit(_numpy(frame), labels), frame, _numpy(frame))


def test_regressor_takes_series_and_dataframe_targets():
    frame = _frame()
    y = pd.Series(pd.array(frame["x"].to_numpy() * 3, dtype="Float64"), index=INDEX)
    Y = pd.DataFrame({"a": y, "b": frame["count"]})
    make = lambda: MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, n_iter_no_change=100, random_state=0)  # noqa: E731
    with Unchanged(frame, y, Y):
        single, multi = make().fit(frame, y), make().fit(frame, Y)
        assert single.predict(frame).shape == (N,) and multi.predict(frame).shape == (N, 2)
    _same_fit(single, make().fit(_numpy(frame), frame["x"].to_numpy() * 3), frame, _numpy(frame))
    _same_fit(multi, make().fit(_numpy(frame), _numpy(Y)), frame, _numpy(frame))


@pytest.mark.parametrize("what", ["X", "y-Int64", "y-str"])
def test_estimators_name_missing_values(what):
    frame = _frame()
    y = pd.Series(NAMES[_labels(frame)], index=INDEX, name="colour")
    if what == "X":
        frame.loc[INDEX[4], "n_float"] = pd.NA
        pattern = rf"X has a missing value \(pd.NA, None or NaN\) in column 'n_float', row 4 \(index label {INDEX[4]}\)"
    elif what == "y-Int64":
        y = pd.Series(pd.array(_labels(frame), dtype="Int64"), index=INDEX, name="colour")
        y.iloc[9] = pd.NA
        pattern = rf"y has a missing value .* in row 9 \(index label {INDEX[9]}\) of Series 'colour'"
    else:
        y.iloc[9] = None
        pattern = rf"y has a missing value .* in row 9 \(index label {INDEX[9]}\)"
    clf = _clf()
    with Unchanged(frame, y), pytest.raises(ValueError, match=pattern):
        clf.fit(frame, y)
    assert not hasattr(clf, "model_")


WITHOUT_SKLEARN = """
import sys
sys.modules["sklearn"] = None
import numpy as np, pandas as pd
from xpmlp import MLPClassifier, MLPRegressor
frame = pd.DataFrame({"a": pd.array([1, 2, 3, 4] * 10, dtype="Int64"), "b": np.linspace(0, 1, 40),
                      "c": pd.array([0.5, 1.5] * 20, dtype="Float64")}, index=np.arange(40)[::-1] * 7)
copy = frame.copy(deep=True)
y = pd.Series(["low", "high"] * 20, index=frame.index)
clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(frame, y)
print(clf.classes_.tolist(), sorted(set(clf.predict(frame).tolist())) <= ["high", "low"], 0 <= clf.score(frame, y) <= 1)
reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(frame, frame["c"])
print(reg.predict(frame).shape, np.isfinite(reg.score(frame, frame["c"])))
frame.loc[frame.index[2], "a"] = pd.NA
try:
    clf.fit(frame, y)
except ValueError as e:
    print(str(e).startswith("X has a missing value (pd.NA, None or NaN) in column 'a', row 2"), hasattr(clf, "model_"))
frame.loc[frame.index[2], "a"] = 3
pd.testing.assert_frame_equal(frame, copy)
print("unchanged")
"""


def test_estimators_take_pandas_without_sklearn():
    out = subprocess.run([sys.executable, "-c", WITHOUT_SKLEARN], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['high', 'low'] True True", "(40,) True", "True False", "unchanged"]

"""scikit-learn compatible estimators."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import xpmlp
from xpmlp import MLPClassifier, MLPRegressor

sklearn = pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

# scikit-learn skips check_array_api_input by itself unless SCIPY_ARRAY_API=1 (shown as skipped);
# the estimators accept CuPy and torch arrays but answer in NumPy, as scikit-learn does without
# array_api_dispatch. The estimators run with their defaults (check_estimator applies scikit-learn's
# per-estimator check parameters only to its own classes) and no check is expected to fail:
# scikit-learn declares none for its own MLP either.
@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# solver="lbfgs" drives confident multilabel outputs to probabilities of exactly 1.0 in float64, which
# this check refuses; scikit-learn's own lbfgs MLP fails it the same way (shown by the next test).
LBFGS_EXPECTED_FAILED = {"check_classifiers_multilabel_output_format_predict_proba":
                         "lbfgs reaches probabilities of exactly 1.0 in float64, as scikit-learn's lbfgs MLP does"}


@parametrize_with_checks([MLPClassifier(solver="lbfgs"), MLPRegressor(solver="lbfgs")],
                         expected_failed_checks=lambda est: LBFGS_EXPECTED_FAILED if isinstance(est, MLPClassifier)
                         else {})
def test_sklearn_estimator_checks_lbfgs(estimator, check):
    check(estimator)


def test_sklearns_own_lbfgs_mlp_fails_the_same_check():
    from sklearn.neural_network import MLPClassifier as SkMLP
    from sklearn.utils.estimator_checks import check_classifiers_multilabel_output_format_predict_proba as check

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AssertionError, match="should therefore contain values between 0 and 1"):
            check("MLPClassifier", SkMLP(solver="lbfgs"))


def test_importing_xpmlp_does_not_import_sklearn():
    code = "import sys, xpmlp; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_estimators_inherit_sklearn_base_when_installed():
    from sklearn.base import BaseEstimator, is_classifier, is_regressor

    assert isinstance(MLPClassifier(), BaseEstimator) and is_classifier(MLPClassifier())
    assert isinstance(MLPRegressor(), BaseEstimator) and is_regressor(MLPRegressor())


WITHOUT_SKLEARN = """
import sys
sys.modules["sklearn"] = None  # any import of scikit-learn now fails
import numpy as np
from xpmlp import MLPClassifier, MLPRegressor
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 3))
y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.01, random_state=0).set_params(alpha=0.01)
print(clf.get_params()["alpha"], repr(clf))
print(clf.fit(X, y).score(X, y) > 0.9, clf.predict(X[:2]).tolist())
reg = MLPRegressor(hidden_layer_sizes=(8,), learning_rate_init=0.01, random_state=0).fit(X, X[:, 0] - X[:, 2])
print(reg.score(X, X[:, 0] - X[:, 2]) > 0.9)
try:
    MLPClassifier().predict(X)
except ValueError as e:
    print(type(e).__name__, "not fitted" in str(e))
try:
    clf.set_params(bogus=1)
except ValueError as e:
    print("Invalid parameter 'bogus'" in str(e))
try:  # a failed refit leaves it unfitted
    clf.fit(X, y[:10])
except ValueError as e:
    print(hasattr(clf, "model_"), hasattr(clf, "classes_"), hasattr(clf, "n_features_in_"), hasattr(clf, "coefs_"))
try:
    clf.predict(X)
except ValueError as e:
    print(type(e).__name__)
"""


def test_estimators_work_without_sklearn():
    out = subprocess.run([sys.executable, "-c", WITHOUT_SKLEARN], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "0.01 MLPClassifier(alpha=0.01, hidden_layer_sizes=(8,), learning_rate_init=0.01, random_state=0)"
    assert lines[1].startswith("True [")
    assert lines[2:] == ["True", "NotFittedError True", "True", "False False False False", "NotFittedError"]


def _blobs(n=300, seed=0):
    from sklearn.datasets import make_classification

    return make_classification(n_samples=n, n_features=6, n_informative=4, n_classes=3, random_state=seed)


def test_pipeline_grid_search_cross_val_and_clone():
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _blobs()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.7
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2], "mlpclassifier__activation": ["relu", "tanh"]}, cv=2)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__activation"}
    copy = clone(MLPClassifier(hidden_layer_sizes=(5, 3), solver="sgd", device="cpu", dropout=0.1))
    assert copy.get_params()["hidden_layer_sizes"] == (5, 3) and copy.get_params()["dropout"] == 0.1


def test_attributes_string_labels_and_feature_names():
    import pandas as pd

    X, y = _blobs()
    labels = np.array(["cat", "dog", "emu"])[y]
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    clf = MLPClassifier(hidden_layer_sizes=(20, 10), max_iter=100, random_state=1).fit(frame, pd.Series(labels))
    assert list(clf.classes_) == ["cat", "dog", "emu"] and list(clf.feature_names_in_) == list(frame.columns)
    assert [c.shape for c in clf.coefs_] == [(6, 20), (20, 10), (10, 3)] and [b.shape for b in clf.intercepts_] == [(20,), (10,), (3,)]
    assert clf.n_layers_ == 4 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
    assert clf.n_iter_ == len(clf.loss_curve_) <= 100 and clf.t_ == clf.n_iter_ * 300
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    proba = clf.predict_proba(frame)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(frame)), proba, rtol=1e-6)
    assert set(clf.predict(frame)) <= {"cat", "dog", "emu"} and clf.score(frame, labels) > 0.8
    assert isinstance(clf.model_, xpmlp.Sequential)


def test_binary_multilabel_and_early_stopping():
    X, y = _blobs()
    binary = MLPClassifier(max_iter=30, random_state=0).fit(X, y == 1)
    assert binary.out_activation_ == "logistic" and binary.n_outputs_ == 1 and binary.predict_proba(X).shape == (300, 2)
    Y = np.column_stack([y == 0, y == 1, X[:, 0] > 0]).astype(int)
    multi = MLPClassifier(max_iter=40, random_state=0).fit(X, Y)
    assert multi.predict(X).shape == (300, 3) and multi.score(X, Y) > 0.5
    stop = MLPClassifier(max_iter=200, early_stopping=True, n_iter_no_change=3, random_state=0).fit(X, y)
    assert stop.n_iter_ < 200 and stop.best_validation_score_ == max(stop.validation_scores_) and stop.best_loss_ is None


def test_partial_fit_and_warm_start():
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(10,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    for _ in range(3):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    assert (clf.n_iter_, clf.t_, len(clf.loss_curve_)) == (1, 3 * len(X), 3)  # n_iter_: this call's, as scikit-learn
    warm = MLPClassifier(hidden_layer_sizes=(10,), max_iter=2, n_iter_no_change=100, warm_start=True, random_state=0)
    warm.fit(X, y)
    first = warm.coefs_[0].copy()
    warm.fit(X, y)
    assert (warm.n_iter_, warm.t_, len(warm.loss_curve_)) == (2, 4 * len(X), 4)
    assert not np.array_equal(first, warm.coefs_[0])


@pytest.mark.parametrize("Est", ["MLPClassifier", "MLPRegressor"])
def test_counters_and_curves_mean_what_sklearn_means(Est):
    """n_iter_, t_, loss_curve_, best_loss_, validation_scores_ after fit, warm-started fit and
    partial_fit: the same counts and lengths as scikit-learn's own MLP on the same calls."""
    import sklearn.neural_network as sk

    X, y = _blobs()
    if Est == "MLPRegressor":
        y = X[:, 0] - 2 * X[:, 1]
    ours, theirs = getattr(xpmlp, Est), getattr(sk, Est)
    kw = dict(hidden_layer_sizes=(8,), max_iter=4, random_state=0)
    part = {"classes": np.unique(y)} if Est == "MLPClassifier" else {}

    def counters(est):
        return (est.n_iter_, est.t_, len(est.loss_curve_), est.best_loss_ is None,
                None if est.validation_scores_ is None else len(est.validation_scores_))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning (both)
        for extra, calls in [({}, ("fit",)), ({"warm_start": True}, ("fit", "fit")),
                             ({}, ("partial_fit",) * 3), ({"early_stopping": True, "n_iter_no_change": 100}, ("fit",))]:
            a, b = ours(**kw, **extra), theirs(**kw, **extra)
            for call in calls:
                getattr(a, call)(X, y, **(part if call == "partial_fit" else {}))
                getattr(b, call)(X, y, **(part if call == "partial_fit" else {}))
            assert counters(a) == counters(b), (extra, calls)
            assert [c.shape for c in a.coefs_] == [c.shape for c in b.coefs_]
            assert [c.shape for c in a.intercepts_] == [c.shape for c in b.intercepts_]


def test_regressor_single_and_multi_output():
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=300, n_features=5, n_targets=2, noise=1.0, random_state=0)
    y = y / y.std(axis=0)
    reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (300, 2) and reg.score(X, y) > 0.9 and reg.out_activation_ == "identity"
    single = MLPRegressor(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(X, y[:, 0])
    assert single.predict(X).shape == (300,) and single.predict(X).dtype == np.float64


def test_same_results_on_every_backend(case):
    """The estimator on any backend (passed as a resolved Backend) matches NumPy in the same dtype."""
    X, y = _blobs(n=120)
    runs = []
    for device in ("cpu", case.backend):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, n_iter_no_change=100, random_state=3,
                            device=device, dtype=case.dtype)
        runs.append(clf.fit(X, y))
    np.testing.assert_allclose(runs[1].loss_curve_, runs[0].loss_curve_, rtol=case.rtol)
    np.testing.assert_allclose(runs[1].predict_proba(X), runs[0].predict_proba(X), rtol=case.rtol * 10, atol=1e-6)


def test_bad_parameters():
    X, y = _blobs(n=60)
    with pytest.raises(ValueError, match="solver must be one of"):
        MLPClassifier(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        MLPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match=r"class_weight names classes \[7\]"):
        MLPClassifier(class_weight={7: 2.0}, max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="only one class"):
        MLPClassifier(max_iter=2).fit(X, np.zeros(60))


def test_accuracy_side_by_side_with_sklearn_on_heart(data_dir, capsys):
    """Same split, same architecture and optimiser settings; prints both."""
    if data_dir is None or not (data_dir / "uci-heart").is_dir():
        pytest.skip("UCI heart data not in $XPMLP_DATA")
    from sklearn.neural_network import MLPClassifier as SkMLP
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from xpmlp.datasets import load_heart_disease, train_test_split

    X, y = load_heart_disease()
    results = {}
    for seed in range(5):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, seed=seed)
        for name, cls in (("xpmlp", MLPClassifier), ("sklearn", SkMLP)):
            model = make_pipeline(StandardScaler(), cls(hidden_layer_sizes=(13,), activation="tanh", max_iter=300,
                                                        random_state=seed))
            with warnings.catch_warnings():  # scikit-learn's ConvergenceWarning at max_iter
                warnings.simplefilter("ignore")
                model.fit(Xtr, ytr)
            results.setdefault(name, []).append(model.score(Xte, yte))
    ours, theirs = np.mean(results["xpmlp"]), np.mean(results["sklearn"])
    print(f"UCI heart, 5 stratified 75/25 splits: xpmlp {ours:.3f}, scikit-learn {theirs:.3f}")
    assert ours >= theirs - 0.02


# -- a failed fit leaves the estimator unfitted ---------------------------------------------------------------
def _fitted_attributes(est):
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("__"))


def _assert_unfitted(est, X):
    """Not fitted by every test there is: scikit-learn's check_is_fitted, predict, and the attributes themselves."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert _fitted_attributes(est) == []
    for name in ("model_", "classes_", "n_features_in_", "coefs_", "intercepts_", "loss_curve_", "_multilabel", "_y_1d"):
        assert not hasattr(est, name), name


def _raise_in_epoch(exc):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise exc
    return on_epoch_end


# Each failure: (estimator, X, y) -> None, after any monkeypatching; the error it raises.
FIT_FAILURES = {
    "divergence": (lambda est, X, y: est.fit(X, y * 1e4), xpmlp.DivergenceError),  # too big a step for these targets
    "bad-y": (lambda est, X, y: est.fit(X, y[:-5]), ValueError),
    "y-nan": (lambda est, X, y: est.fit(X, np.where(np.arange(len(y)) == 3, np.nan, y)), ValueError),
    "callback-raises": (lambda est, X, y: est.fit(X, y), RuntimeError),
    "keyboard-interrupt": (lambda est, X, y: est.fit(X, y), KeyboardInterrupt),
}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the diverging run
@pytest.mark.parametrize("before", ["fresh", "refit", "warm-start-refit"])
@pytest.mark.parametrize("failure", list(FIT_FAILURES))
def test_failed_fit_leaves_the_estimator_unfitted(monkeypatch, failure, before):
    from xpmlp.estimators import _SklearnRules as EarlyStopping  # the estimators' stopping-rule callback

    X, y = _blobs(n=80)
    y = y.astype(float)  # a regressor: every failure applies, divergence included
    est = MLPRegressor(hidden_layer_sizes=(6,), solver="sgd", learning_rate_init=0.1, momentum=0.0, max_iter=8,
                       n_iter_no_change=100, random_state=0, warm_start=before == "warm-start-refit")
    if before != "fresh":
        est.fit(X, y)
        assert "model_" in _fitted_attributes(est)
    call, error = FIT_FAILURES[failure]
    if failure == "callback-raises":  # the estimators' own stopping-rule callback raises in epoch 2
        monkeypatch.setattr(EarlyStopping, "on_epoch_end", _raise_in_epoch(RuntimeError("callback failed")))
    if failure == "keyboard-interrupt":
        monkeypatch.setattr(EarlyStopping, "on_epoch_end", _raise_in_epoch(KeyboardInterrupt()))
    with pytest.raises(error):
        call(est, X, y)
    _assert_unfitted(est, X)
    monkeypatch.undo()
    assert est.fit(X, y).predict(X).shape == (80,)  # and it can be fitted again


@pytest.mark.parametrize("failure", ["bad-labels", "keyboard-interrupt"])
def test_failed_classifier_fit_forgets_classes(monkeypatch, failure):
    from xpmlp.estimators import _SklearnRules as EarlyStopping  # the estimators' stopping-rule callback

    X, y = _blobs(n=80)
    clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=4, random_state=0).fit(X, y)
    if failure == "bad-labels":
        with pytest.raises(ValueError):
            clf.fit(X, np.zeros(80))  # a single class
    else:
        monkeypatch.setattr(EarlyStopping, "on_epoch_end", _raise_in_epoch(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, np.array(["a", "b", "c", "d"])[y])
    _assert_unfitted(clf, X)


def test_partial_fit_keeps_its_model_when_a_batch_is_refused_before_training():
    """A batch refused while it is checked changes nothing: the stream goes on with the same model."""
    X, y = _blobs(n=80)
    clf = MLPClassifier(hidden_layer_sizes=(6,), random_state=0).partial_fit(X, y, classes=[0, 1, 2])
    weights, proba = [w.copy() for w in clf.model_.get_weights()], clf.predict_proba(X)
    attributes = _fitted_attributes(clf)
    refusals = [
        ((X, np.where(y == 2, 5, y)), r"y holds labels not in classes_ \[0, 1, 2\]"),
        ((X[:, :4], y), "X has 4 features"),
        ((X, np.eye(3)[y]), "y is a multilabel indicator matrix but MLPClassifier was fitted on class labels"),
    ]
    for args, pattern in refusals:
        with pytest.raises(ValueError, match=pattern):
            clf.partial_fit(*args)
        assert _fitted_attributes(clf) == attributes and clf.out_activation_ == "softmax"
        for a, b in zip(clf.model_.get_weights(), weights):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(clf.predict_proba(X), proba)
    reg = MLPRegressor(hidden_layer_sizes=(6,), random_state=0).partial_fit(X, y.astype(float))
    with pytest.raises(ValueError, match="y has 2 output"):
        reg.partial_fit(X, np.column_stack([y, y]).astype(float))
    assert reg.predict(X).shape == (80,)


def test_partial_fit_failing_in_training_or_on_its_first_call_leaves_it_unfitted(monkeypatch):
    X, y = _blobs(n=80)
    first = MLPClassifier(hidden_layer_sizes=(6,), random_state=0)
    with pytest.raises(ValueError, match="labels not in classes_"):
        first.partial_fit(X, y, classes=[0, 1])
    _assert_unfitted(first, X)
    clf = MLPClassifier(hidden_layer_sizes=(6,), random_state=0).partial_fit(X, y, classes=[0, 1, 2])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(clf.model_, "fit", interrupted)  # the model's training is interrupted
    with pytest.raises(KeyboardInterrupt):
        clf.partial_fit(X, y)
    _assert_unfitted(clf, X)


# -- scikit-learn's semantics: stopping, warnings, the penalty, callbacks ----------------------------
def test_stops_when_sklearn_stops_on_digits():
    """scikit-learn's digits, (100,), adam, defaults: the loss-based stopping rule (count of epochs
    without a fall of tol, stop when it exceeds n_iter_no_change, the loss including alpha's term)
    ends training within a few epochs of where scikit-learn's MLP ends it (before: 281 against 130)."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier as SkMLP

    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    X, y = load_digits(return_X_y=True)
    for seed in (0, 1):
        with threadpool_limits(1):  # small products: BLAS threads only contend (40 s instead of 3 on 2 busy cores)
            ours = MLPClassifier(hidden_layer_sizes=(100,), random_state=seed).fit(X, y)
            theirs = SkMLP(hidden_layer_sizes=(100,), random_state=seed).fit(X, y)
        assert theirs.n_iter_ < 200 and ours.n_iter_ < 200  # both stopped by the rule, not by max_iter
        assert abs(ours.n_iter_ - theirs.n_iter_) <= 0.15 * theirs.n_iter_, (seed, ours.n_iter_, theirs.n_iter_)
        assert ours.best_loss_ == min(ours.loss_curve_) and len(ours.loss_curve_) == ours.n_iter_


def test_convergence_warning_when_max_iter_ends_training():
    from sklearn.exceptions import ConvergenceWarning

    X, y = _blobs()
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    assert xpmlp.estimators.ConvergenceWarning is ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP

    kw = dict(hidden_layer_sizes=(8,), max_iter=50, tol=10.0, n_iter_no_change=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # stopped by the rule (tol so large no epoch counts as progress), or one partial_fit epoch: no warning
        est = MLPClassifier(**kw).fit(X, y)
        assert est.n_iter_ == SkMLP(**kw).fit(X, y).n_iter_ == 4  # the first epoch sets best_loss_, then 3 > 2
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, random_state=0).partial_fit(X, y, classes=[0, 1, 2])


def test_adaptive_learning_rate_divides_by_five_before_stopping():
    from sklearn.neural_network import MLPClassifier as SkMLP

    X, y = _blobs()
    kw = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.1,
              max_iter=30, tol=10.0, n_iter_no_change=1, random_state=0)
    est = MLPClassifier(**kw).fit(X, y)
    # from the third epoch, every second one the count exceeds 1: lr 0.1 -> 0.02 -> ... -> 0.1 / 5**8 <= 1e-6
    # (eight divisions, at epochs 3, 5, ..., 17), then at epoch 19 the stop
    assert est.model_.optimizer.lr == pytest.approx(0.1 / 5**8)
    assert est.n_iter_ == SkMLP(**kw).fit(X, y).n_iter_ == 19


def test_alpha_penalises_weights_not_biases():
    """A large alpha drives the weights to zero; the output bias is not penalised, so the regressor
    still predicts the targets' mean (a penalised bias would be pulled to zero), as scikit-learn's."""
    from sklearn.neural_network import MLPRegressor as SkMLP

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = 5.0 + 0.1 * rng.normal(size=200)
    kw = dict(hidden_layer_sizes=(4,), alpha=50.0, solver="sgd", learning_rate_init=0.01, max_iter=300,
              n_iter_no_change=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = MLPRegressor(**kw).fit(X, y), SkMLP(**kw).fit(X, y)
    for est in (ours, theirs):
        assert np.abs(est.coefs_[0]).max() < 0.05  # the first layer's weights are gone
        assert est.intercepts_[-1][0] > 3.5  # the output bias carries the mean
        np.testing.assert_allclose(est.predict(X), 5.0, atol=0.1)
    assert ours.loss_curve_[-1] == pytest.approx(theirs.loss_curve_[-1], rel=0.3)


def test_sklearn_callbacks_api():
    """scikit-learn's callbacks (sklearn.callback, 1.9): each epoch is a task; ScoringMonitor scores
    the estimator as fitted at the end of each epoch; a callback returning True stops training."""
    callback = pytest.importorskip("sklearn.callback")

    class StopAfter:
        def __init__(self, n):
            self.n, self.ends = n, []

        def setup(self, estimator, context):
            self.ends.clear()

        def teardown(self, estimator, context):
            pass

        def on_fit_task_begin(self, estimator, context, *, X=None, y=None, metadata=None, fitted_estimator=None):
            pass

        def on_fit_task_end(self, estimator, context, *, X=None, y=None, metadata=None, fitted_estimator=None):
            self.ends.append(context.task_name)
            return context.task_name == "epoch" and len(self.ends) >= self.n

    X, y = _blobs()
    monitor, stop = callback.ScoringMonitor(scoring="accuracy"), StopAfter(4)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).set_callbacks(monitor, stop)
    est.fit(X, y)
    assert est.n_iter_ == 4 and stop.ends == ["epoch"] * 4 + ["fit"]
    logs = monitor.get_logs().data
    scores = [row["accuracy"] for row in logs if row.get("task_name") == "epoch"]
    assert len(scores) == 4 and all(0 <= s <= 1 for s in scores)
    # the last epoch's score is the fitted estimator's own
    assert scores[-1] == pytest.approx(est.score(X, y))


WITHOUT_SKLEARN_CALLBACK = """
import sys
sys.modules["sklearn.callback"] = None  # a scikit-learn before 1.9
import numpy as np
from xpmlp import MLPClassifier
X = np.random.default_rng(0).normal(size=(60, 3))
y = (X[:, 0] > 0).astype(int)
est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, y)
print(est.n_iter_, hasattr(est, "set_callbacks"))
"""


def test_estimators_work_without_sklearn_callback_module():
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", WITHOUT_SKLEARN_CALLBACK], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "False"]


def _sparse_text(n=150, d=300, seed=0):
    """Bag-of-words counts, TF-IDF weighted and row-normalised (about 3% stored), with labels from words."""
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(seed)
    counts = sp.random(n, d, density=0.03, random_state=seed, format="csr",
                       data_rvs=lambda k: rng.integers(1, 4, size=k).astype(float))
    idf = np.log((1 + n) / (1 + np.bincount(counts.indices, minlength=d))) + 1
    X = sp.csr_matrix(counts.multiply(idf[None, :]))
    X = sp.csr_matrix(X.multiply(1 / np.maximum(np.sqrt(X.multiply(X).sum(axis=1)), 1e-12)))
    y = np.asarray(X[:, :100].sum(axis=1) > X[:, 100:200].sum(axis=1)).ravel().astype(int)
    return X, y


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_estimators_train_on_sparse_input_as_on_dense(fmt):
    X, y = _sparse_text()
    X = X.asformat(fmt)
    kw = dict(hidden_layer_sizes=(16,), max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse, dense = MLPClassifier(**kw).fit(X, y), MLPClassifier(**kw).fit(X.toarray(), y)
        reg_sparse = MLPRegressor(**kw).fit(X, y * 2.0)
        reg_dense = MLPRegressor(**kw).fit(X.toarray(), y * 2.0)
    # the same run up to the summation order of the sparse product (float64)
    np.testing.assert_allclose(sparse.predict_proba(X), dense.predict_proba(X.toarray()), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(reg_sparse.predict(X), reg_dense.predict(X.toarray()), rtol=1e-10, atol=1e-12)
    assert sparse.score(X, y) > 0.9


SPARSE_WITHOUT_SKLEARN = """
import sys
sys.modules["sklearn"] = None
import numpy as np, scipy.sparse as sp
from xpmlp import MLPClassifier
X = sp.random(80, 40, density=0.1, random_state=0, format="csr")
y = (np.asarray(X[:, :20].sum(axis=1)).ravel() > np.asarray(X[:, 20:].sum(axis=1)).ravel()).astype(int)
est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
print(est.predict(X).shape, est.predict_proba(X.tocsc()).shape)
"""


def test_sparse_input_without_sklearn():
    pytest.importorskip("scipy")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", SPARSE_WITHOUT_SKLEARN], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(80,) (80, 2)"


def _targets(kind, X):
    s = X @ np.array([1.0, -2.0, 0.5, 1.5])
    if kind == "regression":
        return s
    if kind == "regression-2":
        return np.stack([s, X[:, 0] * X[:, 1]], axis=1)
    if kind == "binary":
        return (s > 0).astype(int)
    if kind == "multiclass":
        return np.digitize(s, [-1.0, 1.0])
    return np.stack([s > 0, X[:, 1] > 0, X[:, 2] + X[:, 3] > 0], axis=1).astype(int)  # multilabel


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["regression", "regression-2", "binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("batching", ["full-weighted", "minibatch"])
def test_epochs_from_the_same_weights_are_sklearns(kind, solver, batching):
    """From the same weights, unshuffled, epochs of sgd (Nesterov momentum) and adam give
    scikit-learn's weights and loss curve: its objective (half squared error for regression, summed
    label log losses for multilabel, alpha on weights only, per unit of sample weight), its updates."""
    from sklearn.neural_network import MLPClassifier as SkC
    from sklearn.neural_network import MLPRegressor as SkR

    import inspect

    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    y = _targets(kind, X)
    weighted = batching == "full-weighted"
    sw = rng.integers(0, 4, size=60).astype(float) if weighted else None
    ours_cls, theirs_cls = (MLPRegressor, SkR) if kind.startswith("regression") else (MLPClassifier, SkC)
    if weighted and "sample_weight" not in inspect.signature(theirs_cls.fit).parameters:
        pytest.skip("scikit-learn's MLP takes sample_weight from 1.7 (this is the oldest-dependencies run)")
    weights = {} if sw is None else {"sample_weight": sw}
    kw = dict(hidden_layer_sizes=(5,), activation="tanh", solver=solver, alpha=0.01, learning_rate_init=0.01,
              batch_size=60 if weighted else 20, shuffle=False, n_iter_no_change=1000, warm_start=True,
              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        theirs = theirs_cls(**kw, max_iter=1).fit(X, y)
        ours = ours_cls(**kw, max_iter=1).fit(X, y)
        start = [w.copy() for pair in zip(theirs.coefs_, theirs.intercepts_) for w in pair]
        ours.model_.set_weights(start)
        theirs.set_params(max_iter=5).fit(X, y, **weights)
        ours.set_params(max_iter=5).fit(X, y, **weights)
    # Adam is PyTorch's: epsilon is added to the bias-corrected root (scikit-learn adds it before the
    # correction), a difference of order epsilon; sgd's updates are scikit-learn's to rounding
    tol = dict(rtol=1e-9, atol=1e-12) if solver == "sgd" else dict(rtol=1e-4, atol=1e-6)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, **tol)
    # with several batches the reported penalty is that of the epoch's starting weights (scikit-learn
    # adds each batch's): a small part of the loss
    np.testing.assert_allclose(ours.loss_curve_[-5:], theirs.loss_curve_[-5:], rtol=tol["rtol"] if weighted else 1e-3)


@pytest.mark.parametrize("kind", ["regression", "binary", "multiclass", "multilabel"])
def test_lbfgs_solver_reaches_sklearns_minimum_from_the_same_weights(kind):
    """solver="lbfgs" minimises scikit-learn's objective: from the same start, the same weights,
    loss_ and (nearly) the same number of iterations; no loss_curve_, as scikit-learn."""
    from sklearn.neural_network import MLPClassifier as SkC
    from sklearn.neural_network import MLPRegressor as SkR

    rng = np.random.default_rng(4)
    X = rng.normal(size=(80, 4))
    y = _targets(kind, X)
    ours_cls, theirs_cls = (MLPRegressor, SkR) if kind.startswith("regression") else (MLPClassifier, SkC)
    kw = dict(hidden_layer_sizes=(4,), activation="tanh", solver="lbfgs", alpha=0.5, tol=1e-7, warm_start=True,
              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = theirs_cls(**kw, max_iter=1).fit(X, y)
        ours = ours_cls(**kw, max_iter=1).fit(X, y)
        ours.model_.set_weights([w.copy() for pair in zip(theirs.coefs_, theirs.intercepts_) for w in pair])
        theirs.set_params(max_iter=500).fit(X, y)
        ours.set_params(max_iter=500).fit(X, y)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-5)  # both stop where the gradient is below tol
    # the same minimum: the same predictions (the weights themselves to 1e-2: the valley is flat)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, atol=1e-2)
    method = "predict" if kind == "regression" else "predict_proba"
    np.testing.assert_allclose(getattr(ours, method)(X), getattr(theirs, method)(X), rtol=1e-3, atol=1e-3)
    assert abs(ours.n_iter_ - theirs.n_iter_) <= 0.2 * theirs.n_iter_ + 3
    assert not hasattr(ours, "loss_curve_") and not hasattr(theirs, "loss_curve_")
    with pytest.raises(AttributeError, match="partial_fit is only available for stochastic optimizers"):
        ours.partial_fit(X, y, **({"classes": np.unique(y)} if kind in ("binary", "multiclass") else {}))


def test_sklearn_progress_bar(capsys):
    """scikit-learn's ProgressBar (it needs rich, in the test extras) follows the epochs to the end,
    also when training stops before max_iter."""
    callback = pytest.importorskip("sklearn.callback")
    pytest.importorskip("rich")
    X, y = _blobs()
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=300, tol=10.0, n_iter_no_change=2, random_state=0)
    est.set_callbacks(callback.ProgressBar()).fit(X, y)
    out = capsys.readouterr()
    shown = out.out + out.err
    assert est.n_iter_ == 4 and "MLPClassifier - fit" in shown and "100%" in shown, shown

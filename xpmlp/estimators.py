"""scikit-learn compatible estimators: ``MLPClassifier`` and ``MLPRegressor`` on NumPy or a GPU.

They take scikit-learn's parameter names and defaults and expose its fitted attributes, plus
xpmlp's own options (device, dtype, per-layer activations, dropout, class_weight,
restore_best_weights). scikit-learn is optional: importing xpmlp never imports it. When it is
installed, input validation is scikit-learn's own (``validate_data``), so errors, feature names
and pandas handling are exactly what its users know; without it, xpmlp's checks apply.

A ``fit`` that raises - bad input, divergence, a ``KeyboardInterrupt`` - leaves the estimator
unfitted: every fitted attribute (``model_``, ``classes_``, ``n_features_in_``, ``coefs_``, ...)
is removed, so ``predict`` and scikit-learn's ``check_is_fitted`` raise ``NotFittedError``.
That holds for a refit too, ``warm_start`` included: the failed training may have changed the
previous model in place, and a half-trained model must not pass for the old one. ``partial_fit``
is the same, except when it refuses a batch while checking it, before training: then nothing
was changed, and the estimator keeps its model, so one bad batch does not end a stream.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import string
import types
import warnings
from typing import Any

import numpy as np

from .backend import check_missing, host_array, is_device_library_array, is_sparse, resolve, to_numpy
from .callbacks import Callback
from .metrics import r2_from_sums
from .model import MLP, Sequential
from .lbfgs import LBFGS
from .optim import SGD, Adam, AdamW, RMSprop

__all__ = ["MLPClassifier", "MLPRegressor", "NotFittedError", "ConvergenceWarning"]

try:  # scikit-learn's own warning class when it is installed, so its users' filters apply
    from sklearn.exceptions import ConvergenceWarning
except ImportError:
    class ConvergenceWarning(UserWarning):  # type: ignore[no-redef]
        """Training ended (max_iter) before the stopping rule was met."""

try:  # scikit-learn's callbacks API (1.9 and newer): set_callbacks(ProgressBar(), ScoringMonitor(...))
    from sklearn.callback import CallbackSupportMixin as _CallbackSupport
    from sklearn.callback import with_callbacks as _with_callbacks
except ImportError:
    class _CallbackSupport:  # type: ignore[no-redef]
        pass

    def _with_callbacks(method):
        return method

_SK_ACTIVATIONS = {"logistic": "sigmoid", "identity": "identity"}
_SOLVERS = ("lbfgs", "sgd", "adam", "adamw", "rmsprop")


# The Parameters, Attributes, Raises and See Also sections both estimators share, written once;
# _shared_doc fills in where they differ and puts them where a class docstring says $shared.
_SHARED_DOC = string.Template("""    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default=(100,)
        The width of each hidden layer.
    activation : str or list of str, default="relu"
        The hidden layers' activation: "relu", "tanh", "logistic", "identity", any xpmlp
        activation name, or a list with one per hidden layer.
    solver : {"adam", "sgd", "lbfgs", "adamw", "rmsprop"}, default="adam"
        The optimiser; "lbfgs" trains full batch with :class:`xpmlp.LBFGS`.
    alpha : float, default=0.0001
        The L2 penalty on the weights (not the biases), as scikit-learn's.
    batch_size : int or "auto", default="auto"
        Rows per batch of the stochastic solvers; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        The learning-rate schedule of ``solver="sgd"``.
    learning_rate_init : float, default=0.001
        The initial learning rate of the stochastic solvers.
    power_t : float, default=0.5
        The exponent of "invscaling" (sgd).
    max_iter : int, default=200
        Epochs of the stochastic solvers; iterations of "lbfgs".
    shuffle : bool, default=True
        Shuffle the rows every epoch (stochastic solvers).
    random_state : int, RandomState or None, default=None
        Seeds the weights, the shuffles, dropout and the validation split.
    tol : float, default=1e-4
        Stop when the training loss (or, with ``early_stopping``, the validation score) has not
        improved by ``tol`` for ``n_iter_no_change`` epochs; "lbfgs"'s gradient tolerance.
    verbose : bool, default=False
        Print the loss of each iteration.
    warm_start : bool, default=False
        Start ``fit`` from the previous fit's weights.
    momentum : float, default=0.9
        The momentum of "sgd".
    nesterovs_momentum : bool, default=True
        Nesterov momentum for "sgd".
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows and stop on the validation score, putting
        back the weights of the best one.
    validation_fraction : float, default=0.1
        The share of rows held out with ``early_stopping``, in (0, 1).
    beta_1 : float, default=0.9
        Adam's first-moment decay.
    beta_2 : float, default=0.999
        Adam's second-moment decay.
    epsilon : float, default=1e-8
        Adam's and RMSprop's epsilon.
    n_iter_no_change : int, default=10
        Epochs without improvement by ``tol`` before stopping (stochastic solvers).
    max_fun : int, default=15000
        The most loss evaluations of "lbfgs".
    device : str, default="cpu"
        Where the model runs (xpmlp's option): "cpu", "cuda", "cuda:N" or "auto".
    dtype : {"float32", "float64"} or None, default=None
        None: the input's, as scikit-learn, on the CPU, and float32 on a GPU, where float64 is a
        silent slowdown.
    dropout : float, default=0.0
        The dropout rate after each hidden layer (xpmlp's option).
$class_weight    restore_best_weights : bool, default=False
        Without ``early_stopping``, put back the weights of the lowest training loss at the end
        (xpmlp's option).
    diagnose : bool, default=False
        Run the MLP doctor (see ``diagnose`` of :meth:`xpmlp.Sequential.fit`); its findings are
        issued as :class:`xpmlp.DoctorWarning` and kept as ``doctor_``, a :class:`xpmlp.Report`,
        for each fit or partial_fit call.

    Attributes
    ----------
$classes_attribute    model_ : Sequential
        The trained xpmlp model.
    coefs_ : list of ndarray
        The weight matrices, layer by layer (NumPy copies).
    intercepts_ : list of ndarray
        The bias vectors, layer by layer.
    n_features_in_ : int
        The number of input features.
    n_layers_ : int
        Layers, input and output included.
    n_outputs_ : int
        Output units.
    out_activation_ : str
$out_activation    loss_ : float
        The last loss, in scikit-learn's units.
    loss_curve_ : list of float
        The loss of each epoch (stochastic solvers).
    best_loss_ : float or None
        The lowest training loss (without ``early_stopping``).
    validation_scores_ : list of float or None
        The validation score of each epoch, with ``early_stopping``.
    best_validation_score_ : float or None
        The best validation score, with ``early_stopping``.
    n_iter_ : int
        Epochs (or "lbfgs" iterations) run by the last fit.
    t_ : int
        Training rows seen by the stochastic solvers.
    doctor_ : Report
        With ``diagnose``, the MLP doctor's findings of the last fit.

    Raises
    ------
    ValueError
        At fit, for a parameter out of range (solver, learning_rate, hidden_layer_sizes,
        max_iter, validation_fraction) or bad data.

    See Also
    --------
    xpmlp.MLP : the model underneath, with xpmlp's whole API.
""")


def _shared_doc(**differences: str):
    """Class decorator: the class docstring's ``$shared`` line becomes ``_SHARED_DOC`` with ``differences``."""
    def decorate(cls):
        cls.__doc__ = cls.__doc__.replace("    $shared\n", _SHARED_DOC.substitute(differences))
        return cls
    return decorate


def _sklearn():
    try:
        import sklearn  # noqa: F401
        return True
    except ImportError:
        return False


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit`` (scikit-learn's own class when it is installed)."""


def _not_fitted(est):
    message = (f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with appropriate "
               "arguments before using this estimator.")
    if _sklearn():
        from sklearn.exceptions import NotFittedError as SkNotFitted

        return SkNotFitted(message)
    return NotFittedError(message)


class _ParamsFallback:
    """get_params/set_params/repr as scikit-learn's BaseEstimator, for when it is not installed."""

    @classmethod
    def _get_param_names(cls):
        return sorted(p.name for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self")

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                                 f"Valid parameters are: {valid!r}.")
            setattr(self, key, value)
        return self

    def __repr__(self):
        defaults = type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if repr(v) != repr(defaults[k])}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


class _stochastic_only:
    """A method that exists only for the stochastic solvers: with ``solver="lbfgs"`` reading it raises
    AttributeError, so ``hasattr(est, "partial_fit")`` is False, as with scikit-learn's MLP."""

    def __init__(self, method):
        self.method = method
        functools.update_wrapper(self, method)

    def __get__(self, est, owner=None):
        if est is None:
            return self.method
        if est.solver == "lbfgs":
            raise AttributeError(f"partial_fit is only available for stochastic optimizers; {est.solver!r} is "
                                 "not stochastic")
        return types.MethodType(self.method, est)


class _ClassifierFallback:
    def score(self, X, y, sample_weight=None):
        """Mean accuracy (exact match of all labels for multilabel), as scikit-learn's accuracy_score."""
        pred, y = self.predict(X), host_array(y, "y")
        hits = np.all(pred == y, axis=1) if pred.ndim == 2 else pred == y
        return float(np.average(hits, weights=sample_weight))


class _RegressorFallback:
    def score(self, X, y, sample_weight=None):
        """Coefficient of determination R^2 averaged over outputs, as scikit-learn's r2_score."""
        y = host_array(y, "y").astype(np.float64)
        pred = self.predict(X)
        y2, p2 = y.reshape(len(y), -1), pred.reshape(len(pred), -1)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        mean = np.average(y2, axis=0, weights=w)
        return r2_from_sums((w[:, None] * (y2 - p2) ** 2).sum(axis=0), (w[:, None] * (y2 - mean) ** 2).sum(axis=0))


try:  # with scikit-learn installed the estimators are its own kind: params, tags, score, html repr
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.base import RegressorMixin as _RegressorMixin
except ImportError:
    _Base, _ClassifierMixin, _RegressorMixin = _ParamsFallback, _ClassifierFallback, _RegressorFallback


def _kernel_squares(model) -> float:
    """Sum of the squared weights alpha penalises: the Dense kernels, ``flat.data[:n_decay]`` (one host read)."""
    flat = model.flat
    return float(to_numpy(model.xp.sum(flat.data[:flat.n_decay] ** 2)))


class _SklearnRules(Callback):
    """scikit-learn's MLP bookkeeping and stopping rules, epoch by epoch, for the stochastic solvers.

    Each epoch: the loss scikit-learn reports (the data loss plus ``alpha/2 * ||W||^2``, biases
    excluded, per unit of sample weight, summed over the epoch's batches as scikit-learn sums
    them) goes to ``loss_curve_``; ``n_iter_`` and ``t_`` advance. Then the no-improvement count:
    the training loss did not fall below ``best_loss_ - tol`` (or, with early stopping, the
    validation score did not rise above ``best_validation_score_ + tol``). When the count
    exceeds ``n_iter_no_change``, sgd with ``learning_rate="adaptive"`` divides the learning
    rate by 5 (until it is at most 1e-6) and starts counting again; otherwise training stops.
    With early stopping, the weights of the best validation score are put back at the end (and,
    with xpmlp's ``restore_best_weights``, without it, those of the lowest training loss).
    """

    def __init__(self, est, penalty_scale: float, n: int, incremental: bool, loss_scale: float, scale: float,
                 count: int, score: str):
        self.est, self.penalty_scale, self.n, self.incremental = est, penalty_scale, n, incremental
        self.count, self.score = count, score  # the no-improvement count so far; the validation score's log key
        # xpmlp's loss over scikit-learn's, and its gradient's (so its learning rate's meaning): _scales
        self.loss_scale, self.scale = loss_scale, scale
        self.stopped, self.best, self.squares = False, None, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        # scikit-learn adds the penalty of the weights each batch starts from: those of the epoch's start
        self.squares = _kernel_squares(self.model) if self.est.alpha else 0.0

    def on_epoch_end(self, epoch, logs=None):
        est, model = self.est, self.model
        flat = model.flat
        loss = logs["loss"] / self.loss_scale + 0.5 * est.alpha * self.squares * self.penalty_scale
        est.loss_curve_.append(loss)
        est.loss_, est.n_iter_, est.t_ = loss, est.n_iter_ + 1, est.t_ + self.n
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if est.early_stopping and not self.incremental:
            score = logs[self.score]
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            worse = score < est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_, self.best = score, flat.snapshot()
        else:
            worse = loss > est.best_loss_ - est.tol
            if loss < est.best_loss_ and est.restore_best_weights and not self.incremental:
                self.best = flat.snapshot()  # xpmlp's option: keep the weights of the lowest training loss
            est.best_loss_ = min(est.best_loss_, loss)
        self.count = self.count + 1 if worse else 0
        opt = model.optimizer
        if est.solver == "sgd" and est.learning_rate == "invscaling":  # lr in xpmlp's units: / scale
            opt.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t / self.scale
        if self.count > est.n_iter_no_change and not self.incremental:
            what = "Validation score" if est.early_stopping else "Training loss"
            message = f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs."
            if est.solver == "sgd" and est.learning_rate == "adaptive" and opt.lr * self.scale > 1e-6:
                opt.lr /= 5.0
                self.count = 0
                if est.verbose:
                    print(f"{message} Setting learning rate to {opt.lr * self.scale:f}")
            else:
                if est.verbose:
                    print(f"{message} Stopping.")
                self.stopped = model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best is not None:
            self.model.flat.restore(self.best)


class _SklearnCallbacks(Callback):
    """Runs scikit-learn's callbacks (``est.set_callbacks(...)``) on xpmlp's epochs: each epoch is a
    subtask of the fit task; a callback that asks to stop (``on_fit_task_end`` returns True) ends
    training after that epoch."""

    def __init__(self, est, context, **data):
        self.est, self.context, self.data = est, context, data
        self.task = None

    def on_epoch_begin(self, epoch, logs=None):
        self.task = self.context.subcontext(task_name="epoch")
        self.task.call_on_fit_task_begin(estimator=self.est, reconstruction_attributes=self._fitted, **self.data)

    def on_epoch_end(self, epoch, logs=None):
        task, self.task = self.task, None
        if task.call_on_fit_task_end(estimator=self.est, reconstruction_attributes=self._fitted, **self.data):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.task is not None:  # an epoch that did not finish: close its task
            self.task.call_on_fit_task_end(estimator=self.est)

    def _fitted(self):
        """The estimator's fitted attributes now, for a ``fitted_estimator`` copy (a copy of the model:
        the copy must not change as training goes on)."""
        return {"model_": Sequential.from_bytes(self.est.model_.to_bytes(), device=self.est.model_.backend)}


class _BaseMLP(_CallbackSupport, _Base):
    _kind: str | None = None  # "classifier" or "regressor"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, device="cpu",
                 dtype=None, dropout=0.0, class_weight=None, restore_best_weights=False, diagnose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype
        self.dropout = dropout
        self.class_weight = class_weight
        self.restore_best_weights = restore_best_weights
        self.diagnose = diagnose

    def __sklearn_is_fitted__(self):
        return hasattr(self, "model_")

    def _keep_doctor(self):
        """With diagnose=True, the MLP doctor's findings of the last fit (or partial_fit) as ``doctor_``."""
        if self.diagnose:
            self.doctor_ = self.model_.history.doctor

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise _not_fitted(self)

    def _forget(self):
        """Remove every fitted attribute: the estimator is as if never fitted."""
        fitted = [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]
        for name in fitted + ["_multilabel", "_y_1d", "_no_improvement_count"]:
            self.__dict__.pop(name, None)

    @contextlib.contextmanager
    def _unfitted_on_error(self, enabled=True):
        """Whatever raises inside (KeyboardInterrupt included) leaves the estimator unfitted, then propagates."""
        try:
            yield
        except BaseException:
            if enabled:
                self._forget()
            raise

    # -- validation ------------------------------------------------------------------------------------
    def __getstate__(self):
        # The model holds array-library modules, which do not pickle: store its safetensors bytes.
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        if "model_" in state:
            state["model_"] = state["model_"].to_bytes()
        return state

    def __setstate__(self, state):
        if isinstance(state.get("model_"), bytes):
            state = {**state, "model_": Sequential.from_bytes(state["model_"], device=state.get("device"))}
        self.__dict__.update(state)

    def _sample_weight(self, sample_weight, X):
        if sample_weight is None:
            return None
        if _sklearn():
            from sklearn.utils.validation import _check_sample_weight

            sample_weight = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if not np.any(sample_weight > 0):
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return sample_weight

    def _validate(self, X, y=None, reset=True, fitting=False):
        if fitting and y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        if is_sparse(X) and type(X).__module__.startswith("cupyx."):
            X = X.get()  # a cupyx sparse matrix: scikit-learn's checks run on a SciPy copy on the host
        elif is_device_library_array(X):
            X = to_numpy(X)  # CuPy/torch input: scikit-learn's checks run on the host
        if is_device_library_array(y):
            y = to_numpy(y)
        # pandas: a missing value is named by column and row; y is read by position as NumPy
        # (nullable Int64 labels stay integers, string and categorical labels become labels)
        if y is not None:
            y = host_array(y, "y")
        if _sklearn():
            from sklearn.utils.validation import validate_data

            check_missing(X, "X")  # X stays pandas for scikit-learn (feature names); host_array checks below

            # sparse X stays sparse (CSR or CSC; the model gathers CSR rows): never densified
            kwargs = dict(reset=reset, dtype=[np.float64, np.float32], accept_sparse=("csr", "csc"))
            if y is None:
                return validate_data(self, X, **kwargs), None
            return validate_data(self, X, y, multi_output=True, y_numeric=self._kind == "regressor",
                                 **kwargs)
        X = X if is_sparse(X) else host_array(X, "X")
        if X.dtype.kind not in "biuf" or X.ndim != 2:
            raise ValueError(f"X must be a 2-D array of real numbers, got shape {X.shape} and dtype {X.dtype}")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return X, y

    def _validate_params(self):
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or 'adaptive', got {self.learning_rate!r}")
        sizes = [self.hidden_layer_sizes] if np.isscalar(self.hidden_layer_sizes) else list(self.hidden_layer_sizes)
        if any(int(h) < 1 for h in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {self.hidden_layer_sizes}")
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be > 0, got {self.max_iter}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        return [int(h) for h in sizes]

    # -- training ----------------------------------------------------------------------------------------
    def _seed(self):
        rs = self.random_state
        if rs is None:
            return None
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(2**31))
        return int(rs)

    def _scales(self, n_outputs) -> tuple[float, float]:
        """(loss, gradient): xpmlp's loss and its gradient over scikit-learn's, for these targets.

        scikit-learn minimises half the squared error and reports its mean over outputs, but its
        gradient is that of their sum; it sums the labels' log losses where xpmlp averages them.
        So regression is (2, 2 / k), k labels (1 / k, 1 / k), classes (1, 1). The estimators train
        on xpmlp's loss with step sizes, epsilon, penalty and tolerances scaled by the gradient's
        ratio, so each update is scikit-learn's, and report losses in scikit-learn's units.
        """
        if self._kind == "regressor":
            return 2.0, 2.0 / n_outputs
        if getattr(self, "_multilabel", False):
            return 1.0 / n_outputs, 1.0 / n_outputs
        return 1.0, 1.0

    def _optimizer(self, weight_decay, scale):
        # scikit-learn's L2 term spares the biases. The gradient is `scale` times scikit-learn's:
        # SGD takes lr / scale, Adam and RMSprop (invariant to the gradient's scale but for
        # epsilon) eps * scale, and the coupled penalty is scaled with the loss.
        common = dict(weight_decay=weight_decay * scale, decay_bias=False)
        if self.solver == "sgd":
            return SGD(lr=self.learning_rate_init / scale, momentum=self.momentum,
                       nesterov=self.nesterovs_momentum and self.momentum > 0, **common)
        if self.solver == "rmsprop":
            return RMSprop(lr=self.learning_rate_init, eps=self.epsilon * scale, **common)
        if self.solver == "adamw":  # decoupled decay shrinks the weights directly: not scaled
            return AdamW(lr=self.learning_rate_init, beta_1=self.beta_1, beta_2=self.beta_2, eps=self.epsilon * scale,
                         weight_decay=weight_decay, decay_bias=False)
        return Adam(lr=self.learning_rate_init, beta_1=self.beta_1, beta_2=self.beta_2, eps=self.epsilon * scale,
                    **common)

    def _fit_lbfgs(self, X, targets, loss, sample_weight, class_weight, scales):
        """scikit-learn's solver="lbfgs": full batch, max_iter iterations, max_fun evaluations, gtol=tol,
        on the objective whose gradient scikit-learn uses (scaled: see ``_scales``)."""
        loss_scale, grad_scale = scales
        optimizer = LBFGS(max_iter=int(self.max_iter), max_fun=int(self.max_fun), tol=self.tol * grad_scale,
                          l2=self.alpha * grad_scale)
        self.model_.fit(X, targets, loss=loss, optimizer=optimizer, verbose=2 if self.verbose else 0,
                        sample_weight=sample_weight, class_weight=class_weight, diagnose=bool(self.diagnose))
        self._keep_doctor()
        # loss_ in scikit-learn's units: the data term over loss_scale, plus alpha/2 ||W||^2 / sum(w)
        total = float(X.shape[0]) if sample_weight is None else float(np.sum(sample_weight))
        penalty = 0.5 * self.alpha * _kernel_squares(self.model_) / total
        self.n_iter_ = optimizer.n_iter_
        self.loss_ = (optimizer.loss_ - grad_scale * penalty) / loss_scale + penalty
        if not optimizer.converged_:
            warnings.warn(f"lbfgs failed to converge after {optimizer.n_iter_} iteration(s): {optimizer.message_}. "
                          "Increase the number of iterations (max_iter) or scale the data.",
                          ConvergenceWarning, stacklevel=4)

    def _activations(self, n_hidden):
        acts = self.activation if isinstance(self.activation, (list, tuple)) else [self.activation] * n_hidden
        return [_SK_ACTIVATIONS.get(a, a) for a in acts]

    def _fit(self, X, targets, n_outputs, loss, incremental, sample_weight=None, class_weight=None, y=None):
        sizes = self._validate_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        n = X.shape[0]
        batch_size = min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)
        if not hasattr(self, "model_") or not (self.warm_start or incremental):
            # dtype None follows the input, as scikit-learn does (float32 data stays float32), except
            # on a GPU, where float64 is many times slower: there it is float32
            backend = resolve(self.device)
            dtype = self.dtype or ("float32" if X.dtype == np.float32 or backend.is_gpu else "float64")
            # Glorot-uniform weights for every layer, as scikit-learn initialises (biases start at zero)
            self.model_ = MLP([X.shape[1], *sizes, n_outputs], activation=self._activations(len(sizes)),
                              dropout=self.dropout, init="glorot_uniform", device=backend, dtype=dtype,
                              seed=self._seed())
            self.t_, self.n_iter_ = 0, 0
            for name in ("loss_curve_", "validation_scores_", "best_loss_", "best_validation_score_"):
                self.__dict__.pop(name, None)
        if self.solver != "lbfgs" and not hasattr(self, "loss_curve_"):  # as scikit-learn: none for lbfgs
            self.loss_curve_, self._no_improvement_count = [], 0
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_loss_ = np.inf if not self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
        loss_scale, scale = self._scales(n_outputs)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, targets, loss, sample_weight, class_weight, (loss_scale, scale))
            return self._fitted(sizes, n_outputs)
        # scikit-learn's objective per batch: (sum_i w_i loss_i + alpha/2 ||W||^2) / sum_i w_i. fit's
        # loss is sum_i w_i loss_i / rows, so weights scaled to a mean of 1 give the first part, and
        # the decay alpha * n / (batch_size * sum(w)) the second (exactly with one batch, on average
        # with several): weights then mean what repeated rows mean.
        total = float(n) if sample_weight is None else float(np.sum(sample_weight))
        if sample_weight is not None:
            sample_weight = sample_weight * (n / total)
        n_batches = math.ceil(n / batch_size)
        if incremental and getattr(self.model_, "optimizer", None) is not None:
            optimizer = self.model_.optimizer  # partial_fit goes on with the optimiser's state
        else:  # fit (warm_start too) starts a fresh optimiser, as scikit-learn does
            optimizer = self._optimizer(self.alpha * n / (batch_size * total), scale)
        self.n_iter_ = 0
        # t_ counts training rows: without the validation part fit holds out (round(fraction * n) rows)
        n_train = n - int(np.floor(self.validation_fraction * n + 0.5)) if self.early_stopping else n
        rules = _SklearnRules(self, n_batches / total, n_train, incremental, loss_scale, scale,
                              self._no_improvement_count, "val_accuracy" if self._kind == "classifier" else "val_r2")
        callbacks, kwargs = [rules], {}
        if self.early_stopping:
            kwargs = dict(validation_split=self.validation_fraction,
                          metrics=["accuracy" if self._kind == "classifier" else "r2"])
        epochs = 1 if incremental else int(self.max_iter)
        context = None
        if getattr(self, "_skl_callbacks", None):  # scikit-learn's callbacks API: the fit is a task, each epoch a subtask
            context = self._init_callback_context(max_subtasks=epochs)
            data = dict(X=X, y=y, metadata=None if sample_weight is None else {"sample_weight": sample_weight})
            context.call_on_fit_task_begin(estimator=self, **data)
            callbacks.append(_SklearnCallbacks(self, context, **data))
        self.model_.fit(X, targets, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                        shuffle=self.shuffle, verbose=0, sample_weight=sample_weight,
                        class_weight=class_weight, callbacks=callbacks, diagnose=bool(self.diagnose), **kwargs)
        self._keep_doctor()
        self._no_improvement_count = rules.count
        if not incremental and not rules.stopped and self.n_iter_ == int(self.max_iter):
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        self._fitted(sizes, n_outputs)
        if context is not None:
            context.call_on_fit_task_end(estimator=self, reconstruction_attributes={}, **data)
        return self

    def _fitted(self, sizes, n_outputs):
        weights = self.model_.get_weights()
        self.coefs_, self.intercepts_ = weights[0::2], weights[1::2]
        self.n_layers_ = len(sizes) + 2
        self.n_outputs_ = n_outputs
        return self

    def _outputs(self, X):
        self._check_fitted()
        X, _ = self._validate(X, reset=False)
        # float64 out, as scikit-learn returns (the model itself may compute in float32)
        return to_numpy(self.model_.predict(X, batch_size=8192)).astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags


@_shared_doc(
    class_weight=(
        '    class_weight : dict, "balanced" or None, default=None\n'
        "        Weights of the classes (xpmlp's option), keyed by label: each row's loss is multiplied by\n"
        "        its class's weight; \"balanced\" weighs classes inversely to their frequency.\n"),
    classes_attribute=(
        "    classes_ : ndarray of shape (n_classes,)\n"
        "        The class labels (``arange(n_labels)`` for multilabel targets).\n"),
    out_activation='        "logistic" (binary and multilabel) or "softmax".\n')
class MLPClassifier(_ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier with scikit-learn's API, on NumPy or a CUDA GPU.

    Binary targets get one sigmoid output (``out_activation_ = "logistic"``), several classes a
    softmax, and 2-D indicator targets one sigmoid per label (multilabel). Labels may be strings.
    scikit-learn's parameter names and defaults, with xpmlp's own options (device, dtype,
    per-layer activations, dropout, class_weight, restore_best_weights, diagnose); see the module
    notes of :mod:`xpmlp.estimators` for how it differs from scikit-learn's.

    $shared

    Examples
    --------
    >>> from xpmlp import MLPClassifier
    >>> from xpmlp.datasets import make_xor
    >>> X, y = make_xor(200, seed=0)
    >>> clf = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", random_state=0).fit(X, y)
    >>> clf.predict(X[:4]).tolist(), y[:4].tolist()
    ([0, 1, 0, 0], [0, 1, 0, 0])
    >>> clf.predict_proba(X[:4]).shape, clf.out_activation_
    ((4, 2), 'logistic')
    """

    _kind = "classifier"

    def _encode(self, y, classes=None, reset=True):
        y = np.asarray(y)
        multilabel = y.ndim == 2 and y.shape[1] > 1
        if not reset and multilabel != self._multilabel:
            raise ValueError(f"y is {'a multilabel indicator matrix' if multilabel else 'class labels'} but "
                             f"{type(self).__name__} was fitted on "
                             f"{'a multilabel indicator matrix' if self._multilabel else 'class labels'}")
        if multilabel:
            if reset:
                self.classes_ = np.arange(y.shape[1])
                self._multilabel = True
            if not np.isin(y, (0, 1)).all():
                raise ValueError("multilabel targets must be a 0/1 indicator matrix")
            return y.astype(float), y.shape[1], "sigmoid_binary_cross_entropy"
        y = y.ravel()
        if _sklearn():
            from sklearn.utils.multiclass import check_classification_targets

            check_classification_targets(y)
        if reset:
            self.classes_ = np.unique(y if classes is None else np.asarray(classes))
            self._multilabel = False
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                             f"but the data contains only one class: {self.classes_[0]!r}")
        index = np.searchsorted(self.classes_, y)
        if np.any(index >= len(self.classes_)) or np.any(self.classes_[np.minimum(index, len(self.classes_) - 1)] != y):
            raise ValueError(f"y holds labels not in classes_ {self.classes_.tolist()}")
        if len(self.classes_) == 2:
            return index.astype(float), 1, "sigmoid_binary_cross_entropy"
        return index, len(self.classes_), "softmax_cross_entropy"

    def _class_weight(self):
        if self.class_weight is None or isinstance(self.class_weight, str):
            return self.class_weight
        position = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = [c for c in self.class_weight if c not in position]
        if unknown:
            raise ValueError(f"class_weight names classes {unknown} that are not in the data {self.classes_.tolist()}")
        return {position[c]: w for c, w in self.class_weight.items()}

    @_with_callbacks
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on X (n, d) and labels y (n,) or a 0/1 indicator matrix (n, k); returns self.

        If it raises, the estimator is left unfitted (see the module's docstring).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels (of any type), or a 0/1 indicator matrix for multilabel targets.
        sample_weight : array-like of shape (n_samples,), optional
            Each row's weight.

        Returns
        -------
        MLPClassifier
            The fitted estimator (self).

        Raises
        ------
        ValueError
            For bad parameters or data (fewer than 2 classes, a non-0/1 indicator matrix, ...).
        """
        with self._unfitted_on_error():
            X, y = self._validate(X, y, fitting=True)
            targets, n_out, loss = self._encode(y)
            self.out_activation_ = "softmax" if loss == "softmax_cross_entropy" else "logistic"
            return self._fit(X, targets, n_out, loss, incremental=False,
                             sample_weight=self._sample_weight(sample_weight, X), class_weight=self._class_weight(), y=y)

    @_stochastic_only
    @_with_callbacks
    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> MLPClassifier:
        """One epoch over (X, y); ``classes`` (all labels) is required on the first call.

        A batch refused while it is checked leaves a fitted estimator as it was; a failure
        during training, or on the first call, leaves it unfitted. Only for the stochastic
        solvers: with ``solver="lbfgs"`` the attribute does not exist.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or a 0/1 indicator matrix.
        classes : array-like of shape (n_classes,), optional
            Every label; required on the first call.
        sample_weight : array-like of shape (n_samples,), optional
            Each row's weight.

        Returns
        -------
        MLPClassifier
            The estimator (self).

        Raises
        ------
        ValueError
            If ``classes`` is missing on the first call, with ``early_stopping``, or for bad data.
        """
        first = not hasattr(self, "model_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        with self._unfitted_on_error(enabled=first):
            X, y = self._validate(X, y, reset=first, fitting=True)
            targets, n_out, loss = self._encode(y, classes, reset=first)
            weights, class_weight = self._sample_weight(sample_weight, X), self._class_weight()
        with self._unfitted_on_error():
            self.out_activation_ = "softmax" if loss == "softmax_cross_entropy" else "logistic"
            return self._fit(X, targets, n_out, loss, incremental=True, sample_weight=weights,
                             class_weight=class_weight, y=y)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n, n_classes); for multilabel, each label's probability.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            float64 probabilities, in the order of ``classes_``.

        Raises
        ------
        NotFittedError
            If the estimator is not fitted.
        """
        p = self._outputs(X)
        if p.shape[1] == 1 and not self._multilabel:
            return np.hstack([1.0 - p, p])
        return p

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """The logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Log-probabilities (``-inf`` where a probability is 0).
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row (for multilabel, each label with probability > 0.5).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_labels)
            Labels from ``classes_``, or a 0/1 indicator matrix for multilabel targets.

        Raises
        ------
        NotFittedError
            If the estimator is not fitted.
        """
        p = self.predict_proba(X)
        if self._multilabel:
            return (p > 0.5).astype(int)
        return self.classes_[np.argmax(p, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


@_shared_doc(
    class_weight=(
        "    class_weight : None, default=None\n"
        "        Classifiers only; kept so both estimators take the same parameters.\n"),
    classes_attribute="",
    out_activation='        "identity".\n')
class MLPRegressor(_RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor with scikit-learn's API, on NumPy or a CUDA GPU.

    The output layer is linear (``out_activation_ = "identity"``), trained on half the squared
    error as scikit-learn's. scikit-learn's parameter names and defaults, with xpmlp's own options
    (device, dtype, per-layer activations, dropout, restore_best_weights, diagnose); see the module
    notes of :mod:`xpmlp.estimators` for how it differs from scikit-learn's.

    $shared

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import MLPRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> y = X @ np.array([1.0, -2.0, 0.5]) + 0.1
    >>> reg = MLPRegressor(hidden_layer_sizes=(16,), solver="lbfgs", random_state=0).fit(X, y)
    >>> reg.predict(X[:3]).shape, reg.score(X, y) > 0.99
    ((3,), True)
    """

    _kind = "regressor"

    @_with_callbacks
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Train on X (n, d) and targets y (n,) or (n, k); returns self.

        If it raises, the estimator is left unfitted (see the module's docstring).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets.
        sample_weight : array-like of shape (n_samples,), optional
            Each row's weight.

        Returns
        -------
        MLPRegressor
            The fitted estimator (self).

        Raises
        ------
        ValueError
            For bad parameters or data.
        """
        with self._unfitted_on_error():
            X, y = self._validate(X, y, fitting=True)
            y = np.asarray(y, dtype=np.float64)
            self._y_1d = y.ndim == 1
            targets = y.reshape(-1, 1) if y.ndim == 1 else y
            self.out_activation_ = "identity"
            return self._fit(X, targets, targets.shape[1], "mse", incremental=False,
                             sample_weight=self._sample_weight(sample_weight, X), y=y)

    @_stochastic_only
    @_with_callbacks
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over (X, y).

        A batch refused while it is checked leaves a fitted estimator as it was; a failure
        during training, or on the first call, leaves it unfitted. Only for the stochastic
        solvers: with ``solver="lbfgs"`` the attribute does not exist.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The targets.
        sample_weight : array-like of shape (n_samples,), optional
            Each row's weight.

        Returns
        -------
        MLPRegressor
            The estimator (self).

        Raises
        ------
        ValueError
            With ``early_stopping``, if y's number of outputs changes, or for bad data.
        """
        first = not hasattr(self, "model_")
        with self._unfitted_on_error(enabled=first):
            X, y = self._validate(X, y, reset=first, fitting=True)
            y = np.asarray(y, dtype=np.float64)
            targets = y.reshape(-1, 1) if y.ndim == 1 else y
            if not first and targets.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {targets.shape[1]} output(s) but {type(self).__name__} was fitted "
                                 f"on {self.n_outputs_}")
            weights = self._sample_weight(sample_weight, X)
        with self._unfitted_on_error():
            if first:
                self._y_1d = y.ndim == 1
            self.out_activation_ = "identity"
            return self._fit(X, targets, targets.shape[1], "mse", incremental=True, sample_weight=weights, y=y)

    def predict(self, X: Any) -> np.ndarray:
        """The predicted targets.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            The inputs.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            float64 predictions, 1-D when the model was fitted on a 1-D y.

        Raises
        ------
        NotFittedError
            If the estimator is not fitted.
        """
        out = self._outputs(X)
        return out[:, 0] if self._y_1d else out

"""Sequential models and the ``MLP`` shorthand."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import numpy as np

from . import io as _io  # one way: io turns state dicts into files and never imports the model
from .backend import resolve, to_numpy
from .layers import LAYERS, Dense, Dropout, Layer, Standardize, activation_name, dense_for, get_activation
from .params import FlatParameters, Parameter
from .losses import get_loss
from .lr_find import lr_find as _lr_find
from .train import History, prepare_X, prepare_y, sample_weights, evaluate, fit, predict

__all__ = ["Sequential", "MLP", "load"]


def _on_device(method: Callable) -> Callable:
    """Run a model method with the model's device current (CuPy allocates on the current device)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.backend.activate(), self.backend.matmul_precision(self.tf32):
            return method(self, *args, **kwargs)
    return run


def _drop_parameter(doc: str | None, name: str) -> str | None:
    """``doc`` without the entry of parameter ``name`` (a line ``name : ...`` and its indented text)."""
    if not doc:
        return doc
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        head = line.strip()
        if head == name or head.startswith(name + " :"):
            indent = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1
            return "\n".join(lines[:i] + lines[j:])
    return doc


def _as_method(function: Callable) -> Callable:
    """A module function ``f(model, ...)`` as a model method, run on the model's device.

    Its signature names the model ``self`` and its docstring drops the model's entry, so the
    method documents (and introspects as) ``model.f(...)``.
    """
    method = _on_device(function)
    signature = inspect.signature(function)
    first, *rest = signature.parameters.values()
    method.__signature__ = signature.replace(parameters=[first.replace(name="self"), *rest])  # type: ignore[attr-defined]
    method.__doc__ = _drop_parameter(function.__doc__, first.name)
    return method


class Sequential:
    """A stack of layers trained end to end on one backend.

    Parameters
    ----------
    layers : list of Layer
    device : "cpu", "cuda", "cuda:N", "auto" or None
        Where to run (see :func:`xpmlp.backend.resolve`); None reads ``$XPMLP_DEVICE``.
    xp : module, optional
        Any Array API namespace instead of ``device`` (numpy, cupy, torch, array_api_strict);
        ``device`` then names a device of that namespace.
    dtype : "float32" (default) or "float64"
        Parameters and activations; inputs are cast to it at the edge.
    seed : int, optional
        Seeds the host generator for initial weights, shuffles and dropout masks, so one seed
        gives the same run on every backend.
    in_features : int, optional
        Input width, when the first layer does not name it; else taken from the first ``fit``.
    tf32 : bool, default False
        Let float32 matrix products use TF32 tensor cores on a CuPy GPU (compute capability 8.0
        and newer): faster, with inputs rounded to 10 mantissa bits. No effect elsewhere. Like the
        device, a run-time choice: not saved with the model.

    Attributes
    ----------
    layers : list of Layer
        The layers, in order.
    backend : Backend
        Where the model runs (:class:`~xpmlp.Backend`); ``xp`` is its namespace.
    loss : Loss or None
        The loss of the last ``fit``.
    optimizer : Optimizer or None
        The optimiser of the last ``fit``, with its state.
    history : History or None
        What the last ``fit`` recorded (:class:`~xpmlp.History`).
    flat : FlatParameters or None
        Every parameter's value and gradient in one buffer each, once built
        (:class:`xpmlp.params.FlatParameters`).

    Raises
    ------
    TypeError
        If an element of ``layers`` is not a :class:`~xpmlp.Layer`.
    ValueError
        If there is no Dense layer, or the dtype or device is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Dense, ReLU, Sequential
    >>> model = Sequential([Dense(8, in_features=2), ReLU(), Dense(1)], seed=0)
    >>> model.n_params
    33
    >>> X = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    >>> history = model.fit(X, X[:, :1] - X[:, 1:], loss="mse", epochs=2, verbose=0)
    >>> len(history.history["loss"])
    2
    >>> model.predict(X).shape
    (64, 1)
    """

    def __init__(self, layers: Any, *, device: str | None = None, xp: Any = None, dtype: str = "float32",
                 seed: int | None = None, in_features: int | None = None, tf32: bool = False) -> None:
        layers = list(layers)
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes Layer objects, got {type(layer).__name__}")
        if not any(isinstance(layer, Dense) for layer in layers):
            raise ValueError("a Sequential model needs at least one Dense layer")
        self.layers = layers
        self.backend = resolve(device, xp)
        self.xp = self.backend.xp
        self.backend.dtype(dtype)  # validates the name
        self.dtype = dtype
        self.seed = seed
        self.tf32 = bool(tf32)
        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        self._init_rng = np.random.default_rng(init_seq)
        self.shuffle_rng = np.random.default_rng(shuffle_seq)
        self.loss = None
        self.optimizer = None
        self.stop_training = False  # callbacks set it to end fit after the current epoch
        self.history: History | None = None
        self.in_features: int | None = None
        self.flat: FlatParameters | None = None  # every parameter's value and gradient, once built
        first = next(layer for layer in layers if isinstance(layer, Dense))
        width = in_features if in_features is not None else first.in_features
        if width is not None:
            self.build(width)

    # -- structure ---------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        """Whether the model has its weights (it knows its input width)."""
        return self.in_features is not None

    @_on_device
    def build(self, in_features: int) -> None:
        """Make every layer's parameters for inputs of width ``in_features``, in one flat buffer.

        Parameters are named ``layers.{i}.{key}`` (``layers.0.W``) and gathered, in layer order,
        into ``flat`` (see :mod:`xpmlp.params`); the layers then read views of it. ``fit`` builds
        an unbuilt model from its data.

        Parameters
        ----------
        in_features : int
            The input width.

        Raises
        ------
        ValueError
            If a layer was given another input width.
        """
        width = int(in_features)
        self.in_features = width
        for layer in self.layers:
            width = layer.build(width, self.backend, self.dtype, self._init_rng)
        self.out_features = width
        for i, layer in enumerate(self.layers):
            for key, p in layer.parameters.items():
                p.name = f"layers.{i}.{key}"
        self.flat = FlatParameters(self.backend, self.dtype, self.parameters())

    def parameters(self) -> list[Parameter]:
        """Every trainable parameter, in a fixed order: layer by layer, then W before b.

        Returns
        -------
        list of Parameter
            The parameters (:class:`xpmlp.params.Parameter`), empty before the model is built.
        """
        return [p for layer in self.layers for p in layer.parameters.values()]

    def get_weights(self) -> list[np.ndarray]:
        """Copies of all parameters as NumPy arrays, in ``parameters()`` order.

        Returns
        -------
        list of numpy.ndarray
            One array per parameter, of its shape (W: (in, out), b: (out,)).
        """
        return [to_numpy(p.value).copy() for p in self.parameters()]

    @_on_device
    def set_weights(self, weights: Any) -> None:
        """Replace all parameters, checking shapes.

        Every array is checked and copied to the device before any parameter changes.

        Parameters
        ----------
        weights : sequence of array-like
            NumPy or host arrays, in ``parameters()`` order, each of its parameter's shape.

        Raises
        ------
        ValueError
            If the number of arrays or a shape does not match.
        """
        params = self.parameters()
        if len(weights) != len(params):
            raise ValueError(f"expected {len(params)} arrays, got {len(weights)}")
        new = []
        for p, w in zip(params, weights):
            w = np.asarray(w)
            if tuple(w.shape) != p.shape:
                raise ValueError(f"weight {p.name!r} has shape {p.shape}, got {w.shape}")
            new.append(self.backend.from_host(w.astype(self.dtype)))
        for p, w in zip(params, new):
            p.value[...] = w

    @property
    def n_params(self) -> int:
        """The number of trainable parameters (0 before the model is built)."""
        return 0 if self.flat is None else self.flat.size

    # -- passes ------------------------------------------------------------------------------
    @_on_device
    def forward(self, x: Any, training: bool = False) -> Any:
        """Raw outputs (logits) for a device array x.

        The whole array in one pass; ``training=True`` (dropout on) also keeps what ``backward``
        needs, an inference pass keeps nothing. ``predict`` goes batch by batch.

        Parameters
        ----------
        x : array of shape (n_samples, in_features)
            An array of the model's library, on its device, of its dtype.
        training : bool, default False
            A training pass (Dropout drops, layers keep what backward needs).

        Returns
        -------
        array of shape (n_samples, n_outputs)
            The last layer's outputs.
        """
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    @_on_device
    def backward(self, grad: Any, input_grad: bool = True) -> Any:
        """Backpropagate dL/d(outputs); fills every layer's grads.

        Uses what the last ``forward(x, training=True)`` kept.

        Parameters
        ----------
        grad : array of shape (n_samples, n_outputs)
            Gradient of the loss with respect to the outputs of the last forward pass.
        input_grad : bool, default True
            With False (as in ``fit``) it stops at the first layer with parameters and returns
            None: dL/dx is one matrix product per step that training never uses.

        Returns
        -------
        array of shape (n_samples, in_features) or None
            dL/dx, or None with ``input_grad=False``.

        Raises
        ------
        RuntimeError
            After an inference pass (as in ``predict``), which keeps nothing for backward.
        """
        first = next((i for i, layer in enumerate(self.layers) if layer.parameters), 0)
        stop = 0 if input_grad else first + 1
        for layer in reversed(self.layers[stop:]):
            grad = layer.backward(grad)
        if input_grad:
            return grad
        self.layers[first].backward_params(grad)
        return None

    @_on_device
    def gradients(self, X: Any, y: Any, *, loss: Any = None, sample_weight: Any = None) -> tuple[float, dict]:
        """The loss over (X, y) and its gradient with respect to every parameter, by name.

        Inference mode: Dropout layers pass their inputs through (no mask is drawn, their counters
        do not move); every other layer runs its training pass, which keeps what backward needs.
        Rows go through the network 4096 at a time. Weights and optimiser state are not changed.
        The model's flat gradient buffer (``model.flat.grad``, where each backward writes) is left
        holding the last chunk's gradient, as a training step leaves its batch's; ``fit`` rewrites
        it at every step before reading it, so this may be called from a callback during ``fit``.

        Parameters
        ----------
        X : array-like of shape (n_samples, in_features)
            Inputs, NumPy or the model's library.
        y : array-like
            Targets as ``fit`` takes them.
        loss : str or Loss, optional
            By default the model's loss (the one it was fitted with).
        sample_weight : array-like of shape (n_samples,), optional
            Each row's weight.

        Returns
        -------
        loss : float
            Fit's loss: ``sum_i w_i * loss_i / n`` (Keras's convention: weights scale each row, the
            divisor stays n; w_i = 1 without weights), no penalty.
        grads : dict of str to array
            Maps each name of :meth:`parameters` (``"layers.0.W"``) to d(loss)/d(parameter), an
            array of the parameter's shape in the model's library and on its device (slices of
            one new array, independent of the model's buffers).

        Raises
        ------
        ValueError
            If the model is not built, or has no loss and none is given.
        """
        from .lbfgs import loss_and_gradient  # lbfgs imports the training loop, as this module does

        self._require_built("take gradients")
        if loss is None and self.loss is None:
            raise ValueError("gradients needs a loss: pass loss=... or fit the model first")
        loss = self.loss if loss is None else get_loss(loss)
        Xd = prepare_X(self, X)
        yd = prepare_y(self, loss, y, Xd.shape[0])
        weights = sample_weights(self, loss, yd, None, sample_weight)
        value, grad = loss_and_gradient(self, loss, Xd, yd, weights, denominator=float(Xd.shape[0]))
        assert self.flat is not None  # built
        grads = {p.name: self.xp.reshape(grad[start:start + p.size], p.shape)
                 for p, start in zip(self.flat.parameters, self.flat.offsets)}
        return float(to_numpy(value)), grads

    @_on_device
    def inspect(self, X: Any, y: Any, *, loss: Any = None, optimizer: Any = None) -> Any:
        """Per-layer statistics of activations, gradients, weights and one update, as a pandas DataFrame.

        One forward and backward pass of all of (X, y) (pass a batch: a few hundred rows) through
        the layers, Dropout off; one host read. The model is left unchanged: weights, gradient
        buffer, optimiser (its state and step count), loss, random streams and Dropout counters.

        Parameters
        ----------
        X : array-like of shape (n_samples, in_features)
            Inputs, as ``fit`` takes them.
        y : array-like
            Targets, as ``fit`` takes them.
        loss : str or Loss, optional
            By default the model's (the one it was fitted with).
        optimizer : str or Optimizer, optional
            The update whose size is measured: by default the model's own optimiser, with its state
            (the next update fit would make on this batch), else ``Adam()``. It steps on a copy.

        Returns
        -------
        pandas.DataFrame
            One row per layer (index ``layer``, as ``model.layers``), columns:
            ``type`` (the layer's class); ``act_mean``, ``act_std``, ``act_frac_zero`` of the layer's
            output; ``act_frac_saturated``, for Sigmoid and Tanh layers, the share of their inputs
            beyond the bound where the output is within 0.01 of an asymptote (``|x|`` > 4.6 and > 2.65;
            NaN for other layers); over all the layer's parameters (W and b together; NaN for layers
            without): ``grad_mean``, ``grad_std``, ``grad_norm`` of d(loss)/d(parameters), the loss
            being the mean over the rows, ``weight_mean``, ``weight_std``, ``weight_norm``, and
            ``update_ratio`` = ||update|| / ||weights|| of one optimiser step from these gradients
            (about 1e-3 is healthy: see :mod:`xpmlp.vitals`). Std is the population std; norms are L2.
        """
        from .vitals import inspect_model

        return inspect_model(self, X, y, loss=loss, optimizer=optimizer)

    # -- training API ------------------------------------------------------------------------
    # xpmlp.train's (and xpmlp.lr_find's) functions of a model, as methods
    fit = _as_method(fit)
    predict = _as_method(predict)
    evaluate = _as_method(evaluate)
    lr_find = _as_method(_lr_find)  # the learning-rate range test: see xpmlp.lr_find

    # -- configuration and state ---------------------------------------------------------------
    def get_config(self) -> dict:
        """What rebuilds this model's architecture (Keras style), JSON-able.

        Returns
        -------
        dict
            ``{"layers": [{"class": name, "config": layer.get_config()}, ...], "dtype": str,
            "seed": int or None, "in_features": int or None}``
        """
        return {"layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
                "dtype": self.dtype, "seed": self.seed, "in_features": self.in_features}

    @staticmethod
    def from_config(config: dict, *, device: str | None = None, xp: Any = None) -> Sequential:
        """A new Sequential from :meth:`get_config`'s dict (fresh weights from its seed), on ``device``.

        Parameters
        ----------
        config : dict
            As :meth:`get_config` gives.
        device : str, optional
            Where the new model runs, as for the constructor.
        xp : module, optional
            An Array API namespace instead of ``device``.

        Returns
        -------
        Sequential
            The new model.

        Raises
        ------
        ValueError
            If the config names an unknown layer class.
        """
        layers = []
        for entry in config["layers"]:
            if entry["class"] not in LAYERS:
                raise ValueError(f"unknown layer class {entry['class']!r} (known: {', '.join(LAYERS)})")
            layers.append(LAYERS[entry["class"]](**entry["config"]))
        return Sequential(layers, device=device, xp=xp, dtype=config["dtype"], seed=config["seed"],
                          in_features=config["in_features"])

    def state_dict(self) -> dict:
        """Every layer's state, by flat names (PyTorch's convention); no copy.

        Returns
        -------
        dict
            ``layers.{i}.{key}`` parameters (``layers.0.W``: views of ``flat``, in
            :meth:`parameters` order), ``layers.{i}.state.{key}`` buffers (Standardize's
            ``mean`` and ``std``), and ``layers.{i}.extra_state`` dicts of Python ints (each
            Dropout layer's ``key`` and ``counter``). The optimiser and the host generators
            have their own (``optimizer.state_dict()``, :meth:`get_rng_state`).
        """
        self._require_built("take its state dict")
        sd = {}
        for i, layer in enumerate(self.layers):
            for key, value in layer.state_dict().items():
                kind = "" if key in layer.parameters or key == "extra_state" else "state."
                sd[f"layers.{i}.{kind}{key}"] = value
        return sd

    def _split_state_dict(self, sd: dict) -> list[dict]:
        """``sd`` as one state dict per layer, with every host (NumPy) array moved to the device."""
        if not isinstance(sd, dict):
            raise ValueError(f"Sequential.load_state_dict: expected a dict, got {type(sd).__name__}")
        per_layer: list[dict] = [{} for _ in self.layers]
        for name, value in sd.items():
            parts = name.split(".") if isinstance(name, str) else []
            if (len(parts) < 3 or parts[0] != "layers" or not parts[1].isdigit() or int(parts[1]) >= len(self.layers)
                    or (parts[2] == "state") != (len(parts) == 4) or len(parts) > 4):
                raise ValueError(f"Sequential.load_state_dict: unexpected name {name!r} (this model has "
                                 f"{len(self.layers)} layers; names are layers.{{i}}.{{key}}, "
                                 "layers.{i}.state.{key} or layers.{i}.extra_state)")
            if isinstance(value, np.ndarray):
                if value.dtype != np.dtype(self.dtype):
                    raise ValueError(f"Sequential.load_state_dict: {name!r} has dtype {value.dtype}, "
                                     f"expected {self.dtype}")
                value = self.backend.from_host(value)
            per_layer[int(parts[1])][parts[-1]] = value
        return per_layer

    @_on_device
    def load_state_dict(self, sd: dict) -> None:
        """Load :meth:`state_dict`'s entries, all checked (names, shapes, dtypes) before any layer changes.

        Parameters are written into ``flat`` in place.

        Parameters
        ----------
        sd : dict
            Arrays of the model's library, or NumPy arrays, by the names :meth:`state_dict` gives.

        Raises
        ------
        ValueError
            Naming what does not match, or if the model is not built.
        """
        self._require_built("load a state dict")
        per_layer = self._split_state_dict(sd)
        for i, (layer, part) in enumerate(zip(self.layers, per_layer)):
            try:
                layer.check_state_dict(part)
            except ValueError as e:
                raise ValueError(f"layers.{i}: {e}") from None
        for layer, part in zip(self.layers, per_layer):
            layer.load_state_dict(part)

    def get_rng_state(self) -> dict:
        """The states of the host generators for initial weights and shuffles.

        Returns
        -------
        dict
            ``{"init": ..., "shuffle": ...}``: NumPy ``bit_generator.state`` dicts, JSON-able.
        """
        return {"init": self._init_rng.bit_generator.state, "shuffle": self.shuffle_rng.bit_generator.state}

    def set_rng_state(self, state: dict) -> None:
        """Restore :meth:`get_rng_state`'s generator states.

        Parameters
        ----------
        state : dict
            As :meth:`get_rng_state` gives.
        """
        self._init_rng.bit_generator.state = state["init"]
        self.shuffle_rng.bit_generator.state = state["shuffle"]

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(f"the model has no weights yet: fit it (or give in_features) before you {what}")

    def _file_shapes(self) -> dict:
        """{name: shape} of the arrays a weights file may give: parameters and every
        Standardize layer's statistics (adapted or not)."""
        shapes: dict[str, tuple] = {p.name: p.shape for p in self.parameters()}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Standardize):
                shapes[f"layers.{i}.state.mean"] = shapes[f"layers.{i}.state.std"] = (layer.features,)
        return shapes

    # -- files ---------------------------------------------------------------------------------
    @_on_device
    def to_bytes(self) -> bytes:
        """The file :meth:`save` writes, as bytes (scikit-learn estimators pickle these).

        Returns
        -------
        bytes
            The model file's contents.

        Raises
        ------
        ValueError
            If the model is not built.
        """
        self._require_built("save it")
        assert self.flat is not None  # built
        return _io.encode_model(self.get_config(), self.state_dict(), self.get_rng_state(), self.loss, self.optimizer,
                                self.flat.offsets)

    def save(self, path: Any) -> None:
        """Save architecture, weights, loss, optimiser state and RNG states, atomically (see :mod:`xpmlp.io`).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (replaced whole, or left as it was on an error).

        Raises
        ------
        ValueError
            If the model is not built.

        Examples
        --------
        >>> import os, tempfile
        >>> import xpmlp
        >>> model = xpmlp.MLP([3, 4, 2], seed=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.xpmlp")
        >>> model.save(path)
        >>> xpmlp.load(path).get_config() == model.get_config()
        True
        """
        _io.write(path, self.to_bytes())

    @_on_device
    def save_weights(self, path: Any) -> None:
        """Save only the weights (and Standardize statistics), atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write.

        Raises
        ------
        ValueError
            If the model is not built.
        """
        self._require_built("save it")
        _io.write(path, _io.encode_weights(self.state_dict()))

    @_on_device
    def load_weights(self, path: Any, *, allow_nonfinite: bool = False) -> None:
        """Load weights saved from a model of the same architecture.

        The whole file is checked before any layer changes: on an error the model is left as it was.

        Parameters
        ----------
        path : str or os.PathLike
            A file written by :meth:`save_weights` (or :meth:`save`).
        allow_nonfinite : bool, default False
            Load NaN or infinite values instead of refusing them.

        Raises
        ------
        ModelFileError
            If the file is damaged or does not fit the model (:class:`~xpmlp.ModelFileError`).
        ValueError
            If the model is not built.
        """
        self._require_built("load weights")
        arrays = _io.read_weights(path, self._file_shapes(), self.dtype, allow_nonfinite=allow_nonfinite)
        extra = {name: value for name, value in self.state_dict().items() if name.endswith(".extra_state")}
        self.load_state_dict({**arrays, **extra})

    @staticmethod
    def load(path: Any, device: str | None = None, xp: Any = None, *, allow_nonfinite: bool = False) -> Sequential:
        """Rebuild a model saved with :meth:`save` on ``device`` (or namespace ``xp``).

        The file is checked whole before anything is allocated (see :mod:`xpmlp.io`).

        Parameters
        ----------
        path : str or os.PathLike
            A file written by :meth:`save`.
        device : str, optional
            Where the model runs, as for the constructor.
        xp : module, optional
            An Array API namespace instead of ``device``.
        allow_nonfinite : bool, default False
            Load weights, optimiser state or statistics holding NaN or infinity instead of refusing.

        Returns
        -------
        Sequential
            The model, with its loss, optimiser (and its state) and RNG states restored.

        Raises
        ------
        ModelFileError
            For any defect of the file, saying what is wrong (:class:`~xpmlp.ModelFileError`).
        """
        return Sequential._from_saved(_io.read_model(path, allow_nonfinite=allow_nonfinite), device, xp)

    @staticmethod
    def from_bytes(data: bytes, device: str | None = None, xp: Any = None, *,
                   allow_nonfinite: bool = False) -> Sequential:
        """The model :meth:`to_bytes` gave, rebuilt on ``device``, checked as :meth:`load` checks a file.

        Parameters
        ----------
        data : bytes
            What :meth:`to_bytes` returned.
        device : str, optional
            Where the model runs, as for the constructor.
        xp : module, optional
            An Array API namespace instead of ``device``.
        allow_nonfinite : bool, default False
            Accept NaN or infinite values instead of refusing them.

        Returns
        -------
        Sequential
            The model, as :meth:`load` rebuilds it.

        Raises
        ------
        ModelFileError
            For any defect of the data (:class:`~xpmlp.ModelFileError`).
        """
        return Sequential._from_saved(_io.decode_model(data, allow_nonfinite=allow_nonfinite), device, xp)

    @staticmethod
    def _from_saved(saved: Any, device: Any, xp: Any) -> Sequential:
        # Everything is checked: the model built now has the shapes the file's data fills.
        model = Sequential(saved.layers, device=device, xp=xp, dtype=saved.dtype, seed=saved.seed,
                           in_features=saved.in_features)
        model.loss = saved.loss
        model.load_state_dict(saved.state)
        if saved.optimizer is not None:
            assert model.flat is not None  # the saved model has its in_features: built
            with model.backend.activate():  # CuPy copies onto the current device: the model's
                state = saved.optimizer_state["state"]
                saved.optimizer.load_state_dict({"t": saved.optimizer_state["t"], "state": None if state is None else
                                                 {k: model.backend.from_host(model.flat.from_parameter_order(v))
                                                  for k, v in state.items()}})
            model.optimizer = saved.optimizer
        model.set_rng_state(saved.rng)
        return model

    def summary(self, print_fn: Callable[[str], Any] = print) -> str:
        """Print (and return) a table of layers, output shapes and parameter counts, like Keras.

        Parameters
        ----------
        print_fn : callable, default print
            Called with the table's text.

        Returns
        -------
        str
            The table.
        """
        rows = [("Layer", "Output shape", "Params")]
        width = self.in_features
        if width is not None:
            rows.append(("Input", f"(None, {width})", "0"))
        for layer in self.layers:
            if isinstance(layer, Dense):
                width = layer.units
            count = sum(p.size for p in layer.parameters.values())
            extra = sum(int(np.prod(v.shape)) for v in layer.buffers().values())
            shown = f"{count:,}" + (f" (+{extra:,} statistics)" if extra else "")
            name = type(layer).__name__
            arg = layer.units if isinstance(layer, Dense) else getattr(layer, "rate", None)
            rows.append((name if arg is None else f"{name}({arg})", f"(None, {width if width is not None else '?'})", shown))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        rule = "-" * (sum(widths) + 4)
        lines = [f"Sequential on {self.backend}, {self.dtype}", rule]
        lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        total = self.n_params if self.built else 0
        lines += [rule, f"Total parameters: {total:,}" + ("" if self.built else " (not built yet)")]
        text = "\n".join(lines)
        print_fn(text)
        return text

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner}\n], backend={self.backend}, dtype={self.dtype!r})"


class MLP(Sequential):
    """Multilayer perceptron from layer sizes: Dense layers with activations in between.

    The output layer is linear: pick the output activation through the loss
    (``softmax_cross_entropy`` for classes, ``sigmoid_binary_cross_entropy`` for binary
    labels, ``mse`` for regression), which fuses it stably.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_inputs, hidden_1, ..., n_outputs]``; at least two entries.
    activation : str, Activation, or a list with one per hidden layer; default "relu"
        The activation after each hidden Dense layer.
    dropout : float, default 0
        Dropout rate after each hidden activation.
    standardize : bool, default False
        Start with a :class:`~xpmlp.Standardize` layer, so raw (unscaled) features can be given.
    init : str, optional
        Weight initialiser for every Dense layer (see :mod:`xpmlp.init`); by default He for
        ReLU-like activations and Glorot otherwise.
    **kwargs
        Passed to :class:`Sequential` (device, xp, dtype, seed, tf32).

    Raises
    ------
    ValueError
        If ``sizes`` has fewer than two entries or a width below 1, or the activations do not
        match the hidden layers.

    Examples
    --------
    >>> import numpy as np
    >>> import xpmlp
    >>> X, y = xpmlp.datasets.make_xor(200, seed=0)
    >>> model = xpmlp.MLP([2, 16, 2], activation="tanh", seed=0)
    >>> history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.05),
    ...                     epochs=20, verbose=0)
    >>> model.predict(X[:3]).shape  # class probabilities
    (3, 2)
    >>> model.evaluate(X, y, metrics=["accuracy"])["accuracy"] > 0.9
    True
    """

    def __init__(self, sizes: Any, activation: Any = "relu", *, dropout: float = 0.0, standardize: bool = False,
                 init: str | None = None, **kwargs: Any) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP sizes must list at least an input and an output width, all positive; got {sizes}")
        hidden = sizes[1:-1]
        acts = list(activation) if isinstance(activation, (list, tuple)) else [activation] * len(hidden)
        if len(acts) != len(hidden):
            raise ValueError(f"got {len(acts)} activations for {len(hidden)} hidden layers")
        layers: list[Layer] = []
        for width, act in zip(hidden, acts):
            layer = get_activation(act)
            if layer is act:  # a user's instance: one copy per hidden layer, as each caches its input
                layer = type(act)(**act.get_config())
            layers += [dense_for(width, act) if init is None else Dense(width, init=init), layer]
            if dropout:
                layers.append(Dropout(dropout))
        layers.append(Dense(sizes[-1]) if init is None else Dense(sizes[-1], init=init))
        first = layers[0]
        assert isinstance(first, Dense)  # the first hidden (or the output) layer
        first.in_features = sizes[0]
        if standardize:
            layers.insert(0, Standardize())
        self.sizes = sizes
        self.activations = [activation_name(a) for a in acts]
        super().__init__(layers, **kwargs)


def load(path: Any, device: str | None = None, xp: Any = None, *, allow_nonfinite: bool = False) -> Sequential:
    """Rebuild a model saved with ``save`` on ``device`` (or namespace ``xp``): :meth:`Sequential.load`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :meth:`Sequential.save`.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or None (``$XPMLP_DEVICE``).
    xp : module, optional
        An Array API namespace instead of ``device``.
    allow_nonfinite : bool, default False
        Load weights, optimiser state or statistics holding NaN or infinity instead of refusing.

    Returns
    -------
    Sequential
        The model (an :class:`MLP` is rebuilt as a Sequential of its layers), with its loss,
        optimiser (and its state) and RNG states restored.

    Raises
    ------
    ModelFileError
        For any defect of the file, saying what is wrong (:class:`~xpmlp.ModelFileError`).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import xpmlp
    >>> model = xpmlp.MLP([2, 8, 1], seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.xpmlp")
    >>> model.save(path)
    >>> again = xpmlp.load(path)
    >>> X = np.ones((2, 2), dtype="float32")
    >>> bool((again.forward(X) == model.forward(X)).all())
    True
    """
    return Sequential.load(path, device, xp, allow_nonfinite=allow_nonfinite)



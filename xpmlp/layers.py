"""Layers: Dense, the activations and Dropout, each with a hand-written backward pass.

Every layer follows one protocol:

- ``build(in_features, backend, dtype, rng) -> out_features`` makes its parameters (drawn on
  the host from ``rng``, then copied to the device; see :mod:`xpmlp.params`) and remembers the
  namespace. A model then gathers every layer's parameters into one flat buffer, so a layer
  reads each value through its :class:`~xpmlp.params.Parameter` (``self.parameters["W"].value``)
  at every pass, never keeps its own reference to it;
- ``forward(x, training=False)`` maps a (batch, in_features) array to (batch, out_features);
  a training pass (``training=True``) keeps what ``backward`` needs, an inference pass keeps
  nothing (and drops what an earlier pass kept), so predicting a large array never holds its
  activations beyond the layer that is computing them;
- ``backward(grad_out) -> grad_in`` stores each parameter's gradient (``Parameter.set_grad``:
  into the model's flat gradient buffer) and returns the gradient with respect to the layer's
  input, from the last forward pass, which must have been a training pass (a clear error
  otherwise). ``params`` and ``grads`` are read-only dicts of the current arrays.

State dicts (PyTorch's convention): ``state_dict()`` gives ``{name: array}`` - the parameters
(the live views, no copy), then buffers that are state but not trained (Standardize's ``mean``
and ``std``) - plus, for a layer with state that is not an array (Dropout's ``key`` and
``counter``, Python ints), an ``"extra_state"`` entry: a JSON-able dict from
``get_extra_state()``, given back to ``set_extra_state()`` (PyTorch's extra state).
``load_state_dict(sd)`` checks names, shapes and dtypes (``check_state_dict``) before it writes
anything, then writes in place (parameters into the model's flat buffer).

Layers never touch optimiser state, and never import an array library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .functional import inherit_docstrings, sigmoid, softmax_rows, softplus
from .init import check_name, default_init_for, initialize
from .backend import fast_kernels, is_sparse, sparse_matmul
from .params import Parameter
from .rng import dropout_mask, word_dtype

__all__ = [
    "LAYERS", "Layer", "Dense", "Dropout", "Standardize", "Activation", "ACTIVATIONS", "get_activation",
    "Identity", "ReLU", "LeakyReLU", "ELU", "GELU", "Sigmoid", "Tanh", "Softplus", "Softmax",
]


class Layer:
    """Base class of every layer: a forward pass and its hand-written backward pass.

    Subclasses make ``parameters`` in :meth:`~xpmlp.Layer.build` and set their gradients in
    :meth:`~xpmlp.Layer.backward`; the module docstring (:mod:`xpmlp.layers`) gives the whole protocol.
    A layer is used inside a :class:`~xpmlp.Sequential` model, which builds it.

    Attributes
    ----------
    parameters : dict of str to Parameter
        This layer's trainable parameters by name (``"W"``, ``"b"``), empty until built.
    xp : module or None
        The Array API namespace the layer computes with, set by :meth:`~xpmlp.Layer.build`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Dense, resolve
    >>> layer = Dense(2)
    >>> layer.build(3, resolve("cpu"), "float32", np.random.default_rng(0))
    2
    >>> sorted(layer.parameters)
    ['W', 'b']
    >>> layer.forward(np.ones((4, 3), dtype="float32")).shape
    (4, 2)
    """

    def __init__(self) -> None:
        self.parameters: dict[str, Parameter] = {}
        self.xp: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherit_docstrings(cls)  # an override of a hook carries the hook's documentation

    @property
    def params(self) -> dict:
        """{name: current value} of this layer's parameters (views of the model's flat buffer)."""
        return {k: p.value for k, p in self.parameters.items()}

    @property
    def grads(self) -> dict:
        """{name: gradient of the last backward pass}, for the parameters that have one."""
        return {k: p.grad for k, p in self.parameters.items() if p.grad is not None}

    def build(self, in_features: int, backend: Any, dtype: str, rng: np.random.Generator) -> int:
        """Make this layer's parameters for inputs of width ``in_features``.

        Parameters
        ----------
        in_features : int
            Width of the layer's input.
        backend : Backend
            Where the layer computes (:class:`~xpmlp.Backend`); its namespace is kept as ``xp``.
        dtype : str
            ``"float32"`` or ``"float64"``: the dtype of the parameters.
        rng : numpy.random.Generator
            The model's seeded host generator, from which initial values are drawn.

        Returns
        -------
        int
            The width of the layer's output.

        Raises
        ------
        ValueError
            If the layer was given another input width than ``in_features``.
        """
        self.xp = backend.xp
        return in_features

    def forward(self, x: Any, training: bool = False) -> Any:
        """The layer's output for input ``x``.

        Parameters
        ----------
        x : array of shape (n_samples, in_features)
            An array of the layer's namespace, on its device.
        training : bool, default False
            A training pass keeps what :meth:`~xpmlp.Layer.backward` needs (and Dropout drops); an inference
            pass keeps nothing.

        Returns
        -------
        array of shape (n_samples, out_features)
            The layer's output.
        """
        raise NotImplementedError

    def backward(self, grad_out: Any) -> Any:
        """dL/d(input) from dL/d(output); layers with parameters also fill ``grads``.

        Parameters
        ----------
        grad_out : array of shape (n_samples, out_features)
            Gradient of the loss with respect to the output of the last forward pass.

        Returns
        -------
        array of shape (n_samples, in_features)
            Gradient of the loss with respect to the layer's input.

        Raises
        ------
        RuntimeError
            If the last forward pass was not a training pass (it kept nothing for backward).
        """
        raise NotImplementedError

    def backward_params(self, grad_out: Any) -> None:
        """Fill ``grads`` only: for the first trainable layer, whose input gradient nobody uses.

        Parameters
        ----------
        grad_out : array of shape (n_samples, out_features)
            Gradient of the loss with respect to the output of the last forward pass.
        """
        self.backward(grad_out)

    def _kept(self, value):
        """What the last forward kept for backward, or a clear error if it was an inference pass."""
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward pass with training=True "
                               "first: an inference pass (training=False, as in predict) keeps nothing "
                               "for backward")
        return value

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this layer (used for saving and repr).

        Returns
        -------
        dict
            Keyword arguments of the layer's constructor, JSON-able.
        """
        return {}

    # -- state dicts ---------------------------------------------------------------------------
    def buffers(self) -> dict:
        """{name: array} of state that is not trained (none here; Standardize's statistics).

        Returns
        -------
        dict of str to array
            The layer's buffers, empty for most layers.
        """
        return {}

    def get_extra_state(self) -> dict | None:
        """State that is not an array, as a JSON-able dict (Python ints, floats, strings), or None.

        Returns
        -------
        dict or None
            None for layers without such state.
        """
        return None

    def set_extra_state(self, state: Any) -> None:
        """Take back what :meth:`~xpmlp.Layer.get_extra_state` gave.

        Parameters
        ----------
        state : dict or None
            What :meth:`~xpmlp.Layer.get_extra_state` returned.

        Raises
        ------
        ValueError
            If ``state`` is malformed.
        """
        self._check_extra_state(state)

    def state_dict(self) -> dict:
        """The layer's state, by name (PyTorch's convention).

        Returns
        -------
        dict
            {name: array}: parameters (live views of the model's buffer), then buffers, then
            ``"extra_state"`` if :meth:`~xpmlp.Layer.get_extra_state` gives one.
        """
        sd = {**self.params, **self.buffers()}
        extra = self.get_extra_state()
        if extra is not None:
            sd["extra_state"] = extra
        return sd

    def check_state_dict(self, sd: Any) -> None:
        """Check that ``sd`` can be loaded, changing nothing.

        Parameters
        ----------
        sd : dict
            A state dict, as :meth:`~xpmlp.Layer.state_dict` gives.

        Raises
        ------
        ValueError
            Naming the first problem: other names than :meth:`~xpmlp.Layer.state_dict`'s, or an array of
            another shape or dtype.
        """
        name = type(self).__name__
        if not isinstance(sd, dict):
            raise ValueError(f"{name}.load_state_dict: expected a dict, got {type(sd).__name__}")
        expected = {k: (p.shape, p.value.dtype) for k, p in self.parameters.items()}
        arrays = {k: v for k, v in sd.items() if k != "extra_state"}
        if set(arrays) != set(expected):
            raise ValueError(f"{name}.load_state_dict: expected the arrays {sorted(expected)}, got {sorted(arrays)} "
                             f"(missing {sorted(set(expected) - set(arrays))}, unexpected "
                             f"{sorted(set(arrays) - set(expected))})")
        for key, (shape, dtype) in expected.items():
            a = arrays[key]
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise ValueError(f"{name}.load_state_dict: {key!r} is a {type(a).__name__}, not an array")
            if tuple(a.shape) != tuple(shape):
                raise ValueError(f"{name}.load_state_dict: {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
            if a.dtype != dtype:
                raise ValueError(f"{name}.load_state_dict: {key!r} has dtype {a.dtype}, expected {dtype}")
        if (self.get_extra_state() is None) != ("extra_state" not in sd):
            raise ValueError(f"{name}.load_state_dict: " + ("unexpected 'extra_state'" if "extra_state" in sd
                                                             else "missing 'extra_state'"))
        if "extra_state" in sd:
            self._check_extra_state(sd["extra_state"])

    def _check_extra_state(self, state) -> None:
        """Raise ValueError if ``state`` is not what :meth:`~xpmlp.Layer.set_extra_state` takes."""
        if state is not None:
            raise ValueError(f"{type(self).__name__} has no extra state, got {state!r}")

    def load_state_dict(self, sd: Any) -> None:
        """Load what :meth:`~xpmlp.Layer.state_dict` gives, checked whole first (:meth:`~xpmlp.Layer.check_state_dict`).

        Parameters are written in place.

        Parameters
        ----------
        sd : dict
            Arrays of this layer's namespace and device, by name.

        Raises
        ------
        ValueError
            If ``sd`` does not match the layer (nothing is changed then).
        """
        self.check_state_dict(sd)
        for key, p in self.parameters.items():
            p.value[...] = sd[key]
        self._load_buffers({k: v for k, v in sd.items() if k not in self.parameters and k != "extra_state"})
        if "extra_state" in sd:
            self.set_extra_state(sd["extra_state"])

    def _load_buffers(self, buffers: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``.

    Shapes: x (n, in_features) -> y (n, units); W (in_features, units); b (units,).

    ``x`` may also be a sparse matrix (``xpmlp.backend.is_sparse``: SciPy on NumPy, cupyx on
    CuPy) when this is a model's first layer: ``x @ W`` and ``dW = x.T @ grad`` are then the
    backend's sparse-by-dense products, and the outputs and gradients are dense.

    Parameters
    ----------
    units : int
        Output features.
    in_features : int, optional
        Input features; inferred from the data at the first ``fit`` when omitted.
    bias : bool, default True
        Whether the layer adds a bias ``b``.
    init : str, default "glorot_uniform"
        Weight initialiser (see :mod:`xpmlp.init`); biases start at zero.

    Raises
    ------
    ValueError
        If ``units`` is not a positive integer or ``init`` names no initialiser.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Dense, Sequential
    >>> model = Sequential([Dense(4, in_features=3)], seed=0)
    >>> layer = model.layers[0]
    >>> layer.parameters["W"].shape, layer.parameters["b"].shape
    ((3, 4), (4,))
    >>> layer.forward(np.ones((2, 3), dtype="float32")).shape
    (2, 4)
    """

    def __init__(self, units: int, *, in_features: int | None = None, bias: bool = True,
                 init: str = "glorot_uniform") -> None:
        super().__init__()
        if not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"Dense units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.in_features = None if in_features is None else int(in_features)
        self.bias = bool(bias)
        check_name(init)  # fail here, not at the first fit
        self.init = init
        self._x = None

    def build(self, in_features: int, backend: Any, dtype: str, rng: np.random.Generator) -> int:
        if self.in_features is not None and in_features != self.in_features:
            raise ValueError(f"Dense layer expects {self.in_features} input features, got {in_features}")
        super().build(in_features, backend, dtype, rng)
        self.in_features = in_features
        self.parameters = {"W": Parameter("W", backend.from_host(initialize(self.init, in_features, self.units,
                                                                            rng, dtype)))}
        if self.bias:
            self.parameters["b"] = Parameter("b", backend.from_host(np.zeros(self.units, dtype=dtype)), decay=False)
        return self.units

    def forward(self, x: Any, training: bool = False) -> Any:
        self._x = x if training else None
        w = self.parameters["W"].value
        # a sparse x (a model's input, see fit): the backend's sparse-by-dense product, dense out
        y = sparse_matmul(x, w) if is_sparse(x) else self.xp.matmul(x, w)
        if self.bias:
            y += self.parameters["b"].value  # y is a fresh array of ours: add in place, no temporary
        return y

    def backward(self, grad_out: Any) -> Any:
        self.backward_params(grad_out)
        return self.xp.matmul(grad_out, self.parameters["W"].value.T)

    def backward_params(self, grad_out: Any) -> None:
        xp, x = self.xp, self._kept(self._x)
        self.parameters["W"].set_grad(sparse_matmul(x, grad_out, transpose_a=True) if is_sparse(x)
                                      else xp.matmul(x.T, grad_out))
        if self.bias:
            self.parameters["b"].set_grad(xp.sum(grad_out, axis=0))

    def get_config(self) -> dict:
        return {"units": self.units, "in_features": self.in_features, "bias": self.bias, "init": self.init}


class Dropout(Layer):
    """Inverted dropout: zero a fraction ``rate`` of inputs in training, scale the rest by 1/(1-rate).

    Masks are made on the model's device by a counter-based generator (:mod:`xpmlp.rng`):
    element ``i`` of the mask at a training step is a hash of (``key``, ``counter``, ``i``)
    computed with Array API integer operations, so a seed gives the same masks, bit for bit,
    on every backend, with no host-to-device copy and no host synchronisation per step.
    ``build`` draws ``key`` from the model's seeded host generator; ``counter`` counts the
    training forwards. Both are Python ints, saved with the model, so a run resumed from a
    file draws the masks the uninterrupted run would have. Inference passes inputs through.

    ``row_offset`` (0 unless a data-parallel fit sets it) is the row of the whole batch where this
    pass's rows start: the mask of rows ``row_offset ..`` is then that part of the whole batch's
    mask, so N ranks, each with its shard, drop what one process drops.

    Shapes: x (n, d) -> (n, d).

    Parameters
    ----------
    rate : float in [0, 1)
        Fraction of inputs dropped.

    Raises
    ------
    ValueError
        If ``rate`` is not in [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Dense, Dropout, Sequential
    >>> model = Sequential([Dense(1000, in_features=1), Dropout(0.5)], seed=0)
    >>> drop = model.layers[1]
    >>> x = np.ones((1, 1000), dtype="float32")
    >>> y = drop.forward(x, training=True)
    >>> sorted(set(y.ravel().tolist()))
    [0.0, 2.0]
    >>> bool((drop.forward(x) == x).all())  # inference passes inputs through
    True
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.key: int | None = None  # set by build
        self.counter = 0
        self.row_offset = 0
        self._mask = None

    def build(self, in_features: int, backend: Any, dtype: str, rng: np.random.Generator) -> int:
        self._device = backend.device
        self._bits_dtype = word_dtype(backend.xp, backend.device)  # asked once, not per step
        # One draw of the shared host generator, as before, so later layers' weights are unchanged.
        self.key = int(rng.integers(2**63))
        self.counter = 0
        return super().build(in_features, backend, dtype, rng)

    def forward(self, x: Any, training: bool = False) -> Any:
        self._mask = self.draw_mask(tuple(x.shape), x.dtype) if training else None
        return x if self._mask is None else x * self._mask

    def draw_mask(self, shape: tuple, dtype: Any) -> Any:
        """The next training pass's mask of ``shape`` (0 or 1/(1-rate)), advancing the counter.

        Parameters
        ----------
        shape : tuple of int
            The shape of the layer's input, (n_samples, d).
        dtype : dtype
            The mask's dtype, that of the input.

        Returns
        -------
        array of shape ``shape`` or None
            The mask, on the layer's device; None for rate 0 (nothing dropped; the counter still
            advances, as every training pass does).

        Raises
        ------
        RuntimeError
            If the layer is not built (it has no key yet); the counter is left as it was.
        """
        if self.rate == 0.0:
            self.counter += 1
            return None
        key = self.key
        if key is None:
            raise RuntimeError("this Dropout layer is not built, so it has no random key yet: build it "
                               "(layer.build(...), or model.build(n_features)) before a training pass")
        counter, self.counter = self.counter, self.counter + 1
        offset = self.row_offset * math.prod(shape[1:])  # this pass's rows of the whole batch's draw
        fused = getattr(fast_kernels(self.xp), "dropout_mask", None)  # CuPy: one launch, same bits
        mask = None if fused is None else fused(shape, dtype, self.rate, key, counter, offset)
        if mask is None:
            mask = dropout_mask(self.xp, shape, self.rate, key, counter, dtype, self._device,
                                bits_dtype=self._bits_dtype, offset=offset)
        return mask

    def backward(self, grad_out: Any) -> Any:
        return grad_out if self._mask is None else grad_out * self._mask

    def get_config(self) -> dict:
        return {"rate": self.rate}

    def get_extra_state(self) -> dict:
        """Where the masks continue from.

        Returns
        -------
        dict
            ``{"key": int, "counter": int}`` (a None key: not built).
        """
        return {"key": self.key, "counter": self.counter}

    def _check_extra_state(self, state) -> None:
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if (not isinstance(state, dict) or set(state) != {"key", "counter"} or not is_int(state["key"])
                or not is_int(state["counter"]) or state["counter"] < 0):
            raise ValueError(f"Dropout extra state must be {{'key': int, 'counter': int >= 0}}, got {state!r}")

    def set_extra_state(self, state: Any) -> None:
        self._check_extra_state(state)
        self.key, self.counter = int(state["key"]), int(state["counter"])


class Standardize(Layer):
    """Per-feature ``(x - mean) / std``, with mean and std learned from the training data.

    ``fit`` calls ``adapt`` on the first batch of data it sees (the whole training set), so
    raw inputs - 0..255 pixels, clinical measurements in mg/dl - can be given as they are. The
    statistics are state, not parameters: optimisers never change them. Features with zero
    spread (MNIST's always-blank corner pixels) are divided by 1, not 0.

    Shapes: x (n, d) -> (n, d); mean and std (d,).

    Raises
    ------
    RuntimeError
        From :meth:`forward`, if the layer has no statistics yet (neither fitted nor adapted).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Dense, Sequential, Standardize
    >>> model = Sequential([Standardize(), Dense(1)], in_features=2, seed=0)
    >>> layer = model.layers[0]
    >>> layer.adapt(np.array([[0.0, 10.0], [2.0, 30.0]], dtype="float32"))
    >>> layer.forward(np.array([[1.0, 40.0]], dtype="float32"))
    array([[0., 2.]], dtype=float32)
    """

    def __init__(self) -> None:
        super().__init__()
        self.state: dict = {}
        self.features: int | None = None  # width and dtype, known once built
        self.dtype = None

    def build(self, in_features: int, backend: Any, dtype: str, rng: np.random.Generator) -> int:
        self.features, self.dtype = in_features, backend.dtype(dtype)
        return super().build(in_features, backend, dtype, rng)

    @property
    def adapted(self) -> bool:
        """Whether the layer has its statistics (from ``fit``, :meth:`adapt` or a file)."""
        return bool(self.state)

    def buffers(self) -> dict:
        """The statistics.

        Returns
        -------
        dict
            ``{"mean", "std"}`` (each of shape (d,)) once adapted, else {}.
        """
        return dict(self.state)

    def check_state_dict(self, sd: Any) -> None:
        """Check a state dict: both statistics, or none (not adapted).

        Parameters
        ----------
        sd : dict
            ``{"mean": array, "std": array}``, each of shape (d,) and the model's dtype, or {}.

        Raises
        ------
        ValueError
            If ``sd`` is anything else, or holds statistics while the layer is not built.
        """
        if isinstance(sd, dict) and set(sd) == {"mean", "std"} and self.features is not None:
            for key in ("mean", "std"):
                a = sd[key]
                if not hasattr(a, "shape") or tuple(a.shape) != (self.features,) or a.dtype != self.dtype:
                    raise ValueError(f"Standardize.load_state_dict: {key!r} must have shape ({self.features},) and "
                                     f"dtype {self.dtype}, got " + (f"shape {tuple(a.shape)} and dtype {a.dtype}"
                                                                    if hasattr(a, "shape") else type(a).__name__))
            return
        if isinstance(sd, dict) and set(sd) == {"mean", "std"}:
            raise ValueError("Standardize.load_state_dict: the layer is not built yet (its width is unknown)")
        if not isinstance(sd, dict) or sd:
            raise ValueError(f"Standardize.load_state_dict: expected 'mean' and 'std', or nothing, got "
                             f"{sorted(sd) if isinstance(sd, dict) else type(sd).__name__}")

    def _load_buffers(self, buffers):
        # statistics are not in the flat buffer: written in place when there, else copies
        if not buffers:
            self.state = {}
        elif self.state:
            for key in ("mean", "std"):
                self.state[key][...] = buffers[key]
        else:
            self.state = {key: self.xp.asarray(buffers[key], copy=True) for key in ("mean", "std")}

    def adapt(self, x: Any) -> None:
        """Learn mean and std from ``x``.

        Parameters
        ----------
        x : array of shape (n_samples, d)
            An array on the model's device.
        """
        xp = self.xp
        mean = xp.mean(x, axis=0)
        std = xp.std(x, axis=0)
        self.state = {"mean": mean, "std": xp.where(std > 0, std, 1.0)}

    def forward(self, x: Any, training: bool = False) -> Any:
        if not self.state:
            raise RuntimeError("Standardize has no statistics yet: fit the model, or call adapt(X) first")
        return (x - self.state["mean"]) / self.state["std"]

    def backward(self, grad_out: Any) -> Any:
        return grad_out / self.state["std"]


class Activation(Layer):
    """An elementwise activation: subclasses give ``fn`` and ``derivative`` (from x and y).

    Activations have no parameters; shapes: x (n, d) -> (n, d). :data:`~xpmlp.ACTIVATIONS` maps their
    names (``"relu"``) to their classes.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Activation, Sequential, Dense
    >>> class Square(Activation):
    ...     name = "square"
    ...     def fn(self, xp: Any, x: Any) -> Any:
    ...         return x * x
    ...     def derivative(self, xp: Any, x: Any, y: Any) -> Any:
    ...         return 2.0 * x
    >>> model = Sequential([Dense(2, in_features=2), Square()], seed=0)
    >>> model.layers[1].forward(np.array([[3.0, -2.0]]))
    array([[9., 4.]])
    """

    name = ""
    _x = _y = None

    def forward(self, x: Any, training: bool = False) -> Any:
        y = self.fn(self.xp, x)
        self._x, self._y = (x, y) if training else (None, None)
        return y

    def backward(self, grad_out: Any) -> Any:
        return self.grad_from(self.xp, grad_out, self._kept(self._x), self._y)

    def grad_from(self, xp: Any, grad_out: Any, x: Any, y: Any) -> Any:
        """dL/dx from dL/dy, given the input x and output y of a forward pass (what backward uses).

        Parameters
        ----------
        xp : module
            The Array API namespace of the arrays.
        grad_out : array of shape (n_samples, d)
            Gradient of the loss with respect to the output ``y``.
        x : array of shape (n_samples, d) or None
            The input of the forward pass (None where the activation needs only ``y``).
        y : array of shape (n_samples, d)
            The output of the forward pass.

        Returns
        -------
        array of shape (n_samples, d)
            Gradient of the loss with respect to ``x``.
        """
        return grad_out * self.derivative(xp, x, y)

    def fn(self, xp: Any, x: Any) -> Any:
        """The activation itself, elementwise.

        Parameters
        ----------
        xp : module
            The Array API namespace of ``x``.
        x : array of shape (n_samples, d)
            The input.

        Returns
        -------
        array of shape (n_samples, d)
            The activation of ``x``.
        """
        raise NotImplementedError

    def derivative(self, xp: Any, x: Any, y: Any) -> Any:
        """dy/dx elementwise, from the input ``x`` and the output ``y = fn(x)``.

        Parameters
        ----------
        xp : module
            The Array API namespace of the arrays.
        x : array of shape (n_samples, d)
            The input of the forward pass.
        y : array of shape (n_samples, d)
            The output of the forward pass.

        Returns
        -------
        array of shape (n_samples, d)
            The derivative of the activation at ``x``.
        """
        raise NotImplementedError


class Identity(Activation):
    """The identity, ``y = x``: a linear output (``'linear'`` names it too).

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Identity, resolve
    >>> act = Identity()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[-1.,  0.,  2.]])
    """

    name = "identity"

    def fn(self, xp: Any, x: Any) -> Any:
        return x

    def backward(self, grad_out: Any) -> Any:
        return grad_out

    def grad_from(self, xp: Any, grad_out: Any, x: Any, y: Any) -> Any:
        return grad_out


class ReLU(Activation):
    """Rectified linear unit, ``max(x, 0)``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import ReLU, resolve
    >>> act = ReLU()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[0., 0., 2.]])
    """

    name = "relu"

    def fn(self, xp: Any, x: Any) -> Any:
        return xp.maximum(x, 0.0)

    def grad_from(self, xp: Any, grad_out: Any, x: Any, y: Any) -> Any:
        # Multiplying by the 0/1 mask is ~10x faster than where(x > 0, g, 0) in NumPy (bench/NOTES.md)
        return grad_out * xp.astype(x > 0, grad_out.dtype)


class LeakyReLU(Activation):
    """Leaky rectified linear unit, ``max(x, 0) + negative_slope * min(x, 0)``.

    Parameters
    ----------
    negative_slope : float, default 0.01
        The slope for negative inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import LeakyReLU, resolve
    >>> act = LeakyReLU(negative_slope=0.1)
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[-0.1,  0. ,  2. ]])
    """

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def fn(self, xp: Any, x: Any) -> Any:
        return xp.where(x > 0, x, self.negative_slope * x)

    def grad_from(self, xp: Any, grad_out: Any, x: Any, y: Any) -> Any:
        return xp.where(x > 0, grad_out, self.negative_slope * grad_out)

    def get_config(self) -> dict:
        return {"negative_slope": self.negative_slope}


class ELU(Activation):
    """Exponential linear unit: x for x > 0, alpha * (exp(x) - 1) otherwise.

    Parameters
    ----------
    alpha : float, default 1.0
        The value the output tends to as x goes to minus infinity is ``-alpha``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import ELU, resolve
    >>> act = ELU()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[-0.632,  0.   ,  2.   ]])
    """

    name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def fn(self, xp: Any, x: Any) -> Any:
        # exp of the clipped input: the positive branch is discarded, but exp(x) there could overflow.
        return xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, 0.0)))

    def derivative(self, xp: Any, x: Any, y: Any) -> Any:
        return xp.where(x > 0, 1.0, y + self.alpha)

    def get_config(self) -> dict:
        return {"alpha": self.alpha}


_GELU_C = math.sqrt(2.0 / math.pi)


class GELU(Activation):
    """Gaussian error linear unit, tanh approximation (as torch's ``approximate="tanh"``).

    The Array API has no ``erf``, so the exact form is not portable.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import GELU, resolve
    >>> act = GELU()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[-0.159,  0.   ,  1.955]])
    """

    name = "gelu"

    def fn(self, xp: Any, x: Any) -> Any:
        return 0.5 * x * (1.0 + xp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))

    def derivative(self, xp: Any, x: Any, y: Any) -> Any:
        t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)


class Sigmoid(Activation):
    """Logistic function, ``1 / (1 + exp(-x))``, computed without overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Sigmoid, resolve
    >>> act = Sigmoid()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[0.269, 0.5  , 0.881]])
    """

    name = "sigmoid"

    def fn(self, xp: Any, x: Any) -> Any:
        return sigmoid(xp, x)

    def derivative(self, xp: Any, x: Any, y: Any) -> Any:
        return y * (1.0 - y)


class Tanh(Activation):
    """Hyperbolic tangent.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Tanh, resolve
    >>> act = Tanh()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[-0.762,  0.   ,  0.964]])
    """

    name = "tanh"

    def fn(self, xp: Any, x: Any) -> Any:
        return xp.tanh(x)

    def derivative(self, xp: Any, x: Any, y: Any) -> Any:
        return 1.0 - y * y


class Softplus(Activation):
    """Softplus, ``log(1 + exp(x))``, computed without overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Softplus, resolve
    >>> act = Softplus()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[0.313, 0.693, 2.127]])
    """

    name = "softplus"

    def fn(self, xp: Any, x: Any) -> Any:
        return softplus(xp, x)

    def derivative(self, xp: Any, x: Any, y: Any) -> Any:
        return sigmoid(xp, x)


class Softmax(Activation):
    """Row-wise softmax, (n, k) -> (n, k), each row summing to one.

    For classification, prefer a linear output with ``softmax_cross_entropy``: it fuses this
    softmax with the loss and is stabler. This layer is for softmax inside a network.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Softmax, resolve
    >>> act = Softmax()
    >>> act.build(3, resolve("cpu"), "float64", np.random.default_rng(0))
    3
    >>> act.forward(np.array([[-1.0, 0.0, 2.0]])).round(3)
    array([[0.042, 0.114, 0.844]])
    """

    name = "softmax"

    def fn(self, xp: Any, x: Any) -> Any:
        return softmax_rows(xp, x)

    def backward(self, grad_out: Any) -> Any:
        return self.grad_from(self.xp, grad_out, None, self._kept(self._y))

    def grad_from(self, xp: Any, grad_out: Any, x: Any, y: Any) -> Any:
        return y * (grad_out - xp.sum(grad_out * y, axis=1, keepdims=True))


#: The activation classes by name (``"relu"``, ``"tanh"``, ...; ``"linear"`` is Identity), as
#: ``MLP(activation=...)`` and :func:`~xpmlp.layers.get_activation` take them.
ACTIVATIONS = {cls.name: cls for cls in (Identity, ReLU, LeakyReLU, ELU, GELU, Sigmoid, Tanh, Softplus, Softmax)}
ACTIVATIONS["linear"] = Identity
# Every layer class by its class name, as configs and files name them.
LAYERS = {cls.__name__: cls for cls in (Dense, Dropout, Standardize, *ACTIVATIONS.values())}


def get_activation(spec: Any) -> Activation:
    """An activation layer from its name (e.g. "relu") or an Activation instance.

    Parameters
    ----------
    spec : str, Activation or None
        A name of :data:`~xpmlp.ACTIVATIONS` (any case), an instance (returned as it is), or None
        (the identity).

    Returns
    -------
    Activation
        A new layer for a name, else ``spec`` itself.

    Raises
    ------
    ValueError
        If ``spec`` names no activation.

    Examples
    --------
    >>> from xpmlp.layers import get_activation
    >>> get_activation("ReLU")
    ReLU()
    """
    if isinstance(spec, Activation):
        return spec
    if spec is None:
        return Identity()
    if not isinstance(spec, str) or spec.lower() not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; valid names: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[spec.lower()]()


def activation_name(spec: Any) -> str | None:
    """The registry name of an activation spec, for choosing an initialiser.

    Parameters
    ----------
    spec : str, Activation or None
        As :func:`~xpmlp.layers.get_activation` takes it.

    Returns
    -------
    str or None
        The lower-cased name, or None for anything that is not a name or an Activation.
    """
    return spec.name if isinstance(spec, Activation) else (spec.lower() if isinstance(spec, str) else None)


def dense_for(units: int, activation: Any, in_features: int | None = None) -> Dense:
    """A Dense layer initialised to suit the activation that follows it.

    Parameters
    ----------
    units : int
        Output features.
    activation : str, Activation or None
        The activation after the layer (see :func:`xpmlp.init.default_init_for`).
    in_features : int, optional
        Input features.

    Returns
    -------
    Dense
        The layer, with He initialisation for ReLU-like activations and Glorot otherwise.
    """
    return Dense(units, in_features=in_features, init=default_init_for(activation_name(activation)))

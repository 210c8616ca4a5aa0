"""Optimisers over one flat parameter buffer, each update's maths written once.

An optimiser updates ONE flat 1-D parameter buffer ``data`` from ONE flat gradient buffer
``grad`` (``xpmlp.params.FlatParameters``) and keeps its state as flat buffers of the same
shape and dtype. Each optimiser states only its update as a few assignment statements (an
:class:`xpmlp.update.Update`) and the host scalars of each step (Python floats: learning
rate, bias corrections, dampening); the base class adds what all share (coupled or decoupled
weight decay as one more statement, clipping by global norm, the step count and the learning
rate checks) and runs the update with one of the executors made from the same description:

- the Array API reference (any namespace; new arrays, written back with ``[...] =``);
- NumPy: in place (``xpmlp.kernels_numpy``): one loop compiled by numba when it is installed,
  else NumPy passes over cache-sized chunks; both bitwise equal to it;
- CuPy: one fused ``ElementwiseKernel`` launch over the whole buffer (``Kernels.elementwise``
  of ``xpmlp.kernels_cupy``).
"""

from __future__ import annotations

import functools
import math
import textwrap
from typing import Any, Callable

from .backend import device_of, fast_kernels, namespace_of
from .functional import inherit_docstrings
from .update import Update

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "OPTIMIZERS", "get_optimizer",
           "clip_by_global_norm"]



def clip_by_global_norm(xp: Any, grads: list, max_norm: float) -> list:
    """Scale all gradients by min(1, max_norm / (||g||_2 + 1e-6)), the norm taken over all of them.

    The scale stays a device array, so clipping costs no host sync.

    Parameters
    ----------
    xp : module
        The Array API namespace of the gradients.
    grads : list of array
        The gradients, any shapes.
    max_norm : float
        The largest global L2 norm let through.

    Returns
    -------
    list of array
        New arrays, each of its gradient's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.optim import clip_by_global_norm
    >>> [g.round(3) for g in clip_by_global_norm(np, [np.array([3.0, 4.0])], 1.0)]
    [array([0.6, 0.8])]
    """
    total = xp.sqrt(sum(xp.sum(g * g) for g in grads))
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    return [g * scale for g in grads]


_DECAY = {"coupled": "g = g + wd * p", "decoupled": "p = p * (1 - lr * wd)"}


@functools.lru_cache(maxsize=256)
def _describe(rule: str, decay: str, state: tuple, name: str) -> Update:
    text = textwrap.dedent(rule).strip()
    return Update(_DECAY[decay] + "\n" + text if decay else text, state, name)


def _check_lr(value, name: str) -> None:
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{name} (the learning rate) must be finite and non-negative, got {value!r}")


class Optimizer:
    """Base class: one update of a flat parameter buffer from its flat gradient buffer.

    A subclass states :meth:`rule` (or ``RULE``), :meth:`scalars` and :meth:`initial_state`;
    :meth:`step` (a user's own loop) and :meth:`make_update` (a train step, made once per fit)
    run it; :meth:`state_dict` / :meth:`load_state_dict` save and restore ``t`` and the buffers.

    Parameters
    ----------
    lr : float or callable
        Learning rate; may be changed between steps (``opt.lr = ...``), or a schedule
        ``fn(step) -> float`` of the number of updates done so far (see :mod:`xpmlp.schedules`).
    weight_decay : float, default 0
        L2 penalty added to the gradient (``g + weight_decay * p``), or, for optimisers with
        ``decoupled_weight_decay``, a shrink ``p * (1 - lr * weight_decay)`` before the update.
    clipnorm : float, optional
        Clip the gradients by their global L2 norm before the update.
    decay_bias : bool, default True
        Whether weight decay applies to biases too (PyTorch's and Keras's default). False spares
        them, as scikit-learn's ``alpha`` does: the decay then covers the parameters marked
        ``decay`` (weight matrices), which a model's flat buffer holds first (``decayed``).

    Attributes
    ----------
    t : int
        Updates done.

    Raises
    ------
    ValueError
        If ``lr`` is negative or not finite, or ``clipnorm`` is not positive.

    Examples
    --------
    A subclass states its update as statements over ``p`` (the parameters), ``g`` (the
    gradient), its buffers and host scalars:

    >>> import numpy as np
    >>> from xpmlp import Optimizer
    >>> class HeavyBall(Optimizer):
    ...     RULE = "buf = mu * buf + g; p = p - lr * buf"
    ...     def initial_state(self) -> dict[str, float]:
    ...         return {"buf": 0.0}
    ...     def scalars(self, lr: float) -> dict:
    ...         return {"mu": 0.5}
    >>> opt = HeavyBall(lr=0.1)
    >>> p = np.array([1.0, 2.0])
    >>> for _ in range(2):
    ...     opt.step(p, np.array([1.0, -1.0]))
    >>> p.round(3), opt.state_names()
    (array([0.75, 2.25]), ['buf'])
    """

    decoupled_weight_decay = False
    RULE = ""  # the update's statements (see xpmlp.update), without weight decay

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherit_docstrings(cls)  # an override of a hook carries the hook's documentation

    def __init__(self, lr: float | Callable[[int], float], weight_decay: float = 0.0, clipnorm: float | None = None,
                 decay_bias: bool = True) -> None:
        if not callable(lr):
            _check_lr(lr, "lr")
        if clipnorm is not None and float(clipnorm) <= 0:
            raise ValueError(f"clipnorm must be positive, got {clipnorm!r}")
        self.lr = lr if callable(lr) else float(lr)
        self.weight_decay = float(weight_decay)
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.decay_bias = bool(decay_bias)
        self.t = 0  # steps taken
        self._state: dict | None = None
        self._updates: dict = {}  # namespace -> update made by make_update, for step()
        self._adopt = False  # buffers from load_state_dict, moved to the parameters' device at the next update

    def current_lr(self) -> float:
        """The learning rate the next update uses (a schedule is evaluated at the step count).

        Returns
        -------
        float
            The learning rate.
        """
        return float(self.lr(self.t)) if callable(self.lr) else self.lr

    def _applied_lr(self) -> float:
        """current_lr, refused if negative or not finite (a schedule's value, or ``opt.lr = ...``)."""
        lr = self.current_lr()
        if not (math.isfinite(lr) and lr >= 0):
            source = f"the schedule {self.lr!r} returned" if callable(self.lr) else "it is"
            raise ValueError(f"{type(self).__name__}: the learning rate for step {self.t + 1} is not usable: "
                             f"{source} {lr!r}; a learning rate must be finite and non-negative")
        return lr

    # -- state ---------------------------------------------------------------------------------

    def state_names(self) -> list[str]:
        """The names of the buffers this optimiser keeps (with its configuration), sorted.

        Returns
        -------
        list of str
            The buffer names.
        """
        return sorted(self.initial_state())

    def initial_state(self) -> dict[str, float]:
        """The buffers this configuration keeps, and the value their elements start at.

        Returns
        -------
        dict of str to float
            Buffer name -> initial value of its elements.
        """
        return {}

    def _init_state(self, xp, data) -> dict:
        return {name: xp.full_like(data, init) if init else xp.zeros_like(data)
                for name, init in self.initial_state().items()}

    @property
    def state(self) -> dict | None:
        """None before the first update, then {name: flat 1-D buffer} (as :meth:`state_names`)."""
        return self._state

    @state.setter
    def state(self, value: dict | None) -> None:
        self._adopt = False
        self._state = None if value is None else dict(value)

    def state_dict(self) -> dict:
        """The step count and the buffers.

        Returns
        -------
        dict
            ``{"t": int, "state": {name: 1-D array} or None}``; the arrays are the live buffers
            (no copy).
        """
        return {"t": self.t, "state": None if self._state is None else dict(self._state)}

    def load_state_dict(self, sd: dict) -> None:
        """Take the step count and buffers of ``sd``, copying the arrays.

        With buffers already (after an update), they are written in place and must match in names,
        shapes and dtype; before the first update, copies of the given arrays become the buffers,
        moved at that update to the parameters' library and device if they are elsewhere (a file's
        NumPy arrays for a model on a GPU).

        Parameters
        ----------
        sd : dict
            As :meth:`state_dict` gives: ``{"t": int, "state": {name: 1-D array} or None}``.

        Raises
        ------
        ValueError
            Naming what does not match.
        """
        if not isinstance(sd, dict) or set(sd) != {"t", "state"}:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with keys 't' and "
                             f"'state', got {sorted(sd) if isinstance(sd, dict) else type(sd).__name__}")
        t, state = sd["t"], sd["state"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: t must be a non-negative int, got {t!r}")
        if state is None:
            self.t, self.state = t, None
            return
        names = self.state_names()
        if not isinstance(state, dict) or sorted(state) != names:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{type(self).__name__}.load_state_dict: this optimizer keeps the buffers {names}, "
                             f"the state dict has {got}")
        own = self._state
        if not names:  # plain SGD: no buffers
            self.t, self.state = t, {}
            return
        arrays = list(state.values())
        xp = namespace_of(*arrays)
        for name in names:
            a, ref = state[name], (own[name] if own is not None else arrays[0])
            if a.ndim != 1:
                raise ValueError(f"{type(self).__name__}.load_state_dict: buffer '{name}' has shape "
                                 f"{tuple(a.shape)}; the buffers are 1-D")
            if tuple(a.shape) != tuple(ref.shape) or a.dtype != ref.dtype:
                whose = "this optimizer's buffer" if own is not None else f"the state dict's '{names[0]}'"
                raise ValueError(f"{type(self).__name__}.load_state_dict: buffer '{name}' has shape "
                                 f"{tuple(a.shape)} and dtype {a.dtype}, expected the shape {tuple(ref.shape)} "
                                 f"and dtype {ref.dtype} of {whose}")
        if own is None:
            self.state = {name: xp.asarray(state[name], copy=True) for name in names}
            self._adopt = True
        else:
            for name in names:
                own[name][...] = state[name]
        self.t = t

    # -- the update ----------------------------------------------------------------------------

    def rule(self) -> str:
        """The update's statements for this configuration (:mod:`xpmlp.update`), without weight decay.

        Returns
        -------
        str
            Assignment statements, one per line (``RULE`` unless a subclass builds them).
        """
        return self.RULE

    def scalars(self, lr: float) -> dict:
        """The host scalars of the rule for the step being taken (``self.t`` already counts it).

        Parameters
        ----------
        lr : float
            The step's learning rate.

        Returns
        -------
        dict of str to float
            Values of the rule's host scalars other than ``lr`` and ``wd``.
        """
        return {}

    def description(self, decay: bool = True) -> Update:
        """The whole update: weight decay (a first statement, when set and ``decay``), then :meth:`rule`.

        Host scalars ``lr`` (the step's learning rate) and ``wd`` are always given. Parsed once per
        distinct configuration (cached).

        Parameters
        ----------
        decay : bool, default True
            Whether the weight decay statement is included (when ``weight_decay`` is set).

        Returns
        -------
        Update
            The parsed update (:class:`xpmlp.update.Update`).
        """
        mode = "" if not (decay and self.weight_decay) else "decoupled" if self.decoupled_weight_decay else "coupled"
        return _describe(self.rule(), mode, tuple(self.initial_state()), type(self).__name__.lower())

    def make_update(self, xp: Any, kernels: Any = None) -> Callable[..., None]:
        """``update(data, grad)``: one update of the flat buffer ``data`` in place, as :meth:`step`.

        The configuration is read at every update, as the learning rate is: changing
        ``opt.momentum`` between updates takes effect (a new description, parsed once).

        Parameters
        ----------
        xp : module
            The arrays' namespace.
        kernels : module or Kernels, optional
            None (the Array API reference), ``xpmlp.kernels_numpy`` (NumPy, in place: numba's
            compiled loop, or chunked passes) or the ``Kernels`` of ``xpmlp.kernels_cupy`` (CuPy:
            one launch per update through ``kernels.elementwise(spec)``). Arrays a fast path cannot take (its
            ``kernels.usable(...)`` is False: not contiguous, read-only, a dtype it does not offer)
            take the reference path.

        Returns
        -------
        callable
            ``update(data, grad, decayed=None) -> None``, with the arguments of :meth:`step`.
        """
        inplace = getattr(kernels, "inplace", None)
        elementwise = getattr(kernels, "elementwise", None)
        executors: dict = {}  # Update -> its fast executor on this path

        def run(desc, arrays, values) -> None:
            if inplace is not None and kernels.usable(*arrays.values()):
                if desc not in executors:
                    executors[desc] = inplace(desc)
                executors[desc](arrays, values)
            elif elementwise is not None and kernels.usable(*arrays.values()):
                if desc not in executors:  # the Kernels object caches the compiled kernel per spec
                    executors[desc] = elementwise(desc.kernel_spec())
                executors[desc](arrays["g"], *(values[h] for h in desc.host_names), arrays["p"],
                                *(arrays[n] for n in desc.state))
            else:
                desc.reference_inplace(xp, arrays, values)

        def update(data, grad, decayed: int | None = None) -> None:
            state = self._prepare(xp, data, grad)
            if self.clipnorm is not None:  # a separate pass: the norm needs the whole buffer first
                grad = clip_by_global_norm(xp, [grad], self.clipnorm)[0]
            lr = self._applied_lr()
            self.t += 1
            desc = self.description()
            scalars = {**self.scalars(lr), "lr": lr, "wd": self.weight_decay}
            values = desc.host_values(scalars)
            arrays = {"p": data, "g": grad, **state}
            split = self._decay_split(data.shape[0], decayed)
            if split is None:
                run(desc, arrays, values)
                return
            # weight decay on the leading range only: the same update without it on the rest
            run(desc, {k: a[:split] for k, a in arrays.items()}, values)
            plain = self.description(decay=False)
            run(plain, {k: a[split:] for k, a in arrays.items()}, plain.host_values(scalars))

        return update

    def _decay_split(self, size: int, decayed: int | None) -> int | None:
        """Where weight decay stops in the buffer, or None when it covers all of it (or is off)."""
        if self.decay_bias or not self.weight_decay:
            return None
        if decayed is None:
            raise ValueError(f"{type(self).__name__}(decay_bias=False) needs to know which parameters "
                             "are weights: pass decayed=model.flat.n_decay to step()")
        if isinstance(decayed, bool) or not isinstance(decayed, int) or not 0 <= decayed <= size:
            raise ValueError(f"decayed must be an int in [0, {size}], got {decayed!r}")
        return decayed if decayed < size else None

    def _prepare(self, xp, data, grad) -> dict:
        """The state buffers for ``data`` (made at the first update); refuses mismatched buffers."""
        if data.ndim != 1 or tuple(grad.shape) != tuple(data.shape) or grad.dtype != data.dtype:
            raise ValueError(f"{type(self).__name__}: data and grad must be 1-D of one shape and dtype, "
                             f"got {tuple(data.shape)} {data.dtype} and {tuple(grad.shape)} {grad.dtype}")
        state = self._state
        if state is None:
            state = self._state = self._init_state(xp, data)
        if self._adopt:
            self._adopt = False
            device = device_of(data)
            if any(type(s) is not type(data) or device_of(s) != device for s in state.values()):
                state = self._state = {k: xp.asarray(s, device=device, copy=True) for k, s in state.items()}
        if sorted(state) != self.state_names() or any(
                tuple(s.shape) != tuple(data.shape) or s.dtype != data.dtype for s in state.values()):
            shown = {k: f"{tuple(s.shape)} {s.dtype}" for k, s in state.items()}
            raise ValueError(f"this {type(self).__name__} holds the state {shown} but was given parameters of "
                             f"shape {tuple(data.shape)} and dtype {data.dtype} and needs the buffers "
                             f"{self.state_names()}; use a new optimizer for a different model")
        return state

    def step(self, data: Any, grad: Any, decayed: int | None = None) -> None:
        """One update of the flat 1-D buffer ``data`` in place.

        The implementation is chosen from the arrays' namespace, once. ``fit`` makes its update
        once with :meth:`make_update` instead; this is for loops of one's own
        (``opt.step(model.flat.data, model.flat.grad, model.flat.n_decay)`` after
        ``model.backward``).

        Parameters
        ----------
        data : array of shape (n_params,)
            The parameters, updated in place.
        grad : array of shape (n_params,)
            The gradient: same shape, dtype, namespace and device as ``data``.
        decayed : int, optional
            How many leading elements are weights, for ``decay_bias=False`` (a model's
            ``flat.n_decay``).

        Raises
        ------
        ValueError
            If ``data`` and ``grad`` differ in shape or dtype or are not 1-D, if the optimiser's
            buffers are for other parameters, if the learning rate is unusable, or if
            ``decay_bias=False`` without ``decayed``.
        """
        self._update_for(namespace_of(data, grad))(data, grad, decayed)

    def _update_for(self, xp: Any) -> Callable[..., None]:
        update = self._updates.get(xp)
        if update is None:
            update = self._updates[xp] = self.make_update(xp, fast_kernels(xp))
        return update

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this optimiser (used for saving and repr).

        Returns
        -------
        dict
            Keyword arguments of the constructor.
        """
        config = {"lr": self.lr, "weight_decay": self.weight_decay, "clipnorm": self.clipnorm}
        return config if self.decay_bias else {**config, "decay_bias": False}

    def __getstate__(self):  # pickle and deepcopy: the cached updates are remade on first use
        return {**vars(self), "_updates": {}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD.

    buf = momentum * buf + (1 - dampening) * g;  step = g + momentum * buf (Nesterov) or buf.

    Parameters
    ----------
    lr : float or callable, default 0.01
        Learning rate, or a schedule of the step count (see :class:`Optimizer`).
    momentum : float, default 0
        Momentum factor; 0 keeps no buffer.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
    dampening : float, default 0
        Dampening of the momentum's gradient term (none at the first step, as torch).
    weight_decay : float, default 0
        coupled L2 penalty: ``g + weight_decay * p`` is the gradient the update uses.
    clipnorm : float, optional
        Clip the gradients by their global L2 norm before the update; positive.
    decay_bias : bool, default True
        Whether weight decay applies to biases too (see :class:`Optimizer`).

    Raises
    ------
    ValueError
        For Nesterov momentum without momentum or with dampening, and as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import SGD
    >>> opt = SGD(lr=0.1)
    >>> p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    >>> opt.step(p, g)  # in place
    >>> p.round(3), opt.t
    (array([0.95, 2.1 ]), 1)
    """

    def __init__(self, lr: float | Callable[[int], float] = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 dampening: float = 0.0, weight_decay: float = 0.0, clipnorm: float | None = None,
                 decay_bias: bool = True) -> None:
        super().__init__(lr, weight_decay, clipnorm, decay_bias)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.nesterov, self.dampening = float(momentum), bool(nesterov), float(dampening)

    def initial_state(self) -> dict[str, float]:
        return {"momentum": 0.0} if self.momentum else {}

    def rule(self) -> str:
        if not self.momentum:
            return "p = p - lr * g"
        return ("momentum = mu * momentum + damp * g\n"
                + ("p = p - lr * (g + mu * momentum)" if self.nesterov else "p = p - lr * momentum"))

    def scalars(self, lr: float) -> dict:
        # torch starts the buffer at g itself (no dampening on the first step)
        return {"mu": self.momentum, "damp": 1.0 if self.t == 1 else 1.0 - self.dampening}

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "dampening": self.dampening}


class Adam(Optimizer):
    """Adam (Kingma and Ba), as torch.optim.Adam: bias-corrected first and second moments.

    Parameters
    ----------
    lr : float or callable, default 1e-3
        Learning rate, or a schedule of the step count (see :class:`Optimizer`).
    beta_1 : float in [0, 1), default 0.9
        Decay of the first moment's running mean.
    beta_2 : float in [0, 1), default 0.999
        Decay of the second moment's running mean.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0
        coupled L2 penalty: ``g + weight_decay * p`` is the gradient the update uses.
    clipnorm : float, optional
        Clip the gradients by their global L2 norm before the update; positive.
    decay_bias : bool, default True
        Whether weight decay applies to biases too (see :class:`Optimizer`).

    Raises
    ------
    ValueError
        If a beta is not in [0, 1), and as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Adam
    >>> opt = Adam(lr=0.1)
    >>> p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    >>> opt.step(p, g)  # in place
    >>> p.round(3), opt.t
    (array([0.9, 2.1]), 1)
    """

    RULE = """
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g * g)
        p = p - step_size * (m / (sqrt(v) / root_bc2 + eps))
    """

    def __init__(self, lr: float | Callable[[int], float] = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0, clipnorm: float | None = None,
                 decay_bias: bool = True) -> None:
        super().__init__(lr, weight_decay, clipnorm, decay_bias)
        for name, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")
        self.beta_1, self.beta_2, self.eps = float(beta_1), float(beta_2), float(eps)

    def initial_state(self) -> dict[str, float]:
        return {"m": 0.0, "v": 0.0}

    def scalars(self, lr: float) -> dict:
        # the bias corrections: step_size = lr / (1 - beta_1^t), root_bc2 = sqrt(1 - beta_2^t)
        return {"b1": self.beta_1, "b2": self.beta_2, "eps": self.eps,
                "step_size": lr / (1.0 - self.beta_1 ** self.t), "root_bc2": math.sqrt(1.0 - self.beta_2 ** self.t)}

    def get_config(self) -> dict:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as torch.optim.AdamW.

    Parameters
    ----------
    lr : float or callable, default 1e-3
        Learning rate, or a schedule of the step count (see :class:`Optimizer`).
    beta_1 : float in [0, 1), default 0.9
        Decay of the first moment's running mean.
    beta_2 : float in [0, 1), default 0.999
        Decay of the second moment's running mean.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0.01
        decoupled decay: ``p * (1 - lr * weight_decay)`` before the Adam update.
    clipnorm : float, optional
        Clip the gradients by their global L2 norm before the update; positive.
    decay_bias : bool, default True
        Whether weight decay applies to biases too (see :class:`Optimizer`).

    Raises
    ------
    ValueError
        If a beta is not in [0, 1), and as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import AdamW
    >>> opt = AdamW(lr=0.1, weight_decay=0.5)
    >>> p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    >>> opt.step(p, g)  # in place
    >>> p.round(3), opt.t
    (array([0.85, 2. ]), 1)
    """

    decoupled_weight_decay = True

    def __init__(self, lr: float | Callable[[int], float] = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01, clipnorm: float | None = None,
                 decay_bias: bool = True) -> None:
        super().__init__(lr, beta_1, beta_2, eps, weight_decay, clipnorm, decay_bias)


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop: divide by a running RMS of the gradient.

    Parameters
    ----------
    lr : float or callable, default 0.01
        Learning rate, or a schedule of the step count (see :class:`Optimizer`).
    alpha : float, default 0.99
        Decay of the running mean of squared gradients.
    eps : float, default 1e-8
        Added to the denominator.
    momentum : float, default 0
        Momentum factor; 0 keeps no momentum buffer.
    centered : bool, default False
        Divide by an estimate of the gradient's variance (``E[g^2] - E[g]^2``) instead.
    weight_decay : float, default 0
        coupled L2 penalty: ``g + weight_decay * p`` is the gradient the update uses.
    clipnorm : float, optional
        Clip the gradients by their global L2 norm before the update; positive.
    decay_bias : bool, default True
        Whether weight decay applies to biases too (see :class:`Optimizer`).

    Raises
    ------
    ValueError
        As :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import RMSprop
    >>> opt = RMSprop(lr=0.01)
    >>> p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    >>> opt.step(p, g)  # in place
    >>> p.round(3), opt.t
    (array([0.9, 2.1]), 1)
    """

    def __init__(self, lr: float | Callable[[int], float] = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, weight_decay: float = 0.0,
                 clipnorm: float | None = None, decay_bias: bool = True) -> None:
        super().__init__(lr, weight_decay, clipnorm, decay_bias)
        self.alpha, self.eps, self.momentum, self.centered = float(alpha), float(eps), float(momentum), bool(centered)

    def initial_state(self) -> dict[str, float]:
        state = {"square_avg": 0.0}
        if self.momentum:
            state["momentum"] = 0.0
        if self.centered:
            state["grad_avg"] = 0.0
        return state

    def rule(self) -> str:
        lines = ["square_avg = alpha * square_avg + (1 - alpha) * (g * g)"]
        if self.centered:  # the variance estimate: E[g^2] - E[g]^2
            lines += ["grad_avg = alpha * grad_avg + (1 - alpha) * g",
                      "step = g / (sqrt(square_avg - grad_avg * grad_avg) + eps)"]
        else:
            lines += ["step = g / (sqrt(square_avg) + eps)"]
        if self.momentum:
            lines += ["momentum = mu * momentum + step", "p = p - lr * momentum"]
        else:
            lines += ["p = p - lr * step"]
        return "\n".join(lines)

    def scalars(self, lr: float) -> dict:
        return {"alpha": self.alpha, "eps": self.eps, "mu": self.momentum}

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad: divide by the root of the summed squared gradients.

    Parameters
    ----------
    lr : float or callable, default 0.01
        Learning rate, or a schedule of the step count (see :class:`Optimizer`).
    lr_decay : float, default 0
        The rate at step t is ``lr / (1 + (t - 1) * lr_decay)``; finite and non-negative.
    eps : float, default 1e-10
        Added to the denominator.
    initial_accumulator_value : float, default 0
        The value the sum of squared gradients starts at.
    weight_decay : float, default 0
        coupled L2 penalty: ``g + weight_decay * p`` is the gradient the update uses.
    clipnorm : float, optional
        Clip the gradients by their global L2 norm before the update; positive.
    decay_bias : bool, default True
        Whether weight decay applies to biases too (see :class:`Optimizer`).

    Raises
    ------
    ValueError
        If ``lr_decay`` is negative or not finite, and as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp import Adagrad
    >>> opt = Adagrad(lr=0.1)
    >>> p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    >>> opt.step(p, g)  # in place
    >>> p.round(3), opt.t
    (array([0.9, 2.1]), 1)
    """

    RULE = """
        sum = sum + g * g
        p = p - clr * (g / (sqrt(sum) + eps))
    """

    def __init__(self, lr: float | Callable[[int], float] = 0.01, lr_decay: float = 0.0, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0, weight_decay: float = 0.0,
                 clipnorm: float | None = None, decay_bias: bool = True) -> None:
        super().__init__(lr, weight_decay, clipnorm, decay_bias)
        # With lr_decay >= 0 the rate lr / (1 + (t - 1) * lr_decay) stays finite and non-negative;
        # a negative one would pass through zero (an infinite rate) to negative rates.
        if not (math.isfinite(float(lr_decay)) and float(lr_decay) >= 0):
            raise ValueError(f"lr_decay must be finite and non-negative, got {lr_decay!r}")
        self.lr_decay, self.eps = float(lr_decay), float(eps)
        self.initial_accumulator_value = float(initial_accumulator_value)

    def initial_state(self) -> dict[str, float]:
        return {"sum": self.initial_accumulator_value}

    def scalars(self, lr: float) -> dict:
        return {"eps": self.eps, "clr": lr / (1.0 + (self.t - 1) * self.lr_decay)}

    def get_config(self) -> dict:
        return {**super().get_config(), "lr_decay": self.lr_decay, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}


#: The optimiser classes by name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``,
#: ``"adagrad"``), as ``fit(optimizer=...)`` takes them.
OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get_optimizer(spec: Any, **kwargs: Any) -> Optimizer:
    """An optimiser from its name (:data:`~xpmlp.OPTIMIZERS`, any case) or an instance.

    Parameters
    ----------
    spec : str or Optimizer
        A name, or an instance (returned as it is).
    **kwargs
        Passed to the named optimiser's constructor.

    Returns
    -------
    Optimizer
        A new optimiser for a name, else ``spec`` itself.

    Raises
    ------
    ValueError
        If ``spec`` names no optimiser.

    Examples
    --------
    >>> from xpmlp.optim import get_optimizer
    >>> get_optimizer("adam", lr=0.01)
    Adam(lr=0.01, weight_decay=0.0, clipnorm=None, beta_1=0.9, beta_2=0.999, eps=1e-08)
    """
    if isinstance(spec, Optimizer):
        return spec
    key = spec.lower() if isinstance(spec, str) else None
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; valid names: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[key](**kwargs)

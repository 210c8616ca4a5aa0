"""Optimisers: each writes its update maths once, in ``update``, against the Array API.

An optimiser updates ONE flat 1-D parameter buffer from ONE flat gradient buffer
(``xpmlp.params.FlatParameters``), and keeps its state as flat buffers of the same shape. The
base class does what every optimiser shares: weight decay (coupled or decoupled), clipping by
global norm, the step count, and writing results back in place (``data[...] = new``: the
standard allows ``p -= ...`` not to mutate, so results are assigned). A backend may offer fast kernels (NumPy: :mod:`xpmlp.kernels_numpy`)
that do the same update in place, bitwise equal; ``update_fast`` uses them where they apply. Hyper-parameters, the step counter and bias
corrections are Python floats on the host: no device scalar, no dtype promotion.
"""

from __future__ import annotations

import math

from .backend import fast_kernels, namespace_of

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "OPTIMIZERS", "get_optimizer",
           "clip_by_global_norm"]


def clip_by_global_norm(xp, grads: list, max_norm: float) -> list:
    """Scale all gradients by min(1, max_norm / (||g||_2 + 1e-6)), the norm taken over all of them.

    The scale stays a device array, so clipping costs no host sync.
    """
    total = xp.sqrt(sum(xp.sum(g * g) for g in grads))
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)
    return [g * scale for g in grads]


def _check_lr(value, name: str) -> None:
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{name} (the learning rate) must be finite and non-negative, got {value!r}")


class Optimizer:
    """Base class: one update of a flat parameter buffer from its flat gradient buffer.

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

    Attributes
    ----------
    t : int
        Updates done.
    state : dict of str to array, or None
        None before the first update, then the optimiser's buffers (``"m"``, ``"v"``,
        ``"momentum"``...), each 1-D like the parameter buffer and updated in place.
    """

    decoupled_weight_decay = False
    STATE: dict[str, str] = {}  # buffer name -> the config attribute holding its initial value ("" = 0)

    def __init__(self, lr, weight_decay: float = 0.0, clipnorm: float | None = None):
        if not callable(lr):
            _check_lr(lr, "lr")
        if clipnorm is not None and float(clipnorm) <= 0:
            raise ValueError(f"clipnorm must be positive, got {clipnorm!r}")
        self.lr = lr if callable(lr) else float(lr)
        self.weight_decay = float(weight_decay)
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.t = 0  # steps taken
        self._state: dict | None = None
        self._legacy_shapes: list | None = None  # TO BE REMOVED with step(slots)
        self._pending: list | None = None  # TO BE REMOVED: per-parameter dicts given to .state, joined at the next update
        self._updates: dict = {}  # namespace -> update made by make_update, for step()

    def current_lr(self) -> float:
        """The learning rate the next update uses (a schedule is evaluated at the step count)."""
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
        """The names of the buffers this optimiser keeps (with its configuration), sorted."""
        return sorted(self._initial_values())

    def _initial_values(self) -> dict[str, float]:
        """Buffer name -> the value it starts at; subclasses drop the buffers their options do not use."""
        return {name: (float(getattr(self, attr)) if attr else 0.0) for name, attr in self.STATE.items()}

    def _init_state(self, xp, data) -> dict:
        return {name: xp.full_like(data, init) if init else xp.zeros_like(data)
                for name, init in self._initial_values().items()}

    @property
    def state(self):
        if self._pending is not None:  # TO BE REMOVED with step(slots)
            return self._pending
        if self._state is not None and self._legacy_shapes is not None:  # TO BE REMOVED with step(slots)
            return _split(self._state, self._legacy_shapes)
        return self._state

    @state.setter
    def state(self, value):
        self._legacy_shapes = self._pending = None
        if isinstance(value, (list, tuple)):  # TO BE REMOVED: per-parameter dicts (train.py, io.py today)
            # joined at the next update, which runs on the arrays' device (CuPy: the current one)
            self._pending, value = list(value), None
        self._state = None if value is None else dict(value)

    def _join_pending(self) -> None:  # TO BE REMOVED with step(slots)
        if self._pending is not None:
            self._state, self._legacy_shapes = _join(self._pending)
            self._pending = None

    def state_dict(self) -> dict:
        """``{"t": int, "state": {name: 1-D array} or None}``; the arrays are the live buffers (no copy)."""
        self._join_pending()
        return {"t": self.t, "state": None if self._state is None else dict(self._state)}

    def load_state_dict(self, sd: dict) -> None:
        """Take the step count and buffers of ``sd`` (as :meth:`state_dict` gives), copying the arrays.

        With buffers already (after an update), they are written in place and must match in names,
        shapes and dtype; before the first update, copies of the given arrays become the buffers.
        Raises ValueError naming what does not match.
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
        if not names:  # an optimiser without buffers (plain SGD)
            self.t, self.state = t, {}
            return
        arrays = list(state.values())
        xp = namespace_of(*arrays)
        own = self._state
        for name in names:
            a, ref = state[name], (own[name] if own is not None else arrays[0])
            if a.ndim != 1 or tuple(a.shape) != tuple(ref.shape) or a.dtype != ref.dtype:
                want = (f"the shape {tuple(ref.shape)} and dtype {ref.dtype} of "
                        + ("this optimizer's buffer" if own is not None else f"'{names[0]}'") + " (1-D)")
                raise ValueError(f"{type(self).__name__}.load_state_dict: buffer '{name}' has shape "
                                 f"{tuple(a.shape)} and dtype {a.dtype}, expected {want}")
        if own is None:
            self.state = {name: xp.asarray(state[name], copy=True) for name in names}
        else:
            for name in names:
                own[name][...] = state[name]
        self.t = t

    # -- the update ----------------------------------------------------------------------------

    def update(self, xp, p, g, state: dict, lr: float):
        """Return the new value of parameter p from gradient g; may replace entries of state (functional)."""
        raise NotImplementedError

    def update_fast(self, kernels, p, g, state: dict, lr: float) -> bool:
        """The same update in place with a backend's fast kernels; False where none applies."""
        return False

    def make_update(self, xp, kernels=None):
        """``update(data, grad)``: one update of the flat buffer ``data`` in place, as :meth:`step`.

        Parameters
        ----------
        xp : the arrays' namespace
        kernels : None (the Array API reference), :mod:`xpmlp.kernels_numpy` (NumPy, in place) or
            the ``Kernels`` of :mod:`xpmlp.kernels_cupy` (CuPy).
        """

        def update(data, grad) -> None:
            if tuple(grad.shape) != tuple(data.shape) or grad.dtype != data.dtype or data.ndim != 1:
                raise ValueError(f"{type(self).__name__}: data and grad must be 1-D of one shape and dtype, "
                                 f"got {tuple(data.shape)} {data.dtype} and {tuple(grad.shape)} {grad.dtype}")
            self._join_pending()
            state = self._state
            if state is None:
                state = self._state = self._init_state(xp, data)
            elif any(tuple(s.shape) != tuple(data.shape) or s.dtype != data.dtype for s in state.values()):
                s = next(iter(state.values()))
                raise ValueError(f"this optimizer holds state of shape {tuple(s.shape)} and dtype {s.dtype} "
                                 f"but was given parameters of shape {tuple(data.shape)} and dtype {data.dtype}; "
                                 "use a new optimizer for a different model")
            if self.clipnorm is not None:
                grad = clip_by_global_norm(xp, [grad], self.clipnorm)[0]
            lr, wd = self._applied_lr(), self.weight_decay
            self.t += 1
            p, g = data, grad
            if wd and self.decoupled_weight_decay:
                p = p * (1.0 - lr * wd)
            elif wd:
                g = g + wd * p
            if kernels is not None and p is not data and kernels.usable(data, p):
                data[...] = p  # decoupled decay: the fast kernels below work on data in place
                p = data
            if kernels is not None and p is data and self.update_fast(kernels, data, g, state, lr):
                return
            new = dict(state)
            data[...] = self.update(xp, p, g, new, lr)
            for name, value in new.items():
                state[name][...] = value

        return update

    def step(self, data, grad=None) -> None:
        """One update of the flat 1-D buffer ``data`` in place, from the 1-D ``grad`` (same shape, dtype,
        namespace and device); the implementation is chosen from the arrays' namespace, once.

        ``step(slots)`` (a list of ``(params, grads, key)``) is the old interface, TO BE REMOVED.
        """
        if grad is None:
            self._legacy_step(data)
            return
        xp = namespace_of(data, grad)
        update = self._updates.get(xp)
        if update is None:
            update = self._updates[xp] = self.make_update(xp, fast_kernels(xp))
        update(data, grad)
        self._legacy_shapes = None

    def _legacy_step(self, slots) -> None:
        """TO BE REMOVED once fit uses step(data, grad): gather into one flat buffer, update, scatter back
        (each ``params[key]`` becomes a view of the new buffer)."""
        if not slots:
            return
        params = [pd[k] for pd, _, k in slots]
        grads = [gd[k] for _, gd, k in slots]
        xp = namespace_of(*params)
        shapes = [tuple(p.shape) for p in params]
        held = self.state
        if isinstance(held, list) and len(held) != len(shapes):
            raise ValueError(f"this optimizer holds state for {len(held)} parameters but was "
                             f"given {len(shapes)}; use a new optimizer for a different model")
        data = xp.concat([xp.reshape(p, (-1,)) for p in params])
        grad = xp.concat([xp.reshape(g, (-1,)) for g in grads])
        update = self._updates.get(xp)
        if update is None:
            update = self._updates[xp] = self.make_update(xp, fast_kernels(xp))
        update(data, grad)
        self._legacy_shapes = shapes
        for (pd, _, k), piece in zip(slots, _split({"p": data}, shapes)):
            pd[k] = piece["p"]

    def init_state(self, xp, p) -> dict:
        """TO BE REMOVED (io.py): the buffers for one parameter p, as :meth:`state_names` gives them."""
        return self._init_state(xp, p)

    def get_config(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "clipnorm": self.clipnorm}

    def __getstate__(self):  # pickle and deepcopy: the cached updates are remade on first use
        return {**vars(self), "_updates": {}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _split(state: dict, shapes: list) -> list[dict]:
    """TO BE REMOVED with step(slots): per-parameter dicts of views of the flat buffers."""
    if not state:
        return [{} for _ in shapes]
    out, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        xp = namespace_of(*state.values())
        out.append({k: xp.reshape(v[offset:offset + size], shape) for k, v in state.items()})
        offset += size
    return out


def _join(states) -> tuple[dict | None, list | None]:
    """TO BE REMOVED with step(slots): the flat buffers and shapes of per-parameter dicts."""
    states = list(states)
    if not states or not states[0]:  # no buffers (plain SGD): the shapes do not matter
        return {}, [None] * len(states)
    xp = namespace_of(*states[0].values())
    shapes = [tuple(next(iter(s.values())).shape) for s in states]
    return {k: xp.concat([xp.reshape(s[k], (-1,)) for s in states]) for k in states[0]}, shapes


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD.

    buf = momentum * buf + (1 - dampening) * g;  step = g + momentum * buf (Nesterov) or buf.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 dampening: float = 0.0, weight_decay: float = 0.0, clipnorm: float | None = None):
        super().__init__(lr, weight_decay, clipnorm)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.nesterov, self.dampening = float(momentum), bool(nesterov), float(dampening)

    def _initial_values(self):
        return {"momentum": 0.0} if self.momentum else {}

    def _damp(self) -> float:
        # torch starts the buffer at g itself (no dampening on the first step)
        return 1.0 if self.t == 1 else 1.0 - self.dampening

    def update(self, xp, p, g, state, lr):
        if self.momentum:
            buf = self.momentum * state["momentum"] + self._damp() * g
            state["momentum"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return p - lr * g

    def update_fast(self, kernels, p, g, state, lr):
        buf = state.get("momentum")
        if not kernels.usable(p, g, *([] if buf is None else [buf])):
            return False
        kernels.sgd_(p, g, buf, lr=lr, momentum=self.momentum, damp=self._damp(), nesterov=self.nesterov)
        return True

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "dampening": self.dampening}


class Adam(Optimizer):
    """Adam (Kingma and Ba), as torch.optim.Adam: bias-corrected first and second moments."""

    def __init__(self, lr: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, clipnorm: float | None = None):
        super().__init__(lr, weight_decay, clipnorm)
        for name, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")
        self.beta_1, self.beta_2, self.eps = float(beta_1), float(beta_2), float(eps)

    STATE = {"m": "", "v": ""}

    def update(self, xp, p, g, state, lr):
        b1, b2 = self.beta_1, self.beta_2
        m = b1 * state["m"] + (1.0 - b1) * g
        v = b2 * state["v"] + (1.0 - b2) * (g * g)
        state["m"], state["v"] = m, v
        step_size, root_bc2 = self._bias_corrections(lr)
        denom = xp.sqrt(v) / root_bc2 + self.eps
        return p - step_size * (m / denom)

    def _bias_corrections(self, lr: float) -> tuple[float, float]:
        """(lr / (1 - beta_1^t), sqrt(1 - beta_2^t)): host scalars shared with the fast kernels."""
        return lr / (1.0 - self.beta_1 ** self.t), math.sqrt(1.0 - self.beta_2 ** self.t)

    def update_fast(self, kernels, p, g, state, lr):
        if not kernels.usable(p, g, state["m"], state["v"]):
            return False
        step_size, root_bc2 = self._bias_corrections(lr)
        kernels.adam_(p, g, state["m"], state["v"], b1=self.beta_1, b2=self.beta_2, eps=self.eps,
                      step_size=step_size, root_bc2=root_bc2)
        return True

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as torch.optim.AdamW."""

    decoupled_weight_decay = True

    def __init__(self, lr: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01, clipnorm: float | None = None):
        super().__init__(lr, beta_1, beta_2, eps, weight_decay, clipnorm)


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop: divide by a running RMS of the gradient."""

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 centered: bool = False, weight_decay: float = 0.0, clipnorm: float | None = None):
        super().__init__(lr, weight_decay, clipnorm)
        self.alpha, self.eps, self.momentum, self.centered = float(alpha), float(eps), float(momentum), bool(centered)

    def _initial_values(self):
        state = {"square_avg": 0.0}
        if self.momentum:
            state["momentum"] = 0.0
        if self.centered:
            state["grad_avg"] = 0.0
        return state

    def update(self, xp, p, g, state, lr):
        a = self.alpha
        sq = a * state["square_avg"] + (1.0 - a) * (g * g)
        state["square_avg"] = sq
        if self.centered:
            ga = a * state["grad_avg"] + (1.0 - a) * g
            state["grad_avg"] = ga
            sq = sq - ga * ga
        step = g / (xp.sqrt(sq) + self.eps)
        if self.momentum:
            step = self.momentum * state["momentum"] + step
            state["momentum"] = step
        return p - lr * step

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad: divide by the root of the summed squared gradients."""

    def __init__(self, lr: float = 0.01, lr_decay: float = 0.0, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0, weight_decay: float = 0.0,
                 clipnorm: float | None = None):
        super().__init__(lr, weight_decay, clipnorm)
        # With lr_decay >= 0 the rate lr / (1 + (t - 1) * lr_decay) stays finite and non-negative;
        # a negative one would pass through zero (an infinite rate) to negative rates.
        if not (math.isfinite(float(lr_decay)) and float(lr_decay) >= 0):
            raise ValueError(f"lr_decay must be finite and non-negative, got {lr_decay!r}")
        self.lr_decay, self.eps = float(lr_decay), float(eps)
        self.initial_accumulator_value = float(initial_accumulator_value)

    STATE = {"sum": "initial_accumulator_value"}

    def update(self, xp, p, g, state, lr):
        acc = state["sum"] + g * g
        state["sum"] = acc
        clr = lr / (1.0 + (self.t - 1) * self.lr_decay)
        return p - clr * (g / (xp.sqrt(acc) + self.eps))

    def get_config(self):
        return {**super().get_config(), "lr_decay": self.lr_decay, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get_optimizer(spec, **kwargs) -> Optimizer:
    """An optimiser from its name (``OPTIMIZERS``; keyword arguments go to its constructor) or an instance."""
    if isinstance(spec, Optimizer):
        return spec
    key = spec.lower() if isinstance(spec, str) else None
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; valid names: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[key](**kwargs)

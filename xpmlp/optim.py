"""Optimisers: each writes its update maths once, in ``update``, against the Array API.

The base class does what every optimiser shares: it pairs parameters with gradients, applies
(coupled or decoupled) weight decay and clipping by global norm, counts steps, and writes the
new values back into the layers' ``params`` (the standard allows ``p -= ...`` not to mutate, so
results are assigned). A backend may offer fast kernels (NumPy: :mod:`xpmlp.kernels_numpy`)
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
    """Base class.

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
    """

    decoupled_weight_decay = False

    def __init__(self, lr, weight_decay: float = 0.0, clipnorm: float | None = None):
        if not callable(lr):
            _check_lr(lr, "lr")
        if clipnorm is not None and float(clipnorm) <= 0:
            raise ValueError(f"clipnorm must be positive, got {clipnorm!r}")
        self.lr = lr if callable(lr) else float(lr)
        self.weight_decay = float(weight_decay)
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.t = 0  # steps taken
        self.state: list[dict] | None = None

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

    def init_state(self, xp, p) -> dict:
        """Per-parameter state (moment buffers) for parameter p."""
        return {}

    def update(self, xp, p, g, state: dict, lr: float):
        """Return the new value of parameter p from gradient g; may replace entries of state."""
        raise NotImplementedError

    def update_fast(self, kernels, p, g, state: dict, lr: float) -> bool:
        """The same update in place with a backend's fast kernels; False where none applies."""
        return False

    def step(self, slots) -> None:
        """Apply one update.

        Parameters
        ----------
        slots : list of (params, grads, key)
            Dicts of a layer's parameters and gradients and the key of one parameter (as given
            by ``Sequential.slots()``). The new value is stored in ``params[key]``; on a fast
            path (NumPy) the parameter and state arrays are updated in place, as torch.optim does.
        """
        if not slots:
            return
        params = [pd[k] for pd, _, k in slots]
        grads = [gd[k] for _, gd, k in slots]
        xp = namespace_of(*params)
        if self.state is None:
            self.state = [self.init_state(xp, p) for p in params]
        elif len(self.state) != len(params):
            raise ValueError(f"this optimizer holds state for {len(self.state)} parameters but was "
                             f"given {len(params)}; use a new optimizer for a different model")
        if self.clipnorm is not None:
            grads = clip_by_global_norm(xp, grads, self.clipnorm)
        lr, wd = self._applied_lr(), self.weight_decay
        self.t += 1
        kernels = fast_kernels(xp)
        for (pd, _, k), p, g, state in zip(slots, params, grads, self.state):
            if wd and self.decoupled_weight_decay:
                p = p * (1.0 - lr * wd)
            elif wd:
                g = g + wd * p
            if kernels is not None and self.update_fast(kernels, p, g, state, lr):
                pd[k] = p  # updated in place
            else:
                pd[k] = self.update(xp, p, g, state, lr)

    def get_config(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "clipnorm": self.clipnorm}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


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

    def init_state(self, xp, p):
        return {"momentum": xp.zeros_like(p)} if self.momentum else {}

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

    def init_state(self, xp, p):
        return {"m": xp.zeros_like(p), "v": xp.zeros_like(p)}

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

    def init_state(self, xp, p):
        state = {"square_avg": xp.zeros_like(p)}
        if self.momentum:
            state["momentum"] = xp.zeros_like(p)
        if self.centered:
            state["grad_avg"] = xp.zeros_like(p)
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

    def init_state(self, xp, p):
        return {"sum": xp.zeros_like(p) + self.initial_accumulator_value}

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

"""Learning-rate schedules: callables of the optimiser's step count (0 for the first update).

Give one as an optimiser's ``lr`` (``Adam(lr=CosineDecay(1e-3, total_steps=5000))``); any
callable ``fn(step) -> float`` works too. Values are Python floats on the host: a schedule never
touches the device.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from .functional import inherit_docstrings

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "CosineDecay", "OneCycle", "Scaled", "scaled", "SCHEDULES"]


class Schedule:
    """Base class of the saveable schedules: ``schedule(step) -> float``, the learning rate.

    A subclass stores its settings as attributes named as its constructor's arguments (what
    :meth:`~xpmlp.schedules.Schedule.get_config` returns and a model file saves) and gives ``__call__``.

    Examples
    --------
    >>> from xpmlp.schedules import Schedule
    >>> class Halving(Schedule):
    ...     def __init__(self, lr):
    ...         self.lr = lr
    ...     def __call__(self, step):
    ...         return self.lr / 2 ** step
    >>> sched = Halving(0.1)
    >>> sched(0), sched(2), sched.get_config()
    (0.1, 0.025, {'lr': 0.1})
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherit_docstrings(cls)

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments that rebuild this schedule (saved in model files).

        Returns
        -------
        dict
            Keyword arguments of the constructor, JSON-able.
        """
        return dict(vars(self))

    def state_dict(self) -> dict:
        """The schedule's state: none.

        Its value is a function of the optimiser's step count, which the optimiser's state dict
        holds; its settings are :meth:`~xpmlp.schedules.Schedule.get_config`.

        Returns
        -------
        dict
            ``{}``.
        """
        return {}

    def load_state_dict(self, sd: dict) -> None:
        """Accept :meth:`~xpmlp.schedules.Schedule.state_dict`'s ``{}``.

        Parameters
        ----------
        sd : dict
            ``{}``.

        Raises
        ------
        ValueError
            For anything else (a file from elsewhere).
        """
        if not isinstance(sd, dict) or sd:
            raise ValueError(f"{type(self).__name__}.load_state_dict: a schedule has no state; expected {{}}, got {sd!r}")

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _positive(value, name):
    if not float(value) > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


class StepDecay(Schedule):
    """lr * gamma ** (step // step_size): drop by ``gamma`` every ``step_size`` steps.

    Parameters
    ----------
    lr : float
        The initial learning rate.
    step_size : int
        Steps between drops; positive.
    gamma : float, default 0.1
        The factor of each drop.

    Raises
    ------
    ValueError
        If ``step_size`` is not positive.

    Examples
    --------
    >>> from xpmlp.schedules import StepDecay
    >>> sched = StepDecay(0.1, step_size=10, gamma=0.5)
    >>> [sched(0), sched(10), sched(25)]
    [0.1, 0.05, 0.025]
    """

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr, self.step_size, self.gamma = float(lr), int(_positive(step_size, "step_size")), float(gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class ExponentialDecay(Schedule):
    """lr * decay_rate ** (step / decay_steps).

    Parameters
    ----------
    lr : float
        The initial learning rate.
    decay_rate : float
        The factor over ``decay_steps`` steps.
    decay_steps : int, default 1
        Steps over which the rate is multiplied by ``decay_rate``; positive.

    Raises
    ------
    ValueError
        If ``decay_steps`` is not positive.

    Examples
    --------
    >>> from xpmlp.schedules import ExponentialDecay
    >>> sched = ExponentialDecay(0.1, decay_rate=0.5, decay_steps=100)
    >>> round(sched(50), 4), round(sched(200), 4)
    (0.0707, 0.025)
    """

    def __init__(self, lr: float, decay_rate: float, decay_steps: int = 1) -> None:
        self.lr, self.decay_rate = float(lr), float(decay_rate)
        self.decay_steps = int(_positive(decay_steps, "decay_steps"))

    def __call__(self, step: int) -> float:
        return self.lr * self.decay_rate ** (step / self.decay_steps)


class CosineDecay(Schedule):
    """Linear warm-up from 0 over ``warmup_steps``, then a cosine from ``lr`` down to ``final_lr``.

    Parameters
    ----------
    lr : float
        The peak learning rate.
    total_steps : int
        Steps to the end of the cosine (``final_lr`` from then on).
    warmup_steps : int, default 0
        Steps of linear warm-up, ``0 <= warmup_steps < total_steps``.
    final_lr : float, default 0
        The learning rate at the end.

    Raises
    ------
    ValueError
        If ``warmup_steps`` is not in ``[0, total_steps)``.

    Examples
    --------
    >>> from xpmlp import Adam
    >>> from xpmlp.schedules import CosineDecay
    >>> sched = CosineDecay(1e-3, total_steps=100, warmup_steps=10)
    >>> [round(sched(t), 6) for t in (0, 9, 55, 100)]
    [0.0001, 0.001, 0.0005, 0.0]
    >>> opt = Adam(lr=sched)  # evaluated at the optimiser's step count
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0) -> None:
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
        self.lr, self.total_steps, self.warmup_steps, self.final_lr = float(lr), int(total_steps), int(warmup_steps), float(final_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * progress))


class OneCycle(Schedule):
    """The one-cycle policy (Smith), as torch's OneCycleLR.

    A cosine up from max_lr/div_factor to max_lr over ``pct_start`` of the steps, then a cosine
    down to max_lr/(div_factor*final_div_factor).

    Parameters
    ----------
    max_lr : float
        The peak learning rate.
    total_steps : int
        Steps of the cycle; positive (the last value holds after it).
    pct_start : float in (0, 1), default 0.3
        The fraction of the steps spent rising.
    div_factor : float, default 25
        The initial rate is ``max_lr / div_factor``.
    final_div_factor : float, default 1e4
        The final rate is the initial one divided by this.

    Raises
    ------
    ValueError
        If ``pct_start`` is not in (0, 1) or ``total_steps`` is not positive.

    Examples
    --------
    >>> from xpmlp.schedules import OneCycle
    >>> sched = OneCycle(0.1, total_steps=101, pct_start=0.5)
    >>> [f"{sched(t):.2g}" for t in (0, 49, 100)]
    ['0.004', '0.1', '4e-07']
    """

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4) -> None:
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        self.max_lr, self.total_steps = float(max_lr), int(_positive(total_steps, "total_steps"))
        self.pct_start, self.div_factor, self.final_div_factor = float(pct_start), float(div_factor), float(final_div_factor)

    def __call__(self, step: int) -> float:
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        up = float(self.pct_start * self.total_steps) - 1
        down = float(self.total_steps) - 1
        step = min(step, self.total_steps - 1)

        def anneal(start, end, pct):
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

        if step <= up:
            return anneal(initial, self.max_lr, step / up)
        return anneal(self.max_lr, final, (step - up) / (down - up))


class Scaled(Schedule):
    """``factor * schedule(step)``: a schedule scaled down, as ReduceLROnPlateau does to one.

    Scaling a Scaled multiplies the factors instead of nesting.

    Parameters
    ----------
    schedule : Schedule or str
        A schedule of :data:`~xpmlp.schedules.SCHEDULES`, or its class name with ``config``.
    factor : float >= 0
        The factor, finite.
    config : str, optional
        With a class name: the schedule's ``get_config()`` as a JSON string. ``get_config``
        gives this form (scalars only), so a model file saves and loads a Scaled schedule like
        any other.

    Raises
    ------
    TypeError
        If ``schedule`` is not a schedule of this module.
    ValueError
        If ``factor`` is negative or not finite, or the name or config is malformed.

    Examples
    --------
    >>> from xpmlp.schedules import Scaled, StepDecay
    >>> sched = Scaled(Scaled(StepDecay(0.1, step_size=10), 0.5), 0.5)
    >>> sched.factor, round(sched(0), 4)
    (0.25, 0.025)
    """

    def __init__(self, schedule: Schedule | str, factor: float, config: str | None = None) -> None:
        if isinstance(schedule, str):
            schedule = _schedule_from(schedule, config)
        elif config is not None:
            raise ValueError("Scaled takes config only with a schedule's class name")
        if not isinstance(schedule, Schedule) or type(schedule).__name__ not in SCHEDULES:
            raise TypeError(f"Scaled takes a schedule of xpmlp.schedules, got {schedule!r} "
                            "(xpmlp.schedules.scaled wraps any callable)")
        factor = float(factor)
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"Scaled factor must be finite and non-negative, got {factor!r}")
        if isinstance(schedule, Scaled):
            factor = schedule.factor * factor
            schedule = schedule.schedule
        self.schedule: Schedule = schedule
        self.factor: float = factor

    def __call__(self, step: int) -> float:
        return self.factor * self.schedule(step)

    def get_config(self) -> dict:
        return {"schedule": type(self.schedule).__name__, "factor": self.factor,
                "config": json.dumps(self.schedule.get_config())}


def _schedule_from(name: str, config: str | None) -> Schedule:
    """A schedule from its class name and JSON config (as Scaled saves it); ValueError if malformed."""
    if name not in SCHEDULES or name == "Scaled":
        raise ValueError(f"Scaled: unknown schedule {name!r}; valid: {sorted(set(SCHEDULES) - {'Scaled'})}")
    try:
        kwargs = json.loads(config) if isinstance(config, str) else None
    except ValueError:
        kwargs = None
    if not isinstance(kwargs, dict):
        raise ValueError(f"Scaled: the config of {name} must be a JSON object string, got {config!r}")
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as e:  # unknown or missing keys, values of the wrong kind
        raise ValueError(f"Scaled: bad config for {name}: {e}") from None


class _ScaledFunction:
    """``factor * fn(step)`` for a callable that is not a saveable schedule.

    Not a Schedule: a model file stores its current value, as for the function itself.
    """

    def __init__(self, fn: Callable[[int], float], factor: float) -> None:
        if isinstance(fn, _ScaledFunction):
            factor = fn.factor * factor
            fn = fn.fn
        self.fn: Callable[[int], float] = fn
        self.factor: float = float(factor)

    def __call__(self, step):
        return self.factor * self.fn(step)

    def __repr__(self):
        return f"{self.factor!r} * {self.fn!r}"


def scaled(lr: float | Callable[[int], float], factor: float) -> float | Callable[[int], float]:
    """A learning rate ``factor`` times ``lr``: a float, a :class:`Scaled` schedule, or a scaled function.

    Parameters
    ----------
    lr : float or callable
        A learning rate, a schedule of this module, or any callable ``fn(step) -> float``.
    factor : float
        The factor.

    Returns
    -------
    float or callable
        A float for a float; a :class:`Scaled` for a schedule of this module (saveable); else a
        callable ``factor * lr(step)``.

    Examples
    --------
    >>> from xpmlp.schedules import StepDecay, scaled
    >>> scaled(0.1, 0.5)
    0.05
    >>> scaled(StepDecay(0.1, step_size=10), 0.5)
    Scaled(schedule='StepDecay', factor=0.5, config='{"lr": 0.1, "step_size": 10, "gamma": 0.1}')
    """
    if not callable(lr):
        return float(lr) * float(factor)
    if isinstance(lr, Schedule) and type(lr).__name__ in SCHEDULES:
        return Scaled(lr, factor)
    return _ScaledFunction(lr, factor)


#: The schedule classes by class name (``"StepDecay"``, ``"CosineDecay"``, ...), as model files
#: name them.
SCHEDULES = {cls.__name__: cls for cls in (StepDecay, ExponentialDecay, CosineDecay, OneCycle, Scaled)}

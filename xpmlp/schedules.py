"""Learning-rate schedules: callables of the optimiser's step count (0 for the first update).

Give one as an optimiser's ``lr`` (``Adam(lr=CosineDecay(1e-3, total_steps=5000))``); any
callable ``fn(step) -> float`` works too. Values are Python floats on the host: a schedule never
touches the device.
"""

from __future__ import annotations

import math

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "CosineDecay", "OneCycle", "SCHEDULES"]


class Schedule:
    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return dict(vars(self))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _positive(value, name):
    if not float(value) > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


class StepDecay(Schedule):
    """lr * gamma ** (step // step_size): drop by ``gamma`` every ``step_size`` steps."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr, self.step_size, self.gamma = float(lr), int(_positive(step_size, "step_size")), float(gamma)

    def __call__(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


class ExponentialDecay(Schedule):
    """lr * decay_rate ** (step / decay_steps)."""

    def __init__(self, lr: float, decay_rate: float, decay_steps: int = 1):
        self.lr, self.decay_rate = float(lr), float(decay_rate)
        self.decay_steps = int(_positive(decay_steps, "decay_steps"))

    def __call__(self, step):
        return self.lr * self.decay_rate ** (step / self.decay_steps)


class CosineDecay(Schedule):
    """Linear warm-up from 0 over ``warmup_steps``, then a cosine from ``lr`` down to ``final_lr``."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
        self.lr, self.total_steps, self.warmup_steps, self.final_lr = float(lr), int(total_steps), int(warmup_steps), float(final_lr)

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * progress))


class OneCycle(Schedule):
    """The one-cycle policy (Smith): cosine up from max_lr/div_factor to max_lr over ``pct_start``
    of the steps, then cosine down to max_lr/(div_factor*final_div_factor), as torch's OneCycleLR."""

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        self.max_lr, self.total_steps = float(max_lr), int(_positive(total_steps, "total_steps"))
        self.pct_start, self.div_factor, self.final_div_factor = float(pct_start), float(div_factor), float(final_div_factor)

    def __call__(self, step):
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


SCHEDULES = {cls.__name__: cls for cls in (StepDecay, ExponentialDecay, CosineDecay, OneCycle)}

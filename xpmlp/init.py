"""Weight initialisers: drawn on the host with a seeded NumPy generator, then cast.

Drawing on the host (not with a device RNG) is what makes one seed give bit-identical starting
weights on NumPy, CuPy, torch and array-api-strict.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["INITIALIZERS", "initialize", "default_init_for"]


def _uniform(limit):
    return lambda rng, shape: rng.uniform(-limit, limit, size=shape)


def _normal(std):
    return lambda rng, shape: rng.normal(0.0, std, size=shape)


#: The weight initialisers by name: ``name -> (fan_in, fan_out) -> sampler(rng, shape)``
#: (aliases such as ``"kaiming_normal"`` are accepted too).
INITIALIZERS = {
    "glorot_uniform": lambda i, o: _uniform(math.sqrt(6.0 / (i + o))),
    "glorot_normal": lambda i, o: _normal(math.sqrt(2.0 / (i + o))),
    "he_uniform": lambda i, o: _uniform(math.sqrt(6.0 / i)),
    "he_normal": lambda i, o: _normal(math.sqrt(2.0 / i)),
    "lecun_uniform": lambda i, o: _uniform(math.sqrt(3.0 / i)),
    "lecun_normal": lambda i, o: _normal(math.sqrt(1.0 / i)),
}
_ALIASES = {
    "xavier_uniform": "glorot_uniform",
    "xavier_normal": "glorot_normal",
    "kaiming_uniform": "he_uniform",
    "kaiming_normal": "he_normal",
}

# ReLU-like units zero half their input, so they need He's doubled variance; saturating and
# linear units keep Glorot's.
_HE_ACTIVATIONS = {"relu", "leaky_relu", "elu", "gelu", "softplus"}


def default_init_for(activation: str | None) -> str:
    """The initialiser a layer followed by ``activation`` gets by default.

    Parameters
    ----------
    activation : str or None
        An activation's registry name (``"relu"``), or None.

    Returns
    -------
    str
        ``"he_uniform"`` for ReLU-like activations, ``"glorot_uniform"`` otherwise.

    Examples
    --------
    >>> from xpmlp.init import default_init_for
    >>> default_init_for("relu"), default_init_for("tanh")
    ('he_uniform', 'glorot_uniform')
    """
    return "he_uniform" if activation in _HE_ACTIVATIONS else "glorot_uniform"


def check_name(name: str) -> str:
    """The initialiser's canonical name; a clear ValueError for an unknown one."""
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in INITIALIZERS:
        valid = sorted(INITIALIZERS) + sorted(_ALIASES)
        raise ValueError(f"unknown initializer {name!r}; valid names: {', '.join(valid)}")
    return key


def initialize(name: str, fan_in: int, fan_out: int, rng: np.random.Generator, dtype: str) -> np.ndarray:
    """Draw a (fan_in, fan_out) weight matrix on the host.

    Parameters
    ----------
    name : one of INITIALIZERS (or an alias such as "kaiming_normal").
    fan_in, fan_out : layer input and output sizes.
    rng : seeded host generator.
    dtype : "float32" or "float64"; the draw is made in float64 then cast, so float32 and
        float64 models from one seed start from the same (rounded) weights.

    Returns
    -------
    np.ndarray of shape (fan_in, fan_out)
    """
    sampler = INITIALIZERS[check_name(name)](fan_in, fan_out)
    return sampler(rng, (fan_in, fan_out)).astype(dtype)

"""Parameters: named views of one flat buffer of values and one of gradients.

A layer makes a :class:`Parameter` for each weight tensor when it is built; on its own, a
parameter holds its own array. A model then gathers every parameter of every layer into a
:class:`FlatParameters`: one contiguous 1-D buffer ``data`` for all the values and one,
``grad``, for all the gradients, of one dtype, on the model's device. Each parameter's
``value`` and ``grad`` become reshaped slices of them, made once; the buffers are never
replaced, only written in place, so the views stay valid for the model's life. So an
optimiser updates every parameter in one pass over ``data`` (one kernel launch on CuPy), and a
snapshot, a restore or a copy to the host is one copy of one buffer.

In place means ``buffer[...] = new`` on the Array API reference path (a basic-index
assignment, which NumPy, CuPy, torch and array-api-strict all apply to the buffer and so to its
views) and ``out=`` or fused kernels on the fast paths.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import to_numpy

__all__ = ["Parameter", "FlatParameters"]


class Parameter:
    """One weight tensor of a layer.

    Parameters
    ----------
    name : str
        The parameter's name in its layer ("W", "b").
    value : array
        Its initial value (any shape), held until a model gathers it.
    decay : bool, default True
        Whether weight decay that spares biases applies to it (see ``decay`` below).

    Attributes
    ----------
    name : str
        "W", "b" in a layer; "layers.{i}.W" once the model has gathered it.
    shape : tuple of int
    value : array of ``shape``
        The current value: a view of the model's flat buffer once gathered.
    grad : array of ``shape`` or None
        The gradient of the last backward pass: a view of the model's flat gradient buffer
        once gathered (written in place by ``set_grad``); None before any backward otherwise.
    decay : bool
        Whether an optimiser built with ``decay_bias=False`` applies weight decay to it: True
        for weight matrices, False for biases (scikit-learn's ``alpha`` penalises only weights).
    """

    __slots__ = ("name", "shape", "value", "grad", "decay", "_in_buffer")

    def __init__(self, name: str, value: Any, decay: bool = True) -> None:
        self.name = name
        self.decay = bool(decay)
        self.shape = tuple(int(d) for d in value.shape)
        self.value = value
        self.grad: Any = None
        self._in_buffer = False

    @property
    def size(self) -> int:
        """The number of elements, the product of ``shape``."""
        return math.prod(self.shape)

    def bind(self, value: Any, grad: Any) -> None:
        """Make ``value`` and ``grad`` views of a model's flat buffers (see :class:`FlatParameters`).

        Parameters
        ----------
        value : array of ``shape``
            The view of the flat value buffer.
        grad : array of ``shape``
            The view of the flat gradient buffer.
        """
        self.value, self.grad, self._in_buffer = value, grad, True

    def set_grad(self, g: Any) -> None:
        """Store the gradient: into the flat gradient buffer when gathered, else as its own array.

        Parameters
        ----------
        g : array of ``shape``
            The gradient.
        """
        if self._in_buffer:
            self.grad[...] = g
        else:
            self.grad = g

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape})"


class FlatParameters:
    """The values and gradients of a list of parameters, in two flat buffers.

    Parameters
    ----------
    backend : Backend
        Where the buffers live (:class:`xpmlp.backend.Backend`).
    dtype : str
        "float32" or "float64": every parameter is stored in it.
    parameters : list of Parameter
        Their current values are copied in; then each parameter's ``value`` and ``grad`` are
        rebound to views of ``data`` and ``grad``. In the buffers, the parameters with ``decay``
        come first, in the given order, then the others: so weight decay that spares biases
        touches one leading range, ``data[:n_decay]``.

    Attributes
    ----------
    offsets : list of int
        Where each parameter (in the given order) starts in the buffers.
    n_decay : int
        Elements of the leading range that holds the parameters with ``decay``.
    """

    def __init__(self, backend: Any, dtype: str, parameters: list[Parameter]) -> None:
        self.backend, self.xp, self.dtype, self.parameters = backend, backend.xp, dtype, list(parameters)
        self.offsets, total = [0] * len(self.parameters), 0
        for decayed in (True, False):
            for i, p in enumerate(self.parameters):
                if p.decay is decayed:
                    self.offsets[i] = total
                    total += p.size
            if decayed:
                self.n_decay = total
        self.size = total
        host = np.zeros(total, dtype=dtype)
        for p, start in zip(self.parameters, self.offsets):
            host[start:start + p.size] = to_numpy(p.value).reshape(-1)
        self.data = backend.from_host(host)
        self.grad = backend.from_host(np.zeros(total, dtype=dtype))
        for p, start in zip(self.parameters, self.offsets):
            p.bind(self._view(self.data, start, p), self._view(self.grad, start, p))

    def _view(self, buffer: Any, start: int, p: Parameter) -> Any:
        return self.xp.reshape(buffer[start:start + p.size], p.shape)

    def snapshot(self) -> Any:
        """A copy of every value (one device copy).

        Returns
        -------
        array of shape (size,)
            A new array on the buffers' device.
        """
        return self.xp.asarray(self.data, copy=True)

    def restore(self, saved: Any) -> None:
        """Write back values from :meth:`snapshot` (one in-place copy: views stay valid).

        Parameters
        ----------
        saved : array of shape (size,)
            What :meth:`snapshot` returned.
        """
        self.data[...] = saved

    def to_host(self) -> np.ndarray:
        """Every value as one NumPy array (one device-to-host copy).

        Returns
        -------
        numpy.ndarray of shape (size,)
            A copy of ``data``.
        """
        return to_numpy(self.data).copy()

    def load_host(self, values: np.ndarray) -> None:
        """Set every value from one NumPy array of ``size`` elements (one host-to-device copy).

        Parameters
        ----------
        values : numpy.ndarray
            ``size`` values in this buffer's layout (any shape; cast to the dtype).

        Raises
        ------
        ValueError
            If ``values`` has another number of elements.
        """
        values = np.asarray(values, dtype=self.dtype).reshape(-1)
        if values.size != self.size:
            raise ValueError(f"expected {self.size} values, got {values.size}")
        self.data[...] = self.backend.from_host(values)

    def from_parameter_order(self, values: np.ndarray) -> np.ndarray:
        """A host array of values laid out parameter after parameter, in this buffer's layout.

        Parameters
        ----------
        values : numpy.ndarray
            ``size`` values, parameter after parameter in the given order (as model files store
            optimiser state).

        Returns
        -------
        numpy.ndarray of shape (size,)
            The values rearranged into this buffer's layout (decayed parameters first).

        Raises
        ------
        ValueError
            If ``values`` has another number of elements.
        """
        values, out, start = np.asarray(values).reshape(-1), np.empty(self.size, dtype=np.asarray(values).dtype), 0
        if values.size != self.size:
            raise ValueError(f"expected {self.size} values, got {values.size}")
        for p, offset in zip(self.parameters, self.offsets):
            out[offset:offset + p.size] = values[start:start + p.size]
            start += p.size
        return out

    def __repr__(self):
        return f"FlatParameters({len(self.parameters)} parameters, {self.size:,} values, {self.dtype})"

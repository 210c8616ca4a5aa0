"""Counter-based random bits made on the device: (key, counter, element index) -> 32 bits.

The Array API has no random numbers, and drawing dropout masks on the host costs a
host-to-device copy per step. This module computes them where they are used, with integer
operations every Array API library has, so one seed gives bit-identical masks on NumPy,
array-api-strict, torch and CuPy. It receives ``xp`` and imports no array library.

The function
------------
Word ``i`` of the draw for ``(key, counter)`` is::

    s        = splitmix64(key, counter)          # host, Python ints
    k0, k1   = s mod 2**32, s // 2**32           # two 32-bit round keys
    bits[i]  = fmix32(fmix32(i ^ k0) ^ k1)       # device, elementwise

- ``splitmix64(key, counter)`` is output number ``counter + 1`` of Steele, Lea and Flood's
  SplitMix64 generator seeded with ``key``: ``mix64((key + (counter + 1) * 0x9E3779B97F4A7C15)
  mod 2**64)``. It runs once per call on Python ints, so it costs the device nothing, and a
  64-bit key and an unbounded counter cross to the device as two 32-bit Python ints.
- ``fmix32`` is the 32-bit finaliser of Austin Appleby's MurmurHash3 (xor-shift 16, multiply
  by 0x85EBCA6B, xor-shift 13, multiply by 0xC2B2AE35, xor-shift 16): a bijection of 32-bit
  words with full avalanche, made of cheap elementwise operations.
- Two keyed rounds, not one: with a single round ``fmix32(i ^ k)``, another step's draw is the
  same function at index ``i ^ (k ^ k')``, a permutation of this step's words, and over many
  steps some pairs would overlap on the elements in use. Keying a second round behind the
  first avalanche breaks that relation.

Integer representation
----------------------
Words are computed in uint32, where unsigned multiplication wraps modulo 2**32 by definition,
whenever the namespace declares uint32 (``__array_namespace_info__().dtypes()``): NumPy,
array-api-strict and CuPy. torch does not: on torch 2.13's CPU, uint32 has multiply, xor and
and, but no addition, shifts, comparisons or ``arange`` ("rshift_cpu" not implemented for
'UInt32'), and array-api-compat's torch namespace lists uint8 as its only unsigned dtype.
There, words are int64 values in ``[0, 2**32)``, and signed overflow is never relied on:

- right shifts only see non-negative values, where arithmetic and logical shifts agree;
- a multiplication by a 32-bit constant ``C`` modulo 2**32 multiplies by ``C - 2**32`` (in
  ``(-2**31, 0)``, congruent to ``C``) when ``C >= 2**31``: then ``|x * c| < 2**32 * 2**31 =
  2**63`` for every ``x < 2**32``, so the product is exact, and ``& 0xFFFFFFFF`` (two's
  complement, as in every library and in Python) takes it modulo 2**32. Two operations per
  multiplication, where splitting the constant into 16-bit halves costs six.

Both representations compute the same words (the tests compare each with a plain-Python
reference on every backend). int64 works everywhere but costs NumPy about twice the time of
uint32 (twice the bytes, and the masking), which is why it is only the fallback.
"""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["random_bits", "dropout_mask", "keep_threshold", "round_keys", "fmix32", "word_dtype"]

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment
_FMIX_C1 = 0x85EBCA6B  # MurmurHash3 fmix32 multipliers
_FMIX_C2 = 0xC2B2AE35
MAX_ELEMENTS = 2**32  # element indices must fit in 32 bits


def _signed_factor(c: int) -> int:
    """A multiplier congruent to ``c`` modulo 2**32 with absolute value below 2**31."""
    return c - 2**32 if c >= 2**31 else c


def round_keys(key: int, counter: int) -> tuple[int, int]:
    """The two 32-bit round keys for ``(key, counter)``: SplitMix64, on the host, in Python ints.

    Parameters
    ----------
    key : int
        Any integer; taken modulo 2**64.
    counter : int
        Step number, >= 0.

    Returns
    -------
    (k0, k1) : Python ints in [0, 2**32), the low and high halves of the 64-bit output.
    """
    key, counter = operator.index(key), operator.index(counter)
    if counter < 0:
        raise ValueError(f"counter must be >= 0, got {counter}")
    z = (key + (counter + 1) * _GOLDEN_GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z & _MASK32, z >> 32


def word_dtype(xp: Any, device: Any = None) -> Any:
    """The dtype words are computed in on ``xp``: uint32 where the namespace declares it, else int64.

    Called once per layer build, not per step (torch's answer allocates a few empty arrays).

    Parameters
    ----------
    xp : module
        An Array API namespace.
    device : optional
        The device asked about (``__array_namespace_info__().dtypes(device=...)``).

    Returns
    -------
    dtype
        ``xp.uint32`` or ``xp.int64``.
    """
    try:
        declared = xp.__array_namespace_info__().dtypes(kind="unsigned integer", device=device)
    except Exception:  # no inspection API, or it cannot answer: int64 is correct everywhere
        return xp.int64
    return xp.uint32 if "uint32" in declared else xp.int64


def _is_uint32(xp, dtype) -> bool:
    """True for uint32 words, False for int64 words; other dtypes are refused."""
    if dtype == xp.int64:
        return False
    if hasattr(xp, "uint32") and dtype == xp.uint32:
        return True
    raise TypeError(f"random words are computed in uint32 or int64, not {dtype}")


def _fmix32_inplace(x, narrow: bool):
    """fmix32 of an array of our own, updated in place where the library mutates.

    In place, NumPy allocates one temporary per shift instead of one per operation; under the
    standard's semantics an augmented assignment may also just rebind, which is as correct.
    """
    x ^= x >> 16
    if narrow:  # uint32: wraps modulo 2**32 by definition
        x *= _FMIX_C1
        x ^= x >> 13
        x *= _FMIX_C2
    else:  # int64 in [0, 2**32): exact products below 2**63, then reduced (see module docstring)
        x *= _signed_factor(_FMIX_C1)
        x &= _MASK32
        x ^= x >> 13
        x *= _signed_factor(_FMIX_C2)
        x &= _MASK32
    x ^= x >> 16
    return x


def fmix32(xp: Any, x: Any) -> Any:
    """MurmurHash3's 32-bit finaliser, elementwise.

    Parameters
    ----------
    xp : Array API namespace of ``x``.
    x : uint32 array, or int64 array of values in [0, 2**32); not modified.

    Returns
    -------
    array of the same shape and dtype.
    """
    return _fmix32_inplace(x ^ 0, _is_uint32(xp, x.dtype))


def random_bits(xp: Any, shape: Any, key: int, counter: int, device: Any = None, *, dtype: Any = None,
                offset: int = 0) -> Any:
    """32 random bits per element, the same on every backend for the same (key, counter).

    Parameters
    ----------
    xp : Array API namespace.
    shape : tuple of int
        Shape of the result; element ``i`` in C order holds word ``i`` of the draw.
    key : int
        Stream key (a Python int, e.g. drawn once from a seeded host generator).
    counter : int
        Step number (a Python int >= 0); each value gives an independent draw.
    device : optional
        Where to make the array (``xp.arange(..., device=)``); nothing is copied from the host.
    dtype : ``xp.uint32`` or ``xp.int64``, optional
        Representation of the words; :func:`word_dtype` by default. The values are the same.
    offset : int, default 0
        Element ``i`` holds word ``offset + i``: a draw of ``shape`` at ``offset`` is that part of a
        larger draw (a rank's rows of the whole batch's mask).

    Returns
    -------
    array of ``shape`` and ``dtype``, values in [0, 2**32).
    """
    shape = tuple(operator.index(d) for d in shape)
    n = 1
    for d in shape:
        if d < 0:
            raise ValueError(f"negative dimension in shape {shape}")
        n *= d
    offset = operator.index(offset)
    if offset < 0 or offset + n > MAX_ELEMENTS:
        raise ValueError(f"random_bits draws at most 2**32 elements (words 0 .. 2**32 - 1), got shape {shape} "
                         f"at offset {offset}")
    k0, k1 = round_keys(key, counter)
    if dtype is None:
        dtype = word_dtype(xp, device)
    narrow = _is_uint32(xp, dtype)
    x = xp.arange(offset, offset + n, dtype=dtype, device=device)
    x ^= k0
    x = _fmix32_inplace(x, narrow)
    x ^= k1
    x = _fmix32_inplace(x, narrow)
    return xp.reshape(x, shape)


def keep_threshold(rate: float) -> int:
    """The integer t with keep iff bits >= t: ``round(rate * 2**32)``, for rate in [0, 1).

    Parameters
    ----------
    rate : float in [0, 1)
        The dropout rate.

    Returns
    -------
    int
        The threshold, in [0, 2**32].

    Raises
    ------
    ValueError
        If ``rate`` is not in [0, 1).

    Examples
    --------
    >>> from xpmlp.rng import keep_threshold
    >>> keep_threshold(0.5)
    2147483648
    """
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    return round(rate * 2**32)


def dropout_mask(xp: Any, shape: Any, rate: float, key: int, counter: int, dtype: Any, device: Any = None, *,
                 bits_dtype: Any = None, offset: int = 0) -> Any:
    """An inverted-dropout mask: 0 where dropped, ``1 / (1 - rate)`` where kept.

    Element ``i`` is kept iff ``random_bits(...)[i] >= round(rate * 2**32)``, so each element
    is kept with probability ``1 - rate`` (to within 2**-33).

    Parameters
    ----------
    xp : Array API namespace.
    shape : tuple of int
    rate : float in [0, 1)
        Fraction dropped.
    key, counter : int
        As for :func:`random_bits`.
    dtype : a floating dtype of ``xp`` (or its name, "float32" / "float64").
    device : optional
    bits_dtype : optional
        ``dtype`` of :func:`random_bits` (callers in a loop pass :func:`word_dtype`'s answer).
    offset : int, default 0
        As for :func:`random_bits`: this mask is elements ``offset ..`` of a larger one.

    Returns
    -------
    array of ``shape`` and ``dtype`` holding 0 and ``1 / (1 - rate)``.
    """
    threshold = keep_threshold(rate)
    if isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    if threshold > _MASK32:  # rate within 2**-33 of 1: no word reaches it (nor fits a uint32)
        return xp.zeros(tuple(shape), dtype=dtype, device=device)
    mask = xp.astype(random_bits(xp, shape, key, counter, device, dtype=bits_dtype, offset=offset) >= threshold,
                     dtype)
    mask *= 1.0 / (1.0 - float(rate))  # a Python float keeps the mask's dtype
    return mask

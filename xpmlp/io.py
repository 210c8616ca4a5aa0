"""Model files: state dicts to safetensors (the arrays) and JSON metadata (the rest), and back; never pickle.

This module only turns state dicts into the file format and back; it never imports the model,
and reads no object's private fields. ``Sequential.to_bytes`` / ``save`` give it
``get_config()``, ``state_dict()``, ``get_rng_state()``, the loss and the optimiser
(:func:`encode_model`); ``Sequential.load`` builds a model from what :func:`read_model` returns,
a checked :class:`SavedModel` of NumPy state dicts (``xpmlp.load`` is ``Sequential.load``).

A model file (format 3) holds every parameter (``layers.{i}.{key}``), layer state such as
Standardize's mean and std (``layers.{i}.state.{key}``), the optimiser's buffers, each stored
parameter by parameter (``optimizer.{j}.{key}``: the slice of the flat buffer that belongs to the
j-th parameter), and as metadata the format version, the architecture (layer classes and their
configs), the model's dtype, loss and optimiser configuration, the host RNG states and each
Dropout layer's key and counter (its extra state, under ``rng.dropout``), so that training
resumed from a file continues exactly as if it had not stopped. Arrays are stored as NumPy on
the host, so a file written from a GPU loads on a CPU-only machine and back.

What saving guarantees
----------------------
- Atomic: the bytes go to a temporary file beside the target, are flushed to disk, and the
  file is renamed over the target. A kill, an exception or a full disk at any moment leaves
  either the previous file or the new one, whole. A failed save removes its temporary file;
  one killed outright (SIGKILL, power loss) cannot, and the next save to the same target
  removes it (see ``_remove_stale_temporaries`` for which files count as stale).
- A path that exists but is not a regular file (a folder, FIFO, socket or device) is refused
  with :class:`ModelFileError` and left as it was.
- A symlink stays a link: the file it points to gets the new model, atomically (the temporary
  file is made beside the link's target, so the rename stays on the target's filesystem).
- Permissions: an existing file keeps its permission bits; a new file gets ``0o666`` less the
  umask, as any file a program creates. The umask is never read: the temporary file is created
  with mode ``0o666`` and the kernel applies the umask (``os.umask`` can only be read by setting
  it, which is process-wide and races with other threads).

What loading guarantees (a file is never trusted)
-------------------------------------------------
- No code runs: the file is JSON and raw numbers, never unpickled.
- Bounded: the header (an 8-byte little-endian length, then JSON) is checked against the
  file's real size, every tensor's dtype, shape and byte range against the header and the data
  that follows it, and the metadata against the shapes the declared architecture and optimiser
  need, all before any array is allocated. A 1 KB file declaring 4 GiB of weights is refused
  having allocated nothing of that size.
- Every malformed file raises :class:`ModelFileError` saying what is wrong.
- Checksum: files of format 3 carry in metadata ``sha256`` the SHA-256 of their tensor bytes,
  taken tensor by tensor in the order of the tensors' sorted names (so it does not depend on
  how safetensors lays them out); :func:`xpmlp.load` and :meth:`xpmlp.Sequential.load_weights` verify it, so a flipped
  byte is refused. Formats 1 and 2 have no checksum and still load. The checksum detects
  corruption, not tampering: whoever can edit a file can rewrite its checksum too.
- Weights, optimiser state and Standardize statistics must be finite, unless
  ``allow_nonfinite=True`` is given.
- :meth:`xpmlp.Sequential.load_weights` validates the whole file before it changes any layer: a failed load
  leaves the model as it was.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import secrets
import socket
import stat
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from .backend import FLOAT_DTYPES, to_numpy
from .layers import LAYERS, Dense, Dropout, Standardize
from .losses import LOSSES
from .optim import OPTIMIZERS
from .schedules import SCHEDULES, Schedule

__all__ = ["encode_model", "encode_weights", "write", "read_model", "decode_model", "read_weights", "SavedModel",
           "ModelFileError", "FORMAT_VERSION"]

#: The format version of the files written: 3, SHA-256 of the tensor bytes in metadata "sha256";
#: 2, dropout state is (key, counter) of the device generator; 1, a NumPy generator state per
#: Dropout layer. All three load.
FORMAT_VERSION = 3
_LOSSES = {cls.__name__: cls for cls in LOSSES.values()}
_OPTIMIZERS = {cls.__name__: cls for cls in OPTIMIZERS.values()}
# Bytes per element of every safetensors dtype, so that any safetensors file is checked; an
# xpmlp file holds only F32 and F64.
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MODEL_DTYPES = ("F32", "F64")


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupted, pickle-based or not an xpmlp file, or a save
    was asked to replace something that is not a regular file.

    Raised by :func:`xpmlp.load`, :meth:`xpmlp.Sequential.load_weights` and
    :meth:`xpmlp.Sequential.save` (and the functions of :mod:`xpmlp.io`), with a message that
    names the file and says what is wrong. A subclass of ``ValueError``.

    Examples
    --------
    >>> import xpmlp
    >>> try:
    ...     xpmlp.load("no-such-model.safetensors")
    ... except xpmlp.ModelFileError as e:
    ...     print(e)
    no-such-model.safetensors: no such file
    """


# -- saving ------------------------------------------------------------------------------------
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_STALE_AFTER_S = 24 * 3600


def _temporary_prefix(target: Path) -> str:
    # the name is cut so that the temporary name stays under the usual 255-byte limit
    return f".{target.name[:100]}.xpmlp-"


def _save_target(path: Path) -> tuple[Path, int | None]:
    """The regular file a save to ``path`` replaces (a symlink's target), and its permission bits
    (None for a new file). Anything that exists and is not a regular file is refused."""
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise FileNotFoundError(2, "no such folder to save the model in", str(target.parent)) from None
        return target, None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        shown = path if target == Path(path).absolute() else f"{path} (-> {target})"
        raise ModelFileError(f"{shown} exists and is {kind}; a model is saved only to a new path or over a "
                             "regular file, so nothing was changed")
    return target, stat.S_IMODE(mode)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Remove temporary files that earlier saves to ``target`` left when they were killed.

    Only names this module makes are considered, ``.{name}.xpmlp-{host}-{pid}-{random}.tmp``
    (host: a hash of the host name), never other files. Such a file is stale when its writer ran
    on this host and that process no longer exists, or when it is older than a day (a writer on
    another host sharing the folder, or a pid reused since). A live writer's file - another
    thread or process saving to the same path at this moment - is left alone, so concurrent
    saves never delete each other's temporary file: each rename puts a whole file in place and
    the last one wins. On Windows, where ``os.kill`` cannot ask whether a process exists, only
    the age counts.
    """
    pattern = re.compile(re.escape(_temporary_prefix(target)) + r"([0-9a-f]{8})-([0-9]+)-[0-9a-f]{8}\.tmp")
    try:
        names = os.listdir(target.parent)
    except PermissionError:
        return  # a folder we may write but not list (mode -wx): no temporary file can be found
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        file = target.parent / name
        try:
            info = file.lstat()
        except FileNotFoundError:
            continue  # its writer renamed it meanwhile
        if not stat.S_ISREG(info.st_mode):
            continue
        dead = os.name == "posix" and match[1] == _HOST and not _pid_alive(int(match[2]))
        if dead or time.time() - info.st_mtime > _STALE_AFTER_S:
            file.unlink(missing_ok=True)


def _atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the guarantees listed in the module docstring."""
    target, mode = _save_target(Path(path))
    _remove_stale_temporaries(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    tmp = None
    try:
        while tmp is None:
            name = f"{_temporary_prefix(target)}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
            try:
                # A new file: 0o666, less the umask, applied by the kernel. Replacing a file:
                # private while written, given the old file's bits before the rename.
                fd = os.open(target.parent / name, flags, 0o666 if mode is None else 0o600)
                tmp = target.parent / name
            except FileExistsError:
                continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.chmod(tmp, mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def _tensor_digest(chunks) -> str:
    """SHA-256 of the tensors' bytes, given in the order of their sorted names."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _encode(tensors: dict, metadata: dict) -> bytes:
    import safetensors.numpy

    # safetensors stores little-endian C-ordered bytes: hash exactly those
    tensors = {k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")) for k, v in tensors.items()}
    checksum = _tensor_digest(tensors[k] for k in sorted(tensors))
    return safetensors.numpy.save(tensors, metadata={**metadata, "sha256": checksum})


def _is_extra(name: str) -> bool:
    return name.endswith(".extra_state")


def _is_parameter(name: str) -> bool:
    return not _is_extra(name) and ".state." not in name


def _arrays(state: dict) -> dict:
    """The arrays of a model's state dict, on the host (extra states left out)."""
    return {name: to_numpy(value) for name, value in state.items() if not _is_extra(name)}


def encode_model(config: dict, state: dict, rng: dict, loss: Any = None, optimizer: Any = None,
                 offsets: list[int] | None = None) -> bytes:
    """The bytes of a model file (format :data:`FORMAT_VERSION`) from the model's state dicts.

    Parameters
    ----------
    config : dict
        ``Sequential.get_config()``: ``{"layers": [{"class", "config"}, ...], "dtype", "seed",
        "in_features"}``.
    state : dict
        ``Sequential.state_dict()``: ``layers.{i}.{key}`` parameters in parameter order (the
        order of the flat buffer), ``layers.{i}.state.{key}`` buffers, arrays of any library and
        device; ``layers.{i}.extra_state`` JSON-able dicts (Dropout's key and counter).
    rng : dict
        ``Sequential.get_rng_state()``: ``{"init": ..., "shuffle": ...}`` NumPy generator states.
    loss : Loss, optional
        Stored as its class name and ``get_config()``.
    optimizer : Optimizer, optional
        Stored as its class name, ``get_config()`` (a schedule as its own class and config) and
        ``state_dict()``; each flat buffer is stored parameter by parameter as
        ``optimizer.{j}.{key}`` (j: the parameter's position), as format 3 has it.
    offsets : list of int, optional
        Where each parameter (in ``state``'s order) starts in the optimiser's flat buffers
        (``FlatParameters.offsets``); by default one after the other.

    Returns
    -------
    bytes
        The file's bytes: a safetensors header and data.

    Raises
    ------
    ValueError
        If an optimiser buffer's size does not match the parameters (it belongs to another model).
    """
    tensors = _arrays(state)
    section = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        section = {"class": type(optimizer).__name__,
                   "config": {**optimizer.get_config(), "lr": _lr_config(optimizer)},
                   "t": sd["t"], "has_state": sd["state"] is not None}
        shapes = [tensors[name].shape for name in tensors if _is_parameter(name)]
        for key, buffer in (sd["state"] or {}).items():
            host, start = to_numpy(buffer), 0
            if host.size != sum(math.prod(shape) for shape in shapes):
                raise ValueError(f"the optimizer's buffer {key!r} has {host.size} values, the parameters "
                                 f"{sum(math.prod(shape) for shape in shapes)}: it belongs to another model")
            for j, shape in enumerate(shapes):
                size = math.prod(shape)
                start = start if offsets is None else offsets[j]
                tensors[f"optimizer.{j}.{key}"] = host[start:start + size].reshape(shape)
                start += size
    dropout = {name.split(".")[1]: value for name, value in state.items() if _is_extra(name)}
    metadata = {
        "format": "xpmlp",
        "format_version": str(FORMAT_VERSION),
        "architecture": json.dumps(config["layers"]),
        "model": json.dumps({key: config[key] for key in ("dtype", "seed", "in_features")}),
        "loss": json.dumps(None if loss is None else {"class": type(loss).__name__, "config": loss.get_config()}),
        "optimizer": json.dumps(section),
        # format 3 keeps the layers' extra states (only Dropout has one) beside the generators
        "rng": json.dumps({"init": rng["init"], "shuffle": rng["shuffle"], "dropout": dropout}),
    }
    return _encode(tensors, metadata)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_level() -> int:
    """The ``stacklevel`` of the first caller outside xpmlp, for a warning issued by the function
    that calls this (so the warning names the user's line, however deep in xpmlp it was raised)."""
    frame, level = cast(Any, inspect.currentframe()).f_back, 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _lr_config(opt):
    """A float, or a schedule as {"schedule": name, "config": {...}}; plain functions are not storable."""
    if isinstance(opt.lr, Schedule) and type(opt.lr).__name__ in SCHEDULES:
        return {"schedule": type(opt.lr).__name__, "config": opt.lr.get_config()}
    if callable(opt.lr):
        warnings.warn("the learning rate is a plain function, which cannot be saved; the file stores its "
                      f"current value {opt.current_lr():g} (use a schedule from xpmlp.schedules to keep it)",
                      UserWarning, stacklevel=_user_level())
        return opt.current_lr()
    return opt.lr


def encode_weights(state: dict) -> bytes:
    """The bytes of a weights file: the arrays of a model's state dict (extra states left out).

    Parameters
    ----------
    state : dict
        ``Sequential.state_dict()``: name to array, of any library and device.

    Returns
    -------
    bytes
        The file's bytes: a safetensors header and data.
    """
    return _encode(_arrays(state), {"format": "xpmlp-weights", "format_version": str(FORMAT_VERSION)})


def write(path: str | os.PathLike, data: bytes) -> None:
    """Write a model file's bytes to ``path`` atomically (see the module docstring).

    Parameters
    ----------
    path : str or path-like
        The target file; a symlink's target gets the bytes.
    data : bytes
        What :func:`encode_model` or :func:`encode_weights` returned.

    Raises
    ------
    ModelFileError
        If ``path`` exists but is not a regular file.
    OSError
        If the file cannot be written (the target is left as it was).
    """
    _atomic_write(path, data)


# -- reading: the container -------------------------------------------------------------------
class _Tensor(NamedTuple):
    dtype: str
    shape: tuple
    begin: int  # byte offsets in the data section, which starts after the header
    end: int


class _File(NamedTuple):
    where: str  # the path, or "model bytes", for messages
    metadata: dict
    tensors: dict  # name -> _Tensor, every field checked
    data: bytes  # the whole file
    version: int


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _corrupt(where, what) -> ModelFileError:
    return ModelFileError(f"{where}: not a valid safetensors file, or truncated or corrupted ({what})")


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond the range of a float")
    return value


def _loads(text):
    """json.loads refusing NaN and Infinity (not JSON), numbers that overflow to infinity
    (1e999), and duplicate keys (ambiguous)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique_keys)


def _header_length(head: bytes, size: int, where) -> int:
    """The header length from a file's first 8 bytes, checked against the file's size."""
    if size < 8:
        raise _corrupt(where, "empty file" if size == 0 else f"only {size} bytes, fewer than the 8-byte header length")
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= size - 8:
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise ModelFileError(f"{where}: a pickle or zip archive (torch.save, joblib, pickle), not an xpmlp "
                                 "model; xpmlp never unpickles files, as that can run arbitrary code")
        raise _corrupt(where, f"the header length {n} does not fit the {size - 8} bytes after it")
    return n


def _check_entry(name: str, entry, data_size: int, where) -> _Tensor:
    """One tensor's header entry, checked to be well formed and to lie within the data."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _corrupt(where, f"tensor {name!r} needs exactly dtype, shape and data_offsets, got {_show(entry)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise _corrupt(where, f"tensor {name!r} has unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _corrupt(where, f"tensor {name!r} has shape {_show(shape)}, not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise _corrupt(where, f"tensor {name!r} has data_offsets {_show(offsets)} outside the {data_size} "
                              "bytes of data")
    nbytes = math.prod(shape) * _DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise _corrupt(where, f"tensor {name!r} of shape {shape} and dtype {dtype} needs {nbytes} bytes, "
                              f"its data_offsets span {offsets[1] - offsets[0]}")
    return _Tensor(dtype, tuple(shape), offsets[0], offsets[1])


def _parse(data: bytes, where) -> tuple[dict, dict, int]:
    """(metadata, {name: _Tensor}, start of the data section) of safetensors bytes.

    The format: an unsigned 64-bit little-endian N, N bytes of a JSON object mapping each tensor
    name to its dtype, shape and [begin, end) byte offsets in the data after the header (plus an
    optional ``__metadata__`` object of strings), then the data, covered by the tensors exactly.
    """
    n = _header_length(data[:8], len(data), where)
    try:
        header = _loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise _corrupt(where, f"the header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise _corrupt(where, f"the header is {type(header).__name__}, not a JSON object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(where, "its __metadata__ is not an object of strings")
    data_size = len(data) - 8 - n
    tensors = {name: _check_entry(name, entry, data_size, where) for name, entry in header.items()}
    position = 0
    for name, tensor in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if tensor.begin != position:
            raise _corrupt(where, f"tensor {name!r} starts at byte {tensor.begin} of the data, expected "
                                  f"{position}: tensors overlap or leave gaps")
        position = tensor.end
    if position != data_size:
        raise _corrupt(where, f"the tensors cover {position} of the {data_size} bytes after the header")
    return metadata, tensors, 8 + n


def _check_file(data: bytes, where, formats: tuple) -> _File:
    """The checked contents of a file's bytes: container, format, version and checksum."""
    metadata, tensors, start = _parse(data, where)
    if metadata.get("format") not in formats:
        raise ModelFileError(f"{where}: a safetensors file, but not an xpmlp file "
                             f"(format {metadata.get('format')!r}, expected {' or '.join(formats)})")
    version = metadata.get("format_version", "")
    if not (version.isascii() and version.isdigit()) or not 1 <= int(version) <= FORMAT_VERSION:
        raise ModelFileError(f"{where}: format version {version!r} is not one this xpmlp reads (1 to {FORMAT_VERSION})")
    expected = metadata.get("sha256")
    if expected is None and int(version) >= 3:
        raise ModelFileError(f"{where}: format version {version} requires a 'sha256' checksum, and the "
                             "metadata has none")
    if expected is not None:
        view = memoryview(data)[start:]
        actual = _tensor_digest(view[tensors[k].begin:tensors[k].end] for k in sorted(tensors))
        if actual != expected:
            raise ModelFileError(f"{where}: the tensor bytes do not match the file's SHA-256 checksum; the "
                                 "file is corrupted")
    return _File(str(where), metadata, tensors, data, int(version))


def _read(path, formats: tuple) -> _File:
    """The checked contents of the file at ``path``, or ModelFileError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        # a header length beyond the file is refused before reading the whole file
        _header_length(f.read(8), os.fstat(f.fileno()).st_size, path)
        f.seek(0)
        data = f.read()
    return _check_file(data, path, formats)


def _decode(file: _File, names, allow_nonfinite: bool) -> dict:
    """The named arrays (shapes and dtypes already checked), refused if not finite unless allowed."""
    import safetensors
    import safetensors.numpy

    for name, tensor in file.tensors.items():
        if tensor.dtype not in _MODEL_DTYPES:
            raise ModelFileError(f"{file.where}: {name} has dtype {tensor.dtype}; xpmlp arrays are "
                                 f"{' or '.join(_MODEL_DTYPES)}")
    try:
        arrays = safetensors.numpy.load(file.data)
    except safetensors.SafetensorError as e:  # a limit of the reader's own, such as the header's size
        raise _corrupt(file.where, str(e)) from None
    for name in names:
        if not allow_nonfinite and not np.isfinite(arrays[name]).all():
            raise ModelFileError(f"{file.where}: {name} holds NaN or infinite values (pass allow_nonfinite=True "
                                 "to load it anyway)")
        if name.endswith(".state.std") and (arrays[name] <= 0).any():
            raise ModelFileError(f"{file.where}: {name} holds standard deviations that are not positive")
    return {name: arrays[name] for name in names}


def _match(file: _File, expected: dict, against: str, who: str, ignore: tuple = ()) -> None:
    """Check that the file holds exactly the ``expected`` {name: shape}, names under ``ignore`` aside."""
    missing = [k for k in expected if k not in file.tensors]
    extra = sorted(k for k in file.tensors if k not in expected and not k.startswith(ignore))
    if missing or extra:
        raise ModelFileError(f"{file.where}: arrays do not match {against} (missing {missing}, unexpected {extra})")
    for name, shape in expected.items():
        if file.tensors[name].shape != tuple(shape):
            raise ModelFileError(f"{file.where}: {name} has shape {file.tensors[name].shape}, {who} expects "
                                 f"{tuple(shape)}")


# -- reading: the metadata --------------------------------------------------------------------
def _json(metadata, key, where):
    if key not in metadata:
        raise ModelFileError(f"{where}: metadata {key!r} is missing")
    try:
        return _loads(metadata[key])
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{where}: metadata {key!r} is corrupted, not JSON ({e})") from None


_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _fits(value, annotation) -> bool:
    """Whether a JSON value suits a constructor parameter annotated ``annotation`` (a string,
    as the modules use ``from __future__ import annotations``); unannotated takes any scalar."""
    if annotation is inspect.Parameter.empty:
        return value is None or isinstance(value, (int, float, bool, str))
    names = [name.strip() for name in str(annotation).split("|")]
    if value is None:
        return "None" in names
    for name in names:
        if name in _KINDS and isinstance(value, _KINDS[name]) and (name == "bool") == isinstance(value, bool):
            return name != "float" or abs(cast(float, value)) < 2.0**1023  # float() of a larger int overflows
    return False


def _construct(cls, config: dict, what: str, where, **given):
    """``cls(**config, **given)``, with each config value first checked against the constructor's
    signature; a ValueError from the constructor (a value out of range) names the entry."""
    params = {name: p for name, p in inspect.signature(cls).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in config.items():
        if key not in params or key in given:
            raise ModelFileError(f"{where}: {what}: {cls.__name__} has no parameter {key!r}")
        if not _fits(value, params[key].annotation):
            raise ModelFileError(f"{where}: {what}: {cls.__name__}({key}={_show(value)}) is not of type "
                                 f"{params[key].annotation}")
    missing = [name for name, p in params.items() if p.default is p.empty and name not in config and name not in given]
    if missing:
        raise ModelFileError(f"{where}: {what}: {cls.__name__} needs {missing}, missing from its config")
    try:
        return cls(**config, **given)
    except ValueError as e:
        raise ModelFileError(f"{where}: {what}: {e}") from None


def _check_class(entry, registry: dict, kind: str, what: str, where, key: str = "class"):
    """The class that ``entry`` ({key: name, "config": {...}}) names in ``registry``."""
    if not isinstance(entry, dict) or not isinstance(entry.get(key), str) or not isinstance(entry.get("config"), dict):
        raise ModelFileError(f"{where}: {what} must be an object with a {key!r} name and a 'config' object, "
                             f"got {_show(entry)}")
    if entry[key] not in registry:
        raise ModelFileError(f"{where}: {what} names an unknown {kind} {entry[key]!r} (known: {', '.join(registry)})")
    return registry[entry[key]]


def _check_model(metadata, where) -> dict:
    config = _json(metadata, "model", where)
    if not isinstance(config, dict):
        raise ModelFileError(f"{where}: metadata 'model' must be an object, got {_show(config)}")
    dtype, seed, width = config.get("dtype"), config.get("seed"), cast(Any, config.get("in_features"))
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise ModelFileError(f"{where}: metadata 'model' has dtype {_show(dtype)}, expected one of {FLOAT_DTYPES}")
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise ModelFileError(f"{where}: metadata 'model' has seed {_show(seed)}, not a non-negative integer or null")
    if not (_is_int(width) and width >= 1):
        raise ModelFileError(f"{where}: metadata 'model' has in_features {_show(width)}, not a positive integer")
    return {"dtype": dtype, "seed": seed, "in_features": width}


def _check_architecture(metadata, where) -> list:
    """The layers the metadata declares, constructed (not built: nothing allocated)."""
    spec = _json(metadata, "architecture", where)
    if not isinstance(spec, list) or not spec:
        raise ModelFileError(f"{where}: metadata 'architecture' must be a non-empty list of layers, got {_show(spec)}")
    layers = []
    for i, entry in enumerate(spec):
        what = f"architecture entry {i}"
        layers.append(_construct(_check_class(entry, LAYERS, "layer", what, where), entry["config"], what, where))
    if not any(isinstance(layer, Dense) for layer in layers):
        raise ModelFileError(f"{where}: metadata 'architecture' has no Dense layer")
    return layers


def _check_loss(metadata, where):
    spec = _json(metadata, "loss", where)
    if spec is None:
        return None
    cls = _check_class(spec, _LOSSES, "loss", "metadata 'loss'", where)
    return _construct(cls, spec["config"], "metadata 'loss'", where)


def _check_schedule(spec, what: str, where) -> Schedule:
    """The schedule ``{"schedule": name, "config": {...}}`` describes.

    A Scaled schedule (ReduceLROnPlateau's) holds another as a class name and a JSON string;
    that one is checked here the same way before Scaled is built around it.
    """
    cls = _check_class(spec, SCHEDULES, "schedule", what, where, key="schedule")
    config = dict(spec["config"])
    if cls.__name__ != "Scaled":
        return _construct(cls, config, what, where)
    inner = config.pop("config", None)
    if not isinstance(inner, str):
        raise ModelFileError(f"{where}: {what}: Scaled needs its schedule's config as a JSON string, got {_show(inner)}")
    try:
        inner = _loads(inner)
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{where}: {what}: Scaled's schedule config is not JSON ({e})") from None
    name = config.pop("schedule", None)
    inner_spec = {"schedule": name, "config": inner}
    if name == "Scaled":
        raise ModelFileError(f"{where}: {what}: Scaled cannot hold another Scaled")
    return _construct(cls, config, what, where, schedule=_check_schedule(inner_spec, f"{what} (scaled)", where))


def _check_optimizer(metadata, where):
    """(optimizer or None, its step count, the keys of each parameter's state or None when it has none)."""
    what = "metadata 'optimizer'"
    spec = _json(metadata, "optimizer", where)
    if spec is None:
        return None, 0, None
    cls = _check_class(spec, _OPTIMIZERS, "optimizer", what, where)
    t, has_state = spec.get("t"), spec.get("has_state")
    if not (_is_int(t) and t >= 0):
        raise ModelFileError(f"{where}: {what} has step count t={_show(t)}, not a non-negative integer")
    if not isinstance(has_state, bool):
        raise ModelFileError(f"{where}: {what} has has_state={_show(has_state)}, not true or false")
    config = dict(spec["config"])
    if "lr" not in config:
        raise ModelFileError(f"{where}: {what} has no learning rate 'lr' in its config")
    lr = config.pop("lr")
    if isinstance(lr, dict):
        lr = _check_schedule(lr, f"{what} lr", where)
    elif not (_fits(lr, "float") and lr >= 0):
        raise ModelFileError(f"{where}: {what} has lr={_show(lr)}, not a non-negative number or a schedule")
    optimizer = _construct(cls, config, what, where, lr=lr)
    # which buffers each parameter has (Adam: m and v; SGD: momentum or none), asked of the optimiser
    return optimizer, t, (optimizer.state_names() if has_state else None)


def _generator_problem(state) -> str | None:
    """What is wrong with a saved NumPy PCG64 generator state, or None."""
    if not isinstance(state, dict):
        return f"got {_show(state)}"
    if state.get("bit_generator") != "PCG64":
        return f"bit_generator {_show(state.get('bit_generator'))}, expected 'PCG64'"
    inner = state.get("state")
    if not isinstance(inner, dict) or not all(_is_int(inner.get(k)) and 0 <= inner[k] < 2**128 for k in ("state", "inc")):
        return f"state {_show(inner)} needs integers 'state' and 'inc' in [0, 2**128)"
    if state.get("has_uint32") not in (0, 1) or not _is_int(state.get("has_uint32")):
        return f"has_uint32 {_show(state.get('has_uint32'))}, expected 0 or 1"
    if not (_is_int(state.get("uinteger")) and 0 <= state["uinteger"] < 2**32):
        return f"uinteger {_show(state.get('uinteger'))}, expected an integer in [0, 2**32)"
    return None


def _check_rng(metadata, layers, where) -> tuple[dict, dict]:
    """(the init and shuffle generator states, {Dropout layer index: (key, counter)}).

    Files from before device-side masks hold, under ``rng["layers"]``, the state of a NumPy
    generator per Dropout layer instead. Their masks cannot be reproduced any more, so such a
    layer gets a key drawn from that saved generator and counter 0: loading is deterministic
    (the same file always resumes the same way), and a warning says that resumed training will
    not repeat what the older xpmlp would have done.
    """
    rng = _json(metadata, "rng", where)
    if not isinstance(rng, dict):
        raise ModelFileError(f"{where}: metadata 'rng' must be an object, got {_show(rng)}")
    for key in ("init", "shuffle"):
        problem = _generator_problem(rng.get(key))
        if problem:
            raise ModelFileError(f"{where}: metadata 'rng' {key!r} is not a generator state ({problem})")
    dropout = [i for i, layer in enumerate(layers) if isinstance(layer, Dropout)]
    if "dropout" in rng:
        states, legacy = rng["dropout"], False
    elif "layers" in rng:
        states, legacy = rng["layers"], True
    elif dropout:
        raise ModelFileError(f"{where}: metadata 'rng' holds no dropout state")
    else:
        return rng, {}
    if not isinstance(states, dict) or not all(i.isascii() and i.isdigit() for i in states):
        raise ModelFileError(f"{where}: metadata 'rng' has malformed dropout states {_show(states)}")
    states = {int(i): state for i, state in states.items()}
    if sorted(states) != dropout:
        raise ModelFileError(f"{where}: metadata 'rng' has dropout states for layers {sorted(states)}, "
                             f"but the architecture has Dropout layers {dropout}")
    keys = {}
    for i, state in states.items():
        if legacy:
            problem = _generator_problem(state)
            if problem is None:
                generator = np.random.default_rng(0)  # its state is replaced by the saved one
                generator.bit_generator.state = state
                keys[i] = (int(generator.integers(2**63)), 0)
        elif not isinstance(state, dict) or set(state) != {"key", "counter"}:
            problem = f"expected an object with key and counter, got {_show(state)}"
        elif not _is_int(state["key"]) or not _is_int(state["counter"]) or state["counter"] < 0:
            problem = f"key {_show(state['key'])}, counter {_show(state['counter'])}"
        else:
            problem, keys[i] = None, (state["key"], state["counter"])
        if problem:
            raise ModelFileError(f"{where}: malformed dropout state for layer {i} in metadata 'rng' ({problem})")
    if legacy and dropout:
        warnings.warn(f"{where} was written by an older xpmlp that drew dropout masks on the host; masks are "
                      "now made on the device, so each Dropout layer continues from a key derived from its "
                      "saved generator: resumed training is reproducible but will not repeat the older "
                      "version's masks", UserWarning, stacklevel=_user_level())
    return rng, keys


def _architecture_shapes(layers, in_features: int, file: _File) -> dict:
    """{array name: shape} that the declared layers need for inputs of width ``in_features``,
    computed from their configs (nothing is built). A Standardize layer saved before it was
    adapted has no statistics, so its two are expected when the file holds either."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = in_features
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            if layer.in_features is not None and layer.in_features != width:
                raise ModelFileError(f"{file.where}: architecture entry {i}: Dense expects {layer.in_features} "
                                     f"input features, but receives {width}")
            shapes[f"layers.{i}.W"] = (width, layer.units)
            if layer.bias:
                shapes[f"layers.{i}.b"] = (layer.units,)
            width = layer.units
        elif isinstance(layer, Standardize) and _has_statistics(file, i):
            shapes[f"layers.{i}.state.mean"] = shapes[f"layers.{i}.state.std"] = (width,)
    return shapes


def _has_statistics(file: _File, i: int) -> bool:
    return f"layers.{i}.state.mean" in file.tensors or f"layers.{i}.state.std" in file.tensors


# -- loading -----------------------------------------------------------------------------------
class SavedModel(NamedTuple):
    """A model file, checked whole and turned into state dicts (see :func:`read_model`).

    Nothing here is on a device: arrays are NumPy, of the model's dtype.

    Parameters
    ----------
    layers : list of Layer
        Constructed from the architecture, not built (nothing allocated).
    dtype : str
        The model's dtype, "float32" or "float64".
    seed : int or None
        The model's seed.
    in_features : int
        The input width.
    loss : Loss or None
        The loss the model was saved with.
    state : dict
        The model's state dict: ``layers.{i}.{key}``, ``layers.{i}.state.{key}``,
        ``layers.{i}.extra_state``.
    optimizer : Optimizer or None
        The optimiser the model was saved with.
    optimizer_state : dict or None
        Its state dict ``{"t", "state": {name: flat array} or None}``; None without an optimiser.
    rng : dict
        ``{"init": ..., "shuffle": ...}`` NumPy generator states.
    """
    layers: list  # constructed from the architecture, not built (nothing allocated)
    dtype: str
    seed: int | None
    in_features: int
    loss: object  # a Loss, or None
    state: dict  # the model's state dict: layers.{i}.{key}, layers.{i}.state.{key}, layers.{i}.extra_state
    optimizer: object  # an Optimizer, or None
    optimizer_state: dict | None  # its state dict {"t", "state": {name: flat array} or None}; None without one
    rng: dict  # {"init": ..., "shuffle": ...} NumPy generator states


def _saved_model(file: _File, allow_nonfinite: bool) -> SavedModel:
    where = file.where
    layers = _check_architecture(file.metadata, where)
    config = _check_model(file.metadata, where)
    loss = _check_loss(file.metadata, where)
    optimizer, t, state_keys = _check_optimizer(file.metadata, where)
    rng, dropout = _check_rng(file.metadata, layers, where)
    expected = _architecture_shapes(layers, config["in_features"], file)
    params = [(name, shape) for name, shape in expected.items() if _is_parameter(name)]
    for j, (_, shape) in enumerate(params if state_keys is not None else []):
        expected.update({f"optimizer.{j}.{key}": shape for key in state_keys})
    _match(file, expected, "the architecture in its metadata", "the architecture")
    arrays = _decode(file, list(expected), allow_nonfinite)

    dtype = config["dtype"]
    state = {name: arrays[name].astype(dtype) for name in expected if not name.startswith("optimizer.")}
    state.update({f"layers.{i}.extra_state": {"key": key, "counter": counter}
                  for i, (key, counter) in dropout.items()})
    optimizer_state = None
    if optimizer is not None:  # per-parameter arrays in the file, one flat buffer each in the state dict
        optimizer_state = {"t": t, "state": None if state_keys is None else {
            key: np.concatenate([arrays[f"optimizer.{j}.{key}"].astype(dtype).reshape(-1)
                                 for j in range(len(params))])
            for key in state_keys}}
    return SavedModel(layers, dtype, config["seed"], config["in_features"], loss, state, optimizer,
                      optimizer_state, {"init": rng["init"], "shuffle": rng["shuffle"]})


def read_model(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> SavedModel:
    """The model file at ``path`` (written by ``Sequential.save``), checked whole before anything
    is allocated (see the module docstring); any defect raises :class:`ModelFileError`.

    Parameters
    ----------
    path : str or path-like
        The model file.
    allow_nonfinite : bool, default=False
        Accept weights, optimiser state or statistics holding NaN or infinity.

    Returns
    -------
    SavedModel
        The checked contents, as NumPy state dicts.

    Raises
    ------
    ModelFileError
        If the file is missing, malformed, or not an xpmlp model file.
    """
    return _saved_model(_read(path, ("xpmlp",)), allow_nonfinite)


def decode_model(data: bytes, *, allow_nonfinite: bool = False) -> SavedModel:
    """:func:`read_model` of bytes (as ``Sequential.to_bytes`` gives).

    Parameters
    ----------
    data : bytes
        A model file's bytes.
    allow_nonfinite : bool, default=False
        Accept weights, optimiser state or statistics holding NaN or infinity.

    Returns
    -------
    SavedModel
        The checked contents, as NumPy state dicts.

    Raises
    ------
    ModelFileError
        If the bytes are malformed or not an xpmlp model file.

    Examples
    --------
    >>> import xpmlp
    >>> from xpmlp.io import decode_model
    >>> saved = decode_model(xpmlp.MLP([2, 4, 2], seed=0).to_bytes())
    >>> saved.dtype, saved.in_features, saved.state["layers.0.W"].shape
    ('float32', 2, (2, 4))
    """
    return _saved_model(_check_file(data, "model bytes", ("xpmlp",)), allow_nonfinite)


def read_weights(path: str | os.PathLike, shapes: dict, dtype: str, *, allow_nonfinite: bool = False) -> dict:
    """The arrays of a weights file (or of a model file, its optimiser aside), checked whole.

    Parameters
    ----------
    path : str or path-like
        The weights file or model file.
    shapes : dict
        {name: shape} the model needs (``layers.{i}.{key}``, and ``layers.{i}.state.{key}`` for
        every Standardize layer); a layer's statistics are required only when the file holds
        either of them (a model saved before it was adapted has none).
    dtype : str
        The arrays are returned as NumPy arrays of this dtype.
    allow_nonfinite : bool, default=False
        Accept arrays holding NaN or infinity.

    Returns
    -------
    dict
        Name to NumPy array of ``dtype``, one per expected name.

    Raises
    ------
    ModelFileError
        If the file is missing or malformed, or its arrays do not match ``shapes``.
    """
    file = _read(path, ("xpmlp-weights", "xpmlp"))
    expected = {}
    for name, shape in shapes.items():
        layer = name.split(".state.")[0] if ".state." in name else None
        if layer is None or any(k.startswith(f"{layer}.state.") for k in file.tensors):
            expected[name] = tuple(shape)
    _match(file, expected, "this model's architecture", "the model", ignore=("optimizer.",))
    return {name: array.astype(dtype) for name, array in _decode(file, list(expected), allow_nonfinite).items()}

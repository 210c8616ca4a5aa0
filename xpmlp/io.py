"""Saving and loading models: safetensors for the arrays, JSON metadata for the rest; never pickle.

A model file holds every parameter (``layers.{i}.{key}``), layer state such as Standardize's
mean and std (``layers.{i}.state.{key}``), the optimiser's buffers (``optimizer.{j}.{key}``),
and as metadata the format version, the architecture (layer classes and their configs), the
model's dtype, loss and optimiser configuration, the host RNG states and each Dropout layer's
key and counter (``rng.dropout``), so that training resumed from a file continues exactly as
if it had not stopped.

Arrays are stored as NumPy on the host, so a file written from a GPU loads on a CPU-only
machine and back. Files are written to a temporary file beside the target and renamed into
place: an interrupted save leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .layers import ACTIVATIONS, Dense, Dropout, Standardize
from .losses import LOSSES
from .optim import OPTIMIZERS
from .schedules import SCHEDULES, Schedule

__all__ = ["save", "load", "save_weights", "load_weights", "ModelFileError", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: dropout state is (key, counter) of the device generator; 1 still loads
_LAYERS = {cls.__name__: cls for cls in (Dense, Dropout, Standardize, *ACTIVATIONS.values())}
_LOSSES = {cls.__name__: cls for cls in LOSSES.values()}
_OPTIMIZERS = {cls.__name__: cls for cls in OPTIMIZERS.values()}


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupted, pickle-based or not an xpmlp file."""


def _atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _layer_tensors(model) -> dict:
    tensors = {}
    for i, layer in enumerate(model.layers):
        for key, value in layer.params.items():
            tensors[f"layers.{i}.{key}"] = to_numpy(value)
        for key, value in getattr(layer, "state", {}).items():
            tensors[f"layers.{i}.state.{key}"] = to_numpy(value)
    return tensors


def _encode(tensors: dict, metadata: dict) -> bytes:
    import safetensors.numpy

    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def _require_built(model):
    if not model.built:
        raise ValueError("the model has no weights yet: fit it (or give in_features) before saving")


def save(model, path) -> None:
    """Write the whole model - architecture, weights, loss, optimiser state, RNG states - to ``path``."""
    _atomic_write(Path(path), to_bytes(model))


def to_bytes(model) -> bytes:
    """The file :func:`save` writes, as bytes (used to pickle scikit-learn estimators)."""
    _require_built(model)
    tensors = _layer_tensors(model)
    optimizer = None
    if model.optimizer is not None:
        opt = model.optimizer
        optimizer = {"class": type(opt).__name__, "config": {**opt.get_config(), "lr": _lr_config(opt)},
                     "t": opt.t, "has_state": opt.state is not None}
        for j, state in enumerate(opt.state or []):
            for key, value in state.items():
                tensors[f"optimizer.{j}.{key}"] = to_numpy(value)
    metadata = {
        "format": "xpmlp",
        "format_version": str(FORMAT_VERSION),
        "architecture": json.dumps([{"class": type(layer).__name__, "config": layer.get_config()}
                                    for layer in model.layers]),
        "model": json.dumps({"dtype": model.dtype, "seed": model.seed, "in_features": model.in_features}),
        "loss": json.dumps(None if model.loss is None else
                           {"class": type(model.loss).__name__, "config": model.loss.get_config()}),
        "optimizer": json.dumps(optimizer),
        "rng": json.dumps({"init": model._init_rng.bit_generator.state,
                           "shuffle": model.shuffle_rng.bit_generator.state,
                           "dropout": {str(i): {"key": layer.key, "counter": layer.counter}
                                       for i, layer in enumerate(model.layers) if isinstance(layer, Dropout)}}),
    }
    return _encode(tensors, metadata)


def _lr_config(opt):
    """A float, or a schedule as {"schedule": name, "config": {...}}; plain functions are not storable."""
    if isinstance(opt.lr, Schedule) and type(opt.lr).__name__ in SCHEDULES:
        return {"schedule": type(opt.lr).__name__, "config": opt.lr.get_config()}
    if callable(opt.lr):
        warnings.warn("the learning rate is a plain function, which cannot be saved; the file stores its "
                      f"current value {opt.current_lr():g} (use a schedule from xpmlp.schedules to keep it)",
                      UserWarning, stacklevel=3)
        return opt.current_lr()
    return opt.lr


def _read(path, formats: tuple):
    """(metadata, {name: np.ndarray}) of a file, or ModelFileError saying what is wrong with it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise ModelFileError(f"{path}: a pickle or zip archive (torch.save, joblib, pickle), not an xpmlp "
                                 "model; xpmlp never unpickles files, as that can run arbitrary code") from None
        raise ModelFileError(f"{path}: not a valid safetensors file, or truncated or corrupted ({e})") from None
    if metadata.get("format") not in formats:
        raise ModelFileError(f"{path}: a safetensors file, but not an xpmlp file "
                             f"(format {metadata.get('format')!r}, expected {' or '.join(formats)})")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {version!r} is not one this xpmlp reads (<= {FORMAT_VERSION})")
    return metadata, tensors


def _json(metadata, key, path):
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: metadata {key!r} is missing or corrupted ({e})") from None


def _layer_keys(model) -> list[str]:
    """Names of the arrays a model's layers need: parameters, and Standardize statistics."""
    keys = []
    for i, layer in enumerate(model.layers):
        keys += [f"layers.{i}.{k}" for k in layer.params]
        if isinstance(layer, Standardize):
            keys += [f"layers.{i}.state.mean", f"layers.{i}.state.std"]
    return keys


def _restore_layers(model, tensors, path) -> None:
    """Copy the file's arrays into the model's layers, after checking names and shapes."""
    keys = _layer_keys(model)
    missing = [k for k in keys if k not in tensors]
    extra = sorted(k for k in tensors if k.startswith("layers.") and k not in keys)
    if missing or extra:
        raise ModelFileError(f"{path}: arrays do not match this model's architecture "
                             f"(missing {missing}, unexpected {extra})")
    for i, layer in enumerate(model.layers):
        for key, current in layer.params.items():
            value = tensors[f"layers.{i}.{key}"]
            if value.shape != tuple(current.shape):
                raise ModelFileError(f"{path}: layers.{i}.{key} has shape {value.shape}, the model "
                                     f"expects {tuple(current.shape)}")
        layer.params.update({key: model.backend.from_host(tensors[f"layers.{i}.{key}"].astype(model.dtype))
                             for key in layer.params})
        if isinstance(layer, Standardize):
            layer.state = {key: model.backend.from_host(tensors[f"layers.{i}.state.{key}"].astype(model.dtype))
                           for key in ("mean", "std")}


def load(path, device=None, xp=None):
    """Rebuild a model saved with :func:`save` on ``device`` (or namespace ``xp``).

    Returns
    -------
    Sequential, with its loss, optimiser (and its state) and RNG states restored.
    """
    from .model import Sequential

    metadata, tensors = _read(path, ("xpmlp",))
    architecture = _json(metadata, "architecture", path)
    config = _json(metadata, "model", path)
    try:
        layers = [_LAYERS[spec["class"]](**spec["config"]) for spec in architecture]
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: unknown or malformed layer in the architecture ({e})") from None
    model = Sequential(layers, device=device, xp=xp, dtype=config["dtype"], seed=config["seed"],
                       in_features=config["in_features"])
    _restore_layers(model, tensors, path)

    loss = _json(metadata, "loss", path)
    if loss is not None:
        model.loss = _LOSSES[loss["class"]](**loss["config"])
    opt = _json(metadata, "optimizer", path)
    if opt is not None:
        config = dict(opt["config"])
        if isinstance(config["lr"], dict):
            config["lr"] = SCHEDULES[config["lr"]["schedule"]](**config["lr"]["config"])
        optimizer = _OPTIMIZERS[opt["class"]](**config)
        optimizer.t = int(opt["t"])
        if opt["has_state"]:
            optimizer.state = []
            for j in range(len(model.slots())):
                prefix = f"optimizer.{j}."
                optimizer.state.append({k[len(prefix):]: model.backend.from_host(v.astype(model.dtype))
                                        for k, v in tensors.items() if k.startswith(prefix)})
        model.optimizer = optimizer
    rng = _json(metadata, "rng", path)
    model._init_rng.bit_generator.state = rng["init"]
    model.shuffle_rng.bit_generator.state = rng["shuffle"]
    _restore_dropout(model, rng, path)
    return model


def _restore_dropout(model, rng: dict, path) -> None:
    """Set each Dropout layer's key and counter from the file's ``rng`` metadata.

    Files from before device-side masks hold, under ``rng["layers"]``, the state of a NumPy
    generator per Dropout layer instead. Their masks cannot be reproduced any more, so such a
    layer gets a key drawn from that saved generator and counter 0: loading is deterministic
    (the same file always resumes the same way), and a warning says that resumed training will
    not repeat what the older xpmlp would have done.
    """
    dropout = {i: layer for i, layer in enumerate(model.layers) if isinstance(layer, Dropout)}
    if "dropout" in rng:
        states, legacy = rng["dropout"], False
    elif "layers" in rng:
        states, legacy = rng["layers"], True
    elif dropout:
        raise ModelFileError(f"{path}: metadata 'rng' holds no dropout state")
    else:
        return
    try:
        states = {int(i): state for i, state in states.items()}
    except (AttributeError, TypeError, ValueError):
        raise ModelFileError(f"{path}: metadata 'rng' has malformed dropout states") from None
    if set(states) != set(dropout):
        raise ModelFileError(f"{path}: metadata 'rng' has dropout states for layers {sorted(states)}, "
                             f"but the architecture has Dropout layers {sorted(dropout)}")
    for i, layer in dropout.items():
        state = states[i]
        try:
            if legacy:
                generator = np.random.default_rng(0)  # its state is replaced by the saved one
                generator.bit_generator.state = state
                layer.key, layer.counter = int(generator.integers(2**63)), 0
            else:
                key, counter = state["key"], state["counter"]
                if type(key) is not int or type(counter) is not int or counter < 0:
                    raise ValueError(f"key {key!r}, counter {counter!r}")
                layer.key, layer.counter = key, counter
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: malformed dropout state for layer {i} in metadata 'rng' ({e})") from None
    if legacy and dropout:
        warnings.warn(f"{path} was written by an older xpmlp that drew dropout masks on the host; masks are "
                      "now made on the device, so each Dropout layer continues from a key derived from its "
                      "saved generator: resumed training is reproducible but will not repeat the older "
                      "version's masks", UserWarning, stacklevel=3)


def from_bytes(data: bytes, device=None, xp=None):
    """The model that :func:`to_bytes` gave, rebuilt on ``device``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(data)
        return load(path, device=device, xp=xp)


def save_weights(model, path) -> None:
    """Write only the weights (and layer state such as Standardize statistics)."""
    _require_built(model)
    _atomic_write(Path(path), _encode(_layer_tensors(model), {"format": "xpmlp-weights",
                                                              "format_version": str(FORMAT_VERSION)}))


def load_weights(model, path) -> None:
    """Load weights written by :func:`save_weights` (or :func:`save`) into a model of the same architecture."""
    _require_built(model)
    _, tensors = _read(path, ("xpmlp-weights", "xpmlp"))
    _restore_layers(model, tensors, path)

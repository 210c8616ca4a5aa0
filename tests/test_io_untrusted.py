"""Model files are untrusted input: every malformed file is refused with ModelFileError saying
what is wrong, before anything is allocated, never with KeyError, TypeError, IndexError,
AttributeError or a bare ValueError; no file runs code; a failed load_weights changes nothing.

Edited files get their checksum recomputed (``_rebuild``) so that each case reaches the check it
is about rather than stopping at the checksum. The checksum is restated here from the format's
description, not imported: SHA-256 of the tensors' bytes in the order of their sorted names.
"""

import hashlib
import io as _bytes_io
import json
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xpmlp
from xpmlp import ModelFileError, to_numpy
from xpmlp.schedules import CosineDecay

rng = np.random.default_rng(0)
X = rng.normal(size=(24, 5))
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
# Standardize(0), Dense(1), Tanh(2), Dropout(3), Dense(4)
META_KEYS = ("architecture", "model", "loss", "optimizer", "rng")


def _trained():
    model = xpmlp.MLP([5, 8, 3], activation="tanh", dropout=0.1, standardize=True, seed=1, device="cpu")
    model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=CosineDecay(0.01, total_steps=100)),
              epochs=1, batch_size=8)
    return model


MODEL = _trained()
GOOD = MODEL.to_bytes()


# -- file surgery ----------------------------------------------------------------------------
def _split(data: bytes):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def _rebuild(header: dict, body: bytes) -> bytes:
    """The file with its sha256 recomputed for the (possibly edited) header and data."""
    header = json.loads(json.dumps(header))
    digest = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        begin, end = header[name]["data_offsets"]
        digest.update(body[begin:end])
    if "sha256" in header.get("__metadata__", {}):
        header["__metadata__"]["sha256"] = digest.hexdigest()
    return _join(header, body)


def meta(key, edit):
    """A case: metadata entry ``key`` parsed, changed by ``edit`` (in place, or returning a new value)."""
    def make(data):
        header, body = _split(data)
        value = json.loads(header["__metadata__"][key])
        result = edit(value)
        header["__metadata__"][key] = json.dumps(value if result is None else result)
        return _rebuild(header, body)
    return make


def raw_meta(key, text):
    def make(data):
        header, body = _split(data)
        if text is None:
            del header["__metadata__"][key]
        else:
            header["__metadata__"][key] = text
        return _rebuild(header, body)
    return make


def tensors(edit):
    """A case: the file's arrays changed by ``edit(dict)``, metadata kept, checksum recomputed."""
    import safetensors.numpy

    def make(data):
        header, _ = _split(data)
        arrays = safetensors.numpy.load(data)
        edit(arrays)
        new = safetensors.numpy.save(arrays, metadata=header["__metadata__"])
        return _rebuild(*_split(new))
    return make


def header(edit, rehash=True):
    """A case: the parsed safetensors header changed by ``edit``."""
    def make(data):
        h, body = _split(data)
        edit(h)
        return _rebuild(h, body) if rehash else _join(h, body)
    return make


def _set(path, value):
    def edit(obj):
        *parents, last = path
        for p in parents:
            obj = obj[p]
        obj[last] = value
    return edit


def _del(path):
    def edit(obj):
        *parents, last = path
        for p in parents:
            obj = obj[p]
        del obj[last]
    return edit


def _zip():
    buffer = _bytes_io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("data.pkl", pickle.dumps({"w": [1.0]}))
    return buffer.getvalue()


def _raw(text: bytes) -> bytes:
    return len(text).to_bytes(8, "little") + text


def _flip(position):
    def make(data):
        start = 8 + int.from_bytes(data[:8], "little")
        i = start + position
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    return make


def _nan_in(name, value=np.nan, index=0):
    def edit(arrays):
        arrays[name].reshape(-1)[index] = value
    return edit


def _scaled(config, name="CosineDecay", factor=0.5):
    """A ReduceLROnPlateau-scaled schedule's saved form, with the inner config given."""
    return {"schedule": "Scaled", "config": {"schedule": name, "factor": factor, "config": config}}


def _version(v, drop_sum):
    def edit(h):
        h["__metadata__"]["format_version"] = v
        if drop_sum:
            del h["__metadata__"]["sha256"]
    return edit


def _gap(h):
    h["layers.1.W"]["data_offsets"] = [o + 4 for o in h["layers.1.W"]["data_offsets"]]


CORPUS = [
    # (id, make(good bytes) -> bad bytes, what the message says)
    ("empty", lambda d: b"", "empty file"),
    ("three-bytes", lambda d: b"abc", "only 3 bytes"),
    ("random", lambda d: np.random.default_rng(1).bytes(1000), "not a valid safetensors file"),
    ("pickle", lambda d: pickle.dumps({"w": np.zeros(3)}), "a pickle or zip archive"),
    ("zip", lambda d: _zip(), "a pickle or zip archive"),
    ("header-length-past-the-end", lambda d: (2**40).to_bytes(8, "little") + b"{}" + bytes(1000),
     "header length 1099511627776 does not fit the 1002 bytes"),
    ("header-not-json", lambda d: (9).to_bytes(8, "little") + b"{not json", "header is not valid JSON"),
    ("header-not-utf8", lambda d: (2).to_bytes(8, "little") + b"\xff\xfe", "header is not valid JSON"),
    ("header-a-list", lambda d: _join([], b""), "header is list, not a JSON object"),
    ("header-nan", lambda d: (11).to_bytes(8, "little") + b'{"a": NaN} ', "NaN is not a number JSON allows"),
    ("header-duplicate-names", lambda d: _raw(b"{" + b", ".join(
        [b'"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}'] * 2) + b"}"), "duplicate keys"),
    ("header-deeply-nested", lambda d: _raw(b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
     "header is not valid JSON: maximum recursion depth"),
    ("metadata-not-strings", header(lambda h: h["__metadata__"].update(model={"dtype": "float32"})),
     "__metadata__ is not an object of strings"),
    ("tensor-entry-missing-dtype", header(lambda h: h["layers.1.W"].pop("dtype")), "needs exactly dtype, shape"),
    ("tensor-entry-a-list", header(lambda h: h.update({"layers.1.W": [1, 2]}), rehash=False), "needs exactly dtype, shape"),
    ("tensor-unknown-dtype", header(lambda h: h["layers.1.W"].update(dtype="Q8")), "unknown dtype 'Q8'"),
    ("tensor-dtype-a-list", header(lambda h: h["layers.1.W"].update(dtype=["F32"])), "unknown dtype"),
    ("tensor-negative-shape", header(lambda h: h["layers.1.W"].update(shape=[-5, 8])), "not a list of sizes"),
    ("tensor-shape-strings", header(lambda h: h["layers.1.W"].update(shape=["5", 8])), "not a list of sizes"),
    ("tensor-4GiB-declared", header(lambda h: h["layers.1.W"].update(shape=[32768, 32768],
                                                                     data_offsets=[0, 4 * 2**30])),
     "outside the [0-9]+ bytes of data"),
    ("tensor-offsets-float", header(lambda h: h["layers.1.W"].update(data_offsets=[0.0, 160.0]), rehash=False),
     "data_offsets .* outside"),
    ("tensor-shape-disagrees-with-its-bytes", header(lambda h: h["layers.1.W"].update(shape=[5, 7])),
     r"needs 140 bytes, its data_offsets span 160"),
    ("tensor-gap", header(_gap), "overlap or leave gaps|outside the"),
    ("trailing-bytes", lambda d: d + b"\0" * 8, "cover .* of the .* bytes after the header"),
    ("not-xpmlp", header(lambda h: h["__metadata__"].update(format="other")), "not an xpmlp file"),
    ("version-9", header(lambda h: h["__metadata__"].update(format_version="9")), "format version '9'"),
    ("version-0", header(lambda h: h["__metadata__"].update(format_version="0")), "format version '0'"),
    ("version-x", header(lambda h: h["__metadata__"].update(format_version="x")), "format version 'x'"),
    ("version-3-without-checksum", header(_version("3", drop_sum=True), rehash=False), "requires a 'sha256'"),
    ("flipped-byte-in-weights", _flip(100), "do not match the file's SHA-256 checksum"),
    ("flipped-byte-last", lambda d: d[:-1] + bytes([d[-1] ^ 0x80]), "SHA-256 checksum"),
    ("checksum-rewritten", header(lambda h: h["__metadata__"].update(sha256="0" * 64), rehash=False), "SHA-256"),
    *[(f"{key}-missing", raw_meta(key, None), f"metadata '{key}' is missing") for key in META_KEYS],
    *[(f"{key}-not-json", raw_meta(key, "{"), f"metadata '{key}' is corrupted, not JSON") for key in META_KEYS],
    ("model-in_features-NaN", raw_meta("model", '{"dtype": "float32", "seed": 1, "in_features": NaN}'),
     "metadata 'model' is corrupted, not JSON .*NaN"),
    ("architecture-not-a-list", meta("architecture", lambda a: {"layers": a}), "must be a non-empty list"),
    ("architecture-empty", meta("architecture", lambda a: []), "must be a non-empty list"),
    ("architecture-entry-a-string", meta("architecture", _set([1], "Dense")), "entry 1 must be an object"),
    ("architecture-entry-no-config", meta("architecture", _del([1, "config"])), "entry 1 must be an object"),
    ("architecture-unknown-layer", meta("architecture", _set([2, "class"], "Conv2D")),
     "entry 2 names an unknown layer 'Conv2D'"),
    ("architecture-class-a-list", meta("architecture", _set([2, "class"], ["Tanh"])), "entry 2 must be an object"),
    ("dense-units-negative", meta("architecture", _set([1, "config", "units"], -5)),
     "entry 1: Dense units must be a positive integer, got -5"),
    ("dense-units-string", meta("architecture", _set([1, "config", "units"], "x")), r"Dense\(units='x'\) is not of type int"),
    ("dense-units-bool", meta("architecture", _set([1, "config", "units"], True)), "is not of type int"),
    ("dense-units-float", meta("architecture", _set([1, "config", "units"], 8.0)), "is not of type int"),
    ("dense-units-missing", meta("architecture", _del([1, "config", "units"])), r"Dense needs \['units'\]"),
    ("dense-unknown-argument", meta("architecture", _set([1, "config", "activation"], "relu")),
     "Dense has no parameter 'activation'"),
    ("dense-in_features-negative", meta("architecture", _set([1, "config", "in_features"], -5)),
     "Dense expects -5 input features, but receives 5"),
    ("dense-in_features-disagrees", meta("architecture", _set([4, "config", "in_features"], 7)),
     "entry 4: Dense expects 7 input features, but receives 8"),
    ("dense-bias-string", meta("architecture", _set([1, "config", "bias"], "yes")), "is not of type bool"),
    ("dense-unknown-init", meta("architecture", _set([1, "config", "init"], "bogus")), "unknown initializer 'bogus'"),
    ("dense-absurd-units", meta("architecture", _set([4, "config", "units"], 2**40)),
     r"layers.4.W has shape \(8, 3\), the architecture expects \(8, 1099511627776\)"),
    ("dropout-rate-out-of-range", meta("architecture", _set([3, "config", "rate"], 1.5)), "Dropout rate must be in"),
    ("dropout-rate-huge-int", meta("architecture", _set([3, "config", "rate"], 10**400)), "not of type float"),
    ("no-dense-layer", meta("architecture", lambda a: [a[0], a[2]]), "no Dense layer"),
    ("model-not-an-object", meta("model", lambda m: [m]), "metadata 'model' must be an object"),
    ("model-dtype-float16", meta("model", _set(["dtype"], "float16")), "dtype 'float16', expected one of"),
    ("model-dtype-list", meta("model", _set(["dtype"], ["float32"])), "has dtype"),
    ("model-dtype-missing", meta("model", _del(["dtype"])), "has dtype None"),
    ("model-seed-negative", meta("model", _set(["seed"], -1)), "seed -1"),
    ("model-seed-string", meta("model", _set(["seed"], "1")), "seed '1'"),
    ("model-in_features-zero", meta("model", _set(["in_features"], 0)), "in_features 0"),
    ("model-in_features-string", meta("model", _set(["in_features"], "5")), "in_features '5'"),
    ("model-in_features-missing", meta("model", _del(["in_features"])), "in_features None"),
    ("model-in_features-disagrees", meta("model", _set(["in_features"], 6)), "Dense expects 5 input features, but receives 6"),
    ("loss-unknown", meta("loss", _set(["class"], "Focal")), "unknown loss 'Focal'"),
    ("loss-a-string", meta("loss", lambda l: "SoftmaxCrossEntropy"), "metadata 'loss' must be an object"),
    ("loss-config-mistyped", meta("loss", _set(["config", "label_smoothing"], "x")), "is not of type float"),
    ("loss-config-extra", meta("loss", _set(["config", "gamma"], 2.0)), "has no parameter 'gamma'"),
    ("optimizer-unknown", meta("optimizer", _set(["class"], "Lion")), "unknown optimizer 'Lion'"),
    ("optimizer-a-list", meta("optimizer", lambda o: [o]), "metadata 'optimizer' must be an object"),
    ("optimizer-t-negative", meta("optimizer", _set(["t"], -1)), "t=-1"),
    ("optimizer-t-float", meta("optimizer", _set(["t"], 1.5)), "t=1.5"),
    ("optimizer-t-missing", meta("optimizer", _del(["t"])), "t=None"),
    ("optimizer-has_state-string", meta("optimizer", _set(["has_state"], "yes")), "has_state='yes'"),
    ("optimizer-lr-missing", meta("optimizer", _del(["config", "lr"])), "no learning rate"),
    ("optimizer-lr-negative", meta("optimizer", _set(["config", "lr"], -1.0)), "lr=-1.0"),
    ("optimizer-lr-string", meta("optimizer", _set(["config", "lr"], "x")), "lr='x'"),
    ("optimizer-unknown-schedule", meta("optimizer", _set(["config", "lr", "schedule"], "Warp")),
     "unknown schedule 'Warp'"),
    ("optimizer-schedule-config-list", meta("optimizer", _set(["config", "lr", "config"], [1])),
     "lr must be an object with a 'schedule' name"),
    ("optimizer-schedule-bad-steps", meta("optimizer", _set(["config", "lr", "config", "total_steps"], 0)),
     "warmup_steps < total_steps"),
    ("scaled-schedule-config-deep", meta("optimizer", _set(["config", "lr"], _scaled("[" * 100000))),
     "Scaled's schedule config is not JSON"),
    ("scaled-schedule-config-not-string", meta("optimizer", _set(["config", "lr"], _scaled({"lr": 0.1}))),
     "Scaled needs its schedule's config as a JSON string"),
    ("scaled-schedule-lr-huge", meta("optimizer", _set(["config", "lr"], _scaled('{"lr": 1e999, "total_steps": 9}'))),
     "Scaled's schedule config is not JSON .*1e999 is beyond the range of a float"),
    ("model-seed-1e999", raw_meta("model", '{"dtype": "float32", "seed": 1e999, "in_features": 5}'),
     "metadata 'model' is corrupted, not JSON .*1e999 is beyond"),
    ("scaled-schedule-lr-huge-int", meta("optimizer", _set(["config", "lr"],
                                                           _scaled('{"lr": 1%s, "total_steps": 9}' % ("0" * 400)))),
     r"CosineDecay\(lr=.*is not of type float"),
    ("scaled-schedule-unknown", meta("optimizer", _set(["config", "lr"], _scaled("{}", "Warp"))), "unknown schedule 'Warp'"),
    ("scaled-in-scaled", meta("optimizer", _set(["config", "lr"], _scaled("{}", "Scaled"))), "cannot hold another Scaled"),
    ("scaled-factor-negative", meta("optimizer", _set(["config", "lr"], _scaled('{"lr": 0.1, "total_steps": 9}',
                                                                                factor=-1.0))), "factor must be"),
    ("optimizer-beta-string", meta("optimizer", _set(["config", "beta_1"], "x")), r"Adam\(beta_1='x'\) is not of type float"),
    ("optimizer-config-extra", meta("optimizer", _set(["config", "momentum"], 0.9)), "Adam has no parameter 'momentum'"),
    ("optimizer-state-missing", tensors(lambda a: a.pop("optimizer.2.v")), r"missing \['optimizer.2.v'\]"),
    ("optimizer-state-extra", tensors(lambda a: a.update({"optimizer.9.m": np.zeros(3, np.float32)})),
     r"unexpected \['optimizer.9.m'\]"),
    ("optimizer-state-wrong-shape", tensors(lambda a: a.update({"optimizer.0.m": np.zeros((8, 5), np.float32)})),
     r"optimizer.0.m has shape \(8, 5\), the architecture expects \(5, 8\)"),
    ("optimizer-state-without-has_state", meta("optimizer", _set(["has_state"], False)),
     r"unexpected \['optimizer.0.m'"),
    ("rng-not-an-object", meta("rng", lambda r: [r]), "metadata 'rng' must be an object"),
    ("rng-init-missing", meta("rng", _del(["init"])), "'init' is not a generator state"),
    ("rng-init-mt19937", meta("rng", _set(["init", "bit_generator"], "MT19937")), "'init' .*expected 'PCG64'"),
    ("rng-shuffle-state-string", meta("rng", _set(["shuffle", "state", "inc"], "1")), "'shuffle' is not a generator"),
    ("rng-shuffle-state-huge", meta("rng", _set(["shuffle", "state", "state"], 2**130)), "'shuffle' is not a generator"),
    ("rng-shuffle-has_uint32", meta("rng", _set(["shuffle", "has_uint32"], 5)), "has_uint32 5"),
    ("rng-init-uinteger-missing", meta("rng", _del(["init", "uinteger"])), "uinteger None"),
    ("rng-dropout-a-list", meta("rng", _set(["dropout"], [1])), "malformed dropout states"),
    ("rng-dropout-layer-name", meta("rng", _set(["dropout"], {"x": {"key": 1, "counter": 0}})),
     "malformed dropout states"),
    ("rng-dropout-a-string", meta("rng", _set(["dropout", "3"], "k")), "malformed dropout state for layer 3"),
    ("rng-dropout-counter-float", meta("rng", _set(["dropout", "3", "counter"], 1.0)),
     "malformed dropout state for layer 3"),
    ("rng-dropout-wrong-layer", meta("rng", _set(["dropout"], {"2": {"key": 1, "counter": 0}})),
     r"dropout states for layers \[2\], but the architecture has Dropout layers \[3\]"),
    ("weights-transposed", tensors(lambda a: a.update({"layers.1.W": np.ascontiguousarray(a["layers.1.W"].T)})),
     r"layers.1.W has shape \(8, 5\), the architecture expects \(5, 8\)"),
    ("weights-missing", tensors(lambda a: a.pop("layers.4.b")), r"missing \['layers.4.b'\]"),
    ("weights-extra", tensors(lambda a: a.update({"layers.2.W": np.zeros((8, 8), np.float32)})),
     r"unexpected \['layers.2.W'\]"),
    ("weights-foreign-name", tensors(lambda a: a.update({"evil": np.zeros(1, np.float32)})), r"unexpected \['evil'\]"),
    ("weights-int-dtype", tensors(lambda a: a.update({"layers.1.b": np.zeros(8, np.int32)})),
     "layers.1.b has dtype I32; xpmlp arrays are F32 or F64"),
    ("weights-float16", tensors(lambda a: a.update({"layers.1.b": np.zeros(8, np.float16)})), "has dtype F16"),
    ("statistics-half-missing", tensors(lambda a: a.pop("layers.0.state.std")), r"missing \['layers.0.state.std'\]"),
    ("statistics-disagree", tensors(lambda a: a.update({"layers.0.state.mean": np.zeros(4, np.float32)})),
     r"layers.0.state.mean has shape \(4,\)"),
    ("weights-nan", tensors(_nan_in("layers.1.W")), "layers.1.W holds NaN or infinite values"),
    ("weights-inf", tensors(_nan_in("layers.4.b", np.inf)), "layers.4.b holds NaN or infinite"),
    ("optimizer-state-nan", tensors(_nan_in("optimizer.3.v")), "optimizer.3.v holds NaN"),
    ("statistics-nan", tensors(_nan_in("layers.0.state.mean")), "layers.0.state.mean holds NaN"),
    ("statistics-zero-std", tensors(_nan_in("layers.0.state.std", 0.0)), "layers.0.state.std holds standard deviations"),
]


@pytest.fixture(autouse=True)
def _no_unpickling(monkeypatch):
    """Loading never unpickles: any call to pickle's loaders fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model file was unpickled")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.mark.parametrize("make, message", [case[1:] for case in CORPUS], ids=[case[0] for case in CORPUS])
def test_malformed_file_is_refused_naming_the_problem(tmp_path, make, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(GOOD))
    with pytest.raises(ModelFileError, match=message) as error:
        xpmlp.load(path, device="cpu")
    assert type(error.value) is ModelFileError
    assert str(path) in str(error.value)


def test_the_good_file_and_its_rebuilt_copy_load():
    """The corpus's surgery keeps a file valid unless a case breaks it on purpose."""
    for data in (GOOD, _rebuild(*_split(GOOD)), tensors(lambda a: None)(GOOD)):
        model = xpmlp.Sequential.from_bytes(data, device="cpu")
        for a, b in zip(model.get_weights(), MODEL.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_truncated_anywhere_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    for cut in sorted({*range(0, 40), *range(40, len(GOOD), 37), len(GOOD) - 1}):
        path.write_bytes(GOOD[:cut])
        with pytest.raises(ModelFileError, match="cut.safetensors: not a valid safetensors file"):
            xpmlp.load(path, device="cpu")


def test_non_finite_values_load_only_when_asked(tmp_path):
    path = tmp_path / "nan.safetensors"
    path.write_bytes(tensors(_nan_in("layers.1.W"))(GOOD))
    with pytest.raises(ModelFileError, match="allow_nonfinite=True"):
        xpmlp.load(path, device="cpu")
    model = xpmlp.load(path, device="cpu", allow_nonfinite=True)
    assert np.isnan(model.get_weights()[0][0, 0])
    target = xpmlp.MLP([5, 8, 3], activation="tanh", dropout=0.1, standardize=True, seed=2, device="cpu")
    target.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    with pytest.raises(ModelFileError, match="layers.1.W holds NaN"):
        target.load_weights(path)
    target.load_weights(path, allow_nonfinite=True)
    assert np.isnan(target.get_weights()[0][0, 0])


def test_a_scaled_schedule_saves_and_loads():
    """ReduceLROnPlateau scales a schedule; the scaled schedule is checked and rebuilt from the file."""
    schedule = CosineDecay(0.01, total_steps=100)
    data = meta("optimizer", _set(["config", "lr"], _scaled(json.dumps(schedule.get_config()), factor=0.25)))(GOOD)
    model = xpmlp.Sequential.from_bytes(data, device="cpu")
    assert [model.optimizer.lr(s) for s in (0, 50)] == [0.25 * schedule(s) for s in (0, 50)]


def test_old_format_versions_without_checksum_still_load(tmp_path):
    path = tmp_path / "v2.safetensors"
    path.write_bytes(header(_version("2", drop_sum=True), rehash=False)(GOOD))
    for a, b in zip(xpmlp.load(path, device="cpu").get_weights(), MODEL.get_weights()):
        np.testing.assert_array_equal(a, b)

    def legacy(h):
        _version("1", drop_sum=True)(h)
        rng_meta = json.loads(h["__metadata__"]["rng"])
        rng_meta["layers"] = {"3": np.random.default_rng(5).bit_generator.state}
        del rng_meta["dropout"]
        h["__metadata__"]["rng"] = json.dumps(rng_meta)
    path.write_bytes(header(legacy, rehash=False)(GOOD))
    with pytest.warns(UserWarning, match="older xpmlp"):
        model = xpmlp.load(path, device="cpu")
    assert model.layers[3].key == int(np.random.default_rng(5).integers(2**63))


def test_saved_files_carry_the_checksum_of_their_tensors():
    h, body = _split(GOOD)
    assert h["__metadata__"]["format_version"] == "3"
    assert _split(_rebuild(h, body))[0]["__metadata__"]["sha256"] == h["__metadata__"]["sha256"]
    assert len(h["__metadata__"]["sha256"]) == 64


def test_a_file_declaring_4_GiB_is_refused_without_allocating_it(tmp_path, monkeypatch):
    """Under 4 KB, declaring a 32768 x 32768 float32 layer (4 GiB): once with a header that says
    so (its data offsets then exceed the file), once with small tensors that disagree with it."""
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were allocated for an unchecked file")
    monkeypatch.setattr(xpmlp.layers, "initialize", no_weights)
    huge_header = header(lambda h: h["layers.4.W"].update(shape=[8, 2**27], data_offsets=[0, 4 * 2**30]))
    huge_architecture = meta("architecture", lambda a: a[4]["config"].update(units=2**15, in_features=8) or
                             a.__setitem__(1, {**a[1], "config": {**a[1]["config"], "units": 8}}))
    huge_model = lambda d: meta("model", _set(["in_features"], 2**15))(  # noqa: E731
        meta("architecture", _set([1, "config", "in_features"], 2**15))(d))
    for make, message in ((huge_header, "outside the"), (huge_architecture, "the architecture expects"),
                          (huge_model, "the architecture expects")):
        data = make(GOOD)
        assert len(data) < 4096
        path = tmp_path / "huge.safetensors"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(ModelFileError, match=message):
                xpmlp.load(path, device="cpu")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20, f"loading a {len(data)}-byte file allocated {peak} bytes"
    path.write_bytes((2**40).to_bytes(8, "little") + bytes(1000))
    with pytest.raises(ModelFileError, match="header length 1099511627776 does not fit"):
        xpmlp.load(path, device="cpu")


def test_a_failed_load_weights_leaves_the_model_unchanged(tmp_path):
    """The file's first layer fits the model and its last does not: nothing may change."""
    other = xpmlp.MLP([5, 8, 4], activation="tanh", standardize=True, seed=3, device="cpu")
    other.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    other.save_weights(tmp_path / "w.safetensors")
    model = xpmlp.MLP([5, 8, 3], activation="tanh", standardize=True, seed=1, device="cpu")
    model.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    before = model.get_weights() + [to_numpy(model.layers[0].state["mean"]).copy()]
    with pytest.raises(ModelFileError, match=r"layers.3.W has shape \(8, 4\), the model expects \(8, 3\)"):
        model.load_weights(tmp_path / "w.safetensors")
    nan = tmp_path / "nan.safetensors"
    nan.write_bytes(tensors(_nan_in("layers.4.b"))(MODEL.to_bytes()))
    target = xpmlp.MLP([5, 8, 3], activation="tanh", dropout=0.1, standardize=True, seed=1, device="cpu")
    target.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    target_before = target.get_weights()
    with pytest.raises(ModelFileError, match="layers.4.b holds NaN"):
        target.load_weights(nan)
    for a, b in zip(model.get_weights() + [to_numpy(model.layers[0].state["mean"])], before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(target.get_weights(), target_before):
        np.testing.assert_array_equal(a, b)


def test_from_bytes_refuses_corrupted_bytes():
    """Estimators unpickle through from_bytes: their model bytes are checked the same way."""
    with pytest.raises(ModelFileError, match="model bytes: .*SHA-256"):
        xpmlp.Sequential.from_bytes(_flip(7)(GOOD), device="cpu")
    with pytest.raises(ModelFileError, match="model bytes: not a valid safetensors file"):
        xpmlp.Sequential.from_bytes(GOOD[:100], device="cpu")


# -- sweeps: every key of every metadata entry, deleted or given a value of the wrong type ----
WRONG = ["x", -5, 0, None, [], {}, 1.5, True, 10**30, [1, 2]]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _loads_or_refuses(data):
    """Loading either works or raises ModelFileError: no other exception may escape."""
    try:
        return xpmlp.Sequential.from_bytes(data, device="cpu")
    except ModelFileError:
        return None


def test_every_metadata_key_missing_or_mistyped_is_refused_or_harmless():
    header_, _ = _split(GOOD)
    refused = 0
    for key in META_KEYS:
        for path in _paths(json.loads(header_["__metadata__"][key])):
            edits = [_set(path, w) for w in WRONG] if path else [lambda v, w=w: w for w in WRONG]
            if path:
                edits.append(_del(path))
            for edit in edits:
                refused += _loads_or_refuses(meta(key, edit)(GOOD)) is None
    assert refused > 300  # nearly every edit breaks the file; the few that do not are valid values


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(GOOD)))
def test_fuzz_mutated_bytes(changes, cut):
    data = bytearray(GOOD)
    for i, value in changes:
        data[i] = value
    _loads_or_refuses(bytes(data[:cut]) if cut % 3 == 0 else bytes(data))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(META_KEYS), st.integers(0, 10**6), JSON)
def test_fuzz_metadata_values(key, which, value):
    header_, _ = _split(GOOD)
    paths = list(_paths(json.loads(header_["__metadata__"][key])))
    path = paths[which % len(paths)]
    edit = _set(path, value) if path else (lambda v: value)
    _loads_or_refuses(meta(key, edit)(GOOD))

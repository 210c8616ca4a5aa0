"""State dicts of layers and models (PyTorch's convention), configs (Keras's), and the rule that
io only turns them into files: it reads no private field and does not import the model."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import to_numpy
from xpmlp.layers import Dense, Dropout, Standardize
from conftest import Case

PACKAGE = Path(xpmlp.__file__).parent
rng = np.random.default_rng(0)
X = rng.normal(20.0, 5.0, size=(32, 5))
Y = rng.integers(0, 3, size=32)
NAMES = ["layers.0.state.mean", "layers.0.state.std", "layers.1.W", "layers.1.b", "layers.3.extra_state",
         "layers.4.W", "layers.4.b"]


def _model(case, seed=1, fit=True):
    model = xpmlp.MLP([5, 8, 3], activation="tanh", dropout=0.2, standardize=True, seed=seed, **case.model_kwargs())
    if fit:
        model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01), epochs=1, batch_size=8)
    return model


def _host(sd):
    """A state dict with every array on the host, copied (extra states as they are)."""
    return {k: (np.array(to_numpy(v)) if hasattr(v, "shape") else dict(v)) for k, v in sd.items()}


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], dict):
            assert a[k] == b[k], k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_model_state_dict_names_views_and_extra_state(case):
    model = _model(case)
    sd = model.state_dict()
    assert list(sd) == NAMES  # parameters in parameters() order, which is the flat buffer's
    assert [n for n in sd if "state" not in n] == [p.name for p in model.parameters()]
    dropout = model.layers[3]
    assert sd["layers.3.extra_state"] == {"key": dropout.key, "counter": dropout.counter} and dropout.counter == 4
    assert all(type(v) is int for v in sd["layers.3.extra_state"].values())
    json.dumps(sd["layers.3.extra_state"])  # JSON-able
    # the parameters are the live views of the flat buffer: no copy
    host = model.flat.to_host()
    with case.activate():  # CuPy writes on the current device: the model's
        model.flat.data[...] = model.xp.zeros_like(model.flat.data)
        assert not to_numpy(sd["layers.1.W"]).any() and not to_numpy(sd["layers.4.b"]).any()
        model.flat.load_host(host)
    np.testing.assert_array_equal(to_numpy(sd["layers.4.W"]), model.get_weights()[2])


def test_model_state_dict_round_trip(case):
    """Another model (another seed, never fitted) takes the state dict and then predicts the same."""
    a, b = _model(case), _model(case, seed=7, fit=False)
    assert not b.layers[0].adapted
    data = b.flat.data
    b.load_state_dict(a.state_dict())
    assert b.flat.data is data  # written in place: the layers' views stay valid
    _assert_same(_host(b.state_dict()), _host(a.state_dict()))
    order = np.argsort(b.flat.offsets)  # the flat buffer holds the weight matrices first, then the biases
    np.testing.assert_array_equal(b.flat.to_host(), np.concatenate([a.get_weights()[i].reshape(-1) for i in order]))
    np.testing.assert_array_equal(to_numpy(b.forward(case.asarray(X))), to_numpy(a.forward(case.asarray(X))))
    # the same from host (NumPy) arrays, whatever the model's library
    c = _model(case, seed=8, fit=False)
    c.load_state_dict(_host(a.state_dict()))
    _assert_same(_host(c.state_dict()), _host(a.state_dict()))
    # and a layer's own state dict, layer by layer (a layer used directly runs on the current device)
    d = _model(case, seed=9)
    with case.activate():
        for la, ld in zip(a.layers, d.layers):
            ld.load_state_dict(la.state_dict())
    _assert_same(_host(d.state_dict()), _host(a.state_dict()))


def test_layer_state_dicts(case):
    model = _model(case)
    dense, dropout, standardize = model.layers[1], model.layers[3], model.layers[0]
    assert sorted(dense.state_dict()) == ["W", "b"] and dense.state_dict()["W"] is dense.parameters["W"].value
    assert sorted(standardize.state_dict()) == ["mean", "std"]
    assert dropout.state_dict() == {"extra_state": {"key": dropout.key, "counter": dropout.counter}}
    assert model.layers[2].state_dict() == {}
    dropout.load_state_dict({"extra_state": {"key": 5, "counter": 9}})
    assert (dropout.key, dropout.counter) == (5, 9)
    with case.activate():
        standardize.load_state_dict(standardize.state_dict())  # in place
    standardize.load_state_dict({})  # a model saved before it was adapted: no statistics
    assert not standardize.adapted and standardize.state_dict() == {}


def _bad_cases(model, case):
    sd = model.state_dict()
    other = "int32"  # a dtype no parameter has, on every backend (no_float64 refuses float64)
    wrong_dtype = case.asarray(np.zeros(tuple(sd["layers.4.W"].shape), dtype=other))
    return {
        "missing": ({k: v for k, v in sd.items() if k != "layers.4.b"}, "layers.4"),
        "unexpected name": ({**sd, "layers.4.c": sd["layers.4.b"]}, "'c'"),
        "no such layer": ({**sd, "layers.9.W": sd["layers.4.W"]}, "layers.9.W"),
        "shape": ({**sd, "layers.4.W": case.asarray(np.zeros((3, 8)))}, "shape"),
        "dtype": ({**sd, "layers.4.W": wrong_dtype}, "dtype"),
        "host dtype": ({**_host(sd), "layers.4.W": np.zeros((8, 3), dtype=other)}, "dtype"),
        "one statistic": ({k: v for k, v in sd.items() if k != "layers.0.state.std"}, "mean"),
        "statistic shape": ({**sd, "layers.0.state.std": case.asarray(np.ones(4))}, "shape"),
        "extra state": ({**sd, "layers.3.extra_state": {"key": "x", "counter": 0}}, "Dropout extra state"),
        "no extra state": ({k: v for k, v in sd.items() if k != "layers.3.extra_state"}, "extra_state"),
    }


@pytest.mark.parametrize("what", ["missing", "unexpected name", "no such layer", "shape", "dtype", "host dtype",
                                  "one statistic", "statistic shape", "extra state", "no extra state"])
def test_load_state_dict_refuses_and_changes_nothing(case, what):
    model, source = _model(case), _model(case, seed=5)
    bad, message = _bad_cases(source, case)[what]
    before = _host(model.state_dict())
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(bad)
    _assert_same(_host(model.state_dict()), before)  # the good entries before the bad one were not written


def test_layer_load_state_dict_refuses_and_changes_nothing():
    layer = Dense(3, in_features=2)
    model = xpmlp.Sequential([layer], device="cpu", seed=0)
    before = layer.params["W"].copy()
    for bad, message in [({"W": np.zeros((2, 3), np.float32)}, "missing"),
                         ({"W": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}, "shape"),
                         ({"W": np.zeros((2, 3)), "b": np.zeros(3, np.float32)}, "dtype"),
                         ({"W": [[0.0] * 3] * 2, "b": np.zeros(3, np.float32)}, "not an array")]:
        with pytest.raises(ValueError, match=message):
            layer.load_state_dict(bad)
        np.testing.assert_array_equal(layer.params["W"], before)
    assert model.flat.data.shape == (9,)
    with pytest.raises(ValueError, match="not built"):
        Standardize().load_state_dict({"mean": np.zeros(2), "std": np.ones(2)})
    with pytest.raises(ValueError, match="unexpected .extra_state."):
        layer.load_state_dict({**layer.state_dict(), "extra_state": {"key": 1}})
    with pytest.raises(ValueError, match="Dropout extra state"):
        Dropout(0.5).set_extra_state({"key": 1, "counter": -1})


def test_config_round_trip(case):
    model = _model(case, fit=False)
    config = model.get_config()
    assert json.loads(json.dumps(config)) == config
    assert [e["class"] for e in config["layers"]] == ["Standardize", "Dense", "Tanh", "Dropout", "Dense"]
    again = xpmlp.Sequential.from_config(config, **{k: v for k, v in case.model_kwargs().items() if k != "dtype"})
    assert again.get_config() == config and again.dtype == case.dtype
    # a config and a seed give the same fresh weights (Keras: from_config builds, it does not copy weights)
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown layer class"):
        xpmlp.Sequential.from_config({**config, "layers": [{"class": "Conv2D", "config": {}}]})


def test_rng_state_round_trip():
    model = xpmlp.MLP([2, 3], seed=3, device="cpu")
    state = model.get_rng_state()
    json.dumps(state)
    first = (model.shuffle_rng.integers(2**63), model.get_rng_state())
    other = xpmlp.MLP([2, 3], seed=4, device="cpu")
    other.set_rng_state(state)
    assert other.shuffle_rng.integers(2**63) == first[0]
    assert other.get_rng_state() == first[1]


def test_unbuilt_model_has_no_state_dict():
    model = xpmlp.Sequential([Dense(2)], device="cpu")
    with pytest.raises(ValueError, match="no weights yet"):
        model.state_dict()


# -- io only turns state dicts into files ---------------------------------------------------------
def _tree(name):
    return ast.parse((PACKAGE / name).read_text(), filename=name)


def test_io_reads_no_private_field():
    """No ``x._name`` attribute (dunders such as ``type(x).__name__`` aside) and no getattr/setattr/
    hasattr of a ``"_name"`` string anywhere in io.py: its own helpers are module-level names."""
    found = []
    for node in ast.walk(_tree("io.py")):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append(f"line {node.lineno}: .{node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    assert not found, f"io.py reads private fields: {found}"


def test_the_private_field_check_catches_one():
    """The check above on a line that does what io.py used to (model._init_rng)."""
    tree = ast.parse("state = model._init_rng.bit_generator.state")
    assert [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")] == ["_init_rng"]


def _imports(name) -> set:
    """Every module io.py or model.py imports, anywhere in the file (inside functions too)."""
    found = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            found |= {base} if node.module else {f"{base}{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_no_import_circle_between_io_and_model():
    io_imports, model_imports = _imports("io.py"), _imports("model.py")
    assert not {".model", "xpmlp.model", ".estimators", ".train"} & io_imports, io_imports
    assert ".io" in model_imports  # the one direction: the model uses io to write and read its files
    # and at run time: io's modules, imported into a bare package (xpmlp/__init__ not run), leave
    # the model out; the model's bring io in
    code = ("import importlib, sys, types; p = types.ModuleType('xpmlp'); p.__path__ = [sys.argv[1]]; "
            "sys.modules['xpmlp'] = p; importlib.import_module('xpmlp.' + sys.argv[2]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('xpmlp.'))))")
    def closure(module):
        out = subprocess.run([sys.executable, "-c", code, str(PACKAGE), module], capture_output=True, text=True,
                             check=True)
        return set(out.stdout.split())
    io_closure = closure("io")
    assert "xpmlp.io" in io_closure and "xpmlp.model" not in io_closure, io_closure
    assert "xpmlp.io" in closure("model")


def test_every_way_to_save_and_load_gives_the_same_model(tmp_path):
    """Every way to save and load a model gives the same model."""
    model = _model(Case("numpy", None, "float32"))
    model.save(tmp_path / "a.safetensors")
    model.save(tmp_path / "b.safetensors")
    expected = _host(model.state_dict())
    loaded = [xpmlp.Sequential.load(tmp_path / "a.safetensors"), xpmlp.load(tmp_path / "b.safetensors"),
              xpmlp.model.load(tmp_path / "a.safetensors"), xpmlp.load(tmp_path / "b.safetensors"),
              xpmlp.Sequential.from_bytes(model.to_bytes()), xpmlp.Sequential.from_bytes(model.to_bytes())]
    for other in loaded:
        assert type(other) is xpmlp.Sequential and other.get_config() == model.get_config()
        _assert_same(_host(other.state_dict()), expected)
        assert other.get_rng_state() == model.get_rng_state() and other.optimizer.t == model.optimizer.t
        for key, value in other.optimizer.state_dict()["state"].items():
            np.testing.assert_array_equal(value, model.optimizer.state_dict()["state"][key])


# Where another object's "_name" is read on purpose: the model's own class method, and CuPy's
# module that holds its matmul compute type (what CUPY_TF32 sets; CuPy has no public switch).
ALLOWED_PRIVATE = {("model.py", "Sequential._from_saved"), ("backend.py", "cupy._core._routines_linalg"),
                   ("backend.py", "cupy._core")}


def test_no_module_reads_another_objects_private_fields():
    """Every ``x._name`` in the package is on ``self`` or ``cls`` (each object owns its state)."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if (path.name, ast.unparse(node)) not in ALLOWED_PRIVATE:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpmlp
from xpmlp import ModelFileError, to_numpy
from xpmlp.io import FORMAT_VERSION
from conftest import Case

rng = np.random.default_rng(0)
X = rng.normal(50.0, 10.0, size=(40, 5))  # unscaled on purpose: Standardize state must survive
Y = (X[:, 0] > 50).astype(np.int64) + (X[:, 1] > 50)


def _model(case, **kw):
    return xpmlp.MLP([5, 8, 3], activation="tanh", dropout=0.1, standardize=True, seed=1,
                     **case.model_kwargs(), **kw)


def test_save_on_one_backend_load_on_another(case, tmp_path):
    """Stands in for GPU -> CPU and back: arrays are stored on the host."""
    model = _model(case)
    model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.AdamW(lr=0.01), epochs=2, batch_size=8)
    path = tmp_path / "m.safetensors"
    model.save(path)
    expected = to_numpy(model.predict(X))
    on_numpy = xpmlp.load(path, device="cpu")
    for a, b in zip(on_numpy.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the stored numbers are exact
    # another library's kernels round differently: equal to rounding, not bit for bit
    np.testing.assert_allclose(to_numpy(on_numpy.predict(X)), expected, rtol=case.rtol, atol=case.rtol * 1e-3)
    back = xpmlp.load(path, **{k: v for k, v in case.model_kwargs().items() if k != "dtype"})
    np.testing.assert_array_equal(to_numpy(back.predict(X)), expected)  # same backend: identical
    assert back.dtype == case.dtype and isinstance(back.optimizer, xpmlp.AdamW)
    assert back.optimizer.t == model.optimizer.t and back.optimizer.weight_decay == 0.01


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    case = Case("numpy", None, "float64")
    straight = _model(case)
    straight.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01), epochs=4, batch_size=8)
    first = _model(case)
    first.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01), epochs=2, batch_size=8)
    first.save(tmp_path / "ckpt.safetensors")
    resumed = xpmlp.load(tmp_path / "ckpt.safetensors", device="cpu")
    resumed.fit(X, Y, epochs=2, batch_size=8)  # loss, optimiser, shuffle and dropout RNGs from the file
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_weights_and_load_weights(tmp_path):
    a = xpmlp.MLP([5, 4, 3], seed=1, device="cpu", standardize=True)
    a.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    a.save_weights(tmp_path / "w.safetensors")
    b = xpmlp.MLP([5, 4, 3], seed=2, device="cpu", standardize=True)
    b.load_weights(tmp_path / "w.safetensors")
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(to_numpy(a.forward(a.backend.from_host(X.astype("float32")))),
                                  to_numpy(b.forward(b.backend.from_host(X.astype("float32")))))
    other = xpmlp.MLP([5, 6, 3], seed=1, device="cpu", standardize=True)
    with pytest.raises(ModelFileError, match=r"layers.1.W has shape \(5, 4\), the model expects \(5, 6\)"):
        other.load_weights(tmp_path / "w.safetensors")
    deeper = xpmlp.MLP([5, 4, 4, 3], seed=1, device="cpu", standardize=True)
    with pytest.raises(ModelFileError, match="do not match this model's architecture"):
        deeper.load_weights(tmp_path / "w.safetensors")


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    model.save(path)
    before = path.read_bytes()

    def crash(fd):
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    monkeypatch.setattr(os, "fsync", crash)
    model.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


KILLED_WRITER = """
import sys, numpy as np, xpmlp
model = xpmlp.MLP([784, 1024, 1024, 10], seed=0, device="cpu")
print("ready", flush=True)
while True:
    model.set_weights([w + 1 for w in model.get_weights()])
    model.save(sys.argv[1])
"""


def test_killed_during_save_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "big.safetensors"
    xpmlp.MLP([784, 1024, 1024, 10], seed=0, device="cpu").save(path)
    for delay in (0.3, 0.55, 0.8):
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        loaded = xpmlp.load(path, device="cpu")  # whole and valid, old or new
        assert loaded.n_params == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10


def _saved(tmp_path):
    path = tmp_path / "good.safetensors"
    xpmlp.MLP([5, 4, 3], seed=1, device="cpu").save(path)
    return path


def test_truncated_and_corrupted_files(tmp_path):
    data = _saved(tmp_path).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(ModelFileError, match="cut.safetensors: not a valid safetensors file, or truncated or corrupted"):
        xpmlp.load(tmp_path / "cut.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(data[:8] + b"#" * 20 + data[28:])
    with pytest.raises(ModelFileError, match="bad.safetensors: not a valid safetensors file"):
        xpmlp.load(tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="nothere.safetensors: no such file"):
        xpmlp.load(tmp_path / "nothere.safetensors")


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_files_are_refused_without_running_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelFileError, match="a pickle or zip archive.*never unpickles"):
        xpmlp.load(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2)}, tmp_path / "t.pt")
    with pytest.raises(ModelFileError, match="a pickle or zip archive"):
        xpmlp.load(tmp_path / "t.pt")


def test_foreign_and_future_files(tmp_path):
    import safetensors.numpy

    safetensors.numpy.save_file({"weight": np.zeros(3, np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="a safetensors file, but not an xpmlp file"):
        xpmlp.load(tmp_path / "foreign.safetensors")
    safetensors.numpy.save_file({"w": np.zeros(1)}, str(tmp_path / "future.safetensors"),
                                metadata={"format": "xpmlp", "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(ModelFileError, match=f"format version '{FORMAT_VERSION + 1}' is not one this xpmlp reads"):
        xpmlp.load(tmp_path / "future.safetensors")


def test_saving_an_unbuilt_model_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no weights yet"):
        xpmlp.Sequential([xpmlp.Dense(2)], device="cpu").save(tmp_path / "x.safetensors")


def test_cli_save_then_load(tmp_path, capsys):
    from xpmlp.cli import main

    path = tmp_path / "xor.safetensors"
    assert main(["train", "xor", "--device", "cpu", "--save", str(path)]) == 0
    assert f"model saved to {path}" in capsys.readouterr().out
    model = xpmlp.load(path, device="cpu")
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    np.testing.assert_array_equal(to_numpy(model.predict(corners)).argmax(axis=1), [0, 1, 1, 0])


# -- where and how a save writes (issue 13, point 1) ---------------------------------------------
def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if ".xpmlp-" in p.name)


def _special(kind, path):
    if kind == "directory":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)  # relative: socket paths are limited to about 100 bytes
        return sock
    elif kind == "device":
        path.symlink_to("/dev/null")


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "device"])
def test_save_refuses_a_path_that_is_not_a_regular_file(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "target"
    handle = _special(kind, path)
    before = os.lstat(path)
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    expected = {"directory": "a directory", "fifo": "a FIFO", "socket": "a socket", "device": "a device"}[kind]
    for save in (model.save, model.save_weights):
        with pytest.raises(ModelFileError, match=f"{path}.* exists and is {expected}.*nothing was changed"):
            save(path)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # the same thing, untouched
    if kind == "directory":
        assert (path / "keep.txt").read_text() == "mine"
    if kind == "device":
        assert os.readlink(path) == "/dev/null"
    assert _temporaries(tmp_path) == []
    if handle is not None:
        handle.close()


def test_save_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "store" / "model.safetensors"
    link = tmp_path / "links" / "current.safetensors"
    xpmlp.MLP([5, 4, 3], seed=1, device="cpu").save(target)
    link.symlink_to("../store/model.safetensors")
    new = xpmlp.MLP([5, 4, 3], seed=2, device="cpu")
    new.save(link)
    assert link.is_symlink() and os.readlink(link) == "../store/model.safetensors"
    for a, b in zip(xpmlp.load(target, device="cpu").get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _temporaries(tmp_path / "links") == _temporaries(tmp_path / "store") == []
    dangling = tmp_path / "links" / "next.safetensors"  # a link to a file not yet written
    dangling.symlink_to("../store/next.safetensors")
    new.save_weights(dangling)
    assert dangling.is_symlink() and (tmp_path / "store" / "next.safetensors").is_file()


def test_save_keeps_permission_bits_and_new_files_follow_the_umask(tmp_path):
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    existing = tmp_path / "shared.safetensors"
    model.save(existing)
    for mode in (0o640, 0o604, 0o600):
        os.chmod(existing, mode)
        model.save(existing)
        assert existing.stat().st_mode & 0o7777 == mode
    old = os.umask(0o027)  # process-wide, so set only here and always restored
    try:
        for umask in (0o022, 0o027, 0o077):
            os.umask(umask)
            path = tmp_path / f"new-{umask:o}.safetensors"
            model.save(path)
            model.save_weights(tmp_path / f"w-{umask:o}.safetensors")
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask
            assert (tmp_path / f"w-{umask:o}.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(old)


def test_a_save_removes_stale_temporaries_of_its_own_only(tmp_path):
    """Temporary files of killed saves go at the next save; those of live writers, files of other
    names and other programs' files stay (a concurrent saver must not lose its file)."""
    from xpmlp.io import _HOST

    path = tmp_path / "m.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that no longer runs
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".m.safetensors.xpmlp-{_HOST}-{dead.pid}-0123abcd.tmp": False,     # killed writer: removed
            f".m.safetensors.xpmlp-{_HOST}-{live.pid}-0123abcd.tmp": True,      # live writer: kept
            f".m.safetensors.xpmlp-{_HOST}-{os.getpid()}-0123abcd.tmp": True,   # this process: kept
            f".m.safetensors.xpmlp-ffffffff-{dead.pid}-0123abcd.tmp": True,     # another host, recent: kept
            f".m.safetensors.xpmlp-eeeeeeee-{dead.pid}-0123abcd.tmp": False,    # another host, 2 days old
            f".other.safetensors.xpmlp-{_HOST}-{dead.pid}-0123abcd.tmp": True,  # another target's
            ".m.safetensors.tmp": True, "m.safetensors.xpmlp-1.tmp": True, "notes.txt": True,
        }
        for name in names:
            (tmp_path / name).write_bytes(b"partial")
        two_days_ago = time.time() - 2 * 86400
        os.utime(tmp_path / f".m.safetensors.xpmlp-eeeeeeee-{dead.pid}-0123abcd.tmp", (two_days_ago, two_days_ago))
        xpmlp.MLP([5, 4, 3], seed=1, device="cpu").save(path)
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {name for name, kept in names.items() if kept} | {"m.safetensors"}
    finally:
        live.kill()
        live.wait()


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    model.save(path)
    before = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    model.fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    with pytest.raises(PermissionError):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_a_model_saved_before_its_statistics_were_learned_loads(tmp_path):
    """Standardize's statistics are in a file only once fit has learned them: both or neither."""
    model = xpmlp.MLP([5, 4, 3], standardize=True, seed=1, device="cpu", in_features=5)
    model.save(tmp_path / "m.safetensors")
    loaded = xpmlp.load(tmp_path / "m.safetensors", device="cpu")
    assert not loaded.layers[0].adapted
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- files of the last release ------------------------------------------------------------------
RELEASE = Path(__file__).parent / "data" / "release-c1454b0"  # made by tests/data/make_release_fixture.py


def _release_data():
    """The rows the release fixture was trained on (the recipe of make_release_fixture.py)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(24, 4)) * 3.0 + 1.0, rng.integers(0, 3, size=24)


def test_release_files_still_load():
    """A model file and a weights file written by release c1454b0 load here to what that release
    itself read back from them (tests/data/release-c1454b0.expected.json, written by that release)."""
    expected = json.loads(RELEASE.with_suffix(".expected.json").read_text())
    probe = np.array(expected["probe"])
    model = xpmlp.load(RELEASE.with_suffix(".safetensors"), device="cpu")
    # the same weights through the same float32 forward pass
    np.testing.assert_allclose(model.predict(probe), expected["predictions"], rtol=1e-6, atol=1e-7)
    opt = model.optimizer
    assert type(opt).__name__ == expected["optimizer"]["class"] and opt.t == expected["optimizer"]["t"] == 6
    assert opt.current_lr() == expected["optimizer"]["lr"]
    state = opt.state_dict()["state"]
    for key in ("m", "v"):  # the release kept one buffer per parameter; here one flat buffer each,
        # laid out as the parameters are in model.flat (weight matrices first)
        flat = np.concatenate([np.array(s[key], dtype=np.float32) for s in expected["optimizer"]["state"]])
        np.testing.assert_array_equal(to_numpy(state[key]), model.flat.from_parameter_order(flat))
    assert [[i, layer.key, layer.counter] for i, layer in enumerate(model.layers)
            if isinstance(layer, xpmlp.Dropout)] == expected["dropout"]
    generators = {name: np.random.default_rng(0) for name in ("init", "shuffle")}
    for name, generator in generators.items():
        generator.bit_generator.state = model.get_rng_state()[name]
    assert int(generators["shuffle"].integers(2**63)) == expected["rng"]["shuffle_next"]
    assert int(generators["init"].integers(2**63)) == expected["rng"]["init_next"]

    # training resumed from the file continues as the release continued it (schedule, Adam
    # moments, shuffles and dropout masks all from the file)
    X, y = _release_data()
    model.fit(X, y, epochs=1, batch_size=8)
    np.testing.assert_allclose(model.predict(probe), expected["resumed_predictions"], rtol=1e-5, atol=1e-6)

    fresh = xpmlp.MLP([4, 8, 3], dropout=0.1, standardize=True, seed=1, device="cpu")
    fresh.load_weights(RELEASE.with_suffix(".weights.safetensors"))
    with pytest.warns(UserWarning, match="no loss"):  # as the release's run: a weights file has no loss
        got = fresh.predict(probe)
    np.testing.assert_allclose(got, expected["weights_only_predictions"], rtol=1e-6, atol=1e-7)

"""Fault injection: what survives when things go wrong at the worst moment.

Each test makes a fault happen on purpose and checks what the user is promised (see the
"Reliability" section of the README and the docstring of :mod:`xpmlp.io`):

- kill during save: a child process saves over a good file again and again and is SIGKILLed
  at random moments, and once deterministically in the middle of its write. After each kill
  the file loads and is one whole model the child wrote (never a mix, never truncated), and
  the next save removes the temporary file the killed save left;
- an exception during save (KeyboardInterrupt in the write, a failing rename, a full disk):
  the previous file is intact and no temporary file is left;
- malformed files: the corpus of :mod:`test_io_untrusted`, each refused with ModelFileError;
- interrupt during fit: the training cases, in the section at the end.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import xpmlp
from xpmlp import ModelFileError
from xpmlp.callbacks import Callback, CSVLogger

SHAPE = [256, 1024, 1024, 10]  # about 1.3 million parameters: a 5 MB file, long enough to be caught writing

WRITER = """
import os, sys, time, numpy as np, xpmlp
model = xpmlp.MLP({shape}, seed=0, device="cpu")
shapes = [w.shape for w in model.get_weights()]
if sys.argv[2] == "stall":  # stop inside the save, between writing the bytes and the rename
    def stall(fd):
        print("writing", flush=True)
        time.sleep(60)
    os.fsync = stall
print("ready", flush=True)
k = int(sys.argv[3])
while True:
    model.set_weights([np.full(s, k, np.float32) for s in shapes])  # every weight of save number k is k
    model.save(sys.argv[1])
    k += 1
""".format(shape=SHAPE)


def _temporaries(folder):
    """Every file beside the model: a save's temporary file, whatever it is named."""
    return sorted(p.name for p in folder.iterdir() if p.name != "model.safetensors")


def _saved_value(path) -> int:
    """The k of the one whole model the file holds (every weight equals k)."""
    weights = xpmlp.load(path, device="cpu").get_weights()
    assert [w.shape for w in weights] == [w.shape for w in xpmlp.MLP(SHAPE, seed=0, device="cpu").get_weights()]
    values = {float(v) for w in weights for v in np.unique(w)}
    assert len(values) == 1, f"the file mixes weights of different saves: {sorted(values)[:5]}"
    return int(values.pop())


def _start(path, mode, k):
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode, str(k)], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    return child


def _kill(child):
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


def _good_file(path, k=0):
    model = xpmlp.MLP(SHAPE, seed=0, device="cpu")
    model.set_weights([np.full(w.shape, k, np.float32) for w in model.get_weights()])
    model.save(path)
    return model


def test_killed_inside_a_save_keeps_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "model.safetensors"
    model = _good_file(path, k=7)
    child = _start(path, "stall", 100)
    assert child.stdout.readline().strip() == b"writing"  # its bytes are written, not yet renamed
    _kill(child)
    assert len(_temporaries(tmp_path)) == 1  # what a killed save cannot clean up
    assert _saved_value(path) == 7  # the previous model, whole
    model.save(path)
    assert _temporaries(tmp_path) == []


@pytest.mark.slow
def test_killed_at_random_moments_during_saves(tmp_path):
    path = tmp_path / "model.safetensors"
    model = _good_file(path, k=0)
    seen, delays = 0, np.random.default_rng(13).uniform(0.0, 0.6, size=6)
    for run, delay in enumerate(delays):
        child = _start(path, "loop", 1000 * (run + 1))  # run r writes r000, r001, ...
        time.sleep(delay)
        _kill(child)
        k = _saved_value(path)
        assert k == seen or 1000 * (run + 1) <= k < 1000 * (run + 2), (k, seen)  # the old or a new model
        seen = k
        model.set_weights([np.full(w.shape, k, np.float32) for w in model.get_weights()])
        model.save(path)  # the next save removes what a killed save left
        assert _temporaries(tmp_path) == []


# -- an exception during save -----------------------------------------------------------------
class _FailingFile:
    """Stands in for the temporary file: writes half of the bytes, then raises ``error``."""

    def __init__(self, real, error):
        self.real, self.error = real, error

    def write(self, data):
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise self.error

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EDQUOT, "Disk quota exceeded")], ids=["interrupt", "ENOSPC", "EDQUOT"])
@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_an_error_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, error, method):
    path = tmp_path / "m.safetensors"
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    getattr(model, method)(path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: _FailingFile(real_fdopen(*args, **kwargs), error))
    model.set_weights([w + 1 for w in model.get_weights()])
    with pytest.raises(type(error)):
        getattr(model, method)(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_a_failing_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    model.save(path)
    before = path.read_bytes()

    def refuse(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="cross-device"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    """ModelCheckpoint saves through model.save: a full disk at epoch 2 keeps epoch 1's file."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 5)), rng.integers(0, 3, size=32)
    path = tmp_path / "ckpt.safetensors"
    model = xpmlp.MLP([5, 4, 3], seed=1, device="cpu")
    model.fit(X, y, loss="softmax_cross_entropy", epochs=1, callbacks=[xpmlp.callbacks.ModelCheckpoint(path)])
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: _FailingFile(
        real_fdopen(*args, **kwargs), OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        model.fit(X, y, epochs=1, callbacks=[xpmlp.callbacks.ModelCheckpoint(path)])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


# -- malformed files --------------------------------------------------------------------------
def test_every_malformed_file_of_the_corpus_is_refused(tmp_path):
    """The corpus of test_io_untrusted.py (where each case is its own test), run as one fault sweep."""
    from test_io_untrusted import CORPUS, GOOD

    path = tmp_path / "bad.safetensors"
    for name, make, message in CORPUS:
        path.write_bytes(make(GOOD))
        with pytest.raises(ModelFileError, match=message):
            xpmlp.load(path, device="cpu")


# -- interrupt during fit ---------------------------------------------------------------------
# KeyboardInterrupt inside an update or from a metric, and a real SIGINT to a process running fit:
# the model is left at the end of the last recorded epoch, callbacks end, the CSV log is whole.


def _fault_data():
    r = np.random.default_rng(3)
    Xf = r.normal(size=(96, 4))
    return Xf, (Xf[:, 0] > 0).astype(np.int64)


class _Keep(Callback):
    """Each epoch's weights, optimiser state and step count, Dropout counters; on_train_end calls."""

    def __init__(self):
        self.epochs, self.ended = [], 0

    def on_epoch_end(self, epoch, logs=None):
        opt = self.model.optimizer
        state = opt.state_dict()
        self.epochs.append((self.model.get_weights(), state["t"],
                            {k: np.array(v) for k, v in state["state"].items()},
                            [getattr(layer, "counter", None) for layer in self.model.layers]))

    def on_train_end(self, logs=None):
        self.ended += 1


def _assert_at_epoch_end(model, kept):
    weights, t, state, counters = kept
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))
    now = model.optimizer.state_dict()
    assert now["t"] == t and sorted(now["state"]) == sorted(state)
    assert all(np.array_equal(np.asarray(now["state"][k]), state[k]) for k in state)
    assert [getattr(layer, "counter", None) for layer in model.layers] == counters


def test_keyboard_interrupt_inside_an_update_leaves_the_last_completed_epoch(tmp_path, monkeypatch):
    Xf, yf = _fault_data()
    model = xpmlp.MLP([4, 16, 16, 2], dropout=0.2, seed=0, device="cpu", dtype="float64")
    opt = xpmlp.Adam(lr=0.01)
    keep, log = _Keep(), CSVLogger(tmp_path / "log.csv")
    make_update, calls = opt.make_update, {"n": 0}

    def interrupted(xp, kernels):
        update = make_update(xp, kernels)

        def update_or_interrupt(data, grad, decayed=None):
            calls["n"] += 1
            if calls["n"] == 8:  # epoch 3 (3 steps per epoch), in the middle of its second step
                update(data, grad, decayed)  # the whole update applied, t advanced ...
                data[: data.shape[0] // 2] = 0.0  # ... and half of the weights overwritten: then stopped
                raise KeyboardInterrupt
            update(data, grad, decayed)
        return update_or_interrupt

    monkeypatch.setattr(opt, "make_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(Xf, yf, loss="softmax_cross_entropy", optimizer=opt, epochs=5, batch_size=32,
                  callbacks=[keep, log])
    assert len(keep.epochs) == 2 and len(model.history.epoch) == 2
    _assert_at_epoch_end(model, keep.epochs[-1])
    assert keep.ended == 1 and log._file is None


def test_keyboard_interrupt_from_a_metric_leaves_the_last_recorded_epoch():
    Xf, yf = _fault_data()
    model = xpmlp.MLP([4, 8, 2], seed=0, device="cpu", dtype="float64")
    keep, epochs = _Keep(), {"n": 0}

    def metric(y_true, y_pred):
        epochs["n"] += 1
        if epochs["n"] == 3:
            raise KeyboardInterrupt
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        model.fit(Xf, yf, loss="softmax_cross_entropy", epochs=5, batch_size=16, metrics=[metric], callbacks=[keep])
    assert len(model.history.epoch) == 2 and keep.ended == 1
    _assert_at_epoch_end(model, keep.epochs[-1])


_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import xpmlp
    from xpmlp.callbacks import Callback, CSVLogger, ModelCheckpoint

    out = sys.argv[1]
    r = np.random.default_rng(0)
    X = r.normal(size=(4000, 20)); y = (X[:, 0] > 0).astype(np.int64)

    class Ready(Callback):
        def on_epoch_end(self, epoch, logs=None):
            open(f"{out}/ready-{epoch + 1}", "w").close()

    model = xpmlp.MLP([20, 64, 64, 2], dropout=0.1, seed=0, device="cpu", dtype="float64")
    try:
        model.fit(X, y, loss="softmax_cross_entropy", epochs=1000, batch_size=8,
                  callbacks=[CSVLogger(f"{out}/log.csv"), ModelCheckpoint(out + "/e{epoch}.safetensors"), Ready()])
    except KeyboardInterrupt:
        model.save(f"{out}/final.safetensors")
        json.dump({"epochs": len(model.history.epoch), "t": model.optimizer.t}, open(f"{out}/result.json", "w"))
        sys.exit(0)
    sys.exit(3)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_sigint_during_fit_leaves_a_model_at_its_last_completed_epoch(tmp_path):
    import json

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    # the child imports the xpmlp this test imports (not whichever one is installed)
    root = os.path.dirname(os.path.dirname(os.path.abspath(xpmlp.__file__)))
    env = {**os.environ, "XPMLP_DEVICE": "cpu", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready-2").exists():  # two epochs done: the third is running
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child did not finish two epochs in time"
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=60) == 0, child.stderr.read().decode()
    result = json.loads((tmp_path / "result.json").read_text())
    epochs, steps_per_epoch = result["epochs"], 4000 // 8
    assert epochs >= 2 and result["t"] == epochs * steps_per_epoch  # whole epochs only: no half step
    final = xpmlp.load(tmp_path / "final.safetensors", device="cpu")
    assert final.optimizer.t == epochs * steps_per_epoch
    checkpoint = tmp_path / f"e{epochs}.safetensors"
    if checkpoint.exists():  # absent only if the signal landed while that epoch's checkpoint was written
        last = xpmlp.load(checkpoint, device="cpu")
        assert all(np.array_equal(a, b) for a, b in zip(final.get_weights(), last.get_weights(), strict=True))
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss") and len(rows) - 1 in (epochs - 1, epochs)  # closed, whole rows
    assert all(row.count(",") == rows[0].count(",") for row in rows)

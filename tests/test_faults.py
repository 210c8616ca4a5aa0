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
import time

import numpy as np
import pytest

import xpmlp
from xpmlp import ModelFileError

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
# The training engineer's cases (KeyboardInterrupt, divergence or a raising callback ending
# fit: on_train_end called, CSVLogger closed, history set, model at the last whole step) go
# here; the coordinator moves them in.

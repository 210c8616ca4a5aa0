"""fit's loop: History and the progress bar are ordinary callbacks, divergence is a callback hook, fit stays small."""

import ast
import inspect
import math
import sys
import textwrap
import warnings

import numpy as np
import pytest

import xpmlp
from fit_data import small_mlp, three_classes
import xpmlp.train
from xpmlp.backend import to_numpy
from xpmlp.callbacks import Callback, History, LearningRateScheduler, ProgbarLogger, TerminateOnNaN

X, Y, Xv, Yv = three_classes(60, 20)
CE = "softmax_cross_entropy"
HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_divergence", "on_train_end")
overflow_is_the_point = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning",
                                                   "ignore:X looks unscaled:UserWarning")


_model = small_mlp


def _event(name, args):
    """A hook call as (hook, its arguments), logs as a plain dict copy (callbacks after may not change it)."""
    return (name, *(dict(a) if isinstance(a, dict) else a for a in args))


class Spy(Callback):
    """A user callback that records every hook call, and what fit told it before training."""

    def __init__(self, log=None):
        self.calls, self.log = [], log

    def check(self, log_keys):
        self.seen = (self.model, dict(self.params), list(log_keys))


for _name in HOOKS:
    def _hook(self, *args, _name=_name):
        self.calls.append(_event(_name, args))
        if self.log is not None:
            self.log.append((type(self).__name__, _event(_name, args)))
        return False if _name == "on_divergence" else None
    setattr(Spy, _name, _hook)


def _spy_on(monkeypatch, cls, log):
    """Record every hook call fit makes on any instance of ``cls`` into ``log``, then run the real hook."""
    for name in HOOKS:
        def recording(self, *args, _name=name, _real=getattr(cls, name)):
            log.append((cls.__name__, _event(_name, args)))
            return _real(self, *args)
        monkeypatch.setattr(cls, name, recording)


def _diverging_fit(model, callbacks=(), **kw):
    # epoch 1 is sane; from epoch 2 a learning rate of 1e300 overflows
    boom = LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch == 0 else 1e300)
    return model.fit(X * 1e3, Y, loss=CE, optimizer=xpmlp.SGD(lr=1e-3), epochs=4, batch_size=16,
                     callbacks=[boom, *callbacks], **kw)


# -- History and the progress bar are ordinary callbacks --------------------------------------------------
def test_history_and_progress_get_the_same_calls_as_a_user_callback_in_the_same_order(monkeypatch, capsys):
    log = []
    _spy_on(monkeypatch, History, log)
    _spy_on(monkeypatch, ProgbarLogger, log)
    spy = Spy(log)
    model = _model()
    history = model.fit(X, Y, loss=CE, epochs=3, batch_size=25, verbose=2, metrics=["accuracy"], callbacks=[spy])
    assert model.history is history
    # what the user's callback saw, written out by hand: 60 rows in batches of 25 -> 3 batches per epoch
    names = [c[0] for c in spy.calls]
    assert names == ["on_train_begin"] + ["on_epoch_begin", *["on_batch_end"] * 3, "on_epoch_end"] * 3 + ["on_train_end"]
    assert [c[1] for c in spy.calls if c[0] == "on_batch_end"] == [0, 1, 2] * 3
    assert [c[1] for c in spy.calls if c[0] in ("on_epoch_begin", "on_epoch_end")] == [0, 0, 1, 1, 2, 2]
    ends = [c for c in spy.calls if c[0] == "on_epoch_end"]
    assert all(logs == {k: v[e] for k, v in history.history.items()} for (_, e, logs) in ends)
    assert spy.seen == (model, {"verbose": 2, "epochs": 3, "steps": 3, "rank": 0, "size": 1},
                        ["loss", "accuracy", "lr", "epoch_time", "samples_per_s"])
    # fit's own History and ProgbarLogger got exactly the same calls, each just before the user's
    assert [c for who, c in log if who == "History"] == spy.calls
    assert [c for who, c in log if who == "ProgbarLogger"] == spy.calls
    assert [who for who, _ in log] == ["History", "ProgbarLogger", "Spy"] * len(spy.calls)
    assert capsys.readouterr().out.count("epoch ") == 3


def test_fit_adds_no_progress_callback_when_quiet(monkeypatch, capsys):
    log = []
    _spy_on(monkeypatch, ProgbarLogger, log)
    _model().fit(X, Y, loss=CE, epochs=2, verbose=0)
    assert log == [] and capsys.readouterr().out == ""


def test_a_users_own_history_records_what_fit_returns_and_starts_afresh_each_fit():
    mine, model = History(), _model()
    model.fit(X, Y, loss=CE, epochs=2, callbacks=[mine])
    returned = model.fit(X, Y, epochs=3, validation_data=(Xv, Yv), metrics=["accuracy"], callbacks=[mine])
    assert mine is not returned and mine.epoch == returned.epoch == [0, 1, 2]
    assert mine.history == returned.history and list(mine.history) == [
        "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time", "samples_per_s"]


def test_history_holds_each_epochs_loss_and_metrics():
    """With a learning rate of 0 the weights never move, so every epoch's training loss and accuracy are
    those of the starting weights on the whole set, and the validation ones those on the validation set."""
    model = _model()
    history = model.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.0), epochs=2, batch_size=16,
                        validation_data=(Xv, Yv), metrics=["accuracy"])
    for data, target, prefix in ((X, Y, ""), (Xv, Yv, "val_")):
        p = to_numpy(model.predict(data))
        expected_loss = -np.mean(np.log(p[np.arange(len(target)), target]))
        assert history[prefix + "loss"] == pytest.approx([expected_loss] * 2, rel=1e-12)
        assert history[prefix + "accuracy"] == pytest.approx([np.mean(p.argmax(axis=1) == target)] * 2, rel=1e-12)
    assert history["lr"] == [0.0, 0.0] and history.epoch == [0, 1]
    assert all(s > 0 for s in history["epoch_time"]) and all(s > 0 for s in history["samples_per_s"])


# -- verbose output ------------------------------------------------------------------------------------------
def _line(history, epoch, epochs):
    """The line of one epoch, written from its history entry."""
    text = " - ".join(f"{k} {v[epoch]:.4g}" for k, v in history.history.items()
                      if k not in ("epoch_time", "samples_per_s"))
    return (f"epoch {epoch + 1}/{epochs} - {text} - {history['epoch_time'][epoch]:.1f}s, "
            f"{history['samples_per_s'][epoch]:,.0f} samples/s")


@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_lines_are_the_history_entries(capsys, verbose):
    history = _model().fit(X, Y, loss=CE, epochs=3, verbose=verbose, validation_split=0.25, metrics=["accuracy"])
    assert capsys.readouterr().out.splitlines() == [_line(history, e, 3) for e in range(3)]


def test_verbose_one_on_a_terminal_shows_a_bar_per_epoch_ending_with_the_epochs_entry(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    history = _model().fit(X, Y, loss=CE, epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    for e in range(2):
        assert f"epoch {e + 1}/2" in out
        assert _line(history, e, 2).split(" - ", 1)[1].split(" - ")[0] in out  # "loss 1.234", the bar's postfix
    assert out.count("4/4") >= 2 and "\r" in out


# -- divergence is a callback hook ---------------------------------------------------------------------------
class Handle(Callback):
    """A user's own divergence handler: stops training quietly, as TerminateOnNaN does."""

    def __init__(self, handle=True):
        self.handle, self.heard, self.ended = handle, [], 0

    def on_divergence(self, epoch, message):
        self.heard.append((epoch, message))
        return self.handle

    def on_train_end(self, logs=None):
        self.ended += 1


@overflow_is_the_point
def test_a_users_divergence_hook_stops_training_quietly_like_terminate_on_nan(capsys):
    with pytest.raises(xpmlp.DivergenceError) as raised:
        _diverging_fit(_model(), verbose=0)
    runs = {}
    for name, cb in (("terminate", TerminateOnNaN()), ("mine", Handle())):
        model = _model()
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*in epoch", category=RuntimeWarning)  # no divergence warning
            history = _diverging_fit(model, [cb], on_divergence="warn", verbose=0)
        runs[name] = (history, model.get_weights())
    (h1, w1), (h2, w2) = runs["terminate"], runs["mine"]
    assert h1.epoch == h2.epoch == [0] and h1["loss"] == h2["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert cb.heard == [(1, str(raised.value))] and cb.ended == 1  # the message fit would raise; training ended
    assert capsys.readouterr().out == ""  # quiet at verbose=0


@overflow_is_the_point
def test_terminate_on_nan_prints_the_message_when_verbose(capsys):
    handle = Handle(handle=False)  # hears of it, does not handle it: TerminateOnNaN does
    _diverging_fit(_model(), [handle, TerminateOnNaN()], verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("epoch 1/4 - loss ") and out[1] == handle.heard[0][1]


@overflow_is_the_point
def test_on_a_terminal_the_bar_is_closed_before_terminate_on_nan_prints(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    handle = Handle(handle=False)
    _diverging_fit(_model(), [handle, TerminateOnNaN()], verbose=1)
    out = capsys.readouterr().out
    assert out.endswith("\n" + handle.heard[0][1] + "\n") and "epoch 2/4" in out


@overflow_is_the_point
def test_an_unhandled_divergence_still_raises_or_warns_after_every_callback_heard_of_it():
    a, b = Handle(handle=False), Handle(handle=False)
    with pytest.raises(xpmlp.DivergenceError):
        _diverging_fit(_model(), [a, b])
    assert len(a.heard) == len(b.heard) == 1 and a.ended == b.ended == 1
    first, c = Handle(handle=True), Handle(handle=False)  # one handles it: the others still hear of it
    _diverging_fit(_model(), [first, c])
    assert len(c.heard) == 1


# -- warnings point at the caller -----------------------------------------------------------------------------
@overflow_is_the_point
def test_fits_warnings_point_at_the_line_that_called_fit():
    with pytest.warns(RuntimeWarning, match="in epoch 2") as caught:
        _diverging_fit(_model(), on_divergence="warn")
    assert [w.filename for w in caught if "in epoch 2" in str(w.message)] == [__file__]
    with pytest.warns(UserWarning, match="looks unscaled") as caught:
        _model().fit(X * 1e3, Y, loss=CE, epochs=1)
    assert [w.filename for w in caught if "looks unscaled" in str(w.message)] == [__file__]


# -- fit stays small ---------------------------------------------------------------------------------------------
def test_fit_body_is_about_seventy_lines_with_no_special_callback():
    """Lines of fit's body that hold code (not its docstring, comments or blank lines): it must not regrow."""
    source = textwrap.dedent(inspect.getsource(xpmlp.train.fit))
    node = ast.parse(source).body[0]
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    lines = source.splitlines()[body[0].lineno - 1:body[-1].end_lineno]
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    assert 40 <= len(code) <= 80, len(code)
    code = "\n".join(code)
    assert "TerminateOnNaN" not in code and "print(" not in code and "tqdm" not in code


def test_the_train_module_keeps_its_public_names():
    assert xpmlp.train.History is xpmlp.History is History
    for name in ("fit", "predict", "evaluate", "DivergenceError", "EVAL_BATCH"):
        assert hasattr(xpmlp.train, name)
    assert math.isfinite(xpmlp.train.EVAL_BATCH)

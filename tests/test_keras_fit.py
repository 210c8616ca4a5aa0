"""Keras conventions on fit: verbose="auto", initial_epoch, validation_freq, iterables of batches
(lists, generators, PyTorch DataLoaders) with steps_per_epoch, EarlyStopping's messages, and a
progress display that never cuts a metric off."""

import os
import re
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import xpmlp
from fit_data import small_mlp, three_classes
from xpmlp.backend import to_numpy
from xpmlp.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                             ReduceLROnPlateau)

X, Y, Xv, Yv = three_classes(60, 20)
CE = "softmax_cross_entropy"


_model = small_mlp


def _chunks(batch_size=16, weights=None):
    """(X, y) or (X, y, w) batches of the arrays, in order: what fit(X, Y, shuffle=False) trains on."""
    return [(X[i:i + batch_size], Y[i:i + batch_size], *(() if weights is None else (weights[i:i + batch_size],)))
            for i in range(0, len(X), batch_size)]


def _same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights(), strict=True))


class Record(Callback):
    """Records hook calls and each epoch's logs."""

    def __init__(self):
        self.calls, self.logs = [], {}

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch", batch))

    def on_epoch_end(self, epoch, logs=None):
        self.logs[epoch] = dict(logs)
        self.calls.append(("epoch_end", epoch))

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def _line(history, i, epochs):
    """The verbose=2 line of the history's i-th entry."""
    text = " - ".join(f"{k} {v[i]:.4g}" for k, v in history.history.items() if k not in ("epoch_time", "samples_per_s"))
    return (f"epoch {history.epoch[i] + 1}/{epochs} - {text} - {history['epoch_time'][i]:.1f}s, "
            f"{history['samples_per_s'][i]:,.0f} samples/s")


# -- verbose="auto" ------------------------------------------------------------------------------------------
def test_default_verbose_is_auto_one_line_per_epoch_off_a_terminal(capsys):
    history = _model().fit(X, Y, loss=CE, epochs=3, metrics=["accuracy"])
    assert capsys.readouterr().out.splitlines() == [_line(history, e, 3) for e in range(3)]


def test_default_verbose_is_a_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    history = _model().fit(X, Y, loss=CE, epochs=2, batch_size=16)
    out = capsys.readouterr().out
    assert "\r" in out and out.count("4/4") >= 2 and "epoch 2/2" in out
    assert f"loss {history['loss'][1]:.4g}" in out


@pytest.mark.parametrize("verbose", [3, -1, "yes", None, 0.5])
def test_verbose_takes_auto_0_1_or_2(verbose):
    with pytest.raises(ValueError, match="verbose must be 'auto', 0, 1 or 2"):
        _model().fit(X, Y, loss=CE, verbose=verbose)


# -- initial_epoch -------------------------------------------------------------------------------------------
def test_resuming_at_initial_epoch_equals_one_uninterrupted_fit():
    """fit(epochs=2) then fit(initial_epoch=2, epochs=5) runs epochs 2, 3, 4 with their true numbers:
    the same shuffles (the model's stream carries on), Dropout masks, optimiser state and a schedule
    by epoch as one fit(epochs=5), so the weights are bitwise the same."""
    schedule = lambda epoch, lr: 1e-2 / (epoch + 1)  # noqa: E731: the true epoch number matters
    whole = _model(dropout=0.2)
    full = whole.fit(X, Y, loss=CE, epochs=5, batch_size=16, verbose=0, callbacks=[LearningRateScheduler(schedule)])
    parts, record = _model(dropout=0.2), Record()
    parts.fit(X, Y, loss=CE, epochs=2, batch_size=16, verbose=0, callbacks=[LearningRateScheduler(schedule)])
    resumed = parts.fit(X, Y, epochs=5, initial_epoch=2, batch_size=16, verbose=0,
                        callbacks=[LearningRateScheduler(schedule), record])
    assert _same_weights(whole, parts)
    assert resumed.epoch == [2, 3, 4] and resumed["loss"] == full["loss"][2:] and resumed["lr"] == full["lr"][2:]
    assert [c[1] for c in record.calls if c[0] == "epoch_begin"] == [2, 3, 4]
    assert record.params["epochs"] == 5


def test_progress_lines_show_the_true_epoch_numbers(capsys):
    model = _model()
    model.fit(X, Y, loss=CE, epochs=1, verbose=0)
    history = model.fit(X, Y, epochs=3, initial_epoch=1, verbose=2)
    assert capsys.readouterr().out.splitlines() == [_line(history, 0, 3), _line(history, 1, 3)]
    assert history.to_frame().index.tolist() == [1, 2]


@pytest.mark.parametrize("initial_epoch", [3, 7])
def test_initial_epoch_at_or_past_epochs_runs_nothing_as_in_keras(initial_epoch):
    model, record = _model(), Record()
    model.fit(X, Y, loss=CE, epochs=1, verbose=0)
    before = model.get_weights()
    history = model.fit(X, Y, epochs=3, initial_epoch=initial_epoch, verbose=0, callbacks=[record])
    assert history.epoch == [] and history.history == {} and model.history is history
    assert record.calls == ["train_begin", "train_end"]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("initial_epoch", [-1, 1.5, True, "1"])
def test_initial_epoch_must_be_an_integer_from_zero(initial_epoch):
    with pytest.raises(ValueError, match="initial_epoch must be an integer >= 0"):
        _model().fit(X, Y, loss=CE, epochs=3, initial_epoch=initial_epoch)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning", "ignore:X looks unscaled:UserWarning")
def test_divergence_in_a_resumed_fit_names_its_epoch_and_keeps_the_weights_it_started_from():
    model = _model()
    model.fit(X * 1e3, Y, loss=CE, optimizer=xpmlp.SGD(lr=1e-3), epochs=1, batch_size=16, verbose=0)
    start = model.get_weights()
    boom = LearningRateScheduler(lambda epoch, lr: 1e300)
    with pytest.raises(xpmlp.DivergenceError, match="in epoch 2 .*the weights this fit started from were kept"):
        model.fit(X * 1e3, Y, epochs=3, initial_epoch=1, batch_size=16, verbose=0, callbacks=[boom])
    assert all(np.array_equal(a, b) for a, b in zip(start, model.get_weights()))


# -- validation_freq -----------------------------------------------------------------------------------------
class ValCheck(Callback):
    """Evaluates the validation set itself at each epoch's end, to compare with fit's val_loss."""

    def __init__(self):
        self.expected = {}

    def on_epoch_end(self, epoch, logs=None):
        self.expected[epoch] = self.model.evaluate(Xv, Yv)


@pytest.mark.parametrize("freq,validated", [(1, [0, 1, 2, 3, 4]), (2, [1, 3]), (3, [2]), ([1, 5], [0, 4]),
                                            ((2, 3), [1, 2])])
def test_validation_freq_validates_the_epochs_keras_does(freq, validated):
    """Keras counts epochs from 1: freq=2 validates epochs 2 and 4 (indices 1 and 3); a list names them."""
    check, record = ValCheck(), Record()
    history = _model().fit(X, Y, loss=CE, epochs=5, validation_data=(Xv, Yv), validation_freq=freq,
                           metrics=["accuracy"], verbose=0, callbacks=[check, record])
    assert [e for e in range(5) if "val_loss" in record.logs[e]] == validated
    assert [e for e in range(5) if "val_accuracy" in record.logs[e]] == validated
    assert history["val_loss"] == pytest.approx([check.expected[e] for e in validated], rel=1e-12)
    assert len(history["loss"]) == 5 and len(history["val_loss"]) == len(validated)  # as Keras's History
    frame = history.to_frame()
    assert frame["val_loss"].notna().tolist() == [e in validated for e in range(5)]
    assert frame.loc[validated, "val_loss"].tolist() == history["val_loss"]


def test_validation_freq_with_validation_split_and_a_plot():
    history = _model().fit(X, Y, loss=CE, epochs=4, validation_split=0.25, validation_freq=2, verbose=0)
    fig = history.plot()
    lines = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()}
    assert lines == {"train": [1, 2, 3, 4], "validation": [2, 4]}


@pytest.mark.parametrize("freq", [0, -2, 1.5, "2", None, [0, 2], True])
def test_validation_freq_must_be_a_positive_integer_or_epoch_numbers(freq):
    with pytest.raises(ValueError, match="validation_freq"):
        _model().fit(X, Y, loss=CE, epochs=2, validation_data=(Xv, Yv), validation_freq=freq)


def test_a_validation_freq_that_validates_nothing_warns():
    with pytest.warns(UserWarning, match=r"validation_freq=10 validates none of the epochs this fit runs \(1 to 3"):
        history = _model().fit(X, Y, loss=CE, epochs=3, validation_data=(Xv, Yv), validation_freq=10, verbose=0)
    assert "val_loss" not in history.history
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model().fit(X, Y, loss=CE, epochs=3, validation_freq=10, verbose=0)  # nothing to validate: no warning


def test_early_stopping_counts_only_validated_epochs():
    """With a learning rate of 0 val_loss never changes: the first validated epoch (2) sets the best, the
    second (4) does not improve and, with patience 0, stops training there. Unvalidated epochs count neither way."""
    stop = EarlyStopping(monitor="val_loss", patience=0)
    history = _model().fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.0), epochs=8, validation_data=(Xv, Yv),
                           validation_freq=2, verbose=0, callbacks=[stop])
    assert history.epoch == [0, 1, 2, 3] and stop.stopped_epoch == 3 and stop.best_epoch == 1


def test_reduce_lr_on_plateau_counts_only_validated_epochs():
    """min_delta huge: every validated epoch after the first is a plateau; patience 0 halves the rate at each."""
    lr = 1e-3
    plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, min_delta=1e9)
    model = _model()
    history = model.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=lr), epochs=6, validation_data=(Xv, Yv),
                        validation_freq=2, verbose=0, callbacks=[plateau])
    assert history["lr"] == pytest.approx([lr, lr, lr, lr, lr / 2, lr / 2], rel=1e-15)  # halved after epochs 4 and 6
    assert model.optimizer.current_lr() == pytest.approx(lr / 4, rel=1e-15)


def test_model_checkpoint_and_csv_logger_with_validation_freq(tmp_path):
    every = ModelCheckpoint(tmp_path / "e{epoch}-{val_loss:.3f}.safetensors")
    best = ModelCheckpoint(tmp_path / "best{epoch}.safetensors", save_best_only=True)
    history = _model().fit(X, Y, loss=CE, epochs=4, validation_data=(Xv, Yv), validation_freq=2, verbose=0,
                           callbacks=[every, best, CSVLogger(tmp_path / "log.csv")])
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    val = history["val_loss"]
    assert names == sorted([f"e2-{val[0]:.3f}.safetensors", f"e4-{val[1]:.3f}.safetensors", "best2.safetensors"]
                           + (["best4.safetensors"] if val[1] < val[0] else []))
    frame = pd.read_csv(tmp_path / "log.csv")
    assert frame["epoch"].tolist() == [0, 1, 2, 3] and list(frame.columns) == [
        "epoch", "loss", "val_loss", "lr", "epoch_time", "samples_per_s"]  # fit's order, not the first row's
    assert frame["val_loss"].isna().tolist() == [True, False, True, False]
    np.testing.assert_allclose(frame["val_loss"].dropna(), val)


def test_model_checkpoint_refuses_a_path_naming_what_fit_does_not_log(tmp_path):
    model = _model()
    model.fit(X, Y, loss=CE, epochs=1, verbose=0)
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"names val_acc, which fit does not log; logged: epoch, loss, val_loss"):
        model.fit(X, Y, epochs=2, validation_data=(Xv, Yv), verbose=0,
                  callbacks=[ModelCheckpoint(tmp_path / "m-{val_acc:.2f}.safetensors")])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())) and not list(tmp_path.iterdir())


# -- iterables of batches ------------------------------------------------------------------------------------
def test_a_list_of_batches_trains_exactly_as_the_arrays_without_shuffling(case):
    """The same batches in the same order: the same updates, bitwise, on every backend; the same logs."""
    kw = dict(loss=CE, epochs=3, validation_data=(Xv, Yv), metrics=["accuracy"], verbose=0)
    arrays = xpmlp.MLP([4, 8, 3], seed=0, **case.model_kwargs())
    a = arrays.fit(X, Y, batch_size=16, shuffle=False, **kw)
    chunks = xpmlp.MLP([4, 8, 3], seed=0, **case.model_kwargs())
    b = chunks.fit(_chunks(16), **kw)
    assert _same_weights(arrays, chunks)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-15 if case.dtype == "float64" else 1e-7)
    for key in ("accuracy", "val_loss", "val_accuracy", "lr"):
        assert b[key] == a[key], key
    assert b.epoch == a.epoch == [0, 1, 2]


def test_batches_carry_their_sample_weights_and_class_weight_applies_per_batch():
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(X))
    kw = dict(loss=CE, epochs=2, class_weight={0: 2.0, 2: 0.5}, verbose=0)
    arrays, chunks = _model(), _model()
    arrays.fit(X, Y, batch_size=16, shuffle=False, sample_weight=w, **kw)
    chunks.fit(_chunks(16, weights=w), **kw)
    assert _same_weights(arrays, chunks)
    unweighted = _model()
    unweighted.fit(_chunks(16), **kw)
    assert not _same_weights(chunks, unweighted)  # the third element is used


def test_a_pytorch_dataloader_trains_as_its_batches(case):
    """A DataLoader of torch CPU tensors (float64 collated from NumPy) trains a model of any library as the
    same batches as NumPy arrays; it is read afresh each epoch (one bar step per batch)."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=16, shuffle=False)
    from_loader, record = xpmlp.MLP([4, 8, 3], seed=0, **case.model_kwargs()), Record()
    history = from_loader.fit(loader, loss=CE, epochs=2, verbose=0, callbacks=[record])
    reference = xpmlp.MLP([4, 8, 3], seed=0, **case.model_kwargs())
    reference.fit(X, Y, loss=CE, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert _same_weights(from_loader, reference)
    assert record.params["steps"] == len(loader) == 4
    assert [c[1] for c in record.calls if c[0] == "batch"] == [0, 1, 2, 3] * 2
    assert all(s == len(X) / t for s, t in zip(history["samples_per_s"], history["epoch_time"]))


def test_a_shuffling_dataloader_gives_each_epoch_a_new_order():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    seen = []

    class Rows(TensorDataset):
        def __getitem__(self, i):
            seen.append(i)
            return super().__getitem__(i)

    loader = DataLoader(Rows(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    _model().fit(loader, loss=CE, epochs=2, verbose=0)
    assert sorted(seen[:60]) == sorted(seen[60:]) == list(range(60)) and seen[:60] != seen[60:]


def _cycle(batches, drawn=None):
    while True:
        for i, b in enumerate(batches):
            if drawn is not None:
                drawn.append(i)
            yield b


def test_a_generator_needs_steps_per_epoch():
    with pytest.raises(ValueError, match="has no length .* so fit needs steps_per_epoch"):
        _model().fit(_cycle(_chunks()), loss=CE, epochs=2)


def test_a_generator_is_drawn_steps_per_epoch_batches_at_a_time_from_one_iterator():
    """Keras: epochs carry on from where the last one stopped in the same generator."""
    drawn, record = [], Record()
    gen_model = _model()
    history = gen_model.fit(_cycle(_chunks(), drawn), loss=CE, epochs=3, steps_per_epoch=4, verbose=0,
                            callbacks=[record])
    assert drawn == [0, 1, 2, 3] * 3 and record.params["steps"] == 4 and history.epoch == [0, 1, 2]
    reference = _model()
    reference.fit(X, Y, loss=CE, epochs=3, batch_size=16, shuffle=False, verbose=0)
    assert _same_weights(gen_model, reference)
    drawn.clear()
    _model().fit(_cycle(_chunks(), drawn), loss=CE, epochs=3, steps_per_epoch=3, verbose=0)
    assert drawn == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_a_sized_iterable_with_steps_per_epoch_starts_again_once_used_up_at_an_epochs_end():
    drawn = []

    class Batches:
        def __len__(self):
            return 4

        def __iter__(self):
            for i, b in enumerate(_chunks()):
                drawn.append(i)
                yield b

    _model().fit(Batches(), loss=CE, epochs=4, steps_per_epoch=2, verbose=0)
    assert drawn == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("available,recorded", [(5, [0, 1, 2]), (4, [0, 1])])
def test_a_generator_that_runs_out_warns_as_keras_and_stops_after_that_epoch(available, recorded):
    """5 batches for steps_per_epoch=2: epochs 1 and 2 are full, epoch 3 gets one batch and is recorded; with 4,
    epoch 3 gets none and is not. Either way training stops there, with the weights of the last batch."""
    gen = (b for b in (_chunks(12) * 2)[:available])
    model = _model()
    with pytest.warns(UserWarning, match=r"Your input ran out of data; interrupting training.*steps_per_epoch=2"):
        history = model.fit(gen, loss=CE, epochs=10, steps_per_epoch=2, verbose=0)
    assert history.epoch == recorded
    reference = _model()
    reference.fit(_chunks(12)[:available], loss=CE, epochs=1, verbose=0)
    assert _same_weights(model, reference)


def test_an_interrupt_inside_a_generator_keeps_the_last_recorded_epoch():
    def interrupted():
        for i, b in enumerate(_chunks() * 3):
            if i == 6:  # epoch 2, batch 3
                raise KeyboardInterrupt
            yield b

    model = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(interrupted(), loss=CE, epochs=3, steps_per_epoch=4, verbose=0)
    reference = _model()
    reference.fit(_chunks(), loss=CE, epochs=1, verbose=0)
    assert model.history.epoch == [0] and _same_weights(model, reference)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning", "ignore:X looks unscaled:UserWarning")
def test_divergence_on_batches_keeps_the_last_good_epoch():
    big = [(x * 1e3, y) for x, y in _chunks()]
    boom = LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch == 0 else 1e300)
    model = _model()
    with pytest.raises(xpmlp.DivergenceError, match="in epoch 2"):
        model.fit(big, loss=CE, optimizer=xpmlp.SGD(lr=1e-3), epochs=3, verbose=0, callbacks=[boom])
    reference = _model()
    reference.fit(big, loss=CE, optimizer=xpmlp.SGD(lr=1e-3), epochs=1, verbose=0)
    assert model.history.epoch == [0] and _same_weights(model, reference)


def test_each_batch_is_checked_and_named_in_the_error():
    bad = _chunks()
    bad[2] = (np.where(np.arange(4) == 1, np.nan, bad[2][0]), bad[2][1])
    with pytest.raises(ValueError, match="X of batch 3 of x contains NaN"):
        _model().fit(bad, loss=CE, verbose=0)
    narrow = _chunks()
    narrow[1] = (narrow[1][0][:, :3], narrow[1][1])
    with pytest.raises(ValueError, match="X of batch 2 of x has 3 features but the model expects 4"):
        _model().fit(narrow, loss=CE, verbose=0)
    short = _chunks()
    short[0] = (short[0][0], short[0][1][:5])
    with pytest.raises(ValueError, match="X of batch 1 of x and y of batch 1 of x have different lengths: 16 and 5"):
        _model().fit(short, loss=CE, verbose=0)


@pytest.mark.parametrize("x,kw,message", [
    (_chunks(), dict(validation_split=0.2), "x is an iterable of batches: validation_split needs arrays"),
    (_chunks(), dict(sample_weight=np.ones(60)), "put each batch's weights in the batch"),
    (_chunks(), dict(class_weight="balanced"), "class_weight='balanced' needs all of y to count the classes"),
    (_chunks(), dict(metrics=[lambda y, p: 0.0]), "metrics given as functions .* give validation_data"),
    (X, {}, "y is missing"),
    (pd.DataFrame(X), {}, "y is missing"),
    ([], {}, "x yielded no batches"),
    ([(X, Y, None, None)], {}, "batch 1 of x is a tuple of 4 items"),
    ([X], {}, "batch 1 of x is a ndarray"),
    (_chunks(), dict(steps_per_epoch=0), "steps_per_epoch must be a positive integer"),
])
def test_what_an_iterable_cannot_take_is_refused_clearly(x, kw, message):
    with pytest.raises(ValueError, match=message):
        _model().fit(x, loss=CE, verbose=0, **kw)


def test_steps_per_epoch_is_refused_with_arrays_and_a_non_iterable_x_is_named():
    with pytest.raises(ValueError, match="steps_per_epoch is for x given as an iterable of batches"):
        _model().fit(X, Y, loss=CE, steps_per_epoch=2)
    with pytest.raises(TypeError, match="x must be an iterable of .* got int"):
        _model().fit(3, loss=CE)


def test_standardize_must_be_adapted_before_training_on_batches():
    model = xpmlp.MLP([4, 8, 3], standardize=True, seed=0, dtype="float64", device="cpu")
    with pytest.raises(ValueError, match=r"model.layers\[0\] \(Standardize\) learns its scaling .*\.adapt\(sample\)"):
        model.fit(_chunks(), loss=CE, verbose=0)
    model.layers[0].adapt(model.backend.asarray(X, dtype="float64"))
    model.fit(_chunks(), loss=CE, epochs=2, verbose=0)
    reference = xpmlp.MLP([4, 8, 3], standardize=True, seed=0, dtype="float64", device="cpu")
    reference.fit(X, Y, loss=CE, epochs=2, batch_size=16, shuffle=False, verbose=0)  # adapts on all of X
    assert _same_weights(model, reference)


def test_iterables_take_callable_metrics_on_validation_data():
    def agree(y, p):
        return float(np.mean(p.argmax(axis=1) == y))

    model = _model()
    history = model.fit(_chunks(), loss=CE, epochs=2, validation_data=(Xv, Yv), metrics=["accuracy", agree], verbose=0)
    assert history["val_agree"][-1] == history["val_accuracy"][-1] == pytest.approx(
        np.mean(to_numpy(model.predict(Xv)).argmax(axis=1) == Yv))


# -- EarlyStopping's messages --------------------------------------------------------------------------------
def _stalled(stop, verbose=0):
    """lr 0: val_loss never changes, so epoch 1 is the best and patience 1 stops at epoch 3 (1-based)."""
    return _model().fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.0), epochs=6, validation_data=(Xv, Yv),
                        verbose=verbose, callbacks=[stop])


def test_early_stopping_says_when_and_why_it_stopped_and_which_epoch_it_restored(capsys):
    stop = EarlyStopping(patience=1, restore_best_weights=True, verbose=1)
    history = _stalled(stop)
    assert history.epoch == [0, 1, 2] and stop.stopped_epoch == 2 and stop.best_epoch == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Epoch 3: early stopping: val_loss has not improved on its best, {history['val_loss'][0]:.4g} at epoch 1, "
        "for 2 epochs, more than patience=1",
        "Restoring model weights from the end of the best epoch: 1."]


def test_early_stopping_names_min_delta_and_prints_the_restore_when_epochs_run_out(capsys):
    stop = EarlyStopping(monitor="loss", patience=10, min_delta=0.5, restore_best_weights=True, verbose=1)
    _model().fit(X, Y, loss=CE, epochs=2, verbose=0, callbacks=[stop])
    assert capsys.readouterr().out == "Restoring model weights from the end of the best epoch: 1.\n"
    stop = EarlyStopping(monitor="loss", patience=0, min_delta=0.5, verbose=1)
    history = _model().fit(X, Y, loss=CE, epochs=4, verbose=0, callbacks=[stop])
    assert capsys.readouterr().out == (f"Epoch 2: early stopping: loss has not improved on its best, "
                                       f"{history['loss'][0]:.4g} at epoch 1, by more than min_delta=0.5 for 1 "
                                       "epochs, more than patience=0\n")


def test_early_stopping_prints_by_default_when_fit_does(capsys):
    _stalled(EarlyStopping(patience=1))  # "auto" and fit verbose=0: quiet
    assert capsys.readouterr().out == ""
    _stalled(EarlyStopping(patience=1, verbose=0), verbose=2)
    assert "early stopping" not in capsys.readouterr().out
    history = _stalled(EarlyStopping(patience=1, restore_best_weights=True), verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [_line(history, e, 6) for e in range(3)]
    assert lines[3].startswith("Epoch 3: early stopping: val_loss has not improved")
    assert lines[4] == "Restoring model weights from the end of the best epoch: 1."


@pytest.mark.parametrize("verbose", [2, "yes", None])
def test_early_stopping_verbose_is_auto_0_or_1(verbose):
    with pytest.raises(ValueError, match="verbose must be 'auto', 0 or 1"):
        EarlyStopping(verbose=verbose)


# -- the progress display never cuts a metric off ------------------------------------------------------------
def test_every_metric_is_shown_in_full_on_a_narrow_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "40")  # shutil reads it; tqdm asks the terminal:
    monkeypatch.setattr(sys.stdout, "fileno", lambda: 1)
    monkeypatch.setattr(os, "get_terminal_size", lambda *fd: os.terminal_size((40, 24)))

    def fraction_of_rows_predicted_as_the_majority_class(y, p):
        return float(np.mean(p.argmax(axis=1) == np.bincount(y).argmax()))

    def mean_top_probability(y, p):
        return float(np.mean(p.max(axis=1)))

    history = _model().fit(X, Y, loss=CE, epochs=2, batch_size=16, validation_data=(Xv, Yv),
                           metrics=["accuracy", "top_2_accuracy", fraction_of_rows_predicted_as_the_majority_class,
                                    mean_top_probability], verbose=1)
    out = capsys.readouterr().out
    lines = [part for line in out.split("\n") for part in line.split("\r")]
    for key, values in history.history.items():
        if key not in ("epoch_time", "samples_per_s"):
            for v in values:
                assert any(f"{key} {v:.4g}" in line for line in lines), key
    shown = [line for line in out.split("\n") if line.startswith("  ")]
    long_items = [f"val_fraction_of_rows_predicted_as_the_majority_class {v:.4g}" for v in
                  history["val_fraction_of_rows_predicted_as_the_majority_class"]]
    assert shown and all(len(line) < 40 or line.strip() in long_items for line in shown)
    assert not re.search(r"\d\.\d+s, [\d,]+ samples/s.*loss", out)  # one epoch's entries, then the next bar

"""fit when things go wrong: divergence, early ends, reused callbacks, schedules, memory, argument checks, warnings.

Issue 13, points 3, 4, 6, 7, 8, 14 (fit and optimisers) and 15 (first two bullets).
"""

import itertools
import math
import re
import tracemalloc
import warnings

import numpy as np
import pytest

import xpmlp
from fit_data import small_mlp, three_classes
from xpmlp import to_numpy
from xpmlp.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                             ReduceLROnPlateau, TerminateOnNaN)
from xpmlp.schedules import Scaled, StepDecay

X, Y, Xv, Yv = three_classes(120, 40)
CE = "softmax_cross_entropy"
overflow_is_the_point = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning",
                                                   "ignore:X looks unscaled:UserWarning")


_model = small_mlp


class Recorder(Callback):
    """Keeps each epoch's weights and the optimiser's step count, and whether training ended."""

    def __init__(self):
        self.weights, self.steps, self.ended = [], [], 0

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.steps.append(self.model.optimizer.t)

    def on_train_end(self, logs=None):
        self.ended += 1


def _exactly(expected):
    """Equal up to rounding; pytest.approx's default abs=1e-12 would call any two rates of 1e-12 equal."""
    return pytest.approx(expected, rel=1e-9, abs=0)


def _same_weights(model, weights):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))


# -- 3. divergence never leaves weights that predict NaN or inf ------------------------------------------
@overflow_is_the_point
def test_diverging_grid_never_returns_a_model_that_predicts_nonfinite_values():
    """Unscaled 0-255 inputs, big learning rates: every run trains or stops, and predicts finite values."""
    data = np.random.default_rng(0)
    Xr = data.integers(0, 256, size=(256, 32)).astype(np.float64)
    targets = {"mse": Xr[:, :3].sum(axis=1), CE: (Xr[:, 0] > Xr[:, 1]).astype(np.int64)}
    outcomes = []
    for loss, opt, lr, seed, batch_size in itertools.product(["mse", CE], ["sgd", "adam"], [0.03, 0.3, 1.0, 10.0],
                                                              [0, 1], [64, 256]):
        model = xpmlp.MLP([32, 16, 16, 1 if loss == "mse" else 2], seed=seed, device="cpu", dtype="float32")
        try:
            model.fit(Xr, targets[loss], loss=loss, optimizer=xpmlp.optim.get_optimizer(opt, lr=lr), epochs=3,
                      batch_size=batch_size)
            outcome = "trained"
        except xpmlp.DivergenceError:
            outcome = "stopped"
        p = to_numpy(model.predict(Xr))
        assert np.all(np.isfinite(p)), (loss, opt, lr, seed, batch_size, outcome)
        assert all(np.all(np.isfinite(w)) for w in model.get_weights())
        outcomes.append(outcome)
    assert "stopped" in outcomes and "trained" in outcomes  # the grid does reach divergence


def _runaway(dtype, steps, lr=2.75):
    """A linear model on x = 1 whose error grows tenfold per SGD step (|1 - 4 lr| = 10): loss x100 per step."""
    model = xpmlp.MLP([1, 1], seed=0, device="cpu", dtype=dtype)
    model.set_weights([np.array([[0.5]]), np.array([0.5])])  # error 1 at the start
    return model, lambda **kw: model.fit(np.ones((steps, 1)), np.zeros(steps), loss="mse",
                                         optimizer=xpmlp.SGD(lr=lr), batch_size=1, shuffle=False, **kw)


@overflow_is_the_point
@pytest.mark.parametrize("dtype,steps,limit", [("float64", 85, "1.34e+154"), ("float32", 14, "1.84e+19")])
def test_a_loss_beyond_the_square_root_of_the_largest_float_is_divergence(dtype, steps, limit):
    """The loss reaches 1e160 (float64) or 1e24 (float32) in one epoch, without becoming inf."""
    model, fit = _runaway(dtype, steps)
    before = model.get_weights()
    with pytest.raises(xpmlp.DivergenceError, match=rf"in epoch 1 \(first at batch \d+: not finite, or above "
                                                    rf"{re.escape(limit)}, the limit for {dtype}\).*the weights this fit "
                                                    r"started from were kept"):
        fit(epochs=1)
    assert _same_weights(model, before)


@overflow_is_the_point
def test_the_last_update_of_an_epoch_is_checked():
    """The one batch's loss is small; its update makes weights that overflow: divergence, not a trained model."""
    model = xpmlp.MLP([1, 1], seed=0, device="cpu", dtype="float32")
    model.set_weights([np.array([[0.5]]), np.array([0.5])])
    before = model.get_weights()
    with pytest.raises(xpmlp.DivergenceError, match=r"the last update of epoch 1 made the weights diverge"):
        model.fit(np.ones((4, 1)), np.zeros(4), loss="mse", optimizer=xpmlp.SGD(lr=1e30), batch_size=4, epochs=1)
    assert _same_weights(model, before)
    assert np.all(np.isfinite(to_numpy(model.predict(np.ones((4, 1))))))


@overflow_is_the_point
def test_divergence_messages_number_epochs_from_one():
    # diverges in epoch 3: the weights from the end of epoch 2 are kept, and said so
    boom = LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch < 2 else 1e300)
    rec = Recorder()
    model = _model()
    with pytest.raises(xpmlp.DivergenceError, match=r"in epoch 3 \(first at batch \d+.*the weights from the end "
                                                    r"of epoch 2 were kept"):
        model.fit(X * 1e3, Y, loss=CE, optimizer=xpmlp.SGD(lr=1e-3), epochs=5, callbacks=[rec, boom])
    assert len(rec.weights) == 2 and _same_weights(model, rec.weights[1])
    # diverges in the first epoch of a second fit: the weights that fit started from
    before = model.get_weights()
    boom = LearningRateScheduler(lambda epoch, lr: 1e300)
    with pytest.warns(RuntimeWarning, match=r"in epoch 1 \(.*the weights this fit started from were kept"):
        model.fit(X * 1e3, Y, epochs=2, callbacks=[boom], on_divergence="warn")
    assert _same_weights(model, before)


# -- 4. whatever ends fit early, callbacks end, history is kept, the weights are whole -------------------
class Boom(Exception):
    pass


class RaiseAtEpochEnd(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Boom(f"callback failed at epoch {epoch}")


def test_a_callback_raising_still_ends_training_properly(tmp_path):
    rec, log = Recorder(), CSVLogger(tmp_path / "log.csv")
    model = _model()
    with pytest.raises(Boom, match="at epoch 1"):  # the original exception, not a wrapper
        model.fit(X, Y, loss=CE, epochs=5, callbacks=[rec, log, RaiseAtEpochEnd(1)])
    assert rec.ended == 1 and log._file is None  # on_train_end ran: the CSV file is closed
    assert model.history is not None and len(model.history.epoch) == 2  # epochs 1 and 2 were recorded
    assert _same_weights(model, rec.weights[1]) and model.optimizer.t == rec.steps[1]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header and two rows


def test_a_failing_on_train_end_does_not_stop_the_others_nor_hide_the_first_error(tmp_path):
    class BadEnd(Callback):
        def on_train_end(self, logs=None):
            raise RuntimeError("cleanup failed")

    rec, log = Recorder(), CSVLogger(tmp_path / "log.csv")
    with pytest.raises(Boom) as info:
        _model().fit(X, Y, loss=CE, epochs=3, callbacks=[BadEnd(), rec, log, RaiseAtEpochEnd(0)])
    assert rec.ended == 1 and log._file is None
    assert any("BadEnd.on_train_end raised RuntimeError: cleanup failed" in n for n in info.value.__notes__)
    rec = Recorder()
    with pytest.raises(RuntimeError, match="cleanup failed"):  # no other error: its own is raised
        _model().fit(X, Y, loss=CE, epochs=1, callbacks=[BadEnd(), rec])
    assert rec.ended == 1


@overflow_is_the_point
@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_divergence_ends_training_properly(tmp_path, mode):
    rec, log = Recorder(), CSVLogger(tmp_path / "log.csv")
    boom = LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch < 2 else 1e300)
    model = _model()
    context = pytest.raises(xpmlp.DivergenceError) if mode == "raise" else pytest.warns(RuntimeWarning)
    with context:
        model.fit(X * 1e3, Y, loss=CE, optimizer=xpmlp.SGD(lr=1e-3), epochs=5, callbacks=[rec, log, boom],
                  on_divergence=mode)
    assert rec.ended == 1 and log._file is None and len(model.history.epoch) == 2
    assert _same_weights(model, rec.weights[1]) and model.optimizer.t == rec.steps[1]


# -- 6. callbacks reused across fits start fresh -------------------------------------------------------
def test_early_stopping_reused_for_another_model_does_not_give_it_the_first_ones_weights():
    stop = EarlyStopping(monitor="val_loss", patience=100, restore_best_weights=True)
    a = _model(seed=1)
    a.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.5), epochs=5, validation_data=(Xv, Yv), callbacks=[stop])
    assert stop.best_weights is not None
    b, rec = _model(seed=2), Recorder()
    # a zero learning rate: b's weights never change, and its val_loss (far above a's best) never improves on it
    b.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.0), epochs=3, validation_data=(Xv, Yv), callbacks=[stop, rec])
    assert _same_weights(b, rec.weights[-1]) and not _same_weights(b, a.get_weights())
    assert stop.best_epoch == 0 and stop.wait == 2


def test_early_stopping_patience_restarts_with_each_fit():
    stop = EarlyStopping(monitor="loss", patience=2, min_delta=1e-9)  # rounding is no improvement
    model = _model()
    model.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.0), epochs=10, callbacks=[stop])  # a constant loss
    assert stop.stopped_epoch == 3
    history = model.fit(X, Y, epochs=10, callbacks=[stop])  # a fresh count: four epochs again, not one
    assert len(history.epoch) == 4 and stop.stopped_epoch == 3


def test_model_checkpoint_best_only_reused_saves_the_new_fits_best(tmp_path):
    best = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True)
    _model(seed=1).fit(X, Y, loss=CE, optimizer=xpmlp.Adam(lr=0.05), epochs=5, validation_data=(Xv, Yv),
                       callbacks=[best])
    (tmp_path / "best.safetensors").unlink()
    b = _model(seed=2)
    # b never learns (lr 0): its val_loss is worse than the first fit's best, but it is this fit's best
    b.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.0), epochs=2, validation_data=(Xv, Yv), callbacks=[best])
    assert (tmp_path / "best.safetensors").exists()
    assert _same_weights(b, xpmlp.load(tmp_path / "best.safetensors", device="cpu").get_weights())


def test_reduce_lr_on_plateau_reused_starts_its_count_again():
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=3)
    opt = xpmlp.SGD(lr=1e-12)  # the loss stays put: a plateau
    _model().fit(X, Y, loss=CE, optimizer=opt, epochs=4, callbacks=[plateau])
    assert opt.lr == _exactly(0.5e-12) and plateau.cooling == 3
    opt2 = xpmlp.SGD(lr=1e-12)
    history = _model().fit(X, Y, loss=CE, optimizer=opt2, epochs=4, callbacks=[plateau])
    # fresh: best from this fit, wait and cooldown from zero, so the same reduction after epoch 4
    assert history["lr"] == _exactly([1e-12, 1e-12, 1e-12, 1e-12]) and opt2.lr == _exactly(0.5e-12)


def test_csv_logger_reused_after_a_failed_fit_writes_its_new_file(tmp_path):
    log = CSVLogger(tmp_path / "a.csv")
    model = _model()
    with pytest.raises(Boom):
        model.fit(X, Y, loss=CE, epochs=3, callbacks=[log, RaiseAtEpochEnd(0)])
    log.path = str(tmp_path / "b.csv")
    model.fit(X, Y, epochs=2, callbacks=[log])
    rows = (tmp_path / "b.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss") and len(rows) == 3
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 2


# -- 7. ReduceLROnPlateau scales a schedule -----------------------------------------------------------
def _applied_lr(opt):
    """The rate the optimiser's next step applies, measured: an SGD step on w = 0 with gradient 1."""
    probe = xpmlp.SGD(lr=opt.lr)
    probe.t = opt.t
    w = np.zeros(1)
    probe.step(w, np.ones(1))
    return -float(w[0])


@pytest.mark.parametrize("lr", [StepDecay(1e-12, step_size=10**9), lambda step: 1e-12])
def test_reduce_lr_on_plateau_lowers_the_rate_a_schedule_applies(tmp_path, lr):
    plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    opt = xpmlp.SGD(lr=lr)
    model = _model()
    history = model.fit(X, Y, loss=CE, optimizer=opt, epochs=6, validation_data=(Xv, Yv), callbacks=[plateau])
    # reduced after epochs 3 and 5, as for a float learning rate
    assert history["lr"] == _exactly([1e-12] * 3 + [0.5e-12] * 2 + [0.25e-12])
    assert opt.current_lr() == _exactly(0.25e-12) and _applied_lr(opt) == _exactly(0.25e-12)
    if isinstance(lr, StepDecay):
        assert isinstance(opt.lr, Scaled) and opt.lr.schedule is lr and opt.lr.factor == 0.25
        model.save(tmp_path / "m.safetensors")
        loaded = xpmlp.load(tmp_path / "m.safetensors", device="cpu")
        assert isinstance(loaded.optimizer.lr, Scaled) and loaded.optimizer.current_lr() == _exactly(0.25e-12)


def test_reduce_lr_on_plateau_respects_min_lr_with_a_schedule():
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.1, patience=0, min_lr=0.4e-12)
    opt = xpmlp.SGD(lr=StepDecay(1e-12, step_size=10**9))
    _model().fit(X, Y, loss=CE, optimizer=opt, epochs=4, callbacks=[plateau])
    assert opt.current_lr() == _exactly(0.4e-12)


# -- 8. inference in batches, no activations kept --------------------------------------------------------
def test_predict_and_evaluate_default_to_batches_with_the_same_results(monkeypatch):
    model = _model()
    model.fit(X, Y, loss=CE, epochs=2)
    Xbig = np.random.default_rng(1).normal(size=(10_000, 4))
    ybig = (Xbig[:, 0] > 0).astype(np.int64)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, training=False: calls.append(x.shape[0]) or forward(x, training))
    by_default = to_numpy(model.predict(Xbig))
    assert max(calls) == xpmlp.train.EVAL_BATCH < 10_000  # batches of EVAL_BATCH rows, not one pass
    calls.clear()
    whole = to_numpy(model.predict(Xbig, batch_size=None))
    assert calls == [10_000]
    np.testing.assert_array_equal(by_default, whole)
    np.testing.assert_allclose(to_numpy(model.predict(Xbig, batch_size=7)), whole, rtol=1e-12, atol=1e-15)
    calls.clear()
    e_default = model.evaluate(Xbig, ybig, metrics=["accuracy"])
    assert max(calls) == xpmlp.train.EVAL_BATCH
    e_whole = model.evaluate(Xbig, ybig, metrics=["accuracy"], batch_size=None)
    assert e_default["accuracy"] == e_whole["accuracy"]
    assert e_default["loss"] == pytest.approx(e_whole["loss"], rel=1e-12)


def _kept_arrays(model):
    """Arrays the layers hold besides parameters and statistics (the activations a pass kept)."""
    return {(i, name): getattr(layer, name) for i, layer in enumerate(model.layers)
            for name in ("_x", "_y", "_mask") if getattr(layer, name, None) is not None}


def test_predicting_many_rows_needs_memory_for_a_few_batches_not_all_activations():
    n, d, hidden = 100_000, 64, 256  # without batches: 100 MB per hidden layer, several alive at once
    Xp = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    model = xpmlp.MLP([d, hidden, hidden, 10], dropout=0.1, seed=0, device="cpu", dtype="float32")
    model.fit(Xp[:256], np.arange(256) % 10, loss=CE, epochs=1, batch_size=64)
    tracemalloc.start()
    try:
        out = model.predict(Xp)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    batch_activations = xpmlp.train.EVAL_BATCH * hidden * 4
    # input (a copy at most) + output (the batches and their concatenation) + a few batches in flight
    assert peak < Xp.nbytes + 2 * out.nbytes + 8 * batch_activations, peak
    assert peak < n * hidden * 4 / 2, peak  # far below one hidden layer's activations for all rows
    assert _kept_arrays(model) == {}


def test_layers_keep_activations_only_for_a_training_pass():
    model = _model(dropout=0.5)
    model.fit(X, Y, loss=CE, epochs=1)
    assert _kept_arrays(model) == {}  # fit ends with an inference pass (its check of the last update)
    xd = model.backend.asarray(X)
    model.forward(xd, training=True)
    assert len(_kept_arrays(model)) >= 3
    model.forward(xd)
    assert _kept_arrays(model) == {}
    with pytest.raises(RuntimeError, match=r"Dense.backward needs a forward pass with training=True"):
        model.backward(np.ones((120, 3)))
    tanh = xpmlp.Tanh()
    tanh.build(4, model.backend, "float64", None)
    tanh.forward(xd)
    with pytest.raises(RuntimeError, match=r"Tanh.backward needs a forward pass with training=True"):
        tanh.backward(xd)


def test_gradcheck_checks_dropout_in_training_mode_and_leaves_its_counter():
    from xpmlp.testing import gradcheck

    model = xpmlp.MLP([4, 6, 3], dropout=0.5, activation="tanh", seed=0, device="cpu", dtype="float64")
    counter = model.layers[2].counter
    errors = gradcheck(model, X[:5], Y[:5], loss=CE)
    assert set(errors) == {"input", "0.W", "0.b", "3.W", "3.b"} and model.layers[2].counter == counter
    # inference mode is possible only for layers that keep nothing
    gradcheck(xpmlp.Dropout(0.5), X[:5], training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        gradcheck(model, X[:5], Y[:5], loss=CE, training=False)


# -- 14. argument checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["fit", "predict", "evaluate"])
def test_batch_size_zero_is_refused_by_name(call):
    model = _model()
    model.fit(X, Y, loss=CE, epochs=1)
    args = {"fit": (X, Y), "predict": (X,), "evaluate": (X, Y)}[call]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        getattr(model, call)(*args, batch_size=0)


@pytest.mark.parametrize("epochs", [-1, 0])
def test_epochs_below_one_is_refused_by_name(epochs):
    with pytest.raises(ValueError, match=f"epochs must be a positive integer, got {epochs}"):
        _model().fit(X, Y, loss=CE, epochs=epochs)


@pytest.mark.parametrize("name", sorted(xpmlp.optim.OPTIMIZERS))
@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_a_bad_learning_rate_is_refused_at_construction(name, lr):
    with pytest.raises(ValueError, match=r"lr \(the learning rate\) must be finite and non-negative"):
        xpmlp.optim.get_optimizer(name, lr=lr)


@pytest.mark.parametrize("lr_decay", [-0.5, float("nan")])
def test_adagrad_refuses_a_negative_lr_decay(lr_decay):
    with pytest.raises(ValueError, match="lr_decay must be finite and non-negative"):
        xpmlp.Adagrad(lr=0.1, lr_decay=lr_decay)


@pytest.mark.parametrize("value", [-1e-3, float("nan"), float("inf")])
def test_a_schedule_giving_a_bad_rate_is_refused_where_it_is_applied(value):
    model = _model()
    before = model.get_weights()
    opt = xpmlp.Adam(lr=lambda step: 1e-3 if step < 3 else value)
    with pytest.raises(ValueError, match=r"Adam: the learning rate for step 4 is not usable: the schedule .* "
                                         rf"returned {value!r}"):
        model.fit(X, Y, loss=CE, optimizer=opt, epochs=2, batch_size=32)
    assert opt.t == 0 and _same_weights(model, before)  # back at the start of the epoch
    sgd = xpmlp.SGD(lr=0.1)
    sgd.lr = value
    with pytest.raises(ValueError, match=rf"SGD: the learning rate for step 1 is not usable: it is {value!r}"):
        sgd.step(np.zeros(1), np.ones(1))


@pytest.mark.parametrize("value", [-0.01, float("nan")])
def test_learning_rate_scheduler_refuses_a_bad_rate_naming_itself(value):
    sched = LearningRateScheduler(lambda epoch, lr: 0.01 if epoch == 0 else value)
    model = _model()
    with pytest.raises(ValueError, match=rf"LearningRateScheduler: schedule\(epoch=1, lr=0.01\) returned {value!r}"):
        model.fit(X, Y, loss=CE, optimizer=xpmlp.SGD(lr=0.1), epochs=3, callbacks=[sched])
    assert len(model.history.epoch) == 1


# -- 15. warnings a newcomer needs --------------------------------------------------------------------------
def _fit_warnings(Xtrain, **model_kw):
    model = xpmlp.MLP([Xtrain.shape[1], 8, 3], seed=0, device="cpu", **model_kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(Xtrain, Y[: len(Xtrain)], loss=CE, epochs=1)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_raw_pixels_get_a_warning_suggesting_scaling():
    pixels = np.random.default_rng(0).integers(0, 256, size=(120, 4))
    messages = _fit_warnings(pixels)
    assert len(messages) == 1 and "X looks unscaled: its largest absolute value is 255" in messages[0]
    assert "Divide them by 255" in messages[0] and "standardize=True" in messages[0]
    money = X * 5e4
    assert any("scale the features" in m for m in _fit_warnings(money))


def test_scaled_inputs_and_standardize_models_get_no_warning():
    pixels = np.random.default_rng(0).integers(0, 256, size=(120, 4))
    assert _fit_warnings(pixels / 255.0) == []
    assert _fit_warnings(X) == []
    assert _fit_warnings(X * 10 + 50) == []  # percentages, small counts: within [-100, 100]
    assert _fit_warnings(pixels, standardize=True) == []


def test_predict_without_a_loss_warns_once_that_it_returns_raw_outputs():
    model = xpmlp.MLP([4, 8, 3], seed=0, device="cpu")
    with pytest.warns(UserWarning, match=r"no loss .* predict returns its raw outputs \(logits\).*"
                                         r"model.loss = xpmlp.losses.get_loss\('softmax_cross_entropy'\)"):
        raw = to_numpy(model.predict(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(X)  # once per model
        model.fit(X, Y, loss=CE, epochs=1)
        p = to_numpy(model.predict(X))
    assert not np.allclose(raw.sum(axis=1), 1.0) and np.allclose(p.sum(axis=1), 1.0)

"""fit's options: validation, metrics, weights, schedules, history, callbacks, progress, divergence."""

import math
import sys

import numpy as np
import pytest

import xpmlp
from xpmlp import to_numpy
from xpmlp.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                             ReduceLROnPlateau, TerminateOnNaN)
from xpmlp.schedules import CosineDecay, ExponentialDecay, OneCycle, StepDecay

rng = np.random.default_rng(0)
X = rng.normal(size=(120, 4))
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8)
Xv = rng.normal(size=(40, 4))
Yv = (Xv[:, 0] + 0.5 * Xv[:, 1] > 0).astype(np.int64) + (Xv[:, 2] > 0.8)


def _model(case=None, **kw):
    kwargs = case.model_kwargs() if case is not None else {"device": "cpu", "dtype": "float64"}
    return xpmlp.MLP([4, 8, 3], activation="tanh", seed=0, **kwargs, **kw)


class Recorder(Callback):
    """Keeps each epoch's logs and weights."""

    def __init__(self):
        self.logs, self.weights = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.weights.append(self.model.get_weights())


# -- validation and metrics ------------------------------------------------------------------------
def test_validation_data_and_metrics_match_evaluate(case):
    model = _model(case)
    history = model.fit(X, Y, loss="softmax_cross_entropy", epochs=3, batch_size=16,
                        validation_data=(Xv, Yv), metrics=["accuracy", "top_2_accuracy"])
    assert list(history.history) == ["loss", "accuracy", "top_2_accuracy", "val_loss", "val_accuracy",
                                     "val_top_2_accuracy", "lr", "epoch_time", "samples_per_s"]
    final = model.evaluate(Xv, Yv, metrics=["accuracy", "top_2_accuracy"], batch_size=7)
    p = to_numpy(model.predict(Xv))
    np.testing.assert_allclose(history["val_loss"][-1], final["loss"], rtol=case.rtol * 10)
    assert history["val_accuracy"][-1] == final["accuracy"] == np.mean(p.argmax(1) == Yv)
    top2 = np.mean([Yv[i] in np.argsort(-p[i])[:2] for i in range(len(Yv))])
    assert final["top_2_accuracy"] == pytest.approx(top2)


def test_streamed_training_metrics_equal_whole_set_metrics():
    """With a zero learning rate the weights stay put, so per-batch sums must equal one pass."""
    model = _model()
    metrics = ["accuracy", "mse", "mae", "r2"]
    Yr = np.column_stack([X[:, 0] * 2, X[:, 1] - X[:, 3]])
    reg = xpmlp.MLP([4, 8, 2], seed=0, device="cpu", dtype="float64")
    history = reg.fit(X, Yr, loss="mse", optimizer=xpmlp.SGD(lr=0.0), epochs=1, batch_size=7, metrics=metrics[1:])
    p = to_numpy(reg.predict(X))
    r2 = np.mean(1 - ((p - Yr) ** 2).sum(0) / ((Yr - Yr.mean(0)) ** 2).sum(0))
    assert history["mse"][0] == pytest.approx(np.mean((p - Yr) ** 2), rel=1e-12)
    assert history["mae"][0] == pytest.approx(np.mean(np.abs(p - Yr)), rel=1e-12)
    assert history["r2"][0] == pytest.approx(r2, rel=1e-12)
    h = model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.SGD(lr=0.0), epochs=1, batch_size=7,
                  metrics=["accuracy"])
    assert h["accuracy"][0] == np.mean(to_numpy(model.predict(X)).argmax(1) == Y)


def test_callable_metric_gets_numpy_arrays():
    seen = []

    def balanced_error(y_true, y_pred):
        seen.append((type(y_true), y_pred.shape))
        return float(np.mean(y_pred.argmax(1) != y_true))

    history = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, validation_data=(Xv, Yv),
                           metrics=[balanced_error])
    assert seen[0] == (np.ndarray, (40, 3)) and len(history["val_balanced_error"]) == 2


def test_validation_split_is_shuffled_stratified_and_seeded():
    order = np.argsort(Y, kind="stable")  # class-ordered data: a tail split would hold one class
    Xs, Ys = X[order], Y[order]
    seen = {}

    class Grab(Callback):
        def on_train_begin(self, logs=None):
            seen["std"] = to_numpy(self.model.layers[0].state["mean"])

    model = xpmlp.MLP([4, 8, 3], seed=0, device="cpu", dtype="float64", standardize=True)
    h1 = model.fit(Xs, Ys, loss="softmax_cross_entropy", epochs=1, validation_split=0.25, seed=5,
                   metrics=["accuracy"], callbacks=[Grab()])
    # Standardize saw only the 90 training rows
    assert not np.allclose(seen["std"], Xs.mean(axis=0))
    from xpmlp.train import _split

    train, val = _split(model, model.loss, model.backend.from_host(Ys), 0.25, np.random.default_rng(5))
    # each class sends its 25% share, rounded up or down, of its rows to validation; 30 in all
    share, got = 0.25 * np.bincount(Ys, minlength=3), np.bincount(Ys[val], minlength=3)
    assert np.all(np.abs(got - share) < 1) and got.sum() == 30
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == len(Ys)
    np.testing.assert_allclose(seen["std"], Xs[train].mean(axis=0))
    h2 = xpmlp.MLP([4, 8, 3], seed=0, device="cpu", dtype="float64", standardize=True).fit(
        Xs, Ys, loss="softmax_cross_entropy", epochs=1, validation_split=0.25, seed=5)
    assert h1["val_loss"] == h2["val_loss"]


# -- weights -----------------------------------------------------------------------------------------
def test_weighted_loss_value_and_gradient(case64):
    from xpmlp.testing import numeric_gradient

    z = case64.asarray(rng.normal(size=(5, 3)))
    y = case64.backend.from_host(np.array([0, 2, 1, 1, 0]))
    w = case64.asarray(np.array([1.0, 0.0, 2.5, 1.0, 0.5]))
    loss = xpmlp.SoftmaxCrossEntropy()
    with case64.activate():  # a loss used directly runs on the current device (CuPy)
        value = float(loss.forward(z, y, w))
        rows = [float(loss.forward(z[i:i + 1, ...], y[i:i + 1])) for i in range(5)]
        loss.forward(z, y, w)
        analytic = to_numpy(loss.backward())
    assert value == pytest.approx(np.dot(rows, to_numpy(w)) / 5, rel=1e-12)
    numeric = numeric_gradient(lambda a: loss.forward(a, y, w), z)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_class_weight_equals_the_matching_sample_weight():
    table = {0: 1.0, 1: 3.0, 2: 0.5}
    a = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, class_weight=table, seed=1)
    b = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, sample_weight=np.vectorize(table.get)(Y), seed=1)
    assert a["loss"] == b["loss"]
    counts = np.bincount(Y)
    balanced = {c: len(Y) / (3 * counts[c]) for c in range(3)}
    c = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, class_weight="balanced", seed=1)
    d = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, class_weight=balanced, seed=1)
    np.testing.assert_allclose(c["loss"], d["loss"], rtol=1e-12)


# -- bad options are refused before training -----------------------------------------------------------
@pytest.mark.parametrize("kwargs,pattern", [
    ({"metrics": ["f1"]}, "unknown metric 'f1'; valid names: .*accuracy"),
    ({"validation_split": 1.5}, r"validation_split must be in \(0, 1\), got 1.5"),
    ({"validation_split": -0.1}, r"validation_split must be in \(0, 1\)"),
    ({"validation_data": (Xv[:, :3], Yv)}, "X_val has 3 features but the model expects 4"),
    ({"validation_data": (Xv, Yv[:5])}, "X_val and y_val have different lengths: 40 and 5"),
    ({"validation_data": (Xv, Yv), "validation_split": 0.2}, "not both"),
    ({"class_weight": {0: 1.0, 5: 2.0}}, r"class_weight names unknown classes \[5\]; the model's classes are 0..2"),
    ({"class_weight": "even"}, "class_weight must be a dict or 'balanced'"),
    ({"sample_weight": np.ones(7)}, r"sample_weight must have shape \(120,\), got \(7,\)"),
    ({"sample_weight": -np.ones(120)}, "sample_weight must be finite and non-negative"),
    ({"callbacks": [EarlyStopping(monitor="val_accuracy")]}, "monitors 'val_accuracy', which fit does not log.*validation_data"),
    ({"callbacks": [ReduceLROnPlateau(monitor="accuracy")], "validation_data": (Xv, Yv)}, "monitors 'accuracy'"),
    ({"callbacks": ["early"]}, "callbacks must be Callback objects"),
    ({"on_divergence": "ignore"}, "on_divergence must be 'raise' or 'warn'"),
])
def test_bad_options_fail_before_training(kwargs, pattern):
    model = _model()
    before = model.get_weights()
    with pytest.raises((ValueError, TypeError), match=pattern):
        model.fit(X, Y, loss="softmax_cross_entropy", epochs=2, **kwargs)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="mode must be"):
        EarlyStopping(mode="up")


# -- schedules -------------------------------------------------------------------------------------------
def _torch_lrs(make_scheduler, steps, lr=0.1):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("ours,theirs", [
    (StepDecay(0.1, step_size=3, gamma=0.5), lambda s, o: s.StepLR(o, step_size=3, gamma=0.5)),
    (ExponentialDecay(0.1, decay_rate=0.9), lambda s, o: s.ExponentialLR(o, gamma=0.9)),
    (OneCycle(0.1, total_steps=20), lambda s, o: s.OneCycleLR(o, max_lr=0.1, total_steps=20, cycle_momentum=False)),
])
def test_schedules_match_torch(ours, theirs):
    expected = _torch_lrs(theirs, 20)
    np.testing.assert_allclose([ours(t) for t in range(20)], expected, rtol=1e-9)


def test_cosine_with_warmup():
    s = CosineDecay(1.0, total_steps=10, warmup_steps=2, final_lr=0.1)
    assert [s(0), s(1)] == [0.5, 1.0]
    assert s(2) == pytest.approx(1.0) and s(6) == pytest.approx(0.55) and s(10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        CosineDecay(1.0, total_steps=5, warmup_steps=5)


def test_schedule_drives_the_optimizer_step_by_step(case):
    sched = StepDecay(0.5, step_size=2, gamma=0.1)
    opt = xpmlp.SGD(lr=sched)
    w, g = case.asarray(np.zeros(3)), case.asarray(np.ones(3))
    with case.activate():  # an optimiser used directly runs on the current device (CuPy)
        for _ in range(5):
            opt.step(w, g)
    expected = -sum(sched(t) for t in range(5))
    np.testing.assert_allclose(to_numpy(w), expected, rtol=case.rtol)
    history = _model(case).fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=ExponentialDecay(0.01, 0.5, 8)),
                               epochs=2, batch_size=16)
    assert history["lr"] == pytest.approx([0.01 * 0.5 ** (8 / 8), 0.01 * 0.5 ** (16 / 8)])


# -- history ----------------------------------------------------------------------------------------------
def test_history_frame_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    history = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=3, validation_data=(Xv, Yv), metrics=["accuracy"])
    frame = history.to_frame()
    assert list(frame.index) == [0, 1, 2] and frame.index.name == "epoch"
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "lr", "epoch_time", "samples_per_s"} <= set(frame.columns)
    assert (frame["samples_per_s"] > 0).all() and (frame["lr"] == 1e-3).all()
    fig = history.plot(tmp_path / "curves.png")
    assert len(fig.axes) == 2 and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_history_plot_without_matplotlib(monkeypatch):
    history = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install 'xpmlp\[plot\]'"):
        history.plot()


# -- callbacks ----------------------------------------------------------------------------------------------
def test_early_stopping_stops_and_restores_best():
    rec = Recorder()
    stop = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    model = _model()
    # a learning rate that overshoots: val_loss soon stops improving
    history = model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.SGD(lr=3.0), epochs=30,
                        validation_data=(Xv, Yv), callbacks=[rec, stop])
    assert stop.stopped_epoch is not None and len(history["loss"]) == stop.stopped_epoch + 1 < 30
    best = int(np.argmin(history["val_loss"]))
    assert best == stop.best_epoch
    for a, b in zip(model.get_weights(), rec.weights[best]):
        np.testing.assert_array_equal(a, b)


def test_restore_best_weights_also_when_epochs_run_out():
    rec = Recorder()
    stop = EarlyStopping(monitor="val_loss", patience=100, restore_best_weights=True)
    model = _model()
    history = model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.SGD(lr=10.0), epochs=4,
                        validation_data=(Xv, Yv), callbacks=[rec, stop])
    assert len(history["loss"]) == 4
    best = int(np.argmin(history["val_loss"]))
    assert best != 3, "the test needs a run whose last epoch is not the best"
    for a, b in zip(model.get_weights(), rec.weights[best]):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_best_only_and_every_epoch(tmp_path):
    every = ModelCheckpoint(tmp_path / "e{epoch:02d}.safetensors")
    best = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True)
    rec = Recorder()
    model = _model()
    history = model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.SGD(lr=3.0), epochs=6,
                        validation_data=(Xv, Yv), callbacks=[rec, every, best])
    assert sorted(p.name for p in tmp_path.glob("e*")) == [f"e{i:02d}.safetensors" for i in range(1, 7)]
    loaded = xpmlp.load(tmp_path / "best.safetensors", device="cpu")
    best_epoch = int(np.argmin(history["val_loss"]))
    for a, b in zip(loaded.get_weights(), rec.weights[best_epoch]):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_scheduler_and_reduce_on_plateau():
    history = _model().fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.SGD(lr=0.1), epochs=4,
                           callbacks=[LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))])
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    # lr 0 keeps val_loss exactly constant: a plateau from the first epoch
    plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=0.0)
    opt = xpmlp.SGD(lr=1e-12)
    _model().fit(X, Y, loss="softmax_cross_entropy", optimizer=opt, epochs=6, validation_data=(Xv, Yv),
                 callbacks=[plateau])
    assert opt.lr == pytest.approx(1e-12 * 0.5 ** 2, rel=1e-9, abs=0)  # reduced after epochs 3 and 5


def test_csv_logger_writes_each_epoch(tmp_path):
    import pandas as pd

    path = tmp_path / "log.csv"
    history = _model().fit(X, Y, loss="softmax_cross_entropy", epochs=3, validation_data=(Xv, Yv),
                           callbacks=[CSVLogger(path)])
    frame = pd.read_csv(path)
    assert list(frame["epoch"]) == [0, 1, 2]
    np.testing.assert_allclose(frame["val_loss"], history["val_loss"])


# -- progress ------------------------------------------------------------------------------------------------
def test_verbose_two_prints_one_line_per_epoch(capsys):
    _model().fit(X, Y, loss="softmax_cross_entropy", epochs=3, verbose=2, metrics=["accuracy"])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 3 and "accuracy" in lines[0] and "samples/s" in lines[0]


def test_verbose_one_without_a_terminal_prints_lines(capsys):
    _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, verbose=1)
    out = capsys.readouterr().out
    assert out.count("epoch ") == 2 and "\r" not in out


def test_verbose_one_on_a_terminal_shows_a_bar(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "8/8" in out and "batch" in out


def test_quiet_at_verbose_zero(capsys):  # the default, "auto", shows progress: tests/test_keras_fit.py
    _model().fit(X, Y, loss="softmax_cross_entropy", epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_progress_bar_does_not_sync_per_batch(monkeypatch):
    """Count device-to-host reads (float/bool/int of an array) during fit: they must not grow with the batch count."""
    strict = pytest.importorskip("array_api_strict")
    from array_api_strict._array_object import Array

    reads = {"n": 0}
    for name in ("__float__", "__bool__", "__int__", "__index__"):
        original = getattr(Array, name)

        def counting(self, *a, _original=original):
            reads["n"] += 1
            return _original(self, *a)

        monkeypatch.setattr(Array, name, counting)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    def run(batch_size):
        reads["n"] = 0
        model = xpmlp.MLP([4, 8, 3], seed=0, xp=strict)
        model.fit(X, Y, loss="softmax_cross_entropy", epochs=2, batch_size=batch_size, verbose=1, metrics=["accuracy"])
        return reads["n"]

    few, many = run(60), run(4)  # 2 batches vs 30 batches per epoch
    assert few == many, (few, many)


# -- divergence ------------------------------------------------------------------------------------------------
def _diverging_fit(model, rec, **kw):
    # epoch 1 is sane; from epoch 2 a learning rate of 1e300 overflows float32 and float64 alike
    boom = LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch == 0 else 1e300)
    return model.fit(X * 1e3, Y, loss="softmax_cross_entropy", optimizer=xpmlp.SGD(lr=1e-3), epochs=4,
                     batch_size=16, callbacks=[rec, boom, *kw.pop("callbacks", [])], **kw)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the overflow is the point
@pytest.mark.filterwarnings("ignore:X looks unscaled:UserWarning")
def test_divergence_raises_names_epoch_and_batch_and_keeps_last_finite_weights(case):
    model, rec = _model(case), Recorder()
    with pytest.raises(xpmlp.DivergenceError, match=r"became (nan|inf) in epoch 2 \(first at batch \d+: .*"
                                                    r"the weights from the end of epoch 1 were kept.*"
                                                    r"learning rate too high.*unscaled inputs"):
        _diverging_fit(model, rec)
    assert len(rec.weights) == 1
    for a, b in zip(model.get_weights(), rec.weights[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the overflow is the point
@pytest.mark.filterwarnings("ignore:X looks unscaled:UserWarning")
def test_divergence_can_warn_or_stop_quietly():
    model, rec = _model(), Recorder()
    with pytest.warns(RuntimeWarning, match="in epoch 2"):
        history = _diverging_fit(model, rec, on_divergence="warn")
    assert len(history["loss"]) == 1 and all(math.isfinite(v) for v in history["loss"])
    for a, b in zip(model.get_weights(), rec.weights[0]):
        np.testing.assert_array_equal(a, b)
    history = _diverging_fit(_model(), Recorder(), callbacks=[TerminateOnNaN()])
    assert len(history["loss"]) == 1


# -- summary and saving with a schedule ------------------------------------------------------------------------------
def test_summary_lists_layers_and_counts(capsys):
    model = xpmlp.MLP([784, 64, 10], dropout=0.1, standardize=True, device="cpu", seed=0)
    model.fit(rng.normal(size=(20, 784)), np.arange(20) % 10, loss="softmax_cross_entropy")
    capsys.readouterr()
    text = model.summary()
    assert capsys.readouterr().out.strip() == text.strip()
    assert "Dense(64)" in text and "(None, 64)" in text and "50,240" in text and "Dropout(0.1)" in text
    assert "Total parameters: 50,890" in text and "+1,568 statistics" in text


def test_saving_keeps_a_schedule(tmp_path):
    model = _model()
    model.fit(X, Y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=CosineDecay(0.01, 100, 5)), epochs=1)
    model.save(tmp_path / "m.safetensors")
    loaded = xpmlp.load(tmp_path / "m.safetensors", device="cpu")
    assert isinstance(loaded.optimizer.lr, CosineDecay) and loaded.optimizer.current_lr() == model.optimizer.current_lr()
    model.optimizer.lr = lambda step: 0.001
    with pytest.warns(UserWarning, match="plain function, which cannot be saved"):
        model.save(tmp_path / "f.safetensors")
    assert xpmlp.load(tmp_path / "f.safetensors").optimizer.lr == 0.001

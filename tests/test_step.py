"""The train step (xpmlp.step) and the flat parameters (xpmlp.params).

- The NumPy FusedStep is BITWISE equal to the ReferenceStep, step by step (weights, optimiser
  state, outputs, per-row losses), for every activation, with and without Dropout, Standardize,
  biases, sample weights, each fused loss and label form, float32 and float64, a short last batch.
- make_train_step picks the variant once, from the backend, the model and the loss.
- A whole fit with the fused step equals one with XPMLP_REFERENCE=1, bit for bit.
- Parameters are views of one flat buffer per model, on every backend; snapshot and restore are
  one copy each and keep the views valid.
"""

from __future__ import annotations

import numpy as np
import pytest

import xpmlp
from xpmlp.backend import to_numpy
from xpmlp.layers import Dense, Dropout, Standardize, get_activation
from xpmlp.losses import get_loss
from xpmlp.optim import SGD, Adam, RMSprop
from xpmlp.step import FusedStep, ReferenceStep, fused_plan, make_train_step

ACTIVATIONS = ["relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "identity"]


def _layers(act, dropout, standardize, bias=True, widths=(7, 5)):
    layers = [Standardize()] if standardize else []
    for w in widths:
        layers += [Dense(w, bias=bias), get_activation(act)]
        if dropout:
            layers.append(Dropout(dropout))
    return layers


def _targets(loss, rng, n, k):
    if loss == "softmax_cross_entropy":
        return rng.integers(0, k, n)
    if loss == "softmax_cross_entropy_probs":
        p = rng.random((n, k))
        return p / p.sum(axis=1, keepdims=True)
    if loss == "sigmoid_binary_cross_entropy":
        return rng.integers(0, 2, (n, k)).astype(float)
    return rng.normal(size=(n, k))


def _pair(layers_fn, loss_name, dtype, optimizer_fn, k, d=6):
    """Two identical built models (same seed) with their steps: (reference, fused)."""
    loss = get_loss("softmax_cross_entropy" if loss_name.startswith("softmax") else loss_name)
    out = []
    for fused in (False, True):
        model = xpmlp.Sequential(layers_fn() + [Dense(k)], device="cpu", dtype=dtype, seed=3, in_features=d)
        opt = optimizer_fn()
        if fused:
            step = make_train_step(model, loss, opt)
        else:
            step = ReferenceStep(model, loss, opt)
        out.append((model, step))
    return out


def _run_steps(model, step, loss_name, batches, w=None):
    outs = []
    xp = model.xp
    for xb, yb, wb in batches:
        yd = step.loss.prepare_targets(yb, model.backend, model.dtype, model.out_features)
        row = xp.zeros(xb.shape[0], dtype=model.backend.dtype(model.dtype))
        z = step(model.backend.from_host(xb.astype(model.dtype)), yd,
                 None if wb is None else model.backend.from_host(wb.astype(model.dtype)), row)
        outs.append((to_numpy(z).copy(), to_numpy(row).copy()))
    return outs


def _batches(rng, loss_name, dtype, k, sizes=(8, 8, 3), d=6, weighted=False):
    out = []
    for n in sizes:
        x = rng.normal(size=(n, d)) * 2
        w = rng.random(n) * 2 if weighted else None
        out.append((x, _targets(loss_name, rng, n, k), w))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dropout,standardize,bias", [(0.0, False, True), (0.3, True, True), (0.0, False, False)])
def test_fused_step_is_bitwise_the_reference(act, dropout, standardize, bias, dtype):
    rng = np.random.default_rng(0)
    k = 4
    (m_ref, s_ref), (m_fast, s_fast) = _pair(lambda: _layers(act, dropout, standardize, bias), "softmax_cross_entropy",
                                             dtype, lambda: Adam(lr=0.05), k)
    assert isinstance(s_fast, FusedStep) and s_fast.variant == "numpy"
    if standardize:
        x0 = rng.normal(size=(20, 6)) * 3 + 1
        for m in (m_ref, m_fast):
            m.layers[0].adapt(m.backend.from_host(x0.astype(dtype)))
    batches = _batches(rng, "softmax_cross_entropy", dtype, k)
    ref = _run_steps(m_ref, s_ref, "softmax_cross_entropy", batches)
    fast = _run_steps(m_fast, s_fast, "softmax_cross_entropy", batches)
    for (z1, r1), (z2, r2) in zip(ref, fast):
        np.testing.assert_array_equal(z1, z2)
        np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(m_ref.flat.to_host(), m_fast.flat.to_host())
    sd_ref, sd_fast = s_ref.optimizer.state_dict(), s_fast.optimizer.state_dict()
    assert sd_ref["t"] == sd_fast["t"] == len(batches)
    for key in sd_ref["state"]:
        np.testing.assert_array_equal(to_numpy(sd_ref["state"][key]), to_numpy(sd_fast["state"][key]))
    if dropout:
        assert [l.counter for l in m_ref.layers if isinstance(l, Dropout)] == \
               [l.counter for l in m_fast.layers if isinstance(l, Dropout)] == [3, 3]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss_name", ["softmax_cross_entropy", "softmax_cross_entropy_probs",
                                       "sigmoid_binary_cross_entropy", "mse"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_losses_are_bitwise_the_reference(loss_name, weighted, dtype):
    rng = np.random.default_rng(1)
    k = 3
    opt = lambda: SGD(lr=0.1, momentum=0.9)  # noqa: E731
    (m_ref, s_ref), (m_fast, s_fast) = _pair(lambda: _layers("tanh", 0.0, False), loss_name, dtype, opt, k)
    assert isinstance(s_fast, FusedStep)
    batches = _batches(rng, loss_name, dtype, k, weighted=weighted)
    for (z1, r1), (z2, r2) in zip(_run_steps(m_ref, s_ref, loss_name, batches),
                                  _run_steps(m_fast, s_fast, loss_name, batches)):
        np.testing.assert_array_equal(z1, z2)
        np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(m_ref.flat.to_host(), m_fast.flat.to_host())


def test_label_smoothing_is_fused_bitwise():
    rng = np.random.default_rng(2)
    loss = xpmlp.losses.SoftmaxCrossEntropy(label_smoothing=0.1)
    models = [xpmlp.MLP([5, 6, 3], seed=0) for _ in range(2)]
    steps = [ReferenceStep(models[0], loss, RMSprop(lr=0.01)), make_train_step(models[1], loss, RMSprop(lr=0.01))]
    assert isinstance(steps[1], FusedStep)
    x, y = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
    for m, s in zip(models, steps):
        row = np.zeros(9, dtype=np.float32)
        s(m.backend.from_host(x.astype(np.float32)), loss.prepare_targets(y, m.backend, m.dtype, 3), None, row)
    np.testing.assert_array_equal(models[0].flat.to_host(), models[1].flat.to_host())


def test_fused_fit_equals_reference_fit_bitwise(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(203, 8)), rng.integers(0, 3, 203)

    def run():
        model = xpmlp.MLP([8, 16, 16, 3], dropout=0.2, standardize=True, seed=5)
        h = model.fit(X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=0.01), epochs=3, batch_size=32,
                      metrics=["accuracy"], validation_split=0.2)
        return model, h

    fast, h_fast = run()
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    ref, h_ref = run()
    np.testing.assert_array_equal(fast.flat.to_host(), ref.flat.to_host())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert h_fast[key] == h_ref[key], key


def test_make_train_step_picks_the_variant(monkeypatch):
    loss = get_loss("softmax_cross_entropy")
    model = xpmlp.MLP([4, 5, 3], seed=0)
    assert make_train_step(model, loss, Adam()).variant == "numpy"
    monkeypatch.setenv("XPMLP_REFERENCE", "1")
    assert isinstance(make_train_step(model, loss, Adam()), ReferenceStep)
    monkeypatch.delenv("XPMLP_REFERENCE")
    # what the fused step does not cover: the reference
    assert isinstance(make_train_step(model, get_loss("huber"), Adam()), ReferenceStep)
    softmax_inside = xpmlp.Sequential([Dense(5), xpmlp.Softmax(), Dense(3)], in_features=4)
    assert isinstance(make_train_step(softmax_inside, loss, Adam()), ReferenceStep)
    last_activation = xpmlp.Sequential([Dense(5), xpmlp.ReLU(), Dense(3), xpmlp.Sigmoid()], in_features=4)
    assert isinstance(make_train_step(last_activation, get_loss("mse"), Adam()), ReferenceStep)
    assert fused_plan(last_activation, get_loss("mse")) is None
    strict = pytest.importorskip("array_api_strict")
    on_strict = xpmlp.MLP([4, 5, 3], xp=strict, seed=0)
    assert isinstance(make_train_step(on_strict, loss, Adam()), ReferenceStep)
    with pytest.raises(ValueError, match="built model"):
        make_train_step(xpmlp.Sequential([Dense(3)]), loss, Adam())


def test_snapshot_and_restore_of_a_step():
    rng = np.random.default_rng(0)
    model = xpmlp.MLP([4, 6, 3], dropout=0.5, seed=0)
    loss, opt = get_loss("softmax_cross_entropy"), Adam(lr=0.1)
    step = make_train_step(model, loss, opt)
    x = model.backend.from_host(rng.normal(size=(5, 4)).astype(np.float32))
    y = loss.prepare_targets(rng.integers(0, 3, 5), model.backend, model.dtype, 3)
    row = np.zeros(5, dtype=np.float32)
    step(x, y, None, row)
    saved = step.snapshot()
    before = (model.flat.to_host(), {k: to_numpy(v).copy() for k, v in opt.state_dict()["state"].items()},
              opt.t, model.layers[2].counter)
    views = [p.value for p in model.parameters()]
    step(x, y, None, row)
    step(x, y, None, row)
    assert not np.array_equal(model.flat.to_host(), before[0])
    step.restore(saved)
    np.testing.assert_array_equal(model.flat.to_host(), before[0])
    for k, v in opt.state_dict()["state"].items():
        np.testing.assert_array_equal(to_numpy(v), before[1][k])
    assert opt.t == before[2] and model.layers[2].counter == before[3]
    # the layers still read the model's buffer: the restore wrote into it
    assert all(np.shares_memory(p.value, model.flat.data) for p in model.parameters())
    assert all(v is p.value for v, p in zip(views, model.parameters()))


# -- flat parameters ---------------------------------------------------------------------------------
def _flat_order(model, weights):
    """``weights`` (in parameters() order) laid out as the model's flat buffer holds them."""
    order = np.argsort(model.flat.offsets)
    return np.concatenate([weights[i].reshape(-1) for i in order])


def test_parameters_are_views_of_one_buffer(case):
    model = xpmlp.MLP([3, 4, 2], seed=0, **case.model_kwargs())
    params = model.parameters()
    assert [p.name for p in params] == ["layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b"]
    assert model.flat.size == model.n_params == 3 * 4 + 4 + 4 * 2 + 2
    # the weight matrices first (weight decay that spares biases covers flat.data[:n_decay]), then the biases
    assert model.flat.offsets == [0, 20, 12, 24] and model.flat.n_decay == 20
    flat = to_numpy(model.flat.data)
    for p, offset in zip(params, model.flat.offsets):
        np.testing.assert_array_equal(to_numpy(p.value).reshape(-1), flat[offset:offset + p.size])
    # a write into the buffer is seen by every layer (on every backend the reference path runs on)
    with model.backend.activate():
        model.flat.data[...] = model.xp.ones_like(model.flat.data)
        for p in params:
            np.testing.assert_array_equal(to_numpy(p.value), 1.0)
        # and a write through a view is seen in the buffer
        params[1].value[...] = model.backend.from_host(np.full(4, 2.0, dtype=case.dtype))
        np.testing.assert_array_equal(to_numpy(model.flat.data)[20:24], 2.0)
    # set_weights and get_weights go through the same buffer
    weights = [np.arange(p.size, dtype=float).reshape(p.shape) for p in params]
    model.set_weights(weights)
    for w, got in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(w, got)
    np.testing.assert_array_equal(model.flat.to_host(), _flat_order(model, weights))


def test_set_weights_checks_everything_before_changing_anything():
    model = xpmlp.MLP([3, 4, 2], seed=0)
    before = model.flat.to_host()
    good = model.get_weights()
    with pytest.raises(ValueError, match="layers.2.W"):
        model.set_weights([w + 1 for w in good[:2]] + [np.zeros((5, 2)), good[3]])
    np.testing.assert_array_equal(model.flat.to_host(), before)


def test_backward_writes_into_the_flat_gradient_buffer(case64):
    rng = np.random.default_rng(0)
    model = xpmlp.MLP([3, 4, 2], seed=0, **case64.model_kwargs())
    with model.backend.activate():
        x = model.backend.from_host(rng.normal(size=(5, 3)))
        z = model.forward(x, training=True)
        model.backward(model.xp.ones_like(z))
    grads = _flat_order(model, [to_numpy(p.grad) for p in model.parameters()])
    np.testing.assert_array_equal(to_numpy(model.flat.grad), grads)
    assert np.abs(grads).sum() > 0

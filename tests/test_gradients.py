"""``model.gradients``: the loss and each parameter's gradient by name, against torch autograd."""

import zlib

import numpy as np
import pytest

import xpmlp
from fit_data import random_targets
from xpmlp import to_numpy
from xpmlp.backend import namespace_of
from xpmlp.lbfgs import loss_and_gradient
from xpmlp.losses import get_loss

torch = pytest.importorskip("torch")
F = torch.nn.functional

ACTIVATIONS = {
    "identity": lambda x: x, "relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.01), "elu": F.elu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"), "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "softplus": F.softplus, "softmax": lambda x: torch.softmax(x, dim=1),
}
# each row's loss (reduction="none", then the mean over the row's outputs where there are several)
ROW_LOSSES = {
    "softmax_cross_entropy": lambda z, y: F.cross_entropy(z, y, reduction="none"),
    "sigmoid_binary_cross_entropy": lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(1),
    "mse": lambda z, y: F.mse_loss(z, y, reduction="none").mean(1),
    "mae": lambda z, y: F.l1_loss(z, y, reduction="none").mean(1),
    "huber": lambda z, y: F.huber_loss(z, y, reduction="none").mean(1),
}
NAMES = sorted(ACTIVATIONS)


_targets = random_targets


def _torch_loss_and_grads(model, x, y, loss, weights):
    """sum_i w_i * loss_i / n and its gradient for every parameter, by autograd (float64)."""
    params = {p.name: torch.tensor(to_numpy(p.value), requires_grad=True) for p in model.parameters()}
    h = torch.tensor(x)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, xpmlp.Dense):
            h = h @ params[f"layers.{i}.W"] + params[f"layers.{i}.b"]
        elif isinstance(layer, xpmlp.Activation):
            h = ACTIVATIONS[layer.name](h)  # Dropout: inference mode, nothing to do
    rows = ROW_LOSSES[loss](h, torch.tensor(y))
    value = (rows if weights is None else rows * torch.tensor(weights)).sum() / x.shape[0]
    value.backward()
    return value.detach().item(), {name: t.grad.numpy() for name, t in params.items()}


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", sorted(ROW_LOSSES))
def test_gradients_match_torch_autograd(case64, loss, weighted):
    """Every loss, with and without sample weights, through two hidden layers whose activations
    cycle through all nine (so each is seen twice across the losses), on every float64 backend."""
    seed = zlib.crc32(f"{loss}-{weighted}".encode())
    rng = np.random.default_rng(seed)
    k = sorted(ROW_LOSSES).index(loss)
    acts = [NAMES[(2 * k) % 9], NAMES[(2 * k + 1 + weighted) % 9]]
    sizes = [4, 6, 5, 3]
    model = xpmlp.MLP(sizes, activation=acts, seed=seed, **case64.model_kwargs())
    n = 11
    x = rng.normal(0, 1.5, size=(n, sizes[0]))
    y = _targets(loss, n, sizes[-1], rng)
    w = rng.uniform(0, 3, size=n) if weighted else None
    before = model.flat.to_host()

    value, grads = model.gradients(case64.asarray(x), y, loss=loss, sample_weight=w)

    expected_value, expected = _torch_loss_and_grads(model, x, y, loss, w)
    assert isinstance(value, float)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    assert list(grads) == [p.name for p in model.parameters()]
    for name, g in grads.items():
        assert namespace_of(g) is namespace_of(model.flat.data)  # the model's own library
        assert tuple(g.shape) == tuple(expected[name].shape)
        np.testing.assert_allclose(to_numpy(g), expected[name], rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_array_equal(model.flat.to_host(), before)  # weights untouched


def test_gradients_are_in_inference_mode_and_change_no_state():
    """Dropout passes inputs through (the gradients are those of the same model without it), its
    counter does not move, and the weights, optimiser state and RNG states stay as they were."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    with_dropout = xpmlp.MLP([4, 8, 3], dropout=0.5, seed=1, dtype="float64")
    plain = xpmlp.MLP([4, 8, 3], seed=1, dtype="float64")
    with_dropout.fit(x, y, loss="softmax_cross_entropy", epochs=2, batch_size=8)
    plain.set_weights(with_dropout.get_weights())
    dropout = with_dropout.layers[2]
    counter, weights = dropout.counter, with_dropout.flat.to_host()
    state = {k: to_numpy(v).copy() for k, v in with_dropout.optimizer.state_dict()["state"].items()}
    t, rng_state = with_dropout.optimizer.t, with_dropout.get_rng_state()

    value, grads = with_dropout.gradients(x, y)  # the model's loss
    expected_value, expected = plain.gradients(x, y, loss="softmax_cross_entropy")

    assert value == expected_value and value == pytest.approx(with_dropout.evaluate(x, y), rel=1e-12)
    assert list(grads) == ["layers.0.W", "layers.0.b", "layers.3.W", "layers.3.b"]  # Dropout is layer 2
    for got, exp in zip(grads.values(), expected.values(), strict=True):
        np.testing.assert_array_equal(got, exp)
    assert dropout.counter == counter and with_dropout.optimizer.t == t
    assert with_dropout.get_rng_state() == rng_state
    np.testing.assert_array_equal(with_dropout.flat.to_host(), weights)
    for key, value in with_dropout.optimizer.state_dict()["state"].items():
        np.testing.assert_array_equal(to_numpy(value), state[key])


class _Probe(xpmlp.callbacks.Callback):
    """Takes the gradients after every batch's update, as a user checking training would."""

    def __init__(self, x, y):
        self.x, self.y, self.seen = x, y, []

    def on_batch_end(self, batch, logs=None):
        self.seen.append(self.model.gradients(self.x, self.y)[0])


@pytest.mark.parametrize("reference", [False, True], ids=["fast-step", "reference-step"])
def test_gradients_during_fit_change_nothing(monkeypatch, reference):
    """A fit that calls model.gradients after every batch ends with the same weights, bit for bit,
    as one that does not: it uses the flat gradient buffer and the layers' kept activations only
    between steps, which each step rewrites before reading."""
    if reference:
        monkeypatch.setenv("XPMLP_REFERENCE", "1")
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 5)), rng.integers(0, 2, size=40)
    runs = []
    for probe in (None, _Probe(x[:7], y[:7])):
        model = xpmlp.MLP([5, 6, 2], activation="tanh", dropout=0.2, seed=2, dtype="float64")
        model.fit(x, y, loss="softmax_cross_entropy", epochs=2, batch_size=8, callbacks=[probe] if probe else None)
        runs.append(model.flat.to_host())
    assert len(probe.seen) == 10 and probe.seen[0] != probe.seen[-1]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_chunks_give_the_same_gradient():
    """loss_and_gradient in chunks of 3 rows (the last one short) equals one pass over all rows."""
    rng = np.random.default_rng(5)
    model = xpmlp.MLP([3, 4, 2], activation="gelu", seed=0, dtype="float64")
    loss = get_loss("sigmoid_binary_cross_entropy")
    x = rng.normal(size=(10, 3))
    y = model.backend.from_host(rng.integers(0, 2, size=(10, 2)).astype(float))
    w = rng.uniform(0, 2, size=10)
    whole = loss_and_gradient(model, loss, x, y, w, denominator=w.sum(), chunk_size=10)
    chunked = loss_and_gradient(model, loss, x, y, w, denominator=w.sum(), chunk_size=3)
    np.testing.assert_allclose(float(chunked[0]), float(whole[0]), rtol=1e-14)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-12, atol=1e-15)


def test_gradients_errors():
    model = xpmlp.MLP([3, 2], seed=0)
    x, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="gradients needs a loss: pass loss="):
        model.gradients(x, y)
    with pytest.raises(ValueError, match="X has 2 features but the model expects 3"):
        model.gradients(np.zeros((4, 2)), y, loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        model.gradients(x, y, loss="softmax_cross_entropy", sample_weight=[1.0, 2.0])
    unbuilt = xpmlp.Sequential([xpmlp.Dense(2)])
    with pytest.raises(ValueError, match="no weights yet.*take gradients"):
        unbuilt.gradients(x, y, loss="mse")

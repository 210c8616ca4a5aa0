"""Whole-model gradients against torch autograd (the oracle), in float64, to 1e-10."""

import zlib

import numpy as np
import pytest

import xpmlp
from fit_data import random_targets
from xpmlp import Dense, to_numpy
from xpmlp.testing import gradcheck

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "softmax": lambda x: torch.softmax(x, dim=1),
}
TORCH_LOSSES = {
    "softmax_cross_entropy": F.cross_entropy,
    "sigmoid_binary_cross_entropy": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": F.huber_loss,
}


_targets = random_targets


def _torch_grads(model, x, y, loss):
    """Gradients of the loss w.r.t. every parameter (slots order) and the input, by autograd."""
    weights = [torch.tensor(w, requires_grad=True) for w in model.get_weights()]
    xt = torch.tensor(x, requires_grad=True)
    h, it = xt, iter(weights)
    for layer in model.layers:
        if isinstance(layer, Dense):
            h = h @ next(it) + next(it)
        else:
            h = TORCH_ACTIVATIONS[layer.name](h)
    TORCH_LOSSES[loss](h, torch.tensor(y)).backward()
    return [w.grad.numpy() for w in weights], xt.grad.numpy()


@pytest.mark.parametrize("loss", sorted(TORCH_LOSSES))
@pytest.mark.parametrize("activation", sorted(TORCH_ACTIVATIONS))
def test_model_gradients_match_torch_autograd(case64, activation, loss):
    seed = zlib.crc32(f"{activation}-{loss}".encode())  # stable across runs, unlike hash()
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 4))
    sizes = [int(s) for s in rng.integers(2, 7, size=depth + 2)]  # random architecture
    n = int(rng.integers(1, 9))
    model = xpmlp.MLP(sizes, activation=activation, seed=seed, **case64.model_kwargs())
    x = rng.normal(0, 1.5, size=(n, sizes[0]))
    y = _targets(loss, n, sizes[-1], rng)

    fn = xpmlp.losses.get_loss(loss)
    xd = case64.asarray(x)
    fn.forward(model.forward(xd, training=True), fn.prepare_targets(y, model.backend, "float64", sizes[-1]))
    dx = to_numpy(model.backward(fn.backward()))
    ours = [to_numpy(p.grad) for p in model.parameters()]

    expected, expected_dx = _torch_grads(model, x, y, loss)
    for got, exp in zip(ours, expected):
        np.testing.assert_allclose(got, exp, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-10, atol=1e-13)


def test_model_gradcheck_central_differences(case64):
    """The same whole-model gradients by central differences (no torch involved)."""
    rng = np.random.default_rng(5)
    model = xpmlp.MLP([3, 5, 4, 2], activation=["tanh", "gelu"], seed=1, **case64.model_kwargs())
    x = case64.asarray(rng.normal(size=(6, 3)))
    y = case64.backend.from_host(rng.integers(0, 2, size=6))
    errors = gradcheck(model, x, y, loss="softmax_cross_entropy")
    assert set(errors) == {"input", "0.W", "0.b", "2.W", "2.b", "4.W", "4.b"}

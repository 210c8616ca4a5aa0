import math

import numpy as np
import pytest

import xpmlp
from xpmlp import to_numpy
from conftest import Case

CONFIGS = {
    # name: (sizes, activation, dropout, loss, optimizer factory)
    "classify": ([4, 8, 6, 3], "relu", 0.2, "softmax_cross_entropy", lambda: xpmlp.Adam(lr=0.01)),
    "regress": ([4, 7, 2], "gelu", 0.0, "mse", lambda: xpmlp.SGD(lr=0.05, momentum=0.9, nesterov=True)),
    "binary": ([4, 5, 5, 1], ["sigmoid", "elu"], 0.0, "sigmoid_binary_cross_entropy",
               lambda: xpmlp.RMSprop(lr=0.01, clipnorm=1.0)),
}


def _data(loss, n=53, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    if loss == "softmax_cross_entropy":
        y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    elif loss == "mse":
        y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)
    else:
        y = (X[:, 0] * X[:, 3] > 0).astype(float)
    return X, y


def _train(case, name, epochs=3):
    sizes, act, dropout, loss, opt = CONFIGS[name]
    X, y = _data(loss)
    model = xpmlp.MLP(sizes, activation=act, dropout=dropout, seed=42, **case.model_kwargs())
    initial = model.get_weights()
    history = model.fit(X, y, loss=loss, optimizer=opt(), epochs=epochs, batch_size=16)
    return initial, history.history["loss"], model.get_weights()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_same_run_on_every_backend(case, name):
    """Same initial weights (exactly), loss history and final weights as NumPy in the same dtype."""
    ref_initial, ref_losses, ref_final = _train(Case("numpy", None, case.dtype), name)
    initial, losses, final = _train(case, name)
    for a, b in zip(initial, ref_initial):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(losses, ref_losses, rtol=case.rtol)
    for a, b in zip(final, ref_final):
        np.testing.assert_allclose(a, b, rtol=case.rtol, atol=case.rtol * 1e-2)


def test_fit_matches_a_plain_torch_training_loop():
    """Three epochs of fit equal a hand-written torch loop with autograd and torch.optim.Adam."""
    torch = pytest.importorskip("torch")
    X, y = _data("softmax_cross_entropy", n=50)
    model = xpmlp.MLP([4, 8, 3], activation="tanh", seed=3, device="cpu", dtype="float64")
    W1, b1, W2, b2 = (torch.tensor(w, requires_grad=True) for w in model.get_weights())
    history = model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.02),
                        epochs=3, batch_size=16, seed=7)

    opt = torch.optim.Adam([W1, b1, W2, b2], lr=0.02)
    rng, Xt, yt, losses = np.random.default_rng(7), torch.tensor(X), torch.tensor(y), []
    for _ in range(3):
        order, total = rng.permutation(len(X)), 0.0
        for s in range(0, len(X), 16):
            idx = torch.tensor(order[s:s + 16])
            opt.zero_grad()
            out = torch.tanh(Xt[idx] @ W1 + b1) @ W2 + b2
            batch = torch.nn.functional.cross_entropy(out, yt[idx])
            batch.backward()
            opt.step()
            total += batch.item() * len(idx)
        losses.append(total / len(X))
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-10)
    for a, b in zip(model.get_weights(), (W1, b1, W2, b2)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-13)


def test_xor_four_points(case):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    model = xpmlp.MLP([2, 3, 1], activation="tanh", seed=1, **case.model_kwargs())
    model.fit(X, y, loss="sigmoid_binary_cross_entropy", optimizer=xpmlp.Adam(lr=0.1), epochs=300, batch_size=4)
    p = to_numpy(model.predict(X)).ravel()
    assert np.array_equal(p > 0.5, y == 1), p


def test_noisy_xor_with_bias_column():
    """4,000 noisy XOR rows with a constant bias column, as in many tutorials."""
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 2, size=(4000, 2))
    X = np.column_stack([np.ones(4000), corners + rng.normal(0, 0.1, size=(4000, 2))])
    y = corners[:, 0] ^ corners[:, 1]
    model = xpmlp.MLP([3, 8, 2], activation="tanh", seed=0, device="cpu")
    model.fit(X, y, loss="softmax_cross_entropy", optimizer=xpmlp.Adam(lr=0.01), epochs=10, batch_size=32)
    assert np.mean(to_numpy(model.predict(X)).argmax(axis=1) == y) == 1.0


def test_abs_sine_regression_with_linear_output():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 4 * math.pi, size=(2000, 1))
    y = np.abs(np.sin(X))
    model = xpmlp.MLP([1, 32, 32, 1], activation="tanh", seed=0, device="cpu")
    model.fit(X, y, loss="mse", optimizer=xpmlp.Adam(lr=0.01), epochs=150, batch_size=64)
    grid = np.linspace(0, 4 * math.pi, 500)[:, None]
    mse = float(np.mean((to_numpy(model.predict(grid)) - np.abs(np.sin(grid))) ** 2))
    assert mse < 0.01, mse


def test_batched_prediction_equals_row_by_row(case):
    X, y = _data("softmax_cross_entropy", n=11)
    model = xpmlp.MLP([4, 6, 3], seed=0, **case.model_kwargs())
    model.fit(X, y, loss="softmax_cross_entropy", epochs=2, batch_size=4)
    whole = to_numpy(model.predict(X))
    rows = np.concatenate([to_numpy(model.predict(X[i:i + 1])) for i in range(len(X))])
    chunked = to_numpy(model.predict(X, batch_size=3))
    tol = dict(rtol=1e-12, atol=1e-14) if case.dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows, whole, **tol)
    np.testing.assert_allclose(chunked, whole, **tol)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)


def test_float32_stays_float32(case):
    X, y = _data("mse")
    model = xpmlp.MLP([4, 5, 2], seed=0, **case.model_kwargs())
    model.fit(X, y, loss="mse", epochs=1)  # X and y are float64 NumPy: cast at the edge
    want = case.backend.dtype(case.dtype)
    assert all(p.value.dtype == p.grad.dtype == want for p in model.parameters())
    assert model.flat.data.dtype == model.flat.grad.dtype == want
    assert model.predict(X).dtype == want


def test_evaluate_is_the_mean_loss(case):
    X, y = _data("mse", n=10)
    model = xpmlp.MLP([4, 3, 2], seed=0, **case.model_kwargs())
    model.fit(X, y, loss="mse", epochs=1)
    expected = np.mean((to_numpy(model.predict(X)) - y) ** 2)
    np.testing.assert_allclose(model.evaluate(X, y), expected, rtol=case.rtol * 10)
    np.testing.assert_allclose(model.evaluate(X, y, batch_size=3), expected, rtol=case.rtol * 10)


def test_second_fit_continues_with_the_same_optimizer():
    X, y = _data("mse")
    a = xpmlp.MLP([4, 5, 2], seed=0, device="cpu", dtype="float64")
    a.fit(X, y, loss="mse", epochs=2, batch_size=8, seed=1)
    b = xpmlp.MLP([4, 5, 2], seed=0, device="cpu", dtype="float64")
    b.fit(X, y, loss="mse", epochs=1, batch_size=8, seed=1)
    opt = b.optimizer
    b.fit(X, y, epochs=1, batch_size=8, seed=1)  # loss and optimiser carried over
    assert b.optimizer is opt and opt.t == 2 * math.ceil(len(X) / 8)
    assert b.history.history["loss"][0] < a.history.history["loss"][0]


def test_unshuffled_fit_is_deterministic():
    X, y = _data("mse")
    runs = []
    for _ in range(2):
        model = xpmlp.MLP([4, 5, 2], seed=0, device="cpu")
        runs.append(model.fit(X, y, loss="mse", epochs=2, shuffle=False).history["loss"])
    assert runs[0] == runs[1]


def test_mlp_init_applies_to_every_dense_layer():
    model = xpmlp.MLP([4, 8, 8, 2], activation=["relu", "tanh"], init="glorot_normal")
    assert [layer.init for layer in model.layers if isinstance(layer, xpmlp.Dense)] == ["glorot_normal"] * 3
    defaults = xpmlp.MLP([4, 8, 8, 2], activation=["relu", "tanh"])
    assert [layer.init for layer in defaults.layers if isinstance(layer, xpmlp.Dense)] == [
        "he_uniform", "glorot_uniform", "glorot_uniform"]
    with pytest.raises(ValueError, match="unknown initializer 'nope'"):
        xpmlp.MLP([4, 8, 2], init="nope")

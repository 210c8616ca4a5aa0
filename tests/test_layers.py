import math

import numpy as np
import pytest

import xpmlp
from xpmlp import ACTIVATIONS, Dense, Dropout, to_numpy
from xpmlp.init import INITIALIZERS, default_init_for, initialize
from xpmlp.layers import get_activation
from xpmlp.testing import GradcheckError, gradcheck

ACTIVATION_NAMES = sorted(set(ACTIVATIONS) - {"linear"})


def _inputs(case, shape=(5, 4), seed=0, scale=1.5):
    # Stay off exact kinks (relu at 0) by construction: normal draws never hit 0 exactly.
    return case.asarray(np.random.default_rng(seed).normal(0, scale, size=shape))


def _built(layer, case, in_features, seed=0):
    layer.build(in_features, case.backend, case.dtype, np.random.default_rng(seed))
    return layer


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_gradcheck(case64, name):
    errors = gradcheck(get_activation(name), _inputs(case64))
    assert set(errors) == {"input"}


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradcheck(case64, bias):
    layer = _built(Dense(3, bias=bias), case64, 4)
    errors = gradcheck(layer, _inputs(case64))
    assert set(errors) == ({"input", "W", "b"} if bias else {"input", "W"})


def test_dropout_gradcheck_in_inference_mode(case64):
    gradcheck(Dropout(0.5), _inputs(case64))


def test_gradcheck_catches_a_wrong_backward(case64):
    class WrongTanh(xpmlp.Tanh):
        def derivative(self, xp, x, y):
            return 1.0 - y  # forgot the square

    with pytest.raises(GradcheckError, match="input"):
        gradcheck(WrongTanh(), _inputs(case64))


def test_gradcheck_refuses_float32():
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(xpmlp.Tanh(), x)


def test_dense_params_and_grads_match(case):
    layer = _built(Dense(3), case, 4)
    x = _inputs(case)
    y = layer.forward(x, training=True)
    assert tuple(y.shape) == (5, 3)
    dx = layer.backward(y)
    assert tuple(dx.shape) == (5, 4) and dx.dtype == x.dtype
    assert set(layer.grads) == set(layer.params) == {"W", "b"}
    assert tuple(layer.params["W"].shape) == (4, 3) and tuple(layer.params["b"].shape) == (3,)
    for k in layer.params:
        assert layer.grads[k].shape == layer.params[k].shape
        assert layer.grads[k].dtype == layer.params[k].dtype == case.backend.dtype(case.dtype)
    np.testing.assert_array_equal(to_numpy(layer.params["b"]), 0.0)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_keeps_dtype(case, name):
    act = get_activation(name)
    act.build(4, case.backend, case.dtype, None)
    x = _inputs(case)
    y = act.forward(x, training=True)
    assert y.dtype == x.dtype and act.backward(y).dtype == x.dtype


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "elu", "tanh", "gelu", "softmax"])
def test_activation_never_overflows(case, name):
    act = get_activation(name)
    act.build(3, case.backend, case.dtype, None)
    x = case.asarray([[-1e4, 0.0, 1e4], [-800.0, 5.0, 800.0], [-90.0, -88.5, 89.0]])
    with np.errstate(over="raise", invalid="raise"):
        y = to_numpy(act.forward(x, training=True))
        g = to_numpy(act.backward(case.asarray(np.ones((3, 3)))))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g))
    if name == "sigmoid":
        assert y[0, 0] == 0.0 and y[0, 2] == 1.0 and np.all((y >= 0) & (y <= 1))


def test_softmax_is_per_row(case):
    act = get_activation("softmax")
    act.build(3, case.backend, case.dtype, None)
    rows = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    y = to_numpy(act.forward(case.asarray(rows)))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=case.rtol)
    # Shifting a row does not change it, and rows do not influence each other.
    np.testing.assert_allclose(y[0], y[1], rtol=1e-6)
    single = to_numpy(act.forward(case.asarray(rows[2:3])))
    np.testing.assert_allclose(single[0], y[2], rtol=case.rtol)


def test_dropout_scales_kept_units_and_masks_backward(case):
    layer = Dropout(0.25)
    layer.build(200, case.backend, case.dtype, np.random.default_rng(3))
    x = case.asarray(np.ones((50, 200)))
    y = to_numpy(layer.forward(x, training=True))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    g = to_numpy(layer.backward(case.asarray(np.full((50, 200), 2.0))))
    np.testing.assert_allclose(g, 2.0 * y, rtol=1e-6)  # the same mask scales the gradient
    assert np.all(to_numpy(layer.forward(x, training=False)) == 1.0)


@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_dropout_masks_are_the_same_on_every_backend(case, rate):
    """Masks are made on the device from (key, step, index): the same bits everywhere, step after step."""
    from xpmlp.rng import random_bits

    def steps(c):
        layer = Dropout(rate)
        layer.build(7, c.backend, c.dtype, np.random.default_rng(11))
        x = c.asarray(np.random.default_rng(1).normal(size=(6, 7)))
        out = []
        for _ in range(3):
            y = to_numpy(layer.forward(x, training=True))
            out.append((y, to_numpy(layer._mask), to_numpy(layer.backward(x))))
        return layer.key, out

    from conftest import Case

    key, here = steps(case)
    _, on_numpy = steps(Case("numpy", None, case.dtype))
    for step, (mine, ref) in enumerate(zip(here, on_numpy)):
        for a, b in zip(mine, ref):
            np.testing.assert_array_equal(a, b)  # exact, not to a tolerance
        keep = random_bits(np, (6, 7), key, step) >= round(rate * 2**32)
        np.testing.assert_array_equal(mine[1] != 0, keep)  # kept exactly where the bits say
    assert not np.array_equal(here[0][1], here[1][1])  # a new mask every step


def test_dropout_rejects_bad_rate():
    with pytest.raises(ValueError, match=r"Dropout rate must be in \[0, 1\)"):
        Dropout(1.0)


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_initializer_statistics(name):
    fan_in, fan_out = 400, 300
    w = initialize(name, fan_in, fan_out, np.random.default_rng(0), "float64")
    fan = {"glorot": (fan_in + fan_out) / 2, "he": fan_in / 2, "lecun": fan_in}[name.split("_")[0]]
    assert w.shape == (fan_in, fan_out)
    assert abs(w.std() - math.sqrt(1.0 / fan)) < 0.02 * math.sqrt(1.0 / fan)  # variance 1/fan
    assert abs(w.mean()) < 0.01 * math.sqrt(1.0 / fan) * 10
    if name.endswith("uniform"):
        assert np.abs(w).max() <= math.sqrt(3.0 / fan)


def test_default_init_follows_activation():
    assert default_init_for("relu") == "he_uniform"
    assert default_init_for("tanh") == default_init_for("sigmoid") == "glorot_uniform"
    model = xpmlp.MLP([10, 8, 8, 2], activation=["relu", "tanh"], device="cpu", seed=0)
    assert [l.init for l in model.layers if isinstance(l, Dense)] == ["he_uniform", "glorot_uniform", "glorot_uniform"]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown activation 'relu6'.*valid names:.*leaky_relu"):
        get_activation("relu6")
    with pytest.raises(ValueError, match="unknown initializer 'zeros'.*he_normal"):
        initialize("zeros", 2, 2, np.random.default_rng(0), "float32")

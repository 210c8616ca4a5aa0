import math

import numpy as np
import xpmlp
import pytest

from xpmlp import SGD, Adagrad, Adam, AdamW, RMSprop, to_numpy
from xpmlp.optim import clip_by_global_norm, get_optimizer

P0 = np.array([[0.5, -1.0, 2.0], [0.1, 0.0, -0.3]])
G = [np.array([[0.2, -0.4, 1.0], [-0.05, 0.3, 0.0]]),
     np.array([[-0.1, 0.5, 0.7], [0.2, -0.3, 0.01]]),
     np.array([[0.3, 0.1, -0.2], [0.0, 0.4, -0.5]])]


def _run(case, opt, grads, p0=P0, lrs=None):
    """Apply opt to one flat buffer (p0 flattened) fed with the given gradients; NumPy result after each step."""
    data = case.asarray(p0.reshape(-1).copy())
    out = []
    for i, g in enumerate(grads):
        if lrs is not None:
            opt.lr = lrs[i]
        opt.step(data, case.asarray(g.reshape(-1)))  # in place
        assert data.dtype == case.backend.dtype(case.dtype)  # no promotion
        assert all(s.dtype == data.dtype and tuple(s.shape) == tuple(data.shape) for s in opt.state.values())
        out.append(to_numpy(data).reshape(p0.shape).copy())
    return out


# Closed forms of the first two steps, derived by hand from each paper/torch docs.
def _hand_sgd(lr, m, nesterov):
    g1, g2 = G[0], G[1]
    if nesterov:
        p1 = P0 - lr * (g1 + m * g1)
        return p1, p1 - lr * (g2 + m * (m * g1 + g2))
    p1 = P0 - lr * g1
    return p1, p1 - lr * (m * g1 + g2)


def _hand_adam(lr, b1, b2, eps, wd_decoupled=0.0):
    g1, g2 = G[0], G[1]
    p1 = P0 * (1 - lr * wd_decoupled) - lr * g1 / (np.abs(g1) + eps)  # mhat = g1, vhat = g1^2
    m2 = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v2 = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    mhat, vhat = m2 / (1 - b1**2), v2 / (1 - b2**2)
    return p1, p1 * (1 - lr * wd_decoupled) - lr * mhat / (np.sqrt(vhat) + eps)


def _hand_rmsprop(lr, a, eps):
    g1, g2 = G[0], G[1]
    v1 = (1 - a) * g1**2
    p1 = P0 - lr * g1 / (np.sqrt(v1) + eps)
    v2 = a * v1 + (1 - a) * g2**2
    return p1, p1 - lr * g2 / (np.sqrt(v2) + eps)


def _hand_adagrad(lr, eps, lr_decay):
    g1, g2 = G[0], G[1]
    p1 = P0 - lr * g1 / (np.abs(g1) + eps)
    return p1, p1 - lr / (1 + lr_decay) * g2 / (np.sqrt(g1**2 + g2**2) + eps)


HAND = [
    ("sgd", lambda: SGD(lr=0.1), lambda: _hand_sgd(0.1, 0.0, False)),
    ("sgd-momentum", lambda: SGD(lr=0.1, momentum=0.9), lambda: _hand_sgd(0.1, 0.9, False)),
    ("sgd-nesterov", lambda: SGD(lr=0.1, momentum=0.9, nesterov=True), lambda: _hand_sgd(0.1, 0.9, True)),
    ("adam", lambda: Adam(lr=0.01), lambda: _hand_adam(0.01, 0.9, 0.999, 1e-8)),
    ("adamw", lambda: AdamW(lr=0.01, weight_decay=0.1), lambda: _hand_adam(0.01, 0.9, 0.999, 1e-8, 0.1)),
    ("rmsprop", lambda: RMSprop(lr=0.01, alpha=0.9), lambda: _hand_rmsprop(0.01, 0.9, 1e-8)),
    ("adagrad", lambda: Adagrad(lr=0.1, lr_decay=0.5), lambda: _hand_adagrad(0.1, 1e-10, 0.5)),
]


@pytest.mark.parametrize("name,make,hand", HAND, ids=[h[0] for h in HAND])
def test_first_steps_match_hand_derived_update(case, name, make, hand):
    got = _run(case, make(), G[:2])
    for step, expected in zip(got, hand()):
        np.testing.assert_allclose(step, expected, rtol=case.rtol * 10, atol=1e-12 if case.dtype == "float64" else 1e-6)


def test_l2_weight_decay_is_added_to_the_gradient(case):
    got = _run(case, SGD(lr=0.1, weight_decay=0.5), G[:1])
    np.testing.assert_allclose(got[0], P0 - 0.1 * (G[0] + 0.5 * P0), rtol=case.rtol * 10, atol=1e-7)


def test_clip_by_global_norm(case):
    xp = case.backend.xp
    grads = [case.asarray([[3.0, 0.0]]), case.asarray([4.0])]  # global norm 5
    clipped = [to_numpy(g) for g in clip_by_global_norm(xp, grads, 1.0)]
    np.testing.assert_allclose(clipped[0], [[0.6, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(clipped[1], [0.8], rtol=1e-6)
    untouched = [to_numpy(g) for g in clip_by_global_norm(xp, grads, 10.0)]
    np.testing.assert_allclose(untouched[0], [[3.0, 0.0]], rtol=1e-6)


TORCH_CONFIGS = [
    ("sgd", dict(lr=0.1), "SGD", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.2), "SGD", dict(lr=0.1, momentum=0.9, dampening=0.2)),
    ("sgd", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01), "SGD",
     dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=0.01, beta_1=0.8, beta_2=0.99, eps=1e-6, weight_decay=0.05), "Adam",
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("adamw", dict(lr=0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01), "RMSprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01), "RMSprop",
     dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
    ("adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.5, weight_decay=0.01), "Adagrad",
     dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.5, weight_decay=0.01)),
]


def _torch_run(cls_name, kwargs, grads, clipnorm=None, lrs=None):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.tensor(P0))
    opt = getattr(torch.optim, cls_name)([p], **kwargs)
    out = []
    for i, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        p.grad = torch.tensor(g)
        if clipnorm is not None:
            torch.nn.utils.clip_grad_norm_([p], clipnorm)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


@pytest.mark.parametrize("name,kwargs,torch_name,torch_kwargs", TORCH_CONFIGS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CONFIGS)])
def test_steps_match_torch_optim(case, name, kwargs, torch_name, torch_kwargs):
    grads = G * 3  # nine steps
    lrs = [kwargs["lr"] * f for f in (1, 1, 0.5, 0.5, 2, 1, 1, 0.1, 1)]  # lr changed between steps
    expected = _torch_run(torch_name, torch_kwargs, grads, lrs=lrs)
    got = _run(case, get_optimizer(name, **kwargs), grads, lrs=lrs)
    tol = dict(rtol=1e-9, atol=1e-12) if case.dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **tol)


def test_clipnorm_matches_torch(case):
    grads = [g * 10 for g in G] * 2
    expected = _torch_run("Adam", dict(lr=0.05), grads, clipnorm=0.5)
    got = _run(case, Adam(lr=0.05, clipnorm=0.5), grads)
    tol = dict(rtol=1e-9, atol=1e-12) if case.dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **tol)


def test_optimizer_validation():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; valid names: adagrad, adam, adamw, rmsprop, sgd"):
        get_optimizer("lbfgs")
    with pytest.raises(ValueError, match="learning rate"):
        SGD(lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(nesterov=True)
    with pytest.raises(ValueError, match="beta_1"):
        Adam(beta_1=1.0)
    assert math.isclose(get_optimizer("adam", lr=0.5).lr, 0.5)


STATEFUL = [lambda: SGD(lr=0.1, momentum=0.9, dampening=0.2), lambda: Adam(lr=0.01, weight_decay=0.01),
            lambda: AdamW(lr=0.01), lambda: RMSprop(lr=0.01, momentum=0.5, centered=True),
            lambda: Adagrad(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.5)]


@pytest.mark.parametrize("make", STATEFUL, ids=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_state_dict_round_trip_continues_as_uninterrupted(case, make):
    """Three steps, state_dict, load into a fresh optimiser (and buffer copy), three more steps:
    the same values as six uninterrupted steps."""
    grads = [case.asarray(g.reshape(-1)) for g in G * 2]
    whole, data = make(), case.asarray(P0.reshape(-1).copy())
    for g in grads:
        whole.step(data, g)
    first, resumed = make(), case.asarray(P0.reshape(-1).copy())
    for g in grads[:3]:
        first.step(resumed, g)
    sd = first.state_dict()
    assert sd["t"] == 3 and sorted(sd["state"]) == first.state_names()
    second = make()
    second.load_state_dict(sd)
    assert all(second.state[k] is not sd["state"][k] for k in sd["state"])  # copied, not shared
    for g in grads[3:]:
        second.step(resumed, g)
    assert second.t == whole.t == 6
    np.testing.assert_array_equal(to_numpy(resumed), to_numpy(data))
    for k in whole.state:
        np.testing.assert_array_equal(to_numpy(second.state[k]), to_numpy(whole.state[k]))


DECAY_BIAS_CONFIGS = [  # (xpmlp name, kwargs, torch class, torch kwargs): weight decay on the weight matrices only
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.3), "SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.3)),
    ("adam", dict(lr=0.01, weight_decay=0.2), "Adam", dict(lr=0.01, weight_decay=0.2)),
    ("adamw", dict(lr=0.01, weight_decay=0.2), "AdamW", dict(lr=0.01, weight_decay=0.2)),
]


@pytest.mark.parametrize("name,kwargs,torch_name,torch_kwargs", DECAY_BIAS_CONFIGS,
                         ids=[c[0] for c in DECAY_BIAS_CONFIGS])
def test_decay_bias_false_spares_biases_as_torch_param_groups(case, name, kwargs, torch_name, torch_kwargs):
    """decay_bias=False (scikit-learn's alpha): weight decay on the weight matrices, none on the
    biases; checked against torch.optim with two parameter groups, one of them weight_decay=0."""
    torch = pytest.importorskip("torch")
    model = xpmlp.MLP([3, 4, 2], seed=0, **case.model_kwargs())
    params, flat = model.parameters(), model.flat
    assert [p.decay for p in params] == [True, False, True, False]
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=flat.size) for _ in range(4)]
    start = [w.astype(np.float64) for w in model.get_weights()]
    tensors = [torch.nn.Parameter(torch.tensor(w)) for w in start]
    groups = [{"params": [t for t, p in zip(tensors, params) if p.decay]},
              {"params": [t for t, p in zip(tensors, params) if not p.decay], "weight_decay": 0.0}]
    reference = getattr(torch.optim, torch_name)(groups, **torch_kwargs)
    opt = get_optimizer(name, decay_bias=False, **kwargs)
    with model.backend.activate():
        for g in grads:
            opt.step(flat.data, case.asarray(g.astype(case.dtype)), flat.n_decay)
            for t, p, offset in zip(tensors, params, flat.offsets):
                t.grad = torch.tensor(g[offset:offset + p.size].reshape(p.shape))
            reference.step()
    tol = dict(rtol=1e-9, atol=1e-12) if case.dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for got, t in zip(model.get_weights(), tensors):
        np.testing.assert_allclose(got, t.detach().numpy(), **tol)
    assert opt.get_config()["decay_bias"] is False and "decay_bias" not in get_optimizer(name, **kwargs).get_config()


def test_decay_bias_false_needs_the_weights_extent():
    opt = SGD(lr=0.1, weight_decay=0.1, decay_bias=False)
    data, grad = np.ones(5), np.ones(5)
    with pytest.raises(ValueError, match="decayed=model.flat.n_decay"):
        opt.step(data, grad)
    with pytest.raises(ValueError, match=r"decayed must be an int in \[0, 5\]"):
        opt.step(data, grad, 6)
    opt.step(data, grad, 2)
    np.testing.assert_allclose(data, [1 - 0.1 * 1.1] * 2 + [0.9] * 3)

import numpy as np
import pytest

from xpmlp import Huber, MeanAbsoluteError, MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy, to_numpy
from xpmlp.losses import get_loss
from xpmlp.testing import gradcheck

rng = np.random.default_rng(0)


def _problem(kind, n=6, k=4, seed=0):
    """(logits, targets) on the host for a loss kind."""
    r = np.random.default_rng(seed)
    z = r.normal(0, 2, size=(n, k))
    if kind == "labels":
        return z, r.integers(0, k, size=n)
    if kind == "onehot":
        return z, np.eye(k)[r.integers(0, k, size=n)]
    if kind == "binary":
        return z, r.integers(0, 2, size=(n, k)).astype(float)
    return z, r.normal(0, 2, size=(n, k))


LOSS_CASES = [
    ("ce-labels", lambda: SoftmaxCrossEntropy(), "labels"),
    ("ce-onehot", lambda: SoftmaxCrossEntropy(), "onehot"),
    ("ce-smooth", lambda: SoftmaxCrossEntropy(label_smoothing=0.1), "labels"),
    ("bce", lambda: SigmoidBinaryCrossEntropy(), "binary"),
    ("mse", lambda: MeanSquaredError(), "real"),
    ("mae", lambda: MeanAbsoluteError(), "real"),
    ("huber", lambda: Huber(delta=1.0), "real"),
]


def _targets(case, y):
    return case.backend.from_host(y) if y.dtype.kind == "i" else case.asarray(y)


@pytest.mark.parametrize("name,make,kind", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_loss_gradcheck(case64, name, make, kind):
    z, y = _problem(kind)
    gradcheck(make(), case64.asarray(z), _targets(case64, y))


def _torch_loss(name, z, y):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z, y = torch.tensor(z), torch.tensor(y)
    return {
        "ce-labels": lambda: F.cross_entropy(z, y),
        "ce-onehot": lambda: F.cross_entropy(z, y),
        "ce-smooth": lambda: F.cross_entropy(z, y, label_smoothing=0.1),
        "bce": lambda: F.binary_cross_entropy_with_logits(z, y),
        "mse": lambda: F.mse_loss(z, y),
        "mae": lambda: F.l1_loss(z, y),
        "huber": lambda: F.huber_loss(z, y, delta=1.0),
    }[name]().item()


@pytest.mark.parametrize("name,make,kind", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_loss_matches_torch(case, name, make, kind):
    z, y = _problem(kind, n=9, seed=1)
    value = float(make().forward(case.asarray(z), _targets(case, y)))
    np.testing.assert_allclose(value, _torch_loss(name, z, y), rtol=case.rtol)


@pytest.mark.parametrize("name,make,kind", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_loss_is_a_mean_for_any_batch_size(case, name, make, kind, n):
    """Loss of a batch = mean of per-row losses; gradient rows scale as 1/n."""
    z, y = _problem(kind, n=n, seed=2)
    loss = make()
    total = float(loss.forward(case.asarray(z), _targets(case, y)))
    grad = to_numpy(loss.backward())
    rows = [float(loss.forward(case.asarray(z[i:i + 1]), _targets(case, y[i:i + 1]))) for i in range(n)]
    np.testing.assert_allclose(total, np.mean(rows), rtol=max(case.rtol, 1e-12) * 10)
    row_grads = []
    for i in range(n):
        loss.forward(case.asarray(z[i:i + 1]), _targets(case, y[i:i + 1]))
        row_grads.append(to_numpy(loss.backward()))
    np.testing.assert_allclose(grad * n, np.concatenate(row_grads), rtol=case.rtol * 10, atol=1e-7)


def test_cross_entropy_is_stable_for_huge_logits(case):
    z = case.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    labels = case.backend.from_host(np.array([0, 0]))
    loss = SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise"):
        value = float(loss.forward(z, labels))
        grad = to_numpy(loss.backward())
    np.testing.assert_allclose(value, (0.0 + 2e4) / 2, rtol=1e-6)  # second row is wrong by 2e4
    np.testing.assert_allclose(grad, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-6)


def test_bce_is_stable_for_huge_logits(case):
    z = case.asarray([[1e4], [-1e4], [1e4]])
    y = case.asarray([[1.0], [0.0], [0.0]])
    loss = SigmoidBinaryCrossEntropy()
    with np.errstate(over="raise", invalid="raise"):
        value = float(loss.forward(z, y))
        grad = to_numpy(loss.backward())
    np.testing.assert_allclose(value, 1e4 / 3, rtol=1e-6)
    np.testing.assert_allclose(grad.ravel(), [0, 0, 1 / 3], atol=1e-7)


def test_links_give_probabilities(case):
    z = case.asarray(np.random.default_rng(0).normal(0, 30, size=(5, 3)))
    p = to_numpy(SoftmaxCrossEntropy().link(case.backend.xp, z))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    s = to_numpy(SigmoidBinaryCrossEntropy().link(case.backend.xp, z))
    assert np.all((s >= 0) & (s <= 1))


def test_get_loss_names():
    assert isinstance(get_loss("cross_entropy"), SoftmaxCrossEntropy)
    assert isinstance(get_loss("bce"), SigmoidBinaryCrossEntropy)
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid names: .*mse"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftmaxCrossEntropy(label_smoothing=1.5)


# Logits near 1e4 (exact in float32), shifted by 0, -5, -10 and 0, -0.25, -30: the exact losses
# come from the shifts alone, in float64.
CONFIDENT = np.array([[1e4, 1e4 - 5, 1e4 - 10], [-1e4, -1e4 - 0.25, -1e4 - 30]])


def _confident_expected(labels):
    shifts = CONFIDENT - CONFIDENT.max(axis=1, keepdims=True)
    logp = shifts - np.log(np.exp(shifts).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels], np.exp(logp)


@pytest.mark.parametrize("labels", [[0, 0], [1, 1], [2, 2]], ids=["confident-right", "second", "far"])
def test_cross_entropy_keeps_its_precision_for_confident_logits_of_1e4(case, labels):
    """(z - max) - log(sum(exp(z - max))): a loss of 0.0067 from logits of 1e4 is right to a few
    float32 roundings (5e-7), where z - (max + log(sum)) rounds log(sum) to 1e-3 in float32 (2% off)."""
    loss = SoftmaxCrossEntropy()
    z = case.asarray(CONFIDENT.astype(case.dtype))
    rows = to_numpy(loss.row_losses(z, case.asarray(np.array(labels))))
    grad = to_numpy(loss.backward())
    expected, p = _confident_expected(np.array(labels))
    # a few units of the dtype's rounding (log(sum) near 1 is good to an absolute eps, not a relative one)
    eps = float(np.finfo(case.dtype).eps)
    np.testing.assert_allclose(rows, expected, rtol=4 * eps, atol=4 * eps)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(grad, (p - onehot) / 2, rtol=4 * eps, atol=4 * eps)


def test_sigmoid_probabilities_keep_their_relative_precision_in_both_tails(case):
    """The binary link reports e / (1 + e), e = exp(-|z|), for z < 0: 3.1e-17 at z = -38 (float64), where
    the tanh form gives exactly 0; large z gives 1 - tiny, and nothing overflows."""
    z = np.array([[-38.0, -20.0, -1.0, 0.0, 1.0, 20.0, 1e4, -1e4]])
    with np.errstate(over="raise"):
        p = to_numpy(SigmoidBinaryCrossEntropy().link(case.backend.xp, case.asarray(z.astype(case.dtype))))
    expected = 1 / (1 + np.exp(-z.clip(-700, 700)))
    finite = np.abs(z) < 1e3
    eps = float(np.finfo(case.dtype).eps)
    np.testing.assert_allclose(p[finite], expected[finite], rtol=4 * eps)
    assert p[0, -2] == 1.0 and 0.0 <= p[0, -1] < 1e-30  # far tails: the nearest representable values

"""Device-side dropout masks (xpmlp.rng): exact bits on every backend, statistics, state in files.

The bits are checked against an independent plain-Python implementation of the same function
(Python ints masked to 32/64 bits), itself checked against published test vectors of its two
parts, SplitMix64 and MurmurHash3's finaliser.
"""

import json
import math

import numpy as np
import pytest

import xpmlp
from xpmlp import Dropout, ModelFileError, to_numpy
from xpmlp.rng import dropout_mask, fmix32, keep_threshold, random_bits, round_keys, word_dtype

M32, M64 = 2**32 - 1, 2**64 - 1


# -- the reference, in plain Python ---------------------------------------------------------------
class SplitMix64:
    """Steele, Lea & Flood's generator, stepped one output at a time."""

    def __init__(self, seed):
        self.state = seed & M64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def ref_fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def ref_bits(key, counter, n):
    """Words 0..n-1 for (key, counter): step counter + 1 of SplitMix64(key) keys two fmix32 rounds."""
    gen = SplitMix64(key)
    for _ in range(counter + 1):
        s = gen.next()
    k0, k1 = s & M32, s >> 32
    return [ref_fmix32(ref_fmix32(i ^ k0) ^ k1) for i in range(n)]


def ref_mask(key, counter, n, rate):
    t = round(rate * 2**32)
    return np.array([1.0 / (1.0 - rate) if b >= t else 0.0 for b in ref_bits(key, counter, n)])


def test_reference_matches_published_vectors():
    # SplitMix64 seeded with 1234567 (the reference splitmix64.c sequence) and with 0.
    gen = SplitMix64(1234567)
    assert [gen.next() for _ in range(5)] == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                              4593380528125082431, 16408922859458223821]
    assert SplitMix64(0).next() == 0xE220A8397B1DCDAF
    # MurmurHash3_x86_32 of the empty input is fmix32(seed): seeds 0, 1 and 0xFFFFFFFF.
    assert [ref_fmix32(s) for s in (0, 1, 0xFFFFFFFF)] == [0, 0x514E28B7, 0x81F16F39]


# Pinned: a change to the generator changes every saved run's masks, so it must be deliberate.
PINNED = {
    (0x0123456789ABCDEF, 0): [0x53DC4DD1, 0x7251047B, 0x78365112, 0xE1FB6138,
                              0xBF2D5158, 0x9BE3BB86, 0x7DB70049, 0xF8E11438],
    (2024, 3): [0xFF4B58CF, 0xC2D2FE39, 0x496540BD, 0xE768AF3D, 0x3691FF03, 0x5F908995, 0xA0DDD533, 0x44FFC01A],
}


@pytest.mark.parametrize("key_counter", sorted(PINNED))
def test_pinned_words_match_the_reference(key_counter):
    assert ref_bits(*key_counter, 8) == PINNED[key_counter]


def test_round_keys_match_splitmix64():
    for key in (0, 1, 2**63 - 1, 1234567):
        gen = SplitMix64(key)
        for counter in range(4):
            s = gen.next()
            assert round_keys(key, counter) == (s & M32, s >> 32)
    with pytest.raises(ValueError, match="counter must be >= 0"):
        round_keys(1, -1)
    with pytest.raises(TypeError):
        round_keys(1.5, 0)


# -- the same bits on every backend -------------------------------------------------------------
def _word_dtypes(backend):
    """The representations to test on a backend: its default (uint32 where declared) and int64."""
    xp = backend.xp
    return [xp.int64] if word_dtype(xp, backend.device) == xp.int64 else [xp.uint32, xp.int64]


def test_word_dtype_is_uint32_where_declared_and_int64_on_torch(case):
    b = case.backend
    expected = b.xp.int64 if case.lib == "torch" else b.xp.uint32
    assert word_dtype(b.xp, b.device) == expected


def test_fmix32_on_device_matches_murmur3_vectors(case):
    b = case.backend
    for dtype in _word_dtypes(b):
        host = np.array([0, 1, 0xFFFFFFFF, 12345], dtype=np.int64 if dtype == b.xp.int64 else np.uint32)
        x = b.from_host(host)
        assert to_numpy(fmix32(b.xp, x)).tolist() == [0, 0x514E28B7, 0x81F16F39, ref_fmix32(12345)]
        assert to_numpy(x).tolist() == host.tolist()  # not modified


@pytest.mark.parametrize("key_counter", sorted(PINNED))
def test_bits_are_pinned_on_every_backend(case, key_counter):
    b = case.backend
    for dtype in [None] + _word_dtypes(b):
        bits = random_bits(b.xp, (2, 4), *key_counter, b.device, dtype=dtype)
        assert bits.dtype == (word_dtype(b.xp, b.device) if dtype is None else dtype)
        assert tuple(bits.shape) == (2, 4)
        np.testing.assert_array_equal(to_numpy(bits).astype(np.int64).ravel(), PINNED[key_counter])


@pytest.mark.parametrize("rate", [0.5, 0.3, 0.05, 1 - 2**-32])
def test_masks_equal_the_reference_on_every_backend(case, rate):
    b = case.backend
    key = 0xDEADBEEF12345
    for bits_dtype in _word_dtypes(b):
        for counter in (0, 1, 7):
            mask = dropout_mask(b.xp, (13, 31), rate, key, counter, case.dtype, b.device, bits_dtype=bits_dtype)
            assert mask.dtype == b.dtype(case.dtype)
            expected = ref_mask(key, counter, 13 * 31, rate).astype(case.dtype).reshape(13, 31)
            np.testing.assert_array_equal(to_numpy(mask), expected)


def test_rates_within_two_to_the_minus_33_of_one_drop_everything(case):
    b = case.backend
    mask = dropout_mask(b.xp, (3, 4), 1 - 2**-34, 1, 0, case.dtype, b.device)
    assert mask.dtype == b.dtype(case.dtype) and np.all(to_numpy(mask) == 0)


def test_large_keys_and_counters_agree_with_numpy(case):
    b = case.backend
    for key, counter in ((2**64 - 1, 2**40 + 3), (-5, 2**70)):  # keys are taken modulo 2**64
        got = to_numpy(random_bits(b.xp, (5, 6), key, counter, b.device)).astype(np.int64)
        np.testing.assert_array_equal(got, random_bits(np, (5, 6), key, counter, dtype=np.int64))
        assert got.min() >= 0 and got.max() <= M32


def test_argument_checks():
    assert keep_threshold(0.0) == 0 and keep_threshold(0.5) == 2**31
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        dropout_mask(np, (2,), 1.0, 1, 0, "float32")
    with pytest.raises(ValueError, match="at most 2\\*\\*32 elements"):
        random_bits(np, (2**16, 2**16 + 1), 1, 0)  # refused before anything is allocated
    assert random_bits(np, (0, 3), 1, 0).shape == (0, 3)
    with pytest.raises(TypeError, match="uint32 or int64, not .*float32"):
        random_bits(np, (2,), 1, 0, dtype=np.float32)


# -- statistics --------------------------------------------------------------------------------------
N = 10**6


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.9])
def test_keep_fraction_is_within_a_binomial_bound(rate):
    keep = dropout_mask(np, (N,), rate, 97, 0, "float64") != 0
    p = 1.0 - rate
    assert abs(keep.mean() - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_every_bit_is_balanced():
    bits = random_bits(np, (N,), 2024, 11, dtype=np.int64)
    ones = (bits[:, None] >> np.arange(32)) & 1
    assert np.all(np.abs(ones.mean(axis=0) - 0.5) < 5 * math.sqrt(0.25 / N))
    top = np.bincount(bits >> 24, minlength=256)  # chi-square of the top byte, 255 degrees of freedom
    chi2 = ((top - N / 256) ** 2 / (N / 256)).sum()
    assert chi2 < 255 + 5 * math.sqrt(2 * 255)


def _corr(a, b):
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def test_steps_keys_and_neighbours_are_uncorrelated():
    bound = 5 / math.sqrt(N)
    shape = (N // 500, 500)
    step0 = dropout_mask(np, shape, 0.5, 31337, 0, "float64").ravel()
    step1 = dropout_mask(np, shape, 0.5, 31337, 1, "float64").ravel()
    other_key = dropout_mask(np, shape, 0.5, 31338, 0, "float64").ravel()
    assert abs(_corr(step0, step1)) < bound  # consecutive steps
    assert abs(_corr(step0, other_key)) < bound  # neighbouring keys (layers)
    assert abs(_corr(step0[:-1], step0[1:])) < bound  # neighbouring elements in a row
    assert abs(_corr(step0[:-500], step0[500:])) < bound  # the same unit in neighbouring rows
    bits0, bits1 = random_bits(np, (N,), 5, 0, dtype=np.int64), random_bits(np, (N,), 5, 1, dtype=np.int64)
    assert abs(_corr(bits0, bits1)) < bound and abs(_corr(bits0[:-1], bits0[1:])) < bound
    assert np.count_nonzero(bits0 == bits1) < 10  # about N / 2**32 expected


# -- the layer ---------------------------------------------------------------------------------------
def _layer(case, rate=0.25, width=40, seed=3):
    layer = Dropout(rate)
    layer.build(width, case.backend, case.dtype, np.random.default_rng(seed))
    return layer


def test_key_comes_from_the_host_generator_and_counter_counts_training_steps(case):
    layer = _layer(case)
    assert layer.key == int(np.random.default_rng(3).integers(2**63)) and layer.counter == 0
    x = case.asarray(np.ones((6, 40)))
    masks = []
    for step in range(3):
        masks.append(to_numpy(layer.forward(x, training=True)))
        assert layer.counter == step + 1
        expected = ref_mask(layer.key, step, 6 * 40, 0.25).astype(case.dtype).reshape(6, 40)
        np.testing.assert_array_equal(masks[-1], expected)
    assert not np.array_equal(masks[0], masks[1])
    assert np.all(to_numpy(layer.forward(x, training=False)) == 1.0) and layer.counter == 3
    assert np.all(to_numpy(layer.backward(x)) == 1.0)  # inference: the gradient passes through


def test_backward_uses_the_forward_mask(case):
    layer = _layer(case)
    x = case.asarray(np.random.default_rng(0).normal(size=(6, 40)))
    y = to_numpy(layer.forward(x, training=True))
    g = to_numpy(layer.backward(case.asarray(np.full((6, 40), 3.0))))
    mask = ref_mask(layer.key, 0, 6 * 40, 0.25).astype(case.dtype).reshape(6, 40)
    np.testing.assert_array_equal(g, np.float64(3.0).astype(case.dtype) * mask)
    np.testing.assert_array_equal(y, to_numpy(x) * mask)


def test_rate_zero_is_the_identity(case):
    layer = _layer(case, rate=0.0)
    x = case.asarray(np.random.default_rng(0).normal(size=(4, 40)))
    assert layer.forward(x, training=True) is x and layer.backward(x) is x


class _NoHostCopies:
    """A namespace that refuses the calls that bring host data to the device."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        if name in ("asarray", "from_dlpack"):
            raise AssertionError(f"xp.{name} called: a host-to-device copy in the training step")
        return getattr(self._xp, name)


def test_masks_need_no_host_to_device_copy(case, monkeypatch):
    layer = _layer(case)
    x = case.asarray(np.ones((6, 40)))
    expected = to_numpy(_layer(case).forward(x, training=True))

    def refuse(*args, **kwargs):
        raise AssertionError("Backend.from_host called in the training step")

    monkeypatch.setattr(xpmlp.backend.Backend, "from_host", refuse)
    layer.xp = _NoHostCopies(layer.xp)
    np.testing.assert_array_equal(to_numpy(layer.forward(x, training=True)), expected)


@pytest.mark.parametrize("reference", [False, True], ids=["fused", "reference"])
def test_on_the_fake_gpu_a_training_forward_never_syncs_or_copies(monkeypatch, reference):
    fake_cupy = pytest.importorskip("fake_cupy")  # tests/fake_cupy.py: counts launches, syncs, copies
    if reference:
        monkeypatch.setenv("XPMLP_REFERENCE", "1")
    with fake_cupy.installed():
        backend = xpmlp.resolve("cuda:1")
        with backend.activate():
            xpmlp.backend.fast_kernels(backend.xp)  # the fused kernels' one-time probe, outside the count
            layer = Dropout(0.25)
            layer.build(40, backend, "float32", np.random.default_rng(3))
            x = backend.from_host(np.ones((6, 40), dtype=np.float32))
            fake_cupy.COUNTS.reset()
            y = layer.forward(x, training=True)
            counts = fake_cupy.COUNTS.snapshot()
            kept, y = to_numpy(layer._mask), to_numpy(y)
    expected = to_numpy(dropout_mask(np, (6, 40), 0.25, layer.key, 0, np.float32))
    np.testing.assert_array_equal(kept, expected)  # the fused kernel's bits are the reference's
    np.testing.assert_array_equal(y, expected)
    if reference:
        # arange, 2 x (key xor + fmix32's 8 uint32 operations), compare, astype, scale, x * mask
        assert counts == {"launches": 23, "syncs": 0, "h2d": 0}
    else:
        # the fused mask kernel (its CUDA C, run on the host by the stand-in) and x * mask
        assert counts == {"launches": 2, "syncs": 0, "h2d": 0}
        assert fake_cupy.COUNTS.by_name["xpmlp_dropout_mask"] == 1


def test_a_seed_gives_the_same_masks_on_every_backend_in_a_model(case):
    def masks(c):
        model = xpmlp.MLP([5, 30, 30, 2], dropout=0.3, seed=7, **c.model_kwargs())
        x = c.asarray(np.ones((4, 5)))
        out = []
        for _ in range(2):
            model.forward(x, training=True)
            out += [to_numpy(layer._mask) for layer in model.layers if isinstance(layer, Dropout)]
        return out

    from conftest import Case

    for a, b in zip(masks(case), masks(Case("numpy", None, case.dtype))):
        np.testing.assert_array_equal(a, b)


# -- saving and loading ------------------------------------------------------------------------------
X = np.random.default_rng(0).normal(size=(24, 5))
Y = (X[:, 0] > 0).astype(np.int64)


def _trained(tmp_path):
    model = xpmlp.MLP([5, 8, 8, 2], activation="tanh", dropout=0.2, seed=1, device="cpu")
    model.fit(X, Y, loss="softmax_cross_entropy", epochs=2, batch_size=8)
    path = tmp_path / "m.safetensors"
    model.save(path)
    return model, path


def _dropouts(model):
    return [layer for layer in model.layers if isinstance(layer, Dropout)]


def test_key_and_counter_are_saved_and_restored(tmp_path):
    model, path = _trained(tmp_path)
    assert [d.counter for d in _dropouts(model)] == [6, 6]  # 3 batches x 2 epochs
    loaded = xpmlp.load(path, device="cpu")
    assert [(d.key, d.counter) for d in _dropouts(loaded)] == [(d.key, d.counter) for d in _dropouts(model)]
    x = model.backend.from_host(np.ones((3, 8), dtype=np.float32))
    np.testing.assert_array_equal(to_numpy(_dropouts(loaded)[0].forward(x, training=True)),
                                  to_numpy(_dropouts(model)[0].forward(x, training=True)))


def _rewrite_rng(path, out, edit):
    """Copy a model file with its ``rng`` metadata changed by ``edit(dict)``."""
    import safetensors.numpy
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    rng = json.loads(metadata["rng"])
    edit(rng)
    metadata["rng"] = json.dumps(rng)
    safetensors.numpy.save_file(tensors, str(out), metadata=metadata)
    return out


def _legacy(rng):
    """The format before device masks: a NumPy generator state per Dropout layer."""
    del rng["dropout"]
    rng["layers"] = {"2": np.random.default_rng(5).bit_generator.state,
                     "5": np.random.default_rng(6).bit_generator.state}


def test_files_with_host_generator_states_load_with_derived_keys(tmp_path):
    model, path = _trained(tmp_path)
    old = _rewrite_rng(path, tmp_path / "old.safetensors", _legacy)
    with pytest.warns(UserWarning, match="older xpmlp that drew dropout masks on the host"):
        loaded = xpmlp.load(old, device="cpu")
    assert [(d.key, d.counter) for d in _dropouts(loaded)] == [
        (int(np.random.default_rng(5).integers(2**63)), 0), (int(np.random.default_rng(6).integers(2**63)), 0)]
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning):
        again = xpmlp.load(old, device="cpu")
    loaded.fit(X, Y, epochs=1, batch_size=8)
    again.fit(X, Y, epochs=1, batch_size=8)  # resuming an old file is reproducible
    for a, b in zip(loaded.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def _set(key, value):
    def edit(rng):
        rng["dropout"][key] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("2", {"key": 1, "counter": -1}), "malformed dropout state for layer 2"),
    (_set("2", {"key": "1", "counter": 0}), "malformed dropout state for layer 2"),
    (_set("2", {"counter": 0}), "malformed dropout state for layer 2"),
    (_set("3", {"key": 1, "counter": 0}), r"dropout states for layers \[2, 3, 5\], but the architecture has "
                                          r"Dropout layers \[2, 5\]"),
    (lambda rng: rng.pop("dropout"), "holds no dropout state"),
    (lambda rng: (_legacy(rng), rng["layers"]["2"].update(bit_generator="MT19937")),
     "malformed dropout state for layer 2"),
    (lambda rng: (_legacy(rng), rng["layers"].update({"2": [1, 2]})), "malformed dropout state for layer 2"),
])
def test_bad_dropout_states_are_refused(tmp_path, edit, message):
    _, path = _trained(tmp_path)
    bad = _rewrite_rng(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ModelFileError, match=message):
        xpmlp.load(bad, device="cpu")


def test_a_mask_at_an_offset_is_that_part_of_the_whole_mask(case):
    """rows r0.. of a batch (a rank's shard in a data-parallel fit) get exactly those rows of the whole
    batch's mask: through the reference and, on the fake GPU, the CUDA kernel's source run on the host."""
    b = case.backend
    full = to_numpy(dropout_mask(b.xp, (9, 7), 0.4, 1234, 5, case.dtype, b.device))
    part = to_numpy(dropout_mask(b.xp, (3, 7), 0.4, 1234, 5, case.dtype, b.device, offset=4 * 7))
    np.testing.assert_array_equal(part, full[4:7])
    layer = Dropout(0.4)
    layer.build(7, b, case.dtype, np.random.default_rng(0))
    with b.activate():
        whole = to_numpy(layer.draw_mask((9, 7), b.dtype(case.dtype)))
        layer.counter, layer.row_offset = 0, 4
        rows = to_numpy(layer.draw_mask((3, 7), b.dtype(case.dtype)))
    np.testing.assert_array_equal(rows, whole[4:7])
    # the last words of the 2**32 a draw holds, the same on every backend as in NumPy
    bits = to_numpy(random_bits(b.xp, (2, 3), 9, 1, b.device, offset=2**32 - 6))
    np.testing.assert_array_equal(bits.ravel(), random_bits(np, (6,), 9, 1, offset=2**32 - 6))
    with pytest.raises(ValueError, match="at offset"):
        random_bits(np, (2, 3), 9, 1, offset=2**32 - 5)


def test_unbuilt_dropout_refuses_a_training_pass_and_keeps_its_counter():
    layer = xpmlp.layers.Dropout(0.5)
    with pytest.raises(RuntimeError, match="Dropout layer is not built"):
        layer.draw_mask((4, 3), np.float32)
    assert layer.counter == 0
    assert xpmlp.layers.Dropout(0.0).draw_mask((4, 3), np.float32) is None  # nothing to draw: no key needed

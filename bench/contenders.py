"""The contenders of bench/mnist.py: one class per way of training the same MLP on MNIST.

Each runs in its own worker process (so one library's idle BLAS/OpenMP threads cannot slow
another's) and offers ``epoch()`` -> seconds (the device synchronised before each clock read),
``accuracy()`` on the test set (not timed), ``memory()`` (see below) and ``info()``. Every contender
trains the same architecture with Adam(lr=1e-3, betas (0.9, 0.999), eps=1e-8, no weight decay),
softmax cross-entropy, float32, a fresh shuffle per epoch, and the same batch size.

Memory, like with like. On a GPU, ``memory()`` trains one extra epoch, after the timed ones and
not timed, and reports the peak number of bytes that the library's caching allocator had handed
out to live arrays during it: for CuPy from a ``cupy.cuda.MemoryHook`` that follows every
malloc/free of the default memory pool (the hook costs a Python call per allocation, which is why
it is not active in the timed epochs); for torch ``torch.cuda.max_memory_allocated()`` after
``torch.cuda.reset_peak_memory_stats()``. Both count the resident training and test sets, the
weights, the optimiser state and the step's temporaries; neither counts the CUDA context or
memory cached but free. On the CPU, ``memory()`` reports the worker process's peak resident set
size (Linux's ``VmHWM``; ``ru_maxrss`` survives exec and would start from the harness's
peak), over its whole life: the same process layout for every contender.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import warnings

import numpy as np

LR = 1e-3


def _host_peak() -> int:
    """This process's peak resident set size in bytes: Linux's VmHWM, else ru_maxrss.

    Not ru_maxrss on Linux: it survives fork and exec, so a spawned worker starts from its
    parent's peak (the harness's: MNIST loaded, the matmul rate measured), and every worker
    below that reported the parent's number instead of its own. VmHWM belongs to the process's
    address space, which exec makes new.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


HOST_RSS = "peak RSS of the worker process over its life (VmHWM; ru_maxrss where /proc is missing)"


def _host_memory() -> dict:
    rss = _host_peak()
    return {"measure": "host_peak_rss", "bytes": rss, "method": HOST_RSS, "host_peak_rss": rss}


def cupy_pool_peak_hook():
    """A cupy.cuda.MemoryHook recording the peak of the default pool's bytes in use while active."""
    import cupy

    class PoolPeak(cupy.cuda.MemoryHook):
        name = "xpmlp_pool_peak"

        def __init__(self):
            self.pool = cupy.get_default_memory_pool()
            self.start = self.in_use = self.peak = int(self.pool.used_bytes())

        def malloc_postprocess(self, **kw):
            self.in_use += kw["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kw):
            self.in_use -= kw["mem_size"]

    return PoolPeak()


def torch_mlp(sizes):
    """torch.nn.Sequential of Linear layers with ReLU between them: the benchmarks' reference net."""
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class XpmlpContender:
    def __init__(self, data, sizes, batch_size, seed, device, tf32=False, numba=True):
        if not numba:  # numba's own switch, read when numba is imported: the update takes NumPy's chunked passes
            os.environ["NUMBA_DISABLE_JIT"] = "1"
        import xpmlp
        from xpmlp import kernels_numpy

        self.executor = kernels_numpy.executor_name()
        if not numba and "numba" in self.executor:
            raise RuntimeError(f"numba was to be off, but the update runs as: {self.executor}")

        (X, y), (Xt, yt) = data
        self.model = xpmlp.MLP(sizes, seed=seed, device=device, dtype="float32", tf32=tf32)
        self.backend = self.model.backend
        if device.startswith("cuda") and self.backend.name != "cupy":  # the fallback warns; here it must fail
            raise RuntimeError(f"xpmlp device={device!r} runs on {self.backend} instead of CuPy")
        self.X, self.y = self.backend.from_host(X), self.backend.from_host(y)  # resident on the device
        self.Xt, self.yt = self.backend.from_host(Xt), yt
        self.opt, self.batch_size = xpmlp.Adam(lr=LR), batch_size
        self.gpu = self.backend.name == "cupy"

    def _sync(self):
        if self.gpu:
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def epoch(self) -> float:
        self._sync()
        start = time.perf_counter()
        self.model.fit(self.X, self.y, loss="softmax_cross_entropy", optimizer=self.opt, epochs=1,
                       batch_size=self.batch_size, verbose=0)
        self._sync()  # fit reads the epoch loss, which already synchronises; kept for symmetry
        return time.perf_counter() - start

    def accuracy(self) -> float:
        from xpmlp import to_numpy

        return float(np.mean(np.argmax(to_numpy(self.model.predict(self.Xt)), axis=1) == self.yt))

    def memory(self) -> dict:
        if not self.gpu:
            return _host_memory()
        import cupy

        self._sync()
        hook = cupy_pool_peak_hook()
        with hook:
            self.epoch()
            self._sync()
        pool = cupy.get_default_memory_pool()
        if hook.in_use != pool.used_bytes():  # the hook missed allocations: its peak cannot be trusted
            raise RuntimeError(f"MemoryHook count {hook.in_use} != pool used_bytes {pool.used_bytes()}")
        return {"measure": "gpu_peak_in_use", "bytes": hook.peak,
                "method": "CuPy default pool: peak bytes in use over one extra untimed epoch "
                          "(cupy.cuda.MemoryHook on every malloc/free)",
                "pool_total_bytes": int(pool.total_bytes()), "host_peak_rss": _host_peak()}

    def info(self) -> dict:
        from xpmlp.backend import fast_kernels
        from xpmlp.losses import get_loss
        from xpmlp.step import make_train_step

        kernels = fast_kernels(self.backend.xp)
        with self.backend.activate():  # the step fit makes: fused (numpy, cupy) or reference
            step = make_train_step(self.model, get_loss("softmax_cross_entropy"), self.opt)
        return {"backend": str(self.backend), "fast_kernels": getattr(kernels, "__name__", repr(kernels)),
                "train_step": step.variant, "numpy_update": self.executor}


class TorchContender:
    def __init__(self, data, sizes, batch_size, seed, device, fused=False, compile_mode=None, tf32=False):
        import torch

        torch.manual_seed(seed)
        self.torch, self.device = torch, torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        self.net = torch_mlp(sizes).to(self.device)
        kwargs = {"fused": True} if fused else {}
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, **kwargs)
        self.loss = torch.nn.CrossEntropyLoss()
        self.forward = torch.compile(self.net, mode=compile_mode) if compile_mode else self.net
        (X, y), (Xt, yt) = data
        self.X, self.y = torch.from_numpy(X).to(self.device), torch.from_numpy(y).to(self.device)
        self.Xt, self.yt = torch.from_numpy(Xt).to(self.device), yt
        self.batch_size = batch_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def epoch(self) -> float:
        torch, n, bs = self.torch, self.X.shape[0], self.batch_size
        self._sync()
        start = time.perf_counter()
        order = torch.randperm(n, device=self.device, generator=self.generator)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            xb, yb = self.X[idx], self.y[idx]
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(self.forward(xb), yb)
            loss.backward()
            self.opt.step()
        self._sync()
        return time.perf_counter() - start

    def accuracy(self) -> float:
        with self.torch.no_grad():
            pred = self.net(self.Xt).argmax(dim=1).cpu().numpy()
        return float(np.mean(pred == self.yt))

    def memory(self) -> dict:
        if self.device.type != "cuda":
            return _host_memory()
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.epoch()
        torch.cuda.synchronize()
        return {"measure": "gpu_peak_in_use", "bytes": int(torch.cuda.max_memory_allocated(self.device)),
                "method": "torch.cuda.max_memory_allocated over one extra untimed epoch, "
                          "after torch.cuda.reset_peak_memory_stats",
                "reserved_bytes": int(torch.cuda.memory_reserved(self.device)), "host_peak_rss": _host_peak()}

    def info(self) -> dict:
        return {"torch": self.torch.__version__, "device": str(self.device)}


class SklearnContender:
    def __init__(self, data, sizes, batch_size, seed, device="cpu", tf32=False):
        from sklearn.neural_network import MLPClassifier

        (self.X, self.y), (self.Xt, self.yt) = data
        self.model = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="adam", alpha=0.0,
                                   learning_rate_init=LR, batch_size=batch_size, shuffle=True, random_state=seed)
        self.classes = np.arange(10)

    def epoch(self) -> float:
        start = time.perf_counter()
        self.model.partial_fit(self.X, self.y, classes=self.classes)  # one epoch, shuffled
        return time.perf_counter() - start

    def accuracy(self) -> float:
        return float(self.model.score(self.Xt, self.yt))

    def memory(self) -> dict:
        return _host_memory()

    def info(self) -> dict:
        import sklearn

        return {"sklearn": sklearn.__version__}


# name -> (class, device kind, keyword arguments)
CONTENDERS = {
    "xpmlp-numpy": (XpmlpContender, "cpu", {"device": "cpu"}),
    # the same without the [fast] extra's numba loop: the optimiser update as NumPy's chunked passes
    "xpmlp-numpy-passes": (XpmlpContender, "cpu", {"device": "cpu", "numba": False}),
    "xpmlp-cupy": (XpmlpContender, "cuda", {"device": "cuda"}),
    "torch-eager-cpu": (TorchContender, "cpu", {"device": "cpu"}),
    "torch-compile-cpu": (TorchContender, "cpu", {"device": "cpu", "compile_mode": "default"}),
    "sklearn-cpu": (SklearnContender, "cpu", {}),
    "torch-eager-cuda": (TorchContender, "cuda", {"device": "cuda"}),
    "torch-eager-fused-cuda": (TorchContender, "cuda", {"device": "cuda", "fused": True}),
    "torch-compile-cuda": (TorchContender, "cuda", {"device": "cuda", "compile_mode": "default"}),
    "torch-compile-ro-cuda": (TorchContender, "cuda", {"device": "cuda", "compile_mode": "reduce-overhead"}),
}


COMMANDS = ("epoch", "accuracy", "memory", "info")


class InjectedFailure(RuntimeError):
    """Raised by bench/mnist.py's hidden ``--fail-contender`` testing hook."""


def worker(conn, name, data_args, sizes, batch_size, seed, tf32, fail=None):
    """Worker process: build the contender, then answer commands until 'quit'.

    A failure to build (library missing, no GPU, ...) or in any command is sent back as an error
    with its message: the harness reports it as that contender's result. ``fail`` ("build" or
    "epoch") makes the contender fail there on purpose, to test that reporting.
    Warnings raised in the worker are collected and returned with ``info``.
    """
    caught, show = [], warnings.showwarning

    def record(message, category, *args, **kwargs):
        caught.append(f"{category.__name__}: {message}")
        show(message, category, *args, **kwargs)

    warnings.showwarning = record
    warnings.simplefilter("default")
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from data import mnist_float32

        cls, _, kwargs = CONTENDERS[name]
        if fail == "build":
            raise InjectedFailure(f"{name} failed to build (injected by --fail-contender)")
        contender = cls(mnist_float32(*data_args), sizes, batch_size, seed, tf32=tf32, **kwargs)
        conn.send(("ready", None))
    except Exception as e:  # not installed, no GPU, compile unavailable: reported as an error
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        command = conn.recv()
        if command == "quit":
            return
        try:
            if command not in COMMANDS:
                raise ValueError(f"unknown command {command!r}")
            if command == "epoch" and fail == "epoch":
                raise InjectedFailure(f"{name} failed in an epoch (injected by --fail-contender)")
            value = getattr(contender, command)()
            if command == "info":
                value = {**value, "warnings": sorted(set(caught))}
            conn.send(("ok", value))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))

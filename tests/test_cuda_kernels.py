"""The CuPy kernels (xpmlp.kernels_cupy) without a GPU.

- NVRTC: each kernel's source, generated as CuPy 14.2's ElementwiseKernel generates it (checked
  against CuPy's own generator where its private API allows), compiles for sm_80 and sm_90 for
  every dtype the kernels are offered for, with CuPy's headers and compile options: the
  dropout kernel, and the fused step's kernels (``raw`` parameters included, as ``CArray``s of
  the arrays' own ndim), which tests/test_step_cuda.py runs on the host. The optimiser kernels
  that xpmlp.update generates are compiled and run on the host by tests/test_update.py.
- Host: the same kernel bodies, compiled by g++ (tests/cuda_host.py) through
  ``kernels_cupy.build(fake_cupy)``: the dropout mask equals the reference's bits, ``probe``
  and ``usable`` work, and the host harness refuses what CuPy refuses.
- ``import xpmlp.kernels_cupy`` does not import CuPy.

Missing tools (CuPy, NVRTC, the CUDA headers, g++) skip these tests, unless
``XPMLP_REQUIRE_CUDA_TOOLS=1`` (set in CI), which turns each such skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from cuda_host import CTYPES, HostCompileError, HostElementwiseKernel, find_compiler, parse_params
from xpmlp.kernels_cupy import DTYPES, SPECS, STEP_DTYPES, KernelSpec, build, step_specs

STEP_SPECS = step_specs()
# The ndim of each raw parameter of the step kernels, as xpmlp.step_cuda passes them: the bias
# vector (k,), and (n, k) logits, gradients and target rows.
RAW_NDIM = {"b": 1, "z": 2, "grad": 2, "y": 2}
STEP_ARRAYS = ("y",)  # the int64 labels: an array, not a scalar


def step_kernel_source(spec: KernelSpec, dtype: str, **kwargs) -> str:
    return cupy_kernel_source(spec, dtype, raw_ndim=RAW_NDIM, arrays=STEP_ARRAYS, **kwargs)

ARCHS = ("sm_80", "sm_90")


def _unavailable(reason: str):
    """Skip, or fail when CI requires the CUDA tools (XPMLP_REQUIRE_CUDA_TOOLS=1)."""
    if os.environ.get("XPMLP_REQUIRE_CUDA_TOOLS", "") == "1":
        pytest.fail(f"{reason} (XPMLP_REQUIRE_CUDA_TOOLS=1 makes this a failure instead of a skip)")
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------
# NVRTC: the CUDA source CuPy 14.2 generates for an ElementwiseKernel
# ------------------------------------------------------------------------------------------

# cupy/_core/core.pyx: cupy_header_list, prepended to every source by compile_with_cache
_CUPY_HEADERS = ("cupy/complex.cuh", "cupy/carray.cuh", "cupy/atomics.cuh", "cupy/math_constants.h")
# cupy/_core/_scalar.pyx: the header a dtype's C type needs (a "type_decl")
_TYPE_DECLS = {"float16": '#include "cupy/float16.cuh"'}


def cupy_kernel_source(spec: KernelSpec, dtype: str, *, ndim: int = 1, index_32_bits: bool = True,
                       raw_ndim=None, arrays=(), header: bool = True) -> str:
    """The source CuPy 14.2 compiles when ``ElementwiseKernel(*spec)`` is called as
    :mod:`xpmlp.kernels_cupy` and :mod:`xpmlp.step_cuda` call it: placeholder (``T``) parameters
    are arrays of ``dtype``, other non-raw inputs of a fixed type are Python scalars unless named
    in ``arrays`` (the ``int64`` labels of the loss kernels), and each raw parameter is a
    C-contiguous array of ``raw_ndim[name]`` dimensions.

    Mirrors cupy/_core/_kernel.pyx (``_get_elementwise_kernel_code``,
    ``_get_simple_elementwise_kernel_code``, ``_ArgInfo.get_c_type``, ``_ArgInfo.get_c_var_name``,
    ``_TypeMap``) and the header prepended by ``core.compile_with_cache``. C-contiguous non-raw
    arguments of one shape are reshaped to one dimension by ``_reduce_dims``, hence ``ndim=1`` and
    ``CArray<..., 1, 1, idx32>`` named ``_raw_<name>`` with a reference line per element; raw
    arguments keep their ndim, are passed as ``CArray<ctype, ndim, c_contiguous, idx32>`` under
    their own name and get no reference line. ``index_32_bits`` is False for arrays of more than
    2**31 elements. ``header=False`` leaves out the ``#include`` lines.
    """
    ins, outs = parse_params(spec.in_params), parse_params(spec.out_params)
    type_decls: set[str] = set()

    def typename(dt: str) -> str:  # _scalar.get_typename(dtype, type_decls)
        if dt in _TYPE_DECLS:
            type_decls.add(_TYPE_DECLS[dt])
        return CTYPES[dt]

    idx = int(index_32_bits)
    params, refs = [], []
    for k, p in enumerate(ins + outs):
        const = "const " if k < len(ins) else ""
        elem = dtype if p.is_placeholder else p.type
        if p.raw:
            params.append(f"{const}CArray<{typename(elem)}, {raw_ndim[p.name]}, 1, {idx}> {p.name}")
        elif p.is_placeholder or k >= len(ins) or p.name in arrays:  # an array
            params.append(f"{const}CArray<{typename(elem)}, {ndim}, 1, {idx}> _raw_{p.name}")
            ctype = p.type if p.is_placeholder else CTYPES[p.type]
            refs.append(f"{const}{ctype} &{p.name} = _raw_{p.name}[_ind.get()];")
        else:  # a scalar
            params.append(f"{const}{typename(p.type)} {p.name}")
    params.append(f"CIndexer<{ndim}, {idx}> _ind")
    placeholders = sorted({p.type for p in ins + outs if p.is_placeholder})
    typedefs = "".join(f"typedef {typename(dtype)} {t};\n" for t in placeholders)
    decls = "\n".join(sorted(type_decls)) + "\n\n" if type_decls else ""
    operation = "\n".join(refs + [spec.operation])
    code = f'''
    {decls}{typedefs}
    
    extern "C" __global__ void {spec.name}({", ".join(params)}) {{
      ;
      #pragma unroll 1
      CUPY_FOR(i, _ind.size()) {{
        _ind.set(i);
        {operation};
      }}
      ;
    }}
    '''
    return ("".join(f"#include <{h}>\n" for h in _CUPY_HEADERS) if header else "") + code


@pytest.fixture(scope="module")
def nvrtc_setup():
    """(nvrtc module, CuPy's compile options without -arch), or skip/fail when unavailable."""
    try:
        import cupy
        from cupy.cuda import nvrtc
    except Exception as e:  # not installed, or a broken install
        _unavailable(f"CuPy is not importable: {e}")
    try:
        nvrtc.getVersion()
    except Exception as e:
        _unavailable(f"NVRTC is not available (pip install 'cuda-toolkit[nvrtc]'): {e}")
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        cuda_include = find_nvidia_header_directory("cudart")
    except Exception:
        cuda_include = None
    if cuda_include is None:  # CuPy itself raises without them: cuda_fp16.h comes from there
        _unavailable("the CUDA runtime headers were not found (pip install 'cuda-toolkit[cudart]')")
    include = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
    # core.assemble_cupy_compiler_options: bundled CCCL first, C++17, CuPy's and CUDA's headers;
    # compiler._compile_with_cache_cuda adds -ftz=true and _compile_using_nvrtc_no_warning adds
    # -arch=sm_XX (a cubin, not PTX) and --device-as-default-execution-space.
    options = (f"-I{include}/cupy/_cccl/cub", f"-I{include}/cupy/_cccl/thrust",
               f"-I{include}/cupy/_cccl/libcudacxx", "--std=c++17", f"-I{include}", f"-I{cuda_include}",
               "-ftz=true", "--device-as-default-execution-space")
    return nvrtc, options


def _nvrtc_compile(nvrtc, source: str, options) -> tuple[bytes | None, str]:
    """(cubin or None, NVRTC's log)."""
    prog = nvrtc.createProgram(source, "kern.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError:
            return None, nvrtc.getProgramLog(prog)
        return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def _numbered(source: str) -> str:
    return "\n".join(f"{n:4d}  {line}" for n, line in enumerate(source.splitlines(), 1))


@pytest.mark.parametrize("index_32_bits", [True, False], ids=["idx32", "idx64"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", SPECS)
def test_kernel_compiles_with_nvrtc(nvrtc_setup, kernel, dtype, arch, index_32_bits):
    nvrtc, options = nvrtc_setup
    source = cupy_kernel_source(SPECS[kernel], dtype, index_32_bits=index_32_bits)
    cubin, log = _nvrtc_compile(nvrtc, source, (*options, f"-arch={arch}"))
    assert cubin, f"NVRTC failed to compile {kernel} for {dtype}, {arch}:\n{log}\n--- source ---\n{_numbered(source)}"


def _cupy_generated(cupy, spec, dtype, idx, raw_ndim=None, arrays=()):
    """What CuPy's own (private) generator returns for these arguments, header included."""
    from cupy._core import _carray, _kernel, _scalar

    try:
        from cupy._core.core import _cupy_header_list
    except ImportError:
        _cupy_header_list = _CUPY_HEADERS
    kern = cupy.ElementwiseKernel(*spec)  # no compilation until called
    arginfos = []
    for k, p in enumerate(parse_params(spec.in_params) + parse_params(spec.out_params)):
        elem = np.dtype(dtype if p.is_placeholder else p.type)
        if p.raw:  # ARG_KIND_NDARRAY = 1, of the raw array's own ndim
            arginfos.append(_kernel._ArgInfo(1, cupy.ndarray, elem, raw_ndim[p.name], True, idx))
        elif p.is_placeholder or k >= kern.nin or p.name in arrays:
            arginfos.append(_kernel._ArgInfo(1, cupy.ndarray, elem, 1, True, idx))
        else:  # ARG_KIND_SCALAR = 3
            arginfos.append(_kernel._ArgInfo(3, _scalar.CScalar, elem, 0, True, True))
    arginfos.append(_kernel._ArgInfo(2, _carray.Indexer, None, 1, True, idx))  # ARG_KIND_INDEXER
    try:
        code = _kernel._get_elementwise_kernel_code(
            tuple(arginfos), _kernel._TypeMap((("T", np.dtype(dtype)),)), kern.params,
            kern.operation, kern.name, kern.preamble)
    except Exception as e:  # private API: changed in this CuPy version
        _unavailable(f"CuPy's private code generator is not callable as in 14.2 ({e}); "
                     "re-check cupy_kernel_source against this CuPy's _kernel.pyx")
    return "".join(f"#include <{h}>\n" for h in _cupy_header_list) + code


def test_source_mirrors_cupys_own_code_generation():
    """Our mirror equals what CuPy's (private) generator returns for the same arguments: the
    dropout kernel, and every step kernel (raw parameters, int64 labels)."""
    try:
        import cupy
        from cupy._core import _kernel  # noqa: F401
    except Exception as e:
        _unavailable(f"CuPy is not importable: {e}")
    for idx in (True, False):
        for spec in SPECS.values():
            for dtype in DTYPES:
                assert _cupy_generated(cupy, spec, dtype, idx) == cupy_kernel_source(spec, dtype, index_32_bits=idx), \
                    (spec.name, dtype, idx)
        for spec in STEP_SPECS.values():
            for dtype in STEP_DTYPES:
                want = _cupy_generated(cupy, spec, dtype, idx, RAW_NDIM, STEP_ARRAYS)
                assert want == step_kernel_source(spec, dtype, index_32_bits=idx), (spec.name, dtype, idx)


def test_cupy_parses_the_step_kernels_parameters_as_the_host_does():
    """CuPy's own ParameterInfo (names, types, raw) for every step kernel equals cuda_host's parse."""
    try:
        import cupy
    except Exception as e:
        _unavailable(f"CuPy is not importable: {e}")
    for spec in STEP_SPECS.values():
        kern = cupy.ElementwiseKernel(*spec)
        ours = parse_params(spec.in_params) + parse_params(spec.out_params)
        theirs = kern.params[:-1]  # the last is CuPy's own "CIndexer _ind"
        assert [(p.name, p.ctype if p.dtype is None else str(p.dtype), p.raw) for p in theirs] == \
            [(p.name, p.type, p.raw) for p in ours], spec.name
        assert (kern.nin, kern.nout) == (len(parse_params(spec.in_params)), len(parse_params(spec.out_params)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", STEP_DTYPES)
def test_step_kernels_compile_with_nvrtc(nvrtc_setup, dtype, arch):
    """Every step kernel, as CuPy generates it, in one NVRTC program per dtype and architecture
    (CuPy compiles each alone: the slow test below does that too; together they compile in seconds)."""
    nvrtc, options = nvrtc_setup
    source = "".join(f"#include <{h}>\n" for h in _CUPY_HEADERS) + "".join(
        step_kernel_source(spec, dtype, header=False) for spec in STEP_SPECS.values())
    cubin, log = _nvrtc_compile(nvrtc, source, (*options, f"-arch={arch}"))
    assert cubin, f"NVRTC failed to compile the step kernels for {dtype}, {arch}:\n{log}\n--- source ---\n{_numbered(source)}"
    for name in STEP_SPECS:
        assert name.encode() + b"\0" in cubin, f"{name} is missing from the cubin"


@pytest.mark.slow
@pytest.mark.parametrize("index_32_bits", [True, False], ids=["idx32", "idx64"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", STEP_DTYPES)
@pytest.mark.parametrize("kernel", list(STEP_SPECS))
def test_each_step_kernel_compiles_alone_with_nvrtc(nvrtc_setup, kernel, dtype, arch, index_32_bits):
    nvrtc, options = nvrtc_setup
    source = step_kernel_source(STEP_SPECS[kernel], dtype, index_32_bits=index_32_bits)
    cubin, log = _nvrtc_compile(nvrtc, source, (*options, f"-arch={arch}"))
    assert cubin, f"NVRTC failed to compile {kernel} for {dtype}, {arch}:\n{log}\n--- source ---\n{_numbered(source)}"


def test_nvrtc_harness_rejects_writes_to_raw_inputs(nvrtc_setup):
    """The harness is sensitive: a raw input is a const CArray in CuPy's source, so writing it fails
    under NVRTC (and under g++ on the host, which compiles the same declaration)."""
    nvrtc, options = nvrtc_setup
    spec = KernelSpec("raw T b", "T z", "b[0] = z;", "xpmlp_bad")
    cubin, log = _nvrtc_compile(nvrtc, step_kernel_source(spec, "float32"), (*options, "-arch=sm_90"))
    assert cubin is None and "modifiable lvalue" in log, log
    with pytest.raises(HostCompileError, match="read-only"):
        HostElementwiseKernel(*spec)(np.zeros(2, np.float32), np.zeros(3, np.float32))


def test_nvrtc_harness_rejects_the_float16_ternary(nvrtc_setup):
    """The harness is sensitive: a ``?:`` between a float expression and a float16 value (as a
    Nesterov step ``flag ? g + c * p : p`` would be written) fails for float16 under NVRTC, while
    the same selection with an ``if`` (the form the float16 kernels use) compiles."""
    nvrtc, options = nvrtc_setup
    ternary = KernelSpec("T g, float64 c, bool flag", "T p", """
        T step = flag ? g + (T)c * p : p;
        p = p - step;
        """, "xpmlp_ternary")
    with_if = ternary._replace(operation="""
        T step = p;
        if (flag) {
            step = g + (T)c * p;
        }
        p = p - step;
        """)
    cubin, log = _nvrtc_compile(nvrtc, cupy_kernel_source(ternary, "float32"), (*options, "-arch=sm_90"))
    assert cubin, log
    cubin, log = _nvrtc_compile(nvrtc, cupy_kernel_source(ternary, "float16"), (*options, "-arch=sm_90"))
    assert cubin is None and 'ambiguous "?" operation' in log, log
    cubin, log = _nvrtc_compile(nvrtc, cupy_kernel_source(with_if, "float16"), (*options, "-arch=sm_90"))
    assert cubin, log


# ------------------------------------------------------------------------------------------
# Host: the kernel bodies run by g++
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_compiler():
    if find_compiler() is None:
        _unavailable("g++ is not installed; tests/cuda_host.py needs it")


class _HostArray(np.ndarray):
    """A NumPy array with CuPy's ``.get()``, for the fake cupy's probe."""

    def get(self):
        return np.array(self)


def _fake_cupy(kernel_class=HostElementwiseKernel):
    """The part of the cupy API that kernels_cupy.build uses, run on the host."""
    return types.SimpleNamespace(ElementwiseKernel=kernel_class, ndarray=np.ndarray,
                                 asarray=lambda a: np.array(a).view(_HostArray))


def test_probe_passes_and_catches_a_broken_kernel(host_compiler):
    build(_fake_cupy()).probe()

    class DoesNothing(HostElementwiseKernel):
        def __call__(self, *args):
            return args[-1]

    with pytest.raises(RuntimeError, match="instead of 1.5"):
        build(_fake_cupy(DoesNothing)).probe()


def test_usable():
    kernels = build(_fake_cupy())
    a = np.zeros((3, 4), dtype=np.float32)
    for dtype in DTYPES:
        b = np.zeros((3, 4), dtype=dtype)
        assert kernels.usable(b, b.copy(), b.copy())
    assert not kernels.usable()
    assert not kernels.usable(a.T, a.T.copy())  # not C-contiguous
    assert not kernels.usable(a, a.astype(np.float64))  # dtypes differ
    assert not kernels.usable(a, a.reshape(4, 3))  # shapes differ
    assert not kernels.usable(a.astype(np.int32), a.astype(np.int32))  # not a kernel dtype
    assert not kernels.usable(a, [[0.0] * 4] * 3)  # not an array of this "cupy"


def test_host_kernel_rejects_what_it_cannot_run(host_compiler):
    k = HostElementwiseKernel("T g, float64 lr", "T p", "p = p - (T)lr * g;", "xpmlp_test_sgd")
    g, p = np.ones(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(TypeError, match="outputs must be passed"):
        k(g, 0.1)
    with pytest.raises(ValueError, match="does not broadcast"):
        k(np.ones(3, np.float32), 0.1, p)
    with pytest.raises(TypeError, match="already bound"):
        k(g.astype(np.float64), 0.1, p)
    with pytest.raises(ValueError, match="C-contiguous"):
        k(np.ones((4, 2), np.float32)[:, 0], 0.1, p)
    with pytest.raises(TypeError, match="real scalar"):
        k(g, 0.1j, p)
    with pytest.raises(ValueError, match="not supported"):
        HostElementwiseKernel("_non_const T g", "T p", "p = g;")
    with pytest.raises(ValueError, match="Loop size is undecided"):
        HostElementwiseKernel("raw T g", "raw T p", "p[i] = g[i];")(g, p)
    with pytest.raises(ValueError, match="'size' can be used only if all of the ndarray are 'raw'"):
        HostElementwiseKernel("raw T g", "T p", "p = g[i];")(g, p, size=4)
    with pytest.raises(TypeError, match="raw argument 'g' must be an array"):
        HostElementwiseKernel("raw T g", "T p", "p = g[i];")(1.0, p)
    with pytest.raises(ValueError, match="not supported"):
        HostElementwiseKernel("T g", "complex64 p", "p = g;")
    with pytest.raises(HostCompileError, match="undeclared|not declared"):
        HostElementwiseKernel("T g", "T p", "p = nope;")(g, p)
    assert k(g, 0.5, p) is p and np.array_equal(p, np.full(4, 0.5, np.float32))


# ------------------------------------------------------------------------------------------

def test_import_does_not_import_cupy():
    code = ("import sys\n"
            "sys.modules['cupy'] = None  # any import of cupy now raises ImportError\n"
            "import xpmlp.kernels_cupy\n"
            "assert sys.modules['cupy'] is None\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.9])
def test_host_dropout_kernel_gives_the_reference_bits(host_compiler, dtype, rate):
    """The fused dropout-mask kernel's CUDA C, run on the host, equals xpmlp.rng.dropout_mask exactly."""
    from xpmlp.rng import dropout_mask, keep_threshold, round_keys

    kernel = HostElementwiseKernel(*SPECS["dropout_mask"])
    for key, counter, shape, offset in ((0, 0, (7, 13), 0), (2**63 - 1, 12345, (128, 512), 0),
                                        (987654321, 3, (1, 1), 0), (5, 7, (3, 13), 4 * 13),
                                        (11, 2, (2, 8), 2**32 - 16)):  # a part of a larger mask, up to the last word
        out = np.empty(shape, dtype=dtype)
        k0, k1 = round_keys(key, counter)
        kernel(k0, k1, keep_threshold(rate), 1.0 / (1.0 - rate), offset, out)
        np.testing.assert_array_equal(out, dropout_mask(np, shape, rate, key, counter, dtype, offset=offset))


def test_host_kernel_cache_is_private(tmp_path, monkeypatch):
    """Compiled host kernels are kept between runs only in a directory that this user alone can
    write (they are loaded and run); XPMLP_CUDA_HOST_CACHE=0 keeps them for the process only."""
    import cuda_host

    monkeypatch.setenv(cuda_host.CACHE_ENV, "0")
    assert cuda_host._cache_dir() is None
    private = tmp_path / "private"
    monkeypatch.setenv(cuda_host.CACHE_ENV, str(private))
    assert cuda_host._cache_dir() == str(private) and (private.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(cuda_host.CACHE_ENV, str(shared))
    assert cuda_host._cache_dir() is None

"""An optimiser update written once, as a few assignment statements, and the executors made from it.

An :class:`Update` is the maths of one optimiser step over flat 1-D buffers, for example Adam::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g)
    p = p - step_size * (m / (sqrt(v) / root_bc2 + eps))

``p`` is the parameter buffer, ``g`` the gradient, the optimiser's state buffers (``m``, ``v``)
are named, and so are the host scalars (``b1``, ``step_size``...: Python floats given per step).
Any other assigned name is a temporary. Statements run in order, each reading the values the
previous ones wrote. Expressions: ``+ - * /``, unary ``-``, ``sqrt(x)``, names and numbers.

From that one text come every variant, so they cannot drift apart:

(a) :meth:`Update.reference` - Python over Array API arrays (functional: new arrays, no ``out=``);
(b) ``Update.program`` - a list of in-place elementwise operations on scratch buffers, which
    ``xpmlp.kernels_numpy.chunked`` runs in cache-sized chunks with NumPy's ``out=``;
(c) :meth:`Update.kernel_spec` - the body of one CuPy ``ElementwiseKernel`` (``KernelSpec``);
(d) :meth:`Update.loop_source` - a Python function, one loop over the elements with the statements
    on scalars, which ``xpmlp.kernels_numpy`` compiles with numba when it is installed.

All four do the same IEEE operations in the same order on values of the array dtype ``T``:
each subexpression of host scalars and numbers only (``1 - b1``) is first evaluated once per step
on the host in double (:meth:`Update.host_values`) and enters every variant as the same Python
float, which meets an array as a weak scalar (rounded to ``T``, as NumPy, the Array API and the
kernel's ``(T)`` cast all do). So (b), (d) and host-compiled (c) are bitwise equal to (a); on a GPU,
(c) differs only by NVRTC's multiply-add contraction and float32 denormal flushing.

This module imports no array library: the reference gets ``xp``, the NumPy executor lives in
``xpmlp.kernels_numpy``, the CUDA source is a string.
"""

from __future__ import annotations

import ast
import copy
import math
import textwrap
from typing import Any, NamedTuple

__all__ = ["Update", "KernelSpec", "Op"]

from .kernels_cupy import KernelSpec  # the one definition (kernels_cupy imports no CuPy)

_BINARY = {ast.Add: ("add", "+"), ast.Sub: ("subtract", "-"), ast.Mult: ("multiply", "*"),
           ast.Div: ("divide", "/")}
_FUNCTIONS = {"sqrt": "sqrt"}  # name in the description -> ufunc name / Array API function / C function


class Op(NamedTuple):
    """One in-place elementwise operation of ``Update.program``: ``out[...] = fn(*args)``.

    ``fn`` is a ufunc name (``add``, ``subtract``, ``multiply``, ``divide``, ``negative``, ``sqrt``,
    or ``copy``); ``out`` and each arg are ``("array", name)`` (p, g or a state buffer),
    ``("scratch", k)`` (the k-th scratch buffer, temporaries included) or, for args only,
    ``("scalar", name)`` (a value of :meth:`Update.host_values`).

    Parameters
    ----------
    fn : str
        The operation: a ufunc name, or ``copy``.
    out : tuple
        Where it writes: ``("array", name)`` or ``("scratch", k)``.
    args : tuple
        Its operands: ``("array", name)``, ``("scratch", k)`` or ``("scalar", name)``.
    """

    fn: str
    out: tuple
    args: tuple


class Update:
    """One optimiser update, parsed from its description.

    Parameters
    ----------
    text : str
        Assignment statements (one per line; ``#`` comments allowed).
    state : sequence of str
        The names of the state buffers (same shape and dtype as ``p``), updated in place.
    name : str
        The kernel's name, ``xpmlp_{name}``.

    Raises
    ------
    ValueError
        For anything outside the expression language, an assignment to a host scalar, a
        statement of host scalars only, or a reserved name.

    Notes
    -----
    The host scalars (``scalars``) are the names read before any assignment that are not
    ``p``, ``g`` or a state buffer.

    Examples
    --------
    >>> import numpy as np
    >>> from xpmlp.update import Update
    >>> u = Update("m = mu * m + g; p = p - lr * m", state=("m",), name="momentum")
    >>> u.scalars
    ('mu', 'lr')
    >>> arrays = {"p": np.ones(2), "g": np.array([1.0, -1.0]), "m": np.zeros(2)}
    >>> u.reference_inplace(np, arrays, u.host_values({"mu": 0.9, "lr": 0.1}))
    >>> arrays["p"], arrays["m"]
    (array([0.9, 1.1]), array([ 1., -1.]))
    """

    def __init__(self, text: str, state: Any = (), name: str = "update") -> None:
        self.text, self.state, self.name = text, tuple(state), name
        self.arrays = ("p", "g", *self.state)
        try:
            tree = ast.parse(textwrap.dedent(text).strip(), mode="exec")
        except SyntaxError as e:
            raise ValueError(f"update {name}: not a list of assignments: {e}") from None
        scalars: list[str] = []
        known = set(self.arrays)
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                scalars += [n for n in _names(stmt.value) if n not in known and n not in _FUNCTIONS]
                known |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
        self.scalars = tuple(dict.fromkeys(scalars))
        bad = [n for n in (*known, *self.scalars) if n in ("i", "T", "xp") or n.startswith("_")]
        if bad:  # the kernel's element index and type, the reference's namespace, CuPy's own names
            raise ValueError(f"update {name}: the names {bad} are reserved")
        self._folded: list[tuple[str, ast.expr]] = []  # (host name, host-only expression)
        self.statements: list[tuple[str, ast.expr]] = []  # (target, expression with host parts folded)
        known = set(self.arrays)
        for stmt in tree.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                raise ValueError(f"update {name}: only 'name = expression' statements, got {ast.unparse(stmt)!r}")
            target = stmt.targets[0].id
            if target in self.scalars:
                raise ValueError(f"update {name}: cannot assign the host scalar {target!r}")
            self._check(stmt.value)
            if self._host_only(stmt.value):
                raise ValueError(f"update {name}: {ast.unparse(stmt)!r} uses host scalars only")
            self.statements.append((target, self._fold(stmt.value)))
            known.add(target)
        self.outputs = tuple(n for n in ("p", *self.state) if any(t == n for t, _ in self.statements))
        folded = {h for h, _ in self._folded}
        self.host_names = tuple(dict.fromkeys(n for _, e in self.statements for n in _names(e)
                                              if n in folded or n in self.scalars))
        self._host_code = [(h, compile(ast.Expression(e), f"<update {name}: {h}>", "eval")) for h, e in self._folded]
        self._reference_code = self._compile_reference()
        self.program, self.n_scratch = self._schedule()

    # -- parsing -----------------------------------------------------------------------------

    def _check(self, node) -> None:
        """Refuse what the language does not have."""
        for n in ast.walk(node):
            if isinstance(n, ast.Constant):
                if type(n.value) not in (int, float):
                    raise ValueError(f"update {self.name}: only numbers, got {n.value!r}")
            elif isinstance(n, ast.Name):
                pass
            elif isinstance(n, ast.Call):
                if not (isinstance(n.func, ast.Name) and n.func.id in _FUNCTIONS and len(n.args) == 1
                        and not n.keywords):
                    raise ValueError(f"update {self.name}: unsupported call {ast.unparse(n)!r} (only sqrt(x))")
            elif (not isinstance(n, (ast.BinOp, ast.UnaryOp, ast.Load, ast.USub, *_BINARY))
                  or isinstance(n, ast.BinOp) and type(n.op) not in _BINARY
                  or isinstance(n, ast.UnaryOp) and not isinstance(n.op, ast.USub)):
                raise ValueError(f"update {self.name}: unsupported expression {ast.unparse(node)!r} "
                                 "(+ - * /, unary -, sqrt, names and numbers)")

    def _host_only(self, node) -> bool:
        return all(n.id in self.scalars or n.id in _FUNCTIONS for n in ast.walk(node) if isinstance(n, ast.Name))

    def _fold(self, node):
        """The expression with each maximal host-only subexpression (numbers included) replaced by a
        new host name ``h0``, ``h1``...; a host scalar's own name stays as it is."""
        if isinstance(node, ast.Name) and node.id in self.scalars:
            return node
        if self._host_only(node):
            host = f"h{len(self._folded)}"
            if host in self.scalars or host in self.arrays:
                raise ValueError(f"update {self.name}: the name {host!r} is reserved for folded host expressions")
            self._folded.append((host, node))
            return ast.Name(host, ast.Load())
        if isinstance(node, ast.BinOp):
            return ast.BinOp(self._fold(node.left), node.op, self._fold(node.right))
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(node.op, self._fold(node.operand))
        if isinstance(node, ast.Call):
            return ast.Call(ast.Name(node.func.id, ast.Load()), [self._fold(node.args[0])], [])
        return ast.Name(node.id, ast.Load())

    def host_values(self, scalars: dict) -> dict:
        """The host scalars the executors take, by name (``host_names``).

        Parameters
        ----------
        scalars : dict of str to float
            Python floats; it must hold every name of ``scalars``, other keys are ignored.

        Returns
        -------
        dict of str to float
            Each folded subexpression (and number) evaluated in double from ``scalars``, and the
            scalars the statements use directly.

        Raises
        ------
        ValueError
            If a host scalar has no value.
        """
        missing = [k for k in self.scalars if k not in scalars]
        if missing:
            raise ValueError(f"update {self.name}: no value for the host scalars {missing}")
        values = {k: float(scalars[k]) for k in self.scalars}
        env = {"__builtins__": {}, "sqrt": _sqrt}
        for host, code in self._host_code:
            values[host] = float(eval(code, env, values))
        return {h: values[h] for h in self.host_names}

    # -- (a) the Array API reference -----------------------------------------------------------

    def _compile_reference(self):
        body = [ast.unparse(ast.Assign([ast.Name(t, ast.Store())], _py(e), lineno=0)) for t, e in self.statements]
        ret = ", ".join(self.outputs)
        hosts = "".join(f", {h}=None" for h in self.host_names)
        src = f"def update(xp, {', '.join(self.arrays)}{hosts}):\n"
        src += "".join(f"    {line}\n" for line in body) + f"    return ({ret},)\n"
        env: dict = {}
        exec(compile(src, f"<update {self.name} reference>", "exec"), env)
        self.reference_source = src
        return env["update"]

    def reference(self, xp: Any, arrays: dict, values: dict) -> dict:
        """The new value of each output (p and the state buffers it assigns), computed with ``xp``.

        Parameters
        ----------
        xp : module
            The arrays' Array API namespace.
        arrays : dict of str to array
            p, g and the state buffers, 1-D of one shape (not modified).
        values : dict of str to float
            What :meth:`host_values` returned.

        Returns
        -------
        dict of str to array
            The new value of each output, by name (new arrays).
        """
        out = self._reference_code(xp, *(arrays[n] for n in self.arrays),
                                   **{h: values[h] for h in self.host_names})
        return dict(zip(self.outputs, out))

    def reference_inplace(self, xp: Any, arrays: dict, values: dict) -> None:
        """:meth:`reference`, then each output written into its buffer in ``arrays`` (``[...] =``).

        Parameters
        ----------
        xp : module
            The arrays' Array API namespace.
        arrays : dict of str to array
            p, g and the state buffers; the outputs are written in place.
        values : dict of str to float
            What :meth:`host_values` returned.
        """
        new = self.reference(xp, arrays, values)
        for name, value in new.items():
            if any(value is a for a in arrays.values()):  # a plain copy (v = m): m may be written first
                new[name] = xp.asarray(value, copy=True)
        for name, value in new.items():
            arrays[name][...] = value

    # -- (b) the in-place program for the NumPy chunked executor -------------------------------

    def _schedule(self):
        """Lower the statements to in-place operations on the arrays and a few scratch buffers.

        Each operation writes into a scratch buffer it consumes, else into the statement's target
        when the target is read only there (``m = b1 * m + ...`` starts with ``m *= b1``), else into
        a free scratch buffer; the last one writes the target. Temporaries (names not p, g or a
        state, and ``g`` once reassigned) hold a scratch buffer from their assignment on.
        """
        program: list[Op] = []
        where = {n: ("array", n) for n in self.arrays}  # name -> where its current value is
        free: list[int] = []
        count = [0]

        def scratch():
            if free:
                return ("scratch", free.pop())
            count[0] += 1
            return ("scratch", count[0] - 1)

        def release(ref):
            if ref[0] == "scratch" and ref not in where.values():
                free.append(ref[1])

        for target, expr in self.statements:
            is_array = target in self.arrays and target != "g"
            if is_array:
                dest = ("array", target)
            elif target in where and where[target][0] == "scratch":
                dest = where[target]
            else:
                dest = None  # a new temporary: its buffer is chosen below
            reads = sum(1 for n in _names(expr) if n == target)
            reusable = dest if (dest is not None and reads <= 1) else None

            def emit(node, last):
                nonlocal reusable
                if isinstance(node, ast.Name):
                    return ("scalar", node.id) if node.id in self.host_names else where[node.id]
                if isinstance(node, ast.BinOp):
                    args = (emit(node.left, False), emit(node.right, False))
                    fn = _BINARY[type(node.op)][0]
                elif isinstance(node, ast.UnaryOp):
                    args, fn = (emit(node.operand, False),), "negative"
                else:
                    args, fn = (emit(node.args[0], False),), _FUNCTIONS[node.func.id]
                if last and dest is not None:
                    out = dest
                else:
                    out = next((a for a in args if a[0] == "scratch" and a not in where.values()), None)
                    if out is None and reusable is not None and reusable in args:
                        out, reusable = reusable, None  # the target's old value is not read again
                    if out is None:
                        out = scratch()
                for a in args:
                    if a != out:
                        release(a)
                program.append(Op(fn, out, args))
                return out

            if isinstance(expr, ast.Name):  # a copy
                src = emit(expr, True)
                if dest is None:
                    dest = scratch()
                program.append(Op("copy", dest, (src,)))
            else:
                result = emit(expr, True)
                dest = dest or result
            old = where.get(target)
            where[target] = dest
            if old is not None and old != dest:
                release(old)
        return program, count[0]

    # -- (c) the CUDA ElementwiseKernel --------------------------------------------------------

    def kernel_spec(self) -> KernelSpec:
        """The arguments of ``cupy.ElementwiseKernel`` for this update.

        The kernel is called as ``kernel(g, *(values[h] for h in host_names), p, *state)``
        (outputs in place). Array parameters are of type ``T`` (the parameters' dtype), host
        scalars ``float64`` cast to ``T`` where used; temporaries are locals of type ``T``; ``g``
        is an input (read-only), so once reassigned it lives in a local.

        Returns
        -------
        KernelSpec
            ``(in_params, out_params, operation, name)``.
        """
        names: dict[str, str] = {n: n for n in self.arrays}
        lines = []
        for target, expr in self.statements:
            code = _c(expr, names, set(self.host_names))
            if target in self.arrays and target != "g":
                lines.append(f"{target} = {code};")
            elif names.get(target, "").startswith("_t_"):
                lines.append(f"{names[target]} = {code};")
            else:
                names[target] = f"_t_{target}"
                lines.append(f"T {names[target]} = {code};")
        ins = ", ".join(["T g"] + [f"float64 {h}" for h in self.host_names])
        outs = ", ".join(f"T {n}" for n in ("p", *self.state))
        return KernelSpec(ins, outs, "\n".join(lines), f"xpmlp_{self.name}")

    # -- (d) one loop over the elements, for numba ---------------------------------------------------

    def loop_source(self) -> str:
        """Python source of ``_update(p, g, *state, *host_values)``: one loop over the elements.

        Each iteration reads p, g and the state at index ``_i`` into locals, runs the statements on
        those scalars in order (functions as in the reference, ``xp.sqrt``: the caller binds the
        global ``xp``, e.g. to NumPy), then writes p and the assigned state back. The host values are passed in
        the order of ``host_names``, already cast to the arrays' dtype by the caller, so every
        operation is one of that dtype, as in (a)-(c). Every name is prefixed (arrays ``_a_``,
        their elements ``_e_``, host values ``_h_``, temporaries ``_t_``): the description's
        names, reserved from ``_`` on, cannot meet Python's.

        Returns
        -------
        str
            The function's source; its name is ``_update``.
        """
        arrays, hosts = set(self.arrays), set(self.host_names)

        def local(n):
            return f"_e_{n}" if n in arrays else f"_h_{n}" if n in hosts else f"_t_{n}"

        class Rename(ast.NodeTransformer):  # every name but the reference's xp (a reserved name)
            def visit_Name(self, node):
                return node if node.id == "xp" else ast.Name(local(node.id), ast.Load())

        args = ", ".join([*(f"_a_{n}" for n in self.arrays), *(local(h) for h in self.host_names)])
        lines = [f"def _update({args}):", f"    for _i in range(_a_{self.arrays[0]}.shape[0]):"]
        lines += [f"        _e_{n} = _a_{n}[_i]" for n in self.arrays]
        for target, expr in self.statements:
            lines.append(f"        {local(target)} = {ast.unparse(Rename().visit(_py(expr)))}")
        lines += [f"        _a_{n}[_i] = _e_{n}" for n in self.outputs]
        return "\n".join(lines) + "\n"

    def __repr__(self):
        return f"Update({self.name!r}, state={self.state}, scalars={self.scalars})"


def _sqrt(x: float) -> float:
    """IEEE sqrt in double, as the arrays' (NaN below zero, where math.sqrt raises)."""
    return math.sqrt(x) if x >= 0 else math.nan


def _names(node):
    return [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]


def _py(node):
    """The expression as Python over Array API arrays: sqrt -> xp.sqrt."""

    class T(ast.NodeTransformer):
        def visit_Call(self, n):
            self.generic_visit(n)
            return ast.Call(ast.Attribute(ast.Name("xp", ast.Load()), n.func.id, ast.Load()), n.args, [])

    return ast.fix_missing_locations(T().visit(copy.deepcopy(node)))


def _c(node, names, hosts) -> str:
    """The expression as CUDA C, parenthesised as the tree is (so C evaluates it in the same order)."""
    if isinstance(node, ast.Name):
        return f"(T){node.id}" if node.id in hosts else names[node.id]
    if isinstance(node, ast.BinOp):
        return f"({_c(node.left, names, hosts)} {_BINARY[type(node.op)][1]} {_c(node.right, names, hosts)})"
    if isinstance(node, ast.UnaryOp):
        return f"(-{_c(node.operand, names, hosts)})"
    return f"{_FUNCTIONS[node.func.id]}({_c(node.args[0], names, hosts)})"

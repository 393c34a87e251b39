"""The machinery every check shares: backends, calling the user's function safely, search and shrinking.

A check is a list of *scenarios*. A scenario is a Hypothesis strategy of
canonical float64 cases and an ``evaluate(case) -> list[Outcome]`` function
that calls the user's function on the case (through the convention's adapter)
and returns one `Outcome` per violated property. The `Session` explores each
scenario with a fixed seed, and for every check id that failed it searches
again with the same seed to shrink the failing case to a minimal one (same
seed, same sequence: the first failure recurs and Hypothesis shrinks it).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from refpg._validation import check_choice, check_positive_int
from refpg.conformance.report import Counterexample, Failure, NotRun, Report
from refpg.errors import InvalidInputError

__all__ = ["Backend", "Call", "Outcome", "Session", "resolve_backend"]

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
BACKENDS = ("auto", "numpy", "torch", "jax")
DTYPES = ("float64", "float32")


# -- backends -------------------------------------------------------------------

class BadOutput(Exception):
    """The user's function returned something that is not an array of floats."""


@dataclass(frozen=True)
class Backend:
    """How arrays are handed to the user's function: NumPy, torch or JAX, float64 or float32.

    JAX arrays are float64 only where JAX's x64 mode is on: with dtype float64 the
    user's function runs inside ``jax.enable_x64(True)`` (`context`), which leaves the
    caller's global setting as it was.

    ``tol`` is the relative tolerance of value comparisons: an output entry
    passes when ``|actual - expected| <= tol * (1 + scale)``, `scale` being the
    largest magnitude among the case's inputs and expected outputs. float32
    gets 1e-4 (a few hundred float32 roundings), float64 1e-9.
    """

    name: str
    dtype: str

    @property
    def tol(self) -> float:
        return TOLERANCE[self.dtype]

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)

    @property
    def differentiable(self) -> bool:
        """Whether the backend gives gradients of the user's output (torch autograd, ``jax.grad``)."""
        return self.name in ("torch", "jax")

    def context(self):
        """What the user's function runs inside: JAX's x64 mode for float64 JAX arrays, else nothing."""
        if self.name == "jax" and self.dtype == "float64":
            import jax
            return jax.enable_x64(True)
        return contextlib.nullcontext()

    def round(self, x: np.ndarray) -> np.ndarray:
        """`x` rounded to the backend's float dtype and back to float64 (what the reference sees)."""
        return np.asarray(x, dtype=self.dtype).astype(np.float64)

    def to_user(self, x, *, requires_grad: bool = False):
        arr = np.asarray(x)
        if arr.dtype == bool:
            kind = "bool"
        elif arr.dtype.kind in "iu":
            kind = "int"
            arr = arr.astype(np.int64)
        else:
            kind = "float"
            arr = arr.astype(self.dtype)
        if self.name == "numpy":
            return arr.copy()
        if self.name == "jax":
            import jax.numpy as jnp
            if kind == "int" and self.dtype == "float32":
                arr = arr.astype(np.int32)  # without x64 JAX has no int64 (it would warn and truncate)
            with self.context():
                return jnp.asarray(arr)
        import torch
        t = torch.from_numpy(arr.copy())
        if kind == "float" and requires_grad:
            t.requires_grad_(True)
        return t

    def to_numpy(self, y, what: str) -> np.ndarray:
        """The user's output as a NumPy array in its own dtype (raises `BadOutput`).

        Anything NumPy turns into a numeric array is accepted: an ndarray, a
        float, a (nested) list of floats, NumPy scalars or row arrays, a torch
        tensor, or any object with ``__array__`` (a JAX array, for rlax).
        """
        if _is_torch_tensor(y):
            return _torch_to_numpy(y, what)
        if y is None or isinstance(y, (bool, np.bool_, str, bytes, dict, set)):
            raise BadOutput(f"{what} should be an array or a float, actual {type(y).__name__}")
        kind = type(y).__name__
        sequence = isinstance(y, (list, tuple))
        if sequence:
            # Items may be tensors (rows of a torch result): NumPy cannot read one that requires grad.
            y = [_torch_to_numpy(x, what) if _is_torch_tensor(x) else x for x in y]
        try:
            arr = np.asarray(y)
        except Exception as exc:  # a ragged list, or an object whose __array__ fails
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise BadOutput(f"{what} should be an array of floats, actual "
                            + (f"a ragged {kind} (items of different shapes)" if sequence else
                               f"a {kind} that NumPy cannot convert ({type(exc).__name__}: {detail})")) from None
        if arr.dtype == object:
            if sequence:
                raise BadOutput(f"{what} should be an array of floats, actual a {kind} that NumPy reads as "
                                f"objects (ragged, or holding a {type(_first_odd(y)).__name__})")
            raise BadOutput(f"{what} should be an array or a float, actual {kind}")
        if arr.dtype.kind not in "fiu":
            raise BadOutput(f"{what} should have a floating dtype, actual {arr.dtype}")
        return arr

    def snapshot(self, x) -> np.ndarray:
        if self.name == "jax" and not isinstance(x, np.ndarray):
            return np.array(x, copy=True)  # JAX arrays are immutable: a copy is for symmetry only
        if self.name == "torch" and not isinstance(x, np.ndarray):
            return x.detach().cpu().numpy().copy()
        return np.array(x, copy=True)


def _is_torch_tensor(y) -> bool:
    if not type(y).__module__.startswith("torch"):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - a torch object without torch
        return False
    return isinstance(y, torch.Tensor)


def _torch_to_numpy(y, what: str) -> np.ndarray:
    """A torch tensor as a NumPy array; `BadOutput` naming the tensor when NumPy cannot hold it
    (sparse layout, meta device, a negative or conjugate bit, a dtype NumPy lacks)."""
    import torch

    try:
        y = y.detach()
        if y.dtype == torch.bfloat16:  # NumPy has no bfloat16; float16 keeps the "too narrow" verdict
            y = y.to(torch.float16)
        return y.cpu().numpy()
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise BadOutput(f"{what} should be a torch tensor NumPy can read (dense, with data on a device), actual one "
                        f"(dtype {str(y.dtype).removeprefix('torch.')}, layout "
                        f"{str(y.layout).removeprefix('torch.')}, device {y.device}) that .numpy() refuses: "
                        f"{type(exc).__name__}: {detail}") from None


def _torch_gradient(x, loss, grad_arg: str) -> tuple[np.ndarray | None, str | None]:
    """d loss / d x by autograd, as float64; or a message saying why there is none."""
    import torch

    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        return None, (f"the loss should be differentiable with respect to {grad_arg} (a torch tensor with "
                      f"requires_grad=True was passed), actual a {type(loss).__name__} with no gradient")
    try:
        (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    except RuntimeError as exc:
        return None, f"the loss should be differentiable with respect to {grad_arg}, actual {exc}".splitlines()[0]
    if g is None:
        return np.zeros(tuple(x.shape)), None
    return g.detach().cpu().numpy().astype(np.float64), None


def _one(shape) -> str:
    return "one scalar" if tuple(shape) == () else f"one array of shape {tuple(shape)}"


def _shape_of(x) -> tuple | None:
    """The shape of an array-like or number, None for anything else."""
    if isinstance(x, (int, float, np.generic)) and not isinstance(x, bool):
        return ()
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else None


def _first_odd(items):
    """The first item of a list that is neither a number nor an array (for an error message)."""
    return next((x for x in items if not isinstance(x, (int, float, np.ndarray, np.generic))), items[0])


def dtype_label(raw, arr: np.ndarray) -> str:
    """The dtype the user returned, by its own name (a torch bfloat16 reaches NumPy as float16)."""
    dtype = getattr(raw, "dtype", None)
    if type(raw).__module__.startswith("torch") and dtype is not None:
        return str(dtype).removeprefix("torch.")
    return str(arr.dtype)


def resolve_backend(fn, backend: str, dtype: str, probe: Callable[[Backend], Any]) -> tuple[Backend, list]:
    """The `Backend` to use; ``"auto"`` probes NumPy first, then torch.

    `probe(backend)` calls the user's function once on a tiny case and
    returns its `Call` (or whether it returned without raising). A function
    that returns torch tensors for NumPy inputs is checked on torch, so that
    its gradient is checked too. When the function raises on both, the
    NumPy error decides: one that asks for a Tensor means a torch function
    with a bug of its own, which only the torch run shows. Returns the
    backend and warnings.
    """
    check_choice(backend, "backend", BACKENDS)
    check_choice(dtype, "dtype", DTYPES)
    if backend != "auto":
        if backend == "torch":
            _require_torch()
        if backend == "jax":
            _require_jax()
        return Backend(backend, dtype), []
    result = probe(Backend("numpy", dtype))
    if _probe_ok(result):
        if isinstance(result, Call) and _holds_torch(result.output):
            return Backend("torch", dtype), ["backend='auto' chose torch: the function returned a torch "
                                             "tensor for NumPy inputs (its gradient is checked)"]
        if isinstance(result, Call) and _holds_jax(result.output):
            return Backend("jax", dtype), ["backend='auto' chose jax: the function returned a JAX array for "
                                           "NumPy inputs (it is called on JAX arrays, float64 in x64 mode, and "
                                           "its gradient is checked through jax.grad)"]
        return Backend("numpy", dtype), []
    try:
        _require_torch()
    except InvalidInputError:
        return Backend("numpy", dtype), []
    numpy_error = _probe_error(result)
    result = probe(Backend("torch", dtype))
    if _probe_ok(result):
        return Backend("torch", dtype), ["backend='auto' chose torch: the function raised on NumPy "
                                        "arrays and ran on torch tensors"]
    torch_error = _probe_error(result)
    chosen = "torch" if _wants_tensors(numpy_error) else "numpy"
    why = ("the NumPy error shows it wants tensors, so the torch error is the function's own"
           if chosen == "torch" else "the NumPy run's error is reported")
    return Backend(chosen, dtype), [
        f"backend='auto' could not run the function on either backend: on NumPy arrays it raised "
        f"{numpy_error}; on torch tensors {torch_error}. Checked on {chosen} ({why}); pass "
        f"backend='numpy' or backend='torch' to choose"]


def _probe_ok(result) -> bool:
    return result.error is None if isinstance(result, Call) else bool(result)


def _probe_error(result) -> str:
    if isinstance(result, Call) and result.error_summary:
        return result.error_summary
    return "an exception"


def _wants_tensors(summary: str) -> bool:
    """Whether an error on NumPy inputs says the function expects torch tensors: "zeros_like():
    argument 'input' (position 1) must be Tensor, not numpy.ndarray", or an ndarray lacking a method
    that torch tensors have ("'numpy.ndarray' object has no attribute 'clamp'")."""
    if summary.startswith("TypeError") and "Tensor" in summary:
        return True
    match = re.search(r"'numpy\.ndarray' object has no attribute '(\w+)'", summary)
    if summary.startswith("AttributeError") and match:
        import torch
        return hasattr(torch.Tensor, match.group(1))
    return False


def _short_repr(obj, limit: int = 300) -> str:
    """``repr(obj)``, or its start and how much was left out when it is long (a dict of big arrays)."""
    text = user_repr(obj)
    return text if len(text) <= limit else f"{text[:limit]} ... ({len(text) - limit} more characters)"


_USER_MODULE = re.compile(r"refpg_user_\d+")


def user_module_name(name: str) -> str:
    """A module's name as its author knows it: the file's stem for one ``refpg check FILE.py`` imported
    (internally ``refpg_user_<n>``), else `name`."""
    if not _USER_MODULE.fullmatch(name or ""):
        return name
    file = getattr(sys.modules.get(name), "__file__", None)
    return file.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py") if file else "the checked file"


def user_repr(obj) -> str:
    """``repr(obj)`` as a message shows it: a module as ``module NAME`` (never its file's path), and no
    internal ``refpg_user_<n>`` module names."""
    import types

    if isinstance(obj, types.ModuleType):
        return f"module {user_module_name(obj.__name__)}"
    return _USER_MODULE.sub(lambda m: user_module_name(m.group(0)), repr(obj))


def _holds_torch(out) -> bool:
    """Whether an output is (or, as a tuple or dict, contains) a torch tensor."""
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else (out,)
    return any(type(x).__module__.startswith("torch") for x in items)


def _holds_jax(out) -> bool:
    """Whether an output is (or, as a tuple or dict, contains) a JAX array."""
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else (out,)
    return any(type(x).__module__.startswith(("jax", "jaxlib")) for x in items)


def _require_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        raise InvalidInputError("backend='jax' needs JAX: pip install 'refpg[jax]'") from None


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InvalidInputError("backend='torch' needs PyTorch: pip install 'refpg[torch]'") from None


# -- calling the user's function ---------------------------------------------------

_USER_ERRSTATE: dict = {"settings": None}


def numerics_of_their_own(check):
    """Decorator of every ``check_<kind>``: the checker's own arithmetic ignores NumPy's global
    ``np.seterr`` (the reference must not die of an underflow), while the user's function runs
    under the settings the caller had; and Hypothesis writes nothing in the caller's directory
    (`_private_hypothesis_storage`)."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        previous = _USER_ERRSTATE["settings"]
        _USER_ERRSTATE["settings"] = np.geterr()
        try:
            with np.errstate(all="ignore"), _private_hypothesis_storage():
                return check(*args, **kwargs)
        finally:
            _USER_ERRSTATE["settings"] = previous
    return wrapper


_STORAGE: dict = {"dir": None}


@contextlib.contextmanager
def _private_hypothesis_storage():
    """Point Hypothesis's storage directory at a private temporary one for the duration of a check.

    Every search runs with ``database=None``, but Hypothesis also caches the numeric constants it
    finds in the source of "local" modules (the user's own code) under ``.hypothesis/constants`` of
    the working directory: a check would leave a ``.hypothesis/`` folder in the user's project. The
    temporary directory lives as long as the process; the previous setting comes back afterwards,
    so a user's own Hypothesis tests keep their example database where it was.
    """
    try:
        from hypothesis import configuration
        configuration.set_hypothesis_home_dir  # noqa: B018 - present in every supported version
    except (ImportError, AttributeError):  # pragma: no cover
        yield
        return
    if _STORAGE["dir"] is None:
        _STORAGE["dir"] = tempfile.mkdtemp(prefix="refpg-hypothesis-")
        atexit.register(shutil.rmtree, _STORAGE["dir"], ignore_errors=True)
    previous = vars(configuration).get("__hypothesis_home_directory")
    configuration.set_hypothesis_home_dir(_STORAGE["dir"])
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(previous)

#: Progress notices for long checks: the CLI sets "stream" to stderr; the Python API stays silent.
PROGRESS: dict = {"stream": None, "every": 30.0}


class Call(NamedTuple):
    """What one call of the user's function did."""

    output: Any                 # the raw return value (None if it raised)
    error: str | None           # formatted traceback if it raised
    error_summary: str | None   # "ValueError: ..." one line
    mutated: tuple              # names of input arrays it changed in place
    user_args: tuple            # the arguments as passed (backend objects)
    names: tuple = ()           # the arguments' names, in the same order


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the checker's own frames (it starts inside the user's code)."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop the frame of `call_user` itself
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and a.tobytes() == b.tobytes():
        # The same bits: equal by either test below. The mutation check compares every input array
        # after every call (the arrays of 2,000 episodes for REINFORCE), nearly all untouched, and
        # comparing bytes is 15-40x faster than np.array_equal on such small arrays.
        return True
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


# -- the function's signature against the conventions -------------------------------

#: Parameter names that denote the same quantity in different conventions (a match on them says
#: nothing about which convention a function follows).
_SAME_QUANTITY = {"reward": "rewards", "r_t": "rewards", "state_value": "values",
                  "lam": "lambda", "lmbda": "lambda", "lambda_": "lambda", "gae_lambda": "lambda",
                  "clip_eps": "epsilon", "clip_range": "epsilon", "cliprange": "epsilon", "adv_t": "advantages"}


def convention_parameters(conventions: dict) -> dict:
    """Convention -> tuple of parameter names, from signatures written ``"fn(a, b, c) -> ..."``."""
    out = {}
    for name, sig in conventions.items():
        text = sig[0] if isinstance(sig, tuple) else sig
        match = re.match(r"\s*fn\(([^)]*)\)", text)
        out[name] = tuple(p.strip() for p in match.group(1).split(",") if p.strip())
    return out


class _Signature(NamedTuple):
    positional: tuple      # names of the parameters that can be passed by position, in order
    required: int          # how many of them have no default
    var_positional: bool   # *args
    required_keyword: tuple  # keyword-only parameters without a default
    certain: bool = True   # False: read through a generic (*args) wrapper, which may add arguments


def _signature_of(fn) -> _Signature | None:
    """The positional parameters of `fn` (a function, bound method, functools.partial, callable
    object, or torch.nn.Module, whose ``forward`` is what it calls); None if Python cannot tell."""
    import inspect

    target = fn
    torch = sys.modules.get("torch")  # a torch module exists only if torch was imported
    if torch is not None and isinstance(fn, torch.nn.Module):
        if type(fn).__call__ is not torch.nn.Module.__call__:
            target = fn.__call__  # the module defines its own call
        elif fn._forward_pre_hooks or getattr(torch.nn.modules.module, "_global_forward_pre_hooks", None):
            return None  # a pre-hook may rewrite the arguments before forward sees them
        else:
            target = fn.forward
    try:
        sig = inspect.signature(target)
        outer = inspect.signature(target, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    # A decorator's wrapper(*args, **kwargs) usually passes its arguments through, so the wrapped
    # function's parameters are the best guess; but one that supplies an argument itself would be
    # refused wrongly, so what is read through it can only warn.
    certain = (sig == outer or _passes_arguments_through(target)
               or any(p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
                      for p in outer.parameters.values()))
    positional = [p for p in sig.parameters.values() if p.kind in (kinds.POSITIONAL_ONLY,
                                                                  kinds.POSITIONAL_OR_KEYWORD)]
    return _Signature(tuple(p.name for p in positional),
                      sum(p.default is kinds.empty for p in positional),
                      any(p.kind is kinds.VAR_POSITIONAL for p in sig.parameters.values()),
                      tuple(p.name for p in sig.parameters.values()
                            if p.kind is kinds.KEYWORD_ONLY and p.default is kinds.empty),
                      certain)


def _passes_arguments_through(wrapper) -> bool:
    """Whether `wrapper` is a decorator's wrapper known to pass every argument on unchanged: torch's
    ``no_grad``, ``enable_grad`` and ``inference_mode`` (``torch.utils._contextlib.decorate_context``),
    common on RLHF advantage functions."""
    code = getattr(wrapper, "__code__", None)
    return (code is not None and code.co_name == "decorate_context"
            and code.co_filename.replace("\\", "/").endswith("torch/utils/_contextlib.py"))


def _takes(sig: _Signature, n: int) -> bool:
    """Whether a call with `n` positional arguments binds."""
    return (not sig.required_keyword and sig.required <= n
            and (sig.var_positional or len(sig.positional) >= n))


def _quantity(name: str) -> str:
    name = name.lower()
    return _SAME_QUANTITY.get(name, name)


def _evidence(names: tuple, mine: tuple, other: tuple) -> int:
    """How many of `names` sit where `mine` passes a quantity that `other` does not pass there."""
    return sum(1 for i, n in enumerate(names[:len(mine)])
               if i < len(other) and _quantity(mine[i]) != _quantity(other[i])
               and _quantity(n) == _quantity(mine[i]))


def _fmt(params: tuple) -> str:
    return ", ".join(params)


def check_signature(fn, kind: str, convention: str, conventions: dict) -> list:
    """Refuse, before any call, a function that cannot be called as `convention` passes arguments,
    or whose parameter names clearly follow another convention; return warnings for the rest.

    `conventions` maps each convention of `kind` to its parameter names. Arguments are passed by
    position, so names that match no convention are fine (users rename parameters). Stops
    (`InvalidInputError`) when the number of positional arguments cannot bind, or when at least two
    parameters carry another convention's names at positions where the declared convention passes
    something else, and more of them than carry the declared convention's names there.
    """
    sig = _signature_of(fn)
    if sig is None:  # a builtin or an extension function: nothing to read
        return []
    try:
        return _check_signature(sig, kind, convention, conventions)
    except InvalidInputError as exc:
        if sig.certain:
            raise
        return [f"{exc} (read through a decorator's generic wrapper, which may supply arguments itself, "
                f"so the check goes on; expect every call to fail if it does not)"]


def _check_signature(sig: _Signature, kind: str, convention: str, conventions: dict) -> list:
    declared = conventions[convention]
    names = sig.positional
    shown = f"({_fmt(names)}{', *args' if sig.var_positional else ''})"
    flag = f'convention="{{c}}" (refpg check: --convention {{c}})'
    if _takes(sig, len(declared)):
        best, best_score = None, 0
        for other, params in conventions.items():
            if other == convention or len(params) != len(declared) or not _takes(sig, len(params)):
                continue
            score = _evidence(names, params, declared)
            if score >= 2 and score > _evidence(names, declared, params) and score > best_score:
                best, best_score = other, score
        if best is not None:
            raise InvalidInputError(
                f"the function's parameters {shown} look like the {best} convention of {kind} "
                f"({_fmt(conventions[best])}), not the declared {convention!r} ({_fmt(declared)}); "
                f"arguments are passed by position, so it would receive the wrong arrays: pass "
                f"{flag.format(c=best)}. If the names are a coincidence, rename the parameters")
        moved = [(n, names.index(n), i) for i, n in enumerate(declared)
                 if n in names[:len(declared)] and names.index(n) != i]
        if not moved:
            return []
        where = ", ".join(f"{n!r} is its parameter {j + 1} but argument {i + 1}" for n, j, i in moved)
        return [f"the function's parameters {shown} name the {convention} convention's arguments, "
                f"fn({_fmt(declared)}), in another order ({where}); arguments are passed by position, so "
                f"each parameter receives the argument at its position"]
    # The declared convention's call cannot bind.
    if sig.required_keyword:
        why = (f"keyword-only parameter{'s' if len(sig.required_keyword) > 1 else ''} "
               f"{', '.join(sig.required_keyword)} without a default, and the kit passes every argument "
               f"by position")
    elif sig.required > len(declared):
        why = f"{sig.required} required positional parameters, and the convention passes {len(declared)}"
    else:
        why = f"{len(names)} positional parameters, and the convention passes {len(declared)}"
    msg = (f"the function {shown} cannot be called the way the {convention} convention of {kind} calls it, "
           f"fn({_fmt(declared)}): it has {why}")
    fits = {c: p for c, p in conventions.items() if c != convention and _takes(sig, len(p))
            and p != declared}
    if fits and not sig.required_keyword:
        best = max(fits, key=lambda c: sum(_quantity(a) == _quantity(b) for a, b in zip(names, fits[c])))
        others = [c for c in fits if c != best and fits[c] != fits[best]]
        msg += (f". It takes as many arguments as the {best} convention ({_fmt(fits[best])}): if that "
                f"is what it implements, pass {flag.format(c=best)}")
        if others:
            msg += f" (or {', '.join(repr(c) for c in others)})"
    else:
        arities = sorted({len(p) for p in conventions.values()})
        if len(arities) > 1 and not sig.required_keyword:
            msg += (f". No convention of {kind} fits: they pass "
                    + "; ".join(f"{c}: fn({_fmt(p)})" for c, p in conventions.items()))
        msg += ". The function was not called"
    raise InvalidInputError(msg)


# -- outcomes and sessions ---------------------------------------------------------

@dataclass
class Outcome:
    """One violated property on one case."""

    check_id: str
    message: str
    inputs: dict = field(default_factory=dict)
    expected: Any = None
    actual: Any = None
    where: tuple | None = None
    traceback: str | None = None
    parts: tuple = ()  # (label, inputs, output) of the further calls `expected` was made of


def scale_hint(actual, expected, tol: float, scale: float = 0.0, *, n: int | None = None,
               n_is: str = "the number of samples") -> str:
    """Name the scaling bug that turns `expected` into `actual`, if one does, else "".

    Tried in order: ``actual = -expected`` (a flipped sign), and with a count `n` > 1,
    ``actual = n x expected`` (a sum where the mean belongs), ``-n x expected``, ``expected / n``
    (a mean where the sum belongs). A candidate ``c`` fits when
    ``|actual - c * expected| <= tol * (1 + |c| * scale)`` everywhere, with `scale` at least the
    largest ``|expected|``; an expected of zero everywhere fits every candidate and is no evidence.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(scale), float(np.max(np.abs(expected), initial=0.0)))
    if not np.any(np.abs(expected) > tol * (1.0 + scale)):
        return ""

    def fits(c: float) -> bool:
        return bool(np.all(np.abs(actual - c * expected) <= tol * (1.0 + abs(c) * scale)))

    if fits(-1.0):
        return "actual = -expected: the sign is flipped"
    if n is not None and n > 1:
        if fits(float(n)):
            return f"actual = n x expected with n = {n}, {n_is}: a sum where the mean belongs"
        if fits(-float(n)):
            return f"actual = -n x expected with n = {n}, {n_is}: a sum where the mean belongs, and the sign flipped"
        if fits(1.0 / n):
            return f"actual = expected / n with n = {n}, {n_is}: a mean where the sum belongs"
    return ""


class Session:
    """Runs the scenarios of one check and collects a `Report`.

    Parameters
    ----------
    kind : str
    fn : callable
    convention : str
    backend : Backend
    max_examples : int
        Cases drawn per scenario before shrinking.
    seed : int
    options : dict
        The resolved options (shown in the report).
    """

    #: Seconds of shrinking per failure before the best case so far is reported.
    shrink_budget = 5.0
    #: Seconds inside the user's function above which the report says how to shorten the check.
    slow_seconds = 10.0

    def __init__(self, kind, fn, convention, backend, *, max_examples, seed, options, warnings=()):
        self.kind, self.fn, self.convention, self.backend = kind, fn, convention, backend
        self.max_examples, self.seed, self.options = int(max_examples), check_positive_int(
            seed, "seed", minimum=0), dict(options)
        self.calls = 0
        self.user_seconds = 0.0
        self.slowest_call = 0.0
        self._last_progress = time.perf_counter()
        self.checks: list[str] = []
        self.failures: dict[str, Failure] = {}
        self.warnings: list[str] = list(warnings)
        self.start = time.perf_counter()
        self._dtype_warned = False
        self._seen_warnings: set = set()
        # Which check ids reached a verdict on at least one case, so that an id that never did is
        # reported "not run" rather than passed. Only `tracked` ids are judged so: the generic ids,
        # those of `run_scenario`, and those declared with ``tracked=True``.
        self.tracked: set = set()
        self.evaluated: set = set()
        self.skip_reasons: dict[str, str] = {}
        self.by_design: set[str] = set()
        self.returned = 0   # calls that returned
        self.first_error: Call | None = None  # the first call that raised (a backend probe reports it)
        self.usable = 0     # outputs `output_array` accepted as arrays

    # -- ids and warnings ------------------------------------------------------

    def declare(self, *check_ids: str, tracked: bool = False) -> None:
        """List check ids in the report. With `tracked`, an id that never reaches a verdict (see `ran`)
        is reported as not run; an untracked one is listed as passed unless it failed."""
        for cid in check_ids:
            if cid not in self.checks:
                self.checks.append(cid)
            if tracked:
                self.tracked.add(cid)

    def ran(self, *check_ids: str) -> None:
        """Note that these checks reached a verdict (pass or fail) on a case."""
        self.evaluated.update(check_ids)

    def not_run_because(self, check_id: str, reason: str, *, by_design: bool = False) -> None:
        """Why `check_id` may not run, shown if it indeed never does (the first reason given stays).

        `by_design`: the convention cannot express the check, so its absence leaves the report complete."""
        self.skip_reasons.setdefault(check_id, reason)
        if by_design:
            self.by_design.add(check_id)

    def catch_all_blocked(self, catch_all: str, specific: list, what: str = "a catch-all") -> bool:
        """Whether any of the `specific` check ids failed; if so `catch_all` is noted as not run, since a
        check over every case mixed adds nothing to a specific failure."""
        failed = [c for c in specific if c in self.failures]
        if failed:
            self.not_run_because(catch_all, f"{what} adds nothing to the specific failure of "
                                            f"{', '.join(failed)}: fix that first")
        return bool(failed)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def generic_ids(self) -> tuple:
        k = self.kind
        return (f"{k}.raised", f"{k}.output_shape", f"{k}.output_dtype", f"{k}.output_finite",
                f"{k}.input_mutated")

    # -- calls -------------------------------------------------------------------

    def call(self, args: list, *, grad_of: str | None = None) -> Call:
        """Call the user's function with `args`, a list of (name, value) in positional order.

        NumPy values are converted to the backend (scalars are passed as Python
        floats). With `grad_of`, that argument is a torch leaf requiring grad.
        """
        with self.backend.context():
            return self._call(args, grad_of)

    def _call(self, args: list, grad_of: str | None) -> Call:
        user = []
        snaps = []
        names = tuple(name for name, _ in args)
        for name, value in args:
            if isinstance(value, np.ndarray) or isinstance(value, (list,)) and name.endswith("episodes"):
                obj = self._convert(value, requires_grad=(name == grad_of))
                user.append(obj)
                snaps.append((name, obj, self._snap(obj)))
            else:
                user.append(value)
        self.calls += 1
        # Warnings the function emits are reported once each in the report, not printed per call.
        with warnings.catch_warnings(record=True) as caught, \
                np.errstate(**(_USER_ERRSTATE["settings"] or np.geterr())):
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            try:
                out = self.fn(*user)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # the user's bug (even sys.exit) is a finding, never a crash
                # The headline, whole: the failure shows the full traceback besides.
                summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self._timed(time.perf_counter() - t0)
                self._note_warnings(caught)
                self.ran(f"{self.kind}.raised")
                failed = Call(None, _user_traceback(exc), summary, (), tuple(user), names)
                if self.first_error is None:
                    self.first_error = failed
                return failed
            self._timed(time.perf_counter() - t0)
        self._note_warnings(caught)
        mutated = tuple(name for name, obj, snap in snaps if not self._same(obj, snap))
        self.returned += 1
        self.ran(f"{self.kind}.raised", f"{self.kind}.input_mutated")
        return Call(out, None, None, mutated, tuple(user), names)

    def input_gradient(self, call: Call, grad_arg: str, pick: Callable[[Any], Any] = lambda out: out
                       ) -> tuple[np.ndarray | None, str | None]:
        """The gradient of the loss `pick(output)` with respect to the argument `grad_arg` of `call`.

        Returns ``(gradient as float64 array of the argument's shape, None)``, or ``(None, message)``
        saying why there is none. torch: autograd through the call that was made (its `grad_of`
        argument requires grad). JAX: ``jax.grad`` of the function called again on the same arguments
        with `grad_arg` as the variable (JAX traces a new call; the first one was concrete). An
        argument the loss does not depend on has gradient 0.
        """
        if not self.backend.differentiable:  # pragma: no cover - internal misuse
            raise AssertionError("input_gradient needs the torch or jax backend")
        i = call.names.index(grad_arg)
        if self.backend.name == "torch":
            return _torch_gradient(call.user_args[i], pick(call.output), grad_arg)
        return self._jax_gradient(call, i, grad_arg, pick)

    def _jax_gradient(self, call: Call, i: int, grad_arg: str, pick):
        import jax
        import jax.numpy as jnp

        args = list(call.user_args)
        fn = self.fn

        def loss_of(*a):
            return jnp.reshape(jnp.asarray(pick(fn(*a))), ())

        # One jitted gradient per (argument, pick) and session: tracing jax.grad again on every case cost
        # half of a JAX loss check. Arrays are passed as arguments, so only a new shape retraces; plain
        # Python numbers stay static (a function may branch on clip_eps), which a number never seen
        # before retraces too. A function jit cannot trace at all falls back to the plain jax.grad.
        static = tuple(j for j, a in enumerate(args) if j != i and not hasattr(a, "shape"))
        cache = self.__dict__.setdefault("_jax_grads", {})
        key = (i, pick, static)
        with self.backend.context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported once already by the concrete call
            try:
                try:
                    if key not in cache and len(cache) >= 8:  # a new `pick` per call: caching buys nothing
                        g = jax.grad(loss_of, argnums=i)(*args)
                    else:
                        if key not in cache:
                            cache[key] = jax.jit(jax.grad(loss_of, argnums=i), static_argnums=static)
                        g = cache[key](*args)
                except (TypeError, ValueError):  # unhashable static arguments, or jit-only trouble
                    g = jax.grad(loss_of, argnums=i)(*args)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
                return None, (f"the loss should be differentiable with respect to {grad_arg} through jax.grad, "
                              f"actual {summary}")
        return np.asarray(g, dtype=np.float64), None

    def _timed(self, seconds: float) -> None:
        """Account one call's time; with `PROGRESS` on (the CLI), say now and then that a slow check lives."""
        self.user_seconds += seconds
        self.slowest_call = max(self.slowest_call, seconds)
        stream, every = PROGRESS["stream"], PROGRESS["every"]
        now = time.perf_counter()
        if stream is not None and now - self._last_progress >= every:
            self._last_progress = now
            each = self.user_seconds / self.calls
            # A jitted JAX function of these small inputs takes well under 10 ms a call once compiled.
            jit = (" (a JAX function that is not jax.jit-compiled runs op by op: check jax.jit(fn))"
                   if self.backend.name == "jax" and each > 0.01 else "")
            print(f"refpg check: {self.kind} still running after {now - self.start:.0f} s: {self.calls} calls "
                  f"of the function so far, {1e3 * each:.0f} ms each on average{jit}", file=stream, flush=True)

    def _slow_warning(self) -> str | None:
        """Where the time went, when the user's own function made the check slow."""
        if self.user_seconds < self.slow_seconds:
            return None
        total = time.perf_counter() - self.start
        how = ("its statistical test needs this many calls; a faster function shortens it"
               if self.kind == "reinforce_estimator" else
               "lower max_examples (CLI: --max-examples) to shorten the check, at the cost of fewer cases")
        if self.backend.name == "jax":
            how += ("; a JAX function that is not jax.jit-compiled runs op by op, and one using jax.lax.scan "
                    "compiles its loop body again on every call: check jax.jit(fn), as training calls it")
        return (f"the function itself took {self.user_seconds:.1f} s of this check's {total:.1f} s "
                f"({self.calls} calls, {1e3 * self.user_seconds / self.calls:.0f} ms each on average, slowest "
                f"{self.slowest_call:.2f} s); {how}")

    def _note_warnings(self, caught) -> None:
        for w in caught:
            key = (w.category.__name__, str(w.message).strip())  # whole: a cut message misleads
            if key not in self._seen_warnings and len(self._seen_warnings) < 5:
                self._seen_warnings.add(key)
                self.warn(f"the function emitted {key[0]}: {key[1]}")

    def _convert(self, value, requires_grad=False):
        if isinstance(value, list):  # a list of per-episode tuples of arrays
            return [tuple(self.backend.to_user(a) for a in ep) for ep in value]
        return self.backend.to_user(value, requires_grad=requires_grad)

    def _snap(self, obj):
        if isinstance(obj, list):
            return [tuple(self.backend.snapshot(a) for a in ep) for ep in obj]
        return self.backend.snapshot(obj)

    def _same(self, obj, snap) -> bool:
        if isinstance(obj, list):
            if len(obj) != len(snap):
                return False
            return all(_arrays_equal(self.backend.snapshot(a), s)
                       for ep, sep in zip(obj, snap) for a, s in zip(ep, sep))
        return _arrays_equal(self.backend.snapshot(obj), snap)

    def generic_outcomes(self, call: Call, inputs: dict) -> list[Outcome]:
        """Failures every kind shares: an exception, and arrays changed in place."""
        out = []
        if call.error is not None:
            hint = ""
            if self.backend.name != "torch" and _wants_tensors(call.error_summary or ""):
                hint = (f" (it asks for torch tensors, and backend={self.backend.name!r} passed "
                        f"{'JAX' if self.backend.name == 'jax' else 'NumPy'} arrays: pass backend='torch', on the "
                        f"command line --backend torch)")
            out.append(Outcome(f"{self.kind}.raised",
                               f"the function should return without raising, actual {call.error_summary}{hint}",
                               inputs, traceback=call.error))
        if call.mutated:
            out.append(Outcome(f"{self.kind}.input_mutated",
                               f"the input arrays should be left unchanged, actual "
                               f"{', '.join(call.mutated)} modified in place", inputs))
        return out

    def output_array(self, raw, what: str, shape: tuple, inputs: dict, *,
                     dtype_matters: bool = True, check_id: str | None = None) -> tuple[np.ndarray | None, list]:
        """The output as float64 of `shape`, or the outcomes that say why it is not one.

        With `dtype_matters` False (a count or a fraction), precision is neither checked nor warned about.
        With `check_id`, every outcome is filed under that id instead of the generic
        ``output_shape`` / ``output_dtype`` / ``output_finite`` (a secondary output such as a clip
        fraction, whose failure must not read as one of the main output).
        """
        kind = self.kind
        ids = ({k: check_id for k in ("shape", "dtype", "finite")} if check_id is not None else
               {k: f"{kind}.output_{k}" for k in ("shape", "dtype", "finite")})
        self.ran(ids["dtype"])
        try:
            arr = self.backend.to_numpy(raw, what)
        except BadOutput as exc:
            if isinstance(raw, tuple) and len(raw) > 1:
                # Several return values whose items do not form one array: (loss, extras) and the like.
                self.ran(ids["shape"])
                return None, [Outcome(ids["shape"],
                                      f"{what} should be {_one(shape)}, actual a tuple of {len(raw)} items "
                                      f"(return {what} alone; extra diagnostics are not part of this "
                                      f"signature)", inputs)]
            return None, [Outcome(ids["dtype"], str(exc), inputs, actual=_short_repr(raw))]
        outcomes = []
        if not dtype_matters:
            pass
        elif arr.dtype.kind != "f" or arr.dtype.itemsize < self.backend.np_dtype.itemsize:
            outcomes.append(Outcome(ids["dtype"],
                                    f"{what} should have dtype {self.backend.dtype} (the dtype of the "
                                    f"inputs), actual {dtype_label(raw, arr)}", inputs))
        elif arr.dtype.itemsize > self.backend.np_dtype.itemsize and not self._dtype_warned:
            self._dtype_warned = True
            self.warn(f"{what} has dtype {arr.dtype} for {self.backend.dtype} inputs: legal, but it "
                      f"upcasts (a float64 output from float32 inputs doubles memory downstream)")
        self.ran(ids["shape"])
        if arr.shape != tuple(shape):
            if isinstance(raw, tuple) and len(raw) > 1 and _shape_of(raw[0]) == tuple(shape):
                # (result, extras) whose items happen to stack, e.g. GAE's (advantages, returns).
                return None, outcomes + [Outcome(
                    ids["shape"], f"{what} should be {_one(shape)}, actual a tuple of {len(raw)} items of "
                                  f"shape {arr.shape[1:]} (return {what} alone; extra diagnostics are not part "
                                  f"of this signature)", inputs)]
            if tuple(shape) == () and arr.ndim >= 1:
                hint = f" (a scalar {what} is expected: a missing .mean()?)"
            elif arr.size == int(np.prod(shape)) and arr.size > 1:
                hint = " (same number of entries: transposed, flattened or a missing axis?)"
            else:
                hint = ""
            return None, outcomes + [Outcome(ids["shape"], f"{what} should have shape {tuple(shape)}, actual "
                                                           f"shape {arr.shape}{hint}", inputs)]
        if dtype_matters and arr.dtype.kind != "f":
            return None, outcomes  # an integer output: no value to compare
        self.ran(ids["finite"])
        arr64 = arr.astype(np.float64)
        if not np.all(np.isfinite(arr64)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr64))[0])
            value = arr64[idx] if idx else arr64.item()
            outcomes.append(Outcome(ids["finite"],
                                    f"{what}{list(idx) if idx else ''} should be finite for finite inputs, "
                                    f"actual {value}", inputs, actual=arr64, where=idx or None))
            return None, outcomes
        if check_id is None:
            self.usable += 1
        return arr64, outcomes

    def compare(self, check_id: str, what: str, actual: np.ndarray, expected: np.ndarray, inputs: dict,
                *, scale: float = 0.0, why: str = "", n: int | None = None,
                n_is: str = "the number of samples") -> Outcome | None:
        """An outcome if ``|actual - expected| > tol * (1 + scale)`` anywhere, naming the worst entry.

        The message names a common scaling bug when `actual` is one (`scale_hint`): ``-expected``
        and, given the count `n` a mean divides by (`n_is` says what it counts), ``n x expected``.
        """
        self.ran(check_id)
        expected = np.asarray(expected, dtype=np.float64)
        actual = np.asarray(actual, dtype=np.float64)
        scale = max(float(scale), float(np.max(np.abs(expected), initial=0.0)))
        allowed = self.backend.tol * (1.0 + scale)
        err = np.abs(actual - expected)
        if not np.any(err > allowed):
            return None
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape)) if err.ndim else ()
        label = f"{what}[{', '.join(map(str, idx))}]" if idx else what
        msg = (f"{label} should be {expected[idx] + 0.0:.10g}, actual {actual[idx] + 0.0:.10g} "  # never "-0"
               f"(error {err[idx]:.3g} > tolerance {allowed:.3g})")
        hint = scale_hint(actual, expected, self.backend.tol, scale, n=n, n_is=n_is)
        if hint:
            msg += f"; {hint}"
        if why:
            msg += f"; {why}"
        return Outcome(check_id, msg, inputs, expected=expected, actual=actual, where=idx or None)

    # -- search -------------------------------------------------------------------

    def run_scenario(self, strategy, evaluate: Callable[[Any], list], check_ids=(), *,
                     moves: Callable[[Any], list] | None = None, max_examples: int | None = None) -> None:
        """Explore `strategy` with the session's seed, then shrink one case per newly failing check id.

        `moves(case)` lists smaller variants of a case (fewest rows first);
        with it, shrinking is greedy over those moves, which keeps a case valid
        (a rollout stays a rollout) and is fast. Without it, Hypothesis shrinks.
        """
        from hypothesis import Phase, find, settings
        from hypothesis.errors import NoSuchExample, Unsatisfiable

        self.declare(*check_ids, tracked=True)
        first: dict[str, Any] = {}
        first_outcome: dict[str, Outcome] = {}

        def explore(case):
            for o in evaluate(case):
                self.ran(o.check_id)
                if o.check_id not in self.failures and o.check_id not in first:
                    first[o.check_id], first_outcome[o.check_id] = case, o
            return False

        try:
            find(strategy, explore, settings=settings(max_examples=max_examples or self.max_examples,
                                                      phases=[Phase.generate], **_QUIET()),
                 random=random.Random(self.seed))
        except (NoSuchExample, Unsatisfiable):
            pass
        for cid in sorted(first, key=self._order):
            if cid in self.failures:
                continue
            self.declare(cid)
            if moves is not None:
                case, shrunk = self._greedy_shrink(first[cid], evaluate, cid, moves), True
            else:
                case, shrunk = self._hypothesis_shrink(strategy, evaluate, cid)
                case = first[cid] if case is None else case
            outcome = next((o for o in evaluate(case) if o.check_id == cid), None)
            if outcome is None:  # a function whose output varies between calls: report it as first seen
                shrunk = False
                outcome = first_outcome[cid]
            ce = Counterexample(outcome.inputs, outcome.expected, outcome.actual, outcome.where, shrunk,
                                outcome.parts)
            self.failures[cid] = Failure(cid, outcome.message, ce, outcome.traceback)

    def _order(self, cid: str) -> int:
        return self.checks.index(cid) if cid in self.checks else len(self.checks)

    def _greedy_shrink(self, case, evaluate, cid, moves):
        """Greedy descent over `moves`, taking the first variant that still fails with `cid`."""
        deadline = time.perf_counter() + self.shrink_budget

        def fails(candidate):
            return any(o.check_id == cid for o in evaluate(candidate))

        changed = True
        while changed and time.perf_counter() < deadline:
            changed, i = False, 0  # passes until a whole pass changes nothing
            candidates = moves(case)
            while i < len(candidates) and time.perf_counter() < deadline:
                if fails(candidates[i]):
                    case, changed = candidates[i], True
                    candidates = moves(case)  # index i of the new list is the next untried move
                else:
                    i += 1
        return case

    def _hypothesis_shrink(self, strategy, evaluate, cid):
        from hypothesis import Phase, find, settings
        from hypothesis.errors import NoSuchExample, Unsatisfiable

        deadline = time.perf_counter() + self.shrink_budget
        best = {"case": None}

        class _OutOfTime(Exception):
            pass

        def fails(case):
            if time.perf_counter() > deadline and best["case"] is not None:
                raise _OutOfTime
            hit = any(o.check_id == cid for o in evaluate(case))
            if hit:
                best["case"] = case
            return hit

        try:
            return find(strategy, fails, settings=settings(max_examples=self.max_examples,
                                                           phases=[Phase.generate, Phase.shrink],
                                                           **_QUIET()),
                        random=random.Random(self.seed)), True
        except _OutOfTime:
            return best["case"], True
        except (NoSuchExample, Unsatisfiable):
            return None, False

    def record(self, outcome: Outcome, *, shrunk: bool = True) -> None:
        """Record a failure found without Hypothesis (e.g. by a statistical test)."""
        self.declare(outcome.check_id)
        self.ran(outcome.check_id)
        if outcome.check_id in self.failures:
            return
        ce = None
        if outcome.inputs or outcome.expected is not None:
            ce = Counterexample(outcome.inputs, outcome.expected, outcome.actual, outcome.where, shrunk,
                                outcome.parts)
        self.failures[outcome.check_id] = Failure(outcome.check_id, outcome.message, ce, outcome.traceback)

    def report(self) -> Report:
        name = getattr(self.fn, "__qualname__", None) or getattr(self.fn, "__name__", None) or repr(self.fn)
        module = user_module_name(getattr(self.fn, "__module__", None) or "")
        label = f"{module}:{name}" if module and module != "__main__" else name
        ordered = tuple(self.failures[c] for c in self.checks if c in self.failures)
        slow = self._slow_warning()
        if slow is not None:
            self.warn(slow)
        tracked = self.tracked | set(self.generic_ids())  # the harness itself sees every generic verdict
        not_run = tuple(NotRun(c, self.skip_reasons.get(c) or self._not_run_reason())
                        for c in self.checks
                        if c in tracked and c not in self.evaluated and c not in self.failures)
        return Report(kind=self.kind, function=label, convention=self.convention,
                      backend=self.backend.name, dtype=self.backend.dtype, checks=tuple(self.checks),
                      failures=ordered, warnings=tuple(self.warnings), examples=self.calls,
                      seconds=time.perf_counter() - self.start, options=self.options, not_run=not_run,
                      function_seconds=self.user_seconds,
                      not_applicable=tuple(n.check_id for n in not_run if n.check_id in self.by_design))

    def _not_run_reason(self) -> str:
        """Why a check reached no verdict, from what the calls did."""
        failed = [c for c in self.checks if c in self.failures]
        see = f" (see {', '.join(failed)})" if failed else ""
        if self.calls == 0:
            return "the function was never called"
        if self.returned == 0:
            return f"every call of the function raised{see}"
        if self.usable == 0:
            return f"no output of the function was usable: each failed an earlier output check{see}"
        if failed:
            return f"every case that would have reached it stopped at an earlier failure{see}"
        return (f"no drawn case reached this comparison (max_examples={self.max_examples}; "
                "a larger max_examples draws the cases it needs)")


def _QUIET() -> dict:
    """Settings of every internal search: no database, no deadline, no health checks, no output."""
    from hypothesis import HealthCheck, Verbosity
    return dict(database=None, deadline=None, suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet)


def check_callable(fn) -> None:
    if not callable(fn):
        raise InvalidInputError(f"fn should be a callable, actual {type(fn).__name__}")


"""What a conformance check returns: a `Report` of `Failure` objects with shrunk counterexamples."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from refpg.errors import ConformanceError

__all__ = ["Counterexample", "Failure", "NotRun", "Report", "assert_conforms"]


@dataclass(frozen=True)
class Counterexample:
    """The smallest input found on which a property fails.

    Attributes
    ----------
    inputs : dict
        Argument name -> value, in the *convention's* argument names as the
        user's function received them (NumPy arrays; torch tensors are shown
        as arrays).
    expected, actual : object
        The reference output and the user's, as float64 arrays or floats.
    where : tuple of int or None
        Index of the largest error in `actual`, if an array was compared.
    shrunk : bool
        False when the failure could not be reproduced while shrinking (a
        non-deterministic function); the inputs are then the first failing
        example, as drawn.
    parts : tuple of (str, dict, object)
        When `expected` was assembled from other calls of the function (the
        episodes of a rollout, each alone), one ``(label, inputs, output)``
        per call, so that every input `expected` came from is shown.
    """

    inputs: dict
    expected: Any = None
    actual: Any = None
    where: tuple | None = None
    shrunk: bool = True
    parts: tuple = ()

    def lines(self, indent: int = 0) -> list[str]:
        """One ``name = value`` line per input, then expected and actual; arrays continue aligned."""
        out = []
        rows = [*self.inputs.items()]
        if self.expected is not None:
            rows.append(("expected", self.expected))
        if self.actual is not None:
            rows.append(("actual", self.actual))
        width = max((len(k) for k, _ in rows), default=0)
        for name, value in rows:
            out.append(f"{name.ljust(width)} = {_show(value, indent=indent + width + 3)}")
        if self.where is not None:
            out.append(f"largest error at index {self.where}")
        if self.parts:
            out.append(f"expected is made of {len(self.parts)} further call{'s' if len(self.parts) > 1 else ''} "
                       f"of the function, one per episode:")
            for label, inputs, output in self.parts:
                out.append(f"  {label}:")
                sub = [*inputs.items(), ("output", output)]
                w = max(len(k) for k, _ in sub)
                out += [f"    {k.ljust(w)} = {_show(v, indent=indent + w + 7)}" for k, v in sub]
        if not self.shrunk:
            out.append("(not shrunk: the failure did not reproduce on the same input; is the function "
                       "deterministic?)")
        return out

    def to_dict(self) -> dict:
        """The counterexample as plain JSON data: arrays become (nested) lists, see `Report.to_dict`."""
        return {"inputs": {name: _plain(v) for name, v in self.inputs.items()},
                "expected": _plain(self.expected), "actual": _plain(self.actual),
                "where": None if self.where is None else list(self.where), "shrunk": bool(self.shrunk),
                "parts": [{"label": label, "inputs": {k: _plain(v) for k, v in inputs.items()},
                           "output": _plain(output)} for label, inputs, output in self.parts]}


@dataclass(frozen=True)
class Failure:
    """One violated property.

    Attributes
    ----------
    check_id : str
        Stable identifier, ``"<kind>.<property>"`` (e.g. ``"gae.truncation_bootstrapped"``).
    message : str
        ``"<what> should be <expected>, actual <value>"`` plus, where it helps, why.
    counterexample : Counterexample or None
    traceback : str or None
        The user's traceback, when the failure is an exception raised by the
        function under test.
    """

    check_id: str
    message: str
    counterexample: Counterexample | None = None
    traceback: str | None = None

    def to_dict(self) -> dict:
        """``{"check_id", "message", "counterexample", "traceback"}`` as plain JSON data."""
        return {"check_id": self.check_id, "message": self.message,
                "counterexample": None if self.counterexample is None else self.counterexample.to_dict(),
                "traceback": self.traceback}

    def __str__(self) -> str:
        lines = [f"FAIL {self.check_id}", f"  {self.message}"]
        if self.counterexample is not None:
            lines.append("  counterexample:" if self.counterexample.shrunk else "  example:")
            lines += ["    " + line for line in self.counterexample.lines(indent=4)]
        if self.traceback:
            lines.append("  traceback (most recent call last, checker frames removed):")
            lines += ["    " + line for line in self.traceback.rstrip().splitlines()]
        return "\n".join(lines)


class NotRun(NamedTuple):
    """A check that reached no verdict on any case, and why (e.g. every call of the function raised)."""

    check_id: str
    reason: str

    def __str__(self) -> str:
        return f"NOT RUN {self.check_id}: {self.reason}"


@dataclass(frozen=True)
class Report:
    """The outcome of one ``check_<kind>`` call.

    Attributes
    ----------
    kind : str
    function : str
        The qualified name of the function checked.
    convention, backend, dtype : str
    checks : tuple of str
        Every check id of the check: passed, failed or not run.
    failures : tuple of Failure
        At most one per check id, in the order the checks ran.
    not_run : tuple of NotRun
        The check ids for which no comparison ever ran (every call raised, say, or every output had
        the wrong shape), with the reason. They are not counted as passed, and `passed` is False while
        any is left (the status then reads INCOMPLETE if nothing failed); the failure that stopped them,
        if any, is in `failures`. The exception is a check the convention cannot express
        (its id is in `not_applicable`): it is listed, with its reason, but leaves `passed` unchanged.
    warnings : tuple of str
        Legal but suspicious findings, and what the convention cannot express
        (with what that costs).
    examples : int
        Number of calls of the function under test.
    seconds : float
        Wall-clock time of the whole check.
    options : dict
        The resolved options the check ran with.
    function_seconds : float
        The part of `seconds` spent inside the function under test.
    not_applicable : tuple of str
        Ids of `not_run` that the convention cannot express (cleanrl's GAE has no truncation flag,
        so ``gae.truncation_bootstrapped``): by design, not for want of a verdict.
    """

    kind: str
    function: str
    convention: str
    backend: str
    dtype: str
    checks: tuple = ()
    failures: tuple = ()
    warnings: tuple = ()
    examples: int = 0
    seconds: float = 0.0
    options: dict = field(default_factory=dict)
    not_run: tuple = ()
    function_seconds: float = 0.0
    not_applicable: tuple = ()

    @property
    def passed(self) -> bool:
        """No failure and no check left unrun: a check that never ran cannot vouch for the code."""
        return not self.failures and all(n.check_id in self.not_applicable for n in self.not_run)

    @property
    def not_run_ids(self) -> tuple:
        """check_id of every check that was not run."""
        return tuple(n.check_id for n in self.not_run)

    @property
    def failed_ids(self) -> tuple:
        """check_id of every failed check."""
        return tuple(f.check_id for f in self.failures)

    def failure(self, check_id: str) -> Failure | None:
        """The failure with this check id, or None."""
        return next((f for f in self.failures if f.check_id == check_id), None)

    def status(self, check_id: str) -> str:
        """``"failed"``, ``"not_run"`` or ``"passed"``."""
        if check_id in self.failed_ids:
            return "failed"
        return "not_run" if check_id in self.not_run_ids else "passed"

    def to_dict(self) -> dict:
        """The whole report as JSON-serialisable data (``json.dumps(report.to_dict(), allow_nan=False)`` works).

        Keys: ``kind``, ``function``, ``convention``, ``backend``, ``dtype``, ``options``, ``verdict``
        (``"passed"``, ``"failed"`` or ``"incomplete"``, as `__str__` reads), ``checks`` (one
        ``{"id", "status", "reason"}`` per check id in order; `status` is ``"passed"``,
        ``"failed"`` or ``"not_run"``, `reason` is the failure's message or why the check did not
        run, None for a pass), ``failures`` (`Failure.to_dict` each: ``check_id``, ``message``,
        ``counterexample`` with ``inputs``, ``expected``, ``actual``, ``where``, ``shrunk``, and
        ``traceback``), ``not_applicable`` (ids not run because the convention cannot express them),
        ``warnings`` and ``timings`` (``seconds``, ``function_seconds``, ``calls``).

        Arrays become nested lists of Python numbers (booleans stay booleans); a list of episodes
        becomes a list of lists of arrays-as-lists. JSON has no NaN or infinity, so a non-finite
        float becomes the string ``"nan"``, ``"inf"`` or ``"-inf"``.
        """
        reasons = {f.check_id: f.message for f in self.failures}
        reasons.update((n.check_id, n.reason) for n in self.not_run)
        return {
            "kind": self.kind, "function": self.function, "convention": self.convention,
            "backend": self.backend, "dtype": self.dtype,
            "options": {str(k): _plain(v) for k, v in self.options.items()},
            "verdict": "passed" if self.passed else "failed" if self.failures else "incomplete",
            "checks": [{"id": c, "status": self.status(c), "reason": reasons.get(c)} for c in self.checks],
            "failures": [f.to_dict() for f in self.failures],
            "not_applicable": list(self.not_applicable),
            "warnings": list(self.warnings),
            "timings": {"seconds": _plain(float(self.seconds)),
                        "function_seconds": _plain(float(self.function_seconds)),
                        "calls": int(self.examples)},
        }

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        head = (f"refpg conformance: {self.kind} {self.function} "
                f"(convention={self.convention}, backend={self.backend}, dtype={self.dtype}"
                f"{', ' + opts if opts else ''})")
        n_fail, n_skip = len(self.failures), len(self.not_run)
        status = "PASSED" if self.passed else "FAILED" if self.failures else "INCOMPLETE"
        lines = [head, f"{status}: {len(self.checks) - n_fail - n_skip} of {len(self.checks)} checks passed"
                       f"{f', {n_skip} not run' if n_skip else ''} ({self.examples} calls, {self.seconds:.2f} s)"]
        failed, skipped = set(self.failed_ids), set(self.not_run_ids)
        for cid in self.checks:
            if cid not in failed and cid not in skipped:
                lines.append(f"ok   {cid}")
        by_reason: dict = {}
        for n in self.not_run:  # one line per reason: "every call raised" often stops most checks
            by_reason.setdefault(n.reason, []).append(n.check_id)
        lines += [f"NOT RUN {', '.join(ids)}: {reason}" for reason, ids in by_reason.items()]
        for f in self.failures:
            lines.append(str(f))
        for w in self.warnings:  # a multi-line warning (torch's, say) keeps its lines, indented
            lines.append("WARNING " + w.replace("\n", "\n        "))
        return "\n".join(lines)


def assert_conforms(report: Report) -> None:
    """Raise `refpg.errors.ConformanceError` (an ``AssertionError``) if `report` has failures.

    The exception's message is the whole readable report. Under pytest the frame of this function
    is hidden (``__tracebackhide__``): a failing test shows its own line and the report.
    """
    __tracebackhide__ = True  # noqa: F841 - read by pytest
    if not isinstance(report, Report):
        raise TypeError(f"report should be a refpg.conformance.Report, actual {type(report).__name__}")
    if not report.passed:
        raise ConformanceError(str(report))


# -- display ------------------------------------------------------------------

def _plain(value):
    """`value` as JSON data: arrays and tuples as lists, NumPy scalars as Python numbers,
    non-finite floats as "nan" / "inf" / "-inf", anything else unknown as its repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "detach"):  # a torch tensor
        return _plain(value.detach().cpu().numpy())
    return repr(value)


def _show(value, indent: int = 0) -> str:
    """A compact, exact-enough rendering: arrays with 6 significant digits, no summarisation."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            value = value + 0.0  # -0.0 reads as a typo
        if value.dtype == bool:
            body = np.array2string(value.astype(int), separator=", ")
        elif value.dtype.kind in "iu":
            body = np.array2string(value, separator=", ")
        else:
            body = np.array2string(value, precision=6, separator=", ", suppress_small=False,
                                   max_line_width=100, threshold=10_000)
        return body.replace("\n", "\n" + " " * indent)
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, str):  # a description (">= 0", "column 0, rows 0..2"), not a Python string input
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        return "[" + (",\n" + " " * (indent + 1)).join(_show(v, indent + 1) for v in value) + "]"
    return repr(value)

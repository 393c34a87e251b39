"""Dispatch by kind, registration of adapters in a user's file, and the bundled demo.

A project's file can register several functions for ``refpg check FILE.py``::

    from refpg.conformance import register

    @register("gae", convention="sb3")
    def my_gae(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
        ...

Importing the file records each registration; the CLI then checks them all.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from refpg._validation import check_choice
from refpg.errors import InvalidInputError

__all__ = ["CHECKS", "KINDS", "check", "register", "Registration", "load_function",
           "load_file", "demo"]


def _checks() -> dict:
    from refpg.conformance.gae import check_gae
    from refpg.conformance.kl import check_kl_estimator
    from refpg.conformance.losses import check_ppo_loss, check_value_loss
    from refpg.conformance.reinforce import check_reinforce_estimator
    from refpg.conformance.trpo import check_trpo_step

    return {"gae": check_gae, "ppo_loss": check_ppo_loss, "value_loss": check_value_loss,
            "kl_estimator": check_kl_estimator, "reinforce_estimator": check_reinforce_estimator,
            "trpo_step": check_trpo_step}


CHECKS = _checks()
KINDS = tuple(CHECKS)


def check(kind: str, fn: Callable, **kwargs):
    """Run ``check_<kind>(fn, **kwargs)``; `kind` is one of `KINDS`."""
    check_choice(kind, "kind", KINDS)
    return CHECKS[kind](fn, **kwargs)


class Registration(NamedTuple):
    fn: Callable
    kind: str
    kwargs: dict


_REGISTRY: list[Registration] = []


def register(kind: str, **kwargs) -> Callable:
    """Decorator: record `fn` to be checked as `kind` with `kwargs` by ``refpg check FILE.py``.

    The function itself is returned unchanged.
    """
    check_choice(kind, "kind", KINDS)

    def deco(fn):
        _REGISTRY.append(Registration(fn, kind, dict(kwargs)))
        return fn
    return deco


def load_function(spec: str) -> Callable:
    """``"package.module:function"`` (or ``module:Class.method``) -> the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInputError(f"target should be MODULE:FUNCTION or FILE.py, actual {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the working directory's modules are importable
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"could not import module {module_name!r} of {spec!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidInputError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidInputError(f"{spec!r} should name a callable, actual {type(obj).__name__}")
    return obj


def load_file(path: str) -> tuple:
    """Import the Python file at `path` and return the registrations it made."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"target file {path!r} does not exist")
    before = len(_REGISTRY)
    name = f"refpg_user_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(p.resolve().parent))  # its sibling modules import as in the project
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    found = tuple(_REGISTRY[before:])
    if not found:
        raise InvalidInputError(f"{path} registered no function: decorate them with "
                                f"@refpg.conformance.register(KIND, ...)")
    return found


# -- the bundled demo ------------------------------------------------------------------------

def demo(*, everything: bool = False, out=None) -> int:
    """Check the bundled examples: one passing and one failing report in full, then a summary table.

    The summary covers one correct and a few broken examples per kind, or
    every bundled example with `everything`. Returns 0 when every example
    behaved as declared (correct ones pass, broken ones fail with their
    expected check id), else 1.
    """
    from refpg import examples

    out = out or sys.stdout
    start = time.perf_counter()
    shown_ok = examples.by_name(DEMO_PASS)
    shown_bad = examples.by_name(DEMO_FAIL)
    print("refpg check: no target given, so here are the bundled examples (refpg.examples).\n", file=out)
    print(f"1. A correct implementation ({shown_ok.description}):\n", file=out)
    ok_report = _run_example(shown_ok)
    print(ok_report, "\n", file=out)
    print(f"2. A classic bug ({shown_bad.description}):\n", file=out)
    bad_report = _run_example(shown_bad)
    print(bad_report, "\n", file=out)
    chosen = examples.CORRECT + examples.BROKEN if everything else _demo_set(examples)
    if importlib.util.find_spec("torch") is None:  # a fresh `pip install -e .` has no torch
        skipped = [ex for ex in chosen if ex.backend == "torch"]
        chosen = tuple(ex for ex in chosen if ex.backend != "torch")
        if skipped:
            print(f"(PyTorch is not installed: {len(skipped)} torch examples skipped; "
                  f"pip install 'refpg[torch]' to include them)\n", file=out)
    rows, all_ok = [], _as_declared(shown_ok, ok_report) and _as_declared(shown_bad, bad_report)
    for ex in chosen:
        report = _run_example(ex)
        ok = _as_declared(ex, report)
        all_ok &= ok
        verdict = ("passes" if report.passed else f"FAILS {', '.join(report.failed_ids)}")
        expected = "pass" if ex.expected is None else f"fail {ex.expected}"
        rows.append((ex.name, ex.kind, ex.convention, ex.backend, expected, verdict, "yes" if ok else "NO",
                     f"{report.seconds:.1f}"))
    print(f"3. {'All' if everything else 'A selection of'} bundled examples "
          f"({'refpg check --all-examples' if not everything else 'all'}):\n", file=out)
    print(_table(("example", "kind", "convention", "backend", "declared", "result", "as declared", "s"), rows),
          file=out)
    print(f"\n{sum(r[6] == 'yes' for r in rows)} of {len(rows)} examples behaved as declared "
          f"({time.perf_counter() - start:.1f} s). Check your own code with "
          f"`refpg check MODULE:FUNCTION --kind KIND [--convention C]`.", file=out)
    return 0 if all_ok else 1


DEMO_PASS = "gae_sb3_numpy"
DEMO_FAIL = "gae_truncation_as_termination"


def _demo_set(examples) -> tuple:
    """One correct example per kind, then the classic bugs of `DEMO_BROKEN`."""
    correct = [next(ex for ex in examples.CORRECT if ex.kind == kind) for kind in KINDS
               if any(ex.kind == kind for ex in examples.CORRECT)]
    broken = [ex for ex in examples.BROKEN if ex.name in DEMO_BROKEN]
    return tuple(correct + broken)


DEMO_BROKEN = (
    "gae_timeout_bootstraps_own_value", "gae_cut_on_terminated_only", "gae_bootstraps_terminal",
    "ppo_loss_max", "ppo_loss_ratio_inverted", "value_loss_missing_half", "kl_k1_declared_non_negative",
    "reinforce_gamma_free_declared_discounted", "trpo_no_kl_check", "trpo_keeps_last_try",
)


def _run_example(ex):
    return check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, **dict(ex.options))


def _as_declared(ex, report) -> bool:
    if ex.expected is None:
        return report.passed
    return ex.expected in report.failed_ids


def _table(header, rows) -> str:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])

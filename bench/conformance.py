"""Timings of the conformance kit, and its false-alarm run.

    python bench/conformance.py                    # every bundled example, default settings
    python bench/conformance.py --demo             # the whole `refpg check` demo, wall time
    python bench/conformance.py --false-alarms 200 # statistical checks on correct code, 200 seeds
    python bench/conformance.py --false-alarms 200 --kind llm_loss   # one kind's correct examples

Per example it prints the wall time of one check with default settings
(target: < 10 s on this 2-core machine) and, as the baseline measured in the
same run, the time of the user's own function over the same calls: the ratio
is the checker's overhead (drawing, reference, comparison, shrinking). The
JAX examples are jitted, so their function time includes compiling once per
input shape; rlax's real GAE and clipped surrogate loss follow, jitted, when
rlax is installed.

The false-alarm run checks every correct example of a statistical kind
(kl_estimator with unbiased=True, reinforce_estimator, llm_loss) with seeds
0..N-1 and counts rejections; with the declared alpha = 1e-6 per check, the
expected number over N seeds is N * 1e-6 per example. The other kinds are
exact (no sampling): with --kind they run too, and a seed changes which
inputs are drawn, so a failure there is a tolerance or a region too tight.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _timed_fn(fn, box):
    def wrapper(*args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            box[0] += time.perf_counter() - t
    for attr in ("__name__", "__qualname__", "__module__"):
        setattr(wrapper, attr, getattr(fn, attr))
    return wrapper


def _real_jax_functions() -> list:
    """(name, kind, convention, fn, expected) of rlax's real functions, jitted as training code calls
    them; empty without rlax."""
    try:
        import jax
        import rlax
    except ImportError:
        return []
    return [("rlax.truncated_generalized_advantage_estimation", "gae", "rlax",
             jax.jit(rlax.truncated_generalized_advantage_estimation)),
            ("rlax.clipped_surrogate_pg_loss", "ppo_loss", "rlax", jax.jit(rlax.clipped_surrogate_pg_loss))]


def timings() -> int:
    from refpg import examples
    from refpg.conformance import check

    print(f"{'example':48s} {'kind':20s} {'backend':7s} {'check s':>8s} {'fn s':>7s} {'overhead':>9s}  as declared")
    worst = 0.0
    rows = [(ex.name, ex.kind, ex.convention, ex.backend, ex.fn, dict(ex.options), ex.expected)
            for ex in examples.CORRECT + examples.BROKEN]
    rows += [(name, kind, convention, "jax", fn, {}, None) for name, kind, convention, fn in _real_jax_functions()]
    for name, kind, convention, backend, fn, options, expected in rows:
        box = [0.0]
        t = time.perf_counter()
        report = check(kind, _timed_fn(fn, box), convention=convention, backend=backend, **options)
        seconds = time.perf_counter() - t
        worst = max(worst, seconds)
        ok = report.passed if expected is None else expected in report.failed_ids
        print(f"{name:48s} {kind:20s} {backend:7s} {seconds:8.2f} {box[0]:7.2f} "
              f"{seconds / max(box[0], 1e-9):8.1f}x  {'yes' if ok else 'NO'}", flush=True)
    print(f"\nslowest check: {worst:.2f} s (target < 10 s)")
    return 0


def demo() -> int:
    from refpg.conformance import runner

    t = time.perf_counter()
    code = runner.demo(out=io.StringIO())
    print(f"refpg check (demo): exit {code}, {time.perf_counter() - t:.1f} s wall (target < 60 s)")
    return code


def false_alarms(n_seeds: int, kinds=None) -> int:
    from refpg import examples
    from refpg.conformance import check

    statistical = [ex for ex in examples.CORRECT
                   if ex.kind in ("reinforce_estimator", "llm_loss")
                   or ex.kind == "kl_estimator" and dict(ex.options).get("unbiased", True)]
    if kinds:
        # A named kind runs all its correct examples: for an exact kind, a seed draws other inputs,
        # so a failure would be a tolerance or a region the default seed never reaches.
        from refpg.conformance.runner import KINDS
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise SystemExit(f"--kind should be one of {', '.join(KINDS)}, actual {', '.join(unknown)}")
        statistical = [ex for ex in examples.CORRECT if ex.kind in kinds
                       and (ex.kind != "kl_estimator" or dict(ex.options).get("unbiased", True))]
    total = 0
    t = time.perf_counter()
    for ex in statistical:
        alarms = []
        for seed in range(n_seeds):
            report = check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, seed=seed,
                           **dict(ex.options))
            if not report.passed:
                alarms.append((seed, report.failed_ids))
        total += len(alarms)
        print(f"{ex.name:36s} {n_seeds} seeds: {len(alarms)} false alarms {alarms if alarms else ''}",
              flush=True)
    print(f"\n{total} false alarms in {len(statistical) * n_seeds} checks "
          f"(declared alpha 1e-6 per statistical check, none expected of an exact one; "
          f"{time.perf_counter() - t:.0f} s)")
    return 1 if total else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true")
    p.add_argument("--false-alarms", type=int, default=0, metavar="N_SEEDS")
    p.add_argument("--kind", action="append", help="with --false-alarms: every correct example of this kind "
                                                    "instead of the statistical ones (repeatable)")
    args = p.parse_args(argv)
    if args.false_alarms:
        return false_alarms(args.false_alarms, args.kind)
    if args.demo:
        return demo()
    return timings()


if __name__ == "__main__":
    sys.exit(main())

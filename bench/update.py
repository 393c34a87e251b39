"""check_update on the bundled whole-update adapters: how long a check takes, and what the kit adds.

    python bench/update.py            # every correct `update` example (~1 min)
    python bench/update.py --quick    # SB3's PPO only (~10 s)

For each correct example of kind ``update`` (SB3's PPO and A2C, sb3-contrib's
TRPO, TorchRL, a CleanRL-structured update, PureJaxRL), in the same run:

* ``check``: one ``check_update`` at the example's options and seed 0, wall
  time, and the seconds spent inside the library's own update
  (``Report.function_seconds``) over its calls. The ratio check / library is
  the kit's overhead (drawing, reference steps, comparisons, shrinking)
  against the baseline of the library's updates alone.
* ``reference``: `refpg.algorithms.actor_critic.actor_critic_update` on one
  drawn batch in the order the library used, per call, against the
  library's own update on the same batch (median of repeats): the ratio
  reference / library.

Target: a check of SB3's PPO in under 30 s (issue 18); both ratios printed,
nothing asserted. Single-threaded BLAS and torch.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TARGET_SB3_SECONDS = 30.0


def _one_case(ex):
    """A batch and parameters as check_update draws them (its fixed probe case), in the example's backend."""
    from refpg.conformance._harness import Backend
    from refpg.conformance import update as cu

    opts = dict(ex.options)
    S, A = opts.get("n_states", 3), opts.get("n_actions", 2)
    T, N = opts.get("n_steps", 8), opts.get("n_envs", 2)
    be = Backend(ex.backend, opts.get("dtype", "float64"))
    case = cu._probe_case(S, A, T, N, opts.get("actor_bias", False), opts.get("critic_bias", False))
    batch, params = cu._batch(case, be), cu._rounded(case["params"], be)
    with be.context():
        ub, up = cu._user_batch(batch, S, be), cu._user_params(params, be)
    return be, batch, params, ub, up


def _reference_ratio(ex, repeats):
    from refpg.algorithms.actor_critic import UpdateConfig, actor_critic_update
    from refpg.conformance import update as cu

    be, batch, params, ub, up = _one_case(ex)
    fields = set(UpdateConfig.__dataclass_fields__)
    cfg = UpdateConfig(**{k: v for k, v in ex.options.items() if k in fields})
    with be.context():
        out = ex.fn(ub, up)
    steps = cu._read(be, out, params, batch.shape)["steps"] if isinstance(out, dict) and "steps" in out else None
    order = ex.options.get("order")
    if order is None and cfg.algorithm == "ppo" and steps and all("indices" in s for s in steps):
        spe = cfg.steps_per_epoch(batch.states.size)
        idx = [s["indices"] for s in steps]
        full = [np.concatenate(idx[e * spe:(e + 1) * spe]) for e in range(len(idx) // spe)]
        order = np.stack(full[:cfg.n_epochs]) if len(full) >= cfg.n_epochs else None
    if cfg.algorithm == "ppo" and order is None and cfg.steps_per_epoch(batch.states.size) > 1:
        order = np.stack([np.random.default_rng(e).permutation(batch.states.size) for e in range(cfg.n_epochs)])
    lib, ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with be.context():
            ex.fn(ub, up)
        lib.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        actor_critic_update(batch, params, cfg, order=order, rng=np.random.default_rng(0))
        ref.append(time.perf_counter() - t0)
    return statistics.median(ref), statistics.median(lib)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SB3's PPO only")
    parser.add_argument("--repeats", type=int, default=5, help="calls per side for the reference ratio")
    args = parser.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    import logging
    logging.getLogger("torchrl").setLevel(logging.WARNING)  # one INFO line per replay buffer otherwise
    from refpg import examples
    from refpg.conformance import check

    chosen = [ex for ex in examples.CORRECT if ex.kind == "update"]
    if args.quick:
        chosen = [ex for ex in chosen if ex.name == "update_sb3_ppo_torch"]
    print(f"{'example':38s} {'check s':>8s} {'library s':>9s} {'calls':>5s} {'check/lib':>9s} "
          f"{'ref ms':>8s} {'lib ms':>8s} {'ref/lib':>7s}  verdict")
    for ex in chosen:
        t0 = time.perf_counter()
        report = check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, **dict(ex.options))
        wall = time.perf_counter() - t0
        ref, lib = _reference_ratio(ex, args.repeats)
        verdict = "PASSED" if report.passed else f"FAILED {report.failed_ids}"
        print(f"{ex.name:38s} {wall:8.2f} {report.function_seconds:9.2f} {report.examples:5d} "
              f"{wall / max(report.function_seconds, 1e-9):9.2f} {1e3 * ref:8.2f} {1e3 * lib:8.2f} "
              f"{ref / lib:7.3f}  {verdict}")
        if ex.name == "update_sb3_ppo_torch":
            status = "PASS" if wall < TARGET_SB3_SECONDS else "MISS"
            print(f"  target: a check of SB3's PPO in under {TARGET_SB3_SECONDS:.0f} s: {wall:.2f} s {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

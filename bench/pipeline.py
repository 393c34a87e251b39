"""False alarms and cost of check_pipeline_gradient on correct pipelines.

    python bench/pipeline.py                                  # 20 checks of the real SB3 pipeline (~2 min)
    python bench/pipeline.py --repeats 100                    # more checks, each 200 seeds
    python bench/pipeline.py --example cleanrl_style_pipeline # another correct example of the zoo
    python bench/pipeline.py --proxy 20000                    # the level on a vectorised simulation (~1 min)

Repeats: R independent checks (check seeds 0..R-1, each with 200 pipeline seeds) of one correct example of
`refpg.examples.pipeline_examples`. Each prints whether it rejected at the declared alpha = 1e-6, and the
largest |t| of its mean test; the summary gives the rejections at alpha = 1e-6 (expected R x 1e-6) and, to
see the level where it can be measured, how many checks' largest |t| exceeds the thresholds of
alpha = 0.05 and 0.01 (expected at most R x alpha: Bonferroni is conservative).

Timing: the baseline measured in the same run is the example's own function called directly on plain
`refpg.envs.TabularEnv` factories for the same 200 seeds, outside any check; the ratio check / baseline
is the kit's overhead (counting envs, validating outputs, the exact target, the test). On a machine
shared with other processes that ratio moves with their load, so the summary also gives each check's
time over the time spent inside the function during that same check (`Report.function_seconds`).

Proxy: a vectorised NumPy simulation of a correct collector on the test case (the same process, GAE and
gradient, with a first minibatch of 64 of the 256 samples as SB3 and CleanRL take), so that the level of the
same mean test can be measured over many more checks than the real libraries allow: the rejection rate at
alpha = 1e-2, 1e-3 and 1e-4 against nominal.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _setup():
    from refpg.collection import expected_pipeline_gradient, rollout_state_distribution
    from refpg.conformance.pipeline import MAX_EPISODE_STEPS, N_ENVS, N_SEEDS, N_STEPS, pipeline_test_case

    case = pipeline_test_case()
    T, N, L = N_STEPS, N_ENVS, MAX_EPISODE_STEPS
    nu = rollout_state_distribution(case.mdp, case.pi, T, L)
    mask = np.zeros(case.pi.shape, dtype=bool)
    mask[nu > 0, :-1] = True
    return case, T, N, L, N_SEEDS, mask, expected_pipeline_gradient


def _thresholds(n: int, k: int, alphas) -> dict:
    from scipy import stats

    return {a: float(stats.t.isf(a / (2 * k), n - 1)) for a in alphas}


def _max_t(G: np.ndarray, expected: np.ndarray, mask: np.ndarray) -> float:
    se = G.std(axis=0, ddof=1) / np.sqrt(G.shape[0])
    return float(np.max(np.abs((G.mean(axis=0) - expected)[mask] / se[mask])))


def repeats(name: str, R: int) -> None:
    import torch

    from refpg.conformance.pipeline import check_pipeline_gradient
    from refpg.envs import TabularEnv
    from refpg.examples import pipeline_examples as pe

    torch.set_num_threads(1)
    example = next(e for e in pe.CORRECT if e.name == name)
    options = dict(example.options)
    case, T, N, L, n_seeds, mask, expected_of = _setup()
    c = 1.0
    ent = options.get("ent_coef", 0.0)
    expected = expected_of(case.mdp, case.pi, T, L, gae_lambda=0.95, scale=c, ent_coef=ent).actor_w
    k = int(mask.sum())
    alphas = (1e-6, 0.05, 0.01)
    thr = _thresholds(n_seeds, k, alphas)
    print(f"{name}: {R} checks of {n_seeds} seeds each (T = {T}, N = {N}, limit {L}); |t| thresholds "
          + ", ".join(f"{thr[a]:.2f} at alpha {a:g}" for a in alphas) + f" over k = {k} coordinates")

    # The baseline: the function alone, on plain TabularEnvs, for one check's seeds.
    seeds = [int(x) for x in np.random.SeedSequence(0).generate_state(n_seeds, dtype=np.uint32) >> 1]
    params = case.params(options.get("actor_bias", False), options.get("critic_bias", False))

    def plain(s):
        example.fn(lambda: TabularEnv(case.mdp, L), {k_: v.copy() for k_, v in params.items()}, T, N,
                   case.mdp.gamma, 0.95, s)

    plain(1)  # imports and first-call costs out of the timing, as the checks below do not pay them
    t0 = time.perf_counter()
    for s in seeds:
        plain(s)
    baseline = time.perf_counter() - t0

    rejected, exceed, checked, seconds, inside = 0, {a: 0 for a in alphas[1:]}, 0, [], []
    for r in range(R):
        grads = []

        def recording(*args, _fn=example.fn, _grads=grads):
            out = _fn(*args)
            _grads.append(np.asarray(out["actor_w"], dtype=np.float64))
            return out

        recording.__name__ = recording.__qualname__ = name
        t0 = time.perf_counter()
        report = check_pipeline_gradient(recording, seed=r, **options)
        seconds.append(time.perf_counter() - t0)
        inside.append(report.function_seconds)
        m = _max_t(np.array(grads), expected, mask)
        rejected += not report.passed
        checked += 1
        for a in exceed:
            exceed[a] += m > thr[a]
        print(f"  check seed {r:3d}: {'REJECTED' if not report.passed else 'passed  '} largest |t| = {m:5.2f} "
              f"({seconds[-1]:.1f} s)", flush=True)
    print(f"rejections at alpha 1e-6: {rejected} of {checked} (expected {checked * 1e-6:.1e})")
    for a, count in exceed.items():
        print(f"largest |t| above the alpha = {a:g} threshold: {count} of {checked} (expected at most {checked * a:.1f})")
    mean_check = float(np.median(seconds))
    print(f"time per check (median): {mean_check:.2f} s; baseline, the function alone on plain TabularEnvs for "
          f"{n_seeds} seeds: {baseline:.2f} s; ratio {mean_check / baseline:.2f}")
    ratios = np.array(seconds) / np.array(inside)
    print(f"check / time inside the function in the same check (median over checks): {np.median(ratios):.3f} "
          f"(the kit's own share: counting envs, reading outputs, the exact target and the test)")


def _simulate(case, T, N, L, R, B, rng, lam=0.95):
    """R buffers of a correct collector, vectorised; returns (R, S, A) first-minibatch gradients (mean loss)."""
    from refpg.evaluation import policy_evaluation

    mdp, pi = case.mdp, case.pi
    S, A = pi.shape
    P, r, rho, term, gamma = mdp.dense_P(), mdp.r, mdp.rho, mdp.terminal, mdp.gamma
    V = policy_evaluation(mdp, pi).V
    E = R * N
    cpi, cP, crho = np.cumsum(pi, 1), np.cumsum(P, 2), np.cumsum(rho)

    def draw(cdf_rows):
        return np.minimum((rng.random(len(cdf_rows))[:, None] > cdf_rows).sum(1), cdf_rows.shape[1] - 1)

    s, k = draw(np.broadcast_to(crho, (E, S))), np.zeros(E, dtype=int)
    St, At, delta, cont = (np.zeros((T, E), dtype=int), np.zeros((T, E), dtype=int), np.zeros((T, E)),
                           np.zeros((T, E)))
    for t in range(T):
        a = draw(cpi[s])
        s2 = draw(cP[s, a])
        te = term[s2]
        tr = ~te & (k + 1 >= L)
        St[t], At[t] = s, a
        delta[t] = r[s, a] + gamma * np.where(te, 0.0, V[s2]) - V[s]
        cont[t] = np.where(te | tr, 0.0, gamma * lam)
        done = te | tr
        s = np.where(done, draw(np.broadcast_to(crho, (E, S))), s2)
        k = np.where(done, 0, k + 1)
    adv, acc = np.zeros((T, E)), np.zeros(E)
    for t in reversed(range(T)):
        acc = delta[t] + cont[t] * acc
        adv[t] = acc
    # Sample (t, n) of buffer b; the first minibatch is a uniform B-subset of the T N samples.
    St = St.reshape(T, R, N).transpose(1, 0, 2).reshape(R, T * N)
    At = At.reshape(T, R, N).transpose(1, 0, 2).reshape(R, T * N)
    adv = adv.reshape(T, R, N).transpose(1, 0, 2).reshape(R, T * N)
    pick = np.argsort(rng.random((R, T * N)), axis=1)[:, :B]
    s_mb, a_mb, adv_mb = (np.take_along_axis(x, pick, 1) for x in (St, At, adv))
    score = -pi[s_mb]
    np.put_along_axis(score, a_mb[..., None], np.take_along_axis(score, a_mb[..., None], 2) + 1.0, 2)
    g = np.zeros((R, S, A))
    rows = np.repeat(np.arange(R), B)
    np.add.at(g, (rows, s_mb.ravel()), (-score * adv_mb[..., None] / B).reshape(-1, A))
    return g


def proxy(n_checks: int, B: int, n_seeds: int) -> None:
    case, T, N, L, _, mask, expected_of = _setup()
    expected = expected_of(case.mdp, case.pi, T, L, gae_lambda=0.95).actor_w
    k = int(mask.sum())
    alphas = (1e-2, 1e-3, 1e-4)
    thr = _thresholds(n_seeds, k, alphas)
    rng = np.random.default_rng(0)
    exceed = {a: 0 for a in alphas}
    worst, done, t0 = 0.0, 0, time.perf_counter()
    per_batch = max(1, 20000 // n_seeds)
    while done < n_checks:
        m = min(per_batch, n_checks - done)
        g = _simulate(case, T, N, L, m * n_seeds, B, rng).reshape(m, n_seeds, *expected.shape)
        for G in g:
            mt = _max_t(G, expected, mask)
            worst = max(worst, mt)
            for a in alphas:
                exceed[a] += mt > thr[a]
        done += m
    print(f"proxy: {n_checks} checks of {n_seeds} simulated correct buffers each (first minibatch {B} of {T * N}), "
          f"{time.perf_counter() - t0:.0f} s")
    for a in alphas:
        print(f"  alpha {a:g}: |t| threshold {thr[a]:.2f}, rejected {exceed[a]} (nominal at most {n_checks * a:.1f})")
    print(f"  largest |t| over all checks: {worst:.2f} (alpha 1e-6 threshold {_thresholds(n_seeds, k, (1e-6,))[1e-6]:.2f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="independent 200-seed checks of the example")
    p.add_argument("--example", default="sb3_ppo_pipeline", help="a correct example of refpg.examples.pipeline_examples")
    p.add_argument("--proxy", type=int, default=0, metavar="N_CHECKS",
                   help="instead: the level on N_CHECKS checks of a vectorised simulation")
    p.add_argument("--minibatch", type=int, default=64, help="with --proxy: the first minibatch's size")
    p.add_argument("--seeds", type=int, default=200, help="with --proxy: the seeds (calls) of each check")
    args = p.parse_args()
    if args.proxy:
        proxy(args.proxy, args.minibatch, args.seeds)
    else:
        repeats(args.example, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

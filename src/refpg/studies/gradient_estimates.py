r"""REINFORCE estimates against the exact gradient: batch size, baselines, and the gamma^t-free bias.

Two small episodic MDPs on which every policy terminates (so no estimate is ever truncated):

* ``episodic_garnet``: garnet(5, 3, 2, seed=0) plus a terminal state entered with
  probability 0.2 from every (s, a) (mean episode length 5), rho uniform on the live states;
* ``delayed_chain(10)``: states 0..10 visited in order whatever the action, then the
  terminal state; r(0, a_0) = 1 and r(10, a_1) = 1, all other rewards 0, start in state 0.
  Its two decisions happen at t = 0 and t = 10, so discounting weighs them very differently.

Tabular softmax at a fixed seeded theta ~ N(0, 1); gamma = 0.9 unless stated.

1. **Cosine to the exact gradient against batch size.** Per-episode estimates
   (`refpg.reinforce_estimates`, docs/conventions.md):
   :math:`\hat g = \sum_t \gamma^t \nabla\log\pi(a_t|s_t)(G_t - b(s_t))` with b = 0 and with the
   exact b = V^pi, and [Williams1992]'s total-return form; a batch estimate is the mean over N
   episodes, N = 1 .. 1024, and its cosine similarity to `refpg.policy_gradient` is summarised
   over disjoint batches (mean and 10-90% band). The dotted curve is the signal-to-noise
   approximation :math:`\|g\|/\sqrt{\|g\|^2 + \mathrm{tr}\,\Sigma/N}` (Sigma = per-episode covariance).
2. **The gamma^t-free estimator** :math:`\sum_t \nabla\log\pi(a_t|s_t)\,G_t` (the gamma^t factor
   dropped, as in most implementations): its exact mean `refpg.gamma_free_gradient` against
   grad J for gamma in [0, 1] (cosine and relative norm of the difference), and its sample mean
   converging to that mean, not to grad J ([Nota2020]), checked with `refpg.stats.mean_test`.

References
----------
[Williams1992]; [Sutton2000]; [Nota2020] C. Nota, P. S. Thomas, "Is the policy gradient a
gradient?", AAMAS 2020.
"""

from __future__ import annotations

import numpy as np

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

GAMMA = 0.9
BATCH_SIZES = tuple(2 ** k for k in range(11))          # 1 .. 1024
MAX_GROUPS = 4096
GAMMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
ALPHA = 1e-6
CHAIN_LENGTH = 10
ESTIMATORS = {
    "reward-to-go, no baseline": dict(),
    "reward-to-go, baseline V": dict(baseline="V"),
    "total return (Williams), no baseline": dict(variant="total"),
}
STYLE = {
    "reward-to-go, no baseline": ("tab:red", "-"),
    "reward-to-go, baseline V": ("tab:blue", "-"),
    "total return (Williams), no baseline": ("tab:gray", "--"),
}


def episodic_garnet(gamma: float = GAMMA, *, p_end: float = 0.2, seed: int = 0):
    """garnet(5, 3, 2, seed) with a terminal state entered w.p. p_end from every (s, a)."""
    import refpg

    return refpg.envs.episodic_garnet(5, 3, 2, seed=seed, p_end=p_end, gamma=gamma)


def delayed_chain(gamma: float = GAMMA, *, length: int = CHAIN_LENGTH):
    """States 0..length in order (any action), then terminal; r(0, 0) = r(length, 1) = 1."""
    import refpg

    S, A = length + 2, 2
    P = np.zeros((S, A, S))
    P[np.arange(S - 1), :, np.arange(1, S)] = 1.0
    P[-1, :, -1] = 1.0
    r = np.zeros((S, A))
    r[0, 0] = 1.0
    r[length, 1] = 1.0
    terminal = np.zeros(S, dtype=bool)
    terminal[-1] = True
    rho = np.zeros(S)
    rho[0] = 1.0
    return refpg.TabularMDP(P, r, rho, gamma, terminal, name=f"delayed_chain({length})")


MDPS = {"episodic_garnet": episodic_garnet, f"delayed_chain({CHAIN_LENGTH})": delayed_chain}


def with_gamma(mdp, gamma: float):
    import refpg

    return refpg.TabularMDP(mdp.P, mdp.r, mdp.rho, gamma, mdp.terminal, name=mdp.name)


def policy_setup(mdp, seed: int = 1):
    import refpg

    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.random.default_rng(seed).normal(size=pol.theta_shape)
    return pol, theta


def cosines(est: np.ndarray, g: np.ndarray, N: int) -> np.ndarray:
    """Cosines to g of the means of disjoint batches of N per-episode estimates."""
    n_groups = min(est.shape[0] // N, MAX_GROUPS)
    means = est[:n_groups * N].reshape(n_groups, N, -1).mean(axis=1)
    norms = np.linalg.norm(means, axis=1) * np.linalg.norm(g)
    return np.where(norms > 0, means @ g / np.where(norms > 0, norms, 1.0), 0.0)


def gamma_free_bias(make, gammas=GAMMAS) -> dict:
    """cos(g_free, grad J) and ||g_free - grad J|| / ||grad J|| for each gamma."""
    import refpg

    cos, rel = [], []
    for gamma in gammas:
        mdp = make(gamma)
        pol, theta = policy_setup(mdp)
        g = refpg.policy_gradient(mdp, pol, theta).ravel()
        gf = refpg.gamma_free_gradient(mdp, pol, theta).ravel()
        cos.append(float(gf @ g / (np.linalg.norm(gf) * np.linalg.norm(g))))
        rel.append(float(np.linalg.norm(gf - g) / np.linalg.norm(g)))
    return {"gamma": np.array(gammas), "cos": np.array(cos), "rel": np.array(rel)}


def study_mdp(name: str, make, n_episodes: int, progress: Progress, step: int) -> dict:
    """Sample one pool of episodes at gamma = GAMMA and compute every estimator on it."""
    import refpg
    from refpg.stats import mean_test

    mdp = make(GAMMA)
    pol, theta = policy_setup(mdp)
    pi = pol.probs(theta)
    ev = refpg.evaluate(mdp, pi)
    g = refpg.policy_gradient(mdp, pol, theta, evaluation=ev)
    gf = refpg.gamma_free_gradient(mdp, pol, theta, evaluation=ev)
    batch = refpg.sample_episodes(mdp, pi, n_episodes, rng=np.random.default_rng(2024))
    progress.update(step + 1)
    est = {}
    for label, kw in ESTIMATORS.items():
        kw = {k: (ev.V if v == "V" else v) for k, v in kw.items()}
        est[label] = refpg.reinforce_estimates(pol, theta, batch, GAMMA, **kw).reshape(n_episodes, -1)
    free = refpg.reinforce_estimates(pol, theta, batch, GAMMA, discount_weighting=False).reshape(n_episodes, -1)
    free_b = refpg.reinforce_estimates(pol, theta, batch, GAMMA, discount_weighting=False,
                                       baseline=ev.V).reshape(n_episodes, -1)
    progress.update(step + 2)
    gv, gfv = g.ravel(), gf.ravel()
    cos = {label: {N: cosines(e, gv, N) for N in BATCH_SIZES} for label, e in est.items()}
    trace = {label: float(e.var(axis=0, ddof=1).sum()) for label, e in est.items()}
    # Running means over the pool (prefix means, fixed order).
    ns = np.unique(np.r_[2 ** np.arange(int(np.log2(n_episodes)) + 1), n_episodes])
    def prefix_err(e, target):
        cs = np.cumsum(e, axis=0)[ns - 1] / ns[:, None]
        return np.linalg.norm(cs - target, axis=1) / np.linalg.norm(gv)
    running = {"free_to_gfree": prefix_err(free, gfv), "free_to_g": prefix_err(free, gv),
               "rtg_to_g": prefix_err(est["reward-to-go, no baseline"], gv), "n": ns}
    tests = {
        "free_vs_gamma_free_gradient": mean_test(free, gfv, alpha=ALPHA),
        "free_vs_policy_gradient": mean_test(free, gv, alpha=ALPHA),
        "free_baseline_vs_gamma_free_gradient": mean_test(free_b, gfv, alpha=ALPHA),
        "free_baseline_vs_policy_gradient": mean_test(free_b, gv, alpha=ALPHA),
        "rtg_vs_policy_gradient": mean_test(est["reward-to-go, no baseline"], gv, alpha=ALPHA),
        "rtg_baseline_vs_policy_gradient": mean_test(est["reward-to-go, baseline V"], gv, alpha=ALPHA),
    }
    progress.update(step + 3)
    return {"mdp": mdp, "g": gv, "gf": gfv, "cos": cos, "trace": trace, "running": running, "tests": tests,
            "mean_length": float(batch.valid.sum() / n_episodes)}


def run(*, quick: bool = False, out_dir="analysis/gradient_estimates") -> dict:
    out = prepare_out_dir(out_dir)
    n_episodes = 16 * 1024 if quick else 256 * 1024
    prog = Progress("gradient_estimates: sample, estimate, test", 3 * len(MDPS), every=1)
    res = {name: study_mdp(name, make, n_episodes, prog, 3 * i) for i, (name, make) in enumerate(MDPS.items())}
    bias = {name: gamma_free_bias(make) for name, make in MDPS.items()}

    # Figure 1: cosine against batch size.
    fig, axes = new_figure(1, len(res), figsize=(6.2 * len(res), 5), sharey=True)
    Ns = np.array(BATCH_SIZES)
    for ax, (name, r) in zip(axes, res.items()):
        gnorm2 = float(r["g"] @ r["g"])
        for label in ESTIMATORS:
            color, ls = STYLE[label]
            c = r["cos"][label]
            mean = np.array([c[N].mean() for N in BATCH_SIZES])
            lo = np.array([np.percentile(c[N], 10) for N in BATCH_SIZES])
            hi = np.array([np.percentile(c[N], 90) for N in BATCH_SIZES])
            ax.plot(Ns, mean, color=color, ls=ls, marker="o", ms=4, label=f"{label}: mean")
            ax.fill_between(Ns, lo, hi, color=color, alpha=0.12)
            ax.plot(Ns, np.sqrt(gnorm2 / (gnorm2 + r["trace"][label] / Ns)), color=color, ls=":", lw=1.2,
                    label=f"{label}: SNR approximation")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("episodes per batch N")
        ax.set_title(f"{name}, gamma = {GAMMA:g}", fontsize=10)
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(r"cosine(batch-mean estimate, exact $\nabla J$)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("REINFORCE estimates vs the exact gradient (mean over disjoint batches; band: 10-90%)",
                 fontsize=11)
    save_figure(fig, out / "cosine_vs_batch.png")

    # Figure 2: the exact bias of the gamma^t-free estimator against gamma.
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(12, 4.8))
    for (name, b), color in zip(bias.items(), ("tab:blue", "tab:orange")):
        ax1.plot(b["gamma"], b["cos"], marker="o", ms=4, color=color, label=name)
        ax2.plot(b["gamma"], b["rel"], marker="o", ms=4, color=color, label=name)
    ax1.set_ylabel(r"cosine(E[$\gamma^t$-free estimate], $\nabla J$)")
    ax2.set_ylabel(r"$\|E[\gamma^t$-free$] - \nabla J\| \,/\, \|\nabla J\|$")
    for ax in (ax1, ax2):
        ax.set_xlabel("discount gamma")
        ax.axvline(GAMMA, color="grey", ls=":", lw=1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title("direction of the exact mean (refpg.gamma_free_gradient)", fontsize=10)
    ax2.set_title("relative size of its bias (0 at gamma = 1)", fontsize=10)
    save_figure(fig, out / "gamma_free_bias.png")

    # Figure 3: the sampled gamma-free estimator converges to its own mean, not to grad J.
    fig, axes = new_figure(1, len(res), figsize=(6.2 * len(res), 4.8), sharey=True)
    for ax, (name, r) in zip(axes, res.items()):
        run_ = r["running"]
        n = run_["n"]
        ax.loglog(n, run_["free_to_gfree"], color="tab:green", label=r"$\gamma^t$-free: distance to its exact mean")
        ax.loglog(n, run_["free_to_g"], color="tab:red", label=r"$\gamma^t$-free: distance to $\nabla J$")
        ax.loglog(n, run_["rtg_to_g"], color="tab:blue", ls="--",
                  label=r"with $\gamma^t$ (unbiased): distance to $\nabla J$")
        bias_rel = np.linalg.norm(r["gf"] - r["g"]) / np.linalg.norm(r["g"])
        ax.axhline(bias_rel, color="tab:red", ls=":", lw=1, label=f"exact bias {bias_rel:.3g}")
        c = run_["free_to_gfree"][-1] * np.sqrt(n[-1])
        ax.loglog(n, c / np.sqrt(n), color="k", lw=0.8, ls=":", label=r"$\propto 1/\sqrt{n}$ (through the last point)")
        ax.set_xlabel("episodes averaged n (running mean over the pool)")
        ax.set_title(f"{name}, gamma = {GAMMA:g}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left")
    axes[0].set_ylabel(r"$\|\bar g_n - \mathrm{target}\| \,/\, \|\nabla J\|$")
    fig.suptitle(r"The $\gamma^t$-free estimator converges to refpg.gamma_free_gradient, not to $\nabla J$",
                 fontsize=11)
    save_figure(fig, out / "gamma_free_convergence.png")

    # Tables and headline.
    main = res["episodic_garnet"]
    cm = {label: {N: float(main["cos"][label][N].mean()) for N in BATCH_SIZES} for label in ESTIMATORS}
    rows_cos = []
    for name, r in res.items():
        for label in ESTIMATORS:
            c = r["cos"][label]
            rows_cos.append([name, label] + [f"{c[N].mean():.3f} ± {c[N].std():.3f}" for N in (1, 16, 128, 1024)])
    i9 = GAMMAS.index(0.9)
    rows_bias = [[f"{gm:g}"] + [f"{bias[name]['cos'][i]:.4f} / {bias[name]['rel'][i]:.3f}" for name in bias]
                 for i, gm in enumerate(GAMMAS)]
    rows_test = []
    for name, r in res.items():
        for key, t in r["tests"].items():
            rows_test.append([name, key.replace("_", " "), f"{t.n}", f"{np.abs(t.z).max():.3g}", f"{t.threshold:.3g}",
                              "rejected" if t.rejected else "not rejected"])
    baseline_wins = {name: bool(all(r["cos"]["reward-to-go, baseline V"][N].mean()
                                    > r["cos"]["reward-to-go, no baseline"][N].mean() for N in BATCH_SIZES))
                     for name, r in res.items()}
    # Power is shown by the lower-variance baseline form: the plain form's rejection of grad J on the
    # garnet needs more than the quick mode's episodes (its max |z| is in the table).
    tests_ok = all(not r["tests"]["free_vs_gamma_free_gradient"].rejected
                   and not r["tests"]["free_baseline_vs_gamma_free_gradient"].rejected
                   and r["tests"]["free_baseline_vs_policy_gradient"].rejected
                   and not r["tests"]["rtg_vs_policy_gradient"].rejected
                   and not r["tests"]["rtg_baseline_vs_policy_gradient"].rejected for r in res.values())
    nb, wb = "reward-to-go, no baseline", "reward-to-go, baseline V"
    garnet_b, chain_b = bias["episodic_garnet"], bias[f"delayed_chain({CHAIN_LENGTH})"]
    report = f"""# Gradient estimates: REINFORCE against the exact gradient, baselines, and the gamma^t-free bias

Two episodic MDPs where every policy terminates: `episodic_garnet` (garnet(5, 3, 2, seed=0) plus a
terminal state entered with probability 0.2 from every (s, a); mean episode length
{res['episodic_garnet']['mean_length']:.2f}) and `delayed_chain({CHAIN_LENGTH})` (states 0..{CHAIN_LENGTH} in order
whatever the action, rewarding action 0 at t = 0 and action 1 at t = {CHAIN_LENGTH}). Tabular softmax at
theta ~ N(0, 1) (seed 1), gamma = {GAMMA:g}. One pool of {n_episodes} episodes per MDP
(`refpg.sample_episodes`, seed 2024; {'quick' if quick else 'full'} mode); per-episode estimates from
`refpg.reinforce_estimates`; batch estimates are means over disjoint groups of N episodes
(up to {MAX_GROUPS} groups per N). Exact references: `refpg.policy_gradient`, `refpg.gamma_free_gradient`,
baseline b = V^pi from `refpg.evaluate`.

## 1. Cosine to the exact gradient against batch size

Mean ± standard deviation over batches of cos(batch estimate, grad J):

{md_table(["MDP", "estimator", "N = 1", "N = 16", "N = 128", "N = 1024"], rows_cos)}

![cosine vs batch size](cosine_vs_batch.png)

The dotted curves, ||g|| / sqrt(||g||^2 + tr(Sigma)/N) with Sigma the per-episode covariance
estimated from the pool, track the measured mean cosine: the baseline works by shrinking tr(Sigma)
(on the garnet by {main['trace'][nb] / main['trace'][wb]:.2f}x), i.e. it buys the same cosine with that many
times fewer episodes. [Williams1992]'s total-return form is noisier still than reward-to-go.

## 2. Bias of the gamma^t-free estimator

sum_t grad log pi(a_t|s_t) G_t, without gamma^t: its exact mean (`refpg.gamma_free_gradient`, the
gradient with undiscounted visit counts in place of the discounted occupancy) against grad J.
Entries are cosine / ||E[gamma-free] - grad J|| / ||grad J||:

{md_table(["gamma"] + list(bias), rows_bias)}

![gamma-free bias against gamma](gamma_free_bias.png)

On the garnet, whose visit distribution is nearly the same at every t, the bias is almost purely a
rescaling (cosine >= {min(garnet_b['cos'][:-1]):.4f}, relative error up to {max(garnet_b['rel']):.2f}); on the delayed
chain it turns the direction (cosine {chain_b['cos'][i9]:.3f} at gamma = 0.9), because it weighs the decision
at t = {CHAIN_LENGTH} by 1 instead of gamma^{CHAIN_LENGTH} = {GAMMA ** CHAIN_LENGTH:.3f}. Both vanish at gamma = 1.
(On the chain each state is visited at one fixed t, so the gamma^t-free estimator is the weighted one
rescaled state by state: the two have identical z-statistics against their own means below.)

The sampled estimator converges to its own mean, not to grad J (mean tests of `refpg.stats.mean_test`,
Bonferroni over coordinates, family-wise alpha = {ALPHA:g} each):

{md_table(["MDP", "samples vs hypothesised mean", "n", "max abs z", "threshold", "verdict"], rows_test)}

![gamma-free convergence](gamma_free_convergence.png)

**Headline.** On `episodic_garnet` at gamma = {GAMMA:g}, the mean cosine of a REINFORCE batch estimate to
the exact gradient is {cm[nb][1]:.3f} at N = 1 and {cm[nb][1024]:.3f} at N = 1024 without a baseline, and
{cm[wb][1]:.3f} and {cm[wb][1024]:.3f} with b = V^pi; the baseline raises the mean cosine at every batch size
on both MDPs ({'yes' if all(baseline_wins.values()) else 'NO'}). The gamma^t-free estimator is biased: at
gamma = 0.9 its exact mean has cosine {garnet_b['cos'][i9]:.4f} and relative error {garnet_b['rel'][i9]:.3f} on the garnet,
cosine {chain_b['cos'][i9]:.3f} and relative error {chain_b['rel'][i9]:.3f} on the delayed chain; its samples (with and without
baseline) pass the mean test against `gamma_free_gradient` on both MDPs, the baseline form fails it
against grad J on both, the plain form fails it against grad J on
{sum(r["tests"]["free_vs_policy_gradient"].rejected for r in res.values())} of {len(res)} MDPs at n = {n_episodes},
and the gamma^t-weighted estimators pass against grad J ({'as expected' if tests_ok else 'UNEXPECTED outcome'}).
"""
    (out / "report.md").write_text(report)
    return {
        "cos_batch1_no_baseline": cm[nb][1], "cos_batch1024_no_baseline": cm[nb][1024],
        "cos_batch1_baseline": cm[wb][1], "cos_batch1024_baseline": cm[wb][1024],
        "mean_cosines": {name: {label: {N: float(r["cos"][label][N].mean()) for N in BATCH_SIZES}
                                for label in ESTIMATORS} for name, r in res.items()},
        "baseline_wins_every_batch_size": baseline_wins,
        "gamma_free_bias_at_0.9": {name: {"cos": float(b["cos"][i9]), "rel": float(b["rel"][i9])}
                                   for name, b in bias.items()},
        "gamma_free_bias_at_1": {name: float(b["rel"][-1]) for name, b in bias.items()},
        "mean_tests": {name: {k: {"rejected": t.rejected, "max_abs_z": float(np.abs(t.z).max()),
                                  "threshold": t.threshold, "n": t.n, "alpha": t.alpha}
                              for k, t in r["tests"].items()} for name, r in res.items()},
        "mean_tests_as_expected": bool(tests_ok),
        "n_episodes": n_episodes,
    }

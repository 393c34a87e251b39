r"""Mei et al. (2020), Figure 1: softmax policy gradient plateaus from a bad start.

Bandit r = (1.0, 0.9, 0.1) (`refpg.envs.bandit`, gamma = 0, J = pi . r),
tabular softmax, exact gradient ascent with eta = 2/5,

.. math:: \theta_{t+1}(a) = \theta_t(a) + \eta\, \pi_t(a)\,(r(a) - \pi_t\cdot r),

from theta = log pi_0 with the "good" start pi_0 = (0.05, 0.01, 0.94) and the
"bad" start (0.01, 0.05, 0.94), where the second-best arm starts ahead of the
best. Mei et al. report that the bad start stays near the sub-optimal arm
(sub-optimality about 0.1) for more than 7000 iterations. Against it: exact
NPG (`refpg.algorithms.npg_step`), whose tabular update is multiplicative
weights and escapes at once.

Escape iteration: the first t with pi_t(a*) > 1/2 (a* = arm 0); the report also
gives the first t with sub-optimality r* - pi_t . r < 0.05.

References
----------
J. Mei, C. Xiao, C. Szepesvari, D. Schuurmans, "On the global convergence
rates of softmax policy gradient methods", ICML 2020, arXiv:2005.06392, Fig. 1.
"""

from __future__ import annotations

import numpy as np

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

REWARDS = (1.0, 0.9, 0.1)
STARTS = {"good": (0.05, 0.01, 0.94), "bad": (0.01, 0.05, 0.94)}
ETA = 2.0 / 5.0
PAPER_PLATEAU = 7000
SUBOPT_LEVEL = 0.05


def softmax_pg(rewards, pi0s, eta: float, n_iters: int, progress: Progress | None = None):
    """Exact softmax PG on a bandit, every start at once; returns pi_t for t = 0..n_iters, shape (T+1, K, A)."""
    r = np.asarray(rewards, dtype=float)
    theta = np.log(np.asarray(pi0s, dtype=float))
    out = np.empty((n_iters + 1,) + theta.shape)
    pi = np.exp(theta - theta.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    out[0] = pi
    for t in range(1, n_iters + 1):
        theta += eta * pi * (r - (pi @ r)[:, None])
        pi = np.exp(theta - theta.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        out[t] = pi
        if progress is not None:
            progress.update(t)
    return out


def npg_probs(mdp, pi0, eta: float, n_iters: int, floor: float = 1e-13):
    """Exact NPG with refpg's `npg_step`; stops once the sub-optimality is below `floor`."""
    import refpg
    from refpg.algorithms import npg_step

    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.log(np.asarray(pi0, dtype=float))[None, :]
    rstar = mdp.r.max()
    pis = [pol.probs(theta)[0]]
    for _ in range(n_iters):
        theta = npg_step(mdp, pol, theta, eta=eta).theta
        pis.append(pol.probs(theta)[0])
        if rstar - pis[-1] @ mdp.r[0] < floor:
            break
    return np.array(pis)


def first_index(mask) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _check_against_refpg(mdp, pi0) -> float:
    """Max abs difference between the closed-form bandit gradient and `refpg.policy_gradient`."""
    import refpg

    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.log(np.asarray(pi0, dtype=float))[None, :]
    pi = pol.probs(theta)[0]
    r = mdp.r[0]
    closed = pi * (r - pi @ r)
    return float(np.abs(refpg.policy_gradient(mdp, pol, theta)[0] - closed).max())


def run(*, quick: bool = False, out_dir="analysis/mei2020_bandit") -> dict:
    from refpg.envs import bandit

    out = prepare_out_dir(out_dir)
    mdp = bandit(REWARDS)
    r = np.asarray(REWARDS)
    rstar = r.max()
    n_pg = 12_000 if quick else 20_000
    n_npg = 2_000
    names = list(STARTS)
    check = max(_check_against_refpg(mdp, STARTS[n]) for n in names)
    pis = softmax_pg(REWARDS, [STARTS[n] for n in names], ETA, n_pg,
                     Progress("mei2020_bandit: softmax PG", n_pg))
    npg = {n: npg_probs(mdp, STARTS[n], ETA, n_npg) for n in names}

    results = {}
    rows = []
    for k, n in enumerate(names):
        pg_sub = rstar - pis[:, k] @ r
        npg_sub = rstar - npg[n] @ r
        res = {
            "pg_escape_iteration": first_index(pis[:, k, 0] > 0.5),
            "pg_subopt_below_0.05": first_index(pg_sub < SUBOPT_LEVEL),
            "pg_final_subopt": float(pg_sub[-1]),
            "npg_escape_iteration": first_index(npg[n][:, 0] > 0.5),
            "npg_subopt_below_0.05": first_index(npg_sub < SUBOPT_LEVEL),
        }
        results[n] = (pg_sub, npg_sub, res)
        rows.append([n, str(STARTS[n]), res["pg_escape_iteration"], res["pg_subopt_below_0.05"],
                     f"{res['pg_final_subopt']:.3e}", res["npg_escape_iteration"], res["npg_subopt_below_0.05"]])

    # Figure 1: sub-optimality against t, log-log.
    fig, ax = new_figure(figsize=(7, 4.5))
    t_pg = np.arange(n_pg + 1)
    styles = {"good": "tab:blue", "bad": "tab:red"}
    for n in names:
        pg_sub, npg_sub, _ = results[n]
        ax.loglog(t_pg[1:], pg_sub[1:], color=styles[n], label=f"softmax PG, {n} start")
        t_n = np.arange(len(npg_sub))
        keep = (t_n >= 1) & (npg_sub > 0)
        ax.loglog(t_n[keep], npg_sub[keep], color=styles[n], ls="--", label=f"NPG, {n} start")
    esc = results["bad"][2]["pg_escape_iteration"]
    if esc is not None:
        ax.axvline(esc, color="gray", ls=":", label=f"bad start escapes (t = {esc})")
    ax.axvline(PAPER_PLATEAU, color="k", ls="-.", lw=0.8, label="paper: > 7000 iterations")
    ax.loglog(t_pg[10:], 1.0 / t_pg[10:], color="gray", lw=0.8, alpha=0.6, label="1/t (Mei et al. rate)")
    ax.set_xlabel("iteration t")
    ax.set_ylabel(r"sub-optimality $r^* - \pi_t^\top r$")
    ax.set_ylim(1e-14, 2)
    ax.set_title(f"Bandit r = {REWARDS}, eta = 2/5 (Mei et al. 2020, Fig. 1)")
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, out / "suboptimality.png")

    # Figure 2: the probability of each arm from the bad start.
    fig, ax = new_figure(figsize=(7, 4))
    for a, c in zip(range(3), ("tab:green", "tab:orange", "tab:purple")):
        ax.semilogx(t_pg[1:], pis[1:, names.index("bad"), a], color=c, label=f"pi(a{a}), r = {REWARDS[a]}")
    if esc is not None:
        ax.axvline(esc, color="gray", ls=":", label=f"pi(a*) > 1/2 at t = {esc}")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("probability")
    ax.set_title("Softmax PG from the bad start (0.01, 0.05, 0.94)")
    ax.legend(fontsize=8)
    save_figure(fig, out / "bad_start_probabilities.png")

    bad = results["bad"][2]
    report = f"""# Mei et al. (2020), Figure 1: softmax PG plateau on a 3-armed bandit

Bandit r = {REWARDS} (`refpg.envs.bandit`), tabular softmax, exact softmax policy gradient
theta <- theta + eta * pi * (r - pi.r) with eta = 2/5, for {n_pg} iterations
({'quick' if quick else 'full'} mode), and exact NPG (`refpg.algorithms.npg_step`, same eta,
stopped once the sub-optimality is below 1e-13). Starts theta = log pi_0.
The closed-form gradient agrees with `refpg.policy_gradient` to {check:.1e} at both starts.

Escape iteration: the first t with pi_t(a*) > 1/2; also the first t with r* - pi_t.r < {SUBOPT_LEVEL}.

{md_table(["start", "pi_0", "PG escape t", "PG subopt < 0.05 at t", f"PG subopt at t={n_pg}",
           "NPG escape t", "NPG subopt < 0.05 at t"], rows)}

**Headline.** From the bad start softmax PG escapes the plateau (sub-optimality about 0.1,
held by the arm with reward 0.9) at t = {bad['pg_escape_iteration']}; the paper states that it
takes more than {PAPER_PLATEAU} iterations: {'reproduced' if (bad['pg_escape_iteration'] or n_pg + 1) > PAPER_PLATEAU else 'NOT reproduced'}.
NPG from the same start escapes at t = {bad['npg_escape_iteration']}.

![sub-optimality](suboptimality.png)

![bad start](bad_start_probabilities.png)
"""
    (out / "report.md").write_text(report)
    return {
        "bad_start_escape_iteration": bad["pg_escape_iteration"],
        "bad_start_subopt_below_0.05": bad["pg_subopt_below_0.05"],
        "good_start_escape_iteration": results["good"][2]["pg_escape_iteration"],
        "npg_bad_start_escape_iteration": bad["npg_escape_iteration"],
        "npg_good_start_escape_iteration": results["good"][2]["npg_escape_iteration"],
        "paper_plateau_lower_bound": PAPER_PLATEAU,
        "gradient_check_max_abs_error": check,
    }

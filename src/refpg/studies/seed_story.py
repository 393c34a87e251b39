r"""The seed article's story on FrozenLake 4x4: REINFORCE's cliff against NPG, TRPO and PPO.

"The Art of Safe Policy Updates: From REINFORCE to TRPO and PPO" (the seed
article the project grew from) tells that REINFORCE measures its step in
parameter space, so a large step can fall off a cliff in behaviour space,
while TRPO bounds each step by a KL trust region and PPO approximates it by
clipping. Here the story is computed exactly (infinite samples), so every drop
in J is the step itself and not noise:

* MDP: FrozenLake 4x4, slippery, gamma = 0.99 (`refpg.envs.frozen_lake`).
* Policy: log-linear with row and column features per action,
  :math:`\phi(s, a) = e_a \otimes (e_{row(s)}, e_{col(s)})` (32 parameters
  for 16 states x 4 actions; `row_column_features`). One parameter moves the
  policy in a whole row or column of the lake, as a network's weights move it
  in many states at once.
* Exact REINFORCE (`reinforce_step`, gradient ascent with the exact gradient)
  at several step sizes; exact NPG (`npg_step`), TRPO (`trpo_step`) and PPO
  (`ppo_update`, clipped surrogate, Adam) from theta = 0, all through
  `refpg.algorithms.run`, which measures J, the mean KL under d_old and the
  max KL over visited states after every iteration.
* The cliff: J along the gradient ray theta + alpha grad J from the iterate
  before the largest step's worst drop.
* A control: the same REINFORCE step sizes with a tabular softmax policy,
  where exact gradient ascent cannot lower J at any step size (proof in the
  report), so the cliff needs shared parameters.

References
----------
[Williams1992]; [Kakade2001]; [Schulman2015] (TRPO, Eq. 12 and Appendix C);
[Schulman2017] (PPO); [Agarwal2021] Lemma C.1 (the tabular softmax gradient).
"""

from __future__ import annotations

import numpy as np

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

__all__ = ["row_column_features", "lake_and_policies", "run"]

#: REINFORCE step sizes alpha (theta += alpha * grad J).
REINFORCE_LRS = (10.0, 100.0, 300.0, 1000.0, 3000.0)
#: NPG step sizes eta (theta += eta * F^+ grad J).
NPG_ETAS = (0.3, 1.0)
#: TRPO trust-region sizes delta (mean KL under d_old); the first is the main one.
TRPO_DELTAS = (0.01, 0.001, 0.03)
#: PPO settings: clip range, epochs (one exact full-batch Adam step each), Adam lr.
PPO = {"clip_eps": 0.2, "epochs": 10, "lr": 0.03}
#: A change of J below this (in absolute value) is round-off, not a drop.
ROUNDOFF = 1e-12


def row_column_features(height: int, width: int, n_actions: int) -> np.ndarray:
    r"""Features :math:`\phi(s, a) = e_a \otimes (e_{row(s)}, e_{col(s)})`, shape (H*W, A, A*(H+W)).

    State s = row * width + col (FrozenLake's and gridworld's order). The
    log-linear policy :math:`\pi(a|s) \propto \exp(\theta_{a,row} + \theta_{a,col})`
    has one weight per (action, row) and per (action, column).
    """
    S, A, d = height * width, n_actions, height + width
    phi = np.zeros((S, A, A * d))
    for s in range(S):
        row, col = divmod(s, width)
        for a in range(A):
            phi[s, a, a * d + row] = 1.0
            phi[s, a, a * d + height + col] = 1.0
    return phi


def lake_and_policies():
    """FrozenLake 4x4 (slippery, gamma = 0.99), its row-column log-linear policy and its tabular softmax."""
    import refpg
    from refpg.envs import frozen_lake

    mdp = frozen_lake("4x4")
    return mdp, refpg.LogLinear(row_column_features(4, 4, mdp.n_actions)), refpg.TabularSoftmax.for_mdp(mdp)


def _label(kind: str, value) -> str:
    if kind == "ppo":
        return f"PPO clip {PPO['clip_eps']:g}, {PPO['epochs']} epochs, Adam lr {PPO['lr']:g}"
    return {"reinforce": "REINFORCE alpha", "npg": "NPG eta", "trpo": "TRPO delta"}[kind] + f" = {value:g}"


def _run_all(mdp, policy, T, progress, k0):
    from refpg.algorithms import run

    theta0 = np.zeros(policy.theta_shape)
    runs, k = {}, k0
    jobs = ([("reinforce", lr, dict(lr=lr)) for lr in REINFORCE_LRS]
            + [("npg", eta, dict(eta=eta)) for eta in NPG_ETAS]
            + [("trpo", d, dict(max_kl=d, cg_iters=policy.n_params)) for d in TRPO_DELTAS]
            + [("ppo", None, dict(PPO))])
    for kind, value, opts in jobs:
        runs[(kind, value)] = run(kind, mdp, policy, theta0, n_iters=T, **opts)
        k += 1
        progress.update(k)
    return runs, k


def _stats(h) -> dict:
    J = h.J
    dJ = np.diff(J)
    i = int(np.argmin(dJ))
    return {"J_final": float(J[-1]), "J_max": float(J.max()), "J_10": float(J[min(10, len(J) - 1)]),
            "worst_dJ": float(dJ[i]), "worst_at": i + 1,
            "J_before_worst": float(J[i]), "J_after_worst": float(J[i + 1]),
            "n_drops": int(np.sum(dJ < -ROUNDOFF)), "max_mean_kl": float(h.column("mean_kl").max()),
            "max_state_kl": float(h.column("max_kl").max())}


def gradient_ray(mdp, policy, theta, alphas):
    """J(theta + alpha g) and mean KL(pi_theta || pi_{theta + alpha g}) for g = grad J(theta)."""
    import refpg

    g = refpg.policy_gradient(mdp, policy, theta)
    ev = refpg.evaluate(mdp, policy.probs(theta))
    J = np.array([refpg.evaluate(mdp, policy.probs(theta + a * g)).J for a in alphas])
    kl = np.array([refpg.kl_divergence(mdp, policy, theta + a * g, theta_old=theta, evaluation_old=ev) for a in alphas])
    return J, kl


def locked_states(mdp, pi, *, tol: float = 1e-3) -> list:
    """Visited states (d^pi(s) > 0) where pi puts less than `tol` on every optimal action (Q* within 1e-9 of V*)."""
    import refpg

    opt = refpg.optimal_policy(mdp)
    ev = refpg.evaluate(mdp, pi)
    good = opt.Q >= opt.V[:, None] - 1e-9
    return [int(s) for s in np.flatnonzero(ev.support & ~mdp.terminal)
            if (pi[s] * good[s]).sum() < tol]


def run(*, quick: bool = False, out_dir="analysis/seed_story") -> dict:
    """Run the study (module docstring), writing its figures and ``report.md`` to `out_dir`.

    `quick` runs fewer iterations (for the tests). Returns the headline numbers of every run: final
    and best J, the worst one-step drop and where it happened, and the largest KLs.
    """
    import refpg

    out = prepare_out_dir(out_dir)
    T = 25 if quick else 300
    mdp, loglin, tabular = lake_and_policies()
    J_star = refpg.optimal_policy(mdp).J
    n_jobs = len(REINFORCE_LRS) * 2 + len(NPG_ETAS) + len(TRPO_DELTAS) + 1
    prog = Progress("seed_story: runs", n_jobs, every=1)
    runs, k = _run_all(mdp, loglin, T, prog, 0)
    from refpg.algorithms import run as run_algorithm

    tab = {}
    for lr in REINFORCE_LRS:
        tab[lr] = run_algorithm("reinforce", mdp, tabular, np.zeros(tabular.theta_shape), n_iters=T, lr=lr)
        k += 1
        prog.update(k)
    stats = {key: _stats(h) for key, h in runs.items()}
    tab_stats = {lr: _stats(h) for lr, h in tab.items()}

    # The cliff: the largest step's worst drop, seen along its gradient ray.
    big = REINFORCE_LRS[-1]
    hb, sb = runs[("reinforce", big)], stats[("reinforce", big)]
    theta_k = hb.results[sb["worst_at"] - 1].theta_old
    alphas = np.logspace(-1, np.log10(3 * big), 31 if quick else 161)
    ray_J, ray_kl = gradient_ray(mdp, loglin, theta_k, alphas)
    peak = int(np.argmax(ray_J))
    # Where the ray leaves the main TRPO trust region (the first alpha with mean KL > delta).
    delta = TRPO_DELTAS[0]
    leave = np.flatnonzero(ray_kl > delta)
    alpha_delta = float(alphas[leave[0]]) if leave.size else None
    # How long the largest step stays at the bottom.
    Jb = hb.J
    after = Jb[sb["worst_at"]:]
    stuck = int(np.argmax(after > 1e-3)) if (after > 1e-3).any() else len(after)

    trpo_keys = [("trpo", d) for d in TRPO_DELTAS]
    mean_ratio = max(float((runs[k_].column("mean_kl") / k_[1]).max()) for k_ in trpo_keys)
    state_ratio = max(float((runs[k_].column("max_kl") / k_[1]).max()) for k_ in trpo_keys)
    trpo_worst = min(stats[k_]["worst_dJ"] for k_ in trpo_keys)
    reinforce_safe = [lr for lr in REINFORCE_LRS if stats[("reinforce", lr)]["n_drops"] == 0]
    reinforce_best = max(stats[("reinforce", lr)]["J_max"] for lr in REINFORCE_LRS)
    tab_worst = min(s["worst_dJ"] for s in tab_stats.values())
    locked = locked_states(mdp, tabular.probs(tab[big].theta))

    # ---- figures -------------------------------------------------------------------
    # Step sizes from calm to alarming.
    lr_colors = ("tab:blue", "tab:purple", "tab:pink", "tab:orange", "tab:red")
    colors = {("reinforce", lr): c for lr, c in zip(REINFORCE_LRS, lr_colors)}
    colors.update({("npg", NPG_ETAS[0]): "tab:green", ("npg", NPG_ETAS[1]): "tab:olive",
                   ("trpo", TRPO_DELTAS[0]): "k", ("trpo", TRPO_DELTAS[1]): "tab:cyan",
                   ("trpo", TRPO_DELTAS[2]): "tab:brown", ("ppo", None): "tab:gray"})
    styles = {"reinforce": "-", "npg": "--", "trpo": "-", "ppo": "-."}
    main_keys = ([("reinforce", lr) for lr in REINFORCE_LRS] + [("npg", e) for e in NPG_ETAS]
                 + [("trpo", TRPO_DELTAS[0]), ("ppo", None)])
    t = np.arange(T + 1)

    # Figure 1: J per iteration; REINFORCE's step sizes, then the safe-update methods.
    fig, axes = new_figure(1, 2, figsize=(13, 5), sharey=True)
    ref = ("reinforce", REINFORCE_LRS[1])
    for ax, keys in ((axes[0], [("reinforce", lr) for lr in REINFORCE_LRS]),
                     (axes[1], [("npg", e) for e in NPG_ETAS] + [("trpo", TRPO_DELTAS[0]), ("ppo", None), ref])):
        for key in keys:
            lw = 2.2 if key[0] == "trpo" else 1.5
            alpha = 0.45 if (ax is axes[1] and key == ref) else 1.0
            ax.plot(t, runs[key].J, styles[key[0]], color=colors[key], lw=lw, alpha=alpha, label=_label(*key))
        ax.axhline(J_star, color="gray", ls=":", lw=1, label=f"optimal J* = {J_star:.3f} (tabular)")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, T)
        ax.set_xlabel("iteration (linear up to 10, log beyond)")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].annotate(f"alpha = {big:g}, step {sb['worst_at']}: J {sb['J_before_worst']:.3f} -> {sb['J_after_worst']:.1e}",
                     xy=(sb["worst_at"], max(sb["J_after_worst"], 0.0)), xytext=(1.2, 0.27),
                     arrowprops=dict(arrowstyle="->", color=colors[("reinforce", big)]), fontsize=9,
                     color=colors[("reinforce", big)])
    axes[0].set_ylabel("J = E[sum_t gamma^t r_t]  (exact)")
    axes[0].set_title("Exact REINFORCE (gradient ascent) at five step sizes", fontsize=10)
    axes[1].set_title(f"NPG, TRPO, PPO (faint: REINFORCE alpha = {REINFORCE_LRS[1]:g})", fontsize=10)
    fig.suptitle("FrozenLake 4x4 (slippery, gamma = 0.99), log-linear row + column policy, exact updates from "
                 "the uniform policy", fontsize=11)
    save_figure(fig, out / "J_per_iteration.png")

    # Figure 2: KL per step, mean under d_old and max over visited states.
    fig, axes = new_figure(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, col, name in ((axes[0], "mean_kl", "mean KL under d_old"),
                          (axes[1], "max_kl", "max KL over visited states")):
        for key in main_keys:
            v = runs[key].column(col)
            keep = v > 0
            ax.semilogy(t[1:][keep], v[keep], styles[key[0]], color=colors[key],
                        lw=2.2 if key[0] == "trpo" else 1.2, label=_label(*key))
        ax.axhline(delta, color="k", ls=":", lw=1.2, label=f"delta = {delta:g} (TRPO's bound on the mean KL)")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(1, T)
        # Steps of converged runs have KL at round-off level (1e-17 and below): not drawn.
        ax.set_ylim(1e-9, 1e3)
        ax.set_xlabel("iteration (linear up to 10, log beyond)")
        ax.set_title(f"{name}: KL(pi_old || pi_new) per step", fontsize=10)
    axes[0].set_ylabel("KL per step (log scale; KL < 1e-9 not drawn)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, out / "kl_per_step.png")

    # Figure 3: the cliff along the gradient ray.
    fig, axes = new_figure(2, 1, figsize=(8, 6.5), sharex=True)
    ax = axes[0]
    ax.semilogx(alphas, ray_J, color=colors[("reinforce", big)], lw=1.8, label="J(theta_k + alpha grad J(theta_k))")
    ax.axhline(ray_J[0], color="gray", ls=":", lw=1, label=f"J(theta_k) = {ray_J[0]:.4f}")
    ax.axvline(big, color="r", ls="--", lw=1.2, label=f"step taken: alpha = {big:g} -> J = {sb['J_after_worst']:.1e}")
    ax.plot(alphas[peak], ray_J[peak], "o", color="tab:green",
            label=f"best alpha on the ray = {alphas[peak]:.3g} (J = {ray_J[peak]:.4f})")
    if alpha_delta is not None:
        ax.axvline(alpha_delta, color="k", ls=":", lw=1.2,
                   label=f"mean KL reaches delta = {delta:g} at alpha = {alpha_delta:.3g}")
    ax.set_ylabel("J (exact)")
    ax.set_title(f"The cliff: REINFORCE alpha = {big:g}, step {sb['worst_at']} "
                 f"(from theta_k = iterate {sb['worst_at'] - 1})", fontsize=10)
    ax.legend(fontsize=8, loc="center left")
    ax = axes[1]
    ax.loglog(alphas, np.maximum(ray_kl, 1e-300), color="tab:purple", lw=1.8, label="mean KL(pi_k || pi) under d_k")
    ax.axhline(delta, color="k", ls=":", lw=1.2, label=f"TRPO delta = {delta:g}")
    ax.axvline(big, color="r", ls="--", lw=1.2)
    ax.set_xlabel("step size alpha along grad J(theta_k) (log scale)")
    ax.set_ylabel("mean KL (log scale)")
    ax.legend(fontsize=8)
    save_figure(fig, out / "cliff.png")

    # Figure 4: TRPO inside its trust region.
    fig, ax = new_figure(figsize=(9, 4.8))
    for key in trpo_keys:
        h = runs[key]
        for col, ls, what in (("mean_kl", "-", "mean KL / delta (the constraint)"),
                              ("max_kl", ":", "max-state KL / delta (not constrained)")):
            v = h.column(col) / key[1]
            keep = v > 0
            ax.semilogy(t[1:][keep], v[keep], ls, color=colors[key], lw=1.6 if ls == "-" else 1.1,
                        label=f"delta = {key[1]:g}: {what}")
    ax.axhline(1.0, color="r", lw=1.0, label="KL = delta")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(1, T)
    ax.set_xlabel("iteration (linear up to 10, log beyond)")
    ax.set_ylabel("KL per step / delta (log scale)")
    ax.set_title(f"TRPO: mean KL / delta <= 1 at every step (max {mean_ratio:.4f}); per-state KL is not bounded\n"
                 "(once converged every step is rejected: KL = 0, not drawn)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, out / "trpo_trust_region.png")

    # Figure 5: the tabular control.
    fig, axes = new_figure(1, 2, figsize=(12, 4.6))
    for lr in REINFORCE_LRS:
        axes[0].plot(t, tab[lr].J, color=colors[("reinforce", lr)], label=_label("reinforce", lr))
        dJ = np.diff(tab[lr].J)
        up = dJ > 0
        axes[1].semilogy(t[1:][up], dJ[up], color=colors[("reinforce", lr)],
                         label=f"alpha = {lr:g}: min dJ = {dJ.min():+.1e}")
        if (~up).any():
            axes[1].semilogy(t[1:][~up], np.maximum(-dJ[~up], 1e-18), "x", color=colors[("reinforce", lr)])
    axes[0].axhline(J_star, color="gray", ls=":", label=f"J* = {J_star:.3f}")
    axes[0].set_xscale("symlog", linthresh=10)
    axes[0].set_xlim(0, T)
    axes[0].set_xlabel("iteration (linear up to 10, log beyond)")
    axes[0].set_ylabel("J (exact)")
    axes[0].set_title("Control: tabular softmax on the same lake, same REINFORCE step sizes", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].set_xscale("symlog", linthresh=10)
    axes[1].set_xlim(1, T)
    axes[1].set_xlabel("iteration (linear up to 10, log beyond)")
    axes[1].set_ylabel("J_t - J_(t-1) (log scale; a drop would be an x)")
    axes[1].set_title(f"Every step raises J (smallest change {tab_worst:+.1e})", fontsize=10)
    axes[1].legend(fontsize=8)
    save_figure(fig, out / "tabular_control.png")

    # ---- report --------------------------------------------------------------------
    rows = []
    for key in main_keys + [("trpo", d) for d in TRPO_DELTAS[1:]]:
        s = stats[key]
        drop = (f"{s['worst_dJ']:+.2e} (step {s['worst_at']}: {s['J_before_worst']:.4f} -> {s['J_after_worst']:.4f})"
                if s["worst_dJ"] < -ROUNDOFF else f"none (min dJ {s['worst_dJ']:+.1e})")
        rows.append([_label(*key), f"{s['J_10']:.4f}", f"{s['J_final']:.4f}", f"{s['J_max']:.4f}", drop,
                     s["n_drops"], f"{s['max_mean_kl']:.3g}", f"{s['max_state_kl']:.3g}"])
    tab_rows = [[f"{lr:g}", f"{s['J_10']:.4f}", f"{s['J_final']:.4f}", f"{s['worst_dJ']:+.1e}",
                 f"{s['max_mean_kl']:.3g}"]
                for lr, s in tab_stats.items()]
    trpo_rows = []
    for key in trpo_keys:
        h = runs[key]
        acc = h.column("accepted")
        trpo_rows.append([f"{key[1]:g}", f"{(h.column('mean_kl') / key[1]).max():.6f}",
                          f"{(h.column('max_kl') / key[1]).max():.3g}", int(acc.sum()), T - int(acc.sum()),
                          f"{stats[key]['worst_dJ']:+.1e}", f"{stats[key]['J_final']:.4f}"])

    s_main = stats[("trpo", delta)]
    report = f"""# The seed article's story, exactly: REINFORCE's cliff, NPG, TRPO's trust region and PPO on FrozenLake 4x4

The seed article ("The Art of Safe Policy Updates: From REINFORCE to TRPO and PPO") says REINFORCE
measures its step in parameter space, so one large step can fall off a cliff in behaviour space, and
that TRPO bounds every step by a KL trust region, which PPO approximates by clipping. Here every
update is exact (infinite samples, `mode="exact"`), so a drop in J is the step itself, not noise.
{T} iterations per run ({'quick' if quick else 'full'} mode), all from theta = 0 (the uniform policy), through
`refpg.algorithms.run`, which records the exact J, the mean KL(pi_old || pi_new) under d_old and the
max KL over states with d_old > 0 after every iteration.

**Setting and why.** FrozenLake 4x4, slippery, gamma = 0.99 (`refpg.envs.frozen_lake`, identical to
Gymnasium's `FrozenLake-v1`): the article's kind of toy, where one careless step can send the agent
into the holes, and J starts tiny ({runs[main_keys[0]].J0:.4f} for the uniform policy; J* = {J_star:.4f}).
The policy is log-linear with one weight per (action, row) and per (action, column)
(`row_column_features`, 32 parameters): like a network, one weight moves the policy in several states
at once. That sharing is what makes the cliff: with a *tabular* softmax, exact gradient ascent
cannot lower J at any step size (control below). REINFORCE is exact gradient ascent
theta += alpha grad J (`reinforce_step`) at alpha in {list(REINFORCE_LRS)}; NPG theta += eta F^+ grad J
(`npg_step`) at eta in {list(NPG_ETAS)}; TRPO (`trpo_step`, CG with {loglin.n_params} iterations, backtracking
line search on the surrogate with the mean-KL constraint) at delta in {list(TRPO_DELTAS)}; PPO
(`ppo_update`, clip 0.2, {PPO['epochs']} epochs of one exact full-batch Adam step each, lr {PPO['lr']}).

"worst dJ" is the largest single-step decrease of J (a decrease smaller than {ROUNDOFF:g} is round-off);
"drops" counts the steps that lower J; the KL columns are maxima over the run's iterations.

{md_table(["method", "J at 10", f"J at {T}", "best J", "worst dJ (step: J before -> after)", "drops",
           "max mean KL", "max state KL"], rows)}

**Headline.** The largest REINFORCE step (alpha = {big:g}) falls off the cliff at step {sb['worst_at']}:
J drops from {sb['J_before_worst']:.4f} to {sb['J_after_worst']:.2e} (a drop of {-sb['worst_dJ']:.4f}, with mean KL
{hb.column('mean_kl')[sb['worst_at'] - 1]:.3g} for that step), and J stays below 1e-3 for {stuck} iterations. Along that step's own
gradient ray J rises to {ray_J[peak]:.4f} at alpha = {alphas[peak]:.3g} and is {ray_J[np.argmin(np.abs(alphas - big))]:.2e} at the alpha taken; the
ray leaves the TRPO trust region (mean KL > {delta:g}) already at alpha = {alpha_delta if alpha_delta is None else f'{alpha_delta:.3g}'}.
REINFORCE step sizes that never lower J: {', '.join(f'{lr:g}' for lr in reinforce_safe)}; no REINFORCE run gets past
J = {reinforce_best:.3f}. TRPO stays inside its trust region at every step: max over all
iterations and all delta of mean KL / delta = **{mean_ratio:.6f}** (<= 1); its J never decreases (worst dJ
{trpo_worst:+.1e}) and it reaches J = {s_main['J_final']:.4f} at delta = {delta:g}. The trust region is on the *mean* KL
under d_old: the KL in a single state reaches {s_main['max_state_kl']:.3g} nats at delta = {delta:g}
({s_main['max_state_kl'] / delta:.3g} x delta; {state_ratio:.3g} x delta over all three deltas), in a state that the mean
constraint forces to be rarely visited (d_old(s) <= mean KL / its KL, here below 1/{s_main['max_state_kl'] / delta:.0f}). The article states the constraint
on the mean, as the practical algorithm does; TRPO's Theorem 1 bounds J with the max KL, which no step here constrains.

![J per iteration](J_per_iteration.png)

![KL per step](kl_per_step.png)

## The cliff

From theta_k, the iterate before the worst step of alpha = {big:g}, J and the mean KL along
theta_k + alpha grad J(theta_k). Up to alpha = {alphas[peak]:.3g} a longer step helps; the step taken is far
beyond, where the policy has become almost deterministic and walks into holes or into the walls.

![cliff](cliff.png)

## TRPO's trust region

{md_table(["delta", "max mean KL / delta", "max state KL / delta", "accepted steps", "rejected steps",
           "worst dJ", f"J at {T}"], trpo_rows)}

A rejected step (the line search found no candidate that improves the surrogate within the KL
bound) leaves theta unchanged, KL 0 (not drawn on the log axes).

![TRPO trust region](trpo_trust_region.png)

## What else the exact runs show

* NPG is not a trust-region method: at eta = {NPG_ETAS[1]:g} it also lowers J (worst dJ
  {stats[('npg', NPG_ETAS[1])]['worst_dJ']:+.2e}); at eta = {NPG_ETAS[0]:g} it does not ({stats[('npg', NPG_ETAS[0])]['worst_dJ']:+.1e}).
  Its direction is the right one (it leaves the plateau where REINFORCE stalls), its step length still
  has to be chosen; TRPO chooses it from delta.
* REINFORCE's runs that do not fall all stall at J about {reinforce_best:.3f}, a plateau where the gradient is tiny,
  while the natural-gradient methods (NPG, TRPO) leave it for J = {max(stats[('npg', NPG_ETAS[0])]['J_final'], s_main['J_final']):.4f}.
  PPO (Adam, lr {PPO['lr']}) never lowers J here (worst dJ {stats[('ppo', None)]['worst_dJ']:+.1e}) but stays
  on the same plateau: J = {stats[('ppo', None)]['J_final']:.4f} at {T}.

## Control: no cliff with a tabular softmax

With pi(a|s) proportional to exp(theta[s, a]), the exact gradient is
dJ/dtheta[s, a] = d(s) pi(a|s) A(s, a)/(1 - gamma) (Agarwal et al. 2021, Lemma C.1), so a gradient step of any
size alpha gives pi'(a|s) proportional to pi(a|s) exp(k_s x_a) with x_a = pi(a|s) A(s, a), k_s = alpha d(s)/(1 - gamma) >= 0.
Since sum_a x_a = 0 and x e^(k x) >= x for every real x when k >= 0,
sum_a pi'(a|s) A(s, a) is proportional to sum_a x_a e^(k_s x_a) >= sum_a x_a = 0 in every state, and the performance
difference lemma gives J(pi') - J(pi) = 1/(1 - gamma) E_(s ~ d^pi') [sum_a pi'(a|s) A(s, a)] >= 0.
Exact tabular REINFORCE is monotone at *every* step size; the cliff of the article needs parameters
shared across states (or sampling noise). Measured on the same lake:

{md_table(["alpha", "J at 10", f"J at {T}", "worst dJ", "max mean KL"], tab_rows)}

Smallest single-step change of J over all tabular runs: {tab_worst:+.1e}, positive: every step raised J.
A large tabular step still does damage of another kind: its KL per step is large and the policy turns
nearly deterministic at once. With alpha = {big:g} J reaches {tab[big].J[3]:.4f} by step 3 and is {tab[big].J[-1]:.4f} at
step {T}, short of J* = {J_star:.4f}: in the visited states {locked} the policy puts less than 1e-3 on every
optimal action. An action ruled out by one early step keeps a vanishing probability and so a vanishing
gradient: the plateau of Mei et al. (2020) (study `mei2020_bandit`), reached in the first few steps.

![tabular control](tabular_control.png)
"""
    (out / "report.md").write_text(report)
    return {
        "largest_reinforce_lr": big,
        "largest_reinforce_worst_drop": float(-sb["worst_dJ"]),
        "largest_reinforce_drop_step": sb["worst_at"],
        "largest_reinforce_J_before_drop": sb["J_before_worst"],
        "largest_reinforce_J_after_drop": sb["J_after_worst"],
        "largest_reinforce_iterations_below_1e-3": stuck,
        "reinforce_worst_dJ": {lr: stats[("reinforce", lr)]["worst_dJ"] for lr in REINFORCE_LRS},
        "reinforce_lrs_without_drop": reinforce_safe,
        "reinforce_best_J": reinforce_best,
        "ray_best_alpha": float(alphas[peak]),
        "ray_best_J": float(ray_J[peak]),
        "trpo_max_mean_kl_over_delta": mean_ratio,
        "trpo_max_state_kl_over_delta": state_ratio,
        "trpo_worst_dJ": trpo_worst,
        "trpo_mean_kl": {d: runs[("trpo", d)].column("mean_kl").tolist() for d in TRPO_DELTAS},
        "trpo_final_J": s_main["J_final"],
        "npg_worst_dJ": {eta: stats[("npg", eta)]["worst_dJ"] for eta in NPG_ETAS},
        "ppo_worst_dJ": stats[("ppo", None)]["worst_dJ"],
        "ppo_final_J": stats[("ppo", None)]["J_final"],
        "tabular_worst_dJ": tab_worst,
        "tabular_largest_lr_final_J": float(tab[big].J[-1]),
        "tabular_largest_lr_locked_states": locked,
        "J_star": J_star,
        "T": T,
    }

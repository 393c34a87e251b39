r"""PPO's ratios and KL across epochs and clip ranges (Wang et al. 2019), beside TRPO's KL.

Wang, He, Wen and Tan (2019) argue that PPO "could neither strictly restrict
the likelihood ratio as it attempts to do nor enforce a well-defined trust
region constraint". Their evidence is sampled training on MuJoCo; here the
same question is asked in exact mode (infinite samples), so what is seen is
the clipped objective and its optimiser, not noise:

* MDP: FrozenLake 4x4 (slippery, gamma = 0.99); policies: tabular softmax
  and the row + column log-linear policy of `refpg.studies.seed_story`.
* One PPO update from theta_old = 0 (`ppo_update`, exact mode: each epoch is
  one full-batch step on the exact :math:`L^{CLIP}` under
  :math:`d_{old}\times\pi_{old}`), for clip eps in {0.1, 0.2, 0.3} and
  K = 1..K_max epochs, with Adam (as PPO is run) and with plain gradient
  ascent on batch-normalised advantages (a control without momentum).
  After K epochs: :math:`\max |r - 1|` over (s, a) with d_old(s) > 0, the
  :math:`d_{old}\times\pi_{old}` mass of pairs with r outside
  :math:`[1-\epsilon, 1+\epsilon]`, and the mean KL(pi_old || pi) under d_old.
* The matched trust region: if every ratio were inside the clip range,
  :math:`KL(\pi_{old}\|\pi) = E_{\pi_{old}}[r - 1 - \log r] \le
  \delta(\epsilon) = -\epsilon - \log(1-\epsilon)` in every state
  (r - 1 - log r is convex with its maximum on [1-eps, 1+eps] at 1 - eps).
  TRPO (`trpo_step`) with max_kl = delta(eps) from the same theta_old.
* Training: 100 PPO updates (K in {3, 10, 30} epochs, eps = 0.2) against TRPO
  at delta(0.2), measuring every update's ratios and KL (`refpg.algorithms.run`).

References
----------
[Wang2019] Y. Wang, H. He, C. Wen, X. Tan, "Truly proximal policy optimization", UAI 2019.
[Schulman2017] PPO; [Schulman2015] TRPO.
"""

from __future__ import annotations

import math

import numpy as np

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

__all__ = ["matched_delta", "ratio_stats", "epoch_sweep", "run"]

CLIPS = (0.1, 0.2, 0.3)
#: Optimisers of the one-update sweep: name -> ppo_update keyword arguments.
OPTIMIZERS = {
    "Adam": dict(optimizer="adam", lr=0.03),
    "SGD": dict(optimizer="sgd", lr=1.0, normalize_advantages="batch"),
}
#: Epoch counts of the training runs.
TRAIN_EPOCHS = (3, 10, 30)
TRAIN_CLIP = 0.2
#: The epoch count of the headline (PPO's usual 10).
K_HEADLINE = 10


def matched_delta(eps: float) -> float:
    r""":math:`\delta(\epsilon) = -\epsilon - \log(1 - \epsilon)`.

    The largest KL(pi_old || pi) in a state whose ratios r = pi/pi_old all lie in
    [1 - eps, 1 + eps]: KL = E_old[r - 1 - log r], and r - 1 - log r is convex with
    its maximum on that interval at r = 1 - eps.
    """
    return -eps - math.log1p(-eps)


def ratio_stats(mdp, policy, theta_old, theta, eps: float) -> dict:
    r"""Exact ratio and KL statistics of one update theta_old -> theta.

    Returns :math:`\max |r - 1|` over (s, a) with d_old(s) > 0, the d_old x pi_old mass of
    pairs with r outside [1 - eps, 1 + eps], the mean KL under d_old and the max
    KL over visited states.
    """
    import refpg

    logp_old = policy.log_probs(theta_old)
    pi_old = np.exp(logp_old)
    ev = refpg.evaluate(mdp, pi_old)
    log_r = policy.log_probs(theta) - logp_old
    with np.errstate(over="ignore"):
        r = np.exp(log_r)
    pairs = ev.support[:, None] & (pi_old > 0)
    outside = (r > 1 + eps) | (r < 1 - eps)
    kl = refpg.kl_divergence(mdp, policy, theta, theta_old=theta_old, reduction="none", evaluation_old=ev)
    return {"max_dev": float(np.abs(r - 1)[pairs].max()),
            "mass_out": float(np.sum(ev.d[:, None] * pi_old * (outside & pairs))),
            "mean_kl": float(ev.d @ kl), "max_kl": float(kl[ev.support].max())}


def epoch_sweep(mdp, policy, theta_old, eps: float, k_max: int, options: dict) -> dict:
    """`ratio_stats` after K = 1..k_max epochs of one exact `ppo_update` (arrays of length k_max).

    Exact mode is deterministic, so the K-epoch update is the first K epochs of
    the k_max-epoch one; each K is rerun because `ppo_update` returns only its
    final theta. ``history_mismatch`` is the largest disagreement between the
    reruns and the k_max run's own per-epoch record (ratio range and KL).
    """
    from refpg.algorithms import ppo_update

    keys = ("max_dev", "mass_out", "mean_kl", "max_kl")
    out = {k: np.empty(k_max) for k in keys}
    out["J"] = np.empty(k_max)
    for K in range(1, k_max + 1):
        res = ppo_update(mdp, policy, theta_old, clip_eps=eps, epochs=K, **options)
        st = ratio_stats(mdp, policy, theta_old, res.theta, eps)
        for k in keys:
            out[k][K - 1] = st[k]
        out["J"][K - 1] = res.J_after
    hist = res.history
    rec_dev = np.array([max(e.ratio_max - 1, 1 - e.ratio_min) for e in hist])
    rec_kl = np.array([e.mean_kl for e in hist])
    out["history_mismatch"] = float(max(np.abs(rec_dev - out["max_dev"]).max(),
                                        np.abs(rec_kl - out["mean_kl"]).max()))
    out["J0"] = res.J_before
    return out


def _span(values, k_max) -> str:
    got = [v for v in values if v is not None]
    text = f"{min(got)} to {max(got)}" if got else "none of"
    return text + (f" (some > {k_max})" if len(got) < len(list(values)) else "")


def _first(mask) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) + 1 if idx.size else None


def run(*, quick: bool = False, out_dir="analysis/ppo_ratio_kl") -> dict:
    """Run the study (module docstring), writing its figures and ``report.md`` to `out_dir`.

    `quick` runs fewer epochs and updates (for the tests). Returns the headline numbers: at the
    headline epoch count, each run's mass of pairs outside the clip range and largest ratio
    deviation, the first epoch that leaves the range, and the mean KL over delta(eps).
    """
    from refpg.algorithms import run as run_algorithm
    from refpg.algorithms import trpo_step
    from refpg.studies.seed_story import lake_and_policies

    out = prepare_out_dir(out_dir)
    k_max = 12 if quick else 100
    T = 10 if quick else 100
    mdp, loglin, tabular = lake_and_policies()
    policies = {"tabular softmax": tabular, "log-linear row+col": loglin}
    n_jobs = len(policies) * (len(CLIPS) * (len(OPTIMIZERS) + 1) + len(TRAIN_EPOCHS) + 1)
    prog = Progress("ppo_ratio_kl: runs", n_jobs, every=1)
    k = 0

    sweeps, trpo = {}, {}
    for pname, pol in policies.items():
        theta_old = np.zeros(pol.theta_shape)
        for eps in CLIPS:
            for oname, opts in OPTIMIZERS.items():
                sweeps[(pname, eps, oname)] = epoch_sweep(mdp, pol, theta_old, eps, k_max, opts)
                k += 1
                prog.update(k)
            res = trpo_step(mdp, pol, theta_old, max_kl=matched_delta(eps), cg_iters=pol.n_params)
            trpo[(pname, eps)] = dict(ratio_stats(mdp, pol, theta_old, res.theta, eps), J=res.J_after,
                                      accepted=res.accepted)
            k += 1
            prog.update(k)

    # Training: every update's ratios and KL.
    train = {}
    d_train = matched_delta(TRAIN_CLIP)
    for pname, pol in policies.items():
        theta0 = np.zeros(pol.theta_shape)
        jobs = [(f"PPO, {K} epochs", "ppo", dict(clip_eps=TRAIN_CLIP, epochs=K, **OPTIMIZERS["Adam"]))
                for K in TRAIN_EPOCHS]
        jobs.append((f"TRPO, delta = delta({TRAIN_CLIP:g})", "trpo", dict(max_kl=d_train, cg_iters=pol.n_params)))
        for label, alg, opts in jobs:
            h = run_algorithm(alg, mdp, pol, theta0, n_iters=T, **opts)
            st = [ratio_stats(mdp, pol, r.theta_old, r.theta, TRAIN_CLIP) for r in h.results]
            train[(pname, label)] = {"J": h.J, **{key: np.array([s[key] for s in st]) for key in st[0]}}
            k += 1
            prog.update(k)

    # ---- numbers ---------------------------------------------------------------------
    Kh = min(K_HEADLINE, k_max)
    mismatch = max(s["history_mismatch"] for s in sweeps.values())
    rows, escape = [], {}
    for (pname, eps, oname), s in sweeps.items():
        d = matched_delta(eps)
        first_out = _first(s["max_dev"] > eps)
        first_kl = _first(s["mean_kl"] > d)
        escape[(pname, eps, oname)] = first_out
        rows.append([pname, f"{eps:g}", oname, first_out or f"> {k_max}", f"{s['max_dev'][Kh - 1]:.3f}",
                     f"{s['mass_out'][Kh - 1]:.4f}", f"{s['mean_kl'][Kh - 1] / d:.3f}",
                     f"{s['max_dev'][-1]:.3f}", f"{s['mass_out'][-1]:.4f}", f"{s['mean_kl'][-1] / d:.3f}",
                     first_kl or f"> {k_max}", f"{s['J'][-1]:.4f}"])
    trpo_rows = [[pname, f"{eps:g}", f"{matched_delta(eps):.5f}", f"{t['mean_kl'] / matched_delta(eps):.4f}",
                  f"{t['max_kl'] / matched_delta(eps):.3g}", f"{t['max_dev']:.3f}", f"{t['mass_out']:.4f}", f"{t['J']:.4f}"]
                 for (pname, eps), t in trpo.items()]
    trpo_kl_ratio = max(max(t["mean_kl"] / matched_delta(eps) for (_, eps), t in trpo.items()),
                        max(float((v["mean_kl"] / d_train).max()) for (p, lab), v in train.items() if lab.startswith("TRPO")))
    train_rows = []
    for (pname, label), v in train.items():
        train_rows.append([pname, label, f"{v['max_dev'].max():.3g}", f"{v['mass_out'].max():.4f}",
                           f"{v['mean_kl'].max() / d_train:.3f}", f"{v['max_kl'].max() / d_train:.3g}",
                           int(np.sum(v["mean_kl"] > d_train)), f"{v['J'][-1]:.4f}"])

    adam_escapes = {key: v for key, v in escape.items() if key[2] == "Adam"}
    all_adam_escape = all(v is not None for v in adam_escapes.values())
    kl_over = {p: _first(sweeps[(p, TRAIN_CLIP, "Adam")]["mean_kl"] > matched_delta(TRAIN_CLIP)) for p in policies}

    # ---- figures ---------------------------------------------------------------------
    K = np.arange(1, k_max + 1)
    eps_colors = dict(zip(CLIPS, ("tab:blue", "tab:orange", "tab:green")))
    opt_styles = {"Adam": "-", "SGD": "--"}

    # Figure 1: ratios per epoch.
    fig, axes = new_figure(2, 2, figsize=(12, 8), sharex=True)
    for row, pname in enumerate(policies):
        for eps in CLIPS:
            for oname in OPTIMIZERS:
                s = sweeps[(pname, eps, oname)]
                axes[row, 0].loglog(K, s["max_dev"], opt_styles[oname], color=eps_colors[eps],
                                    label=f"eps = {eps:g}, {oname}")
                m = s["mass_out"]
                axes[row, 1].semilogx(K, m, opt_styles[oname], color=eps_colors[eps], label=f"eps = {eps:g}, {oname}")
            axes[row, 0].axhline(eps, color=eps_colors[eps], ls=":", lw=1)
        axes[row, 0].set_ylabel("max over (s, a) of |r - 1|  (log scale)")
        axes[row, 0].set_title(f"{pname}: largest ratio deviation (dotted: eps)", fontsize=10)
        axes[row, 1].set_ylabel("d_old x pi_old mass with r outside [1-eps, 1+eps]")
        axes[row, 1].set_title(f"{pname}: share of the data with its ratio outside the clip range", fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel("epochs K of one PPO update (exact full-batch steps, log scale)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("One exact PPO update from the uniform policy, FrozenLake 4x4 (Adam lr 0.03 solid; "
                 "SGD lr 1 on normalised advantages dashed)", fontsize=11)
    save_figure(fig, out / "ratio_by_epoch.png")

    # Figure 2: KL per epoch against delta(eps) and TRPO.
    fig, axes = new_figure(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, pname in zip(axes, policies):
        for eps in CLIPS:
            for oname in OPTIMIZERS:
                s = sweeps[(pname, eps, oname)]
                keep = s["mean_kl"] > 0
                ax.loglog(K[keep], s["mean_kl"][keep], opt_styles[oname], color=eps_colors[eps],
                          label=f"PPO eps = {eps:g}, {oname}")
            ax.axhline(matched_delta(eps), color=eps_colors[eps], ls=":", lw=1.2)
            ax.plot(1, trpo[(pname, eps)]["mean_kl"], "*", color=eps_colors[eps], ms=13, mec="k",
                    label=f"TRPO one step, delta({eps:g}) = {matched_delta(eps):.4f}")
        ax.set_xlabel("epochs K (log scale)")
        ax.set_title(f"{pname}: mean KL(pi_old || pi) under d_old (dotted: delta(eps))", fontsize=10)
    axes[0].set_ylabel("mean KL (log scale)")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    save_figure(fig, out / "kl_by_epoch.png")

    # Figure 3: across training.
    t = np.arange(1, T + 1)
    fig, axes = new_figure(2, 3, figsize=(15, 8), sharex=True)
    train_colors = dict(zip([f"PPO, {K_} epochs" for K_ in TRAIN_EPOCHS], ("tab:blue", "tab:orange", "tab:red")))
    for row, pname in enumerate(policies):
        for (p, label), v in train.items():
            if p != pname:
                continue
            c = train_colors.get(label, "k")
            lw = 2.0 if label.startswith("TRPO") else 1.3
            # A rejected TRPO step leaves the policy unchanged (KL 0, r = 1): not drawn.
            keep = v["mean_kl"] > 0
            axes[row, 0].loglog(t[keep], v["max_dev"][keep], color=c, lw=lw, label=label)
            axes[row, 1].semilogx(t[keep], v["mass_out"][keep], color=c, lw=lw, label=label)
            axes[row, 2].loglog(t[keep], v["mean_kl"][keep], color=c, lw=lw, label=label)
        eps_line = axes[row, 0].axhline(TRAIN_CLIP, color="gray", ls=":", label=f"eps = {TRAIN_CLIP:g}")
        delta_line = axes[row, 2].axhline(d_train, color="gray", ls=":", label=f"delta({TRAIN_CLIP:g}) = {d_train:.4f}")
        axes[row, 0].legend(handles=[eps_line], fontsize=8, loc="upper left")
        axes[row, 2].legend(handles=[delta_line], fontsize=8, loc="lower left")
        axes[row, 0].set_ylabel(f"{pname}\nmax |r - 1| per update (log)")
        axes[row, 1].set_ylabel("mass with r outside [0.8, 1.2]")
        axes[row, 2].set_ylabel("mean KL per update (log)")
        axes[row, 0].set_title(f"{pname}: largest ratio deviation", fontsize=10)
        axes[row, 1].set_title(f"{pname}: share of data outside the clip range", fontsize=10)
        axes[row, 2].set_title(f"{pname}: KL per update", fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel("update (outer iteration, log scale)")
    axes[0, 1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"Training: exact PPO (eps = {TRAIN_CLIP:g}, Adam lr 0.03) against exact TRPO at "
                 f"delta = delta({TRAIN_CLIP:g}), FrozenLake 4x4 (rejected TRPO steps, KL = 0, not drawn)", fontsize=11)
    save_figure(fig, out / "training.png")

    # ---- report ----------------------------------------------------------------------
    h_ll = sweeps[("log-linear row+col", TRAIN_CLIP, "Adam")]
    h_tab = sweeps[("tabular softmax", TRAIN_CLIP, "Adam")]
    verdict_ratio = "reproduced" if all_adam_escape else "only partly reproduced"
    kl_lines = []
    for p in policies:
        adam = [sweeps[(p, e, "Adam")] for e in CLIPS]
        firsts = [_first(a["mean_kl"] > matched_delta(e)) for a, e in zip(adam, CLIPS)]
        mono = all(bool(np.all(np.diff(a["mean_kl"]) >= 0)) for a in adam)
        ends = ", ".join(f"{a['mean_kl'][-1] / matched_delta(e):.2f}" for a, e in zip(adam, CLIPS))
        grow = "never decreases from one epoch to the next" if mono else "grows overall (not at every epoch)"
        if all(f is not None for f in firsts):
            kl_lines.append(f"{p} (Adam): the mean KL {grow}, passes delta(eps) at epochs "
                            f"{', '.join(str(f) for f in firsts)} for eps = {', '.join(f'{e:g}' for e in CLIPS)} "
                            f"and ends at {ends} x delta(eps) after {k_max} epochs")
        elif not any(f is not None for f in firsts):
            kl_lines.append(f"{p} (Adam): the mean KL {grow} but stays below delta(eps) for every eps up to "
                            f"K = {k_max} (ends at {ends} x delta(eps))")
        else:
            kl_lines.append(f"{p} (Adam): the mean KL {grow}; it passes delta(eps) at epochs "
                            f"{', '.join(str(f) if f else f'> {k_max}' for f in firsts)} for eps = "
                            f"{', '.join(f'{e:g}' for e in CLIPS)} (ends at {ends} x delta(eps))")
    # Does some eps take the mean KL past delta(eps) (one update, Adam), per policy?
    kl_verdict = {p: any(_first(sweeps[(p, e, "Adam")]["mean_kl"] > matched_delta(e)) is not None for e in CLIPS)
                  for p in policies}
    if all(kl_verdict.values()):
        kl_word = "reproduced"
    elif kl_verdict["log-linear row+col"]:
        kl_word = "reproduced with shared weights; with a tabular softmax the KL grows but stays under delta(eps)"
    else:
        kl_word = "not reproduced: the KL grows but stays under delta(eps)"
    trpo_dev = [t_["max_dev"] for t_ in trpo.values()]
    trpo_mass = [t_["mass_out"] for t_ in trpo.values()]
    tr_train = {p: train[(p, f"TRPO, delta = delta({TRAIN_CLIP:g})")] for p in policies}
    train_over = "; ".join(
        p + ": " + ", ".join(
            f"{K_} epochs {int(np.sum(train[(p, f'PPO, {K_} epochs')]['mean_kl'] > d_train))} "
            f"(max {train[(p, f'PPO, {K_} epochs')]['mean_kl'].max() / d_train:.2f} x delta)" for K_ in TRAIN_EPOCHS)
        for p in policies)
    trpo_train_max = max(float((v["mean_kl"] / d_train).max()) for v in tr_train.values())
    tab_train_over = any(bool((v["mean_kl"] > d_train).any()) for (p, lab), v in train.items()
                         if p == "tabular softmax" and lab.startswith("PPO"))
    if not kl_verdict["tabular softmax"] and not tab_train_over:
        tab_sentence = ("does let ratios escape but keeps the mean KL below delta(eps) in "
                        f"{k_max} epochs and in every training update: the claim that PPO fails to bound the KL "
                        "holds here only with parameters shared across states")
    else:
        tab_sentence = "lets ratios escape and the mean KL pass delta(eps) as well"
    sgd_escape = {key: v for key, v in escape.items() if key[2] == "SGD"}
    sgd_text = ", ".join(f"{p.split()[0]} eps={e:g}: {v if v is not None else f'> {k_max}'}"
                         for (p, e, _), v in sgd_escape.items())
    report = f"""# PPO's ratios and KL across epochs and clip ranges (Wang et al. 2019), beside TRPO

Wang, He, Wen and Tan (2019, "Truly proximal policy optimization") show that PPO "could neither strictly
restrict the likelihood ratio as it attempts to do nor enforce a well-defined trust region
constraint": with clipping, ratios still leave [1 - eps, 1 + eps] and the KL to the old policy is not
bounded. Their evidence is sampled training on MuJoCo. Here the question is asked in exact mode
(infinite samples: expectations under d_old x pi_old with exact advantages), so the effect cannot be
noise. FrozenLake 4x4 (slippery, gamma = 0.99), two policies: tabular softmax (16 x 4 logits) and the
log-linear row + column policy of the `seed_story` study (32 weights shared across states),
{'quick' if quick else 'full'} mode.

**One update.** From theta_old = 0 (uniform policy), `ppo_update` in exact mode for K = 1..{k_max} epochs,
each epoch one full-batch step on the exact clipped surrogate (so "epoch" here is one optimiser step; a
sampled epoch takes several minibatch steps). Adam with lr {OPTIMIZERS['Adam']['lr']} (fresh moments, as each PPO update in
`refpg.algorithms.run`), and as a control without momentum plain gradient ascent (SGD, lr
{OPTIMIZERS['SGD']['lr']:g}) on advantages normalised under d_old x pi_old. Measured exactly after K epochs: max |r - 1| over
all (s, a) with d_old(s) > 0; the d_old x pi_old mass of pairs whose ratio is outside [1 - eps, 1 + eps]
(the exact "share of samples outside the clip range"); the mean KL(pi_old || pi) under d_old.

**Matched trust region.** If every ratio stayed in [1 - eps, 1 + eps], then in every state
KL(pi_old || pi) = E_pi_old[r - 1 - log r] <= delta(eps) = -eps - log(1 - eps) (r - 1 - log r is convex,
largest on the interval at r = 1 - eps): delta(0.1, 0.2, 0.3) = {matched_delta(0.1):.5f}, {matched_delta(0.2):.5f},
{matched_delta(0.3):.5f}. This is the trust region clipping would enforce if it held the ratios, and
TRPO (`trpo_step`, CG with n_params iterations) is run with max_kl = delta(eps) from the same theta_old.
The K-epoch reruns agree with each K_max run's own per-epoch record to {mismatch:.1e}.

"first out": the first epoch with some ratio outside the clip range; "first KL > delta": the first
epoch whose mean KL exceeds delta(eps); columns "@ {Kh}" and "@ {k_max}" are after that many epochs.

{md_table(["policy", "eps", "optimiser", "first out", f"max abs(r-1) @ {Kh}", f"mass out @ {Kh}", f"KL/delta @ {Kh}",
           f"max abs(r-1) @ {k_max}", f"mass out @ {k_max}", f"KL/delta @ {k_max}", "first KL > delta", f"J @ {k_max}"], rows)}

TRPO, one step from the same theta_old with max_kl = delta(eps) (J before: {h_ll['J0']:.4f}):

{md_table(["policy", "eps", "delta(eps)", "mean KL / delta", "max state KL / delta", "max abs(r-1)",
           "mass out of [1-eps, 1+eps]", "J after"], trpo_rows)}

**Headline.** After K = {Kh} epochs with eps = {TRAIN_CLIP:g} (Adam), {h_tab['mass_out'][Kh - 1]:.2%} (tabular) and
{h_ll['mass_out'][Kh - 1]:.2%} (log-linear) of the d_old x pi_old mass has its ratio outside [0.8, 1.2], and the largest
ratio deviation is {h_tab['max_dev'][Kh - 1]:.3f} and {h_ll['max_dev'][Kh - 1]:.3f}; after {k_max} epochs the deviation is
{h_tab['max_dev'][-1]:.3f} and {h_ll['max_dev'][-1]:.3f} and the mass outside {h_tab['mass_out'][-1]:.2%} and {h_ll['mass_out'][-1]:.2%}.
With Adam, ratios leave the clip range for every eps and both policies: {'yes' if all_adam_escape else 'NO'}
(first epochs: {', '.join(f'{p.split()[0]} eps={e:g}: {v}' for (p, e, _), v in adam_escapes.items())}).
TRPO's mean KL / delta over all its steps (one-update and training runs) is at most **{trpo_kl_ratio:.6f}** (<= 1).

![ratio by epoch](ratio_by_epoch.png)

![KL by epoch](kl_by_epoch.png)

## Across training

{T} updates from theta = 0, PPO with eps = {TRAIN_CLIP:g}, Adam lr {OPTIMIZERS['Adam']['lr']} and K in {list(TRAIN_EPOCHS)} epochs,
against TRPO with max_kl = delta({TRAIN_CLIP:g}) = {d_train:.5f}. Maxima over the updates; "updates with KL > delta"
counts the updates whose mean KL exceeds delta({TRAIN_CLIP:g}).

{md_table(["policy", "method", "max abs(r-1)", "max mass out", "max mean KL / delta", "max state KL / delta",
           "updates with KL > delta", f"J after {T}"], train_rows)}

![training](training.png)

## Against Wang et al. (2019)

* **Ratios escape the clip range: {verdict_ratio}.** With exact expectations, Adam takes ratios past
  1 +/- eps {'for every eps and both policies' if all_adam_escape else 'in some runs'}, within {_span(adam_escapes.values(), k_max)} epochs. Clipping zeroes the gradient of a
  pair's own term once it is out of range in the direction its advantage pushes, but the pairs still
  inside keep moving the parameters they share with it: the other actions of the same state through the
  softmax normaliser (tabular), and other states too (log-linear). Adam's momentum and per-coordinate
  scaling keep moving logits whose gradient is already small or zero. Without momentum (SGD) the
  ratios escape too, later (first epochs:
  {sgd_text}).
* **How much escapes depends on sharing.** With shared weights, after {Kh} epochs
  {h_ll['mass_out'][Kh - 1]:.0%} of the d_old x pi_old mass has its ratio outside [0.8, 1.2] ({h_ll['mass_out'][-1]:.0%} after {k_max});
  with a tabular softmax {h_tab['mass_out'][Kh - 1]:.1%} ({h_tab['mass_out'][-1]:.1%}).
* **The KL is not held at the trust region the clip range implies: {kl_word}.**
  {'; '.join(kl_lines)}.
* **Across training** (eps = {TRAIN_CLIP:g}), updates of PPO whose mean KL exceeds delta({TRAIN_CLIP:g}), out of {T}:
  {train_over}.
  TRPO's mean KL {'never exceeds it' if trpo_train_max <= 1 + 1e-9 else 'EXCEEDS it'} (max {trpo_train_max:.3f} x delta).
* **Where this departs from Wang et al.** Their measurements are of sampled minibatch training with
  neural networks on MuJoCo; here the updates are exact full-batch steps on a 16-state lake, so an
  "epoch" is one optimiser step and nothing is noise. The tabular softmax, one independent softmax per
  state, {tab_sentence}.
  And a bounded mean KL does not bound ratios either: TRPO's own step at delta(eps) leaves
  {min(trpo_mass):.1%} to {max(trpo_mass):.1%} of the mass outside [1 - eps, 1 + eps], with max abs(r - 1) from {min(trpo_dev):.2f} to
  {max(trpo_dev):.2f}, and up to {max(float(v['max_dev'].max()) for v in tr_train.values()):.3g} during training (r <= 1/pi_old, so a
  ratio that large is on an action pi_old plays with probability below its inverse).
  TRPO bounds the mean KL, as it promises; PPO's clip range, in these runs, bounds neither the ratios
  nor (with shared weights) the KL.
"""
    (out / "report.md").write_text(report)
    return {
        "k_max": k_max,
        "headline_epochs": Kh,
        "mass_out_at_K": {f"{p}|eps={e:g}|{o}": float(s["mass_out"][Kh - 1]) for (p, e, o), s in sweeps.items()},
        "max_dev_at_K": {f"{p}|eps={e:g}|{o}": float(s["max_dev"][Kh - 1]) for (p, e, o), s in sweeps.items()},
        "first_epoch_out": {f"{p}|eps={e:g}|{o}": v for (p, e, o), v in escape.items()},
        "kl_over_delta_at_kmax": {f"{p}|eps={e:g}|{o}": float(s["mean_kl"][-1] / matched_delta(e))
                                  for (p, e, o), s in sweeps.items()},
        "adam_ratios_escape_every_clip": all_adam_escape,
        "loglinear_eps0.2_mass_out_at_K": float(h_ll["mass_out"][Kh - 1]),
        "tabular_eps0.2_mass_out_at_K": float(h_tab["mass_out"][Kh - 1]),
        "loglinear_eps0.2_max_dev_at_K": float(h_ll["max_dev"][Kh - 1]),
        "tabular_eps0.2_max_dev_at_K": float(h_tab["max_dev"][Kh - 1]),
        "loglinear_eps0.2_first_epoch_kl_over_delta": kl_over["log-linear row+col"],
        "tabular_eps0.2_first_epoch_kl_over_delta": kl_over["tabular softmax"],
        "trpo_max_mean_kl_over_delta": trpo_kl_ratio,
        "trpo_one_step": {f"{p}|eps={e:g}": {k_: float(v_) for k_, v_ in t_.items()} for (p, e), t_ in trpo.items()},
        "training_trpo_mean_kl": {p: train[(p, f"TRPO, delta = delta({TRAIN_CLIP:g})")]["mean_kl"].tolist() for p in policies},
        "history_mismatch": mismatch,
    }

r"""Exact language-model policy gradients on token trees: length bias, KL estimators, difficulty bias.

Three computations with `refpg.sequences`, each exact (no sampling noise):

1. **Length bias** [Liu2025]. Exact training (gradient descent on the exact
   expected loss, `refpg.sequences.expected_gradient`) on `length_bias_tree`
   (the answer is token 1; a wrong response is a run of fillers), with four
   losses: GRPO (std-normalised, seq-mean-token-mean), the group-mean baseline
   with seq-mean-token-mean, Dr. GRPO (group mean, seq-mean-token-sum-norm) and
   token-mean. Liu et al. report that GRPO's per-response :math:`1/|y|` makes wrong
   responses longer during training; the study tracks the expected length of
   wrong and right responses step by step.
2. **KL estimators** [TangMunos2025], [Shah2025]. For k1, k2, k3, placed in the
   loss or in the reward, on- and off-policy: the exact expected gradient of the
   KL term against :math:`\nabla KL_{seq}`, by cosine and relative error, over
   random trees.
3. **Difficulty bias of std normalisation.** On a one-token verifier tree whose
   success probability is p, the exact expected GRPO gradient as a multiple of
   :math:`\nabla J`, against the group mean ((G-1)/G) and RLOO (1).

References
----------
[Liu2025] Z. Liu et al., Understanding R1-Zero-like training: a critical perspective, arXiv:2503.20783, Sections 3.1-3.2.
[TangMunos2025] Y. Tang, R. Munos, On a few pitfalls in KL divergence gradient estimation for RL, arXiv:2506.09477.
[Shah2025] A comedy of estimators: KL regularisation in RL training of LLMs, arXiv:2512.21852.
"""

from __future__ import annotations

import numpy as np

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

#: The four losses of the length-bias comparison: label -> (LossSpec fields, exact method).
LENGTH_LOSSES = {
    "GRPO (std, seq-mean-token-mean)": (dict(advantage="grpo", aggregation="seq-mean-token-mean"), "enumerate"),
    "group mean, seq-mean-token-mean": (dict(advantage="group_mean", aggregation="seq-mean-token-mean"),
                                        "closed_form"),
    "Dr. GRPO (group mean, token-sum-norm)": (dict(advantage="group_mean", aggregation="seq-mean-token-sum-norm"),
                                              "closed_form"),
    "group mean, token-mean": (dict(advantage="group_mean", aggregation="token-mean"), "enumerate"),
}
GROUP_SIZE = 3
LEARNING_RATE = 2.0


def _lengths(tree, policy, theta):
    """J, the expected length, and the expected length of wrong and of right responses (one prompt)."""
    res = tree.responses
    p = np.exp(tree.response_log_probs(policy.log_probs(theta)))
    right = res.reward > 0
    return (float(p @ res.reward), float(p @ res.length),
            float((p * ~right) @ res.length / (p @ ~right)), float((p * right) @ res.length / (p @ right)))


def _at_J(rows, level):
    """(wrong length, right length) where J first reaches `level`, interpolated linearly between steps."""
    J = rows[:, 0]
    k = int(np.argmax(J >= level)) if (J >= level).any() else len(J) - 1
    if k == 0 or J[k] < level:
        return float(rows[k, 2]), float(rows[k, 3])
    f = (level - J[k - 1]) / (J[k] - J[k - 1])
    return tuple(float(rows[k - 1, c] + f * (rows[k, c] - rows[k - 1, c])) for c in (2, 3))


def length_bias(max_length: int, steps: int, progress: Progress | None = None) -> dict:
    """Exact training under each loss of `LENGTH_LOSSES`; returns label -> array (steps + 1, 4) of `_lengths`."""
    from refpg.sequences import LossSpec, expected_gradient, length_bias_tree

    tree = length_bias_tree(max_length)
    policy = tree.tabular_policy()
    out = {}
    done = 0
    for label, (fields, method) in LENGTH_LOSSES.items():
        spec = LossSpec(**fields)
        theta = np.zeros(policy.theta_shape)
        rows = [_lengths(tree, policy, theta)]
        for _ in range(steps):
            g = expected_gradient(tree, policy, theta, group_size=GROUP_SIZE, spec=spec, method=method).gradient
            theta = theta - LEARNING_RATE * g
            rows.append(_lengths(tree, policy, theta))
            done += 1
            if progress is not None:
                progress.update(done)
        out[label] = np.array(rows)
    return out


def _cos_rel(g, target):
    """Cosine and relative error of g against target; a g that is zero to 1e-12 (k1 as a loss, on-policy)
    has cosine 0, not the angle of its rounding noise."""
    ng, nt = np.linalg.norm(g), np.linalg.norm(target)
    cos = 0.0 if ng <= 1e-12 * nt else float(g @ target / (ng * nt))
    return cos, float(np.linalg.norm(g - target) / nt)


KL_ROWS = [(k, placement, importance) for k in ("k1", "k2", "k3")
           for placement, importance in (("loss", "none"), ("loss", "differentiated"), ("reward", "none"))]


def kl_table(n_trees: int, *, group_size: int = 2, off_scale: float = 0.5) -> list:
    r"""Per (estimator, placement, importance, on/off-policy): mean cosine and relative error of the KL
    term's exact expected gradient against :math:`\nabla KL_{seq}`, over `n_trees` random trees."""
    from refpg.sequences import LossSpec, expected_gradient, random_tree, sequence_kl_gradient

    acc = {}
    for seed in range(n_trees):
        tree = random_tree(seed, n_prompts=2, vocab_size=3, max_length=3)
        pol = tree.tabular_policy()
        rng = np.random.default_rng(seed)
        theta = rng.normal(0.0, 0.7, pol.theta_shape)
        target = sequence_kl_gradient(tree, pol, theta).ravel()
        for regime, theta_old in (("on", None), ("off", theta + rng.normal(0.0, off_scale, theta.shape))):
            base = dict(advantage="rloo", aggregation="seq-mean-token-sum", eps_low=10.0 ** -6 + 0.99,
                        eps_high=100.0)  # clip never active: the KL term alone moves the gradient
            g0 = expected_gradient(tree, pol, theta, group_size=group_size, spec=LossSpec(**base),
                                   theta_old=theta_old, method="enumerate").gradient
            for k, placement, importance in KL_ROWS:
                spec = LossSpec(**base, kl=k, kl_coef=1.0, kl_placement=placement, kl_importance=importance)
                g = expected_gradient(tree, pol, theta, group_size=group_size, spec=spec, theta_old=theta_old,
                                      method="enumerate").gradient - g0
                acc.setdefault((k, placement, importance, regime), []).append(_cos_rel(g.ravel(), target))
    rows = []
    for (k, placement, importance, regime), vals in acc.items():
        v = np.array(vals)
        rows.append(dict(estimator=k, placement=placement, importance=importance, regime=regime,
                         cosine=float(v[:, 0].mean()), cosine_min=float(v[:, 0].min()),
                         rel_error=float(v[:, 1].mean()), rel_error_max=float(v[:, 1].max())))
    return rows


def difficulty_bias(ps, group_sizes) -> dict:
    r"""GRPO's exact expected gradient as a multiple c(p) of :math:`\nabla J` on a one-token verifier tree.

    The tree has one prompt, tokens {EOS, answer}, max length 1, R = 1 for the
    answer; a tabular policy with success probability p. Every estimator's mean
    is parallel to :math:`\nabla J` there, so c(p) is a single number.
    """
    from refpg.sequences import LossSpec, TokenTree, expected_gradient, sequence_objective_gradient

    tree = TokenTree(1, 2, 1, lambda x, y: float(y[0] == 1), name="verifier_bandit")
    pol = tree.tabular_policy()
    out = {}
    for G in group_sizes:
        for label, fields in (("GRPO (Bessel, eps 1e-6)", dict(advantage="grpo")),
                              ("group mean (Dr. GRPO)", dict(advantage="group_mean")),
                              ("RLOO", dict(advantage="rloo"))):
            spec = LossSpec(**fields, aggregation="seq-mean-token-sum")
            cs = []
            for p in ps:
                theta = np.zeros(pol.theta_shape)
                theta[0, 1] = np.log(p / (1 - p))
                gJ = sequence_objective_gradient(tree, pol, theta).ravel()
                g = -expected_gradient(tree, pol, theta, group_size=G, spec=spec, method="enumerate").gradient.ravel()
                cs.append(float(g @ gJ / (gJ @ gJ)))
            out[(label, G)] = np.array(cs)
    return out


def run(*, quick: bool = False, out_dir="analysis/llm_pg") -> dict:
    out = prepare_out_dir(out_dir)
    L = 4 if quick else 5
    steps = 60 if quick else 150
    n_trees = 4 if quick else 20
    traj = length_bias(L, steps, Progress("llm_pg: exact training", steps * len(LENGTH_LOSSES)))

    # The losses scale the step differently (Dr. GRPO divides by L_norm), so lengths are compared at
    # equal J, not at equal step counts.
    fig, axes = new_figure(1, 3, figsize=(14, 4.2))
    for label, rows in traj.items():
        axes[0].plot(np.arange(len(rows)), rows[:, 0], label=label)
        axes[1].plot(rows[:, 0], rows[:, 2], label=label)
        axes[2].plot(rows[:, 0], rows[:, 3], label=label)
    axes[0].set_xlabel("exact gradient step")
    axes[0].set_title("J (probability of a right answer)")
    for ax, title in zip(axes[1:], ("expected length of wrong responses", "expected length of right responses")):
        ax.set_xlabel("J")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"length_bias_tree(max_length={L}), G = {GROUP_SIZE}, lr = {LEARNING_RATE}: exact training")
    save_figure(fig, out / "length_bias.png")

    ktab = kl_table(n_trees)
    fig, ax = new_figure(figsize=(9, 4))
    labels = [f"{r['estimator']} {r['placement']}{'' if r['importance'] == 'none' else '+IS'} {r['regime']}"
              for r in ktab]
    ax.bar(np.arange(len(ktab)), [r["cosine"] for r in ktab], color=["tab:blue" if r["regime"] == "on" else
                                                                     "tab:orange" for r in ktab])
    ax.set_xticks(np.arange(len(ktab)))
    ax.set_xticklabels(labels, rotation=70, fontsize=7)
    ax.set_ylabel(r"cosine with $\nabla KL_{seq}$")
    ax.set_title("Exact expected gradient of the KL term (blue: on-policy, orange: off-policy)")
    save_figure(fig, out / "kl_estimators.png")

    ps = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    Gs = (4, 8) if quick else (4, 8, 16)
    diff = difficulty_bias(ps, Gs)
    fig, ax = new_figure(figsize=(7, 4.2))
    for (label, G), cs in diff.items():
        ax.plot(ps, cs, marker="o", ms=3, label=f"{label}, G = {G}")
    ax.set_xlabel("success probability p of the prompt")
    ax.set_ylabel(r"E[gradient] / $\nabla J$")
    ax.set_yscale("log")
    ax.set_title("Difficulty bias: GRPO's std normalisation weights prompts by 1/std")
    ax.legend(fontsize=7)
    save_figure(fig, out / "difficulty_bias.png")

    level = 0.95
    at_level = {label: _at_J(rows, level) for label, rows in traj.items()}
    first = {label: rows[0] for label, rows in traj.items()}
    last = {label: rows[-1] for label, rows in traj.items()}
    len_rows = [[label, f"{first[label][0]:.3f} -> {last[label][0]:.3f}", f"{first[label][2]:.3f} -> {last[label][2]:.3f}",
                 f"{first[label][3]:.3f} -> {last[label][3]:.3f}", f"{at_level[label][0]:.3f}",
                 f"{at_level[label][1]:.3f}"] for label in traj]
    kl_rows = [[r["estimator"], r["placement"], r["importance"], r["regime"], f"{r['cosine']:.4f}",
                f"{r['cosine_min']:.4f}", f"{r['rel_error']:.3g}", f"{r['rel_error_max']:.3g}"] for r in ktab]
    grpo8 = diff[("GRPO (Bessel, eps 1e-6)", 8)]
    i_half, i_02 = int(np.argmin(abs(ps - 0.5))), int(np.argmin(abs(ps - 0.02)))
    diff_rows = [[label, G] + [f"{c:.3f}" for c in cs] for (label, G), cs in diff.items()]
    grpo_wrong = at_level["GRPO (std, seq-mean-token-mean)"][0]
    dr_wrong = at_level["Dr. GRPO (group mean, token-sum-norm)"][0]
    k1_reward_on = next(r for r in ktab if (r["estimator"], r["placement"], r["regime"]) == ("k1", "reward", "on"))
    k3_loss_on = next(r for r in ktab if (r["estimator"], r["placement"], r["importance"], r["regime"])
                      == ("k3", "loss", "none", "on"))
    report = f"""# Exact policy gradients for language models on token trees

Everything here is exact: the expected gradient of each loss is a finite sum
over every group of responses (`refpg.sequences.expected_gradient`), so no
curve carries sampling noise. {'Quick' if quick else 'Full'} mode.

## 1. Length bias [Liu2025]

`length_bias_tree(max_length={L})`: one prompt, tokens EOS / answer / filler;
R = 1 if the response states the answer. Exact gradient descent on the
expected loss, G = {GROUP_SIZE}, lr = {LEARNING_RATE}, {steps} steps from the uniform policy.

{md_table(["loss", "J", "mean length, wrong", "mean length, right", f"wrong at J = {level}",
           f"right at J = {level}"], len_rows)}

The losses scale the step differently (Dr. GRPO divides by L_norm = {L}), so the
lengths are compared at equal J = {level} (linear interpolation between steps).

**Headline.** At J = {level}, with GRPO's per-response token mean, wrong responses are
{grpo_wrong:.3f} tokens long on average (from {first['GRPO (std, seq-mean-token-mean)'][2]:.3f} at the start);
under Dr. GRPO's token sum they are {dr_wrong:.3f}: the length bias that
[Liu2025] (Section 3.1) attribute to the 1/length normalisation is reproduced
{'(wrong responses longer under GRPO)' if grpo_wrong > dr_wrong else '— NOT reproduced'}.
Right responses get shorter under GRPO, as the same paper argues
(a short right response gets a larger per-token reward).

![length bias](length_bias.png)

## 2. KL estimators as losses and as rewards [TangMunos2025], [Shah2025]

The KL term's exact expected gradient (the loss with beta = 1 minus the loss
without it; RLOO, seq-mean-token-sum, clip range wide enough never to act), against
grad KL_seq = KL(pi_theta || pi_ref) over whole sequences. Mean over {n_trees} random
trees (2 prompts, vocabulary 3, length 3, G = 2); off-policy: theta_old = theta + N(0, 0.5^2).
"+IS": the penalty multiplied by the differentiated ratio pi_theta/pi_old. A term whose
expected gradient is zero (k1 as a loss, on-policy) has cosine 0 and relative error 1.

{md_table(["estimator", "placement", "importance", "policy", "mean cosine", "min cosine",
           "mean rel. error", "max rel. error"], kl_rows)}

**Headline.** On-policy, k1 in the reward is exact (cosine {k1_reward_on['cosine']:.6f},
relative error {k1_reward_on['rel_error']:.1e}); k3 as a loss, the common default, has
mean cosine {k3_loss_on['cosine']:.3f} and relative error {k3_loss_on['rel_error']:.2f}: its
expectation is the local gradient of the forward KL, not of the KL it is meant to penalise.

![KL estimators](kl_estimators.png)

## 3. Difficulty bias of the std normalisation

One-token verifier tree with success probability p: every estimator's mean is
c(p) x grad J. RLOO gives 1, the group mean (G-1)/G; GRPO divides by the
group's std, so it weights prompts by about 1/sqrt(p(1-p)).

{md_table(["estimator", "G"] + [f"p={p:g}" for p in ps], diff_rows)}

**Headline.** With G = 8, GRPO's expected gradient is {grpo8[i_half]:.2f} x grad J at p = 0.5
and {grpo8[i_02]:.2f} x grad J at p = 0.02: a prompt that is rarely solved weighs
{grpo8[i_02] / grpo8[i_half]:.2f} times as much per unit of grad J as one solved half the time.

![difficulty bias](difficulty_bias.png)
"""
    (out / "report.md").write_text(report)
    return {
        "length_bias_J_level": level,
        "length_bias_grpo_wrong_length": (float(first["GRPO (std, seq-mean-token-mean)"][2]), float(grpo_wrong)),
        "length_bias_drgrpo_wrong_length": (float(first["Dr. GRPO (group mean, token-sum-norm)"][2]),
                                            float(dr_wrong)),
        "length_bias_reproduced": bool(grpo_wrong > dr_wrong),
        "kl_table": ktab,
        "k1_reward_on_policy_rel_error": k1_reward_on["rel_error"],
        "k3_loss_on_policy_cosine": k3_loss_on["cosine"],
        "grpo_G8_c_at_p0.5": float(grpo8[i_half]),
        "grpo_G8_c_at_p0.02": float(grpo8[i_02]),
    }

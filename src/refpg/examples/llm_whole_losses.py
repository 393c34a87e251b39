r"""Whole language-model policy-gradient losses, batch in, scalar out, as trainers write them.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``; each is
checked with ``check_llm_loss(fn, convention=..., backend=..., **options)``.
A function receives one batch (``logp``, ``old_logp``, ``ref_logp`` (n, L),
``rewards`` (n,), ``mask`` (n, L), ``group`` (n,) under the ``"refpg"``
convention; verl's field names under ``"verl"``) and returns the loss a
trainer backpropagates. Rows of a group need not be adjacent, so group
statistics are taken by group id (``index_add``), never by reshaping to
(-1, G).

The styles followed (written afresh, not copied): TRL's ``GRPOTrainer``
(group-normalised advantage with torch's Bessel-corrected std, PPO clip,
k3 penalty times the ratio, token-mean over the batch); Dr. GRPO [Liu2025]
(the group mean without the std, a constant length normaliser); RLOO
[Ahmadian2024]; verl's ``apply_kl_penalty`` (k1 of the rollout's
log-probabilities subtracted from the token rewards).

torch and jax are imported inside the functions, so this module imports without them.
"""

from __future__ import annotations

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]


# -- building blocks (torch) ---------------------------------------------------------------------

def _group_stats(rewards, group):
    """Per-response group mean, group size and group sum of squared deviations, by group id."""
    import torch

    n_groups = int(group.max()) + 1
    count = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group, torch.ones_like(rewards))
    total = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group, rewards)
    mean = (total / count)[group]
    dev = rewards - mean
    sq = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group, dev * dev)[group]
    return mean, count[group], sq


def _grpo_advantages(rewards, group, *, eps=1e-6, ddof=1):
    """(R - mean) / (std + eps) per group; 0 for a group whose rewards are all equal or of one response."""
    import torch

    mean, count, sq = _group_stats(rewards, group)
    std = torch.sqrt(sq / torch.clamp(count - ddof, min=1))
    dev = rewards - mean
    # A flat group has dev exactly 0 only if the mean is exact; where it is, the advantage is 0, not 0 / eps.
    return torch.where(dev != 0, dev / (std + eps), torch.zeros_like(dev))


def _clipped(logp, old_logp, adv, eps_low=0.2, eps_high=0.2):
    import torch

    ratio = torch.exp(logp - old_logp)
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv), ratio


# -- correct -------------------------------------------------------------------------------------

def trl_grpo_token_mean_k3(batch):
    r"""GRPO as TRL's ``GRPOTrainer`` writes it (``loss_type="bnpo"``): token-mean, k3 times the ratio.

    .. math::
        \ell_{i,t} = -\min(r_t A_i, \mathrm{clip}(r_t) A_i) + \beta\, r_t\,(e^{u_t} - 1 - u_t),\quad
        u_t = \log\pi_{ref} - \log\pi_\theta,\quad
        \mathrm{loss} = \frac{\sum_{i,t} m_{i,t}\ell_{i,t}}{\sum_{i,t} m_{i,t}}

    with :math:`A_i = (R_i - \bar R)/(\mathrm{std}(R) + 10^{-4})`, torch's std (Bessel), beta = 0.04.
    TRL multiplies the k3 term by the differentiable ratio (``use_bias_correction_kl``).
    """
    import torch

    logp, old, ref, mask = batch["logp"], batch["old_logp"], batch["ref_logp"], batch["mask"]
    adv = _grpo_advantages(batch["rewards"], batch["group"], eps=1e-4)[:, None]
    m = mask.to(logp.dtype)
    pg, ratio = _clipped(logp, old, adv)
    u = ref - logp
    per_token = pg + 0.04 * ratio * (torch.exp(u) - 1 - u)
    return (per_token * m).sum() / m.sum()


def dr_grpo_seq_mean_token_sum_norm(batch):
    r"""Dr. GRPO [Liu2025]: the group mean as baseline (no std), the token sum over a constant L_norm.

    .. math:: \mathrm{loss} = \frac{1}{n L}\sum_{i,t} m_{i,t}\,\big(-\min(r_t A_i, \mathrm{clip}(r_t) A_i)\big),
              \qquad A_i = R_i - \bar R

    L is the padded length (verl's default ``loss_scale_factor``).
    """
    logp, old, mask, R = batch["logp"], batch["old_logp"], batch["mask"], batch["rewards"]
    mean, _, _ = _group_stats(R, batch["group"])
    pg, _ = _clipped(logp, old, (R - mean)[:, None])
    m = mask.to(logp.dtype)
    return (pg * m).sum() / (logp.shape[0] * logp.shape[1])


def rloo_seq_mean_token_sum(batch):
    r"""RLOO [Ahmadian2024] summed over each response's tokens, averaged over responses: unbiased for -grad J.

    .. math:: A_i = R_i - \frac{1}{G-1}\sum_{j\ne i}R_j,\qquad
              \mathrm{loss} = \frac1n\sum_i\sum_t m_{i,t}\big(-\min(r_t A_i, \mathrm{clip}(r_t) A_i)\big)
    """
    logp, old, mask, R = batch["logp"], batch["old_logp"], batch["mask"], batch["rewards"]
    mean, count, _ = _group_stats(R, batch["group"])
    adv = (count * mean - R) / (count - 1)
    pg, _ = _clipped(logp, old, (R - adv)[:, None])
    return (pg * mask.to(logp.dtype)).sum(dim=1).mean()


def verl_rloo_k1_in_reward(batch):
    r"""verl's KL in the reward: k1 of the rollout's log-probs subtracted per token, then each token's
    advantage is its response's RLOO advantage minus the return-to-go of the penalty.

    .. math:: A_{i,t} = A^{RLOO}_i - \beta\sum_{t'\ge t} m_{i,t'}\,(\log\pi_{old} - \log\pi_{ref})_{i,t'}

    With seq-mean-token-sum, on-policy, the mean gradient is :math:`-(\nabla J - \beta\nabla KL_{seq})`
    exactly [TangMunos2025]. Written on verl's field names (``old_log_prob``, ``ref_log_prob``,
    ``response_mask``, ``token_level_scores``, ``uid``); beta = 0.1.
    """
    import numpy as np
    import torch

    logp, old, ref = batch["log_prob"], batch["old_log_prob"], batch["ref_log_prob"]
    m = batch["response_mask"].to(logp.dtype)
    scores = batch["token_level_scores"].sum(dim=-1)
    _, ids = np.unique(batch["uid"], return_inverse=True)
    group = torch.as_tensor(ids.reshape(-1), dtype=torch.long)
    mean, count, _ = _group_stats(scores, group)
    adv = scores - (count * mean - scores) / (count - 1)
    kl = (old - ref) * m
    to_go = torch.flip(torch.cumsum(torch.flip(kl, [1]), 1), [1])
    pg, _ = _clipped(logp, old, adv[:, None] - 0.1 * to_go)
    return (pg * m).sum(dim=1).mean()


def grpo_token_mean_jax(batch):
    r"""GRPO, token-mean, PPO clip, in JAX (vmappable: group statistics by ``segment_sum`` over n slots)."""
    import jax
    import jax.numpy as jnp

    logp, old, mask, R, g = batch["logp"], batch["old_logp"], batch["mask"], batch["rewards"], batch["group"]
    n = R.shape[0]
    count = jax.ops.segment_sum(jnp.ones_like(R), g, num_segments=n)
    mean = (jax.ops.segment_sum(R, g, num_segments=n) / jnp.maximum(count, 1))[g]
    dev = R - mean
    var = jax.ops.segment_sum(dev * dev, g, num_segments=n)[g] / jnp.maximum(count[g] - 1, 1)
    adv = jnp.where(dev != 0, dev / (jnp.sqrt(var) + 1e-6), 0.0)[:, None]
    ratio = jnp.exp(logp - old)
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv)
    m = mask.astype(logp.dtype)
    return (pg * m).sum() / m.sum()


# -- broken --------------------------------------------------------------------------------------

def rloo_declared_group_mean_computed(batch):
    """Declared RLOO, computes the group mean as baseline (R_i is in its own baseline): (G-1)/G x the gradient."""
    logp, old, mask, R = batch["logp"], batch["old_logp"], batch["mask"], batch["rewards"]
    mean, _, _ = _group_stats(R, batch["group"])
    pg, _ = _clipped(logp, old, (R - mean)[:, None])
    return (pg * mask.to(logp.dtype)).sum(dim=1).mean()


def grpo_population_std(batch):
    """GRPO whose std has no Bessel correction (ddof=0, NumPy's default) while torch's, declared, has it."""
    logp, old, mask = batch["logp"], batch["old_logp"], batch["mask"]
    adv = _grpo_advantages(batch["rewards"], batch["group"], ddof=0)[:, None]
    pg, _ = _clipped(logp, old, adv)
    m = mask.to(logp.dtype)
    return (pg * m).sum() / m.sum()


def token_mean_declared_seq_mean_token_mean(batch):
    """Declared seq-mean-token-mean (each response weighs 1/n), computes token-mean (weight |y_i|/sum |y|)."""
    logp, old, mask = batch["logp"], batch["old_logp"], batch["mask"]
    adv = _grpo_advantages(batch["rewards"], batch["group"])[:, None]
    pg, _ = _clipped(logp, old, adv)
    m = mask.to(logp.dtype)
    return (pg * m).sum() / m.sum()


def kl_sign_flipped(batch):
    """The k2 penalty subtracted instead of added: the loss rewards moving away from pi_ref (the sign
    error of volcengine/verl PR #179)."""
    logp, old, ref, mask = batch["logp"], batch["old_logp"], batch["ref_logp"], batch["mask"]
    adv = _grpo_advantages(batch["rewards"], batch["group"])[:, None]
    pg, _ = _clipped(logp, old, adv)
    u = ref - logp
    per_token = pg - 0.5 * (u * u / 2)
    m = mask.to(logp.dtype)
    return (per_token * m).sum() / m.sum()


def k3_loss_declared_unbiased(batch):
    """RLOO with k3 as a loss, declared unbiased for the KL-regularised objective: k3's gradient is that
    of the forward KL's local term, not of KL_seq."""
    import torch

    logp, old, ref, mask, R = batch["logp"], batch["old_logp"], batch["ref_logp"], batch["mask"], batch["rewards"]
    mean, count, _ = _group_stats(R, batch["group"])
    adv = (R - (count * mean - R) / (count - 1))[:, None]
    pg, _ = _clipped(logp, old, adv)
    u = ref - logp
    per_token = pg + 0.5 * (torch.exp(u) - 1 - u)
    return (per_token * mask.to(logp.dtype)).sum(dim=1).mean()


def padding_leaks(batch):
    """token-mean over the real tokens, but the per-token loss is summed over every position, padding
    included: a padded ratio exp(logp - old_logp) enters the loss."""
    logp, old, mask = batch["logp"], batch["old_logp"], batch["mask"]
    adv = _grpo_advantages(batch["rewards"], batch["group"])[:, None]
    pg, _ = _clipped(logp, old, adv)
    return pg.sum() / mask.sum()


def grpo_std_without_eps(batch):
    """(R - mean) / std with no eps and no guard: 0 / 0 = NaN on a group whose rewards are all equal."""
    import torch

    logp, old, mask, R, g = batch["logp"], batch["old_logp"], batch["mask"], batch["rewards"], batch["group"]
    mean, count, sq = _group_stats(R, g)
    adv = ((R - mean) / torch.sqrt(sq / (count - 1)))[:, None]
    pg, _ = _clipped(logp, old, adv)
    m = mask.to(logp.dtype)
    return (pg * m).sum() / m.sum()


def grpo_groups_by_position(batch):
    """GRPO whose groups are taken by position, ``rewards.view(-1, G)``: right only when every group's rows
    are adjacent and in order."""
    import torch

    logp, old, mask, R = batch["logp"], batch["old_logp"], batch["mask"], batch["rewards"]
    grouped = R.view(-1, 4)
    std = grouped.std(dim=1, keepdim=True)
    adv = ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + 1e-6)).reshape(-1)
    adv = torch.where(std.expand_as(grouped).reshape(-1) > 0, adv, torch.zeros_like(adv))[:, None]
    pg, _ = _clipped(logp, old, adv)
    m = mask.to(logp.dtype)
    return (pg * m).sum() / m.sum()


_GRPO_TRL = dict(advantage="grpo", adv_eps=1e-4, aggregation="token-mean", kl="k3", kl_coef=0.04,
                 kl_importance="differentiated")

CORRECT = (
    Example("trl_grpo_token_mean_k3", "llm_loss", trl_grpo_token_mean_k3, "refpg", "torch", _GRPO_TRL,
            description="GRPO as TRL's GRPOTrainer writes it: Bessel std + 1e-4, PPO clip, k3 x ratio in the "
                        "loss, token-mean (TRL trl/trainer/grpo_trainer.py, loss_type='bnpo')"),
    Example("dr_grpo_seq_mean_token_sum_norm", "llm_loss", dr_grpo_seq_mean_token_sum_norm, "refpg", "torch",
            dict(advantage="group_mean", aggregation="seq-mean-token-sum-norm"),
            description="Dr. GRPO (Liu et al. 2025): group-mean baseline, token sum over a constant length"),
    Example("rloo_seq_mean_token_sum_unbiased", "llm_loss", rloo_seq_mean_token_sum, "refpg", "torch",
            dict(advantage="rloo", aggregation="seq-mean-token-sum", target="unbiased"),
            description="RLOO (Ahmadian et al. 2024), token sum per response, mean over responses: unbiased "
                        "for -grad J on-policy"),
    Example("verl_rloo_k1_in_reward", "llm_loss", verl_rloo_k1_in_reward, "verl", "torch",
            dict(advantage="rloo", aggregation="seq-mean-token-sum", kl="k1", kl_coef=0.1, kl_placement="reward",
                 target="unbiased"),
            description="verl's apply_kl_penalty (k1 of the rollout's log-probs in the token rewards) with a "
                        "return-to-go and RLOO: unbiased for -(grad J - beta grad KL_seq)"),
    Example("grpo_token_mean_jax", "llm_loss", grpo_token_mean_jax, "refpg", "jax",
            dict(advantage="grpo", aggregation="token-mean"),
            description="GRPO token-mean in JAX, group statistics by segment_sum (vmapped over batches)"),
)

BROKEN = (
    Example("rloo_declared_group_mean_computed", "llm_loss", rloo_declared_group_mean_computed, "refpg", "torch",
            dict(advantage="rloo", aggregation="seq-mean-token-sum"), expected="llm_loss.mean_gradient",
            description="RLOO declared, the group mean computed (R_i in its own baseline: (G-1)/G x grad J; "
                        "thinking-machines-lab/tinker-cookbook PR #135 on this (G-1)/G bias)"),
    Example("grpo_population_std", "llm_loss", grpo_population_std, "refpg", "torch",
            dict(advantage="grpo", std="bessel"), expected="llm_loss.mean_gradient",
            description="GRPO's std without Bessel's correction where torch's (Bessel, as TRL's nanstd) is declared: "
                        "advantages sqrt(G/(G-1)) x too large (huggingface/trl PR #5773 review on nanstd's Bessel "
                        "correction)"),
    Example("token_mean_declared_seq_mean_token_mean", "llm_loss", token_mean_declared_seq_mean_token_mean,
            "refpg", "torch", dict(advantage="grpo", aggregation="seq-mean-token-mean"),
            expected="llm_loss.mean_gradient",
            description="seq-mean-token-mean declared, token-mean computed: long responses weigh more, the length "
                        "bias of Dr. GRPO (Liu et al. 2025, Section 3.1; huggingface/trl PR #3138, PR #3256)"),
    Example("kl_sign_flipped", "llm_loss", kl_sign_flipped, "refpg", "torch",
            dict(advantage="grpo", kl="k2", kl_coef=0.5), expected="llm_loss.mean_gradient",
            description="the KL penalty with its sign flipped, pushing away from pi_ref (volcengine/verl PR #179)"),
    Example("k3_loss_declared_unbiased", "llm_loss", k3_loss_declared_unbiased, "refpg", "torch",
            dict(advantage="rloo", aggregation="seq-mean-token-sum", kl="k3", kl_coef=0.5, target="unbiased"),
            expected="llm_loss.mean_gradient",
            description="k3 as a loss declared unbiased for the KL-regularised objective: its gradient is the "
                        "forward KL's local one (verl-project/verl PR #2953 discussion; OpenRLHF/OpenRLHF PR #1309)"),
    Example("padding_leaks", "llm_loss", padding_leaks, "refpg", "torch", dict(advantage="grpo"),
            expected="llm_loss.masked_positions",
            description="the per-token loss summed over the padding too (huggingface/trl PR #6654: padded "
                        "positions leaking into the loss)"),
    Example("grpo_groups_by_position", "llm_loss", grpo_groups_by_position, "refpg", "torch",
            dict(advantage="grpo"), expected="llm_loss.group_order",
            description="groups taken by position with view(-1, G) on a batch whose groups are not contiguous "
                        "(radixark/miles PR #1573 review: incorrect grouping on interleaved batches)"),
    Example("grpo_std_without_eps", "llm_loss", grpo_std_without_eps, "refpg", "torch", dict(advantage="grpo"),
            expected="llm_loss.finite",
            description="(R - mean) / std without eps: NaN on a group whose rewards are all equal (radixark/miles "
                        "PR #1573 review: NaN on degenerate groups; radixark/miles_diffusion PR #253)"),
)

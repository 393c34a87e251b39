r"""PPO-loss variants of real projects: dual clip (verl), the 'active' clip fraction (TRL, verl, OpenRLHF),
per-minibatch normalisation with ddof = 0 (CleanRL's JAX scripts, PureJaxRL).

Each function is written afresh in its project's style (the projects' code is not copied). The dual
clip [Ye2020] bounds the objective of a sample with A < 0 below by c A:

.. math::
    \ell_i = -\max\big(\min(r_i A_i,\ \mathrm{clip}(r_i, 1 - \epsilon_{low}, 1 + \epsilon_{high}) A_i),\ c A_i\big)
    \quad (A_i < 0), \qquad
    \ell_i = -\min(r_i A_i,\ \mathrm{clip}(r_i, \dots) A_i) \quad (A_i \ge 0).

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``; torch and jax are imported inside
the functions, so this module imports without them.
"""

from __future__ import annotations

import functools

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]


# -- verl: dual clip ------------------------------------------------------------------------------

def _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange, *, cliprange_low=None,
                      cliprange_high=None, clip_ratio_c=3.0, dual="negative"):
    """verl's compute_policy_loss shape, torch: per-token losses averaged over the response mask ("token-mean").

    `dual` is the choice the bugs get wrong: "negative" (right), "all" (the bound applied to every
    sample) or "min" (the bound taken with the wrong extremum), "none" (no dual clip).
    """
    import torch

    low = cliprange if cliprange_low is None else cliprange_low
    high = cliprange if cliprange_high is None else cliprange_high
    # verl clamps the log-ratio for stability; the check's ratios stay far inside +-20.
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    # Active clipping: the clipped loss is the larger one, which depends on the sign of A.
    def masked_mean(x):
        # verl's masked_mean: the count gets 1e-8, so an all-zero mask gives 0, not NaN (count_eps=1e-8).
        return (x * response_mask).sum() / (response_mask.sum() + 1e-8)

    clipfrac = masked_mean(torch.gt(loss_clipped, loss_unclipped).float())
    # The dual clip caps the loss (bounds the objective below) at -c A where A < 0.
    loss_dual = -advantages * clip_ratio_c
    if dual == "min":
        capped = torch.maximum(loss_ppo, loss_dual)
    else:
        capped = torch.minimum(loss_ppo, loss_dual)
    clipfrac_lower = masked_mean((torch.gt(loss_ppo, loss_dual) & (advantages < 0)).float())
    if dual == "none":
        per_sample = loss_ppo
    elif dual == "all":
        per_sample = capped
    else:
        per_sample = torch.where(advantages < 0, capped, loss_ppo)
    return masked_mean(per_sample), clipfrac, masked_mean(-log_ratio), clipfrac_lower


def ppo_loss_verl_dual_clip_torch(old_log_prob, log_prob, advantages, response_mask, cliprange):
    r"""Dual-clip PPO as verl's ``compute_policy_loss`` computes it (clip_ratio_c = 3), torch.

    Returns
    -------
    (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower) : 0-d Tensors
        The loss, the fraction of samples whose clipped term is active, the
        mean of -log r, and the fraction where the dual clip is active.

    References
    ----------
    [Ye2020]; verl ``trainer/ppo/core_algos.py`` (dual clip added by verl-project/verl PR #784).
    """
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange)


def ppo_loss_verl_dapo_torch(old_log_prob, log_prob, advantages, response_mask, cliprange):
    r"""verl's loss with DAPO's "clip-higher" range: ``cliprange_high = 0.28``, the low side from `cliprange`.

    References
    ----------
    [Yu2025]; verl ``recipe/dapo`` (clip_ratio_low = 0.2, clip_ratio_high = 0.28).
    """
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange, cliprange_high=0.28)


def ppo_loss_dual_clip_all_signs(old_log_prob, log_prob, advantages, response_mask, cliprange):
    """The dual-clip bound applied to positive advantages too: every A > 0 term becomes -c A (tianshou issue #433)."""
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange, dual="all")


def ppo_loss_dual_clip_missing(old_log_prob, log_prob, advantages, response_mask, cliprange):
    """Plain PPO where the dual clip is declared: A < 0 with a huge ratio is unbounded (verl issue #783)."""
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange, dual="none")


def ppo_loss_dual_clip_wrong_extremum(old_log_prob, log_prob, advantages, response_mask, cliprange):
    """The dual-clip bound taken with max instead of min on the losses (min instead of max on the objective)."""
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange, dual="min")


# -- TRL: the active clip fraction ------------------------------------------------------------------

def _trl_policy_loss(logp_new, logp_old, advantages, clip_eps, *, active=True):
    """TRL's GRPO-trainer form, torch: coef_1 = r, coef_2 = clip(r); the fraction is TRL's clip_ratio."""
    import torch

    coef_1 = torch.exp(logp_new - logp_old)
    coef_2 = torch.clamp(coef_1, 1 - clip_eps, 1 + clip_eps)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if active:
        # Clipped only where the clipped term is the one the min takes (huggingface/trl PR #3175).
        is_low_clipped = (coef_1 < 1 - clip_eps) & (advantages < 0)
        is_high_clipped = (coef_1 > 1 + clip_eps) & (advantages > 0)
        is_clipped = is_low_clipped | is_high_clipped
    else:
        is_clipped = (coef_1 < 1 - clip_eps) | (coef_1 > 1 + clip_eps)
    return {"loss": per_token_loss.mean(), "clip_fraction": is_clipped.float().mean()}


def ppo_loss_trl_active_fraction_torch(logp_new, logp_old, advantages, clip_eps):
    r"""PPO's clipped loss in TRL's style, torch, reporting the *active* clip fraction.

    Returns
    -------
    dict
        ``{"loss": 0-d Tensor, "clip_fraction": 0-d Tensor}``, the fraction of
        samples with A > 0 and r > 1 + eps or A < 0 and r < 1 - eps.

    References
    ----------
    [Schulman2017] Eq. (7); TRL ``trainer/grpo_trainer.py`` (huggingface/trl PR #3175).
    """
    return _trl_policy_loss(logp_new, logp_old, advantages, clip_eps)


def ppo_loss_trl_fraction_ignores_sign(logp_new, logp_old, advantages, clip_eps):
    """Counts |r - 1| > eps as clipped while declaring the active fraction (TRL before PR #3175)."""
    return _trl_policy_loss(logp_new, logp_old, advantages, clip_eps, active=False)


# -- CleanRL's JAX scripts / PureJaxRL: normalisation with ddof = 0 ------------------------------------

def _cleanrl_jax_policy_loss(logp_new, logp_old, advantages, clip_eps, *, ddof=0):
    """CleanRL ppo_*_jax / PureJaxRL's actor loss, jax.numpy (jitted by `_jitted`)."""
    import jax.numpy as jnp

    # Normalised per minibatch with the population std (jnp.std's default, ddof = 0).
    mb_advantages = (advantages - advantages.mean()) / (jnp.std(advantages, ddof=ddof) + 1e-8)
    ratio = jnp.exp(logp_new - logp_old)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps)
    return jnp.maximum(pg_loss1, pg_loss2).mean()


@functools.lru_cache(maxsize=None)
def _jitted(ddof: int):
    """The loss above under jax.jit, built on first use (this module imports without JAX)."""
    import jax

    return jax.jit(functools.partial(_cleanrl_jax_policy_loss, ddof=ddof))


def ppo_loss_cleanrl_jax(logp_new, logp_old, advantages, clip_eps):
    r"""PPO's clipped loss as CleanRL's JAX scripts and PureJaxRL compute it, jitted.

    .. math::
        \mathcal L = \frac1n \sum_i \max\big(-\hat A_i r_i,\ -\hat A_i\,\mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon)\big),
        \qquad \hat A = \frac{A - \bar A}{\mathrm{std}_{ddof=0}(A) + 10^{-8}}

    References
    ----------
    [Schulman2017] Eq. (7); CleanRL ``cleanrl/ppo_atari_envpool_xla_jax_scan.py``; PureJaxRL ``ppo.py``.
    """
    return _jitted(0)(logp_new, logp_old, advantages, clip_eps)


def ppo_loss_cleanrl_jax_ddof1(logp_new, logp_old, advantages, clip_eps):
    """torch's std habit (ddof = 1) in a JAX-convention loss: the sample std where jnp.std's population std belongs."""
    return _jitted(1)(logp_new, logp_old, advantages, clip_eps)


CORRECT: tuple[Example, ...] = (
    Example("ppo_loss_verl_dual_clip_torch", "ppo_loss", ppo_loss_verl_dual_clip_torch, "verl", "torch", {}, None,
            "verl's compute_policy_loss: dual clip at c = 3, returns (loss, active clip fraction, ppo_kl, "
            "dual-clip fraction)"),
    Example("ppo_loss_verl_dapo_torch", "ppo_loss", ppo_loss_verl_dapo_torch, "verl", "torch",
            {"eps_high": 0.28}, None, "verl's loss with DAPO's clip-higher range [1 - eps, 1.28]"),
    Example("ppo_loss_trl_active_fraction_torch", "ppo_loss", ppo_loss_trl_active_fraction_torch, "refpg", "torch",
            {"clip_fraction": "active"}, None,
            "TRL's clipped loss with the active clip fraction (huggingface/trl PR #3175)"),
    Example("ppo_loss_cleanrl_jax", "ppo_loss", ppo_loss_cleanrl_jax, "cleanrl_jax", "jax", {}, None,
            "CleanRL's JAX scripts / PureJaxRL: minibatch-normalised advantages with ddof = 0"),
)

BROKEN: tuple[Example, ...] = (
    Example("ppo_loss_dual_clip_all_signs", "ppo_loss", ppo_loss_dual_clip_all_signs, "verl", "torch", {},
            "ppo_loss.dual_clip",
            "dual clip max(..., c * A) applied to positive advantages too (thu-ml/tianshou issue #433)"),
    Example("ppo_loss_dual_clip_missing", "ppo_loss", ppo_loss_dual_clip_missing, "verl", "torch", {},
            "ppo_loss.dual_clip",
            "no dual clip where one is declared: A < 0 with a huge ratio is unbounded (verl-project/verl issue "
            "#783, fixed by PR #784)"),
    Example("ppo_loss_dual_clip_wrong_extremum", "ppo_loss", ppo_loss_dual_clip_wrong_extremum, "verl", "torch", {},
            "ppo_loss.dual_clip",
            "dual-clip bound taken with max instead of min on the losses: every A < 0 term below the bound "
            "becomes -c * A (a plausible slip; no public report)"),
    Example("ppo_loss_trl_fraction_ignores_sign", "ppo_loss", ppo_loss_trl_fraction_ignores_sign, "refpg", "torch",
            {"clip_fraction": "active"}, "ppo_loss.clip_fraction",
            "clip fraction counting |r - 1| > eps while the active fraction is declared (TRL before "
            "huggingface/trl PR #3175)"),
    Example("ppo_loss_cleanrl_jax_ddof1", "ppo_loss", ppo_loss_cleanrl_jax_ddof1, "cleanrl_jax", "jax", {},
            "ppo_loss.inside_clip_range",
            "advantages normalised with torch's ddof = 1 std under the jnp.std (ddof = 0) convention (the "
            "ddof mismatch of NVIDIA/TorchFort issue #38, there the other way round)"),
)

r"""Deliberately broken implementations: each is one realistic bug away from `refpg.examples.correct`.

Each function is a correct example with one thing changed: an argument
passed in the wrong place, a flag of a shared helper flipped, or a term
dropped. Its docstring names the bug, its effect, and the conformance check
that catches it (the ``expected`` of its registry entry in `refpg.examples`);
where the bug has been reported in a real library, the registry's
description cites the report.

Some entries of the registry reuse a correct function with a false
declaration (k1 declared non-negative, REINFORCE without gamma^t declared as
the discounted gradient): there the bug is the claim, not the code, so no
function appears here for them.
"""

from __future__ import annotations

import numpy as np

from refpg.examples import correct

__all__ = [
    "gae_torchrl_done_as_terminated",
    "gae_timeout_bootstraps_own_value",
    "gae_cut_on_terminated_only",
    "gae_done_in_delta",
    "gae_bootstraps_terminal",
    "gae_no_lambda",
    "gae_sb3_starts_not_shifted",
    "gae_cleanrl_ignores_next_done",
    "gae_torchrl_terminated_as_done",
    "gae_mutates_next_values",
    "gae_flattened",
    "ppo_loss_max",
    "ppo_loss_clip_upper_only",
    "ppo_loss_ratio_inverted",
    "ppo_loss_wrong_sign",
    "ppo_loss_sb3_upper_clip_fraction",
    "ppo_loss_sb3_no_single_guard",
    "ppo_loss_detached_clipped_branch",
    "value_loss_cleanrl_min",
    "value_loss_cleanrl_clip_around_returns",
    "value_loss_missing_half",
    "kl_k3_ratio_inverted",
    "kl_k1_sign_flipped",
    "reinforce_action_baseline",
    "reinforce_uncentred_score",
    "reinforce_next_return",
    "trpo_no_kl_check",
    "trpo_keeps_last_try",
    "trpo_negative_curvature",
    "trpo_vanilla_gradient",
    "trpo_descends",
]


# -- GAE ------------------------------------------------------------------------------

def gae_torchrl_done_as_terminated(gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    r"""TorchRL GAE called with ``terminated=done``: a time limit is treated as a termination.

    :math:`\delta_t` of a truncated step loses :math:`\gamma V(s_{t+1})`.
    Caught by ``gae.truncation_bootstrapped``.
    """
    return correct.gae_torchrl_torch(gamma, lmbda, state_value, next_state_value, reward, done, done)


def gae_truncation_as_termination(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""Every episode end treated as a termination: ``terminated | truncated`` passed as terminated.

    :math:`\delta_t` of a time-limit step loses :math:`\gamma V(s_{t+1})`, as
    in on-policy SB3 before its timeout handling. Caught by ``gae.truncation_bootstrapped``.
    """
    return correct.gae_refpg_numpy(rewards, values, next_values, terminated | truncated,
                                   np.zeros_like(truncated), gamma, lam)


def gae_timeout_bootstraps_own_value(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""A time limit bootstraps from :math:`V(s_t)`, the value before the action, not :math:`V(s_{t+1})`.

    Happens when the final observation was lost to the automatic reset and
    the value at hand is the current one. Caught by ``gae.truncation_bootstrapped``.
    """
    return correct.gae_refpg_numpy(rewards, values, np.where(truncated, values, next_values), terminated,
                                   truncated, gamma, lam)


def gae_cut_on_terminated_only(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""``terminated`` used where ``done`` was meant in the recursion's cut.

    :math:`\hat A_t = \delta_t + \gamma\lambda(1 - \mathrm{terminated}_t)\hat A_{t+1}`:
    the bootstrap is right, but at a time limit the advantage of the *next*
    episode flows back into this one. Caught by ``gae.no_flow_across_episodes``.
    """
    return correct.gae_refpg_numpy(rewards, values, next_values, terminated, np.zeros_like(truncated),
                                   gamma, lam)


def gae_done_in_delta(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""``done = terminated | truncated`` used where ``terminated`` was meant in :math:`\delta_t`.

    The cut is right (it is ``done``), but a time limit is not bootstrapped.
    Caught by ``gae.truncation_bootstrapped``.
    """
    return correct.gae_refpg_torch(rewards, values, next_values, terminated | truncated, truncated,
                                   gamma, lam)


def gae_bootstraps_terminal(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""Every episode end is bootstrapped, terminations included.

    :math:`\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)` after a termination
    too, with whatever the critic says about the terminal observation.
    Caught by ``gae.terminal_not_bootstrapped``.
    """
    return correct.gae_refpg_numpy(rewards, values, next_values, np.zeros_like(terminated),
                                   terminated | truncated, gamma, lam)


def gae_no_lambda(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""lambda missing from the recursion: :math:`\hat A_t = \delta_t + \gamma(1 - \mathrm{done}_t)\hat A_{t+1}`.

    That is GAE(gamma, 1) whatever `lam` is. Caught by ``gae.recursion``
    (on every draw with lam != 1).
    """
    return correct.gae_refpg_torch(rewards, values, next_values, terminated, truncated, gamma, 1.0)


def gae_sb3_starts_not_shifted(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
    r"""SB3's loop reading ``episode_starts[t]`` where ``episode_starts[t + 1]`` is meant.

    Whether transition t ended its episode is the start flag of row t + 1;
    row t's own flag says whether transition t - 1 did. So a terminal step
    bootstraps from the next episode's first value, and the first step of
    every episode is cut instead. Caught by ``gae.terminal_not_bootstrapped``;
    it also fails ``gae.truncation_bootstrapped``, ``gae.no_flow_across_episodes``
    and, when ``episode_starts[0] = 1``, ``gae.recursion``.
    """
    return correct._next_value_loop(rewards, values, episode_starts, last_values, dones, gamma,
                                    gae_lambda, np.zeros_like(rewards), start_lag=0)


def gae_cleanrl_ignores_next_done(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    r"""CleanRL's loop without ``next_done``: the last row always bootstraps from ``next_value``.

    When the rollout's last transition terminated, ``next_value`` is the
    value of the reset observation of a new episode. Caught by
    ``gae.terminal_not_bootstrapped`` (termination at the last row).
    """
    import torch

    return correct.gae_cleanrl_torch(rewards, values, dones, next_value, torch.zeros_like(next_done),
                                     gamma, gae_lambda)


def gae_torchrl_terminated_as_done(gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    r"""TorchRL GAE called with ``done=terminated``: the recursion is cut at terminations only.

    The bootstrap of a time limit is right, but the next episode's advantage
    flows back across it. Caught by ``gae.no_flow_across_episodes``.
    """
    return correct.gae_torchrl_torch(gamma, lmbda, state_value, next_state_value, reward, terminated,
                                     terminated)


def gae_mutates_next_values(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""Zeroes the caller's ``next_values`` at terminations, in place, before a correct GAE.

    The advantages are right (terminal values are ignored anyway), but the
    caller's critic outputs have changed. Caught by ``gae.input_mutated``.
    """
    next_values[terminated] = 0.0
    return correct.gae_refpg_numpy(rewards, values, next_values, terminated, truncated, gamma, lam)


def gae_flattened(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""Returns the advantages flattened to shape (T * N,), as a flat minibatch buffer holds them.

    Caught by ``gae.output_shape``.
    """
    return correct.gae_refpg_numpy(rewards, values, next_values, terminated, truncated, gamma,
                                   lam).reshape(-1)


# -- PPO clipped loss ----------------------------------------------------------------

def ppo_loss_max(logp_new, logp_old, advantages, clip_eps):
    r"""max instead of min: :math:`-\mathrm{mean}\,\max(r A, \mathrm{clip}(r) A)`, the optimistic bound.

    Equal to the correct loss while every ratio is inside the clip range.
    Caught by ``ppo_loss.outside_clip_range``.
    """
    return correct._ppo_clip_loss_np(np.exp(logp_new - logp_old), advantages, clip_eps, pick=np.maximum)


def ppo_loss_clip_upper_only(logp_new, logp_old, advantages, clip_eps):
    r"""The ratio is clipped above only, ``clip(r, None, 1 + eps)``.

    Wrong where :math:`A < 0` and :math:`r < 1 - \epsilon`: the loss keeps
    falling as the action is made ever less likely. Caught by
    ``ppo_loss.outside_clip_range``.
    """
    return correct._ppo_clip_loss_np(np.exp(logp_new - logp_old), advantages, clip_eps, clip_low=False)


def ppo_loss_ratio_inverted(logp_new, logp_old, advantages, clip_eps):
    r"""Log-probabilities passed in the wrong order: :math:`r = \pi_{old}/\pi_{new}`.

    Caught by ``ppo_loss.inside_clip_range``.
    """
    return correct.ppo_loss_refpg_numpy(logp_old, logp_new, advantages, clip_eps)


def ppo_loss_wrong_sign(logp_new, logp_old, advantages, clip_eps):
    r"""Returns the objective :math:`L^{CLIP}` where the loss :math:`-L^{CLIP}` is expected.

    A minimiser then makes advantageous actions less likely. Caught by
    ``ppo_loss.inside_clip_range``.
    """
    return -correct.ppo_loss_refpg_numpy(logp_new, logp_old, advantages, clip_eps)


def _upper_fraction(ratio, clip_eps) -> float:
    import torch

    return torch.mean((ratio > 1 + clip_eps).float()).item()


def ppo_loss_sb3_upper_clip_fraction(logp_new, logp_old, advantages, clip_eps):
    r"""SB3's loss with a clip fraction that counts only :math:`r > 1 + \epsilon`.

    The loss is right; ratios below :math:`1 - \epsilon` are missing from
    the logged fraction. Caught by ``ppo_loss.clip_fraction``.
    """
    return correct._sb3_policy_loss(logp_new, logp_old, advantages, clip_eps, clip_fraction=_upper_fraction)


def ppo_loss_sb3_no_single_guard(logp_new, logp_old, advantages, clip_eps):
    r"""SB3's loss normalising the advantages even for a batch of one: ``std()`` (ddof=1) is NaN.

    The loss is NaN on a one-sample batch. Caught by ``ppo_loss.output_finite``.
    """
    return correct._sb3_policy_loss(logp_new, logp_old, advantages, clip_eps, single_guard=False)


def ppo_loss_detached_clipped_branch(logp_new, logp_old, advantages, clip_eps):
    r"""The clipped branch uses ``ratio.detach()``: the value is right, the gradient is not.

    Inside the clip range both branches of the min are equal and torch
    splits the gradient evenly between them, so half of it is lost there.
    Caught by ``ppo_loss.gradient``.
    """
    import torch

    return correct._ppo_clip_loss_torch(torch.exp(logp_new - logp_old), advantages, clip_eps,
                                        detach_clipped=True)


# -- value loss ------------------------------------------------------------------------

def value_loss_cleanrl_min(values_new, values_old, returns, clip_eps):
    r"""CleanRL's clipped value loss with min instead of max: the optimistic loss.

    Caught by ``value_loss.value``.
    """
    return correct._clipped_value_loss_torch(values_new, values_old, returns, clip_eps, pick="min")


def value_loss_cleanrl_clip_around_returns(values_new, values_old, returns, clip_eps):
    r"""CleanRL's clipped value loss with the prediction clipped around the returns, not the old values.

    :math:`(R + \mathrm{clip}(V - R, -\epsilon, \epsilon) - R)^2 \le (V - R)^2`,
    so the max is always the unclipped loss. Caught by ``value_loss.value``.
    """
    return correct._clipped_value_loss_torch(values_new, values_old, returns, clip_eps, around="returns")


def value_loss_missing_half(values_new, values_old, returns, clip_eps):
    r"""The unclipped value loss without its 1/2: :math:`\frac1n\sum_i (V_i - R_i)^2`.

    Twice the loss of the declared convention. Caught by ``value_loss.value``.
    """
    return np.mean((values_new - returns) ** 2)


# -- KL estimators ---------------------------------------------------------------------

def kl_k3_ratio_inverted(logp_new, logp_old):
    r"""k3 with the log-probabilities swapped: :math:`(1/r - 1) + \log r`, declared unbiased.

    Its mean under :math:`\pi_{old}` is :math:`\chi^2(\pi_{old}\|\pi_{new}) - D_{KL}(\pi_{old}\|\pi_{new})`,
    not the KL (it estimates :math:`D_{KL}(\pi_{new}\|\pi_{old})` only on samples
    from :math:`\pi_{new}`). Caught by ``kl_estimator.unbiased``.
    """
    return correct.kl_k3_mean_torch(logp_old, logp_new)


def kl_k1_sign_flipped(logp_new, logp_old):
    r"""k1 with the sign flipped: :math:`\log r`, whose mean is :math:`-D_{KL}`.

    Caught by ``kl_estimator.unbiased``.
    """
    return logp_new - logp_old


# -- REINFORCE ---------------------------------------------------------------------------

def reinforce_action_baseline(theta, episodes, gamma):
    r"""REINFORCE with a baseline per (state, action): the leave-one-out mean return of (s, a).

    A baseline that depends on the action is a Q-estimate subtracted inside
    the score: :math:`\mathbb E[\nabla\log\pi(a|s)\, b(s, a)] \ne 0`, so the
    estimate is biased towards 0. Caught by ``reinforce_estimator.unbiased``.
    """
    return correct._reinforce_numpy(theta, episodes, gamma, baseline="state_action")


def reinforce_uncentred_score(theta, episodes, gamma):
    r"""REINFORCE with :math:`\nabla_{\theta_s}\log\pi(a|s) = e_a`, the :math:`-\pi(\cdot|s)` term missing.

    The rows no longer sum to 0. Caught by ``reinforce_estimator.row_sums_zero``.
    """
    return correct._reinforce_numpy(theta, episodes, gamma, score_centered=False)


def reinforce_next_return(theta, episodes, gamma):
    r"""REINFORCE weighting step t by :math:`G_{t+1}`, the return-to-go off by one.

    Drops the reward of the step itself: :math:`\mathbb E[\nabla\log\pi(a_t|s_t) r_t] \ne 0`.
    Caught by ``reinforce_estimator.unbiased``.
    """
    return correct._reinforce_numpy(theta, episodes, gamma, return_lag=1)


# -- TRPO --------------------------------------------------------------------------------

def trpo_no_kl_check(theta_old, states, actions, advantages, max_kl):
    r"""A line search that accepts the first candidate improving the surrogate, never testing the KL.

    The quadratic model puts the full step at KL = max_kl; the true KL can be
    larger. Caught by ``trpo_step.kl_constraint``.
    """
    return correct._trpo_numpy(theta_old, states, actions, advantages, max_kl, check_kl=False)


def trpo_keeps_last_try(theta_old, states, actions, advantages, max_kl):
    r"""When the line search accepts nothing, theta keeps the last candidate it tried.

    Caught by ``trpo_step.restores_theta_on_reject``.
    """
    return correct._trpo_numpy(theta_old, states, actions, advantages, max_kl, on_reject="keep_last")


def trpo_negative_curvature(theta_old, states, actions, advantages, max_kl):
    r"""Step-size curvature from the Hessian of the mean log-likelihood, :math:`-F`: sqrt of a negative.

    The direction is right, but :math:`s^\top(-F)s < 0`, so :math:`\beta`
    and the whole step are NaN;
    no candidate is accepted, and restoring theta as
    :math:`\theta_{old} + 0 \cdot \beta s` writes the NaN in. Caught by
    ``trpo_step.output_finite``.
    """
    return correct._trpo_numpy(theta_old, states, actions, advantages, max_kl, curvature_sign=-1.0,
                               on_reject="zero_step")


def trpo_vanilla_gradient(theta_old, states, actions, advantages, max_kl):
    r"""The vanilla gradient g instead of :math:`F^+ g`, scaled to the KL by :math:`\sqrt{2\delta/g^\top F g}`.

    A valid trust-region step, in the wrong direction. Caught by
    ``trpo_step.direction``.
    """
    return correct._trpo_numpy(theta_old, states, actions, advantages, max_kl, natural=False)


def trpo_descends(theta_old, states, actions, advantages, max_kl):
    r"""The surrogate is built with the loss's sign, :math:`-L`, and then maximised.

    Gradient, direction and line search agree with each other, so the step
    is accepted, and it descends L. Caught by
    ``trpo_step.surrogate_improvement``.
    """
    return correct._trpo_numpy(theta_old, states, actions, advantages, max_kl, objective_sign=-1.0)

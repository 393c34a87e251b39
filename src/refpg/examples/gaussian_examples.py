r"""Gaussian policy code for the four Gaussian kinds: correct implementations and broken ones from public threads.

The kinds are `refpg.conformance.gaussian.check_gaussian_log_prob` (``gaussian_log_prob``),
`refpg.conformance.gaussian.check_gaussian_kl` (``gaussian_kl``),
`refpg.conformance.gaussian_squashed.check_squashed_log_prob` (``squashed_log_prob``) and
`refpg.conformance.gaussian_ppo.check_gaussian_ppo_loss` (``gaussian_ppo_loss``). The correct functions are written in the style of
refpg, SB3, CleanRL and TorchRL, each in that project's convention; every broken one reproduces a
bug reported in a public thread, cited in its description (docs/conventions.md,
"Linear-quadratic-Gaussian", states the contract they break). No project's code is copied; the real
libraries are checked in tests/test_conformance_gaussian_real.py. torch and JAX are imported inside
the functions, so this module imports without them.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN", "KINDS"]

#: The kinds of this module's examples.
KINDS = ("gaussian_log_prob", "gaussian_kl", "squashed_log_prob", "gaussian_ppo_loss")
LOG_2PI = math.log(2.0 * math.pi)
LOG2 = math.log(2.0)


# -- gaussian_log_prob: correct ----------------------------------------------------------------------------

def diag_gaussian_log_prob_numpy(mean, log_std, actions):
    """sum_i [-z_i^2 / 2 - log_std_i - log(2 pi) / 2], z = (a - mean) / exp(log_std)."""
    z = (actions - mean) * np.exp(-log_std)
    return np.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, axis=-1)


def diag_gaussian_log_prob_entropy_torch(mean, log_std, actions):
    """(log_prob, entropy) from torch.distributions.Normal, summed over the last axis."""
    import torch

    dist = torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean))
    return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)


def sb3_style_log_prob(mean_actions, log_std, actions):
    """SB3's DiagGaussianDistribution: std = ones_like(mean) * exp(log_std), Normal.log_prob summed over dim 1,
    and the entropy summed alike."""
    import torch

    action_std = torch.ones_like(mean_actions) * log_std.exp()
    dist = torch.distributions.Normal(mean_actions, action_std)
    return dist.log_prob(actions).sum(dim=1), dist.entropy().sum(dim=1)


def cleanrl_style_logprob(action_mean, action_logstd, action):
    """CleanRL's get_action_and_value: the (1, d) actor_logstd expanded to the batch, Normal(...).log_prob(...)
    .sum(1) and .entropy().sum(1)."""
    import torch

    action_std = torch.exp(action_logstd.expand_as(action_mean))
    probs = torch.distributions.Normal(action_mean, action_std)
    return probs.log_prob(action).sum(1), probs.entropy().sum(1)


def torchrl_style_log_prob(loc, scale, action):
    """A TorchRL actor's IndependentNormal(loc, scale): Independent(Normal, 1).log_prob, scale the std per row."""
    import torch

    return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1).log_prob(action)


@functools.lru_cache(maxsize=None)
def _jitted_log_prob():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def log_prob(mean, log_std, actions):
        z = (actions - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, axis=-1)
    return log_prob


def diag_gaussian_log_prob_jax(mean, log_std, actions):
    """The log-density in JAX under jax.jit."""
    return _jitted_log_prob()(mean, log_std, actions)


# -- gaussian_log_prob: broken -----------------------------------------------------------------------------

def log_prob_mean_over_dims_torch(mean, log_std, actions):
    """The per-dimension log-densities averaged where they should be summed."""
    import torch

    dist = torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean))
    return dist.log_prob(actions).mean(-1)


def log_prob_per_dimension_torch(mean, log_std, actions):
    """Normal(...).log_prob(actions) returned as is: one value per action dimension."""
    import torch

    return torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean)).log_prob(actions)


def log_std_as_log_variance_numpy(mean, log_std, actions):
    """The density with the std used as a variance and half the log-std as the normaliser."""
    std = np.exp(log_std)
    d = mean.shape[-1]
    log_normalizer = d / 2.0 * LOG_2PI + 0.5 * np.sum(np.broadcast_to(log_std, mean.shape), axis=-1)
    return -np.sum(np.square(actions - mean) / (2.0 * std), axis=-1) - log_normalizer


def log_std_detached_torch(mean, log_std, actions):
    """The log-density with log_std cut from the graph, so that no gradient reaches it."""
    import torch

    return torch.distributions.Normal(mean, torch.exp(log_std.detach()).expand_as(mean)).log_prob(actions).sum(-1)


def log_prob_of_clipped_actions_torch(mean, log_std, actions):
    """The stored action clipped to the action space [-1, 1] before it is scored."""
    import torch

    dist = torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean))
    return dist.log_prob(torch.clamp(actions, -1.0, 1.0)).sum(-1)


def log_prob_times_dimension_torch(mean, log_std, actions):
    """The summed residual minus one log(2 pi)/2, the whole multiplied by the action dimension."""
    import torch

    eps = (actions - mean) * torch.exp(-log_std)
    residual = (-0.5 * eps.pow(2) - log_std).sum(-1)
    return (residual - 0.5 * LOG_2PI) * eps.shape[-1]


def entropy_plus_for_times_torch(mean, log_std, actions):
    """log_prob right, but the entropy 0.5 (log(sigma^2 + 2 pi) + 1) per dimension: '+' where 'x' belongs."""
    import torch

    std = torch.exp(log_std).expand_as(mean)
    lp = torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    return lp, (0.5 * (torch.log(std ** 2 + 2 * math.pi) + 1.0)).sum(-1)


# -- gaussian_kl ------------------------------------------------------------------------------------------

def diag_gaussian_kl_numpy(mean_p, log_std_p, mean_q, log_std_q):
    """sum_i [log_std_q - log_std_p + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2], with expm1 for
    nearly equal scales."""
    delta = log_std_p - log_std_q
    q = (mean_p - mean_q) * np.exp(-log_std_q)
    return np.sum(0.5 * (np.expm1(2.0 * delta) - 2.0 * delta) + 0.5 * q * q, axis=-1)


def diag_gaussian_kl_torch(mean_p, log_std_p, mean_q, log_std_q):
    """torch.distributions.kl_divergence of two Normals, summed over the last axis."""
    import torch

    p = torch.distributions.Normal(mean_p, torch.exp(log_std_p).expand_as(mean_p))
    q = torch.distributions.Normal(mean_q, torch.exp(log_std_q).expand_as(mean_q))
    return torch.distributions.kl_divergence(p, q).sum(-1)


@functools.lru_cache(maxsize=None)
def _jitted_kl():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def kl(mean_p, log_std_p, mean_q, log_std_q):
        delta = log_std_p - log_std_q
        q = (mean_p - mean_q) * jnp.exp(-log_std_q)
        return jnp.sum(0.5 * (jnp.expm1(2.0 * delta) - 2.0 * delta) + 0.5 * q * q, axis=-1)
    return kl


def diag_gaussian_kl_jax(mean_p, log_std_p, mean_q, log_std_q):
    """KL(N_p || N_q) in JAX under jax.jit, expm1 for nearly equal scales."""
    return _jitted_kl()(mean_p, log_std_p, mean_q, log_std_q)


def sb3_style_kl(mean_true, log_std_true, mean_pred, log_std_pred):
    """KL(dist_true || dist_pred) of two DiagGaussianDistribution-like Normals, summed over dimension 1."""
    import torch

    true = torch.distributions.Normal(mean_true, torch.ones_like(mean_true) * log_std_true.exp())
    pred = torch.distributions.Normal(mean_pred, torch.ones_like(mean_pred) * log_std_pred.exp())
    return torch.distributions.kl_divergence(true, pred).sum(dim=1)


def cleanrl_style_kl(action_mean_p, action_logstd_p, action_mean_q, action_logstd_q):
    """CleanRL's way of building the Normals ((1, d) log-std expanded), the KL summed over dimension 1."""
    import torch

    p = torch.distributions.Normal(action_mean_p, torch.exp(action_logstd_p.expand_as(action_mean_p)))
    q = torch.distributions.Normal(action_mean_q, torch.exp(action_logstd_q.expand_as(action_mean_q)))
    return torch.distributions.kl_divergence(p, q).sum(1)


def torchrl_style_kl(loc_p, scale_p, loc_q, scale_q):
    """kl_divergence of two Independent(Normal(loc, scale), 1), as KLPENPPOLoss computes KL(previous || current)."""
    import torch

    def dist(loc, scale):
        return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    return torch.distributions.kl_divergence(dist(loc_p, scale_p), dist(loc_q, scale_q))


def trpo_kl_new_policy_first_torch(mean_new, log_std_new, mean_old, log_std_old):
    """TRPO's KL(old || new) with the new policy's parameters passed first (declared direction='reverse')."""
    return diag_gaussian_kl_torch(mean_old, log_std_old, mean_new, log_std_new)


def kl_arguments_swapped_torch(mean_p, log_std_p, mean_q, log_std_q):
    """KL(N_q || N_p) where KL(N_p || N_q) is declared."""
    return diag_gaussian_kl_torch(mean_q, log_std_q, mean_p, log_std_p)


def kl_minus_one_numpy(mean_p, log_std_p, mean_q, log_std_q):
    """The matrix form 0.5 [tr + quad - d + log det ratio] with -1 where -d belongs."""
    var_p, var_q = np.exp(2.0 * log_std_p), np.exp(2.0 * log_std_q)
    tr = np.sum(np.broadcast_to(var_p / var_q, mean_p.shape), axis=-1)
    quad = np.sum((mean_p - mean_q) ** 2 / var_q, axis=-1)
    logdet = np.sum(np.broadcast_to(2.0 * (log_std_q - log_std_p), mean_p.shape), axis=-1)
    return 0.5 * (tr + quad - 1.0 + logdet)


def kl_sign_flipped_numpy(mean_p, log_std_p, mean_q, log_std_q):
    """-KL: the whole bracket negated."""
    return -diag_gaussian_kl_numpy(mean_p, log_std_p, mean_q, log_std_q)


def kl_bracket_misplaced_torch(mean_p, log_std_p, mean_q, log_std_q):
    """log(sigma_q/sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2 / (2 sigma_q^2)) - 1/2: the bracket closes late."""
    import torch

    std_p, std_q = torch.exp(log_std_p), torch.exp(log_std_q)
    kl = log_std_q - log_std_p + (std_p ** 2 + ((mean_p - mean_q) ** 2) / (2.0 * std_q ** 2)) - 0.5
    return kl.sum(-1)


def kl_std_ratio_not_squared_numpy(mean_p, log_std_p, mean_q, log_std_q):
    """The trace term with the ratio of standard deviations where the ratio of variances belongs."""
    d = mean_p.shape[-1]
    tr = np.sum(np.broadcast_to(np.exp(log_std_p - log_std_q), mean_p.shape), axis=-1)
    quad = np.sum((mean_p - mean_q) ** 2 * np.exp(-2.0 * log_std_q), axis=-1)
    logdet = np.sum(np.broadcast_to(2.0 * (log_std_q - log_std_p), mean_p.shape), axis=-1)
    return 0.5 * (tr + quad - d + logdet)


def kl_per_dimension_torch(mean_p, log_std_p, mean_q, log_std_q):
    """kl_divergence of two Normals, not summed: one marginal KL per dimension."""
    import torch

    p = torch.distributions.Normal(mean_p, torch.exp(log_std_p).expand_as(mean_p))
    q = torch.distributions.Normal(mean_q, torch.exp(log_std_q).expand_as(mean_q))
    return torch.distributions.kl_divergence(p, q)


# -- squashed_log_prob --------------------------------------------------------------------------------------

def squashed_log_prob_numpy(mean, log_std, actions, pre_tanh):
    """log N(u) - sum 2 (log 2 - u - softplus(-2u)), the stable form, from the pre-tanh value."""
    z = (pre_tanh - mean) * np.exp(-log_std)
    log_jac = 2.0 * (LOG2 - pre_tanh - np.logaddexp(0.0, -2.0 * pre_tanh))
    return np.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI - log_jac, axis=-1)


@functools.lru_cache(maxsize=None)
def _jitted_squashed():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def log_prob(mean, log_std, actions, pre_tanh):
        z = (pre_tanh - mean) * jnp.exp(-log_std)
        log_jac = 2.0 * (LOG2 - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
        return jnp.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI - log_jac, axis=-1)
    return log_prob


def squashed_log_prob_jax(mean, log_std, actions, pre_tanh):
    """The stable form in JAX under jax.jit, from the pre-tanh value."""
    return _jitted_squashed()(mean, log_std, actions, pre_tanh)


def squashed_log_prob_torch(mean, log_std, actions, pre_tanh):
    """torch's Normal.log_prob of the pre-tanh value minus the stable log-Jacobian (torch's TanhTransform form)."""
    import torch
    import torch.nn.functional as F

    log_jac = 2.0 * (LOG2 - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(pre_tanh) - log_jac).sum(-1)


def sb3_style_squashed_log_prob(mean_actions, log_std, actions, gaussian_actions):
    """SB3's SquashedDiagGaussianDistribution.log_prob(actions, gaussian_actions): log N(gaussian_actions) summed,
    minus sum log(1 - actions^2 + 1e-6) (declared eps=1e-6)."""
    import torch

    dist = torch.distributions.Normal(mean_actions, torch.ones_like(mean_actions) * log_std.exp())
    log_prob = dist.log_prob(gaussian_actions).sum(dim=1)
    return log_prob - torch.sum(torch.log(1 - actions ** 2 + 1e-6), dim=1)


def cleanrl_style_squashed_log_prob(mean, log_std, action, x_t):
    """CleanRL's SAC actor for a box [-2, 2] (action_scale 2, bias 0): Normal(mean, std).log_prob(x_t) minus
    log(action_scale (1 - tanh(x_t)^2) + 1e-6), summed (declared eps=1e-6, low=-2, high=2)."""
    import torch

    action_scale = 2.0
    y_t = torch.tanh(x_t)
    log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(x_t)
    log_prob = log_prob - torch.log(action_scale * (1 - y_t.pow(2)) + 1e-6)
    return log_prob.sum(1)


def tanh_normal_log_prob_from_action_torch(loc, scale, action):
    """The density of a given action in [-1, 1] with no pre-tanh value: u = atanh(a) and log(1 - a^2) from
    log1p(-a) + log1p(a), both exact near +-1 (pre_tanh='not_given', TorchRL's call)."""
    import torch

    u = 0.5 * (torch.log1p(action) - torch.log1p(-action))
    base = torch.distributions.Normal(loc, scale).log_prob(u)
    return (base - torch.log1p(-action) - torch.log1p(action)).sum(-1)


def squashed_log_prob_rescaled_torch(mean, log_std, actions, pre_tanh):
    """The stable form for a box [0, 5]: a = 2.5 + 2.5 tanh(u), so log pi(a) has -d log 2.5 besides."""
    import torch
    import torch.nn.functional as F

    log_jac = 2.0 * (LOG2 - pre_tanh - F.softplus(-2.0 * pre_tanh)) + math.log(2.5)
    return (torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(pre_tanh) - log_jac).sum(-1)


def squashed_tanh_applied_twice_torch(mean, log_std, actions, pre_tanh):
    """The correction log(1 - tanh(a)^2) evaluated on the squashed action a, so tanh is applied twice."""
    import torch

    base = torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(pre_tanh)
    return (base - torch.log(1 - torch.tanh(actions).pow(2) + 1e-7)).sum(-1)


def squashed_correction_added_torch(mean, log_std, actions, pre_tanh):
    """The log-Jacobian added where it should be subtracted."""
    import torch
    import torch.nn.functional as F

    log_jac = 2.0 * (LOG2 - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(pre_tanh) + log_jac).sum(-1)


def squashed_missing_rescale_torch(mean, log_std, actions, pre_tanh):
    """act_limit * tanh(u) sent to the environment, the log-probability of tanh(u) kept (declared [-2, 2])."""
    return squashed_log_prob_torch(mean, log_std, actions, pre_tanh)


def squashed_unregularised_from_action_torch(mean, log_std, actions, pre_tanh):
    """The correction log(1 - a^2) computed from the squashed action with no regulariser: log(0) once tanh(u)
    rounds to +-1, and digits lost before."""
    import torch

    base = torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(pre_tanh)
    return (base - torch.log(1 - actions.pow(2))).sum(-1)


def squashed_reinverts_clamped_action_torch(mean, log_std, actions, pre_tanh):
    """The given pre-tanh value ignored: u re-inverted from the action clamped to 1 - the dtype's resolution."""
    import torch
    import torch.nn.functional as F

    lim = 1.0 - torch.finfo(actions.dtype).resolution
    u = torch.atanh(actions.clamp(-lim, lim))
    log_jac = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
    return (torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(u) - log_jac).sum(-1)


def squashed_unsquash_capped_torch(loc, scale, action):
    """The pre-tanh value recovered as atanh(clamp(a, -1 + 1e-6, 1 - 1e-6)): capped near 7.25."""
    import torch
    import torch.nn.functional as F

    small = 1e-6
    u = torch.atanh(torch.clamp(action, -1.0 + small, 1.0 - small))
    log_jac = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
    return (torch.distributions.Normal(loc, scale).log_prob(u) - log_jac).sum(-1)


def squashed_entropy_of_base_normal_torch(mean, log_std, actions, pre_tanh):
    """The exact squashed log-density, with the entropy of the Gaussian of u reported as the policy's entropy."""
    import torch

    lp = squashed_log_prob_torch(mean, log_std, actions, pre_tanh)
    return lp, torch.distributions.Normal(mean, torch.exp(log_std)).entropy().sum(-1)


# -- gaussian_ppo_loss -------------------------------------------------------------------------------------

def gaussian_ppo_loss_numpy(mean, log_std, actions, logp_old, advantages, clip_eps):
    """-mean(min(r A, clip(r, 1 - eps, 1 + eps) A)), r from the exact diagonal-Gaussian log-density."""
    logp = diag_gaussian_log_prob_numpy(mean, log_std, actions)
    ratio = np.exp(logp - logp_old)
    return -np.mean(np.minimum(ratio * advantages, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages))


def _ppo_terms(logp, logp_old, advantages, clip_eps):
    import torch

    ratio = torch.exp(logp - logp_old)
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def gaussian_ppo_loss_torch(mean, log_std, actions, logp_old, advantages, clip_eps):
    """The clipped loss in torch, the log-probabilities from torch.distributions.Normal."""
    import torch

    logp = torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean)).log_prob(actions).sum(-1)
    return _ppo_terms(logp, logp_old, advantages, clip_eps)


def sb3_style_gaussian_ppo_loss(mean_actions, log_std, actions, old_log_prob, advantages, clip_range):
    """SB3's PPO.train policy loss: DiagGaussian log_prob, advantages normalised when the minibatch has more than
    one sample, -min(A r, A clamp(r)).mean()."""
    import torch

    dist = torch.distributions.Normal(mean_actions, torch.ones_like(mean_actions) * log_std.exp())
    log_prob = dist.log_prob(actions).sum(dim=1)
    if len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = torch.exp(log_prob - old_log_prob)
    return -torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()


def cleanrl_style_gaussian_ppo_loss(action_mean, action_logstd, action, logprob, advantages, clip_coef):
    """CleanRL's ppo_continuous_action: logratio, normalised mb_advantages, max of the two negated terms."""
    import torch

    probs = torch.distributions.Normal(action_mean, torch.exp(action_logstd.expand_as(action_mean)))
    newlogprob = probs.log_prob(action).sum(1)
    ratio = (newlogprob - logprob).exp()
    mb_advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    return torch.max(pg_loss1, pg_loss2).mean()


def torchrl_style_gaussian_ppo_loss(loc, scale, action, action_log_prob, advantage, clip_epsilon):
    """ClipPPOLoss's objective for an IndependentNormal actor, advantages unnormalised."""
    import torch

    dist = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    log_weight = dist.log_prob(action) - action_log_prob
    gain1 = log_weight.exp() * advantage
    gain2 = log_weight.exp().clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantage
    return -torch.stack([gain1, gain2], -1).min(dim=-1)[0].mean()


@functools.lru_cache(maxsize=None)
def _jitted_ppo_loss():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loss(mean, log_std, actions, logp_old, advantages, clip_eps):
        z = (actions - mean) * jnp.exp(-log_std)
        ratio = jnp.exp(jnp.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, axis=-1) - logp_old)
        return -jnp.mean(jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages))
    return loss


def gaussian_ppo_loss_jax(mean, log_std, actions, logp_old, advantages, clip_eps):
    """The clipped loss in JAX under jax.jit (clip_eps traced)."""
    return _jitted_ppo_loss()(mean, log_std, actions, logp_old, advantages, clip_eps)


def gaussian_ppo_scores_clipped_actions_torch(mean, log_std, actions, logp_old, advantages, clip_eps):
    """The new log-probability of the action clipped to [-1, 1], the old one of the action as sampled."""
    import torch

    clipped = torch.clamp(actions, -1.0, 1.0)
    logp = torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean)).log_prob(clipped).sum(-1)
    return _ppo_terms(logp, logp_old, advantages, clip_eps)


def gaussian_ppo_log_std_detached_torch(mean, log_std, actions, logp_old, advantages, clip_eps):
    """The loss through the mean only: log_std is not among the trained variables."""
    return gaussian_ppo_loss_torch(mean, log_std.detach(), actions, logp_old, advantages, clip_eps)


def gaussian_ppo_log_prob_averaged_torch(mean, log_std, actions, logp_old, advantages, clip_eps):
    """The new log-probability averaged over the action dimensions, the stored one summed."""
    import torch

    logp = torch.distributions.Normal(mean, torch.exp(log_std).expand_as(mean)).log_prob(actions).mean(-1)
    return _ppo_terms(logp, logp_old, advantages, clip_eps)


# -- the registry ------------------------------------------------------------------------------------------

def _new(name, kind, fn, convention, backend, options, expected, description) -> Example:
    return Example(name, kind, fn, convention, backend, options, expected, description)


def _correct(kind, fn, description, *, convention="refpg", backend="torch", name=None, **options):
    return _new(name or fn.__name__, kind, fn, convention, backend, options, None, description)


def _broken(kind, fn, expected, description, *, convention="refpg", backend="torch", name=None, **options):
    return _new(name or fn.__name__, kind, fn, convention, backend, options, f"{kind}.{expected}", description)


_LP, _KL, _SQ, _PPO = KINDS

#: Every correct Gaussian example: each must pass its check.
CORRECT: tuple[Example, ...] = (
    _correct(_LP, diag_gaussian_log_prob_numpy, "the diagonal-Gaussian log-density in NumPy, summed over dimensions "
             "(gradients by central differences)", backend="numpy"),
    _correct(_LP, diag_gaussian_log_prob_numpy, "the same NumPy function on float32 inputs", backend="numpy",
             dtype="float32", name="diag_gaussian_log_prob_numpy_float32"),
    _correct(_LP, diag_gaussian_log_prob_entropy_torch, "torch.distributions.Normal log-density and entropy, summed",
             entropy=True),
    _correct(_LP, sb3_style_log_prob, "SB3-style DiagGaussianDistribution log_prob and entropy (state-independent "
             "log_std)", convention="sb3", entropy=True),
    _correct(_LP, cleanrl_style_logprob, "CleanRL-style get_action_and_value: (1, d) actor_logstd expanded, "
             ".log_prob(action).sum(1) and .entropy().sum(1)", convention="cleanrl", entropy=True),
    _correct(_LP, torchrl_style_log_prob, "TorchRL-style IndependentNormal(loc, scale).log_prob, scale the per-row std "
             "a NormalParamExtractor gives", convention="torchrl"),
    _correct(_LP, diag_gaussian_log_prob_jax, "the log-density in JAX under jax.jit", backend="jax"),
    _correct(_KL, diag_gaussian_kl_numpy, "KL(N_p || N_q) in NumPy, summed, expm1 for nearly equal scales",
             backend="numpy"),
    _correct(_KL, diag_gaussian_kl_torch, "torch.distributions.kl_divergence of two Normals, summed over dimensions"),
    _correct(_KL, diag_gaussian_kl_jax, "KL(N_p || N_q) in JAX under jax.jit", backend="jax"),
    _correct(_KL, sb3_style_kl, "SB3-style KL(dist_true || dist_pred) of two diagonal Gaussians, summed over dim 1",
             convention="sb3"),
    _correct(_KL, cleanrl_style_kl, "the KL of two Normals built CleanRL's way ((1, d) log-std), summed over dim 1",
             convention="cleanrl"),
    _correct(_KL, torchrl_style_kl, "kl_divergence of two Independent Normals, as TorchRL's KLPENPPOLoss computes "
             "KL(previous || current)", convention="torchrl"),
    _correct(_KL, trpo_kl_new_policy_first_torch, "TRPO's KL(old || new) with the new policy passed first, declared "
             "direction='reverse'", direction="reverse"),
    _correct(_SQ, squashed_log_prob_numpy, "the stable form 2 (log 2 - u - softplus(-2u)) in NumPy, pre-tanh value "
             "given", backend="numpy"),
    _correct(_SQ, squashed_log_prob_torch, "Normal.log_prob(u) minus the stable log-Jacobian in torch"),
    _correct(_SQ, squashed_log_prob_jax, "the stable form in JAX under jax.jit, pre-tanh value given", backend="jax"),
    _correct(_SQ, sb3_style_squashed_log_prob, "SB3-style SquashedDiagGaussianDistribution.log_prob(actions, "
             "gaussian_actions): log(1 - a^2 + 1e-6), exact within the declared regulariser", convention="sb3"),
    _correct(_SQ, cleanrl_style_squashed_log_prob, "CleanRL-style SAC actor for a box [-2, 2]: log(action_scale (1 - "
             "tanh(x_t)^2) + 1e-6), within the declared regulariser", convention="cleanrl", low=-2.0, high=2.0),
    _correct(_SQ, tanh_normal_log_prob_from_action_torch, "the density of a given action in [-1, 1] with log1p on "
             "both sides (pre-tanh value not given, TorchRL's call), exact to the largest action below 1",
             convention="torchrl"),
    _correct(_SQ, squashed_log_prob_rescaled_torch, "the stable form for the box [0, 5], with -d log 2.5 for the "
             "rescaling", low=0.0, high=5.0),
    _correct(_PPO, gaussian_ppo_loss_numpy, "the clipped loss from the exact log-density in NumPy", backend="numpy"),
    _correct(_PPO, gaussian_ppo_loss_torch, "the clipped loss in torch, torch.distributions.Normal log-probabilities"),
    _correct(_PPO, sb3_style_gaussian_ppo_loss, "SB3-style PPO.train policy loss (advantages normalised for n > 1)",
             convention="sb3"),
    _correct(_PPO, cleanrl_style_gaussian_ppo_loss, "CleanRL-style ppo_continuous_action policy loss (norm_adv, max of "
             "the negated terms)", convention="cleanrl"),
    _correct(_PPO, gaussian_ppo_loss_jax, "the clipped loss in JAX under jax.jit", backend="jax"),
    _correct(_PPO, torchrl_style_gaussian_ppo_loss, "TorchRL-style ClipPPOLoss objective for an IndependentNormal "
             "actor", convention="torchrl"),
)

#: Every broken Gaussian example: each must fail its check with `expected`.
BROKEN: tuple[Example, ...] = (
    _broken(_LP, log_prob_mean_over_dims_torch, "value", "the per-dimension log-densities averaged instead of summed: "
            "the dimension reduction that thu-ml/tianshou #40 and AI4Finance-Foundation/ElegantRL PR #273 had missing, "
            "done with a mean"),
    _broken(_LP, log_prob_per_dimension_torch, "output_shape", "Normal(...).log_prob(actions) left unsummed, one value "
            "per action dimension (thu-ml/tianshou #40: 'Missing sum over log_prob in SAC')"),
    _broken(_LP, log_std_as_log_variance_numpy, "value", "the std used as a variance and log_std as a log-variance "
            "(hill-a/stable-baselines #1058, #1059: base_class.py's action probability)", backend="numpy"),
    _broken(_LP, log_std_detached_torch, "gradient_scale", "log_std not among the trained variables, so its gradient "
            "is 0 (openai/baselines #262: TRPO's logstd missing from var_list, TRPO failed on Ant)"),
    _broken(_LP, log_prob_of_clipped_actions_torch, "value", "the stored action clipped to the action space before it "
            "is scored (ray-project/ray #8889: PPO stopped learning HalfCheetah; thu-ml/tianshou #312)"),
    _broken(_LP, log_prob_times_dimension_torch, "value", "the summed residual minus one log(2 pi)/2, all multiplied "
            "by the action dimension (nicklashansen/tdmpc2 #44: its log-probability differs from TorchRL's)"),
    _broken(_LP, entropy_plus_for_times_torch, "entropy", "the entropy 0.5 (log(sigma^2 + 2 pi) + 1) per dimension, "
            "'+' where 'x' belongs (andrewliao11/pytorch-a3c-mujoco #2)", entropy=True),
    _broken(_KL, kl_arguments_swapped_torch, "value", "KL(new || old) where TRPO's constraint is KL(old || new) "
            "(openai/spinningup #264 and PR #192; google-deepmind/rlax f716d73 'fix kl argument order for gaussians')"),
    _broken(_KL, kl_minus_one_numpy, "value", "the matrix form with -1 where -d belongs (google-deepmind/rlax 8cd6aa6 "
            "replaced the -1 of kl_to_standard_normal by -sum(ones_like(mu)))", backend="numpy"),
    _broken(_KL, kl_sign_flipped_numpy, "value", "the KL negated (google-deepmind/rlax d251b24 'Change sign of "
            "kl_to_standard_normal')", backend="numpy"),
    _broken(_KL, kl_bracket_misplaced_torch, "value", "the bracket closing after sigma_p^2 + (mu_p - mu_q)^2 / (2 "
            "sigma_q^2) (PacktPublishing/Deep-Reinforcement-Learning-Hands-On #17)"),
    _broken(_KL, kl_std_ratio_not_squared_numpy, "value", "the trace term with the ratio of standard deviations, not "
            "of variances (pat-coady/trpo #25)", backend="numpy"),
    _broken(_KL, kl_per_dimension_torch, "output_shape", "the marginal KLs returned unsummed, one per dimension "
            "(instadeepai/jumanji #141)"),
    _broken(_SQ, squashed_tanh_applied_twice_torch, "value", "log(1 - tanh(a)^2) of the already squashed action "
            "(google-deepmind/rlax 63982cf and #54: the Jacobian evaluated on the sample, not its inverse; "
            "boyu-ai/Hands-on-RL #44)"),
    _broken(_SQ, squashed_correction_added_torch, "value", "the log-Jacobian added instead of subtracted "
            "(google-deepmind/rlax #11)"),
    _broken(_SQ, squashed_missing_rescale_torch, "value", "act_limit * tanh(u) sent to the environment, the "
            "log-probability of tanh(u) kept: -d log(act_limit) missing (openai/spinningup #314)", low=-2.0, high=2.0),
    _broken(_SQ, squashed_unregularised_from_action_torch, "saturation", "log(1 - a^2) from the squashed action with "
            "no regulariser: log(0) once tanh(u) rounds to 1 (rail-berkeley/rlkit #37 moved to the stable form)"),
    _broken(_SQ, squashed_reinverts_clamped_action_torch, "saturation", "the sampled pre-tanh value ignored and "
            "re-inverted from the clamped action: wrong once tanh saturates (pytorch/rl PR #4080: off by 16,312 in the "
            "score)"),
    _broken(_SQ, squashed_unsquash_capped_torch, "saturation", "atanh(clamp(a, -1 + 1e-6, 1 - 1e-6)) caps the pre-tanh "
            "value near 7.25 (ray-project/ray PR #65036; ray-project/ray #14878)", convention="torchrl"),
    _broken(_SQ, squashed_entropy_of_base_normal_torch, "entropy", "the Gaussian entropy of u reported for the squashed "
            "policy, E[log(1 - tanh(u)^2)] missing (Denys88/rl_games #153; Unity-Technologies/ml-agents #4866)",
            entropy=True),
    _broken(_PPO, gaussian_ppo_scores_clipped_actions_torch, "ratio_one_at_old", "the new log-probability of the action "
            "clipped to [-1, 1], the old one of the action as sampled: ratios other than 1 at theta_old "
            "(ray-project/ray #8889; thu-ml/tianshou #312)"),
    _broken(_PPO, gaussian_ppo_log_std_detached_torch, "gradient_scale", "log_std outside the trained variables "
            "(openai/baselines #262)"),
    _broken(_PPO, gaussian_ppo_log_prob_averaged_torch, "ratio_one_at_old", "the new log-probability averaged over "
            "dimensions against a stored summed one (the reduction of thu-ml/tianshou #40 done with a mean)"),
)

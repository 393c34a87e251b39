r"""Correct implementations, written the way users of SB3, CleanRL, TorchRL and rlax write them.

Every function here has the signature of one convention of
notes/conformance_spec.md and passes its check; `refpg.examples.broken`
reuses the private helpers below with one deliberate deviation each, so that
every bug there is a small, readable edit of code that is right here.

The helpers that both backends share use only indexing and arithmetic, so the
same loop runs on NumPy arrays and torch tensors. torch is imported inside the
torch functions only: ``import refpg.examples`` works without it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gae_refpg_numpy",
    "gae_refpg_torch",
    "gae_sb3_numpy",
    "gae_cleanrl_torch",
    "gae_torchrl_torch",
    "gae_rlax_numpy",
    "ppo_loss_refpg_numpy",
    "ppo_loss_refpg_torch",
    "ppo_loss_sb3_torch",
    "ppo_loss_cleanrl_torch",
    "ppo_loss_rlax_numpy",
    "value_loss_refpg_numpy",
    "value_loss_cleanrl_torch",
    "value_loss_sb3_torch",
    "kl_k1_numpy",
    "kl_k2_numpy",
    "kl_k3_mean_torch",
    "reinforce_numpy",
    "reinforce_state_baseline_numpy",
    "reinforce_gamma_free_numpy",
    "reinforce_torch",
    "trpo_step_numpy",
    "trpo_step_torch",
]


# -- shared by both backends -------------------------------------------------------

def _backward_recursion(delta, carry, out):
    r"""Fill ``out[t] = delta[t] + carry[t] * out[t + 1]`` backwards along axis 0, with ``out[T] = 0``.

    The one loop behind every GAE and return below: GAE is this recursion
    with :math:`\delta_t` and carry :math:`\gamma\lambda(1 - \mathrm{done}_t)`,
    the reward-to-go with :math:`r_t` and carry :math:`\gamma`.
    """
    acc = 0.0
    for t in range(delta.shape[0] - 1, -1, -1):
        acc = delta[t] + carry[t] * acc
        out[t] = acc
    return out


def _reward_to_go(rewards, gamma, out):
    r""":math:`G_t = \sum_{k \ge t} \gamma^{k-t} r_k` of one episode (NumPy or torch)."""
    # gamma + 0 * rewards: a constant carry in the rewards' own type and dtype.
    return _backward_recursion(rewards, gamma + 0 * rewards, out)


# -- GAE ------------------------------------------------------------------------------

def gae_refpg_numpy(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""GAE in refpg's canonical convention, NumPy.

    .. math::
        \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V(s_{t+1}) - V(s_t), \qquad
        \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{terminated}_t)(1 - \mathrm{truncated}_t)
                   \hat A_{t+1}

    Parameters
    ----------
    rewards, values, next_values : ndarray (T, N)
        ``next_values[t]`` is V of the true next observation (the final one
        on a time limit), read before any reset.
    terminated, truncated : bool ndarray (T, N)
    gamma, lam : float

    Returns
    -------
    ndarray (T, N), the dtype of `rewards`

    References
    ----------
    [Schulman2016] Eqs. (11)-(16); refpg.returns.gae.
    """
    terminated = np.asarray(terminated, dtype=bool)
    done = terminated | np.asarray(truncated, dtype=bool)
    # np.where, not a product with (1 - terminated): a terminal observation's value
    # takes no part at all, whatever the critic says about it.
    next_v = np.where(terminated, 0, next_values)
    delta = rewards + gamma * next_v - values
    carry = (gamma * lam) * (~done).astype(delta.dtype)
    return _backward_recursion(delta, carry, np.empty_like(delta))


def gae_refpg_torch(rewards, values, next_values, terminated, truncated, gamma, lam):
    r"""GAE in refpg's canonical convention, torch: the equations and arguments of `gae_refpg_numpy`.

    .. math::
        \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{terminated}_t)(1 - \mathrm{truncated}_t)
                   \hat A_{t+1}

    Tensors in, a tensor (T, N) of the dtype of `rewards` out [Schulman2016].
    """
    import torch

    next_v = torch.where(terminated, torch.zeros_like(next_values), next_values)
    delta = rewards + gamma * next_v - values
    carry = (gamma * lam) * (~(terminated | truncated)).to(delta.dtype)
    return _backward_recursion(delta, carry, torch.empty_like(delta))


def _next_value_loop(rewards, values, starts, last_values, last_dones, gamma, lam, advantages, *,
                     start_lag=1):
    r"""The GAE loop of SB3's ``RolloutBuffer.compute_returns_and_advantage``, also CleanRL's ``ppo.py``.

    .. math::
        \delta_t = r_t + \gamma\, m_t V_{t+1} - V_t, \quad
        \hat A_t = \delta_t + \gamma\lambda\, m_t \hat A_{t+1}, \quad
        m_t = 1 - \mathrm{starts}_{t+1}\ (t < T - 1), \quad m_{T-1} = 1 - \mathrm{last\_dones}

    with :math:`V_T` = `last_values`. Both libraries store "observation t
    starts an episode" (= done of transition t - 1), so whether transition t
    ended its episode is read one row ahead: ``start_lag=1``. NumPy or torch;
    `advantages` is filled in place and returned.
    """
    n_steps = rewards.shape[0]
    last_gae_lam = 0.0
    for step in reversed(range(n_steps)):
        if step == n_steps - 1:
            next_non_terminal = 1.0 - last_dones
            next_values = last_values
        else:
            next_non_terminal = 1.0 - starts[step + start_lag]
            next_values = values[step + 1]
        delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
        last_gae_lam = delta + gamma * lam * next_non_terminal * last_gae_lam
        advantages[step] = last_gae_lam
    return advantages


def gae_sb3_numpy(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
    r"""GAE as SB3's ``RolloutBuffer.compute_returns_and_advantage`` computes it, NumPy.

    The equations of `_next_value_loop`. A time limit was handled before the
    call: SB3's ``collect_rollouts`` adds :math:`\gamma V(\text{final obs})`
    to the reward of a truncated step and then treats it as done.

    Parameters
    ----------
    rewards, values, episode_starts : ndarray (T, N)
        ``episode_starts[t] = 1.0`` where observation t starts an episode.
    last_values, dones : ndarray (N,)
        V of the observation after the last step, and the last step's done.
    gamma, gae_lambda : float

    Returns
    -------
    ndarray (T, N)

    References
    ----------
    [Schulman2016]; Stable-Baselines3 ``common/buffers.py``.
    """
    return _next_value_loop(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda,
                            np.zeros_like(rewards))


def gae_cleanrl_torch(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    r"""GAE as CleanRL's ``ppo.py`` computes it, torch; the equations of `_next_value_loop`.

    Parameters
    ----------
    rewards, values, dones : Tensor (T, N)
        ``dones[t] = 1.0`` where observation t starts an episode (CleanRL
        stores ``next_done`` of the previous step).
    next_value, next_done : Tensor (N,)
    gamma, gae_lambda : float

    Returns
    -------
    Tensor (T, N)

    Notes
    -----
    CleanRL's ``done`` is ``terminated or truncated``: a time limit is not
    bootstrapped, by design of that convention.

    References
    ----------
    [Schulman2016]; CleanRL ``cleanrl/ppo.py``.
    """
    import torch

    return _next_value_loop(rewards, values, dones, next_value, next_done, gamma, gae_lambda,
                            torch.zeros_like(rewards))


def gae_torchrl_torch(gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    r"""GAE in TorchRL's functional form (time is dimension -2), torch.

    .. math::
        \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V'_t - V_t, \qquad
        \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{done}_t) \hat A_{t+1}

    Parameters
    ----------
    gamma, lmbda : float
    state_value, next_state_value, reward : Tensor (N, T, 1)
    done, terminated : bool Tensor (N, T, 1)
        ``done = terminated | truncated``.

    Returns
    -------
    (advantage, value_target) : Tensors (N, T, 1)
        ``value_target = advantage + state_value``.

    Notes
    -----
    TorchRL multiplies by ``(~done).int()``, which rounds gamma to float32;
    the masks here take the values' dtype instead, so float64 stays float64.

    References
    ----------
    [Schulman2016]; TorchRL ``objectives/value/functional.py``.
    """
    import torch

    not_done = (~done).to(reward.dtype)
    not_terminated = (~terminated).to(reward.dtype)
    delta = reward + gamma * not_terminated * next_state_value - state_value
    discount = gamma * lmbda * not_done
    # The shared recursion runs along axis 0: move time there and back.
    adv = _backward_recursion(delta.movedim(-2, 0), discount.movedim(-2, 0),
                              torch.empty_like(delta.movedim(-2, 0)))
    advantage = adv.movedim(0, -2)
    return advantage, advantage + state_value


def gae_rlax_numpy(r_t, discount_t, lambda_, values):
    r"""rlax's ``truncated_generalized_advantage_estimation`` for one trajectory, NumPy.

    .. math::
        \hat A_t = r_t + d_t V_{t+1} - V_t + d_t \lambda \hat A_{t+1}, \qquad
        d_t = \gamma (1 - \mathrm{terminated}_t)

    Parameters
    ----------
    r_t, discount_t : ndarray (T,)
    lambda_ : float
    values : ndarray (T + 1,)
        ``values[T]`` bootstraps the last step (ignored when its discount is 0).

    Returns
    -------
    ndarray (T,)

    References
    ----------
    [Schulman2016]; rlax ``_src/multistep.py``.
    """
    delta_t = r_t + discount_t * values[1:] - values[:-1]
    return _backward_recursion(delta_t, discount_t * lambda_, np.empty_like(delta_t))


# -- PPO clipped loss ----------------------------------------------------------------

def _ppo_clip_loss_np(ratio, adv, clip_eps, *, pick=np.minimum, clip_low=True):
    r"""-mean(pick(r A, clip(r, 1 - eps, 1 + eps) A)); ``clip_low=False`` leaves r unbounded below."""
    surr1 = ratio * adv
    surr2 = np.clip(ratio, 1 - clip_eps if clip_low else None, 1 + clip_eps) * adv
    return -np.mean(pick(surr1, surr2))


def _ppo_clip_loss_torch(ratio, adv, clip_eps, *, detach_clipped=False):
    r"""-mean(min(r A, clamp(r, 1 - eps, 1 + eps) A)) in torch; `detach_clipped` cuts that branch's gradient."""
    import torch

    clipped = torch.clamp(ratio.detach() if detach_clipped else ratio, 1 - clip_eps, 1 + clip_eps)
    return -torch.min(ratio * adv, clipped * adv).mean()


def ppo_loss_refpg_numpy(logp_new, logp_old, advantages, clip_eps):
    r"""PPO's clipped loss, no advantage normalisation, NumPy.

    .. math::
        \mathcal L = -\frac1n \sum_i \min\big(r_i A_i,\
        \mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon) A_i\big), \qquad r_i = e^{\log\pi_{new,i} - \log\pi_{old,i}}

    Parameters
    ----------
    logp_new, logp_old, advantages : ndarray (n,)
    clip_eps : float

    Returns
    -------
    numpy scalar of the inputs' dtype

    References
    ----------
    [Schulman2017] Eq. (7); refpg.algorithms.ppo.ppo_clip_loss.
    """
    return _ppo_clip_loss_np(np.exp(logp_new - logp_old), advantages, clip_eps)


def ppo_loss_refpg_torch(logp_new, logp_old, advantages, clip_eps):
    r"""PPO's clipped loss of `ppo_loss_refpg_numpy`, torch (differentiable in `logp_new`).

    Returns
    -------
    0-d Tensor

    References
    ----------
    [Schulman2017] Eq. (7).
    """
    import torch

    return _ppo_clip_loss_torch(torch.exp(logp_new - logp_old), advantages, clip_eps)


def _outside_fraction(ratio, clip_eps) -> float:
    """SB3's and CleanRL's logged clip fraction, mean(|r - 1| > eps)."""
    import torch

    return torch.mean((torch.abs(ratio - 1) > clip_eps).float()).item()


def _sb3_policy_loss(logp_new, logp_old, advantages, clip_eps, *, single_guard=True,
                     clip_fraction=_outside_fraction):
    """The policy part of SB3's ``PPO.train``: (loss, clip_fraction)."""
    import torch

    # std with ddof=1 of one sample is NaN: SB3 skips the normalisation then.
    if len(advantages) > 1 or not single_guard:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = torch.exp(logp_new - logp_old)
    return _ppo_clip_loss_torch(ratio, advantages, clip_eps), clip_fraction(ratio, clip_eps)


def ppo_loss_sb3_torch(logp_new, logp_old, advantages, clip_eps):
    r"""PPO's clipped loss as SB3's ``PPO.train`` computes it, torch.

    The loss of `ppo_loss_refpg_numpy` on normalised advantages
    :math:`(A - \bar A) / (\mathrm{std}_{ddof=1}(A) + 10^{-8})`, left raw
    when n = 1.

    Returns
    -------
    (loss, clip_fraction) : (0-d Tensor, float)
        ``clip_fraction = mean(|r - 1| > eps)``.

    References
    ----------
    [Schulman2017] Eq. (7); Stable-Baselines3 ``ppo/ppo.py`` (the n = 1 guard
    came with SB3 PR #1028, for issue #325).
    """
    return _sb3_policy_loss(logp_new, logp_old, advantages, clip_eps)


def ppo_loss_cleanrl_torch(logp_new, logp_old, advantages, clip_eps):
    r"""PPO's clipped loss as CleanRL's ``ppo.py`` computes it, torch.

    .. math::
        \mathcal L = \frac1n \sum_i \max\big(-\hat A_i r_i,\ -\hat A_i\,\mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon)\big),
        \qquad \hat A = \frac{A - \bar A}{\mathrm{std}_{ddof=1}(A) + 10^{-8}}

    (the max of the negatives is the negative of the min).

    Returns
    -------
    dict
        ``{"loss": 0-d Tensor, "clip_fraction": float}``.

    References
    ----------
    [Schulman2017] Eq. (7); CleanRL ``cleanrl/ppo.py``.
    """
    import torch

    logratio = logp_new - logp_old
    ratio = logratio.exp()
    clipfrac = _outside_fraction(ratio, clip_eps)
    mb_advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    return {"loss": torch.max(pg_loss1, pg_loss2).mean(), "clip_fraction": clipfrac}


def ppo_loss_rlax_numpy(prob_ratios_t, adv_t, epsilon):
    r"""rlax's ``clipped_surrogate_pg_loss``, NumPy: the loss of `ppo_loss_refpg_numpy` given the ratios.

    Returns
    -------
    numpy scalar

    References
    ----------
    [Schulman2017] Eq. (7); rlax ``_src/policy_gradients.py`` (which uses ``fmin``).
    """
    return _ppo_clip_loss_np(prob_ratios_t, adv_t, epsilon, pick=np.fmin)


# -- value loss ------------------------------------------------------------------------

def value_loss_refpg_numpy(values_new, values_old, returns, clip_eps):
    r"""Unclipped value loss :math:`\tfrac12 \frac1n\sum_i (V_{new,i} - R_i)^2`, NumPy.

    `values_old` and `clip_eps` are part of the signature and not used.

    References
    ----------
    [Schulman2017] Eq. (9), :math:`L^{VF}`.
    """
    return 0.5 * np.mean((values_new - returns) ** 2)


def _clipped_value_loss_torch(values_new, values_old, returns, clip_eps, *, pick="max",
                              around="old"):
    """CleanRL's clipped value loss; `pick` and `around` are the choices a bug can get wrong."""
    import torch

    anchor = values_old if around == "old" else returns
    v_loss_unclipped = (values_new - returns) ** 2
    v_clipped = anchor + torch.clamp(values_new - anchor, -clip_eps, clip_eps)
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = (torch.max if pick == "max" else torch.min)(v_loss_unclipped, v_loss_clipped)
    return 0.5 * v_loss.mean()


def value_loss_cleanrl_torch(values_new, values_old, returns, clip_eps):
    r"""CleanRL's (and PPO2's) clipped value loss, torch.

    .. math::
        \tfrac12 \frac1n \sum_i \max\big((V_i - R_i)^2,\
        (V^{old}_i + \mathrm{clip}(V_i - V^{old}_i, -\epsilon, \epsilon) - R_i)^2\big)

    References
    ----------
    CleanRL ``cleanrl/ppo.py`` (``clip_vloss``); OpenAI Baselines ``ppo2/model.py``.
    """
    return _clipped_value_loss_torch(values_new, values_old, returns, clip_eps)


def value_loss_sb3_torch(values_new, values_old, returns, clip_eps):
    r"""SB3's value loss with ``clip_range_vf``: the clipped *prediction*, coefficient 1, torch.

    .. math::
        \frac1n \sum_i \big(V^{old}_i + \mathrm{clip}(V_i - V^{old}_i, -\epsilon, \epsilon) - R_i\big)^2

    References
    ----------
    Stable-Baselines3 ``ppo/ppo.py`` (``F.mse_loss(rollout_data.returns, values_pred)``).
    """
    import torch
    import torch.nn.functional as F

    values_pred = values_old + torch.clamp(values_new - values_old, -clip_eps, clip_eps)
    return F.mse_loss(returns, values_pred)


# -- KL estimators ---------------------------------------------------------------------

def kl_k1_numpy(logp_new, logp_old):
    r"""Per-sample :math:`k_1 = -\log r = \log\pi_{old}(a) - \log\pi_{new}(a)`, NumPy.

    Unbiased for :math:`D_{KL}(\pi_{old}\|\pi_{new})` on :math:`a \sim \pi_{old}`;
    negative wherever :math:`\pi_{new}(a) > \pi_{old}(a)`.

    References
    ----------
    [Schulman2020].
    """
    return logp_old - logp_new


def kl_k2_numpy(logp_new, logp_old):
    r"""Per-sample :math:`k_2 = \tfrac12 (\log r)^2 \ge 0`, NumPy; biased (exact to second order).

    References
    ----------
    [Schulman2020].
    """
    log_ratio = logp_new - logp_old
    return 0.5 * log_ratio ** 2


def kl_k3_mean_torch(logp_new, logp_old):
    r"""Batch mean of :math:`k_3 = (r - 1) - \log r`, torch: SB3's ``approx_kl_div``, CleanRL's ``approx_kl``.

    .. math:: \widehat{D} = \frac1n \sum_i \big(e^{x_i} - 1 - x_i\big), \qquad x_i = \log r_i

    Unbiased and non-negative.

    Notes
    -----
    SB3 and CleanRL write ``(ratio - 1) - logratio``; in float32 that rounds
    below zero for :math:`|x| \lesssim 10^{-7}` (``exp(x)`` rounds to 1 and
    the result is :math:`-x`). ``expm1(x) - x`` is never negative: expm1 is
    faithfully rounded and :math:`e^x - 1 \ge x`.

    References
    ----------
    [Schulman2020].
    """
    import torch

    log_ratio = logp_new - logp_old
    return torch.mean(torch.expm1(log_ratio) - log_ratio)


# -- REINFORCE ---------------------------------------------------------------------------

def _softmax(theta):
    z = theta - theta.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _leave_one_out_means(keys, targets, n_keys):
    """Per episode e, the mean of `targets` by key over the *other* episodes (0 where none).

    A baseline built this way is independent of episode e's actions, so it
    leaves the estimator unbiased whatever the keys are made of, as long as
    they do not include e's own action.
    """
    own = [(np.bincount(k, weights=g, minlength=n_keys), np.bincount(k, minlength=n_keys))
           for k, g in zip(keys, targets)]
    total = sum(t for t, _ in own)
    count = sum(c for _, c in own)
    means = []
    for k, (own_total, own_count) in zip(keys, own):
        others = count - own_count
        mean = np.divide(total - own_total, others, out=np.zeros(n_keys), where=others > 0)
        means.append(mean[k])
    return means


def _reinforce_numpy(theta, episodes, gamma, *, discount_weighting=True, baseline=None,
                     score_centered=True, return_lag=0):
    r"""Mean over episodes of :math:`\sum_t \gamma^t \nabla\log\pi(a_t|s_t)(G_{t+lag} - b_t)`, tabular softmax.

    ``baseline``: None, ``"state"`` (leave-one-out mean return per state) or
    ``"state_action"``. ``score_centered=False`` drops the :math:`-\pi(\cdot|s)`
    of :math:`\nabla_{\theta_s}\log\pi(a|s) = e_a - \pi(\cdot|s)`.
    """
    theta = np.asarray(theta)
    S, A = theta.shape
    pi = _softmax(theta.astype(np.float64))
    returns = []
    for _, _, rewards in episodes:
        G = _reward_to_go(np.asarray(rewards, dtype=np.float64), gamma, np.empty(len(rewards)))
        # G_{t + return_lag}, 0 past the episode's end (return_lag = 1 is a bug of broken.py).
        returns.append(np.concatenate([G[return_lag:], np.zeros(return_lag)])[:len(G)])
    if baseline is None:
        baselines = [np.zeros_like(G) for G in returns]
    else:
        keys = [s if baseline == "state" else s * A + a for s, a, _ in episodes]
        baselines = _leave_one_out_means(keys, returns, S if baseline == "state" else S * A)
    grad = np.zeros((S, A))
    for (states, actions, _), G, b in zip(episodes, returns, baselines):
        weight = G - b
        if discount_weighting:
            weight = weight * gamma ** np.arange(len(G))
        # d log pi(a|s) / d theta[s, :] = onehot(a) - pi(.|s)
        np.add.at(grad, (states, actions), weight)
        if score_centered:
            np.add.at(grad, states, -weight[:, None] * pi[states])
    return (grad / len(episodes)).astype(theta.dtype, copy=False)


def reinforce_numpy(theta, episodes, gamma):
    r"""REINFORCE with reward-to-go and the :math:`\gamma^t` factor, no baseline, NumPy.

    .. math::
        \hat g = \frac1E \sum_{e=1}^E \sum_t \gamma^t\, \nabla_\theta \log\pi_\theta(a_t|s_t)\, G_t,
        \qquad G_t = \sum_{k \ge t} \gamma^{k-t} r_k

    Unbiased for :math:`\nabla J` on complete episodes.

    Parameters
    ----------
    theta : ndarray (S, A)
        Logits of the tabular softmax policy.
    episodes : list of (states, actions, rewards)
        int (T_e,), int (T_e,), float (T_e,).
    gamma : float

    Returns
    -------
    ndarray (S, A); every row sums to 0

    References
    ----------
    [Williams1992]; [Sutton2000]; docs/conventions.md "REINFORCE".
    """
    return _reinforce_numpy(theta, episodes, gamma)


def reinforce_state_baseline_numpy(theta, episodes, gamma):
    r"""REINFORCE with a per-state baseline from the other episodes of the batch, NumPy.

    .. math::
        \hat g = \frac1E \sum_e \sum_t \gamma^t \nabla\log\pi(a_t|s_t)\big(G_t - b_{-e}(s_t)\big)

    where :math:`b_{-e}(s)` is the mean of :math:`G_t` over the visits to s in
    the episodes other than e (0 if there are none). It estimates V(s) and,
    being independent of episode e, keeps the estimator unbiased.

    References
    ----------
    [Williams1992] (reinforcement baselines); [Sutton2000].
    """
    return _reinforce_numpy(theta, episodes, gamma, baseline="state")


def reinforce_gamma_free_numpy(theta, episodes, gamma):
    r"""REINFORCE without the :math:`\gamma^t` factor, as most libraries write it, NumPy.

    .. math:: \hat g = \frac1E \sum_e \sum_t \nabla\log\pi(a_t|s_t)\, G_t

    Its expectation is `refpg.estimators.gamma_free_gradient`, not
    :math:`\nabla J`: declare it with ``objective="gamma_free"``.

    References
    ----------
    [Nota2020] Section 4.
    """
    return _reinforce_numpy(theta, episodes, gamma, discount_weighting=False)


def reinforce_torch(theta, episodes, gamma):
    r"""REINFORCE by autograd of the surrogate :math:`\frac1E\sum_e\sum_t \log\pi_\theta(a_t|s_t)\,\gamma^t G_t`, torch.

    The gradient of that surrogate is the estimator of `reinforce_numpy`
    (the weights :math:`\gamma^t G_t` are constants).

    Returns
    -------
    Tensor (S, A), the dtype of `theta`

    References
    ----------
    [Williams1992].
    """
    import torch

    theta = theta.detach().requires_grad_(True)
    log_pi = torch.log_softmax(theta, dim=1)
    surrogate = theta.new_zeros(())
    for states, actions, rewards in episodes:
        returns = _reward_to_go(rewards, gamma, torch.empty_like(rewards))
        discount = gamma ** torch.arange(len(rewards), dtype=rewards.dtype)
        surrogate = surrogate + (log_pi[states, actions] * discount * returns).sum()
    (grad,) = torch.autograd.grad(surrogate / len(episodes), theta)
    return grad


# -- TRPO --------------------------------------------------------------------------------

def _conjugate_gradient(fvp, b, max_iter, rtol=1e-10):
    r"""Solve :math:`F x = b` from :math:`x_0 = 0` by conjugate gradient (NumPy or torch).

    Starting from 0 keeps every iterate in the Krylov space of b, which lies
    in the range of F: the limit is the minimum-norm solution :math:`F^+ b`.
    """
    x = 0 * b
    r = b * 1
    p = b * 1
    rr = float((r * r).sum())
    stop = rtol * rtol * rr
    for _ in range(max_iter):
        if rr <= stop:
            break
        Fp = fvp(p)
        pFp = float((p * Fp).sum())
        if not pFp > 0:
            # F is only semi-definite, and where pi_old is nearly deterministic rounding can
            # leave p in its null space: no further progress is possible along p.
            break
        alpha = rr / pFp
        x = x + alpha * p
        r = r - alpha * Fp
        rr_new = float((r * r).sum())
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _trpo_search(theta_old, g, fvp, surrogate, mean_kl, max_kl, copy, *, natural=True, check_kl=True,
                 on_reject="restore", curvature_sign=1.0, max_backtracks=10):
    r"""TRPO steps 2-4 given the surrogate gradient g and F v (NumPy or torch).

    Direction :math:`s = F^+ g` (or g itself with ``natural=False``), step
    :math:`\beta = \sqrt{2\delta / s^\top F s}` (``curvature_sign=-1``
    takes :math:`s^\top(-F)s` instead), then the first of
    :math:`\theta_{old} + 2^{-k}\beta s`, k = 0..`max_backtracks`, with
    improvement > 0 and mean KL <= delta. ``on_reject``: ``"restore"``
    returns ``copy(theta_old)``; ``"zero_step"`` returns
    :math:`\theta_{old} + 0 \cdot \beta s`; ``"keep_last"`` the last candidate.
    """
    if not bool((g != 0).any()):
        return copy(theta_old)  # nothing to gain: every candidate could only tie
    s = _conjugate_gradient(fvp, g, max_iter=len(g.reshape(-1))) if natural else g
    curvature = curvature_sign * float((s * fvp(s)).sum())
    if curvature == 0.0:
        # F s underflows where pi_old is nearly deterministic: no step can be sized.
        return copy(theta_old)
    # np.sqrt, not math.sqrt: a wrong-sign curvature gives NaN rather than an exception.
    beta = float(np.sqrt(2.0 * max_kl / curvature))
    full_step = beta * s
    L_old = surrogate(theta_old)
    theta = theta_old
    for k in range(max_backtracks + 1):
        theta = theta_old + 0.5 ** k * full_step
        if surrogate(theta) - L_old > 0 and (not check_kl or mean_kl(theta) <= max_kl):
            return theta
    if on_reject == "restore":
        return copy(theta_old)
    if on_reject == "zero_step":
        return theta_old + 0.0 * full_step
    return theta


def _log_softmax(theta):
    z = theta - theta.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _trpo_numpy(theta_old, states, actions, advantages, max_kl, *, objective_sign=1.0, **search):
    """A TRPO step on a tabular softmax batch, NumPy; `objective_sign` and `search` keywords are for bugs."""
    dtype = theta_old.dtype
    theta_old = theta_old.astype(np.float64)  # a copy: float32 CG and KL tests would be too coarse
    S, A = theta_old.shape
    n = len(states)
    adv = objective_sign * advantages.astype(np.float64)
    logp_old = _log_softmax(theta_old)
    pi_old = np.exp(logp_old)
    weight = np.bincount(states, minlength=S) / n  # share of each state in the batch mean

    def surrogate(theta):
        logp = _log_softmax(theta)
        return float(np.mean(np.exp(logp[states, actions] - logp_old[states, actions]) * adv))

    def mean_kl(theta):
        return float(weight @ np.sum(pi_old * (logp_old - _log_softmax(theta)), axis=1))

    def fisher_vector_product(v):
        # Exact over actions: F_s v_s = pi (v_s - pi . v_s), each state weighted by its batch share.
        centred = v - np.sum(pi_old * v, axis=1, keepdims=True)
        return weight[:, None] * pi_old * centred

    # dL/dtheta at theta_old = mean_i A_i (onehot(a_i) - pi_old(.|s_i)) on row s_i.
    g = np.zeros_like(theta_old)
    np.add.at(g, (states, actions), adv)
    np.add.at(g, states, -adv[:, None] * pi_old[states])
    g /= n
    theta = _trpo_search(theta_old, g, fisher_vector_product, surrogate, mean_kl, max_kl, np.copy, **search)
    return theta.astype(dtype, copy=False)


def trpo_step_numpy(theta_old, states, actions, advantages, max_kl):
    r"""One sample-based TRPO step for a tabular softmax policy, NumPy.

    .. math::
        L(\theta) = \frac1n \sum_i \frac{\pi_\theta(a_i|s_i)}{\pi_{old}(a_i|s_i)} A_i, \quad
        \bar D(\theta) = \frac1n \sum_i D_{KL}\big(\pi_{old}(\cdot|s_i) \,\|\, \pi_\theta(\cdot|s_i)\big)

    Direction :math:`s = F^+ \nabla L` by conjugate gradient on the exact
    batch Fisher :math:`F = \nabla^2 \bar D(\theta_{old})`, step
    :math:`\sqrt{2\delta / s^\top F s}\, s`, then backtracking (10 halvings)
    to the first point with :math:`\bar D \le \delta` and
    :math:`L(\theta) > L(\theta_{old})`; otherwise `theta_old` (a copy).

    Parameters
    ----------
    theta_old : ndarray (S, A)
    states, actions : int ndarray (n,)
    advantages : ndarray (n,)
    max_kl : float
        :math:`\delta`.

    Returns
    -------
    ndarray (S, A)

    References
    ----------
    [Schulman2015] Section 6 and Appendix C; refpg.algorithms.trpo.
    """
    return _trpo_numpy(theta_old, states, actions, advantages, max_kl)


def trpo_step_torch(theta_old, states, actions, advantages, max_kl):
    r"""The TRPO step of `trpo_step_numpy` with autograd: the gradient of L and Hessian-vector products of the mean KL.

    Returns
    -------
    Tensor (S, A)

    References
    ----------
    [Schulman2015] Appendix C.
    """
    import torch

    # float64 throughout, as in trpo_step_numpy: in float32, CG cannot reach its tolerance and
    # its extra iterations pick up noise from the null space of F.
    theta0 = theta_old.detach().double()
    advantages = advantages.double()
    logp_old = torch.log_softmax(theta0, dim=1)
    p_old = logp_old.exp()

    def surrogate_t(theta):
        logp = torch.log_softmax(theta, dim=1)
        return torch.mean(torch.exp(logp[states, actions] - logp_old[states, actions]) * advantages)

    def mean_kl_t(theta):
        logp = torch.log_softmax(theta, dim=1)
        return torch.mean(torch.sum(p_old[states] * (logp_old[states] - logp[states]), dim=1))

    theta = theta0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(surrogate_t(theta), theta)
    (kl_grad,) = torch.autograd.grad(mean_kl_t(theta), theta, create_graph=True)

    def fisher_vector_product(v):
        # The Hessian of the mean KL at theta_old is the Fisher (its gradient is 0 there).
        (hv,) = torch.autograd.grad((kl_grad * v).sum(), theta, retain_graph=True)
        return hv

    # Candidates are built from theta0 and the CG result, neither of which carries a graph.
    theta_new = _trpo_search(theta0, g, fisher_vector_product, lambda th: float(surrogate_t(th)),
                             lambda th: float(mean_kl_t(th)), max_kl, torch.clone)
    return theta_new.to(theta_old.dtype)

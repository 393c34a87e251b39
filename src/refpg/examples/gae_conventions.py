r"""GAE conventions of real projects: time-out bootstrap from V(s_t), done-after-step flags, output forms
and whitening.

Each function is written afresh in the style of the project it stands for
(RSL-RL's storage loop, skrl's ``compute_gae``, PureJaxRL's ``_calculate_gae``
scan, verl's and TRL's whitening); each broken one is one realistic edit of a
correct one, and its description cites the public thread about that bug.
The conventions are those of `refpg.conformance.check_gae`:

* ``"value_bootstrap"``: ``fn(rewards, values, dones, time_outs, last_values,
  gamma, lam)``; a time-out adds :math:`\gamma V(s_t)` to its own reward and
  is then cut like a termination (RSL-RL, Isaac Lab, rl_games, skrl).
* ``"purejaxrl"``: ``fn(rewards, values, dones, last_value, gamma,
  gae_lambda)``, ``dones[t]`` the done of step t itself.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``. torch and
jax are imported inside the functions, so this module imports without them.
"""

from __future__ import annotations

import functools

import numpy as np

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]


# -- value_bootstrap: RSL-RL / Isaac Lab / skrl ---------------------------------------

def _rsl_rl_returns(rewards, values, dones, last_values, gamma, lam):
    """The storage loop of RSL-RL's ``compute_returns`` on already folded rewards: (advantages, returns).

    Indexing and arithmetic only, so it runs on NumPy arrays and torch tensors alike.
    """
    steps = rewards.shape[0]
    returns = rewards * 0.0
    advantage = last_values * 0.0
    for step in reversed(range(steps)):
        next_values = last_values if step == steps - 1 else values[step + 1]
        next_is_not_terminal = 1.0 - dones[step]
        delta = rewards[step] + next_is_not_terminal * gamma * next_values - values[step]
        advantage = delta + next_is_not_terminal * gamma * lam * advantage
        returns[step] = advantage + values[step]
    return returns - values, returns


def gae_rsl_rl_torch(rewards, values, dones, time_outs, last_values, gamma, lam):
    r"""RSL-RL's GAE, torch: the time-out fold of ``PPO.process_env_step``, then ``compute_returns``.

    .. math::
        r'_t = r_t + \gamma V(s_t)\,\mathrm{timeout}_t, \quad
        \delta_t = r'_t + \gamma (1 - d_t) V(s_{t+1}) - V(s_t), \quad
        \hat A_t = \delta_t + \gamma\lambda (1 - d_t) \hat A_{t+1}

    Parameters
    ----------
    rewards, values, dones, time_outs : Tensor (T, N)
        ``dones = terminated | time_outs`` as floats.
    last_values : Tensor (N,)
        Value of the observation after the last step.
    gamma, lam : float

    Returns
    -------
    Tensor (T, N)

    References
    ----------
    [Schulman2016]; [Rudin2022] (Learning to Walk in Minutes), leggedrobotics/rsl_rl ``ppo.py`` and
    ``rollout_storage.py``; the approximation is discussed in leggedrobotics/rsl_rl issues #20 and #151.
    """
    rewards = rewards + gamma * values * time_outs  # the value the step started from: s_t, not s_{t+1}
    return _rsl_rl_returns(rewards, values, dones, last_values, gamma, lam)[0]


def gae_skrl_torch(rewards, values, dones, time_outs, last_values, gamma, lam):
    r"""skrl's PPO with ``time_limit_bootstrap=True``: returns ``(returns, advantages)``, the advantages
    whitened over the whole memory with ``(A - mean) / (std + 1e-8)``, torch's unbiased std.

    Checked with ``output="returns,advantages"`` and ``whiten=True`` (ddof 1, eps 1e-8 on the std).

    References
    ----------
    [Schulman2016]; Toni-SM/skrl ``agents/torch/ppo/ppo.py`` (``record_transition`` and ``compute_gae``).
    """
    import torch

    rewards = rewards + gamma * values * time_outs
    not_dones = torch.logical_not(dones.bool()).to(rewards.dtype)  # a bool factor would compute in float32
    advantages = torch.zeros_like(rewards)
    advantage = torch.zeros_like(last_values)
    for i in reversed(range(rewards.shape[0])):
        next_values = values[i + 1] if i < rewards.shape[0] - 1 else last_values
        advantage = rewards[i] - values[i] + gamma * not_dones[i] * (next_values + lam * advantage)
        advantages[i] = advantage
    returns = advantages + values
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return returns, advantages


def gae_value_bootstrap_on_dones_torch(rewards, values, dones, time_outs, last_values, gamma, lam):
    """BROKEN: the gamma * V(s_t) fold applied on every done, terminations included.

    A terminal state has no future, so its step gets a bootstrap it must not
    have: the fold must use ``time_outs`` only. Caught by
    ``gae.terminal_not_bootstrapped``.
    """
    rewards = rewards + gamma * values * dones
    return _rsl_rl_returns(rewards, values, dones, last_values, gamma, lam)[0]


def gae_value_bootstrap_from_next_row_numpy(rewards, values, dones, time_outs, last_values, gamma, lam):
    """BROKEN: the time-out fold reads ``values[t + 1]`` as "the next value".

    Inside a vectorised rollout row t + 1 of a timed-out environment is the
    reset observation of the next episode: its value is not the final
    observation's. Caught by ``gae.no_flow_across_episodes`` (the row before a
    boundary depends on the row after it).
    """
    next_values = np.concatenate([values[1:], last_values[None]])
    rewards = rewards + gamma * next_values * time_outs
    return _rsl_rl_returns(rewards, values, dones, last_values, gamma, lam)[0]


# -- purejaxrl: dones[t] is the done of step t ------------------------------------------

def _purejaxrl_scan(rewards, values, dones, last_value, gamma, gae_lambda, *, next_done=False):
    import jax
    import jax.numpy as jnp

    if next_done:  # the bug below: the done of the following step, last one 0
        dones = jnp.concatenate([dones[1:], jnp.zeros_like(dones[:1])])

    def step(carry, transition):
        gae, next_value = carry
        done, value, reward = transition
        delta = reward + gamma * next_value * (1 - done) - value
        gae = delta + gamma * gae_lambda * (1 - done) * gae
        return (gae, value), gae

    _, advantages = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value), (dones, values, rewards),
                                 reverse=True, unroll=16)
    return advantages, advantages + values


@functools.lru_cache(maxsize=None)
def _jitted(next_done: bool):
    import jax
    return jax.jit(functools.partial(_purejaxrl_scan, next_done=next_done))


def gae_purejaxrl_jax(rewards, values, dones, last_value, gamma, gae_lambda):
    r"""PureJaxRL's ``_calculate_gae``, jitted: a reverse ``jax.lax.scan`` over transitions whose
    ``done`` is the done of that step; returns ``(advantages, targets)``.

    .. math::
        \delta_t = r_t + \gamma (1 - d_t) V_{t+1} - V_t, \quad
        \hat A_t = \delta_t + \gamma\lambda (1 - d_t) \hat A_{t+1}, \quad V_T = \mathrm{last\_value}

    Checked with ``output="advantages,returns"``; a time limit is a done (no
    truncation flag in that convention).

    References
    ----------
    [Schulman2016]; luchris429/purejaxrl ``purejaxrl/ppo.py``.
    """
    return _jitted(False)(rewards, values, dones, last_value, gamma, gae_lambda)


def gae_purejaxrl_numpy(rewards, values, dones, last_value, gamma, gae_lambda):
    """The same recursion as `gae_purejaxrl_jax`, a NumPy loop returning the advantages alone."""
    advantages = np.zeros_like(rewards)
    gae, next_value = np.zeros_like(last_value), last_value
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_value * (1.0 - dones[t]) - values[t]
        gae = delta + gamma * gae_lambda * (1.0 - dones[t]) * gae
        advantages[t], next_value = gae, values[t]
    return advantages


def gae_purejaxrl_next_done_jax(rewards, values, dones, last_value, gamma, gae_lambda):
    """BROKEN: the scan reads the done of the following step (CleanRL's ``dones[t + 1]``) from a buffer
    whose ``done`` is already that of step t.

    Caught by ``gae.terminal_not_bootstrapped``.
    """
    return _jitted(True)(rewards, values, dones, last_value, gamma, gae_lambda)


# -- output forms and whitening --------------------------------------------------------

def _advantages_torch(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Canonical GAE in torch (refpg's flags), the building block of the whitening examples."""
    import torch

    not_terminated = 1.0 - terminated.to(rewards.dtype)
    not_done = not_terminated * (1.0 - truncated.to(rewards.dtype))
    deltas = rewards + gamma * not_terminated * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


def gae_whitened_rsqrt_torch(rewards, values, next_values, terminated, truncated, gamma, lam):
    """GAE returning ``(whitened advantages, returns)``, whitened as verl's ``masked_whiten`` and TRL's
    ``whiten`` do: ``(A - mean) * rsqrt(var + 1e-8)``, the unbiased variance; the returns from the
    advantages before whitening.

    Checked with ``output="advantages,returns"``, ``whiten=True``, ``whiten_eps_on="var"``.
    """
    import torch

    advantages = _advantages_torch(rewards, values, next_values, terminated, truncated, gamma, lam)
    returns = advantages + values
    whitened = (advantages - advantages.mean()) * torch.rsqrt(advantages.var() + 1e-8)
    return whitened, returns


def gae_returns_from_whitened_torch(rewards, values, next_values, terminated, truncated, gamma, lam):
    """BROKEN: the returns are computed after whitening, from the whitened advantages.

    The value function is then fitted to normalised targets. Caught by ``gae.returns``.
    """
    import torch

    advantages = _advantages_torch(rewards, values, next_values, terminated, truncated, gamma, lam)
    advantages = (advantages - advantages.mean()) * torch.rsqrt(advantages.var() + 1e-8)
    return advantages, advantages + values


def gae_whiten_std_only_numpy(rewards, values, next_values, terminated, truncated, gamma, lam):
    """BROKEN: "whitened" by dividing by the std without subtracting the mean.

    Caught by ``gae.recursion`` (every value check disagrees; no boundary is needed).
    """
    from refpg.returns import gae

    advantages = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    return advantages / (advantages.std(ddof=1) + 1e-8)


# -- the registry ---------------------------------------------------------------------------

#: Correct examples: each passes its check.
CORRECT: tuple[Example, ...] = (
    Example("gae_rsl_rl_torch", "gae", gae_rsl_rl_torch, "value_bootstrap", "torch", {}, None,
            "RSL-RL's time-out fold r + gamma * V(s_t) then its storage loop: the approximation its "
            "maintainers keep (leggedrobotics/rsl_rl issue #151), accepted when declared value_bootstrap"),
    Example("gae_skrl_torch", "gae", gae_skrl_torch, "value_bootstrap", "torch",
            {"output": "returns,advantages", "whiten": True}, None,
            "skrl's time_limit_bootstrap and compute_gae: (returns, advantages), advantages whitened by "
            "(A - mean) / (std + 1e-8)"),
    Example("gae_purejaxrl_jax", "gae", gae_purejaxrl_jax, "purejaxrl", "jax", {"output": "advantages,returns"},
            None, "PureJaxRL's _calculate_gae: a jitted reverse lax.scan, dones of the step itself, returning "
                  "(advantages, targets)"),
    Example("gae_purejaxrl_numpy", "gae", gae_purejaxrl_numpy, "purejaxrl", "numpy", {}, None,
            "PureJaxRL's recursion as a NumPy loop (done of the step itself), advantages only"),
    Example("gae_whitened_rsqrt_torch", "gae", gae_whitened_rsqrt_torch, "refpg", "torch",
            {"output": "advantages,returns", "whiten": True, "whiten_eps_on": "var"}, None,
            "advantages whitened as verl's masked_whiten and TRL's whiten, (A - mean) * rsqrt(var + 1e-8), "
            "returns from the advantages before whitening"),
)

#: Broken examples: each fails its check with its ``expected`` check id.
BROKEN: tuple[Example, ...] = (
    Example("gae_value_bootstrap_on_dones_torch", "gae", gae_value_bootstrap_on_dones_torch, "value_bootstrap",
            "torch", {}, "gae.terminal_not_bootstrapped",
            "the gamma * V(s_t) time-out fold applied on every done, terminations too: a terminal state "
            "bootstrapped (the timeout-and-done case of openai/spinningup PR #233, issue #257)"),
    Example("gae_value_bootstrap_from_next_row_numpy", "gae", gae_value_bootstrap_from_next_row_numpy,
            "value_bootstrap", "numpy", {}, "gae.no_flow_across_episodes",
            "time-out fold reads values[t + 1], the reset observation of the next episode (the bootstrap "
            "from the new episode fixed in Unity-Technologies/ml-agents PR #574)"),
    Example("gae_purejaxrl_next_done_jax", "gae", gae_purejaxrl_next_done_jax, "purejaxrl", "jax",
            {"output": "advantages,returns"}, "gae.terminal_not_bootstrapped",
            "the done of the next step read from a buffer of dones after each step: the two done "
            "conventions mixed up (vwxyzjn/cleanrl issue #393)"),
    Example("gae_returns_from_whitened_torch", "gae", gae_returns_from_whitened_torch, "refpg", "torch",
            {"output": "advantages,returns", "whiten": True, "whiten_eps_on": "var"}, "gae.returns",
            "returns computed from the whitened advantages: the value function learns normalised targets "
            "(luchris429/model-free-opponent-shaping issue #1)"),
    Example("gae_whiten_std_only_numpy", "gae", gae_whiten_std_only_numpy, "refpg", "numpy",
            {"whiten": True}, "gae.recursion",
            "advantages divided by their std without subtracting the mean (YunzhuLi/InfoGAIL issue #5)"),
)

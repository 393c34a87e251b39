"""GAE over the layouts of `refpg.conformance.gae_layouts`: RLHF token-level GAE and episode-at-a-time buffers.

Correct ones in the style of verl, TRL, OpenRLHF, Spinning Up and RLlib, and
broken ones, each one real bug away from a correct one and citing the public
thread that reports it. torch is imported inside the torch functions.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.
"""

from __future__ import annotations

import numpy as np

from refpg.examples._example import Example

# -- token-level GAE (torch) --------------------------------------------------------------


def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def _masked_whiten(x, mask, *, ddof=1, eps=1e-8):
    """(x - mean) / sqrt(var + eps) over the response tokens of the whole batch.

    With one response token the centred value is exactly 0, so it is returned without computing a
    Bessel-corrected variance of one token (0 / 0): the kit's rule, whiten_single_token="zero".
    """
    import torch

    n = mask.sum()
    centred = x - _masked_mean(x, mask)
    if n <= 1:
        return torch.zeros_like(x)
    var = _masked_mean(centred ** 2, mask)
    if ddof == 1:
        var = var * n / (n - 1)
    return centred * torch.rsqrt(var + eps)


def verl_gae(token_level_rewards, values, response_mask, gamma, lam):
    """verl's compute_gae_advantage_return: the recursion carries through masked tokens, so the last response
    token bootstraps 0 and nothing of the padding flows back; returns before whitening."""
    import torch

    mask = response_mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    carry = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(values.shape[1])):
        delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * carry
        # On a padding token keep what the response token after it needs: nothing moves.
        next_value = mask[:, t] * values[:, t] + (1 - mask[:, t]) * next_value
        carry = mask[:, t] * candidate + (1 - mask[:, t]) * carry
        out.append(carry)
    advantages = torch.stack(out[::-1], dim=1)
    returns = advantages + values
    return _masked_whiten(advantages, mask), returns


def trl_style_gae(token_level_rewards, values, response_mask, gamma, lam):
    """TRL's PPOTrainer loop on masked inputs: values and rewards zeroed on the padding first, the plain
    `values[:, t + 1]` recursion, masked_whiten with the biased variance, padding set to 0."""
    import torch

    mask = response_mask.to(values.dtype)
    values, rewards = values * mask, token_level_rewards * mask
    length = values.shape[1]
    carry = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        carry = delta + gamma * lam * carry
        out.append(carry)
    advantages = torch.stack(out[::-1], dim=1)
    returns = advantages + values
    return _masked_whiten(advantages, mask, ddof=0) * mask, returns


def openrlhf_gae(values, rewards, action_mask, gamma, lambd):
    """OpenRLHF's get_advantages_and_returns: bool action_mask, values and rewards masked, no whitening."""
    import torch

    values, rewards = values * action_mask, rewards * action_mask
    length = rewards.shape[1]
    carry = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        carry = delta + gamma * lambd * carry
        out.append(carry)
    advantages = torch.stack(out[::-1], dim=1)
    return advantages, advantages + values


def rlhf_gae_jax(token_level_rewards, values, response_mask, gamma, lam):
    """verl's recursion as a jitted `lax.scan` over the reversed time axis, with the kit's whitening."""
    return _rlhf_gae_jit(token_level_rewards, values, response_mask, gamma, lam)


def _rlhf_gae_jax_impl(token_level_rewards, values, response_mask, gamma, lam):
    import jax
    import jax.numpy as jnp

    mask = response_mask.astype(values.dtype)

    def step(state, xs):
        next_value, carry = state
        r, v, m = xs
        candidate = r + gamma * next_value - v + gamma * lam * carry
        next_value = m * v + (1 - m) * next_value
        carry = m * candidate + (1 - m) * carry
        return (next_value, carry), carry

    zeros = jnp.zeros(values.shape[0], values.dtype)
    _, out = jax.lax.scan(step, (zeros, zeros), (token_level_rewards.T, values.T, mask.T), reverse=True)
    advantages = out.T
    n = mask.sum()
    mean = (advantages * mask).sum() / n
    centred = advantages - mean
    var = (centred ** 2 * mask).sum() / n * n / jnp.maximum(n - 1, 1)
    whitened = jnp.where(n > 1, centred * jax.lax.rsqrt(var + 1e-8), 0.0)
    return whitened, advantages + values


def _jit(fn):
    """`jax.jit(fn)`, built on first call so that this module imports without JAX."""
    cache = {}

    def call(*args):
        if "fn" not in cache:
            import jax
            cache["fn"] = jax.jit(fn)
        return cache["fn"](*args)
    return call


_rlhf_gae_jit = _jit(_rlhf_gae_jax_impl)


# -- broken token-level GAE ------------------------------------------------------------------

def rlhf_bootstraps_first_padding_value(token_level_rewards, values, response_mask, gamma, lam):
    """TRL's padding_mask_p1: values kept one token past the response, so the last response token bootstraps
    the first padding token's value."""
    import torch

    mask = response_mask.to(values.dtype)
    mask_p1 = torch.cat([mask[:, :1], torch.maximum(mask[:, 1:], mask[:, :-1])], dim=1)
    values, rewards = values * mask_p1, token_level_rewards * mask
    length = values.shape[1]
    carry = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, 0])
        carry = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * carry
        out.append(carry)
    advantages = torch.stack(out[::-1], dim=1)
    return _masked_whiten(advantages, mask), advantages + values


def openrlhf_rewards_not_masked(values, rewards, action_mask, gamma, lambd):
    """Values masked but not the rewards: the KL penalties of the padding tokens flow back into the response."""
    import torch

    values = values * action_mask
    length = rewards.shape[1]
    carry = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else 0.0
        carry = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lambd * carry
        out.append(carry)
    advantages = torch.stack(out[::-1], dim=1)
    return advantages, advantages + values


def rlhf_whiten_mean_over_padding(token_level_rewards, values, response_mask, gamma, lam):
    """verl's recursion, whitened with the mean over every position (padding included) and the masked
    variance."""
    import torch

    advantages, returns = verl_gae(token_level_rewards, values, response_mask, gamma, lam)
    raw = returns - values
    mask = response_mask.to(values.dtype)
    n = mask.sum()
    centred = raw - raw.mean()
    var = (centred ** 2 * mask).sum() / n * n / torch.clamp(n - 1, min=1)
    return torch.where(n > 1, centred * torch.rsqrt(var + 1e-8), torch.zeros_like(raw)), returns


def rlhf_masked_var_raises(token_level_rewards, values, response_mask, gamma, lam):
    """verl's masked_var with Bessel's correction: refuses a batch of one response token."""
    import torch

    mask = response_mask.to(values.dtype)
    if mask.sum() == 1:
        raise ValueError("The sum of the mask is one, which can cause a division by zero.")
    advantages, returns = verl_gae(token_level_rewards, values, response_mask, gamma, lam)
    return advantages, returns


# -- episode-at-a-time buffers (numpy) ----------------------------------------------------------

def discount_cumsum(x, discount):
    """y[t] = sum_k discount^k x[t + k], by a first-order IIR filter run backwards (Spinning Up's way)."""
    import scipy.signal

    return scipy.signal.lfilter([1], [1, float(-discount)], x[::-1], axis=0)[::-1]


def spinningup_finish_path(rewards, values, last_val, gamma, lam):
    """Spinning Up's PPOBuffer.finish_path: last_val appended to both; GAE by discount_cumsum of the deltas;
    rewards-to-go the discounted return bootstrapped from last_val."""
    rews = np.append(rewards, last_val)
    vals = np.append(values, last_val)
    deltas = rews[:-1] + gamma * vals[1:] - vals[:-1]
    return discount_cumsum(deltas, gamma * lam), discount_cumsum(rews, gamma)[:-1]


def rllib_compute_advantages(rewards, vf_preds, last_r, gamma, lambda_):
    """RLlib's compute_advantages(use_gae=True, use_critic=True) on one episode's SampleBatch; the value
    targets cast to float32 as RLlib does."""
    vpred = np.concatenate([vf_preds, np.array([last_r], dtype=vf_preds.dtype)])
    delta = rewards + gamma * vpred[1:] - vpred[:-1]
    advantages = discount_cumsum(delta, gamma * lambda_).astype(vf_preds.dtype)
    return advantages, (advantages + vf_preds).astype(np.float32)


def rllib_ignores_last_r(rewards, vf_preds, last_r, gamma, lambda_):
    """Every episode end treated as a termination: last_r dropped, 0 bootstrapped."""
    return rllib_compute_advantages(rewards, vf_preds, 0.0, gamma, lambda_)


def spinningup_epoch_end_terminal(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Spinning Up's PPO loop over each environment's column, calling finish_path with
    ``last_val = V(s_T) if timeout or epoch_ended else 0``: a true terminal on the epoch's last step is
    bootstrapped with the value of the terminal observation (canonical refpg convention)."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        start = 0
        for t in range(T):
            timeout = bool(truncated[t, n]) and not terminated[t, n]
            epoch_ended = t == T - 1
            if terminated[t, n] or timeout or epoch_ended:
                last_val = next_values[t, n] if timeout or epoch_ended else 0.0
                adv[start:t + 1, n], _ = spinningup_finish_path(rewards[start:t + 1, n], values[start:t + 1, n],
                                                                last_val, gamma, lam)
                start = t + 1
    return adv


# -- the registry --------------------------------------------------------------------------------

CORRECT: tuple[Example, ...] = (
    Example("layout_verl_gae_torch", "gae", verl_gae, "rlhf", "torch", {"whiten": True, "whiten_eps_on": "var"},
            description="verl's compute_gae_advantage_return: carry through masked tokens, masked_whiten with "
                        "Bessel's correction, a lone token whitened to 0"),
    Example("layout_trl_style_gae_torch", "gae", trl_style_gae, "rlhf", "torch",
            {"whiten": True, "whiten_ddof": 0, "whiten_eps_on": "var"},
            description="TRL PPOTrainer's loop on masked values and rewards, masked_whiten with the biased "
                        "variance (whiten_ddof=0), padding set to 0"),
    Example("layout_openrlhf_gae_torch", "gae", openrlhf_gae, "openrlhf", "torch", {},
            description="OpenRLHF's get_advantages_and_returns: bool action_mask, masked inputs, no whitening"),
    Example("layout_spinningup_numpy", "gae", spinningup_finish_path, "spinningup", "numpy", {},
            description="Spinning Up's PPOBuffer.finish_path with scipy.signal.lfilter's discount_cumsum"),
    Example("layout_rllib_numpy", "gae", rllib_compute_advantages, "rllib", "numpy", {},
            description="RLlib's compute_advantages (use_gae=True) on one episode, value targets in float32"),
    Example("layout_rlhf_gae_jax", "gae", rlhf_gae_jax, "rlhf", "jax", {"whiten": True, "whiten_eps_on": "var"},
            description="verl's recursion as a jitted lax.scan, masked whitening with Bessel's correction"),
)

BROKEN: tuple[Example, ...] = (
    Example("layout_rlhf_bootstraps_padding_value", "gae", rlhf_bootstraps_first_padding_value, "rlhf", "torch",
            {"whiten": True, "whiten_eps_on": "var"}, "gae.padding_ignored",
            "values kept one token past the response (TRL's padding_mask_p1), so the last response token "
            "bootstraps the first padding token's value (huggingface/trl issues #1893 and #3750; "
            "deepspeedai/DeepSpeedExamples PR #672)"),
    Example("layout_openrlhf_rewards_not_masked", "gae", openrlhf_rewards_not_masked, "openrlhf", "torch", {},
            "gae.padding_ignored",
            "rewards of the padding not masked: their KL penalties leak into the response's advantages "
            "(natolambert/rlhf-book PR #216; huggingface/trl issue #7024)"),
    Example("layout_rlhf_whiten_mean_over_padding", "gae", rlhf_whiten_mean_over_padding, "rlhf", "torch",
            {"whiten": True, "whiten_eps_on": "var"},
            "gae.whitening",
            "whitening mean taken over every position, padding included, the variance over the response "
            "(NovaSky-AI/SkyRL issue #1305; ray-project/ray issue #57989)"),
    Example("layout_rlhf_masked_var_raises", "gae", rlhf_masked_var_raises, "rlhf", "torch", {"whiten": True, "whiten_eps_on": "var"},
            "gae.single_token_batch",
            "masked_var with Bessel's correction raises on a batch of one response token "
            "(alibaba/ROLL issue #475)"),
    Example("layout_rllib_ignores_last_r", "gae", rllib_ignores_last_r, "rllib", "numpy", {},
            "gae.truncation_bootstrapped",
            "a time-limit cut treated as a termination: last_r dropped (the bug class of Toni-SM/skrl issue #449 "
            "and DLR-RM/stable-baselines3 issue #633)"),
    Example("layout_spinningup_epoch_end_terminal", "gae", spinningup_epoch_end_terminal, "refpg", "numpy", {},
            "gae.terminal_not_bootstrapped",
            "Spinning Up's caller bootstraps V(s_T) when a true terminal lands on the epoch's last step "
            "(openai/spinningup issue #257, PR #291)"),
)

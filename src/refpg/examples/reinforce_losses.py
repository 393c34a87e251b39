r"""REINFORCE written as a surrogate loss to backpropagate, as real code writes it.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``. Each
function is checked with ``check_reinforce_estimator(fn, convention="loss")``
(or ``"loss_padded"`` for the jitted JAX one): the kit differentiates the
returned loss and judges :math:`-\partial\,\text{loss}/\partial\theta`
against the exact gradient, under the declared ``objective`` and
``normalization``. The policy is the tabular softmax, :math:`\pi(\cdot|s) =
\mathrm{softmax}(\theta[s])`: what a policy network computes on one-hot
observations.

The styles followed (written afresh, not copied):

* Spinning Up's simplest policy gradient (``spinup/examples/pytorch/pg_math/1_simple_pg.py``):
  one flat batch of every step, each weighed by its episode's whole
  undiscounted return :math:`R(\tau)`, and ``-(logp * weights).mean()``
  over all the steps. Its expectation is :math:`\frac{E}{N}`-scaled
  :math:`\nabla J_{\gamma=1}`: unbiased once declared
  ``objective="undiscounted", normalization="per_step"`` (the kit rescales
  each call by its own N / E). Its average over steps rather than episodes
  is openai/spinningup#59, #222, #414 and #454.
* PyTorch's ``examples/reinforcement_learning/reinforce.py``: returns
  accumulated backwards, ``R = r + gamma * R``, inserted at the front; the
  loss is the sum of ``-log_prob * R``.
* CleanRL-style single-file code: one vectorised ``-(logp * returns)``
  reduced with ``.sum()`` or ``.mean()``.

torch and jax are imported inside the functions, so this module imports
without them.
"""

from __future__ import annotations

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]


# -- correct -------------------------------------------------------------------------------------

def spinning_up_simple_pg_loss(theta, episodes, gamma):
    r"""Spinning Up's simplest policy gradient loss: :math:`-\frac1N\sum_{\text{steps}} \log\pi(a|s)\,R(\tau)`.

    Every step of an episode is weighed by the episode's undiscounted
    return; ``gamma`` is ignored; the mean runs over all N steps of the
    batch. Declared ``objective="undiscounted", normalization="per_step"``.

    References
    ----------
    [Williams1992]; OpenAI Spinning Up, "Intro to Policy Optimization", part 3.
    """
    import torch
    from torch.distributions.categorical import Categorical

    batch_obs, batch_acts, batch_weights = [], [], []
    for obs, acts, rews in episodes:
        ep_ret, ep_len = float(rews.sum()), len(rews)
        batch_obs.append(obs)
        batch_acts.append(acts)
        batch_weights += [ep_ret] * ep_len  # the weight of each logprob(a|s) is R(tau)

    def compute_loss(obs, act, weights):
        logp = Categorical(logits=theta[obs]).log_prob(act)
        return -(logp * weights).mean()

    return compute_loss(torch.cat(batch_obs), torch.cat(batch_acts),
                        torch.as_tensor(batch_weights, dtype=theta.dtype))


def _returns_backward(rewards, gamma):
    """PyTorch example's loop: G_t = r_t + gamma G_{t+1}, built from the last step back."""
    R, returns = 0.0, []
    for r in reversed(rewards):
        R = r + gamma * R
        returns.insert(0, R)
    return returns


def reinforce_discounted_loss(theta, episodes, gamma):
    r"""The PyTorch example's REINFORCE loss with the :math:`\gamma^t` factor, averaged over episodes.

    .. math::
        \text{loss} = -\frac1E \sum_e \sum_t \gamma^t \log\pi_\theta(a_t|s_t)\, G_t,
        \qquad G_t = \sum_{k\ge t}\gamma^{k-t} r_k

    :math:`-\nabla` of it is the estimator of docs/conventions.md (no
    baseline): declared ``objective="discounted", normalization="per_episode"``
    (the defaults).

    References
    ----------
    [Williams1992]; [Nota2020] (the gamma^t factor).
    """
    import torch

    states = torch.cat([s for s, _, _ in episodes])
    actions = torch.cat([a for _, a, _ in episodes])
    weights = []
    for _, _, rewards in episodes:
        returns = _returns_backward(rewards.tolist(), gamma)
        weights += [gamma ** t * G for t, G in enumerate(returns)]
    log_probs = torch.log_softmax(theta, dim=-1)[states, actions]
    return -(log_probs * torch.tensor(weights, dtype=theta.dtype)).sum() / len(episodes)


def reinforce_gamma_free_sum_loss(theta, episodes, gamma):
    r"""CleanRL-style: every step of the batch in one vector, ``-(logp * returns).sum()``, no :math:`\gamma^t`.

    .. math:: \text{loss} = -\sum_e \sum_t \log\pi_\theta(a_t|s_t)\, G_t

    The form of PyTorch's example (which sums over one episode) on a batch:
    declared ``objective="gamma_free", normalization="sum"``.

    References
    ----------
    [Nota2020] Section 4 (what the gamma^t-free form estimates).
    """
    import torch

    states = torch.cat([s for s, _, _ in episodes])
    actions = torch.cat([a for _, a, _ in episodes])
    returns = torch.tensor([G for _, _, r in episodes for G in _returns_backward(r.tolist(), gamma)],
                           dtype=theta.dtype)
    logp = torch.log_softmax(theta, dim=-1)[states, actions]
    return -(logp * returns).sum()


_JITTED: dict = {}


def _jax_padded_loss(mask_mean: bool):
    """The jitted JAX loss of `jax_reinforce_padded_loss` (built once per variant, on first use)."""
    if mask_mean in _JITTED:
        return _JITTED[mask_mean]
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loss(theta, states, actions, rewards, valid, gamma):
        # G = D r with D[t, k] = gamma^(k - t) for k >= t: every reward-to-go in one product. Padding
        # rows have r = 0 and follow the episode's end, so they add nothing to a real step's return.
        t = jnp.arange(rewards.shape[0], dtype=rewards.dtype)
        ahead = t[None, :] - t[:, None]
        D = jnp.where(ahead >= 0, gamma ** jnp.maximum(ahead, 0.0), 0.0)
        returns = D @ rewards
        logp = jnp.take_along_axis(jax.nn.log_softmax(theta[states], axis=-1), actions[..., None],
                                   axis=-1)[..., 0]
        per_step = jax.lax.stop_gradient(gamma ** t[:, None] * returns) * logp
        if mask_mean:  # a mean over the padded array: the padding counts in the denominator
            return -jnp.mean(per_step)
        return -jnp.sum(jnp.where(valid, per_step, 0.0)) / rewards.shape[1]

    _JITTED[mask_mean] = loss
    return loss


def jax_reinforce_padded_loss(theta, states, actions, rewards, valid, gamma):
    r"""REINFORCE as a jitted JAX loss on the padded time-major batch, rlax/Mava style.

    .. math::
        \text{loss} = -\frac1E \sum_{t, e} \text{valid}_{te}\, \gamma^t G_{te} \log\pi_\theta(a_{te}|s_{te})

    with every reward-to-go from one matrix product, :math:`G = D r`,
    :math:`D_{tk} = \gamma^{k-t}` for :math:`k \ge t`. Declared
    ``convention="loss_padded"`` (the defaults otherwise): the kit pads to a
    few lengths, so the ``jax.jit`` compiles a handful of times per check.

    References
    ----------
    [Williams1992].
    """
    return _jax_padded_loss(False)(theta, states, actions, rewards, valid, gamma)


# -- broken --------------------------------------------------------------------------------------

def spinning_up_loss_without_minus(theta, episodes, gamma):
    r"""Spinning Up's loss with the minus sign dropped: ``(logp * weights).mean()``.

    Minimising it is gradient ascent on :math:`-J`: the judged
    :math:`-\nabla\text{loss}` is :math:`-\hat g`. Why the minus sign is
    there is openai/spinningup#436. Caught by ``reinforce_estimator.unbiased``
    (the hint names the factor -1).
    """
    return -spinning_up_simple_pg_loss(theta, episodes, gamma)


def reward_to_go_forward_loss(theta, episodes, gamma):
    r"""The discounted loss with the "return" accumulated forward: :math:`\sum_{k\le t}\gamma^{t-k} r_k`.

    The loop runs over the rewards in order instead of reversed, so step t
    is weighed by the rewards before it, which its action cannot have
    caused (mohmdelsayed/streaming-drl#3: "the discounted sum of past
    rewards"; the misplaced reverse of
    PacktPublishing/Tensorflow-2-Reinforcement-Learning-Cookbook#27).
    Caught by ``reinforce_estimator.unbiased``.
    """
    import torch

    states = torch.cat([s for s, _, _ in episodes])
    actions = torch.cat([a for _, a, _ in episodes])
    weights = []
    for _, _, rewards in episodes:
        R, returns = 0.0, []
        for r in rewards.tolist():  # should be reversed(...), each R inserted at the front
            R = r + gamma * R
            returns.append(R)
        weights += [gamma ** t * G for t, G in enumerate(returns)]
    log_probs = torch.log_softmax(theta, dim=-1)[states, actions]
    return -(log_probs * torch.tensor(weights, dtype=theta.dtype)).sum() / len(episodes)


def standardised_returns_loss(theta, episodes, gamma):
    r"""PyTorch example's per-episode standardisation, ``(returns - mean) / (returns.std() + eps)``.

    On a one-step episode ``returns.std()`` (ddof 1) is NaN, and eps does
    not help: the loss is NaN. The NaN of a zero standard deviation in a
    policy-gradient loss is ray-project/ray#846 (all-zero rewards) and
    huseinzol05/Stock-Prediction-Models#43 (equal rewards); the
    standardisation is that of pytorch/examples ``reinforce.py``. (Were it
    finite, the episode's own mean return would still be a baseline that
    depends on its actions.) Caught by ``reinforce_estimator.output_finite``
    on the one-step batch every check passes first; the mean test is then
    reported as not run.
    """
    import torch

    eps = torch.finfo(torch.float32).eps
    log_probs = torch.log_softmax(theta, dim=-1)
    episode_losses = []
    for states, actions, rewards in episodes:
        returns = torch.tensor(_returns_backward(rewards.tolist(), gamma), dtype=theta.dtype)
        returns = (returns - returns.mean()) / (returns.std() + eps)
        episode_losses.append(-(log_probs[states, actions] * returns).sum())
    return torch.stack(episode_losses).mean()


def jax_padded_loss_mean_over_padding(theta, states, actions, rewards, valid, gamma):
    r"""The jitted JAX loss reduced with ``jnp.mean`` over the whole padded (T, E) array.

    The padding enters the denominator (and, with the terminal state and
    action 0 in it, the log-probabilities), so the loss is scaled by
    1 / (T E) with T the padded length, which varies from batch to batch:
    the unmasked padding of instadeepai/Mava#441 and #894. Caught by
    ``reinforce_estimator.unbiased``.
    """
    return _jax_padded_loss(True)(theta, states, actions, rewards, valid, gamma)


def _ex(name, fn, description, *, convention="loss", backend="torch", expected=None, **options) -> Example:
    return Example(name, "reinforce_estimator", fn, convention, backend, options,
                   None if expected is None else f"reinforce_estimator.{expected}", description)


CORRECT: tuple[Example, ...] = (
    _ex("reinforce_loss_spinning_up_torch", spinning_up_simple_pg_loss,
        "Spinning Up's simplest PG loss, -(logp * R(tau)).mean() over all steps, declared undiscounted and "
        "per-step (openai/spinningup#59)", objective="undiscounted", normalization="per_step"),
    _ex("reinforce_loss_discounted_torch", reinforce_discounted_loss,
        "PyTorch-example REINFORCE loss with gamma^t, summed over each episode and averaged over episodes"),
    _ex("reinforce_loss_gamma_free_sum_torch", reinforce_gamma_free_sum_loss,
        "CleanRL-style -(logp * returns).sum() over the batch, declared gamma_free and sum",
        objective="gamma_free", normalization="sum"),
    _ex("reinforce_loss_padded_jax", jax_reinforce_padded_loss,
        "jitted JAX loss on the padded time-major batch, masked by valid, mean over episodes",
        convention="loss_padded", backend="jax"),
)

BROKEN: tuple[Example, ...] = (
    _ex("reinforce_loss_without_minus_torch", spinning_up_loss_without_minus,
        "Spinning Up's loss without the minus sign: gradient ascent on -J (openai/spinningup#436)",
        expected="unbiased", objective="undiscounted", normalization="per_step"),
    _ex("reinforce_loss_reward_to_go_forward_torch", reward_to_go_forward_loss,
        "returns accumulated forward over past rewards (mohmdelsayed/streaming-drl#3)", expected="unbiased"),
    _ex("reinforce_loss_standardised_one_step_nan_torch", standardised_returns_loss,
        "per-episode (returns - mean) / (std + eps): NaN on a one-step episode (ray-project/ray#846)",
        expected="output_finite"),
    _ex("reinforce_loss_spinning_up_declared_discounted_torch", spinning_up_simple_pg_loss,
        "Spinning Up's correct loss under the default declaration (discounted, per episode): the hint names "
        "undiscounted, per_step (openai/spinningup#454)", expected="unbiased"),
    _ex("reinforce_loss_padded_mean_over_padding_jax", jax_padded_loss_mean_over_padding,
        "jitted JAX loss with jnp.mean over the padded array, padding counted (instadeepai/Mava#894)",
        convention="loss_padded", backend="jax", expected="unbiased"),
)

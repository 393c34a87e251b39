r"""Whole pipelines for kind ``pipeline_gradient``: correct ones, and broken ones from public threads.

Each function is ``fn(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed) -> grads``
(`refpg.conformance.pipeline.check_pipeline_gradient`): it builds its vector env from ``make_env``,
loads ``params`` into its actor and critic, collects ``n_steps`` steps from each of ``n_envs``
environments, computes GAE and its loss, and returns the gradient of the first minibatch before any
clipping or optimiser step.

* `sb3_ppo_pipeline` runs the real ``stable_baselines3.PPO`` (``net_arch=[]``, so its policy is the
  kit's linear actor and critic on one-hot observations): ``collect_rollouts`` on a ``DummyVecEnv``,
  then ``train()``, whose first gradient is captured where it calls ``clip_grad_norm_``.
* `cleanrl_style_pipeline` is a collector and loss written the way CleanRL's ``ppo.py`` is, on
  Gymnasium's ``SyncVectorEnv`` with same-step autoreset, except that it bootstraps truncations from
  the final observation (CleanRL itself does not: vwxyzjn/cleanrl#198).
* `numpy_a2c_pipeline`: the same in NumPy with the gradient written out, A2C style (one step on the
  whole batch).

The broken ones each differ from a correct one by one realistic mistake, cited in its description.
torch and stable-baselines3 are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN", "sb3_ppo_pipeline", "sb3_ppo_default_normalization", "cleanrl_style_pipeline",
           "cleanrl_ppo_as_published", "cleanrl_terminations_only", "cleanrl_next_step_autoreset",
           "numpy_a2c_pipeline", "numpy_last_step_not_bootstrapped", "numpy_truncation_bootstraps_current",
           "jax_ppo_pipeline"]


@contextlib.contextmanager
def _one_torch_thread():
    """These models are one linear layer on a handful of inputs: torch's intra-op threads only add overhead,
    and on a busy machine they fight other processes (7x slower calls measured on 2 shared cores). The
    caller's setting comes back afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- stable-baselines3 ------------------------------------------------------------------------------------

class _FirstGradient(Exception):
    """Raised from inside PPO.train once the first minibatch's gradient is read: the update goes no further."""


def _sb3_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, *, normalize_advantage):
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([make_env] * n_envs)
    # batch_size 64 (SB3's default): the first minibatch is a random quarter of the 256 samples, which
    # has the whole buffer's mean gradient, so the loss's mean reduction gives c = 1.
    model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=64, n_epochs=1, gamma=gamma, gae_lambda=gae_lambda,
                normalize_advantage=normalize_advantage, ent_coef=0.0, policy_kwargs={"net_arch": []}, seed=seed,
                device="cpu")
    policy = model.policy
    with torch.no_grad():
        policy.action_net.weight.copy_(torch.as_tensor(params["actor_w"].T))
        policy.action_net.bias.copy_(torch.as_tensor(params["actor_b"]))
        policy.value_net.weight.copy_(torch.as_tensor(params["critic_w"][None, :]))
        policy.value_net.bias.copy_(torch.as_tensor(params["critic_b"]).reshape(1))
    _, callback = model._setup_learn(n_steps * n_envs, callback=None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=n_steps)

    grads = {}
    clip = torch.nn.utils.clip_grad_norm_

    def read_first_gradient(parameters, *args, **kwargs):
        # PPO.train calls clip_grad_norm_ right after loss.backward(): the gradient here is unclipped.
        grads["actor_w"] = policy.action_net.weight.grad.detach().T.clone()
        grads["actor_b"] = policy.action_net.bias.grad.detach().clone()
        raise _FirstGradient

    torch.nn.utils.clip_grad_norm_ = read_first_gradient
    try:
        model.train()
    except _FirstGradient:
        pass
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    venv.close()
    return grads


def sb3_ppo_pipeline(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """stable_baselines3.PPO as installed: ``DummyVecEnv``, ``collect_rollouts`` (a time limit bootstrapped with
    gamma V(terminal observation), DLR-RM/stable-baselines3#633), GAE, ``train()``; the first minibatch's
    gradient before ``clip_grad_norm_``. ``normalize_advantage=False``, ``ent_coef=0``."""
    with _one_torch_thread():
        return _sb3_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed,
                                   normalize_advantage=False)


def sb3_ppo_default_normalization(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """SB3's PPO with its default normalize_advantage=True, checked as if it were off."""
    with _one_torch_thread():
        return _sb3_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed,
                                   normalize_advantage=True)


# -- CleanRL's structure ------------------------------------------------------------------------------------

def _cleanrl_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, *, truncation: str,
                            autoreset: str = "same_step"):
    """CleanRL ppo.py's rollout, GAE and loss (num_minibatches 4, clip 0.2, clipped value loss, vf_coef 0.5,
    ent_coef 0.01, norm_adv off). `truncation`: "bootstrap" (final observation), "done" (CleanRL's
    logical_or) or "ignored" (done = terminations only)."""
    with _one_torch_thread():
        return _cleanrl_rollout_and_loss(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed,
                                         truncation=truncation, autoreset=autoreset)


def _cleanrl_rollout_and_loss(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, *, truncation, autoreset):
    import gymnasium as gym
    import torch
    from torch import nn

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    mode = gym.vector.AutoresetMode.SAME_STEP if autoreset == "same_step" else gym.vector.AutoresetMode.NEXT_STEP
    envs = gym.vector.SyncVectorEnv([make_env] * n_envs, autoreset_mode=mode)
    n_obs, n_act = int(envs.single_observation_space.n), int(envs.single_action_space.n)

    actor, critic = nn.Linear(n_obs, n_act), nn.Linear(n_obs, 1)
    with torch.no_grad():
        actor.weight.copy_(torch.as_tensor(params["actor_w"].T))
        actor.bias.copy_(torch.as_tensor(params["actor_b"]))
        critic.weight.copy_(torch.as_tensor(params["critic_w"][None, :]))
        critic.bias.copy_(torch.as_tensor(params["critic_b"]).reshape(1))

    def one_hot(o):
        return nn.functional.one_hot(torch.as_tensor(np.asarray(o, dtype=np.int64)), n_obs).float()

    def act(x, action=None):
        dist = torch.distributions.Categorical(logits=actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), critic(x).squeeze(-1)

    obs = torch.zeros((n_steps, n_envs, n_obs))
    actions = torch.zeros((n_steps, n_envs), dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros((n_steps, n_envs)) for _ in range(4))
    next_obs, _ = envs.reset(seed=seed)
    next_obs, next_done = one_hot(next_obs), torch.zeros(n_envs)
    for step in range(n_steps):
        obs[step], dones[step] = next_obs, next_done
        with torch.no_grad():
            action, logprob, _, value = act(next_obs)
        actions[step], logprobs[step], values[step] = action, logprob, value
        raw_obs, reward, terminations, truncations, infos = envs.step(action.numpy())
        reward = torch.as_tensor(reward, dtype=torch.float32)
        if truncation == "bootstrap" and "_final_obs" in infos:
            # A time limit is not the end of the task: fold gamma V(final observation) into the reward, then
            # let done cut the recursion, as SB3 does.
            cut = np.flatnonzero(infos["_final_obs"] & truncations & ~terminations)
            if cut.size:
                with torch.no_grad():
                    final_values = critic(one_hot(np.stack(infos["final_obs"][cut]))).squeeze(-1)
                reward[cut] += gamma * final_values
        rewards[step] = reward
        done = terminations if truncation == "ignored" else np.logical_or(terminations, truncations)
        next_obs, next_done = one_hot(raw_obs), torch.as_tensor(done, dtype=torch.float32)

    with torch.no_grad():
        next_value = critic(next_obs).squeeze(-1)
        advantages = torch.zeros_like(rewards)
        lastgaelam = 0
        for t in reversed(range(n_steps)):
            if t == n_steps - 1:
                nextnonterminal, nextvalues = 1.0 - next_done, next_value
            else:
                nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
            delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
            advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        returns = advantages + values

    batch = n_steps * n_envs
    b_obs, b_actions = obs.reshape(batch, n_obs), actions.reshape(-1)
    b_logprobs, b_advantages = logprobs.reshape(-1), advantages.reshape(-1)
    b_returns, b_values = returns.reshape(-1), values.reshape(-1)
    b_inds = np.arange(batch)
    np.random.shuffle(b_inds)
    mb = b_inds[: batch // 4]
    _, newlogprob, entropy, newvalue = act(b_obs[mb], b_actions[mb])
    ratio = (newlogprob - b_logprobs[mb]).exp()
    pg_loss = torch.max(-b_advantages[mb] * ratio, -b_advantages[mb] * torch.clamp(ratio, 0.8, 1.2)).mean()
    v_clipped = b_values[mb] + torch.clamp(newvalue - b_values[mb], -0.2, 0.2)
    v_loss = 0.5 * torch.max((newvalue - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2).mean()
    loss = pg_loss - 0.01 * entropy.mean() + 0.5 * v_loss
    actor.zero_grad()
    critic.zero_grad()
    loss.backward()
    envs.close()
    # Read before nn.utils.clip_grad_norm_ and optimizer.step(), which would come next.
    return {"actor_w": actor.weight.grad.T.clone(), "actor_b": actor.bias.grad.clone()}


def cleanrl_style_pipeline(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """CleanRL ppo.py's structure, with a truncation bootstrapped from infos['final_obs'] (same-step autoreset)."""
    return _cleanrl_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, truncation="bootstrap")


def cleanrl_ppo_as_published(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """CleanRL ppo.py as published: next_done = np.logical_or(terminations, truncations), no final observation."""
    return _cleanrl_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, truncation="done")


def cleanrl_terminations_only(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """The half fix: done = terminations, so a truncated step bootstraps V of the auto-reset observation."""
    return _cleanrl_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, truncation="ignored")


def cleanrl_next_step_autoreset(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """The correct structure on gymnasium >= 1.0's default SyncVectorEnv, which resets on the next step."""
    return _cleanrl_first_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed,
                                   truncation="bootstrap", autoreset="next_step")


# -- NumPy, A2C style -------------------------------------------------------------------------------------------

def _numpy_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, *, bug: str | None = None):
    """Collect on SyncVectorEnv (same-step autoreset), GAE with the flags of docs/conventions.md, and the
    gradient of -mean(log pi(a|s) A) over the whole batch written out: (onehot(a) - pi(.|s)) A per sample."""
    s, a, A = _numpy_rollout(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, bug=bug)
    W = params["actor_w"]
    z = np.exp(W[s] - W[s].max(axis=1, keepdims=True))
    score = -z / z.sum(axis=1, keepdims=True)
    score[np.arange(s.size), a] += 1.0
    grad = np.zeros_like(W)
    np.add.at(grad, s, -score * A[:, None] / s.size)
    return {"actor_w": grad}


def _numpy_rollout(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, *, bug: str | None = None):
    """(states, actions, GAE advantages), flat, of one buffer collected on SyncVectorEnv (same-step autoreset)
    by the logits table ``params["actor_w"]``, with the critic ``params["critic_w"]``."""
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([make_env] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rng = np.random.default_rng(seed)
    W, V = params["actor_w"], params["critic_w"]
    T, N = n_steps, n_envs
    states, actions = np.zeros((T, N), dtype=np.int64), np.zeros((T, N), dtype=np.int64)
    rewards, next_values = np.zeros((T, N)), np.zeros((T, N))
    terminated, truncated = np.zeros((T, N), dtype=bool), np.zeros((T, N), dtype=bool)
    obs, _ = envs.reset(seed=seed)
    for t in range(T):
        z = np.exp(W[obs] - W[obs].max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        a = (rng.random(N)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
        nxt, r, term, trunc, infos = envs.step(a)
        final = nxt.copy()
        if "_final_obs" in infos:
            final[infos["_final_obs"]] = infos["final_obs"][infos["_final_obs"]].astype(np.int64)
        states[t], actions[t], rewards[t] = obs, a, r
        terminated[t], truncated[t] = term, trunc
        next_values[t] = V[final]
        if bug == "bootstrap_current":  # rsl_rl#151: the value stored for the step, V(s_t)
            next_values[t] = np.where(trunc, V[obs], next_values[t])
        obs = nxt
    envs.close()
    if bug == "last_step":  # the value after the buffer taken as 0, as for a finished episode
        next_values[-1] = np.where(terminated[-1] | truncated[-1], next_values[-1], 0.0)
    delta = rewards + gamma * np.where(terminated, 0.0, next_values) - V[states]
    carry = np.where(terminated | truncated, 0.0, gamma * gae_lambda)
    adv, acc = np.zeros((T, N)), np.zeros(N)
    for t in reversed(range(T)):
        acc = delta[t] + carry[t] * acc
        adv[t] = acc
    return states.ravel(), actions.ravel(), adv.ravel()


def numpy_a2c_pipeline(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """NumPy A2C: GAE with truncations bootstrapped from infos['final_obs'], -mean(log pi A) over the batch."""
    return _numpy_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed)


def numpy_last_step_not_bootstrapped(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """The buffer's last step bootstraps 0 instead of V(s_T) when its episode goes on."""
    return _numpy_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, bug="last_step")


def numpy_truncation_bootstraps_current(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """A truncated step bootstraps V(s_t), the value stored for the step, not V(final observation)."""
    return _numpy_gradient(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed, bug="bootstrap_current")


_JAX_GRAD = {}


def _jax_ppo_grad():
    """PPO's clipped loss at its first step, differentiated by jax.grad and jitted once per process."""
    if "fn" not in _JAX_GRAD:
        import jax
        import jax.numpy as jnp

        def loss(W, s, a, A):
            logp = jax.nn.log_softmax(W[s], axis=-1)[jnp.arange(s.shape[0]), a]
            ratio = jnp.exp(logp - jax.lax.stop_gradient(logp))
            return -jnp.mean(jnp.minimum(ratio * A, jnp.clip(ratio, 0.8, 1.2) * A))

        _JAX_GRAD["fn"] = jax.jit(jax.grad(loss))
    return _JAX_GRAD["fn"]


def jax_ppo_pipeline(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed):
    """The NumPy collector, then PPO's clipped loss differentiated by ``jax.grad`` in float64 (x64 mode): at
    the first step the ratio is exp(logp - stop_gradient(logp)) = 1, as a jitted PPO loss sees it."""
    import jax

    s, a, A = _numpy_rollout(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed)
    with jax.enable_x64(True):
        grad = _jax_ppo_grad()(params["actor_w"], s, a, A)
        return {"actor_w": np.asarray(grad)}


# -- the zoo -------------------------------------------------------------------------------------------------

_SB3 = {"actor_bias": True, "critic_bias": True, "dtype": "float32", "minibatch_size": 64}
_CLEANRL = {"actor_bias": True, "critic_bias": True, "dtype": "float32", "minibatch_size": 64, "ent_coef": 0.01}


def _example(fn, backend, description, expected=None, **options) -> Example:
    return Example(fn.__name__, "pipeline_gradient", fn, "refpg", backend, options,
                   None if expected is None else f"pipeline_gradient.{expected}", description)


#: Correct pipelines: each passes `check_pipeline_gradient`.
CORRECT: tuple[Example, ...] = (
    _example(numpy_a2c_pipeline, "numpy",
             "NumPy A2C: GAE with the conventions' flags, the gradient of -mean(log pi A) written out"),
    _example(sb3_ppo_pipeline, "torch",
             "stable_baselines3.PPO (net_arch=[], normalize_advantage=False): collect_rollouts on DummyVecEnv, "
             "train()'s first minibatch gradient before clip_grad_norm_", **_SB3),
    _example(cleanrl_style_pipeline, "torch",
             "CleanRL ppo.py's collector and loss (ent_coef 0.01, clipped value loss), truncations bootstrapped from "
             "infos['final_obs'] on SyncVectorEnv with same-step autoreset", **_CLEANRL),
    _example(jax_ppo_pipeline, "jax",
             "the NumPy collector with PPO's clipped loss differentiated by jax.grad in float64 (ratio 1 at the "
             "first step through stop_gradient)"),
)

#: Broken pipelines: each fails `check_pipeline_gradient` with its ``expected`` check id.
BROKEN: tuple[Example, ...] = (
    _example(cleanrl_ppo_as_published, "torch",
             "CleanRL ppo.py as published (HEAD fe8d8a0, line 206): next_done = np.logical_or(terminations, "
             "truncations), so a time limit is treated as a termination and never bootstrapped "
             "(vwxyzjn/cleanrl#198, #457; the bug SB3 fixed in DLR-RM/stable-baselines3#633)",
             expected="unbiased", **_CLEANRL),
    _example(cleanrl_terminations_only, "torch",
             "the half fix of that bug: done = terminations, without the final observation, so a truncation "
             "bootstraps V of the auto-reset observation (the review of vwxyzjn/cleanrl#408: the terminal "
             "observation is needed too; Unity-Technologies/ml-agents#574)", expected="unbiased", **_CLEANRL),
    _example(cleanrl_next_step_autoreset, "torch",
             "the correct structure on gymnasium >= 1.0's default SyncVectorEnv, which autoresets on the next step: "
             "the buffer holds steps no action caused (vwxyzjn/cleanrl#499)", expected="rollout", **_CLEANRL),
    _example(numpy_last_step_not_bootstrapped, "numpy",
             "the buffer's last step bootstraps 0 instead of V(s_T) when its episode goes on (next_v = 0 past the "
             "rollout's end: the review of rohitg00/ai-engineering-from-scratch#54)", expected="unbiased"),
    _example(numpy_truncation_bootstraps_current, "numpy",
             "a time limit bootstrapped with V(s_t), the value stored for the step, instead of V(final "
             "observation) (leggedrobotics/rsl_rl#151)", expected="unbiased"),
    _example(sb3_ppo_default_normalization, "torch",
             "SB3's PPO with its default normalize_advantage=True: the mean of a normalised advantage's gradient is "
             "not the policy gradient's; turn it off for the check", expected="unbiased", **_SB3),
)

"""Adapters that put real libraries' GAE behind the conformance kit's conventions.

Each function here has the signature of one ``check_gae`` convention
(``refpg.conformance.GAE_CONVENTIONS``) and does
nothing but call the library's own code, so a check of the adapter is a check
of the library:

* `torchrl_gae`: ``torchrl.objectives.value.functional.generalized_advantage_estimate``
  (convention ``"torchrl"``), the loop TorchRL's ``GAE(vectorized=False)`` runs.
* `torchrl_vec_gae`: ``...functional.vec_generalized_advantage_estimate``, what
  TorchRL's ``GAE`` module runs by default (``vectorized=True``).
* `sb3_gae`: a real ``stable_baselines3.common.buffers.RolloutBuffer`` and its
  ``compute_returns_and_advantage`` (convention ``"sb3"``).
* `sb3_gae_and_returns`: the same, returning ``(buffer.advantages,
  buffer.returns)`` (``check_gae(..., returns=True)``).

The libraries are imported inside the functions: refpg imports without them,
and a test that needs one skips when it is missing. Pins that install beside
``torch==2.13.0`` without replacing it (checked in a fresh venv):
``stable-baselines3==2.9.2``, ``torchrl==0.14.1``, ``tensordict==0.14.3``
(torchrl 0.14.1 requires ``tensordict<0.15``).

What the libraries do differently from ``refpg.returns.gae`` (details in the
functions' Notes):

* SB3 stores rewards, values and advantages as float32, whatever it is given:
  its advantages agree with the reference to float32 precision only, so check
  it with ``dtype="float32"``.
* TorchRL multiplies ``gamma`` (and, in the loop, ``gamma * lmbda``) by an
  int32 mask, which rounds them to torch's default float dtype (float32) even
  for float64 inputs: with ``gamma = 0.99`` and ``V = 10`` the advantage is off
  by about 1e-7, beyond a float64 tolerance of 1e-9 relative. Check it with
  ``dtype="float32"``; at float64 the checker reports exactly this.
* TorchRL's vectorised form raises ``IndexError`` when ``gamma * lmbda == 0``
  and cuts its discount series after the weights reach about 1e-7.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sb3_gae", "sb3_gae_and_returns", "torchrl_gae", "torchrl_vec_gae"]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _as_numpy(x, dtype=None) -> np.ndarray:
    """A NumPy copy of an array or a (detached, CPU) torch tensor."""
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=dtype, copy=True)


def _as_tensor(x, *, flag: bool = False):
    """A torch tensor of `x` (a tensor is passed through); flags become torch.bool."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if flag and t.dtype != torch.bool:
        t = t != 0
    return t


def _torchrl_call(fn, gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    numpy_in = not _is_torch(state_value)
    advantage, _value_target = fn(
        gamma, lmbda, _as_tensor(state_value), _as_tensor(next_state_value), _as_tensor(reward),
        done=_as_tensor(done, flag=True), terminated=_as_tensor(terminated, flag=True), time_dim=-2)
    # Hand back what came in: NumPy for NumPy inputs, the tensor for tensor inputs.
    return advantage.detach().cpu().numpy() if numpy_in else advantage


def torchrl_gae(gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    r"""TorchRL's ``generalized_advantage_estimate`` (the loop), convention ``"torchrl"``.

    Calls ``torchrl.objectives.value.functional.generalized_advantage_estimate(
    gamma, lmbda, state_value, next_state_value, reward, done=done,
    terminated=terminated, time_dim=-2)`` and returns the advantage (its
    first output; the second, ``value_target``, is ``advantage + state_value``).

    Parameters
    ----------
    gamma, lmbda : float
    state_value, next_state_value, reward : array or tensor, shape (N, T, 1)
        Batch, time, feature (time is dimension -2).
    done, terminated : bool array or tensor, shape (N, T, 1)
        ``done = terminated | truncated``.

    Returns
    -------
    advantage, shape (N, T, 1)
        A NumPy array for NumPy inputs, a torch tensor for tensor inputs, in
        the dtype of `next_state_value`.

    Notes
    -----
    The maths is the canonical one (TorchRL 0.14.1, ``functional.py``)::

        delta = reward + gamma * not_terminated * next_state_value - state_value
        A[t]  = delta[t] + gamma * lmbda * not_done[t] * A[t + 1]

    Two things the installed source shows:

    * ``not_done = (~done).int()`` and ``not_terminated = (~terminated).int()``
      are int32, and ``gamma * not_terminated`` and ``lmbda * gamma * not_done``
      are Python float times an int32 tensor, which torch makes a tensor of the
      *default* dtype, float32. So gamma and gamma * lmbda are rounded to
      float32 even when the values are float64 (the float64 inputs then
      promote the rest of the sum to float64). The ``GAE`` module does the
      same: it stores gamma and lmbda as ``torch.tensor(gamma)``, float32.
      Measured: gamma = 0.99, one step, V(s') = 10 gives 9.900000095 for
      9.9 (error 9.5e-8 = 10 * (float32(0.99) - 0.99)); the output equals
      ``refpg.returns.gae`` with gamma and gamma * lam rounded to float32, and
      the plain reference once ``torch.set_default_dtype(torch.float64)``.
    * ``terminated`` defaults to ``done`` when not passed: a caller that omits
      it treats every time limit as a termination (no bootstrap). This
      adapter always passes it.

    The library's compiled extension (``torchrl._torchrl``, prioritized
    replay buffers only) fails to load beside torch 2.13.0 (an undefined C++
    symbol); ``import torchrl`` and this pure-Python function are unaffected.
    """
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    return _torchrl_call(generalized_advantage_estimate, gamma, lmbda, state_value,
                         next_state_value, reward, done, terminated)


def torchrl_vec_gae(gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    r"""TorchRL's ``vec_generalized_advantage_estimate``, convention ``"torchrl"``.

    The vectorised form that TorchRL's ``GAE`` value estimator calls by default
    (``vectorized=True``). With scalar gamma and lmbda it runs
    ``_fast_vec_gae``: the rollout is split into trajectories at ``done``,
    padded, and convolved with the series ``(gamma * lmbda) ** k``, which is
    cut where it falls below ``thr = 1e-7``. Arguments and return value as in
    `torchrl_gae`.

    Notes
    -----
    * gamma in delta is rounded to float32 as in `torchrl_gae`
      (``not_terminated * gamma``, int32 times a float), but the weights
      ``(gamma * lmbda) ** k`` are built in the values' dtype, so with float64
      inputs only gamma, not gamma * lmbda, is rounded.
    * The cut series is an approximation: ``_geom_series_like`` keeps
      ``int(log(1e-7) / log(gamma * lmbda))`` terms, so the first weight
      dropped is at least 1e-7. With gamma = 1, lmbda = 0.5 and delta = 1 on
      40 steps, A_0 is 2 - 2**-22 instead of 2 - 2**-39 (error 2.4e-7).
    * It raises ``IndexError: tuple index out of range`` whenever
      ``gamma * lmbda == 0`` (gamma = 0 or lmbda = 0, i.e. one-step TD
      advantages): ``_geom_series_like`` then returns ``torch.zeros_like(t)``
      without the trailing axis that ``_custom_conv1d`` indexes
      (``filter.shape[-2]``). Seen with torchrl 0.14.1; the loop in
      `torchrl_gae` handles these values.
    """
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

    return _torchrl_call(vec_generalized_advantage_estimate, gamma, lmbda, state_value,
                         next_state_value, reward, done, terminated)


def sb3_gae(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
    r"""Stable-Baselines3's ``RolloutBuffer.compute_returns_and_advantage``, convention ``"sb3"``.

    Builds a real ``stable_baselines3.common.buffers.RolloutBuffer`` with
    ``buffer_size=T``, ``n_envs=N`` (a 1-D ``Box`` observation space and a
    ``Discrete(2)`` action space, which the computation never reads),
    ``device="cpu"``, `gamma` and `gae_lambda`; writes `rewards`, `values` and
    `episode_starts` into the buffer's (T, N) arrays; marks it full
    (``pos = T``, ``full = True``, as ``add`` leaves it after T steps); calls
    ``compute_returns_and_advantage(last_values=<torch tensor (N,)>,
    dones=<numpy array (N,)>)``, exactly as ``OnPolicyAlgorithm.collect_rollouts``
    does; and returns a float64 copy of ``buffer.advantages``.

    Parameters
    ----------
    rewards, values, episode_starts : array or tensor, shape (T, N)
        ``episode_starts[t]`` is 1 where observation t starts an episode
        (= done of transition t - 1).
    last_values, dones : array or tensor, shape (N,)
        V of the observation after the last step, and whether the last
        transition was done.
    gamma, gae_lambda : float

    Returns
    -------
    ndarray, float64, shape (T, N)
        A copy, so later use of the buffer cannot change it. The values are
        those SB3 computed in float32.

    Notes
    -----
    **Precision.** SB3 allocates ``rewards``, ``values``, ``episode_starts``
    and ``advantages`` as float32 (``RolloutBuffer.reset``), so every input
    is rounded to float32 when written, and every advantage when stored: the
    result matches a float64 reference only to float32 precision, whatever the
    input dtype. `last_values` is passed as a float32 tensor, as the policy's
    value head produces it in ``collect_rollouts``.

    **Truncation.** ``compute_returns_and_advantage`` has no truncation flag:
    for t < T - 1 it uses ``next_non_terminal = 1 - episode_starts[t + 1]``
    and ``next_value = values[t + 1]``, for t = T - 1 ``1 - dones`` and
    ``last_values``, so every done (termination or time limit) stops the
    bootstrap and the recursion. A time limit is handled before that, in
    ``stable_baselines3/common/on_policy_algorithm.py``,
    ``OnPolicyAlgorithm.collect_rollouts`` ("Handle timeout by bootstrapping
    with value function, see GitHub issue #633")::

        for idx, done in enumerate(dones):
            if (done and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)):
                terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                with th.no_grad():
                    terminal_value = self.policy.predict_values(terminal_obs)[0]
                rewards[idx] += self.gamma * terminal_value

    i.e. the reward of a truncated step becomes ``r + gamma * V(final obs)``
    (rounded to float32, the dtype of the VecEnv's reward buffer), which is
    the canonical ``delta_t`` once the step is treated as done. The VecEnvs
    (``common/vec_env/dummy_vec_env.py`` ``DummyVecEnv.step_wait``, and
    ``subproc_vec_env.py``'s worker) set ``done = terminated or truncated``
    and ``info["TimeLimit.truncated"] = truncated and not terminated``, so a
    step that is both terminated and truncated is not bootstrapped:
    termination wins, as in refpg. Checked against stable-baselines3 2.9.2.
    Because the buffer takes ``values[t + 1]`` as V(s_{t+1}) inside an
    episode, it assumes ``next_values[t] == values[t + 1]`` there (true in a
    real rollout, and in the conformance kit's cases).
    """
    return _sb3_buffer(rewards, values, episode_starts, last_values, dones, gamma,
                       gae_lambda).advantages.astype(np.float64)  # astype copies


def sb3_gae_and_returns(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
    r"""`sb3_gae`, returning ``(buffer.advantages, buffer.returns)`` as float64 copies.

    SB3 fits its value function to ``buffer.returns``, which
    ``compute_returns_and_advantage`` sets to ``advantages + values``
    (:math:`\hat A_t + V(s_t)`, the TD(lambda) return), in float32. Check it
    with ``check_gae(sb3_gae_and_returns, convention="sb3", returns=True,
    dtype="float32")``.
    """
    buffer = _sb3_buffer(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda)
    return buffer.advantages.astype(np.float64), buffer.returns.astype(np.float64)


def _sb3_buffer(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
    """A full SB3 ``RolloutBuffer`` after ``compute_returns_and_advantage`` (see `sb3_gae`)."""
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.buffers import RolloutBuffer

    rewards = _as_numpy(rewards)
    values = _as_numpy(values)
    episode_starts = _as_numpy(episode_starts)
    T, N = rewards.shape
    buffer = RolloutBuffer(
        T,
        spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32),
        spaces.Discrete(2),
        device="cpu",
        gae_lambda=gae_lambda,
        gamma=gamma,
        n_envs=N,
    )
    buffer.rewards[:] = rewards          # float32 arrays: assignment rounds
    buffer.values[:] = values
    buffer.episode_starts[:] = episode_starts
    buffer.pos = T
    buffer.full = True
    buffer.compute_returns_and_advantage(
        last_values=torch.as_tensor(_as_numpy(last_values, np.float32)),
        dones=_as_numpy(dones),
    )
    return buffer

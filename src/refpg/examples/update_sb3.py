r"""Stable-Baselines3's own ``PPO.train()`` and ``A2C.train()``, kind ``update``, every step traced.

The adapters built here run the real SB3 2.9.2 code on the kit's problem
class: an ``ActorCriticPolicy`` with ``net_arch=[]`` on a ``Discrete(S)``
observation space is a linear actor and a linear critic on the one-hot
observation that SB3 builds itself,

.. math::
    \mathrm{logits}(s) = W^\top e_s + b \quad (\texttt{action\_net}), \qquad
    V(s) = w^\top e_s + c \quad (\texttt{value\_net}),

so ``action_net.weight`` is ``actor_w.T`` and ``value_net.weight`` is
``critic_w[None, :]``. One call ``update(batch, params)``:

1. loads `params` into the policy (float32, SB3's dtype) and gives it a
   fresh optimiser, built as SB3's policy builds it (``optimizer_class``
   with ``optimizer_kwargs``: Adam with eps 1e-5 for PPO, RMSprop with
   alpha 0.99 and eps 1e-5 for A2C);
2. fills SB3's ``RolloutBuffer`` from the batch as ``collect_rollouts``
   does: the observation, action, float32 reward, ``episode_start`` (the
   done of the previous step), value and log-probability of every step,
   and at a step that hit a time limit the reward plus
   ``gamma * V(final observation)`` (SB3's bootstrap of a timeout,
   DLR-RM/stable-baselines3 issue #633); then
   ``rollout_buffer.compute_returns_and_advantage(last_values, dones)``;
3. calls the model's own ``train()``.

While ``train()`` runs, hooks record what it does without touching its
arithmetic: the indices of each minibatch (the buffer's ``_get_samples``
receives them), the total loss (``torch.Tensor.backward`` is wrapped), the
gradient before clipping, the norm ``clip_grad_norm_`` returns and the
gradient after it (``torch.nn.utils.clip_grad_norm_`` is wrapped), and the
parameters after every ``optimizer.step()`` (a step post-hook). Every
wrapper is removed afterwards, and NumPy's global generator, from which the
buffer draws its permutations, is seeded for the call and restored after it.

The trace is the ``"refpg"`` convention of `refpg.conformance.check_update`:
advantages and returns as SB3's GAE left them in the buffer, (T, N); the
indices are SB3's flat sample numbers after ``swap_and_flatten``, ``n T + t``
(declare ``flatten="env_major"``). Arrays come back as torch tensors when
the parameters were tensors, else as NumPy arrays, float32 either way.

The hyperparameters each adapter must be checked with are its model's,
read back from the constructed SB3 model by `sb3_update_options`: SB3's
losses are ``F.mse_loss`` on the returns (``value_loss="mse"``), the
clipped *prediction* with ``clip_range_vf`` (``value_clip="prediction"``),
``-mean(entropy)`` times ``ent_coef``, per-minibatch advantage
normalisation ``(A - mean) / (std + 1e-8)`` with torch's std (ddof 1),
skipped for a minibatch of one (PPO; A2C normalises the whole batch when
asked), the early stop ``approx_kl > 1.5 target_kl`` and
``clip_grad_norm_(parameters, max_grad_norm)``.

The broken examples are each one realistic change to SB3 (a subclass, a
policy, a collection step, an optimiser) and cite the public thread about
that bug. torch, gymnasium and stable_baselines3 are imported inside the
functions, so this module imports without them.

References
----------
[Schulman2016], [Schulman2017], [Mnih2016]; A. Raffin et al.,
"Stable-Baselines3: Reliable Reinforcement Learning Implementations", JMLR
22(268), 2021; stable-baselines3 2.9.2 (``ppo/ppo.py``, ``a2c/a2c.py``,
``common/buffers.py``, ``common/on_policy_algorithm.py``).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from refpg.errors import InvalidInputError, ShapeError
from refpg.examples._example import Example

__all__ = [
    "CORRECT",
    "BROKEN",
    "sb3_permutations",
    "SB3_PPO_KWARGS",
    "SB3_PPO_OPTIONS",
    "SB3_PPO_TARGET_KL_KWARGS",
    "SB3_PPO_TARGET_KL_OPTIONS",
    "SB3_A2C_OPTIONS",
    "SB3_A2C_ADAM_KWARGS",
    "SB3_A2C_ADAM_OPTIONS",
    "SB3Update",
    "sb3_ppo_update",
    "sb3_a2c_update",
    "sb3_update_options",
    "update_sb3_ppo_torch",
    "update_sb3_ppo_target_kl_torch",
    "update_sb3_a2c_torch",
    "update_sb3_a2c_adam_torch",
]

_FLOATS = ("rewards", "logp_old", "values", "next_values")
_INTS = ("states", "actions", "next_states")
_FLAGS = ("terminated", "truncated")


# -- the adapter ---------------------------------------------------------------------------------

class SB3Update:
    """``update(batch, params) -> trace``: one SB3 ``train()`` on a fixed batch (module docstring).

    Build it with `sb3_ppo_update` or `sb3_a2c_update`. The SB3 model is
    built on the first call for the batch's shape (T, N) and the
    parameters' (S, A) and reused by later calls of that shape; each call
    starts from a fresh optimiser and an empty buffer, so calls do not
    influence one another.

    Attributes
    ----------
    algorithm : str
        ``"PPO"`` or ``"A2C"``.
    kwargs : dict
        The keyword arguments passed to the SB3 class (besides ``n_steps``,
        which is the batch's T).
    actor_bias, critic_bias : bool
    seed : int
        Seeds NumPy's global generator for the call (the minibatch
        permutations); the caller's state is restored afterwards.
    """

    def __init__(self, algorithm: str, kwargs: dict, *, actor_bias: bool = True, critic_bias: bool = True,
                 seed: int = 0, bootstrap_time_limits: bool = True, name: str | None = None):
        if algorithm not in ("PPO", "A2C"):
            raise InvalidInputError(f"algorithm should be 'PPO' or 'A2C', actual {algorithm!r}")
        for key in ("n_steps", "env", "device", "seed", "_init_setup_model"):
            if key in kwargs:
                raise InvalidInputError(f"{key}= is set by the adapter (n_steps is the batch's T, the env a "
                                        f"one-hot tabular VecEnv of the batch's N envs, the device CPU); "
                                        f"remove it from the keyword arguments")
        for name_, flag in (("actor_bias", actor_bias), ("critic_bias", critic_bias),
                            ("bootstrap_time_limits", bootstrap_time_limits)):
            if not isinstance(flag, (bool, np.bool_)):
                raise InvalidInputError(f"{name_} should be True or False, actual {flag!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise InvalidInputError(f"seed should be an integer >= 0, actual {seed!r}")
        self.algorithm = algorithm
        self.kwargs = dict(kwargs)
        self.actor_bias, self.critic_bias = bool(actor_bias), bool(critic_bias)
        self.seed = int(seed)
        # SB3 bootstraps a timeout in collect_rollouts; False collects as SB3 did before issue #633's fix.
        self._bootstrap_time_limits = bool(bootstrap_time_limits)
        self._models: dict = {}
        self.__name__ = name or f"sb3_{algorithm.lower()}_update"
        self.__qualname__ = self.__name__

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.__name__}({self.algorithm}, {shown})"

    # -- the SB3 model --
    def algorithm_class(self):
        """The SB3 class (or the broken subclass) the adapter runs."""
        import stable_baselines3

        return getattr(stable_baselines3, self.algorithm)

    def model(self, n_states: int, n_actions: int, n_steps: int, n_envs: int):
        """The SB3 model for an (S, A) problem and a (T, N) buffer (built once, then reused)."""
        key = (n_states, n_actions, n_steps, n_envs)
        if key not in self._models:
            self._models[key] = self._build(*key)
        return self._models[key]

    def _build(self, S, A, T, N):
        import torch
        from stable_baselines3.common.logger import Logger
        from stable_baselines3.common.vec_env import DummyVecEnv

        from refpg.envs.gym_env import TabularEnv
        from refpg.mdp import TabularMDP

        # The env only supplies the spaces and the number of envs; the batch replaces its rollouts.
        mdp = TabularMDP(np.full((S, A, S), 1.0 / S), np.zeros((S, A)), np.full(S, 1.0 / S), 0.5)
        env = DummyVecEnv([lambda: TabularEnv(mdp) for _ in range(N)])
        kwargs = dict(self.kwargs)
        policy = kwargs.pop("policy", "MlpPolicy")
        policy_kwargs = {"net_arch": [], **kwargs.pop("policy_kwargs", {})}
        # Building draws the layers' initial weights from torch's global generator (replaced by params
        # on every call): keep the caller's generator states as they were.
        with torch.random.fork_rng(devices=[]), _numpy_state_kept(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You have specified a mini-batch size")
            model = self.algorithm_class()(policy, env, n_steps=T, policy_kwargs=policy_kwargs, device="cpu",
                                           **kwargs)
        model.set_logger(Logger(folder=None, output_formats=[]))
        net_arch = getattr(model.policy, "net_arch", None)
        if net_arch not in ([], {"pi": [], "vf": []}):
            raise InvalidInputError(f"policy_kwargs['net_arch'] should be [] (a linear actor and critic on the "
                                    f"one-hot observation), actual {net_arch!r}")
        policy = model.policy
        for layer, present in ((policy.action_net, self.actor_bias), (policy.value_net, self.critic_bias)):
            if not present:
                # SB3's heads always have a bias: a bias-free head is that bias frozen at zero (no gradient,
                # so clip_grad_norm_ and the optimiser skip it).
                with torch.no_grad():
                    layer.bias.zero_()
                layer.bias.requires_grad_(False)
        return model

    # -- one call --
    def __call__(self, batch, params):
        import torch

        as_torch = _is_torch(params.get("actor_w") if isinstance(params, dict) else None)
        p, b = self._read(batch, params)
        S, A = p["actor_w"].shape
        T, N = b["states"].shape
        model = self.model(S, A, T, N)
        policy = model.policy
        _load(policy, p)
        # A fresh optimiser, built as SB3's policy builds it in _build: an update starts with no state.
        policy.optimizer = policy.optimizer_class(policy.parameters(), lr=model.lr_schedule(1),
                                                  **policy.optimizer_kwargs)
        model._current_progress_remaining = 1.0
        _fill(model, b, bootstrap_time_limits=self._bootstrap_time_limits)
        buffer = model.rollout_buffer
        advantages, returns = buffer.advantages.copy(), buffer.returns.copy()
        recorder = _Recorder(model, self.actor_bias, self.critic_bias)
        with _numpy_seeded(self.seed), recorder:
            model.train()

        def out(x):
            arr = np.array(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
            return torch.from_numpy(arr) if as_torch else arr

        def out_params(d):
            return {k: out(v) for k, v in d.items()}

        steps = []
        for rec in recorder.steps:
            step = {"params": out_params(rec["params"])}
            for key in ("grad", "clipped_grad"):
                if key in rec:
                    step[key] = out_params(rec[key])
            for key in ("loss", "grad_norm"):
                if key in rec:
                    step[key] = float(rec[key])
            if "indices" in rec:
                step["indices"] = torch.from_numpy(rec["indices"]) if as_torch else rec["indices"]
            steps.append(step)
        return {"advantages": out(advantages), "returns": out(returns), "steps": steps}

    def _read(self, batch, params):
        """The inputs as NumPy arrays (float64 copies of the floats), checked for what SB3 needs."""
        if not isinstance(params, dict):
            raise InvalidInputError(f"params should be a dict with 'actor_w', 'critic_w' (and the biases), "
                                    f"actual {type(params).__name__}")
        want = ["actor_w", "critic_w"] + ["actor_b"] * self.actor_bias + ["critic_b"] * self.critic_bias
        if sorted(params) != sorted(want):
            raise InvalidInputError(f"params should have the keys {want} (actor_bias={self.actor_bias}, "
                                    f"critic_bias={self.critic_bias}), actual {sorted(params)}")
        p = {k: np.array(_numpy(params[k]), dtype=np.float64) for k in want}
        if p["actor_w"].ndim != 2 or p["actor_w"].shape[1] < 2:
            raise ShapeError(f"params['actor_w'] should have shape (S, A) with A >= 2, actual {p['actor_w'].shape}")
        S, A = p["actor_w"].shape
        for key, shape in (("critic_w", (S,)), ("actor_b", (A,)), ("critic_b", ())):
            if key in p and p[key].shape != shape and not (key == "critic_b" and p[key].size == 1):
                raise ShapeError(f"params[{key!r}] should have shape {shape}, actual {p[key].shape}")
        if not isinstance(batch, dict):
            raise InvalidInputError(f"batch should be a dict of (T, N) arrays, actual {type(batch).__name__}")
        missing = [k for k in _FLOATS + _INTS + _FLAGS if k not in batch]
        if missing:
            raise InvalidInputError(f"batch is missing {missing}")
        b = {k: np.array(_numpy(batch[k])) for k in _FLOATS + _INTS + _FLAGS}
        shape = b["states"].shape
        if len(shape) != 2:
            raise ShapeError(f"batch['states'] should have shape (T, N), actual {shape}")
        for k, v in b.items():
            if v.shape != shape:
                raise ShapeError(f"batch[{k!r}] should have shape {shape} as batch['states'], actual {v.shape}")
        for k, n in (("states", S), ("next_states", S), ("actions", A)):
            bad = (b[k] < 0) | (b[k] >= n)
            if bad.any():
                i = tuple(int(x) for x in np.argwhere(bad)[0])
                raise InvalidInputError(f"batch[{k!r}]{list(i)} is {b[k][i]}; expected an integer in [0, {n})")
        for k in _FLAGS:
            b[k] = b[k].astype(bool)
        for k in _FLOATS:
            b[k] = b[k].astype(np.float64)
        return p, b


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _numpy(x):
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@contextlib.contextmanager
def _numpy_state_kept():
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _numpy_seeded(seed: int):
    """NumPy's global generator seeded (SB3's buffer draws ``np.random.permutation``), then restored."""
    with _numpy_state_kept():
        np.random.seed(seed)
        yield


def _load(policy, p: dict) -> None:
    """Copy refpg's parameters into ``action_net`` (A, S) and ``value_net`` (1, S), float32."""
    import torch

    def put(target, value):
        target.copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(target.shape))

    with torch.no_grad():
        put(policy.action_net.weight, p["actor_w"].T)
        put(policy.value_net.weight, p["critic_w"][None, :])
        if "actor_b" in p:
            put(policy.action_net.bias, p["actor_b"])
        if "critic_b" in p:
            put(policy.value_net.bias, p["critic_b"])


def _fill(model, b: dict, *, bootstrap_time_limits: bool = True) -> None:
    """Fill ``model.rollout_buffer`` from the batch step by step as ``collect_rollouts`` does, then GAE.

    The values, log-probabilities and final-observation values are the
    batch's, rounded once to float32 (those of the parameters: SB3's own
    float32 forward pass, ``self.policy(obs)``, gives the same up to a
    rounding, which the tests bound); the rewards are float32 as
    ``DummyVecEnv`` returns them. A step that ended by a time limit gets
    ``gamma * V(final observation)`` added to its reward, with the operand
    types of ``collect_rollouts`` (a float32 array and a float32 tensor of
    shape (1,)); every ended step is an ``episode_start`` for the next.
    """
    import torch

    buffer = model.rollout_buffer
    buffer.reset()
    T, N = b["states"].shape
    done = b["terminated"] | b["truncated"]
    f32 = torch.float32
    # SB3 starts learning with every env at an episode start; GAE never reads episode_starts[0].
    episode_starts = np.ones(N, dtype=bool)
    for t in range(T):
        rewards = b["rewards"][t].astype(np.float32)
        if bootstrap_time_limits:
            for idx in np.flatnonzero(b["truncated"][t]):
                terminal_value = torch.as_tensor(b["next_values"][t, idx:idx + 1], dtype=f32)
                rewards[idx] += model.gamma * terminal_value
        buffer.add(b["states"][t].astype(np.int64), b["actions"][t].astype(np.int64).reshape(-1, 1), rewards,
                   episode_starts, torch.as_tensor(b["values"][t], dtype=f32).reshape(-1, 1),
                   torch.as_tensor(b["logp_old"][t], dtype=f32))
        episode_starts = done[t]
    last_values = torch.as_tensor(b["next_values"][-1], dtype=f32).reshape(-1, 1)
    buffer.compute_returns_and_advantage(last_values=last_values, dones=done[-1])


class _Recorder:
    """Hooks around ``model.train()`` that record every optimiser step (module docstring)."""

    def __init__(self, model, actor_bias: bool, critic_bias: bool):
        self.model = model
        self.actor_bias, self.critic_bias = actor_bias, critic_bias
        self.steps: list[dict] = []
        self._pending: dict = {}

    def _tensors(self, grad: bool) -> dict:
        import torch

        policy = self.model.policy

        def read(p):
            t = p.grad if grad else p
            return torch.zeros_like(p) if t is None else t.detach().clone()

        out = {"actor_w": read(policy.action_net.weight).T, "critic_w": read(policy.value_net.weight)[0]}
        if self.actor_bias:
            out["actor_b"] = read(policy.action_net.bias)
        if self.critic_bias:
            out["critic_b"] = read(policy.value_net.bias)[0]
        return out

    def __enter__(self):
        import torch

        rec = self
        self._backward = torch.Tensor.backward
        self._clip = torch.nn.utils.clip_grad_norm_
        buffer = self.model.rollout_buffer
        self._own_samples = "_get_samples" in vars(buffer)
        self._samples = buffer._get_samples

        def backward(tensor, *args, **kwargs):
            if tensor.numel() == 1:
                rec._pending["loss"] = float(tensor.detach())
            return rec._backward(tensor, *args, **kwargs)

        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            rec._pending["grad"] = rec._tensors(grad=True)
            norm = rec._clip(parameters, max_norm, *args, **kwargs)
            rec._pending["grad_norm"] = float(norm)
            rec._pending["clipped_grad"] = rec._tensors(grad=True)
            return norm

        def get_samples(batch_inds, *args, **kwargs):
            rec._pending["indices"] = np.array(batch_inds, dtype=np.int64, copy=True)
            return rec._samples(batch_inds, *args, **kwargs)

        torch.Tensor.backward = backward
        torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
        buffer._get_samples = get_samples
        self._handle = self.model.policy.optimizer.register_step_post_hook(self._after_step)
        return self

    def _after_step(self, optimizer, args, kwargs):
        step = {k: v for k, v in self._pending.items()}
        if "grad" not in step:
            # No clip_grad_norm_ call before this step: the gradient it used is the current one.
            step["grad"] = self._tensors(grad=True)
        step["params"] = self._tensors(grad=False)
        self.steps.append(step)
        indices = self._pending.get("indices")
        self._pending = {} if indices is None else {"indices": indices}

    def __exit__(self, *exc):
        import torch

        torch.Tensor.backward = self._backward
        torch.nn.utils.clip_grad_norm_ = self._clip
        buffer = self.model.rollout_buffer
        if self._own_samples:
            buffer._get_samples = self._samples
        else:
            del buffer._get_samples
        self._handle.remove()
        return False


# -- the factories and the declared hyperparameters ------------------------------------------------

def sb3_ppo_update(*, actor_bias: bool = True, critic_bias: bool = True, seed: int = 0, **ppo_kwargs) -> SB3Update:
    r"""An ``update(batch, params)`` that runs ``stable_baselines3.PPO.train()`` on the batch, traced.

    Each step minimises SB3's

    .. math::
        L = -\frac1B\sum_i \min(r_i\hat A_i, \mathrm{clip}(r_i, 1 \pm \epsilon)\hat A_i)
            + c_v\,\frac1B\sum_i (R_i - \tilde v_i)^2 - c_e\,\frac1B\sum_i H(\pi(\cdot|s_i)),

    :math:`\hat A` GAE [Schulman2016] normalised over the minibatch,
    :math:`\tilde v` the value prediction (clipped to
    :math:`v_{old} \pm` ``clip_range_vf`` when set), then
    ``clip_grad_norm_`` and one Adam step [Schulman2017].

    Parameters
    ----------
    actor_bias, critic_bias : bool
        Whether the heads' biases are trained (SB3's always are: True); False
        freezes SB3's bias at zero, the kit's bias-free head.
    seed : int
        Seeds NumPy's global generator while ``train()`` draws its
        permutations (restored afterwards).
    **ppo_kwargs
        Keyword arguments of ``stable_baselines3.PPO`` except ``n_steps``
        (the batch's T), ``env``, ``device``, ``seed``; ``policy_kwargs``
        gets ``net_arch=[]``.

    Returns
    -------
    SB3Update
        The adapter; `sb3_update_options` gives the `UpdateConfig` fields to
        check it with.

    References
    ----------
    [Schulman2017]; stable-baselines3 2.9.2 ``PPO.train``.
    """
    return SB3Update("PPO", ppo_kwargs, actor_bias=actor_bias, critic_bias=critic_bias, seed=seed)


def sb3_a2c_update(*, actor_bias: bool = True, critic_bias: bool = True, seed: int = 0, **a2c_kwargs) -> SB3Update:
    r"""An ``update(batch, params)`` that runs ``stable_baselines3.A2C.train()`` on the batch, traced.

    One step on the whole batch, minimising

    .. math::
        L = -\frac1M\sum_i \hat A_i \log\pi(a_i|s_i) + c_v\,\frac1M\sum_i (R_i - v_i)^2
            - c_e\,\frac1M\sum_i H(\pi(\cdot|s_i)),

    with :math:`\hat A` GAE(gamma, ``gae_lambda`` = 1 by default), then
    ``clip_grad_norm_`` and one step of RMSprop (alpha 0.99, eps 1e-5,
    torch's definition) or, with ``use_rms_prop=False``, Adam (eps 1e-5)
    [Mnih2016].

    Parameters
    ----------
    actor_bias, critic_bias, seed
        As `sb3_ppo_update` (A2C's buffer draws one permutation too).
    **a2c_kwargs
        Keyword arguments of ``stable_baselines3.A2C`` except ``n_steps``,
        ``env``, ``device``, ``seed``.

    Returns
    -------
    SB3Update

    References
    ----------
    [Mnih2016]; stable-baselines3 2.9.2 ``A2C.train``.
    """
    return SB3Update("A2C", a2c_kwargs, actor_bias=actor_bias, critic_bias=critic_bias, seed=seed)


_OPTIMIZER_FIELDS = {"Adam": "adam", "RMSprop": "rmsprop", "SGD": "sgd"}


def sb3_update_options(adapter_or_model) -> dict:
    """The `UpdateConfig` fields of an SB3 PPO or A2C model, read from the model itself.

    Parameters
    ----------
    adapter_or_model : SB3Update or stable_baselines3.PPO or stable_baselines3.A2C
        An adapter (a small model of its configuration is built) or a model.

    Returns
    -------
    dict
        ``check_update``'s keyword arguments: ``algorithm``, ``gamma``,
        ``gae_lambda``, the losses' coefficients, ``max_grad_norm``, the
        optimiser with its learning rate (the schedule at progress 1) and
        constants, and for PPO ``clip_range``, ``clip_range_vf``,
        ``n_epochs``, ``minibatch_size`` (``batch_size``),
        ``normalize_advantage`` and ``target_kl``; ``flatten="env_major"``.

    Raises
    ------
    refpg.errors.InvalidInputError
        A model whose optimiser or options have no `UpdateConfig` field
        (AMSGrad, a centred or Nesterov optimiser, an optimiser class other
        than torch's Adam, RMSprop or SGD, a continuous action space).
    """
    model = adapter_or_model
    if isinstance(adapter_or_model, SB3Update):
        # Four samples in two envs: the smallest buffer every option accepts.
        model = adapter_or_model.model(2, 2, 2, 2)
    from stable_baselines3 import A2C, PPO

    if isinstance(model, PPO):
        algorithm = "ppo"
    elif isinstance(model, A2C):
        algorithm = "a2c"
    else:
        raise InvalidInputError(f"adapter_or_model should be an SB3Update or a stable_baselines3 PPO or A2C "
                                f"model, actual {type(model).__name__}")
    opt = model.policy.optimizer
    kind = _OPTIMIZER_FIELDS.get(type(opt).__name__) if type(opt).__module__.startswith("torch.optim") else None
    if kind is None:
        raise InvalidInputError(f"the policy's optimizer {type(opt).__module__}.{type(opt).__name__} has no "
                                f"UpdateConfig equivalent (torch.optim.Adam, RMSprop or SGD)")
    d = opt.defaults
    for flag in ("amsgrad", "centered", "nesterov", "maximize", "decoupled_weight_decay"):
        if d.get(flag):
            raise InvalidInputError(f"the policy's optimizer has {flag}=True, which UpdateConfig cannot declare")
    if d.get("dampening", 0.0):
        raise InvalidInputError(f"the policy's SGD has dampening={d['dampening']}, which UpdateConfig cannot "
                                f"declare")
    options = {"algorithm": algorithm, "gamma": float(model.gamma), "gae_lambda": float(model.gae_lambda)}
    if algorithm == "ppo":
        options.update({
            "clip_range": float(model.clip_range(1.0)),
            "clip_range_vf": None if model.clip_range_vf is None else float(model.clip_range_vf(1.0)),
            "value_clip": "prediction", "n_epochs": int(model.n_epochs), "minibatch_size": int(model.batch_size),
            "normalize_advantage": "minibatch" if model.normalize_advantage else None,
            "target_kl": None if model.target_kl is None else float(model.target_kl)})
    else:
        options["normalize_advantage"] = "batch" if model.normalize_advantage else None
    options.update({"norm_ddof": 1, "norm_eps": 1e-8, "value_loss": "mse", "vf_coef": float(model.vf_coef),
                    "ent_coef": float(model.ent_coef), "max_grad_norm": float(model.max_grad_norm),
                    "optimizer": kind, "lr": float(model.lr_schedule(1.0)),
                    "weight_decay": float(d.get("weight_decay", 0.0))})
    if kind == "adam":
        options.update({"betas": tuple(float(x) for x in d["betas"]), "eps": float(d["eps"])})
    elif kind == "rmsprop":
        options.update({"alpha": float(d["alpha"]), "eps": float(d["eps"]), "momentum": float(d["momentum"])})
    else:
        options["momentum"] = float(d["momentum"])
    options.update({"optimizer_convention": "torch", "flatten": "env_major"})
    return options


# -- the registered configurations ---------------------------------------------------------------

#: `update_sb3_ppo_torch`'s keyword arguments of ``PPO``; every other one is SB3 2.9.2's default
#: (n_epochs 10, gamma 0.99, gae_lambda 0.95, clip_range 0.2, normalize_advantage True, vf_coef 0.5,
#: max_grad_norm 0.5, Adam eps 1e-5). ``batch_size=4`` gives four minibatches of the kit's 16 samples
#: (SB3's 64 would be one). The learning rate is 0.05 instead of 3e-4: at 3e-4 Adam moves each parameter
#: by about lr per step, so within 40 steps no ratio would leave 1 +- 0.2 and no value v_old +- 0.2, and
#: neither clip would be checked; ``clip_range_vf=0.2`` and ``ent_coef=0.01`` bring in the value clip
#: and the entropy term.
SB3_PPO_KWARGS = {"batch_size": 4, "learning_rate": 0.05, "ent_coef": 0.01, "clip_range_vf": 0.2}

#: `update_sb3_ppo_torch`'s hyperparameters as `UpdateConfig` fields (`sb3_update_options` of its model;
#: the tests check the two agree), for the kit's batch of 8 steps x 2 envs, with both biases.
SB3_PPO_OPTIONS = {"algorithm": "ppo", "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2, "clip_range_vf": 0.2,
                   "value_clip": "prediction", "n_epochs": 10, "minibatch_size": 4,
                   "normalize_advantage": "minibatch", "target_kl": None, "norm_ddof": 1, "norm_eps": 1e-8,
                   "value_loss": "mse", "vf_coef": 0.5, "ent_coef": 0.01, "max_grad_norm": 0.5,
                   "optimizer": "adam", "lr": 0.05, "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-5,
                   "optimizer_convention": "torch", "flatten": "env_major"}

#: PPO with SB3's early stop: ``target_kl=0.01`` (the update stops before the first minibatch whose
#: approximate KL exceeds 0.015); otherwise `SB3_PPO_KWARGS`. When the stop falls inside an epoch, the
#: trace cannot say which minibatch SB3 drew and refused, so the example passes SB3's own permutations as
#: ``order`` (`sb3_permutations`), on which check_update judges the stop.
SB3_PPO_TARGET_KL_KWARGS = {**SB3_PPO_KWARGS, "target_kl": 0.01}
#: `update_sb3_ppo_target_kl_torch`'s hyperparameters as `UpdateConfig` fields.
SB3_PPO_TARGET_KL_OPTIONS = {**SB3_PPO_OPTIONS, "target_kl": 0.01}

#: `update_sb3_a2c_torch`: ``A2C`` with every SB3 2.9.2 default (the update reads gamma 0.99, gae_lambda
#: 1.0, ent_coef 0.0, vf_coef 0.5, max_grad_norm 0.5, normalize_advantage False, RMSprop with lr 7e-4,
#: alpha 0.99, eps 1e-5, weight_decay 0) as `UpdateConfig` fields.
SB3_A2C_OPTIONS = {"algorithm": "a2c", "gamma": 0.99, "gae_lambda": 1.0, "normalize_advantage": None,
                   "norm_ddof": 1, "norm_eps": 1e-8, "value_loss": "mse", "vf_coef": 0.5, "ent_coef": 0.0,
                   "max_grad_norm": 0.5, "optimizer": "rmsprop", "lr": 7e-4, "weight_decay": 0.0, "alpha": 0.99,
                   "eps": 1e-5, "momentum": 0.0, "optimizer_convention": "torch", "flatten": "env_major"}

#: `update_sb3_a2c_adam_torch`: A2C with Adam (``use_rms_prop=False``: SB3's Adam, eps 1e-5), advantages
#: normalised over the batch, GAE lambda 0.95 and an entropy bonus.
SB3_A2C_ADAM_KWARGS = {"use_rms_prop": False, "normalize_advantage": True, "gae_lambda": 0.95, "ent_coef": 0.01,
                       "learning_rate": 0.05}
#: `update_sb3_a2c_adam_torch`'s hyperparameters as `UpdateConfig` fields.
SB3_A2C_ADAM_OPTIONS = {"algorithm": "a2c", "gamma": 0.99, "gae_lambda": 0.95, "normalize_advantage": "batch",
                        "norm_ddof": 1, "norm_eps": 1e-8, "value_loss": "mse", "vf_coef": 0.5, "ent_coef": 0.01,
                        "max_grad_norm": 0.5, "optimizer": "adam", "lr": 0.05, "weight_decay": 0.0,
                        "betas": (0.9, 0.999), "eps": 1e-5, "optimizer_convention": "torch", "flatten": "env_major"}

#: The kit's problem for every SB3 example: SB3's heads have biases.
_KIT = {"actor_bias": True, "critic_bias": True, "dtype": "float32"}


def sb3_permutations(n_epochs: int, n_samples: int, seed: int = 0) -> np.ndarray:
    """The permutations SB3's buffer draws in one ``train()`` of an adapter with this `seed`: (n_epochs, M).

    SB3's ``RolloutBuffer.get`` calls ``np.random.permutation(M)`` once per epoch, and the adapters seed
    NumPy's global generator with `seed` for the call; NumPy's state is left as it was.
    """
    with _numpy_seeded(seed):
        return np.stack([np.random.permutation(n_samples) for _ in range(n_epochs)])

#: SB3's ``PPO.train()`` with `SB3_PPO_KWARGS` (an `SB3Update`; check it with `SB3_PPO_OPTIONS`).
update_sb3_ppo_torch = SB3Update("PPO", SB3_PPO_KWARGS, name="update_sb3_ppo_torch")
#: SB3's ``PPO.train()`` with `SB3_PPO_TARGET_KL_KWARGS` (not registered: see there).
update_sb3_ppo_target_kl_torch = SB3Update("PPO", SB3_PPO_TARGET_KL_KWARGS, name="update_sb3_ppo_target_kl_torch")
#: SB3's ``A2C.train()`` with every default (check it with `SB3_A2C_OPTIONS`).
update_sb3_a2c_torch = SB3Update("A2C", {}, name="update_sb3_a2c_torch")
#: SB3's ``A2C.train()`` with `SB3_A2C_ADAM_KWARGS` (check it with `SB3_A2C_ADAM_OPTIONS`).
update_sb3_a2c_adam_torch = SB3Update("A2C", SB3_A2C_ADAM_KWARGS, name="update_sb3_a2c_adam_torch")


# -- the broken examples: each one realistic change to SB3 ----------------------------------------

def _ppo_whitened_batch():
    """PPO whitening the whole buffer's advantages once, with SB3's per-minibatch normalisation off."""
    from stable_baselines3 import PPO

    class PPOBatchWhitened(PPO):
        def train(self) -> None:
            buffer = self.rollout_buffer
            adv = buffer.advantages
            buffer.advantages = ((adv - adv.mean()) / (adv.std() + 1e-8)).astype(np.float32)
            normalize, self.normalize_advantage = self.normalize_advantage, False
            try:
                super().train()
            finally:
                self.normalize_advantage = normalize

    return PPOBatchWhitened


def _ppo_value_clip_from_current():
    """PPO whose "old" values are predicted again by the critic being trained (clipping never acts)."""
    import torch
    from stable_baselines3 import PPO

    class PPOValueClipFromCurrent(PPO):
        def train(self) -> None:
            buffer = self.rollout_buffer
            own = "_get_samples" in vars(buffer)
            inner = buffer._get_samples

            def get_samples(batch_inds, *args, **kwargs):
                data = inner(batch_inds, *args, **kwargs)
                with torch.no_grad():
                    current = self.policy.predict_values(data.observations).flatten()
                return data._replace(old_values=current)

            buffer._get_samples = get_samples
            try:
                super().train()
            finally:
                if own:
                    buffer._get_samples = inner
                else:
                    del buffer._get_samples

    return PPOValueClipFromCurrent


def _ppo_clips_value_head_only():
    """PPO whose gradient clipping is handed the value head's parameters only."""
    import torch
    from stable_baselines3 import PPO

    class PPOClipsValueHead(PPO):
        def train(self) -> None:
            clip = torch.nn.utils.clip_grad_norm_

            def clip_value_head(parameters, max_norm, *args, **kwargs):
                return clip(self.policy.value_net.parameters(), max_norm, *args, **kwargs)

            torch.nn.utils.clip_grad_norm_ = clip_value_head
            try:
                super().train()
            finally:
                torch.nn.utils.clip_grad_norm_ = clip

    return PPOClipsValueHead


def _entropy_penalty_policy():
    """An ActorCriticPolicy whose entropy reaches the loss negated: the bonus becomes a penalty."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    class EntropySignFlipped(ActorCriticPolicy):
        def evaluate_actions(self, obs, actions):
            values, log_prob, entropy = super().evaluate_actions(obs, actions)
            return values, log_prob, -entropy

    return EntropySignFlipped


class _BrokenUpdate(SB3Update):
    """An `SB3Update` whose SB3 class, policy or optimiser is a broken one, resolved at build time."""

    def __init__(self, algorithm, kwargs, *, name, subclass=None, policy=None, optimizer=None, **options):
        super().__init__(algorithm, kwargs, name=name, **options)
        self._subclass, self._policy, self._optimizer = subclass, policy, optimizer

    def algorithm_class(self):
        return self._subclass() if self._subclass is not None else super().algorithm_class()

    def _build(self, S, A, T, N):
        saved = self.kwargs
        self.kwargs = dict(saved)
        if self._policy is not None:
            self.kwargs["policy"] = self._policy()
        if self._optimizer is not None:
            self.kwargs["policy_kwargs"] = {**self.kwargs.get("policy_kwargs", {}), **self._optimizer()}
        try:
            return super()._build(S, A, T, N)
        finally:
            self.kwargs = saved


def _tf_rmsprop():
    """SB3's advice for matching stable-baselines (TF) A2C: its TF-style RMSprop, alpha 0.99, eps 1e-5."""
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    return {"optimizer_class": RMSpropTFLike, "optimizer_kwargs": {"alpha": 0.99, "eps": 1e-5, "weight_decay": 0}}


update_sb3_ppo_no_timeout_bootstrap_torch = SB3Update(
    "PPO", SB3_PPO_KWARGS, bootstrap_time_limits=False, name="update_sb3_ppo_no_timeout_bootstrap_torch")
update_sb3_ppo_entropy_penalty_torch = _BrokenUpdate(
    "PPO", SB3_PPO_KWARGS, policy=_entropy_penalty_policy, name="update_sb3_ppo_entropy_penalty_torch")
update_sb3_ppo_whitened_batch_torch = _BrokenUpdate(
    "PPO", SB3_PPO_KWARGS, subclass=_ppo_whitened_batch, name="update_sb3_ppo_whitened_batch_torch")
update_sb3_ppo_value_clip_from_current_torch = _BrokenUpdate(
    "PPO", SB3_PPO_KWARGS, subclass=_ppo_value_clip_from_current,
    name="update_sb3_ppo_value_clip_from_current_torch")
update_sb3_ppo_clips_value_head_torch = _BrokenUpdate(
    "PPO", SB3_PPO_KWARGS, subclass=_ppo_clips_value_head_only, name="update_sb3_ppo_clips_value_head_torch")
update_sb3_a2c_tf_rmsprop_torch = _BrokenUpdate(
    "A2C", {}, optimizer=_tf_rmsprop, name="update_sb3_a2c_tf_rmsprop_torch")


# -- the registry ---------------------------------------------------------------------------------

#: Correct examples: each passes check_update.
CORRECT: tuple[Example, ...] = (
    Example("update_sb3_ppo_torch", "update", update_sb3_ppo_torch, "refpg", "torch", {**SB3_PPO_OPTIONS, **_KIT},
            None, "Stable-Baselines3 2.9.2's own PPO.train() (net_arch=[], batch_size 4, lr 0.05, clip_range_vf "
                  "0.2, ent_coef 0.01, the rest SB3's defaults) on a RolloutBuffer filled as collect_rollouts "
                  "fills it, float32"),
    Example("update_sb3_ppo_target_kl_torch", "update", update_sb3_ppo_target_kl_torch, "refpg", "torch",
            {**SB3_PPO_TARGET_KL_OPTIONS, **_KIT, "order": sb3_permutations(10, 16)}, None,
            "SB3's PPO.train() with target_kl=0.01: the early stop, judged on SB3's own permutations passed as "
            "order (a stop inside an epoch leaves the refused minibatch out of the trace)"),
    Example("update_sb3_a2c_torch", "update", update_sb3_a2c_torch, "refpg", "torch", {**SB3_A2C_OPTIONS, **_KIT},
            None, "SB3 2.9.2's own A2C.train() with every default: one step on the whole batch, gae_lambda 1, "
                  "torch RMSprop (alpha 0.99, eps 1e-5, lr 7e-4), float32"),
    Example("update_sb3_a2c_adam_torch", "update", update_sb3_a2c_adam_torch, "refpg", "torch",
            {**SB3_A2C_ADAM_OPTIONS, **_KIT}, None,
            "SB3's A2C.train() with use_rms_prop=False (Adam, eps 1e-5), normalize_advantage=True (over the "
            "whole batch), gae_lambda 0.95, ent_coef 0.01"),
)

_PPO = {**SB3_PPO_OPTIONS, **_KIT}

#: Broken examples: each fails check_update with its ``expected`` check id. Each is checked with the
#: options of the correct example it departs from (what its author believes it runs).
BROKEN: tuple[Example, ...] = (
    Example("update_sb3_ppo_no_timeout_bootstrap_torch", "update", update_sb3_ppo_no_timeout_bootstrap_torch,
            "refpg", "torch", _PPO, "update.advantages",
            "a rollout collected without SB3's timeout bootstrap (no reward + gamma * V(final observation) at a "
            "time limit), so GAE cuts a truncated episode like a terminated one, as SB3's PPO did before "
            "https://github.com/DLR-RM/stable-baselines3/issues/633"),
    Example("update_sb3_ppo_entropy_penalty_torch", "update", update_sb3_ppo_entropy_penalty_torch, "refpg",
            "torch", _PPO, "update.loss",
            "the entropy term enters the loss with the wrong sign, a penalty instead of a bonus (the sign bug of "
            "SB3's PPO/A2C entropy estimate, https://github.com/DLR-RM/stable-baselines3/issues/127)"),
    Example("update_sb3_ppo_whitened_batch_torch", "update", update_sb3_ppo_whitened_batch_torch, "refpg",
            "torch", _PPO, "update.loss",
            "advantages whitened once over the whole buffer instead of per minibatch (the choice discussed in "
            "https://github.com/ikostrikov/pytorch-a2c-ppo-acktr-gail/issues/102 and made in "
            "https://github.com/HorizonRobotics/alf/pull/1642), while SB3's per-minibatch one is declared"),
    Example("update_sb3_ppo_value_clip_from_current_torch", "update", update_sb3_ppo_value_clip_from_current_torch,
            "refpg", "torch", _PPO, "update.loss",
            "the 'old' values of the value clip predicted again by the critic being trained, so clip_range_vf "
            "never acts (https://github.com/tensorflow/agents/issues/352)"),
    Example("update_sb3_ppo_clips_value_head_torch", "update", update_sb3_ppo_clips_value_head_torch, "refpg",
            "torch", _PPO, "update.grad_norm",
            "clip_grad_norm_ handed the value head's parameters only, so the actor's gradient is never "
            "clipped and the norm is the critic's (https://github.com/google-deepmind/open_spiel/issues/827)"),
    Example("update_sb3_a2c_tf_rmsprop_torch", "update", update_sb3_a2c_tf_rmsprop_torch, "refpg", "torch",
            {**SB3_A2C_OPTIONS, **_KIT}, "update.optimizer_step",
            "A2C run with SB3's RMSpropTFLike (eps inside the root, the square average started at one) while "
            "torch's RMSprop is declared (https://github.com/DLR-RM/stable-baselines3/pull/110, "
            "https://github.com/pytorch/pytorch/issues/23796)"),
)

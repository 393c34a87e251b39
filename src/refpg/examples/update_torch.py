r"""Whole PPO updates in torch, kind ``update``: TorchRL's ``ClipPPOLoss`` loop and CleanRL's ``ppo.py`` loop.

Both take a fixed batch of a tabular problem with one-hot observations, a
linear actor ``logits(s) = actor_w[s] (+ actor_b)`` and a linear critic
``V(s) = critic_w[s] (+ critic_b)``, run the library's update on it, and hand
back a trace in the ``"refpg"`` convention of `refpg.conformance.check_update`:

.. math::
    L = -\frac1B \sum_i \min\big(r_i \hat A_i,\ \mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon) \hat A_i\big)
        + c_v L_V - c_H \frac1B \sum_i H(\pi(\cdot|s_i)), \qquad r_i = \frac{\pi(a_i|s_i)}{\pi_{old}(a_i|s_i)},

with :math:`\hat A` from GAE [Schulman2016] on the batch and one Adam step
[Kingma2015] per minibatch after global-norm clipping [Schulman2017].

* `update_torchrl_torch`: a ``ProbabilisticActor`` over a ``TensorDictModule``
  producing logits (``torch.distributions.Categorical``), a ``ValueOperator``,
  ``torchrl.objectives.value.GAE`` on a ``[N, T]`` TensorDict with ``"next"``
  entries, ``ClipPPOLoss`` with its defaults, a ``ReplayBuffer`` with a
  ``SamplerWithoutReplacement`` over ``data.reshape(-1)`` (so the flat index
  of sample (t, n) is ``n * T + t``: ``flatten="env_major"``), the PPO
  tutorial's ``backward``, ``clip_grad_norm_``, ``step``, ``zero_grad``.
  `update_torchrl_onehot_torch` is the same with ``OneHotCategorical``
  actions, as TorchRL's Atari example writes a discrete actor.
* `update_torchrl_tutorial_torch`: as the tutorial and TorchRL's
  sota-implementations write the loop, GAE recomputed at the start of every
  epoch with the current critic. That is TorchRL's own convention (pytorch/rl
  PR #1225 discusses it), which the ``update`` contract cannot declare: it is
  not registered, and the tests keep it as a strict xfail.
* `update_cleanrl_torch`: CleanRL's ``Agent`` with linear heads, its GAE loop
  (``nextnonterminal`` from the done of the step), ``b_inds`` reshuffled with
  NumPy every epoch over the ``reshape(-1)`` batch (time-major flat index
  ``t * N + n``), minibatch advantage normalisation, the clipped value loss
  with its max and 0.5, ``pg_loss - ent_coef * entropy_loss + v_loss * vf_coef``,
  ``clip_grad_norm_`` and Adam with eps 1e-5. CleanRL's ``ppo.py`` passes
  ``terminations | truncations`` as done, so a time limit is cut like a
  termination (vwxyzjn/cleanrl issue #198, open); this function bootstraps a
  time limit from the final observation instead, as vwxyzjn/cleanrl PR #448
  proposes, and `update_cleanrl_cut_truncation_torch` is the script as it
  stands (not registered; a strict xfail in the tests, with that reason).

Each traced step records the minibatch's flat indices (the permutation the
library drew), the total loss, the gradient before and after clipping, the
norm ``clip_grad_norm_`` returns and the parameters after the step.

The broken examples are each one realistic edit of one of these loops, and
cite the public thread about that bug.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``. torch,
torchrl and tensordict are imported inside the functions, so this module
imports without them.

References
----------
[Schulman2016], [Schulman2017]; [Kingma2015] D. P. Kingma and J. Ba, "Adam: A
Method for Stochastic Optimization", ICLR 2015. TorchRL 0.14.1
(``torchrl/objectives/ppo.py``, ``torchrl/objectives/value/advantages.py``);
CleanRL ``cleanrl/ppo.py``.
"""

from __future__ import annotations

import warnings

import numpy as np

from refpg.examples._example import Example

__all__ = [
    "CORRECT",
    "BROKEN",
    "CLEANRL_OPTIONS",
    "TORCHRL_OPTIONS",
    "TORCHRL_NORMALIZED_OPTIONS",
    "update_cleanrl_torch",
    "update_cleanrl_cut_truncation_torch",
    "update_torchrl_torch",
    "update_torchrl_float64_torch",
    "update_torchrl_normalized_torch",
    "update_torchrl_onehot_torch",
    "update_torchrl_tutorial_torch",
]


# -- shared: batch in, trace out -----------------------------------------------------------------

def _as_tensor(x, dtype=None):
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


def _unpack(batch, params):
    """(tensors of the batch, dtype, S, A, actor_bias, critic_bias) in the parameters' dtype."""
    import torch

    actor_w = _as_tensor(params["actor_w"])
    dtype = actor_w.dtype if actor_w.dtype.is_floating_point else torch.float64
    b = {key: _as_tensor(batch[key]) for key in ("states", "actions", "terminated", "truncated", "next_states")}
    for key in ("obs", "next_obs", "rewards", "logp_old", "values", "next_values"):
        b[key] = _as_tensor(batch[key], dtype)
    b["actions"] = b["actions"].long()
    b["terminated"] = b["terminated"].bool()
    b["truncated"] = b["truncated"].bool()
    n_states, n_actions = actor_w.shape
    return b, dtype, n_states, n_actions, params.get("actor_b") is not None, params.get("critic_b") is not None


def _load(actor, critic, params, dtype):
    """Copy refpg's parameters into ``nn.Linear(S, A)`` and ``nn.Linear(S, 1)`` (weights are transposed)."""
    import torch

    with torch.no_grad():
        actor.weight.copy_(_as_tensor(params["actor_w"], dtype).T)
        critic.weight.copy_(_as_tensor(params["critic_w"], dtype)[None, :])
        if actor.bias is not None:
            actor.bias.copy_(_as_tensor(params["actor_b"], dtype))
        if critic.bias is not None:
            critic.bias.copy_(_as_tensor(params["critic_b"], dtype).reshape(1))


def _as_params(actor_w, actor_b, critic_w, critic_b) -> dict:
    """refpg's params dict from the two layers' tensors (or their gradients), detached copies."""
    out = {"actor_w": actor_w.detach().T.clone(), "critic_w": critic_w.detach()[0].clone()}
    if actor_b is not None:
        out["actor_b"] = actor_b.detach().clone()
    if critic_b is not None:
        out["critic_b"] = critic_b.detach()[0].clone()
    return out


def _layer_params(actor, critic) -> dict:
    return _as_params(actor.weight, actor.bias, critic.weight, critic.bias)


def _layer_grads(actor, critic) -> dict:
    import torch

    def grad(p):
        if p is None:
            return None
        # A parameter the loss does not reach has no .grad; its gradient is zero.
        return torch.zeros_like(p) if p.grad is None else p.grad

    return _as_params(grad(actor.weight), grad(actor.bias), grad(critic.weight), grad(critic.bias))


def _record(steps, actor, critic, *, indices, loss, grad, grad_norm, clipped):
    # A copy: CleanRL's mb_inds is a view of b_inds, which the next epoch shuffles in place.
    if not isinstance(indices, np.ndarray):
        indices = indices.detach().cpu().numpy()
    steps.append({"indices": np.array(indices, dtype=np.int64, copy=True), "loss": float(loss), "grad": grad,
                  "grad_norm": float(grad_norm), "clipped_grad": clipped,
                  "params": _layer_params(actor, critic)})


# -- CleanRL ---------------------------------------------------------------------------------------

#: CleanRL ``ppo.py``'s defaults that the update reads (``num_minibatches = 4``; `update_cleanrl_torch`
#: derives ``minibatch_size = batch_size // num_minibatches`` as the script does), except the learning
#: rate: at 2.5e-4 Adam moves each parameter by about lr per step, so within one update of 16 steps no
#: ratio would leave 1 +- 0.2 and no value v_old +- 0.2, and the clipping would go unchecked. At 0.05
#: both clips bind within the first epoch.
_CLEANRL_ARGS = {"gamma": 0.99, "gae_lambda": 0.95, "update_epochs": 4, "num_minibatches": 4, "norm_adv": True,
                 "clip_coef": 0.2, "clip_vloss": True, "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5,
                 "learning_rate": 0.05, "seed": 1}

#: `update_cleanrl_torch`'s hyperparameters as `UpdateConfig` fields (check_update's keyword arguments),
#: for the kit's default batch of 8 steps x 2 envs (16 samples, minibatches of 4).
CLEANRL_OPTIONS = {"algorithm": "ppo", "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2,
                   "clip_range_vf": 0.2, "value_clip": "max", "n_epochs": 4, "minibatch_size": 4,
                   "normalize_advantage": "minibatch", "norm_ddof": 1, "norm_eps": 1e-8,
                   "value_loss": "half_mse", "vf_coef": 0.5, "ent_coef": 0.01, "max_grad_norm": 0.5,
                   "optimizer": "adam", "lr": 0.05, "eps": 1e-5, "flatten": "time_major"}


def _cleanrl_agent(n_states, n_actions, actor_bias, critic_bias, dtype):
    """CleanRL's ``Agent`` (``get_value``, ``get_action_and_value``) with linear heads on one-hot obs."""
    from torch import nn
    from torch.distributions.categorical import Categorical

    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.critic = nn.Linear(n_states, 1, bias=critic_bias, dtype=dtype)
            self.actor = nn.Linear(n_states, n_actions, bias=actor_bias, dtype=dtype)

        def get_value(self, x):
            return self.critic(x)

        def get_action_and_value(self, x, action=None):
            logits = self.actor(x)
            probs = Categorical(logits=logits)
            if action is None:
                action = probs.sample()
            return action, probs.log_prob(action), probs.entropy(), self.critic(x)

    return Agent()


def _cleanrl_gae(agent, b, args, *, truncation):
    """CleanRL's GAE loop, on the rollout the batch holds.

    ``dones[t]`` is CleanRL's ``next_done`` stored before step t (observation
    t starts an episode), so the done of step t is read as ``dones[t + 1]``
    and, for the last step, ``next_done``. ``truncation="cut"`` is ppo.py:
    ``done = terminations | truncations`` in both the bootstrap and the
    recursion. ``"bootstrap"`` is vwxyzjn/cleanrl PR #448's change: the
    bootstrap is masked by the termination only, and a step that ended its
    episode bootstraps from V of its final observation (kept aside before
    the reset), never from ``values[t + 1]`` of the next episode.
    """
    import torch

    rewards, values = b["rewards"], b["values"]
    num_steps = rewards.shape[0]
    step_done = (b["terminated"] | b["truncated"]).to(rewards.dtype)
    step_term = b["terminated"].to(rewards.dtype)
    dones = torch.zeros_like(rewards)
    dones[1:] = step_done[:-1]
    next_done = step_done[-1]
    with torch.no_grad():
        next_value = agent.get_value(b["next_obs"][-1]).reshape(1, -1)
        # V of every step's true next observation: CleanRL-with-PR-448 reads it only where an episode ended.
        final_values = agent.get_value(b["next_obs"]).squeeze(-1)
        advantages = torch.zeros_like(rewards)
        lastgaelam = 0
        for t in reversed(range(num_steps)):
            if t == num_steps - 1:
                nextnonterminal = 1.0 - next_done
                nextvalues = next_value
            else:
                nextnonterminal = 1.0 - dones[t + 1]
                nextvalues = values[t + 1]
            if truncation == "cut":
                bootstrap = nextvalues * nextnonterminal
            else:
                ended = step_done[t]
                nextvalues = torch.where(ended.bool(), final_values[t], nextvalues)
                bootstrap = nextvalues * (1.0 - step_term[t])
            delta = rewards[t] + args["gamma"] * bootstrap - values[t]
            advantages[t] = lastgaelam = delta + args["gamma"] * args["gae_lambda"] * nextnonterminal * lastgaelam
        returns = advantages + values
    return advantages, returns


def _cleanrl_update(batch, params, *, truncation="bootstrap", bug=None, args=None):
    """CleanRL ``ppo.py``'s update on one batch; `bug` selects one of the planted bugs."""
    import torch
    from torch import nn, optim

    args = dict(_CLEANRL_ARGS if args is None else args)
    b, dtype, n_states, n_actions, actor_bias, critic_bias = _unpack(batch, params)
    agent = _cleanrl_agent(n_states, n_actions, actor_bias, critic_bias, dtype)
    _load(agent.actor, agent.critic, params, dtype)
    optimizer = optim.Adam(agent.parameters(), lr=args["learning_rate"], eps=1e-5)

    advantages, returns = _cleanrl_gae(agent, b, args, truncation=truncation)
    if bug == "normalized_returns":
        # The value targets standardised like the advantages: the critic learns normalised returns.
        returns = (returns - returns.mean()) / (returns.std() + 1e-8)

    # flatten the batch (time-major: row t * N + n)
    b_obs = b["obs"].reshape((-1, n_states))
    b_logprobs = b["logp_old"].reshape(-1)
    b_actions = b["actions"].reshape(-1)
    b_advantages = advantages.reshape(-1)
    b_returns = returns.reshape(-1)
    b_values = b["values"].reshape(-1)

    batch_size = b_obs.shape[0]
    minibatch_size = int(batch_size // args["num_minibatches"])
    rng = np.random.RandomState(args["seed"])
    b_inds = np.arange(batch_size)
    if bug == "same_minibatches":
        rng.shuffle(b_inds)
    steps = []
    for epoch in range(args["update_epochs"]):
        if bug != "same_minibatches":
            rng.shuffle(b_inds)
        for start in range(0, batch_size, minibatch_size):
            end = start + minibatch_size
            mb_inds = b_inds[start:end]

            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
            old_logprob = b_logprobs[mb_inds]
            if bug == "ratio_one":
                # the "old" log-probabilities taken from the policy being trained
                old_logprob = newlogprob.detach()
            logratio = newlogprob - old_logprob
            ratio = logratio.exp()

            mb_advantages = b_advantages[mb_inds]
            if args["norm_adv"]:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            # Policy loss
            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args["clip_coef"], 1 + args["clip_coef"])
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()

            # Value loss
            newvalue = newvalue.view(-1)
            if args["clip_vloss"]:
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(
                    newvalue - b_values[mb_inds], -args["clip_coef"], args["clip_coef"])
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)
                v_loss = 0.5 * v_loss_max.mean()
            else:
                v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

            entropy_loss = entropy.mean()
            loss = pg_loss - args["ent_coef"] * entropy_loss + v_loss * args["vf_coef"]

            if bug != "no_zero_grad":
                optimizer.zero_grad()
            loss.backward()
            grad = _layer_grads(agent.actor, agent.critic)
            if bug == "clip_after_step":
                optimizer.step()
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args["max_grad_norm"])
                clipped = _layer_grads(agent.actor, agent.critic)
            else:
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args["max_grad_norm"])
                clipped = _layer_grads(agent.actor, agent.critic)
                optimizer.step()
            _record(steps, agent.actor, agent.critic, indices=mb_inds, loss=loss.detach(), grad=grad,
                    grad_norm=grad_norm, clipped=clipped)
    return {"advantages": advantages.detach().clone(), "returns": returns.detach().clone(), "steps": steps}


def update_cleanrl_torch(batch, params):
    r"""CleanRL ``ppo.py``'s update loop with its defaults, a time limit bootstrapped from the final observation.

    Per epoch ``b_inds`` is reshuffled (NumPy, seeded once as the script
    seeds ``np.random``) and cut into ``num_minibatches = 4`` minibatches;
    each step minimises

    .. math::
        \mathrm{pg\_loss} - 0.01\,\mathrm{mean}\,H + 0.5 \cdot 0.5\,\mathrm{mean}
        \max\big((V - R)^2, (V_{old} + \mathrm{clip}(V - V_{old}, \pm 0.2) - R)^2\big)

    with advantages normalised per minibatch by ``(A - mean) / (std + 1e-8)``
    (std with Bessel's correction), then ``clip_grad_norm_(.., 0.5)`` and
    Adam(lr 0.05, eps 1e-5). Hyperparameters as `UpdateConfig` fields:
    `CLEANRL_OPTIONS`.

    Parameters
    ----------
    batch : dict
        The ``update`` kind's batch, (T, N) time-major, torch or NumPy.
    params : dict
        ``actor_w`` (S, A), ``critic_w`` (S,), optionally ``actor_b``, ``critic_b``.

    Returns
    -------
    dict
        ``{"advantages", "returns", "steps"}``; each step has ``indices``,
        ``loss``, ``grad``, ``grad_norm``, ``clipped_grad``, ``params``.

    Notes
    -----
    GAE is CleanRL's loop with one change: ``ppo.py`` passes
    ``terminations | truncations`` as done, which cuts a time limit like a
    termination (vwxyzjn/cleanrl issue #198, open); here the bootstrap is
    masked by the termination alone and a step that ended its episode reads
    V of its final observation, as vwxyzjn/cleanrl PR #448 proposes. The
    script as it stands is `update_cleanrl_cut_truncation_torch`.

    References
    ----------
    [Schulman2016], [Schulman2017]; CleanRL ``cleanrl/ppo.py``.
    """
    return _cleanrl_update(batch, params)


def update_cleanrl_cut_truncation_torch(batch, params):
    """CleanRL ``ppo.py`` exactly: ``done = terminations | truncations``, so a time limit is not bootstrapped.

    Differs from the contract's GAE on every batch with a truncated step whose
    final observation has a non-zero value (vwxyzjn/cleanrl issue #198, open
    since 2022; PR #311 was closed for lack of a measured improvement).
    """
    return _cleanrl_update(batch, params, truncation="cut")


def update_cleanrl_no_zero_grad_torch(batch, params):
    """CleanRL's loop without ``optimizer.zero_grad()``: every step's gradient is the sum since the first."""
    return _cleanrl_update(batch, params, bug="no_zero_grad")


def update_cleanrl_same_minibatches_torch(batch, params):
    """CleanRL's loop with ``b_inds`` shuffled once, before the epoch loop: every epoch has the same minibatches."""
    return _cleanrl_update(batch, params, bug="same_minibatches")


def update_cleanrl_ratio_one_torch(batch, params):
    """CleanRL's loop with the old log-probabilities recomputed from the current policy: the ratio is always 1."""
    return _cleanrl_update(batch, params, bug="ratio_one")


def update_cleanrl_clip_after_step_torch(batch, params):
    """CleanRL's loop with ``clip_grad_norm_`` after ``optimizer.step()``: Adam steps on the unclipped gradient."""
    return _cleanrl_update(batch, params, bug="clip_after_step")


def update_cleanrl_normalized_returns_torch(batch, params):
    """CleanRL's loop with the returns standardised before the value loss: the critic learns normalised targets."""
    return _cleanrl_update(batch, params, bug="normalized_returns")


# -- TorchRL ---------------------------------------------------------------------------------------

#: The TorchRL update's settings: ClipPPOLoss's defaults (clip_epsilon 0.2, entropy_coeff 0.01,
#: critic_coeff 1.0, loss_critic_type "smooth_l1", normalize_advantage False, clip_value None), GAE's
#: (average_gae False), and the PPO tutorial's optimiser settings (Adam, max_grad_norm 1.0, 10 epochs)
#: with a learning rate of 0.05 instead of 3e-4, so that the ratio clip binds within the update.
_TORCHRL_ARGS = {"gamma": 0.99, "lmbda": 0.95, "num_epochs": 10, "sub_batch_size": 4, "lr": 0.05,
                 "max_grad_norm": 1.0, "clip_epsilon": 0.2, "seed": 0}

#: `update_torchrl_torch`'s hyperparameters as `UpdateConfig` fields, for the kit's default batch of
#: 8 steps x 2 envs (16 samples, minibatches of 4); the registered float32 examples add dtype="float32".
TORCHRL_OPTIONS = {"algorithm": "ppo", "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2,
                   "clip_range_vf": None, "n_epochs": 10, "minibatch_size": 4, "normalize_advantage": None,
                   "value_loss": "smooth_l1", "vf_coef": 1.0, "ent_coef": 0.01, "max_grad_norm": 1.0,
                   "optimizer": "adam", "lr": 0.05, "eps": 1e-8, "flatten": "env_major"}


#: `update_torchrl_normalized_torch`'s hyperparameters: TorchRL's ``_standardize`` divides by
#: ``std.clamp_min(eps)`` with eps = float32's resolution, 1e-6 (norm_eps_on="clamp").
TORCHRL_NORMALIZED_OPTIONS = {**TORCHRL_OPTIONS, "normalize_advantage": "minibatch", "norm_ddof": 1, "norm_eps": 1e-6,
                              "norm_eps_on": "clamp", "clip_range_vf": 0.2, "value_clip": "max", "dtype": "float32"}


def _torchrl_modules(n_states, n_actions, actor_bias, critic_bias, dtype, distribution):
    """(actor layer, critic layer, policy_module, value_module) as TorchRL's examples build them."""
    import torch
    from torch import nn
    from tensordict.nn import TensorDictModule
    from torchrl.modules import OneHotCategorical, ProbabilisticActor, ValueOperator

    actor_net = nn.Linear(n_states, n_actions, bias=actor_bias, dtype=dtype)
    critic_net = nn.Linear(n_states, 1, bias=critic_bias, dtype=dtype)
    policy_module = ProbabilisticActor(
        module=TensorDictModule(actor_net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical if distribution == "categorical" else OneHotCategorical,
        return_log_prob=True,
    )
    value_module = ValueOperator(module=critic_net, in_keys=["observation"])
    return actor_net, critic_net, policy_module, value_module


def _torchrl_data(b, n_actions, distribution, log_prob_key, *, with_terminated=True):
    """The rollout as a collector returns it: batch ``[N, T]`` (time last), a ``"next"`` sub-TensorDict."""
    import torch
    from tensordict import TensorDict

    def env_major(x):
        return x.transpose(0, 1).contiguous()

    actions = b["actions"]
    if distribution == "onehot":
        actions = torch.nn.functional.one_hot(actions, n_actions)
    done = b["terminated"] | b["truncated"]
    nxt = {"observation": env_major(b["next_obs"]), "reward": env_major(b["rewards"])[..., None],
           "done": env_major(done)[..., None], "truncated": env_major(b["truncated"])[..., None]}
    if with_terminated:
        nxt["terminated"] = env_major(b["terminated"])[..., None]
    n_envs, n_steps = b["rewards"].shape[1], b["rewards"].shape[0]
    return TensorDict({"observation": env_major(b["obs"]), "action": env_major(actions),
                       log_prob_key: env_major(b["logp_old"]), "next": TensorDict(nxt, [n_envs, n_steps])},
                      batch_size=[n_envs, n_steps])


class _quiet_torchrl:
    """torchrl's logger at WARNING inside the block, as it was after it."""

    def __enter__(self):
        import logging
        self.logger = logging.getLogger("torchrl")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False


def _torchrl_update(batch, params, **kwargs):
    """The TorchRL PPO loop on one batch (`_torchrl_update_quietly`), with torchrl's logger at WARNING: it
    logs one INFO line per replay-buffer storage, hundreds in one check."""
    with _quiet_torchrl():
        return _torchrl_update_quietly(batch, params, **kwargs)


def _torchrl_update_quietly(batch, params, *, distribution="categorical", per_epoch_gae=False,
                            exact_coefficients=False, loss_kwargs=None, bug=None, args=None):
    """The TorchRL PPO loop on one batch; `exact_coefficients` passes every coefficient as a tensor of the
    parameters' dtype; `loss_kwargs` go to ClipPPOLoss; `bug` selects one of the planted bugs."""
    import torch
    from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    args = dict(_TORCHRL_ARGS if args is None else args)
    b, dtype, n_states, n_actions, actor_bias, critic_bias = _unpack(batch, params)
    actor_net, critic_net, policy_module, value_module = _torchrl_modules(
        n_states, n_actions, actor_bias, critic_bias, dtype, distribution)
    _load(actor_net, critic_net, params, dtype)

    coefficients = {"gamma": args["gamma"], "lmbda": args["lmbda"], "clip_epsilon": args["clip_epsilon"]}
    if exact_coefficients:
        # TorchRL keeps each coefficient as torch.tensor(value): float32 for a Python float, whatever the
        # data's dtype; casting the module later would keep the rounded value.
        coefficients = {k: torch.tensor(v, dtype=dtype) for k, v in
                        {**coefficients, "entropy_coeff": 0.01, "critic_coeff": 1.0}.items()}
    advantage_module = GAE(gamma=coefficients.pop("gamma"), lmbda=coefficients.pop("lmbda"),
                           value_network=value_module)
    with warnings.catch_warnings():
        # ClipPPOLoss copies a tensor clip_epsilon with torch.tensor(), which warns and keeps its value.
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        loss_module = ClipPPOLoss(actor_network=policy_module, critic_network=value_module, **coefficients,
                                  **(loss_kwargs or {}))
    optim = torch.optim.Adam(loss_module.parameters(), args["lr"])

    data = _torchrl_data(b, n_actions, distribution, loss_module.tensor_keys.sample_log_prob,
                         with_terminated=bug != "no_terminated")
    frames_per_batch = data.numel()
    replay_buffer = ReplayBuffer(storage=LazyTensorStorage(max_size=frames_per_batch),
                                 sampler=SamplerWithoutReplacement(),
                                 generator=torch.Generator().manual_seed(args["seed"]))

    def advantage_and_fill():
        with torch.no_grad():
            advantage_module(data)
        replay_buffer.extend(data.reshape(-1))

    advantage_and_fill()
    # GAE writes [N, T, 1]; the trace is time-major (T, N).
    advantages = data["advantage"][..., 0].T.clone()
    returns = data["value_target"][..., 0].T.clone()
    steps = []
    for epoch in range(args["num_epochs"]):
        if per_epoch_gae and epoch > 0:
            advantage_and_fill()
        for _ in range(frames_per_batch // args["sub_batch_size"]):
            subdata, info = replay_buffer.sample(args["sub_batch_size"], return_info=True)
            loss_vals = loss_module(subdata)
            loss_value = loss_vals["loss_objective"] + loss_vals["loss_critic"] + loss_vals["loss_entropy"]

            loss_value.backward()
            grad = _layer_grads(actor_net, critic_net)
            grad_norm = torch.nn.utils.clip_grad_norm_(loss_module.parameters(), args["max_grad_norm"])
            clipped = _layer_grads(actor_net, critic_net)
            optim.step()
            if bug != "no_zero_grad":
                optim.zero_grad()
            _record(steps, actor_net, critic_net, indices=info["index"], loss=loss_value.detach(), grad=grad,
                    grad_norm=grad_norm, clipped=clipped)
    return {"advantages": advantages, "returns": returns, "steps": steps}


def update_torchrl_torch(batch, params):
    r"""A PPO update with TorchRL: ``GAE``, ``ClipPPOLoss`` with its defaults, the PPO tutorial's loop.

    The advantage is computed once, before the epochs (the pattern of
    ``ClipPPOLoss``'s docstring: ``advantage(data); losses = ppo_loss(data)``),
    the flattened rollout goes into a ``ReplayBuffer`` with a
    ``SamplerWithoutReplacement`` and each step minimises

    .. math::
        \mathrm{loss\_objective} + \mathrm{loss\_critic} + \mathrm{loss\_entropy}
        = -\mathrm{mean}\,\min(r A, \mathrm{clip}(r, 0.8, 1.2) A)
          + 1.0\,\mathrm{mean}\,\mathrm{Huber}_1(R - V) - 0.01\,\mathrm{mean}\,H,

    then ``clip_grad_norm_(loss_module.parameters(), 1.0)``, Adam(lr 0.05),
    ``zero_grad``; 10 epochs of minibatches of 4. Hyperparameters as
    `UpdateConfig` fields: `TORCHRL_OPTIONS`.

    Parameters
    ----------
    batch : dict
        The ``update`` kind's batch, (T, N) time-major, torch or NumPy.
    params : dict
        ``actor_w`` (S, A), ``critic_w`` (S,), optionally ``actor_b``, ``critic_b``.

    Returns
    -------
    dict
        ``{"advantages", "returns", "steps"}``: GAE's ``advantage`` and
        ``value_target`` back in (T, N) layout; each step has the storage
        indices the sampler drew (``info["index"]``), the loss, gradients,
        ``clip_grad_norm_``'s norm and the parameters.

    Notes
    -----
    What the installed TorchRL 0.14.1 computes, read in its source:

    * ``ClipPPOLoss`` clips the log-ratio to ``[log(1 - eps), log(1 + eps)]``
      and exponentiates: the same clipped ratio. Its entropy is
      ``Categorical.entropy()``, exact. ``loss_critic`` is
      ``critic_coeff * smooth_l1_loss(value_target, V)``, mean-reduced.
    * Every coefficient is kept as ``torch.tensor(value)``: ``GAE``'s gamma
      and lmbda, ``ClipPPOLoss``'s clip_epsilon, entropy_coeff and
      critic_coeff. From a Python float that is float32 whatever the data's
      dtype, so on float64 data the update runs with float32(0.99),
      float32(0.2), float32(0.01) (and gamma * lmbda as a float32 product):
      advantages off by ~3e-7 on the kit's batches (the GAE part of this is
      described in `refpg.examples.real_libraries.torchrl_gae`). Hence the
      example is registered at float32, TorchRL's working dtype;
      `update_torchrl_float64_torch` passes float64 tensors and is exact.
    * The rollout is ``[N, T]`` with time last, as a collector returns it, so
      ``data.reshape(-1)`` orders samples env-major.

    References
    ----------
    [Schulman2016], [Schulman2017]; TorchRL 0.14.1; pytorch/tutorials
    ``intermediate_source/reinforcement_ppo.py``.
    """
    return _torchrl_update(batch, params)


def update_torchrl_float64_torch(batch, params):
    """`update_torchrl_torch` with every coefficient given as a tensor of the data's dtype.

    ``GAE(gamma=torch.tensor(0.99, dtype=torch.float64), ...)`` and the same for
    ``ClipPPOLoss``'s clip_epsilon, entropy_coeff and critic_coeff: on float64
    data the update then equals the reference to rounding. Casting the
    modules afterwards (``loss_module.double()``) would not do: the buffers
    already hold the float32-rounded values.
    """
    return _torchrl_update(batch, params, exact_coefficients=True)


def update_torchrl_normalized_torch(batch, params):
    r"""`update_torchrl_torch` with ``ClipPPOLoss(normalize_advantage=True, clip_value=True)``.

    Each minibatch's advantages become :math:`(A - \mathrm{mean}) / \max(\mathrm{std}, 10^{-6})`
    (Bessel's std; ``torch.finfo(float).resolution`` as the floor; none for a minibatch of one), and the
    value loss is the per-sample larger of the smooth-L1 losses of :math:`V` and of
    :math:`V_{old} + \mathrm{clip}(V - V_{old}, \pm 0.2)` (``clip_value=True`` takes clip_epsilon),
    :math:`V_{old}` being the ``state_value`` GAE wrote. As `UpdateConfig` fields: ``normalize_advantage=
    "minibatch"``, ``clip_range_vf=0.2``, ``value_clip="max"``; the floor is not ``norm_eps`` (it replaces
    the std instead of adding to it), so the example is registered at float32, where ``norm_eps=1e-8``
    is within tolerance of it.
    """
    return _torchrl_update(batch, params, loss_kwargs={"normalize_advantage": True, "clip_value": True})


def update_torchrl_onehot_torch(batch, params):
    """`update_torchrl_torch` with ``torchrl.modules.OneHotCategorical`` and one-hot actions (TorchRL's Atari PPO)."""
    return _torchrl_update(batch, params, distribution="onehot")


def update_torchrl_tutorial_torch(batch, params):
    """TorchRL's PPO tutorial loop as written: ``advantage_module(data)`` at the start of every epoch.

    From the second epoch on, the advantages and value targets come from the
    critic as the previous epoch left it, and the value clip's reference
    ``state_value`` with them. The ``update`` contract computes the
    advantages once (as the PPO paper, SB3 and CleanRL do), so this
    convention of TorchRL's cannot be declared there (pytorch/rl PR #1225).
    """
    return _torchrl_update(batch, params, per_epoch_gae=True)


def update_torchrl_no_zero_grad_torch(batch, params):
    """TorchRL's loop without ``optim.zero_grad()``: each step's gradient accumulates all earlier ones."""
    return _torchrl_update(batch, params, bug="no_zero_grad")


def update_torchrl_no_terminated_torch(batch, params):
    """TorchRL's loop on a TensorDict without ``("next", "terminated")``: GAE takes ``done`` for it."""
    return _torchrl_update(batch, params, bug="no_terminated")


# -- the registry ---------------------------------------------------------------------------------

#: Correct examples: each passes check_update.
CORRECT: tuple[Example, ...] = (
    Example("update_cleanrl_torch", "update", update_cleanrl_torch, "refpg", "torch", CLEANRL_OPTIONS, None,
            "CleanRL ppo.py's update loop (numpy-shuffled b_inds, minibatch advantage normalisation, "
            "max-clipped 0.5 value loss, Adam eps 1e-5), a time limit bootstrapped as vwxyzjn/cleanrl "
            "PR #448 proposes"),
    Example("update_torchrl_torch", "update", update_torchrl_torch, "refpg", "torch",
            {**TORCHRL_OPTIONS, "dtype": "float32"}, None,
            "TorchRL in float32: GAE once, ClipPPOLoss with its defaults (smooth_l1 critic, coefficient 1, "
            "entropy 0.01), a SamplerWithoutReplacement over the [N, T] rollout, the PPO tutorial's loop"),
    Example("update_torchrl_float64_torch", "update", update_torchrl_float64_torch, "refpg", "torch",
            TORCHRL_OPTIONS, None,
            "the TorchRL update in float64, every coefficient passed as a float64 tensor (TorchRL stores "
            "a Python float as a float32 buffer)"),
    Example("update_torchrl_onehot_torch", "update", update_torchrl_onehot_torch, "refpg", "torch",
            {**TORCHRL_OPTIONS, "dtype": "float32"}, None,
            "the TorchRL update with torchrl.modules.OneHotCategorical and one-hot actions, float32"),
    Example("update_torchrl_normalized_torch", "update", update_torchrl_normalized_torch, "refpg", "torch",
            TORCHRL_NORMALIZED_OPTIONS, None,
            "the TorchRL update with ClipPPOLoss(normalize_advantage=True, clip_value=True): minibatch "
            "advantage normalisation and the max-clipped smooth-L1 value loss, float32"),
)

#: Broken examples: each fails check_update with its ``expected`` check id.
BROKEN: tuple[Example, ...] = (
    Example("update_cleanrl_no_zero_grad_torch", "update", update_cleanrl_no_zero_grad_torch, "refpg",
            "torch", CLEANRL_OPTIONS, "update.gradient",
            "optimizer.zero_grad() left out: gradients accumulate across minibatches (the bug fixed in "
            "https://github.com/meta-pytorch/torchforge/pull/71; a warning asked for in "
            "https://github.com/pytorch/pytorch/issues/47175)"),
    Example("update_cleanrl_same_minibatches_torch", "update", update_cleanrl_same_minibatches_torch, "refpg",
            "torch", CLEANRL_OPTIONS, "update.minibatch_order",
            "minibatch indices shuffled once, before the epoch loop, so every epoch repeats them "
            "(https://github.com/leggedrobotics/rsl_rl/issues/26)"),
    Example("update_cleanrl_ratio_one_torch", "update", update_cleanrl_ratio_one_torch, "refpg", "torch",
            CLEANRL_OPTIONS, "update.loss",
            "old log-probabilities recomputed from the policy being trained, so the ratio is always 1 "
            "and clipping never acts (https://github.com/tensorforce/tensorforce/issues/312; "
            "https://github.com/higgsfield-ai/higgsfield/issues/20)"),
    Example("update_cleanrl_clip_after_step_torch", "update", update_cleanrl_clip_after_step_torch, "refpg",
            "torch", CLEANRL_OPTIONS, "update.optimizer_step",
            "clip_grad_norm_ called after optimizer.step(): the step uses the unclipped gradient "
            "(https://github.com/VGraphRNN/VGRNN/issues/4; https://github.com/awslabs/graphstorm/issues/1366)"),
    Example("update_cleanrl_normalized_returns_torch", "update", update_cleanrl_normalized_returns_torch,
            "refpg", "torch", CLEANRL_OPTIONS, "update.returns",
            "the value targets standardised like advantages, so the critic learns normalised returns "
            "(https://github.com/luchris429/model-free-opponent-shaping/issues/1)"),
    Example("update_torchrl_no_zero_grad_torch", "update", update_torchrl_no_zero_grad_torch, "refpg", "torch",
            {**TORCHRL_OPTIONS, "dtype": "float32"}, "update.gradient",
            "the tutorial loop without optim.zero_grad(): gradients accumulate across minibatches "
            "(https://github.com/meta-pytorch/torchforge/pull/71)"),
    Example("update_torchrl_no_terminated_torch", "update", update_torchrl_no_terminated_torch, "refpg", "torch",
            {**TORCHRL_OPTIONS, "dtype": "float32"}, "update.advantages",
            "the rollout without a ('next', 'terminated') entry: TorchRL's GAE takes done for it, so a time "
            "limit is cut like a termination (the fallback of https://github.com/pytorch/rl/pull/1581; the "
            "same done-for-terminated mix-up inside the vectorised GAE, https://github.com/pytorch/rl/pull/2773)"),
)

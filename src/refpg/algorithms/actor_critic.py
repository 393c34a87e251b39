r"""The whole actor-critic update, as PPO and A2C libraries define it: the reference for `check_update`.

`refpg.algorithms.ppo_update` is the policy part of PPO alone. A library's
``train()`` does more between the pieces: it computes GAE on its buffer,
normalises advantages over a minibatch, adds a (clipped) value loss and an
entropy bonus, clips the global gradient norm and steps one or two
optimisers. This module does all of it, on a fixed batch and in float64, and
records every intermediate of every optimiser step, so that a library's
update can be compared step by step (`refpg.conformance.check_update`).

The problem class is the one of the kit: a tabular MDP seen through one-hot
observations, a linear actor and a linear critic,

.. math::
    \mathrm{logits}(s) = W_{s\cdot} + b, \qquad V_w(s) = w_s + c,

with the biases optional (`ACParams`). With ``net_arch=[]`` an SB3
``ActorCriticPolicy`` on a ``Discrete`` observation space is exactly this
(``action_net.weight`` is :math:`W^\top`, ``value_net.weight`` is
:math:`w^\top`).

One update (`actor_critic_update`), for a batch of shape (T, N):

1. advantages :math:`\hat A` = GAE(gamma, lambda) with the flags of
   `refpg.returns.gae` ([Schulman2016]); returns :math:`R = \hat A + V_{old}`;
2. the batch is flattened to M = T N samples (`UpdateConfig.flatten`);
   optionally the advantages are normalised once over the batch;
3. for each epoch and each minibatch I of the epoch's permutation:
   (optionally) normalise the minibatch's advantages, then minimise

   .. math::
       \mathcal L = \underbrace{-\tfrac1{|I|}\textstyle\sum_{i\in I}
       \min(r_i \hat A_i, \mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon)\hat A_i)}_{\text{policy loss}}
       + c_v\,\underbrace{\tfrac1{|I|}\textstyle\sum_i \ell(v_i, R_i)}_{\text{value loss}}
       - c_e\,\underbrace{\tfrac1{|I|}\textstyle\sum_i H(\pi(\cdot|s_i))}_{\text{entropy}}

   ([Schulman2017] Eq. 9; A2C's policy loss is
   :math:`-\frac1{|I|}\sum_i \log\pi(a_i|s_i)\hat A_i` on the whole batch,
   one step), clip the global gradient norm, and take one optimiser step
   (`refpg.optim`).

Every gradient is analytic (tests check it against central finite
differences and torch autograd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from refpg._validation import as_float_array, check_choice, check_positive_int, check_real, entry
from refpg.errors import InvalidInputError, ShapeError
from refpg.losses.sample import ppo_clip_terms
from refpg.returns import gae

__all__ = ["ACParams", "UpdateBatch", "UpdateConfig", "LossTerms", "StepRecord", "UpdateResult", "OptimizerState",
           "ALGORITHMS", "VALUE_LOSSES", "VALUE_CLIPS", "FLATTENS", "AC_OPTIMIZERS", "check_params",
           "check_batch", "batch_advantages", "flat_index", "minibatch_loss", "clip_gradient", "optimizer_step",
           "epoch_minibatches", "actor_critic_update", "policy_tables", "exact_gae", "exact_actor_critic_update",
           "check_order", "KL_STOP_FACTOR", "epoch_samples"]

#: `UpdateConfig.algorithm`: PPO's clipped surrogate over epochs and minibatches, or A2C's single step.
ALGORITHMS = ("ppo", "a2c", "trpo")
#: `UpdateConfig.kl_direction` of TRPO's constraint: KL(pi_old || pi) as [Schulman2015], or KL(pi || pi_old)
#: as sb3-contrib's TRPO computes it (the two have the same Hessian at pi_old, so the same direction).
KL_DIRECTIONS = ("old_new", "new_old")
#: `UpdateConfig.value_loss`: (R - v)^2 (SB3), half of it (CleanRL), Huber with delta 1 (TorchRL's default).
VALUE_LOSSES = ("mse", "half_mse", "smooth_l1")
#: `UpdateConfig.value_clip`: the loss of the clipped prediction only (SB3), or the larger of the two
#: losses per sample (OpenAI baselines, CleanRL, TorchRL's ``clip_value``).
VALUE_CLIPS = ("prediction", "max")
#: `UpdateConfig.flatten`: how sample (t, n) of a (T, N) batch is numbered: t N + n or n T + t.
FLATTENS = ("time_major", "env_major")
#: `UpdateConfig.optimizer`.
AC_OPTIMIZERS = ("adam", "sgd", "rmsprop")
_NORMALIZATIONS = (None, "batch", "minibatch")
#: SB3's early stop fires when the minibatch's approximate KL exceeds this multiple of target_kl.
KL_STOP_FACTOR = 1.5


# -- parameters and batches ------------------------------------------------------------------

class ACParams(NamedTuple):
    """Parameters of the linear actor and critic on one-hot observations (or their gradients).

    Attributes
    ----------
    actor_w : ndarray (S, A)
        Logit weights: ``logits(s) = actor_w[s] + actor_b``.
    actor_b : ndarray (A,) or None
        The actor's bias; None when the actor has none.
    critic_w : ndarray (S,)
        Value weights: ``V(s) = critic_w[s] + critic_b``.
    critic_b : float ndarray of shape () or None
        The critic's bias; None when the critic has none.
    """

    actor_w: np.ndarray
    actor_b: np.ndarray | None
    critic_w: np.ndarray
    critic_b: np.ndarray | None

    def present(self) -> tuple:
        """The names of the tensors that exist, in field order."""
        return tuple(name for name in self._fields if getattr(self, name) is not None)

    def tensors(self) -> tuple:
        """The tensors that exist, in field order (what an optimiser steps)."""
        return tuple(getattr(self, name) for name in self.present())

    def actor_names(self) -> tuple:
        return tuple(n for n in self.present() if n.startswith("actor"))

    def critic_names(self) -> tuple:
        return tuple(n for n in self.present() if n.startswith("critic"))

    def with_tensors(self, names, arrays) -> "ACParams":
        """A copy with the tensors `names` replaced by `arrays`."""
        return self._replace(**dict(zip(names, arrays)))

    def as_dict(self) -> dict:
        """The present tensors by name (the kit's language-neutral form)."""
        return {name: getattr(self, name) for name in self.present()}

    def logits(self) -> np.ndarray:
        """(S, A) logits of every state."""
        return self.actor_w if self.actor_b is None else self.actor_w + self.actor_b

    def state_values(self) -> np.ndarray:
        """(S,) values of every state."""
        return self.critic_w if self.critic_b is None else self.critic_w + self.critic_b


def check_params(params, *, name: str = "params") -> ACParams:
    """Validate parameters given as an `ACParams` or a dict of "actor_w", "critic_w" and optional biases.

    Returns float64 copies. Raises `refpg.errors.InvalidInputError` / `ShapeError` naming the entry.
    """
    if isinstance(params, ACParams):
        d = params.as_dict()
    elif isinstance(params, dict):
        unknown = sorted(set(params) - set(ACParams._fields))
        if unknown:
            raise InvalidInputError(f"{name} has unknown key {unknown[0]!r}; expected keys "
                                    f"{list(ACParams._fields)} (the biases optional)")
        d = {k: v for k, v in params.items() if v is not None}
    else:
        raise InvalidInputError(f"{name} should be an ACParams or a dict with keys 'actor_w', 'critic_w' "
                                f"(and optionally 'actor_b', 'critic_b'), actual {type(params).__name__}")
    for key in ("actor_w", "critic_w"):
        if key not in d:
            raise InvalidInputError(f"{name} is missing {key!r}")
    w = as_float_array(d["actor_w"], f"{name}['actor_w']", ndim=2).copy()
    S, A = w.shape
    if S < 1 or A < 2:
        raise ShapeError(f"{name}['actor_w'] should have shape (S, A) with S >= 1 and A >= 2, actual {w.shape}")
    cw = as_float_array(d["critic_w"], f"{name}['critic_w']", shape=(S,)).copy()
    ab = None if "actor_b" not in d else as_float_array(d["actor_b"], f"{name}['actor_b']", shape=(A,)).copy()
    cb = None
    if "critic_b" in d:
        cb = as_float_array(d["critic_b"], f"{name}['critic_b']")
        if cb.size != 1:
            raise ShapeError(f"{name}['critic_b'] should be a scalar (shape () or (1,)), actual shape {cb.shape}")
        cb = cb.reshape(()).copy()
    return ACParams(w, ab, cw, cb)


class UpdateBatch(NamedTuple):
    r"""A rollout of T steps in N environments, time-major, as a library's buffer holds it.

    Attributes
    ----------
    states, actions : int ndarray (T, N)
    rewards : float64 (T, N)
    terminated, truncated : bool (T, N)
        Per transition, as in `refpg.returns.gae`.
    next_states : int ndarray (T, N)
        The observation after step t; where an episode ended at t, its final
        observation (not the reset one).
    logp_old : float64 (T, N)
        :math:`\log\pi_{old}(a_t|s_t)` of the policy that collected the batch.
    values, next_values : float64 (T, N)
        :math:`V_{old}` of `states` and of `next_states`.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_states: np.ndarray
    logp_old: np.ndarray
    values: np.ndarray
    next_values: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.states.shape


def _int_table(x, name, shape, n):
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{name} should be an integer array, actual dtype {arr.dtype}")
    if arr.shape != shape:
        raise ShapeError(f"{name} should have shape {shape}, actual shape {arr.shape}")
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise InvalidInputError(f"{entry(name, i)} is {int(arr[i])}; expected an integer in [0, {n})")
    return arr.astype(np.int64)


def _flag_table(x, name, shape):
    arr = np.asarray(x)
    if arr.shape != shape:
        raise ShapeError(f"{name} should have shape {shape}, actual shape {arr.shape}")
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            bad = tuple(int(k) for k in np.argwhere(~np.isin(arr, (0, 1)))[0]) if arr.dtype.kind in "iuf" else ()
            raise InvalidInputError(f"{entry(name, bad) if bad else name} should be a bool (or 0/1) flag"
                                    + (f", actual {arr[bad]!r}" if bad else f", actual dtype {arr.dtype}"))
        arr = arr.astype(bool)
    return arr


def check_batch(batch, n_states: int, n_actions: int, *, name: str = "batch") -> UpdateBatch:
    """Validate a batch given as an `UpdateBatch` or a dict with its field names (extra keys such as
    "obs" are ignored); returns float64 / int64 / bool copies."""
    if isinstance(batch, UpdateBatch):
        d = batch._asdict()
    elif isinstance(batch, dict):
        d = batch
    else:
        raise InvalidInputError(f"{name} should be an UpdateBatch or a dict with keys {list(UpdateBatch._fields)}, "
                                f"actual {type(batch).__name__}")
    for key in UpdateBatch._fields:
        if key not in d:
            raise InvalidInputError(f"{name} is missing {key!r}")
    states = np.asarray(d["states"])
    if states.ndim != 2 or 0 in states.shape:
        raise ShapeError(f"{name}['states'] should have shape (T, N) with T, N >= 1, actual shape {states.shape}")
    shape = states.shape
    out = {"states": _int_table(states, f"{name}['states']", shape, n_states),
           "actions": _int_table(d["actions"], f"{name}['actions']", shape, n_actions),
           "next_states": _int_table(d["next_states"], f"{name}['next_states']", shape, n_states),
           "terminated": _flag_table(d["terminated"], f"{name}['terminated']", shape),
           "truncated": _flag_table(d["truncated"], f"{name}['truncated']", shape)}
    for key in ("rewards", "logp_old", "values", "next_values"):
        out[key] = as_float_array(d[key], f"{name}[{key!r}]", shape=shape).copy()
    bad = out["logp_old"] > 0
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        where = entry(f"{name}['logp_old']", i)
        raise InvalidInputError(f"{where} is {float(out['logp_old'][i])!r}; "
                                f"a log-probability is <= 0")
    return UpdateBatch(**{k: out[k] for k in UpdateBatch._fields})


# -- the configuration ---------------------------------------------------------------------

@dataclass(frozen=True)
class UpdateConfig:
    r"""The hyperparameters of one update, named as the libraries name them.

    Attributes
    ----------
    algorithm : {"ppo", "a2c", "trpo"}
        PPO: `n_epochs` passes of minibatch steps on the clipped surrogate.
        A2C: one step on the whole batch with the policy loss
        :math:`-\mathrm{mean}(\log\pi(a|s)\hat A)` (no ratio, no clipping,
        `n_epochs` and `minibatch_size` ignored); REINFORCE with a baseline
        is A2C with ``gae_lambda=1``. TRPO: one natural-gradient step within
        the trust region, then the critic alone
        (`refpg.algorithms.actor_critic_trpo`).
    gamma, gae_lambda : float in [0, 1]
        GAE's discount and lambda.
    clip_range : float > 0
        PPO's :math:`\epsilon`.
    clip_range_vf : float > 0 or None
        Clip the value prediction to :math:`v_{old} \pm` this (None: no clipping).
    value_clip : {"prediction", "max"}
        With `clip_range_vf`: the loss of the clipped prediction only (SB3),
        or the per-sample larger of the clipped and unclipped losses
        (OpenAI baselines, CleanRL, TorchRL).
    n_epochs : int >= 1
    minibatch_size : int >= 1 or None
        None: the whole batch.
    normalize_advantage : {None, "batch", "minibatch"}
        :math:`(\hat A - \mathrm{mean})/(\mathrm{std}_{ddof} + \epsilon)` once
        over the batch, or over each minibatch (SB3, CleanRL). A minibatch of
        at most `norm_ddof` samples is left as it is (SB3 skips a minibatch
        of one; the std is undefined there).
    norm_ddof : int >= 0
        torch's ``std()`` (SB3, CleanRL): 1.
    norm_eps : float >= 0
    norm_eps_on : {"std", "clamp"}
        Where `norm_eps` enters: :math:`\mathrm{std} + \epsilon` (SB3,
        CleanRL) or :math:`\max(\mathrm{std}, \epsilon)` (TorchRL's
        ``clamp_min``). With ``norm_eps=0`` a minibatch of equal advantages
        has std 0 and is refused.
    truncation : {"bootstrap", "cut"}
        "bootstrap": GAE as the contract defines it (a time limit bootstraps
        from ``next_values``). "cut": a time limit is treated as a termination,
        as CleanRL's and PureJaxRL's scripts pass ``terminated | truncated`` as
        done; the update is then the library's, and its bias shows in
        `refpg.conformance.check_pipeline_gradient`, not here.
    advantages : {"once", "per_epoch"}
        GAE computed once from the batch's values (the PPO paper, SB3,
        CleanRL), or again at the start of every later epoch with the
        critic as the previous epoch left it, for ``values``,
        ``next_values`` and the value clip's old values alike (TorchRL's PPO
        tutorial and sota-implementations, which call the GAE module every
        epoch).
    value_loss : {"mse", "half_mse", "smooth_l1"}
        :math:`\ell(v, R)`: :math:`(R - v)^2` (SB3), half of it (CleanRL,
        PureJaxRL), Huber with :math:`\delta = 1` (TorchRL's default).
    vf_coef, ent_coef : float >= 0
        :math:`c_v` and :math:`c_e`.
    max_grad_norm : float > 0 or None
        Global gradient-norm clipping over every parameter (None: off).
    optimizer : {"adam", "sgd", "rmsprop"}
    lr : float >= 0
    betas : (float, float)
        Adam's :math:`\beta_1, \beta_2`.
    eps : float >= 0
        Adam's or RMSprop's epsilon (SB3's Adam and RMSprop: 1e-5).
    alpha : float in [0, 1)
        RMSprop's smoothing constant (optax's ``decay``).
    momentum, weight_decay : float >= 0
        Of SGD or RMSprop (momentum) and of every optimiser (weight_decay,
        coupled, as torch's ``weight_decay``).
    optimizer_convention : {"torch", "optax"}
        Whose definition of the optimiser and of gradient clipping.
    critic_lr : float >= 0 or None
        None: one optimiser over all parameters. Else two optimisers of the
        same kind, the actor's with `lr` and the critic's with `critic_lr`,
        each with its own state (gradient clipping stays global).
    target_kl : float > 0 or None
        SB3's early stop: before a step, if the minibatch's
        :math:`\mathrm{mean}((r-1) - \log r)` exceeds 1.5 target_kl, the
        update stops without taking it.
    flatten : {"time_major", "env_major"}
        Sample (t, n) of the (T, N) batch is number t N + n (CleanRL's
        ``reshape(-1)``) or n T + t (SB3's ``swap_and_flatten``).
    max_kl, cg_max_steps, cg_damping, line_search_shrinking_factor, line_search_max_iter, n_critic_updates
        TRPO only ([Schulman2015]; sb3-contrib's names ``target_kl``, ...):
        the trust region :math:`\delta`, conjugate-gradient iterations, the
        damping added to the Fisher matrix, the backtracking factor and
        number of tries, and the critic's epochs of minibatch regression
        (`minibatch_size`, `lr`) after the policy step.
    kl_direction : {"old_new", "new_old"}
        TRPO only: the KL of the line search's constraint.

    References
    ----------
    [Schulman2017] Algorithm 1 and Eq. 9; [Schulman2016]; [Mnih2016] (A2C).
    """

    algorithm: str = "ppo"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_range_vf: float | None = None
    value_clip: str = "prediction"
    n_epochs: int = 10
    minibatch_size: int | None = None
    normalize_advantage: str | None = None
    norm_ddof: int = 1
    norm_eps: float = 1e-8
    norm_eps_on: str = "std"
    truncation: str = "bootstrap"
    advantages: str = "once"
    value_loss: str = "mse"
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float | None = None
    optimizer: str = "adam"
    lr: float = 3e-4
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    alpha: float = 0.99
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer_convention: str = "torch"
    critic_lr: float | None = None
    target_kl: float | None = None
    flatten: str = "time_major"
    max_kl: float = 0.01
    cg_max_steps: int = 15
    cg_damping: float = 0.1
    line_search_shrinking_factor: float = 0.8
    line_search_max_iter: int = 10
    n_critic_updates: int = 10
    kl_direction: str = "old_new"

    def __post_init__(self):
        s = object.__setattr__
        s(self, "algorithm", check_choice(self.algorithm, "algorithm", ALGORITHMS))
        s(self, "gamma", check_real(self.gamma, "gamma", low=0.0, high=1.0))
        s(self, "gae_lambda", check_real(self.gae_lambda, "gae_lambda", low=0.0, high=1.0))
        s(self, "clip_range", check_real(self.clip_range, "clip_range", low=0.0, low_open=True))
        if self.clip_range_vf is not None:
            s(self, "clip_range_vf", check_real(self.clip_range_vf, "clip_range_vf", low=0.0, low_open=True))
        s(self, "value_clip", check_choice(self.value_clip, "value_clip", VALUE_CLIPS))
        s(self, "n_epochs", check_positive_int(self.n_epochs, "n_epochs"))
        if self.minibatch_size is not None:
            s(self, "minibatch_size", check_positive_int(self.minibatch_size, "minibatch_size"))
        s(self, "normalize_advantage", check_choice(self.normalize_advantage, "normalize_advantage",
                                                    _NORMALIZATIONS))
        s(self, "norm_ddof", check_positive_int(self.norm_ddof, "norm_ddof", minimum=0))
        s(self, "norm_eps", check_real(self.norm_eps, "norm_eps", low=0.0))
        s(self, "norm_eps_on", check_choice(self.norm_eps_on, "norm_eps_on", ("std", "clamp")))
        s(self, "truncation", check_choice(self.truncation, "truncation", ("bootstrap", "cut")))
        s(self, "advantages", check_choice(self.advantages, "advantages", ("once", "per_epoch")))
        if self.normalize_advantage is not None and self.norm_eps == 0.0:
            raise InvalidInputError(
                "norm_eps should be > 0 when normalize_advantage is set (a minibatch of equal advantages has "
                "std 0): declare the library's (SB3, CleanRL: 1e-8; TorchRL: 1e-6 with norm_eps_on='clamp')")
        s(self, "value_loss", check_choice(self.value_loss, "value_loss", VALUE_LOSSES))
        s(self, "vf_coef", check_real(self.vf_coef, "vf_coef", low=0.0))
        s(self, "ent_coef", check_real(self.ent_coef, "ent_coef", low=0.0))
        if self.max_grad_norm is not None:
            s(self, "max_grad_norm", check_real(self.max_grad_norm, "max_grad_norm", low=0.0, low_open=True))
        s(self, "optimizer", check_choice(self.optimizer, "optimizer", AC_OPTIMIZERS))
        s(self, "lr", check_real(self.lr, "lr", low=0.0))
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise InvalidInputError(f"betas should be a pair (beta1, beta2), actual {betas!r}")
        s(self, "betas", (check_real(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True),
                          check_real(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)))
        s(self, "eps", check_real(self.eps, "eps", low=0.0))
        s(self, "alpha", check_real(self.alpha, "alpha", low=0.0, high=1.0, high_open=True))
        s(self, "momentum", check_real(self.momentum, "momentum", low=0.0))
        s(self, "weight_decay", check_real(self.weight_decay, "weight_decay", low=0.0))
        s(self, "optimizer_convention", check_choice(self.optimizer_convention, "optimizer_convention",
                                                     ("torch", "optax")))
        if self.critic_lr is not None:
            s(self, "critic_lr", check_real(self.critic_lr, "critic_lr", low=0.0))
        if self.target_kl is not None:
            s(self, "target_kl", check_real(self.target_kl, "target_kl", low=0.0, low_open=True))
        s(self, "flatten", check_choice(self.flatten, "flatten", FLATTENS))
        s(self, "max_kl", check_real(self.max_kl, "max_kl", low=0.0, low_open=True))
        s(self, "cg_max_steps", check_positive_int(self.cg_max_steps, "cg_max_steps"))
        s(self, "cg_damping", check_real(self.cg_damping, "cg_damping", low=0.0))
        s(self, "line_search_shrinking_factor", check_real(self.line_search_shrinking_factor,
                                                           "line_search_shrinking_factor", low=0.0, high=1.0,
                                                           low_open=True, high_open=True))
        s(self, "line_search_max_iter", check_positive_int(self.line_search_max_iter, "line_search_max_iter"))
        s(self, "n_critic_updates", check_positive_int(self.n_critic_updates, "n_critic_updates", minimum=0))
        s(self, "kl_direction", check_choice(self.kl_direction, "kl_direction", KL_DIRECTIONS))

    def _replace_normalization(self, normalize_advantage) -> "UpdateConfig":
        """A copy with another `normalize_advantage` (the raw advantages of a normalising update)."""
        from dataclasses import replace
        return replace(self, normalize_advantage=normalize_advantage)

    @classmethod
    def from_options(cls, options: dict, *, name: str = "hyperparameters") -> "UpdateConfig":
        """Build from keyword options, naming an unknown one (with the closest field)."""
        known = {f.name for f in fields(cls)}
        for key in options:
            if key not in known:
                from refpg._validation import did_you_mean
                raise InvalidInputError(f"{name} has no option {key!r}{did_you_mean(key, sorted(known))}; "
                                        f"the options are {sorted(known)}")
        return cls(**options)

    def steps_per_epoch(self, M: int) -> int:
        """Minibatch steps per epoch (PPO) or per critic epoch (TRPO); 1 for A2C."""
        if self.algorithm == "a2c" or self.minibatch_size is None or self.minibatch_size >= M:
            return 1
        return -(-M // self.minibatch_size)

    @property
    def epochs(self) -> int:
        """Passes over the batch that shuffle: PPO's n_epochs, TRPO's n_critic_updates, A2C's one."""
        return {"a2c": 1, "trpo": self.n_critic_updates}.get(self.algorithm, self.n_epochs)

    def total_steps(self, M: int) -> int:
        """The number of optimiser steps of one update without early stopping (TRPO: the policy step and
        the critic's minibatch steps)."""
        if self.algorithm == "a2c":
            return 1
        if self.algorithm == "trpo":
            return 1 + self.n_critic_updates * self.steps_per_epoch(M)
        return self.n_epochs * self.steps_per_epoch(M)


# -- advantages ----------------------------------------------------------------------------

def batch_advantages(batch: UpdateBatch, config: UpdateConfig) -> tuple[np.ndarray, np.ndarray]:
    r"""GAE advantages and returns of the batch, both (T, N).

    .. math:: \hat A = \mathrm{GAE}(\gamma, \lambda), \qquad R = \hat A + V_{old}

    ([Schulman2016] Eq. 16; the returns are the value targets of SB3,
    CleanRL and TorchRL).
    """
    terminated = batch.terminated | batch.truncated if config.truncation == "cut" else batch.terminated
    adv = gae(batch.rewards, batch.values, batch.next_values, terminated, batch.truncated,
              config.gamma, config.gae_lambda)
    return adv, adv + batch.values


def flat_index(shape: tuple, config: UpdateConfig) -> np.ndarray:
    """(T, N) int array: the flat sample number of (t, n) under `config.flatten`."""
    T, N = shape
    t, n = np.meshgrid(np.arange(T), np.arange(N), indexing="ij")
    return t * N + n if config.flatten == "time_major" else n * T + t


def _flatten(x: np.ndarray, config: UpdateConfig) -> np.ndarray:
    return x.reshape(-1) if config.flatten == "time_major" else x.T.reshape(-1)


def epoch_samples(batch: UpdateBatch, config: UpdateConfig, params: ACParams | None = None):
    """The flat samples, advantages and returns an epoch's minibatches use: (flat dict, adv (M,), ret (M,)).

    `params` None: from the batch's own values. With ``config.advantages == "per_epoch"``, the epochs after
    the first pass their current parameters: the batch's values and next values are replaced by the
    critic's, and GAE, the returns and the value clip's old values follow.
    """
    if params is not None:
        v = params.state_values()
        batch = batch._replace(values=v[batch.states], next_values=v[batch.next_states])
    adv2, ret2 = batch_advantages(batch, config)
    flat = {k: _flatten(getattr(batch, k), config) for k in ("states", "actions", "logp_old", "values")}
    adv, ret = _flatten(adv2, config), _flatten(ret2, config)
    if config.normalize_advantage == "batch":
        adv = _normalize(adv, config)
    return flat, adv, ret


def _normalize(adv: np.ndarray, config: UpdateConfig) -> np.ndarray:
    if adv.size <= config.norm_ddof:
        return adv.copy()
    std = adv.std(ddof=config.norm_ddof)
    # norm_eps > 0 whenever normalisation is on (UpdateConfig refuses 0), so the denominator is positive.
    denom = max(std, config.norm_eps) if config.norm_eps_on == "clamp" else std + config.norm_eps
    return (adv - adv.mean()) / denom


# -- the loss and its gradient -------------------------------------------------------------

class LossTerms(NamedTuple):
    """The loss of one minibatch step and its gradient (see the module docstring)."""

    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    grad: ACParams


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def policy_tables(params: ACParams) -> tuple[np.ndarray, np.ndarray]:
    """(log pi, pi), both (S, A), of the actor."""
    logp = _log_softmax(params.logits())
    return logp, np.exp(logp)


def _value_terms(v, R, kind):
    """Per-sample loss l(v, R) and dl/dv."""
    d = v - R
    if kind == "mse":
        return d * d, 2.0 * d
    if kind == "half_mse":
        return 0.5 * d * d, d
    small = np.abs(d) < 1.0
    return np.where(small, 0.5 * d * d, np.abs(d) - 0.5), np.where(small, d, np.sign(d))


def minibatch_loss(params: ACParams, samples: dict, advantages: np.ndarray, returns: np.ndarray,
                   config: UpdateConfig, *, weights: np.ndarray | None = None) -> LossTerms:
    r"""The total loss of one step on a minibatch and its analytic gradient.

    .. math::
        \mathcal L = L_\pi + c_v\,\tfrac1B\textstyle\sum_i \ell(\tilde v_i, R_i)
        - c_e\,\tfrac1B\textstyle\sum_i H(\pi(\cdot|s_i))

    with :math:`L_\pi` PPO's :math:`-\frac1B\sum_i \min(r_i\hat A_i,
    \mathrm{clip}(r_i)\hat A_i)` ([Schulman2017] Eq. 7) or A2C's
    :math:`-\frac1B\sum_i \log\pi(a_i|s_i)\hat A_i`, and :math:`\tilde v`
    the (clipped) value prediction (`UpdateConfig.value_clip`).

    Parameters
    ----------
    params : ACParams
    samples : dict
        Flat (B,) arrays "states", "actions", "logp_old", "values" (V_old).
    advantages, returns : ndarray (B,)
        The advantages as the loss uses them (already normalised if so
        configured) and the value targets.
    config : UpdateConfig
    weights : ndarray (B,) or None
        The weight of each sample in every mean; None: 1/B each (a
        minibatch). Exact mode passes :math:`d_{old}(s)\pi_{old}(a|s)` over
        the pairs (s, a), which turns each mean into its expectation.

    Returns
    -------
    LossTerms
        The gradient is :math:`\partial\mathcal L/\partial` every present tensor.

    Notes
    -----
    At a kink (a ratio exactly on :math:`1\pm\epsilon`, a value difference
    exactly on :math:`\pm` clip_range_vf) the derivative returned is the one
    torch autograd returns: the unclipped branch.
    """
    s, a = samples["states"], samples["actions"]
    B = s.size
    w = np.full(B, 1.0 / B) if weights is None else weights
    mean = (lambda x: float(np.mean(x))) if weights is None else (lambda x: float(np.dot(w, x)))  # noqa: E731
    logp_all, pi_all = policy_tables(params)
    logp_s, pi_s = logp_all[s], pi_all[s]          # (B, A)
    logp = logp_s[np.arange(B), a]
    log_ratio = logp - samples["logp_old"]
    ratio = np.exp(log_ratio)
    approx_kl = mean((ratio - 1.0) - log_ratio)
    if config.algorithm == "ppo":
        terms = ppo_clip_terms(logp, samples["logp_old"], advantages, config.clip_range)
        policy_loss = -mean(terms.objective)
        dlogp = np.where(terms.clipped, 0.0, -ratio * advantages * w)
        clip_frac = mean(np.abs(ratio - 1.0) > config.clip_range)
    else:
        policy_loss = -mean(logp * advantages)
        dlogp = -advantages * w
        clip_frac = 0.0
    # d log pi(a|s) / d logits = e_a - pi(.|s).
    dlogits = -dlogp[:, None] * pi_s
    dlogits[np.arange(B), a] += dlogp
    # Entropy H = -sum pi log pi; dH/dlogits = -pi (log pi + H).
    H = -np.sum(pi_s * logp_s, axis=1)
    entropy = mean(H)
    if config.ent_coef != 0.0:
        dlogits += (config.ent_coef * w)[:, None] * pi_s * (logp_s + H[:, None])

    v = params.critic_w[s] + (0.0 if params.critic_b is None else params.critic_b)
    loss_v, dl_v = _value_terms(v, returns, config.value_loss)
    if config.clip_range_vf is not None:
        c, v_old = config.clip_range_vf, samples["values"]
        diff = v - v_old
        inside = np.abs(diff) <= c                    # torch.clamp passes the gradient on the bounds
        v_c = v_old + np.clip(diff, -c, c)
        loss_c, dl_c = _value_terms(v_c, returns, config.value_loss)
        dl_c = np.where(inside, dl_c, 0.0)
        if config.value_clip == "prediction":
            loss_v, dl_v = loss_c, dl_c
        else:
            # Inside the band both losses are equal and so are their derivatives; outside, the larger wins.
            use_c = loss_c > loss_v
            loss_v, dl_v = np.where(use_c, loss_c, loss_v), np.where(use_c, dl_c, dl_v)
    value_loss = mean(loss_v)
    dv = config.vf_coef * w * dl_v

    S, A = params.actor_w.shape
    gw = np.zeros((S, A))
    np.add.at(gw, s, dlogits)
    gcw = np.zeros(S)
    np.add.at(gcw, s, dv)
    grad = ACParams(gw, None if params.actor_b is None else dlogits.sum(axis=0),
                    gcw, None if params.critic_b is None else np.asarray(dv.sum()))
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    return LossTerms(loss, policy_loss, value_loss, entropy, approx_kl, clip_frac, grad)


# -- clipping and the optimiser ------------------------------------------------------------

def clip_gradient(grad: ACParams, config: UpdateConfig) -> tuple[ACParams, float]:
    """The gradient after global-norm clipping (unchanged without `max_grad_norm`) and its norm before.

    `refpg.optim.clip_grad_norm` with `config.optimizer_convention`: torch
    scales by :math:`\\min(1, \\text{max} / (N + 10^{-6}))`, optax only when
    :math:`N \\ge` max ([Pascanu2013]).
    """
    from refpg.optim import clip_grad_norm

    names, tensors = grad.present(), grad.tensors()
    norm = math.sqrt(math.fsum(float(np.sum(t * t)) for t in tensors))
    if config.max_grad_norm is None:
        return grad, norm
    res = clip_grad_norm(tensors, config.max_grad_norm, convention=config.optimizer_convention)
    return grad.with_tensors(names, [np.asarray(t) for t in res.grads]), float(res.total_norm)


class OptimizerState(NamedTuple):
    """The state of the update's optimiser(s): one over every tensor, or the actor's and the critic's."""

    actor: object
    critic: object


def _one_step(params: tuple, grads: tuple, state, lr: float, config: UpdateConfig):
    from refpg import optim

    conv = config.optimizer_convention
    if config.optimizer == "adam":
        return optim.adam_step(params, grads, state, lr=lr, beta1=config.betas[0], beta2=config.betas[1],
                               eps=config.eps, weight_decay=config.weight_decay, convention=conv)
    if config.optimizer == "sgd":
        return optim.sgd_step(params, grads, state, lr=lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, convention=conv)
    return optim.rmsprop_step(params, grads, state, lr=lr, alpha=config.alpha, eps=config.eps,
                              momentum=config.momentum, weight_decay=config.weight_decay, convention=conv)


def optimizer_step(params: ACParams, grad: ACParams, state: OptimizerState | None,
                   config: UpdateConfig) -> tuple[ACParams, OptimizerState]:
    """One step of the configured optimiser(s) from the (clipped) gradient; returns (params, state).

    One optimiser over every present tensor, or, with `config.critic_lr`,
    the actor's tensors with `lr` and the critic's with `critic_lr`, each
    optimiser with its own state (`refpg.optim` defines the steps).
    """
    if state is None:
        state = OptimizerState(None, None)
    if config.critic_lr is None:
        names = params.present()
        new, st = _one_step(tuple(getattr(params, n) for n in names), tuple(getattr(grad, n) for n in names),
                            state.actor, config.lr, config)
        return params.with_tensors(names, new), OptimizerState(st, None)
    out, states = params, []
    for names, lr, st in ((params.actor_names(), config.lr, state.actor),
                          (params.critic_names(), config.critic_lr, state.critic)):
        new, st = _one_step(tuple(getattr(params, n) for n in names), tuple(getattr(grad, n) for n in names),
                            st, lr, config)
        out = out.with_tensors(names, new)
        states.append(st)
    return out, OptimizerState(*states)


# -- the update ----------------------------------------------------------------------------

def epoch_minibatches(permutation: np.ndarray, config: UpdateConfig) -> list[np.ndarray]:
    """The minibatches of one epoch: consecutive slices of `permutation` of `minibatch_size` (the last may
    be smaller), or the whole batch."""
    M = permutation.size
    if config.algorithm == "a2c" or config.minibatch_size is None or config.minibatch_size >= M:
        return [permutation]
    B = config.minibatch_size
    return [permutation[k:k + B] for k in range(0, M, B)]


def check_order(order, n_epochs: int, M: int, *, name: str = "order") -> np.ndarray:
    """Validate an (n_epochs, M) array of permutations of range(M)."""
    arr = np.asarray(order)
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{name} should be an integer array, actual dtype {arr.dtype}")
    if arr.shape != (n_epochs, M):
        raise ShapeError(f"{name} should have shape (n_epochs, M) = ({n_epochs}, {M}), actual shape {arr.shape}")
    for e in range(n_epochs):
        if not np.array_equal(np.sort(arr[e]), np.arange(M)):
            raise InvalidInputError(f"{name}[{e}] should be a permutation of range({M}), actual {arr[e].tolist()}")
    return arr.astype(np.int64)


class StepRecord(NamedTuple):
    """Everything about one optimiser step of the update.

    Attributes
    ----------
    epoch, minibatch : int
    indices : int ndarray (B,)
        Flat sample numbers of the minibatch.
    advantages : ndarray (B,)
        As the loss used them (normalised if configured).
    returns : ndarray (B,)
    loss, policy_loss, value_loss, entropy : float
        At the parameters before the step.
    approx_kl, clip_fraction : float
        :math:`\\mathrm{mean}((r-1)-\\log r)` and the fraction with
        :math:`|r-1| > \\epsilon`, before the step.
    grad : ACParams
        :math:`\\partial\\mathcal L/\\partial` params, before clipping.
    grad_norm : float
        Its global 2-norm.
    clipped_grad : ACParams
        The gradient the optimiser used.
    params : ACParams
        After the step.
    """

    epoch: int
    minibatch: int
    indices: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    grad: ACParams
    grad_norm: float
    clipped_grad: ACParams
    params: ACParams


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of `actor_critic_update`.

    Attributes
    ----------
    params : ACParams
        After the last step.
    advantages, returns : ndarray (T, N)
        GAE of the batch and the value targets (before any normalisation).
    steps : tuple of StepRecord
    stopped_early : bool
        Whether `target_kl` stopped the update.
    optimizer_state : OptimizerState
    """

    params: ACParams
    advantages: np.ndarray
    returns: np.ndarray
    steps: tuple
    stopped_early: bool
    optimizer_state: OptimizerState


def actor_critic_update(batch, params, config: UpdateConfig | None = None, *, order=None, rng=None,
                        optimizer_state: OptimizerState | None = None) -> UpdateResult:
    r"""One whole PPO or A2C update of a linear actor-critic on a fixed batch, every step recorded.

    .. math::
        (W, b, w, c) \leftarrow \mathrm{opt}\Big(\mathrm{clip}_{\|\cdot\|}\big(
        \nabla [L_\pi + c_v L_V - c_e H]\big)\Big)
        \quad\text{per minibatch, per epoch}

    (module docstring; [Schulman2017] Algorithm 1, [Schulman2016]).

    Parameters
    ----------
    batch : UpdateBatch or dict
        A (T, N) rollout collected by the policy `params` (its logp_old
        and values are those of `params`; the function does not require it).
    params : ACParams or dict
    config : UpdateConfig or None
        None: ``UpdateConfig()``.
    order : int array (n_epochs, M) or None
        Each epoch's permutation of the M = T N flat sample numbers (see
        `UpdateConfig.flatten`); None draws ``rng.permutation(M)`` per
        epoch. A2C ignores it and uses the batch in flat order.
    rng : numpy.random.Generator or None
        Needed when `order` is None and the update shuffles.
    optimizer_state : OptimizerState or None
        Continue the optimiser(s) from an earlier update; None starts fresh.

    Returns
    -------
    UpdateResult

    Raises
    ------
    refpg.errors.InvalidInputError, refpg.errors.ShapeError
        Naming the argument and the entry: a malformed batch or params, an
        order that is not a permutation per epoch, a missing rng.
    """
    config = UpdateConfig() if config is None else config
    if not isinstance(config, UpdateConfig):
        raise InvalidInputError(f"config should be an UpdateConfig or None, actual {type(config).__name__}")
    if config.algorithm == "trpo":
        from refpg.algorithms.actor_critic_trpo import trpo_actor_critic_update
        return trpo_actor_critic_update(batch, params, config, order=order, rng=rng, optimizer_state=optimizer_state)
    params = check_params(params)
    S, A = params.actor_w.shape
    batch = check_batch(batch, S, A)
    T, N = batch.shape
    M = T * N
    shuffles = config.algorithm == "ppo" and config.steps_per_epoch(M) > 1
    if config.algorithm == "a2c":
        perms = np.arange(M)[None, :]
    elif order is not None:
        perms = check_order(order, config.n_epochs, M)
    elif not shuffles:
        perms = np.tile(np.arange(M), (config.n_epochs, 1))
    else:
        if not isinstance(rng, np.random.Generator):
            raise InvalidInputError("rng should be a numpy.random.Generator when order is None and the update "
                                    f"shuffles minibatches, actual {type(rng).__name__}")
        perms = np.stack([rng.permutation(M) for _ in range(config.n_epochs)])
    adv2, ret2 = batch_advantages(batch, config)
    flat, adv, ret = epoch_samples(batch, config)
    steps, state, stopped = [], optimizer_state, False
    for e in range(perms.shape[0]):
        if e > 0 and config.advantages == "per_epoch":
            flat, adv, ret = epoch_samples(batch, config, params)
        for j, idx in enumerate(epoch_minibatches(perms[e], config)):
            a_mb = adv[idx]
            if config.normalize_advantage == "minibatch":
                a_mb = _normalize(a_mb, config)
            samples = {k: v[idx] for k, v in flat.items()}
            terms = minibatch_loss(params, samples, a_mb, ret[idx], config)
            if config.target_kl is not None and terms.approx_kl > KL_STOP_FACTOR * config.target_kl:
                stopped = True
                break
            clipped, norm = clip_gradient(terms.grad, config)
            params, state = optimizer_step(params, clipped, state, config)
            steps.append(StepRecord(e, j, idx.copy(), a_mb, ret[idx], terms.loss, terms.policy_loss,
                                    terms.value_loss, terms.entropy, terms.approx_kl, terms.clip_fraction,
                                    terms.grad, norm, clipped, params))
        if stopped:
            break
    return UpdateResult(params, adv2, ret2, tuple(steps), stopped, state)


# -- exact mode ----------------------------------------------------------------------------

def exact_gae(mdp, params, config: UpdateConfig, pi: np.ndarray | None = None) -> np.ndarray:
    r"""The infinite-sample GAE advantage :math:`\bar A(s, a) = \mathbb E[\hat A_t \mid s_t = s, a_t = a]` (S, A).

    With the critic :math:`V_w` of `params`, :math:`\ell(s') = 1 - \mathrm{terminal}(s')`,

    .. math::
        \bar\delta(s,a) = r(s,a) + \gamma \textstyle\sum_{s'} P(s'|s,a)\,\ell(s') V_w(s') - V_w(s), \qquad
        \bar A = \bar\delta + \gamma\lambda\, P_\ell \Pi\, \bar A,

    a linear system over the S A pairs ([Schulman2016] Eq. 16 in
    expectation, with no time limit and terminal states not bootstrapped).
    :math:`\gamma, \lambda` are the config's. With :math:`\lambda = 1` and
    the MDP's :math:`\gamma`, :math:`\bar A + V_w = Q^\pi` for any critic;
    with the exact critic :math:`V_w = V^\pi`, :math:`\bar A = A^\pi` for any
    :math:`\lambda`.
    """
    from refpg.evaluation import check_mdp

    check_mdp(mdp)
    pi = policy_tables(params)[1] if pi is None else pi
    S, A = pi.shape
    Vw = params.state_values()
    live = (~mdp.terminal).astype(np.float64)
    P = mdp.dense_P() * live[None, None, :]
    delta = mdp.r + config.gamma * P @ Vw - Vw[:, None]
    K = (P.reshape(S * A, S)[:, :, None] * pi[None, :, :]).reshape(S * A, S * A)
    # Terminal states are absorbing with zero reward: their pairs carry no advantage.
    delta[mdp.terminal] = 0.0
    lhs = np.eye(S * A) - config.gamma * config.gae_lambda * K
    return np.linalg.solve(lhs, delta.reshape(-1)).reshape(S, A)


def exact_actor_critic_update(mdp, params, config: UpdateConfig | None = None, *,
                              optimizer_state: OptimizerState | None = None) -> UpdateResult:
    r"""The infinite-sample limit of `actor_critic_update`: one full-batch step per epoch on expectations.

    Every sample mean of the loss becomes its expectation under
    :math:`d^{\pi_{old}}_\rho(s)\,\pi_{old}(a|s)` (the MDP's normalised
    occupancy), and each sampled advantage and return its conditional mean
    `exact_gae` :math:`\bar A(s,a)`, :math:`\bar R = \bar A + V_{w_{old}}(s)`:

    .. math::
        \mathcal L = -\mathbb E[\min(r\bar A, \mathrm{clip}(r)\bar A)]
        + c_v\,\mathbb E[\ell(\tilde v(s), \bar R)] - c_e\,\mathbb E_{s\sim d}[H(\pi(\cdot|s))],

    with the same value clipping, gradient-norm clipping and optimiser as the
    sampled mode (`minibatch_loss` with weights). ``normalize_advantage="batch"``
    uses the moments of :math:`\bar A` under the same weights; ``target_kl``
    compares :math:`\mathbb E_{s\sim d}[KL(\pi_{old}\|\pi)]` (the mean of k3).

    Parameters
    ----------
    mdp : TabularMDP
    params : ACParams or dict
        ``actor_w`` of shape (S, A) of the MDP.
    config : UpdateConfig or None
        ``minibatch_size`` and ``normalize_advantage="minibatch"`` are
        refused (there are no minibatches); ``flatten`` is unused.
    optimizer_state : OptimizerState or None

    Returns
    -------
    UpdateResult
        ``advantages`` and ``returns`` are :math:`\bar A` and :math:`\bar R`
        (S, A); each step's ``indices`` are the flat pairs s A + a with
        positive weight.

    Notes
    -----
    As `refpg.algorithms.ppo_update`'s exact mode, the clipped term takes the
    minimum of the exact ratio times the *mean* advantage: the mean of
    :math:`\min(r\hat A, \mathrm{clip}(r)\hat A)` differs once a clipped pair's
    estimates take both signs. Linear terms (A2C's loss, the squared value
    loss's gradient) are exact limits. GAE uses the config's gamma and lambda;
    the occupancy uses the MDP's gamma.

    References
    ----------
    [Schulman2017] Eq. 9; [Schulman2016].
    """
    from refpg.evaluation import check_mdp, policy_evaluation

    config = UpdateConfig() if config is None else config
    if not isinstance(config, UpdateConfig):
        raise InvalidInputError(f"config should be an UpdateConfig or None, actual {type(config).__name__}")
    if config.algorithm == "trpo":
        from refpg.algorithms.actor_critic_trpo import exact_trpo_actor_critic_update
        return exact_trpo_actor_critic_update(mdp, params, config, optimizer_state=optimizer_state)
    if config.minibatch_size is not None or config.normalize_advantage == "minibatch":
        raise InvalidInputError("exact mode has no minibatches: minibatch_size should be None and "
                                f"normalize_advantage None or 'batch', actual {config.minibatch_size!r} and "
                                f"{config.normalize_advantage!r}")
    check_mdp(mdp)
    params = check_params(params)
    if params.actor_w.shape != (mdp.n_states, mdp.n_actions):
        raise ShapeError(f"params['actor_w'] should have shape (S, A) = ({mdp.n_states}, {mdp.n_actions}) of the "
                         f"MDP, actual {params.actor_w.shape}")
    logp_old, pi_old = policy_tables(params)
    ev = policy_evaluation(mdp, pi_old)
    adv2 = exact_gae(mdp, params, config, pi_old)
    ret2 = adv2 + params.state_values()[:, None]
    omega = ev.d[:, None] * pi_old
    s, a = np.nonzero(omega > 0)
    w = omega[s, a] / omega[s, a].sum()
    samples = {"states": s, "actions": a, "logp_old": logp_old[s, a], "values": params.state_values()[s]}
    adv, ret = adv2[s, a], ret2[s, a]
    if config.normalize_advantage == "batch":
        m = float(np.dot(w, adv))
        std = math.sqrt(float(np.dot(w, (adv - m) ** 2)))
        adv = (adv - m) / (max(std, config.norm_eps) if config.norm_eps_on == "clamp" else std + config.norm_eps)
    idx = s * mdp.n_actions + a
    epochs = 1 if config.algorithm == "a2c" else config.n_epochs
    steps, state, stopped = [], optimizer_state, False
    for e in range(epochs):
        terms = minibatch_loss(params, samples, adv, ret, config, weights=w)
        if config.target_kl is not None and terms.approx_kl > KL_STOP_FACTOR * config.target_kl:
            stopped = True
            break
        clipped, norm = clip_gradient(terms.grad, config)
        params, state = optimizer_step(params, clipped, state, config)
        steps.append(StepRecord(e, 0, idx, adv, ret, terms.loss, terms.policy_loss, terms.value_loss,
                                terms.entropy, terms.approx_kl, terms.clip_fraction, terms.grad, norm, clipped,
                                params))
    return UpdateResult(params, adv2, ret2, tuple(steps), stopped, state)

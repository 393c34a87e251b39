r"""`check_update`: a library's whole PPO or A2C update on a fixed batch, step by step against the reference.

The user's function takes a batch and the current parameters of a linear
actor-critic on one-hot observations and returns the parameters after one
full update (K epochs over minibatches, with its optimiser), or, better, a
trace of every optimiser step. The kit runs
`refpg.algorithms.actor_critic.actor_critic_update`'s pieces on the same batch
and reports the first divergence: the epoch, the minibatch and the component
(advantages, returns, loss, gradient, clipped gradient norm, optimiser step),
on a batch Hypothesis has shrunk to a minimal one that still diverges.

The comparison is teacher-forced: step k is recomputed from the user's own
parameters after step k-1, and the optimiser step from the user's own clipped
gradient (the reference optimiser's state is fed the user's gradients). So a
float32 implementation is judged one step at a time, with no drift, and each
component is judged on its own inputs: a wrong gradient is reported as the
gradient, not as every parameter after it.

Convention ``"refpg"``: ``fn(batch, params)``.

- ``batch``: a dict of (T, N) arrays, time-major: "states", "actions",
  "next_states" (ints; the observation after step t, the final one where an
  episode ended), "obs" and "next_obs" (their one-hot vectors, (T, N, S)),
  "rewards", "terminated", "truncated" (bools), "logp_old", "values",
  "next_values" (of the parameters passed).
- ``params``: "actor_w" (S, A), "critic_w" (S,), and "actor_b" (A,) /
  "critic_b" (scalar) when declared.
- returns the parameters after the update (a dict like ``params``), or a
  trace ``{"advantages": (T, N), "returns": (T, N), "steps": [...]}``, one
  dict per optimiser step with "params" (after it) and any of "indices",
  "loss", "grad", "grad_norm", "clipped_grad".
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refpg._validation import check_choice, check_positive_int
from refpg.algorithms.actor_critic import (ACParams, UpdateBatch, UpdateConfig, _normalize, epoch_samples,
                                           actor_critic_update, batch_advantages, check_order, clip_gradient,
                                           epoch_minibatches, minibatch_loss, optimizer_step, policy_tables,
                                           KL_STOP_FACTOR)
from refpg.conformance._harness import BadOutput, Outcome, Session, check_callable, check_signature, resolve_backend
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_update", "UPDATE_CONVENTIONS", "COMPONENTS"]

_PARAMS = {"refpg": ("batch", "params")}
#: The conventions of `check_update`.
UPDATE_CONVENTIONS = tuple(_PARAMS)
#: The components of one step, in the order a divergence is looked for, with their check ids.
COMPONENTS = (("advantages", "update.advantages"), ("returns", "update.returns"), ("loss", "update.loss"),
              ("gradient", "update.gradient"), ("clipped gradient norm", "update.grad_norm"),
              ("optimiser step", "update.optimizer_step"))
_STEP_KEYS = ("params", "indices", "loss", "grad", "grad_norm", "clipped_grad")
# Values a drawn batch and drawn parameters take: few, so that a shrunk case reads at a glance.
_REWARDS = (0.0, 1.0, -1.0, 0.5, 2.0)
_WEIGHTS = (0.0, 0.5, -0.5, 1.0, -1.0, 1.5)
# Logit offsets of the behaviour policy that drew logp_old: ratios from e^-2 to e^2 at the first step.
_OFFSETS = (0.0, 0.5, -0.5, 1.0, -1.0)


# -- cases ---------------------------------------------------------------------------------------

def _cases(S, A, T, N, actor_bias, critic_bias, behaviour=False):
    """Hypothesis strategy of (params, batch) with a rollout-consistent batch: s_{t+1} is next_states[t]
    unless the episode ended at t, then a reset state. With `behaviour`, logp_old is that of a nearby policy
    (logit offsets in [-1, 1]; 0 after shrinking), so that PPO's ratio is off 1 from the first step."""
    def table(shape, values):
        return hnp.arrays(np.float64, shape, elements=st.sampled_from(values))

    ints = lambda n, shape: hnp.arrays(np.int64, shape, elements=st.integers(0, n - 1))  # noqa: E731

    @st.composite
    def draw(d):
        W = d(table((S, A), _WEIGHTS))
        b = d(table((A,), _WEIGHTS)) if actor_bias else None
        w = d(table((S,), _WEIGHTS))
        c = np.asarray(d(st.sampled_from(_WEIGHTS))) if critic_bias else None
        s0 = d(ints(S, (N,)))
        actions = d(ints(A, (T, N)))
        nxt = d(ints(S, (T, N)))
        resets = d(ints(S, (T, N)))
        term = d(hnp.arrays(bool, (T, N), elements=st.booleans()))
        trunc = d(hnp.arrays(bool, (T, N), elements=st.booleans())) & ~term
        rewards = d(table((T, N), _REWARDS))
        offsets = d(table((S, A), _OFFSETS)) if behaviour else np.zeros((S, A))
        states = np.empty((T, N), dtype=np.int64)
        states[0] = s0
        for t in range(1, T):
            done = term[t - 1] | trunc[t - 1]
            states[t] = np.where(done, resets[t - 1], nxt[t - 1])
        return {"params": ACParams(W, b, w, c), "states": states, "actions": actions, "next_states": nxt,
                "rewards": rewards, "terminated": term, "truncated": trunc, "behaviour": offsets}

    return draw()


def _batch(case, be) -> UpdateBatch:
    """The batch of a case, its floats rounded to the backend's dtype (what the reference sees too)."""
    p = case["params"]
    offsets = case.get("behaviour")
    logp, _ = policy_tables(p if offsets is None else p._replace(actor_w=p.actor_w + offsets))
    v = p.state_values()
    s, a, ns = case["states"], case["actions"], case["next_states"]
    return UpdateBatch(s, a, be.round(case["rewards"]), case["terminated"], case["truncated"], ns,
                       be.round(logp[s, a]), be.round(v[s]), be.round(v[ns]))


def _rounded(p: ACParams, be) -> ACParams:
    return ACParams(*(None if t is None else be.round(t) for t in p))


def _user_batch(batch: UpdateBatch, S: int, be) -> dict:
    eye = np.eye(S)
    out = {k: getattr(batch, k) for k in UpdateBatch._fields}
    out["obs"], out["next_obs"] = eye[batch.states], eye[batch.next_states]
    return {k: be.to_user(v) for k, v in out.items()}


def _user_params(p: ACParams, be) -> dict:
    return {k: be.to_user(v) for k, v in p.as_dict().items()}


def _shown(batch: UpdateBatch, params: ACParams) -> dict:
    """What a counterexample shows: the batch's discrete and reward data, and the parameters."""
    shown = {k: getattr(batch, k) for k in ("states", "actions", "rewards", "terminated", "truncated",
                                            "next_states", "logp_old")}
    shown.update({f"params[{k!r}]": v for k, v in params.as_dict().items()})
    return shown


# -- reading the user's output --------------------------------------------------------------------

class _Malformed(Exception):
    """The output is not a params dict nor a trace; the message says what is wrong."""


class _LowPrecision(_Malformed):
    """An output array of a lower precision than the inputs (float32 out of float64 in)."""


def _array(be, raw, what, shape):
    try:
        arr = be.to_numpy(raw, what)
    except BadOutput as exc:
        raise _Malformed(str(exc)) from None
    if arr.dtype.kind not in "fiu":
        raise _Malformed(f"{what} should be an array of floats, actual dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize < be.np_dtype.itemsize:
        raise _LowPrecision(f"{what} should have dtype {be.dtype} (the dtype of the inputs), actual {arr.dtype}")
    if tuple(shape) == () and arr.size == 1:
        arr = arr.reshape(())
    if arr.shape != tuple(shape):
        raise _Malformed(f"{what} should have shape {tuple(shape)}, actual shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise _Malformed(f"{what} should be finite, actual {arr}")
    return arr


def _read_params(be, raw, like: ACParams, what: str) -> ACParams:
    if not isinstance(raw, dict):
        raise _Malformed(f"{what} should be a dict with keys {list(like.present())}, actual {type(raw).__name__}")
    missing = [k for k in like.present() if k not in raw]
    extra = [k for k in raw if k not in like.present()]
    if missing or extra:
        raise _Malformed(f"{what} should have the keys {list(like.present())}, actual {sorted(raw)}"
                         + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
    return like._replace(**{k: _array(be, raw[k], f"{what}[{k!r}]", np.shape(getattr(like, k)))
                            for k in like.present()})


def _read(be, out, like: ACParams, shape: tuple) -> dict:
    """The output as {"final": ACParams} or {"advantages", "returns", "steps": [dict]} of NumPy floats."""
    if not isinstance(out, dict):
        raise _Malformed(f"the output should be a params dict or a trace dict with 'steps', actual "
                         f"{type(out).__name__}")
    if "steps" not in out:
        return {"final": _read_params(be, out, like, "the returned params")}
    unknown = sorted(set(out) - {"steps", "advantages", "returns"})
    if unknown:
        raise _Malformed(f"the trace should have the keys 'steps', 'advantages', 'returns', actual also {unknown}")
    trace = {k: _array(be, out[k], f"trace[{k!r}]", shape) for k in ("advantages", "returns") if k in out}
    steps = out["steps"]
    if not isinstance(steps, (list, tuple)):
        raise _Malformed(f"trace['steps'] should be a list of dicts, one per optimiser step, actual "
                         f"{type(steps).__name__}")
    read = []
    for k, step in enumerate(steps):
        where = f"trace['steps'][{k}]"
        if not isinstance(step, dict) or "params" not in step:
            raise _Malformed(f"{where} should be a dict with at least 'params' (after the step), actual "
                             f"{type(step).__name__ if not isinstance(step, dict) else sorted(step)}")
        bad = sorted(set(step) - set(_STEP_KEYS))
        if bad:
            raise _Malformed(f"{where} has unknown key {bad[0]!r}; the keys are {list(_STEP_KEYS)}")
        r = {"params": _read_params(be, step["params"], like, f"{where}['params']")}
        for key in ("grad", "clipped_grad"):
            if key in step:
                r[key] = _read_params(be, step[key], like, f"{where}[{key!r}]")
        for key in ("loss", "grad_norm"):
            if key in step:
                r[key] = float(_array(be, step[key], f"{where}[{key!r}]", ()))
        if "indices" in step:
            try:
                idx = be.to_numpy(step["indices"], f"{where}['indices']")
            except BadOutput as exc:
                raise _Malformed(str(exc)) from None
            if idx.ndim != 1 or idx.dtype.kind not in "iu":
                raise _Malformed(f"{where}['indices'] should be a 1-d integer array, actual dtype {idx.dtype} "
                                 f"shape {idx.shape}")
            r["indices"] = idx.astype(np.int64)
        read.append(r)
    trace["steps"] = read
    return trace


# -- the check ------------------------------------------------------------------------------------

def check_update(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                 n_states: int = 3, n_actions: int = 2, n_steps: int = 8, n_envs: int = 2,
                 actor_bias: bool = False, critic_bias: bool = False, order: np.ndarray | None = None, reshuffle: bool = True,
                 on_policy: bool = False,
                 max_examples: int = 10, seed: int = 0, **hyperparameters) -> Report:
    r"""Check a whole PPO or A2C update, step by step, against `refpg.algorithms.actor_critic`.

    .. math::
        \theta_{k} = \mathrm{opt}\big(\theta_{k-1},\ \mathrm{clip}(\nabla_\theta
        [L_\pi + c_v L_V - c_e H](\theta_{k-1}; I_k))\big)

    for the minibatches :math:`I_k` of every epoch ([Schulman2017] Algorithm 1; module docstrings of
    `refpg.algorithms.actor_critic` and of this module).

    Parameters
    ----------
    fn : callable
        ``fn(batch, params) -> params or trace`` (module docstring).
    convention : {"refpg"}
    backend : {"auto", "numpy", "torch", "jax"}
        How the arrays are passed; "auto" tries NumPy, then torch.
    dtype : {"float64", "float32"}
        float32 (SB3's networks) compares with tolerance 1e-4, float64 with 1e-9.
    n_states, n_actions : int
        S >= 1 and A >= 2 of the drawn problems.
    n_steps, n_envs : int
        The batch's shape (T, N): a library's buffer has a fixed size.
    actor_bias, critic_bias : bool
        Whether the actor's logits and the critic's value have a bias.
    order : int array (n_epochs, M) or None
        Each epoch's permutation of the flat sample numbers (see
        `UpdateConfig.flatten`); None: read from the trace's "indices".
    reshuffle : bool
        Whether the update reshuffles between epochs (PPO as SB3, CleanRL
        and TorchRL run it); an update that reuses one permutation in every
        epoch then fails ``update.minibatch_order``.
    on_policy : bool
        PPO without ``target_kl`` only. False (default): each batch's
        ``logp_old`` is that of a nearby behaviour policy (logit offsets up
        to 1), so the ratio is off
        1 from the first step and the clipped branches are reached at any
        learning rate, as in a real update's later epochs; the update must
        use ``logp_old`` as given (recomputing it from the parameters is a
        bug this catches). True: ``logp_old`` is the parameters' own, as at
        an update's first step (A2C and TRPO always draw it so).
    max_examples : int
        Batches drawn before shrinking.
    seed : int
    **hyperparameters
        The fields of `refpg.algorithms.actor_critic.UpdateConfig` (clip_range,
        n_epochs, minibatch_size, normalize_advantage, vf_coef, ent_coef,
        value_loss, clip_range_vf, value_clip, max_grad_norm, optimizer, lr,
        eps, ...), as the implementation is configured.

    Returns
    -------
    Report
        ``update.advantages``, ``update.returns``, ``update.loss``,
        ``update.gradient``, ``update.grad_norm``, ``update.optimizer_step``
        (or ``update.params`` when the trace lacks the gradients to tell a
        gradient from an optimiser step, and ``update.final_params`` for a
        function that returns only the final parameters),
        ``update.minibatch_order``, ``update.step_count``, and the generic ids.
        Each failure names the first divergence: epoch, minibatch, component.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument or hyperparameter, named.
    """
    check_callable(fn)
    check_choice(convention, "convention", UPDATE_CONVENTIONS)
    S = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions", minimum=2)
    T = check_positive_int(n_steps, "n_steps")
    N = check_positive_int(n_envs, "n_envs")
    for name, flag in (("actor_bias", actor_bias), ("critic_bias", critic_bias), ("reshuffle", reshuffle),
                       ("on_policy", on_policy)):
        if not isinstance(flag, (bool, np.bool_)):
            raise InvalidInputError(f"{name} should be True or False, actual {flag!r}")
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    cfg = UpdateConfig.from_options(hyperparameters)
    ignored = _ignored_options(cfg, hyperparameters)
    if cfg.algorithm == "trpo":
        from refpg.algorithms.actor_critic_trpo import check_trpo_config
        check_trpo_config(cfg)
    M = T * N
    if cfg.minibatch_size is not None and cfg.minibatch_size > M and cfg.algorithm != "a2c":
        raise InvalidInputError(f"minibatch_size should be at most the batch size n_steps * n_envs = {M}, "
                                f"actual {cfg.minibatch_size}")
    if order is not None:
        order = check_order(order, cfg.epochs, M)
    named = check_signature(fn, "update", convention, _PARAMS)
    opts = dict(n_states=S, n_actions=A, n_steps=T, n_envs=N, actor_bias=bool(actor_bias),
                critic_bias=bool(critic_bias), order=None if order is None else "given",
                reshuffle=bool(reshuffle), on_policy=bool(on_policy), **{k: v for k, v in hyperparameters.items()})
    # A target_kl update would stop at once on a behaviour policy's batch: it is checked on-policy.
    strategy = _cases(S, A, T, N, bool(actor_bias), bool(critic_bias),
                      behaviour=cfg.algorithm == "ppo" and not on_policy and cfg.target_kl is None)

    def probe(be):
        s = Session("update", fn, convention, be, max_examples=1, seed=seed, options=opts)
        case = _probe_case(S, A, T, N, actor_bias, critic_bias)
        return s.call([("batch", _user_batch(_batch(case, be), S, be)),
                       ("params", _user_params(_rounded(case["params"], be), be))])

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    # The kit reads gradients from the trace here, not through autograd: the choice needs no such promise.
    warn0 = [w.replace(" (its gradient is checked)", "") for w in warn0]
    session = Session("update", fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=named + warn0 + ignored)
    # Every case is a whole update (tens of optimiser steps of the library): 2 s of shrinking already takes
    # a batch down to a few distinct states and flags, and keeps a failing check of a library short.
    session.shrink_budget = 2.0
    ids = [cid for _, cid in COMPONENTS] + ["update.params", "update.final_params", "update.minibatch_order",
                                            "update.step_count"]
    session.declare(*session.generic_ids())
    checker = _Checker(session, cfg, S, A, T, N, order, bool(reshuffle))
    session.run_scenario(strategy, checker.evaluate, ids)
    checker.warn_unreached()
    return session.report()


#: Hyperparameters only one algorithm reads: a declared one the algorithm ignores is named in a warning
#: (a TRPO setting on a PPO update is a misdeclaration, not a setting).
_ONLY = {"ppo": ("clip_range", "n_epochs", "target_kl", "advantages"),
         "trpo": ("max_kl", "cg_max_steps", "cg_damping", "line_search_shrinking_factor", "line_search_max_iter",
                  "n_critic_updates", "kl_direction")}


def _ignored_options(cfg, given: dict) -> list:
    """Warnings for declared hyperparameters that `cfg.algorithm` does not read."""
    return [f"{name}={given[name]!r} is {algorithm.upper()}'s and algorithm={cfg.algorithm!r} does not read it: "
            f"is the algorithm declared right?"
            for algorithm, names in _ONLY.items() if algorithm != cfg.algorithm for name in names if name in given]


def _probe_case(S, A, T, N, actor_bias, critic_bias) -> dict:
    """A fixed small case for choosing the backend."""
    rng = np.random.default_rng(0)
    p = ACParams(rng.normal(size=(S, A)), rng.normal(size=A) if actor_bias else None, rng.normal(size=S),
                 np.asarray(0.1) if critic_bias else None)
    states = rng.integers(0, S, (T, N))
    return {"params": p, "states": states, "actions": rng.integers(0, A, (T, N)),
            "next_states": np.roll(states, -1, axis=0), "rewards": rng.normal(size=(T, N)),
            "terminated": np.zeros((T, N), bool), "truncated": np.zeros((T, N), bool)}


class _Checker:
    """Evaluates one case: calls the function, reads its output and looks for the first divergence."""

    def __init__(self, session, cfg, S, A, T, N, order, reshuffle):
        self.s, self.cfg, self.S, self.A, self.T, self.N = session, cfg, S, A, T, N
        self.order, self.reshuffle = order, reshuffle
        self.M = T * N
        self.be = session.backend
        # Which branches of the update the drawn cases reached (reported when one never did).
        self.active = {"ratio clip": False, "value clip": False, "gradient clip": False}

    def _skip(self, cid: str, reason: str, *, by_design: bool = False) -> None:
        """Say why `cid` may not run, replacing an earlier reason (the output's form decides it)."""
        self.s.skip_reasons[cid] = reason
        (self.s.by_design.add if by_design else self.s.by_design.discard)(cid)

    # -- helpers --
    def _cmp(self, cid, what, actual, expected, inputs, *, scale=0.0, why="", n=None):
        o = self.s.compare(cid, what, actual, expected, inputs, scale=scale, why=why, n=n,
                           n_is="the minibatch size")
        if o is not None and n is not None and n > 1 and cid == "update.gradient":
            o.message += self._ddof_hint(np.asarray(actual, float), np.asarray(expected, float), n)
        return o

    #: Declarations a library commonly differs in, tried when a step's loss or gradient fails: each pair is
    #: (field, alternatives), with what the alternative means.
    _ALTERNATIVES = (("norm_ddof", {0: "NumPy's std (ddof 0)", 1: "torch's std (ddof 1)"}),
                     ("normalize_advantage", {"batch": "once over the whole batch", "minibatch": "per minibatch",
                                              None: "not at all"}),
                     ("flatten", {"time_major": "t N + n (CleanRL's reshape)", "env_major": "n T + t (SB3's buffer)"}),
                     ("value_loss", {"mse": "mean((R - v)^2)", "half_mse": "0.5 mean((R - v)^2)",
                                     "smooth_l1": "Huber"}),
                     ("value_clip", {"prediction": "the clipped prediction's loss (SB3)",
                                     "max": "the larger of both losses (CleanRL)"}),
                     ("truncation", {"bootstrap": "time limits bootstrapped", "cut": "time limits cut like "
                                                                                    "terminations"}))

    def _alternative_hint(self, cid, step, prev, batch, idx, e) -> str:
        """Name a declaration under which the function's loss or gradient at this step is the reference's."""
        from dataclasses import replace

        cfg = self.cfg
        if cfg.advantages == "per_epoch" and e > 0:
            return ""
        found = []
        for field, meanings in self._ALTERNATIVES:
            for value, meaning in meanings.items():
                if value == getattr(cfg, field):
                    continue
                if field == "norm_ddof" and cfg.normalize_advantage is None:
                    continue
                if field == "value_clip" and cfg.clip_range_vf is None:
                    continue
                try:
                    alt = replace(cfg, **{field: value})
                    flat, adv, ret = epoch_samples(batch, alt)
                    a_mb = _normalize(adv[idx], alt) if alt.normalize_advantage == "minibatch" else adv[idx]
                    terms = minibatch_loss(prev, {k: v[idx] for k, v in flat.items()}, a_mb, ret[idx], alt)
                except InvalidInputError:
                    continue
                if cid == "update.loss":
                    got, want = np.asarray(step["loss"]), np.asarray(terms.loss)
                else:
                    got = np.concatenate([np.ravel(t) for t in step["grad"].tensors()])
                    want = np.concatenate([np.ravel(t) for t in terms.grad.tensors()])
                if np.all(np.abs(got - want) <= self.be.tol * (1.0 + np.max(np.abs(want), initial=0.0))):
                    found.append(f"{field}={value!r} ({meaning}) instead of the declared {getattr(cfg, field)!r}")
        if not found:
            return ""
        return ("; the function's value is the reference's with " + " or with ".join(found)
                + ": declare it if that is the library's convention, else that is the bug")

    def _ddof_hint(self, actual, expected, n) -> str:
        """Name the normalisation's ddof when the gradient is the expected one scaled by sqrt(n/(n-1)) or its
        inverse (a std with the other ddof: NumPy's default 0 against torch's 1)."""
        cfg = self.cfg
        if cfg.normalize_advantage is None or not np.any(expected):
            return ""
        c = float(np.dot(actual.ravel(), expected.ravel()) / np.dot(expected.ravel(), expected.ravel()))
        if not np.allclose(actual, c * expected, rtol=1e-3, atol=1e-6 * (1 + np.abs(expected).max())):
            return ""
        for factor, used in ((np.sqrt(n / (n - 1)), 0), (np.sqrt((n - 1) / n), 1)):
            if abs(c - factor) < 1e-3 * factor and used != cfg.norm_ddof:
                return (f"; actual = {c:.6g} x expected = sqrt({n}/{n - 1})" + (" " if used == 0 else "^-1 ")
                        + f"x expected: the advantages look normalised with ddof={used} (NumPy's std is ddof 0, "
                          f"torch's 1) where norm_ddof={cfg.norm_ddof} is declared")
        return ""

    def _where(self, k, e, j):
        total = self.cfg.total_steps(self.M)
        return f"epoch {e}, minibatch {j} (optimiser step {k + 1} of {total})"

    def evaluate(self, case) -> list:
        be = self.be
        params0 = _rounded(case["params"], be)
        batch = _batch(case, be)
        inputs = _shown(batch, params0)
        ub, up = _user_batch(batch, self.S, be), _user_params(params0, be)
        snaps = [(f"batch[{k!r}]", v, be.snapshot(v)) for k, v in ub.items()]
        snaps += [(f"params[{k!r}]", v, be.snapshot(v)) for k, v in up.items()]
        call = self.s.call([("batch", ub), ("params", up)])
        outcomes = self.s.generic_outcomes(call, inputs)
        if call.error is None:
            changed = [name for name, obj, snap in snaps if not np.array_equal(be.snapshot(obj), snap)]
            if changed:
                outcomes.append(Outcome("update.input_mutated", f"the inputs should be left unchanged, actual "
                                                                f"{', '.join(changed)} modified in place", inputs))
        if call.error is not None:
            return outcomes
        self.s.ran("update.output_shape", "update.output_finite", "update.output_dtype")
        try:
            out = _read(be, call.output, params0, (self.T, self.N))
        except _Malformed as exc:
            msg = str(exc)
            cid = ("update.output_dtype" if isinstance(exc, _LowPrecision) else
                   "update.output_finite" if "should be finite" in msg else "update.output_shape")
            return outcomes + [Outcome(cid, msg, inputs)]
        self.s.usable += 1
        if "final" not in out:
            self._skip("update.final_params", "the function returned a trace of its steps, which is compared step "
                                              "by step", by_design=True)
            if out["steps"] and all("grad" in st_ or "clipped_grad" in st_ for st_ in out["steps"]):
                self._skip("update.params", "the trace has the gradients to tell a wrong gradient from a wrong "
                                            "optimiser step, so each is judged on its own", by_design=True)
        if self.cfg.algorithm == "trpo" and "final" not in out:
            from refpg.conformance.update_trpo import trpo_trace_outcomes
            return outcomes + trpo_trace_outcomes(self, out, batch, params0, inputs)
        if "final" in out:
            return outcomes + self._final(out["final"], batch, params0, inputs)
        return outcomes + self._trace(out, batch, params0, inputs)

    def _final(self, final, batch, params0, inputs) -> list:
        cfg = self.cfg
        order = self._expected_order(None)
        if cfg.algorithm == "trpo":
            from refpg.conformance.update_trpo import trpo_final_outcomes
            return trpo_final_outcomes(self, final, batch, params0, inputs, order)
        for cid in [c for _, c in COMPONENTS] + ["update.minibatch_order", "update.step_count", "update.params"]:
            self._skip(cid, "the function returns only the final parameters (a trace of its steps would be "
                            "compared component by component)", by_design=True)
        if order is None:
            self._skip("update.final_params", "the function returns only the final parameters of an update that "
                                              "shuffles: pass order= (an (n_epochs, M) array of the permutations "
                                              "it uses), or return a trace with each step's 'indices'")
            return []
        ref = actor_critic_update(batch, params0, cfg, order=None if cfg.algorithm == "a2c" else order)
        n = max(len(ref.steps), 1)
        for name in params0.present():
            o = self._cmp("update.final_params", f"params[{name!r}] after the update", getattr(final, name),
                          getattr(ref.params, name), inputs, scale=1.0 * n,
                          why=f"only the final parameters were returned, after {len(ref.steps)} optimiser "
                              f"step{'s' if len(ref.steps) != 1 else ''}: "
                              f"return a trace of the steps (module docstring) to learn which step and "
                              f"component diverge")
            if o is not None:
                return [o]
        return []

    def _expected_order(self, steps):
        """(n_epochs, M) permutations, from `order`, the trace's indices, or trivially; None if unknown."""
        cfg = self.cfg
        if cfg.algorithm == "a2c":
            return np.arange(self.M)[None]
        if self.order is not None:
            return self.order
        if cfg.steps_per_epoch(self.M) == 1:
            return np.tile(np.arange(self.M), (cfg.epochs, 1))
        return None

    def _trace(self, out, batch, params0, inputs) -> list:
        cfg, s = self.cfg, self.s
        adv2, ret2 = batch_advantages(batch, cfg)
        scale_adv = float(np.max(np.abs(batch.rewards), initial=0.0) + np.max(np.abs(batch.values), initial=0.0)
                          ) / max(1e-12, 1.0 - cfg.gamma * cfg.gae_lambda * 0.999999)
        if "advantages" in out:
            o = self._cmp("update.advantages", "advantages", out["advantages"], adv2, inputs, scale=scale_adv,
                          why=f"GAE(gamma={cfg.gamma}, lambda={cfg.gae_lambda}) with terminated steps not "
                              f"bootstrapped and truncated ones bootstrapped from next_values (before any "
                              f"normalisation)")
            if o is not None:
                return [o]
        if "returns" in out:
            o = self._cmp("update.returns", "returns", out["returns"], ret2, inputs, scale=scale_adv,
                          why="the value targets are advantages + values (GAE before normalisation)")
            if o is not None:
                return [o]
        steps = out["steps"]
        spe = cfg.steps_per_epoch(self.M)
        if not steps and cfg.target_kl is None:
            s.ran("update.step_count")
            return [Outcome("update.step_count", f"the update should take {cfg.total_steps(self.M)} optimiser "
                                                 f"steps, actual 0 (trace['steps'] is empty)", inputs,
                            expected=cfg.total_steps(self.M), actual=0)]
        for key, cid in (("advantages", "update.advantages"), ("returns", "update.returns")):
            if key not in out:
                s.not_run_because(cid, f"the trace has no {key!r}", by_design=True)
        for key, cid in (("loss", "update.loss"), ("grad", "update.gradient"), ("grad_norm", "update.grad_norm"),
                         ("indices", "update.minibatch_order")):
            if steps and not any(key in st_ for st_ in steps):
                s.not_run_because(cid, f"the trace's steps have no {key!r}", by_design=True)
        # The minibatches: from order= (every epoch), trivially (one minibatch per epoch), or as the trace's
        # indices record them (only the steps taken: a minibatch an early stop refused is not recorded).
        total = cfg.total_steps(self.M)
        if spe == 1:
            s.not_run_because("update.minibatch_order", "one minibatch per epoch: the order of the samples does "
                                                        "not change the step", by_design=True)
        recorded = self._recorded_minibatches(steps, spe, inputs)
        if isinstance(recorded, Outcome):
            return [recorded]
        order = self._expected_order(steps)
        if order is not None:
            epochs = cfg.epochs
            minibatches = [(e, j, idx) for e in range(epochs) for j, idx in enumerate(epoch_minibatches(order[e], cfg))]
            complete = True
            if recorded is not None and self.order is not None:
                for k, ((e, j, want), (_, _, got)) in enumerate(zip(minibatches, recorded)):
                    s.ran("update.minibatch_order")
                    if not np.array_equal(np.sort(got), np.sort(want)):
                        return [Outcome("update.minibatch_order",
                                        f"{self._where(k, e, j)}: the trace's indices should be the minibatch of the "
                                        f"order passed, actual other samples", {**inputs, "order": order[e]},
                                        expected=want, actual=got)]
        elif recorded is not None:
            minibatches, complete = recorded, False
        else:
            for cid in ("update.loss", "update.gradient", "update.grad_norm", "update.optimizer_step",
                        "update.step_count"):
                s.not_run_because(cid, "the update shuffles and neither order= nor the trace's 'indices' say "
                                       "which samples each step used")
            return []
        flat, adv, ret = epoch_samples(batch, cfg)
        raw_adv = epoch_samples(batch, cfg._replace_normalization(None))[1] if cfg.normalize_advantage else adv
        prev, state = params0, None
        for k, (e, j, idx) in enumerate(minibatches):
            where = self._where(k, e, j)
            if e > 0 and j == 0 and cfg.advantages == "per_epoch":
                # GAE again with the function's own critic as the previous epoch left it.
                flat, adv, ret = epoch_samples(batch, cfg, prev)
                if cfg.normalize_advantage:
                    raw_adv = epoch_samples(batch, cfg._replace_normalization(None), prev)[1]
            a_mb = _normalize(adv[idx], cfg) if cfg.normalize_advantage == "minibatch" else adv[idx]
            samples = {key: v[idx] for key, v in flat.items()}
            terms = minibatch_loss(prev, samples, a_mb, ret[idx], cfg)
            undetermined = self._undetermined(raw_adv if cfg.normalize_advantage == "batch" else raw_adv[idx])
            self._note_activity(prev, samples, terms)
            stop = cfg.target_kl is not None and terms.approx_kl > KL_STOP_FACTOR * cfg.target_kl
            s.ran("update.step_count")
            if stop:
                if len(steps) > k:
                    return [Outcome("update.step_count",
                                    f"{where}: the update should stop before this step (approximate KL "
                                    f"mean((r - 1) - log r) = {terms.approx_kl:.6g} > 1.5 target_kl = "
                                    f"{KL_STOP_FACTOR * cfg.target_kl:.6g}), actual it took {len(steps)} steps",
                                    inputs, expected=k, actual=len(steps))]
                return []
            if k >= len(steps):
                return [Outcome("update.step_count",
                                f"the update should take {total} optimiser steps ({cfg.n_epochs} epochs of {spe} "
                                f"minibatches), actual {len(steps)}: the first missing one is {where}"
                                + (f" (its approximate KL {terms.approx_kl:.6g} is within 1.5 target_kl = "
                                   f"{KL_STOP_FACTOR * cfg.target_kl:.6g}, so target_kl does not stop it)"
                                   if cfg.target_kl is not None else ""),
                                inputs, expected=total, actual=len(steps))]
            step = steps[k]
            step_inputs = {**inputs, "step": f"{where}", "indices": idx,
                           **{f"before the step: params[{n!r}]": getattr(prev, n) for n in prev.present()}}
            o = self._one_step(step, prev, terms, state, where, step_inputs, e, j, judge=not undetermined)
            if isinstance(o, Outcome):
                if o.check_id in ("update.loss", "update.gradient"):
                    o.message += self._alternative_hint(o.check_id, step, prev, batch, idx, e)
                return [o]
            if o is None:
                s.warn("a drawn batch had nearly equal advantages in a minibatch, whose normalised values are "
                       f"rounding noise in {self.be.dtype}; its steps from there on were not judged")
                return []
            state = o
            prev = step["params"]
        if len(steps) > total:
            return [Outcome("update.step_count",
                            f"the update should take {total} optimiser steps ({cfg.n_epochs} epochs of {spe} "
                            f"minibatches), actual {len(steps)}", inputs, expected=total, actual=len(steps))]
        if not complete and len(steps) < total:
            if cfg.target_kl is None:
                return [Outcome("update.step_count",
                                f"the update should take {total} optimiser steps ({cfg.n_epochs} epochs of {spe} "
                                f"minibatches; no target_kl to stop it), actual {len(steps)}", inputs,
                                expected=total, actual=len(steps))]
            s.not_run_because("update.step_count",
                              f"the update stopped after {len(steps)} of {total} steps, and the minibatch its "
                              f"target_kl refused is in neither the trace nor order=: pass order= to judge the stop")
        return []

    def _note_activity(self, params, samples, terms) -> None:
        """Record which clipped branches this step reaches in the reference (for `warn_unreached`)."""
        cfg = self.cfg
        if cfg.algorithm == "ppo" and terms.clip_fraction > 0:
            self.active["ratio clip"] = True
        if cfg.clip_range_vf is not None:
            v = params.critic_w[samples["states"]] + (0.0 if params.critic_b is None else params.critic_b)
            if np.any(np.abs(v - samples["values"]) > cfg.clip_range_vf):
                self.active["value clip"] = True
        if cfg.max_grad_norm is not None:
            norm = float(np.sqrt(sum(np.sum(t * t) for t in terms.grad.tensors())))
            if norm > cfg.max_grad_norm:
                self.active["gradient clip"] = True

    def warn_unreached(self) -> None:
        """Warn about a declared clip that no judged step reached: a bug in its branch would go unseen."""
        cfg = self.cfg
        declared = {"ratio clip": cfg.algorithm == "ppo", "value clip": cfg.clip_range_vf is not None,
                    "gradient clip": cfg.max_grad_norm is not None}
        missed = [k for k, on in declared.items() if on and not self.active[k]]
        if missed and self.s.evaluated & {"update.loss", "update.gradient", "update.optimizer_step"}:
            self.s.warn(f"no judged step reached the {' or the '.join(missed)}: a bug in "
                        f"{'that branch' if len(missed) == 1 else 'those branches'} would pass unseen. Raise lr "
                        f"(the steps stay within the clip range at small learning rates), or max_examples; with "
                        f"on_policy=True the ratio starts at 1")

    def _undetermined(self, raw: np.ndarray) -> bool:
        """Whether normalised advantages are fixed by the backend's precision: (A - mean) / (std + eps) of
        nearly equal advantages amplifies their rounding, eps_dtype |A|, by 1 / (std + eps). When that
        exceeds the tolerance, a correct float32 implementation's normalised advantages are rounding
        noise, and its loss and gradient at the step cannot be judged (its optimiser step still is)."""
        cfg = self.cfg
        if not cfg.normalize_advantage or raw.size <= cfg.norm_ddof:
            return False
        std = float(raw.std(ddof=cfg.norm_ddof))
        denom = max(std, cfg.norm_eps) if cfg.norm_eps_on == "clamp" else std + cfg.norm_eps
        noise = 4 * np.finfo(self.be.np_dtype).eps * float(np.max(np.abs(raw)))
        return noise / denom > self.be.tol

    def _one_step(self, step, prev, terms, state, where, inputs, e, j, *, judge=True):
        """Compare one step's components in order; the optimiser state after it, or the first Outcome.

        `judge` False: the loss and the gradient are not compared (their normalised advantages are
        rounding noise at the backend's precision), and the function's own gradient feeds the rest."""
        cfg = self.cfg
        if not judge and "grad" not in step and "clipped_grad" not in step:
            return None  # nothing of the function's own to carry the comparison past this step
        if "loss" in step and judge:
            scale = abs(terms.policy_loss) + cfg.vf_coef * abs(terms.value_loss) + cfg.ent_coef * abs(terms.entropy)
            o = self._cmp("update.loss", "loss", step["loss"], terms.loss, inputs, scale=scale, n=inputs["indices"].size,
                          why=f"{where}: loss = policy loss {terms.policy_loss:.6g} + vf_coef {cfg.vf_coef:g} x value "
                              f"loss {terms.value_loss:.6g} - ent_coef {cfg.ent_coef:g} x entropy "
                              f"{terms.entropy:.6g}, at the parameters before the step")
            if o is not None:
                return o
        if "grad" in step and not judge:
            g_in = step["grad"]
        elif "grad" in step:
            g = step["grad"]
            for name in prev.present():
                o = self._cmp("update.gradient", f"d loss / d {name}", getattr(g, name), getattr(terms.grad, name),
                              inputs, why=f"{where}: the gradient of the loss before clipping, at the parameters "
                                          f"before the step", n=inputs["indices"].size)
                if o is not None:
                    return o
            g_in = g
        else:
            g_in = terms.grad
        clipped, norm = clip_gradient(g_in, cfg)
        if "grad_norm" in step:
            o = self._cmp("update.grad_norm", "gradient norm", step["grad_norm"], norm, inputs,
                          why=f"{where}: the global 2-norm over every parameter's gradient, before clipping")
            if o is not None:
                return o
        if "clipped_grad" in step:
            how = ("unchanged (max_grad_norm=None)" if cfg.max_grad_norm is None else
                   f"scaled to global norm max_grad_norm = {cfg.max_grad_norm:g} as "
                   f"{cfg.optimizer_convention} does")
            for name in prev.present():
                o = self._cmp("update.grad_norm", f"clipped d loss / d {name}", getattr(step["clipped_grad"], name),
                              getattr(clipped, name), inputs, why=f"{where}: the gradient after clipping, {how}")
                if o is not None:
                    return o
            g_opt = step["clipped_grad"]
        else:
            g_opt = clipped
        expected, new_state = optimizer_step(prev, g_opt, state, cfg)
        after = step["params"]
        localised = "grad" in step or "clipped_grad" in step
        cid = "update.optimizer_step" if localised else "update.params"
        if not localised:
            self.s.ran("update.params")
        for name in prev.present():
            p0, want, got = getattr(prev, name), getattr(expected, name), getattr(after, name)
            delta = want - p0
            # Relative to the step, but never to less than lr: a step a billion times smaller than the learning
            # rate (a gradient shrunk to round-off) is not where an optimiser bug should be shown.
            lr = cfg.critic_lr if (cfg.critic_lr is not None and name.startswith("critic")) else cfg.lr
            allowed = self.be.tol * max(float(np.max(np.abs(delta), initial=0.0)), lr) \
                + 8 * np.finfo(self.be.np_dtype).eps * (1.0 + np.abs(p0))
            err = np.abs(got - want)
            if np.any(err > allowed):
                i = tuple(int(x) for x in np.unravel_index(int(np.argmax(err - allowed)), err.shape)) if err.ndim else ()
                label = f"{name}[{', '.join(map(str, i))}]" if i else name
                opt = (f"{cfg.optimizer} ({cfg.optimizer_convention}), lr={cfg.lr:g}"
                       + (f", eps={cfg.eps:g}" if cfg.optimizer != "sgd" else "")
                       + (f", betas={cfg.betas}" if cfg.optimizer == "adam" else "")
                       + (f", alpha={cfg.alpha:g}" if cfg.optimizer == "rmsprop" else ""))
                src = ("from the function's own clipped gradient" if "clipped_grad" in step else
                       "from the function's own gradient, clipped" if "grad" in step else
                       "from the reference gradient (the trace has no 'grad' or 'clipped_grad', so a wrong gradient "
                       "and a wrong optimiser step look alike here: add them to the trace to tell)")
                self.s.ran(cid)
                taken = got[i] - p0[i]
                rel = abs(taken - delta[i]) / max(abs(delta[i]), 1e-300)
                return Outcome(cid, f"{where}: {label} after the step should be {want[i] + 0.0:.10g}, actual "
                                    f"{got[i] + 0.0:.10g} (step {delta[i] + 0.0:.6g} expected, "
                                    f"{taken + 0.0:.6g} taken: {rel:.3g} of the step, far beyond rounding); the step "
                                    f"of {opt} {src}",
                               inputs, expected=want, actual=got, where=i or None)
        self.s.ran(cid)
        return new_state

    def _recorded_minibatches(self, steps, spe, inputs):
        """[(epoch, minibatch, indices)] of the steps taken, from the trace's indices, checked: None when the
        trace has no indices; an Outcome when they are not minibatches of permutations of the batch."""
        if not steps or any("indices" not in st_ for st_ in steps):
            return None
        cfg, M = self.cfg, self.M
        B = M if spe == 1 else cfg.minibatch_size
        sizes = [min(B, M - k) for k in range(0, M, B)]
        idx = [st_["indices"] for st_ in steps]
        if spe > 1:
            self.s.ran("update.minibatch_order")
        out, perms = [], []
        for e in range(-(-len(idx) // spe)):
            chunk = idx[e * spe:(e + 1) * spe]
            for j, ix in enumerate(chunk):
                if ix.size != sizes[j]:
                    return Outcome("update.minibatch_order",
                                   f"epoch {e}, minibatch {j}: the minibatch should have {sizes[j]} samples "
                                   f"(minibatch_size={B} of M = {M}), actual {ix.size}", {**inputs, "indices": ix})
                out.append((e, j, ix))
            perm = np.concatenate(chunk)
            bad_range = (perm < 0) | (perm >= M)
            counts = np.bincount(perm[~bad_range], minlength=M)
            twice = np.flatnonzero(counts > 1)
            if bad_range.any() or twice.size or (len(chunk) == spe and (counts == 0).any()):
                never = np.flatnonzero(counts == 0)
                what = (f"index {int(perm[bad_range][0])} outside range({M})" if bad_range.any() else
                        f"sample {int(twice[0])} used {int(counts[twice[0]])} times" if twice.size else
                        f"sample {int(never[0])} never used")
                return Outcome("update.minibatch_order",
                               f"epoch {e}: the minibatches should use every sample of the batch exactly once, "
                               f"actual {what}; sampling with replacement, or one epoch's indices drawn per "
                               f"minibatch?", {**inputs, "indices of the epoch": perm})
            if len(chunk) == spe:
                perms.append(perm)
        if self.reshuffle and spe > 1 and cfg.algorithm == "ppo":
            for e in range(1, len(perms)):
                if np.array_equal(perms[e], perms[e - 1]):
                    return Outcome("update.minibatch_order",
                                   f"epoch {e} should visit the samples in a fresh random order, actual the same "
                                   f"permutation as epoch {e - 1}: the minibatch indices are reused across epochs "
                                   f"(a shuffle drawn once, or a PRNG key not split); pass reshuffle=False if that is "
                                   f"the intended design", {**inputs, "indices of the epoch": perms[e]})
        return out

r"""`check_gae`: a user's generalised advantage estimator against `refpg.returns.gae`.

The canonical form (convention ``"refpg"``, docs/conventions.md), per transition t
of a time-major (T, N) rollout:

.. math::
    \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V(s_{t+1}) - V(s_t), \qquad
    \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{terminated}_t)(1 - \mathrm{truncated}_t) \hat A_{t+1}

[Schulman2016]. The other conventions are adapters that turn the same
rollout into the arguments a library's GAE takes, and its output back. Three
of them have no value of the final observation of a time limit and declare an
approximation instead: ``"cleanrl"`` and ``"purejaxrl"`` cut a time limit like
a termination, ``"value_bootstrap"`` folds gamma * V(s_t) into the reward of a
time-out step. Their reference is the convention's own arithmetic, and the
report's warning measures what the approximation costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refpg._validation import check_choice, check_positive_int
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, _shape_of, check_callable,
                                        check_signature, convention_parameters, resolve_backend)
from refpg.conformance.report import Report
from refpg.returns import gae as reference_gae
from refpg.errors import InvalidInputError

__all__ = ["check_gae", "GAE_CONVENTIONS", "GAE_OUTPUTS"]

#: Convention -> the signature the user's function has.
GAE_CONVENTIONS = {
    "refpg": "fn(rewards, values, next_values, terminated, truncated, gamma, lam) -> advantages (T, N)",
    "sb3": "fn(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda) -> advantages (T, N)",
    "cleanrl": "fn(rewards, values, dones, next_value, next_done, gamma, gae_lambda) -> advantages (T, N)",
    "torchrl": "fn(gamma, lmbda, state_value, next_state_value, reward, done, terminated) -> advantage "
               "(N, T, 1) or (advantage, value_target)",
    "rlax": "fn(r_t, discount_t, lambda_, values) -> advantages (T,), one trajectory, values (T + 1,)",
    "value_bootstrap": "fn(rewards, values, dones, time_outs, last_values, gamma, lam) -> advantages (T, N); "
                       "a time-out adds gamma * values[t] to its reward and is cut like a termination "
                       "(RSL-RL, Isaac Lab, rl_games' value_bootstrap, skrl's time_limit_bootstrap)",
    "purejaxrl": "fn(rewards, values, dones, last_value, gamma, gae_lambda) -> advantages (T, N); dones[t]: "
                 "the episode ended at step t (PureJaxRL's transition.done), a time limit included",
}

#: This module's own conventions (those of `refpg.conformance.gae_layouts`, when present, are added to
#: `GAE_CONVENTIONS` at the end of the module and checked there).
_OWN_CONVENTIONS = dict(GAE_CONVENTIONS)

#: Conventions without the value of a time limit's final observation: their reference is their own
#: approximation, and the report warns what it costs.
_APPROXIMATE = ("cleanrl", "purejaxrl", "value_bootstrap")

#: The `output` option's spellings -> what the function returns, in order.
GAE_OUTPUTS = {"advantages": ("advantages",), "advantages,returns": ("advantages", "returns"),
               "returns,advantages": ("returns", "advantages")}

#: Shapes of the rollouts drawn for backend="jax" (rows, columns): a jitted function compiles once per
#: input shape, and a dozen shapes compile in a few seconds where 24 x 8 free shapes took most of a minute.
_JAX_SIZES = ((1, 2, 4, 8), (1, 2, 3))
_JAX_LONG_SIZES = ((64,), (8,))
_JAX_LONG_MOVES = ((1, 2, 4, 8, 64), (1, 2, 3, 8))
#: Lengths rlax's one-trajectory calls are padded to under backend="jax".
_JAX_SEGMENTS = (1, 2, 4, 8, 16, 32, 64)

_HINTS = {
    "gae.recursion": "with no episode boundary, A_t = delta_t + gamma * lam * A_{t+1} and the last row "
                     "bootstraps from next_values[T-1]",
    "gae.terminal_not_bootstrapped": "after a termination nothing is bootstrapped: delta_t = r_t - V(s_t) and "
                                     "A_t = delta_t (next_values of a terminated row must be ignored)",
    "gae.truncation_bootstrapped": "a truncated (time-limit) row bootstraps from the final observation: "
                                   "delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), with V(s_{t+1}) = "
                                   "next_values[t], not values[t] and not 0",
    "gae.general": "",
}

#: (convention, check id) -> what the convention's own flags mean there.
_CONVENTION_HINTS = {
    ("value_bootstrap", "gae.terminal_not_bootstrapped"):
        "gamma * values[t] is added to the reward of a time-out only (time_outs[t] = 1), never of a "
        "termination, whose delta is r_t - V(s_t)",
    ("value_bootstrap", "gae.recursion"):
        "time_outs and dones are all 0 here: no reward is changed and the last row bootstraps from "
        "last_values",
    ("purejaxrl", "gae.terminal_not_bootstrapped"):
        "dones[t] is the done of step t itself (PureJaxRL's transition.done): delta_t uses (1 - dones[t]), "
        "not the done of step t + 1 or t - 1, and the last row bootstraps from last_value unless dones[T-1]",
    ("cleanrl", "gae.terminal_not_bootstrapped"):
        "dones[t] is the done of step t - 1 (CleanRL: whether s_t starts an episode): step t is cut by "
        "dones[t + 1], the last step by next_done",
}


@dataclass(frozen=True)
class _Form:
    """What the function returns: the order of its outputs, and whether its advantages are whitened.

    Whitening is over the whole (T, N) batch, ``(A - mean(A)) / (std(A, ddof) + eps)`` with
    ``eps_on="std"`` (skrl, RSL-RL, SB3's PPO), ``(A - mean(A)) / sqrt(var(A, ddof) + eps)`` with
    ``eps_on="var"`` (verl's masked_whiten and TRL's whiten, both with the unbiased variance).
    """

    order: tuple = ("advantages",)
    declared: str = ""          # how the caller declared `order` (for messages)
    whiten: bool = False
    ddof: int = 1
    eps: float = 1e-8
    eps_on: str = "std"

    @property
    def returns(self) -> bool:
        return "returns" in self.order

    @property
    def min_size(self) -> int:
        """Fewest entries of a rollout: the whitening's variance needs more than ddof of them."""
        return self.ddof + 1 if self.whiten else 1

    def denominator(self, adv: np.ndarray) -> float:
        var = float(np.var(adv, ddof=self.ddof))
        return float(np.sqrt(var) + self.eps) if self.eps_on == "std" else float(np.sqrt(var + self.eps))

    def whitened(self, adv: np.ndarray) -> np.ndarray:
        if not self.whiten:
            return adv
        return (adv - adv.mean()) / self.denominator(adv)

    def scale(self, adv: np.ndarray, case: dict) -> float:
        """The magnitude the whitened comparison's tolerance is relative to: a rounding error of the
        advantages, relative to their inputs, is divided by the whitening's denominator too."""
        if not self.whiten:
            return 0.0
        size = max(float(np.max(np.abs(adv))), float(np.max(np.abs(case["rewards"]))),
                   float(np.max(np.abs(case["values"]))), float(np.max(np.abs(case["next_values"]))))
        return (1.0 + size) / self.denominator(adv)

    def describe(self) -> str:
        how = "(A - mean) / (std + eps)" if self.eps_on == "std" else "(A - mean) / sqrt(var + eps)"
        return f"whitened over the whole (T, N) batch: {how}, ddof={self.ddof}, eps={self.eps:g}"


def _refuse_undeclared_output(session, case, convention, form) -> None:
    """Stop before drawing a case if the function returns (advantages, returns) undeclared, or the reverse.

    Every one of the several hundred calls would otherwise fail `gae.output_shape`
    for the same reason; one call on a tiny rollout tells.
    """
    call = session.call(_args(case, convention))
    raw = call.output
    shape = case["rewards"].shape
    if call.error is not None:
        return  # the check itself reports the error, with its traceback
    if form.returns and not isinstance(raw, (tuple, list)) and _shape_of(raw) == shape:
        cli = "returns=true" if form.declared == "returns=True" else f"output={','.join(form.order)}"
        raise InvalidInputError(
            f"{form.declared} declares that the function returns ({', '.join(form.order)}), but it returned "
            f"one array of the advantages' shape {shape}: return both, or leave out {form.declared} (refpg "
            f"check: drop --option {cli}). The check drew no case")
    if not form.returns and isinstance(raw, (tuple, list)) and len(raw) == 2 \
            and all(_shape_of(x) == shape for x in raw):
        raise InvalidInputError(
            f"the function returned a pair of arrays of the advantages' shape {shape} where one array of "
            f"advantages belongs: if it returns (advantages, returns), as SB3 and CleanRL compute both, pass "
            f"returns=True (refpg check: --option returns=true) to check the returns too, or "
            f"output='returns,advantages' (--option output=returns,advantages) if the returns come first, "
            f"as skrl's compute_gae returns them. The check drew no case")


def _round(case, backend) -> dict:
    out = dict(case)
    for key in ("rewards", "values", "next_values"):
        out[key] = backend.round(case[key])
    return out


def _time_outs(case) -> np.ndarray:
    """Steps that end by a time limit alone: a step that also terminates is a termination (Gymnasium's
    terminated wins), so nothing may be bootstrapped there."""
    return case["truncated"] & ~case["terminated"]


def _expected(case, convention) -> np.ndarray:
    """The convention's advantages for `case`: exact for those with a final observation's value, each
    one's own approximation of a time limit for `_APPROXIMATE`."""
    r, term, trunc = case["rewards"], case["terminated"], case["truncated"]
    if convention in _APPROXIMATE:
        if convention == "value_bootstrap":  # gamma * V(s_t), the value the step started from
            r = r + case["gamma"] * case["values"] * _time_outs(case)
        term, trunc = term | trunc, np.zeros_like(trunc)
    return reference_gae(r, case["values"], case["next_values"], term, trunc, case["gamma"], case["lam"])


# -- adapters: canonical rollout -> the convention's call -> (T, N) advantages ---------

def _starts(case, done) -> np.ndarray:
    """episode_starts[t] = done[t - 1]; row 0 from the case (it must not matter)."""
    starts = np.empty_like(done)
    starts[0] = case["start"]
    starts[1:] = done[:-1]
    return starts


def _args(case, convention) -> list:
    r, v, nv = case["rewards"], case["values"], case["next_values"]
    term, trunc, gamma, lam = case["terminated"], case["truncated"], case["gamma"], case["lam"]
    done = term | trunc
    if convention == "refpg":
        return [("rewards", r), ("values", v), ("next_values", nv), ("terminated", term),
                ("truncated", trunc), ("gamma", gamma), ("lam", lam)]
    if convention == "sb3":
        # SB3's collect_rollouts adds gamma * V(final observation) to the reward of a truncated step
        # and then treats the step as done.
        folded = r + gamma * nv * (trunc & ~term)
        return [("rewards", folded), ("values", v), ("episode_starts", _starts(case, done).astype(float)),
                ("last_values", nv[-1].copy()), ("dones", done[-1].astype(float)), ("gamma", gamma),
                ("gae_lambda", lam)]
    if convention == "cleanrl":
        return [("rewards", r), ("values", v), ("dones", _starts(case, done).astype(float)),
                ("next_value", nv[-1].copy()), ("next_done", done[-1].astype(float)), ("gamma", gamma),
                ("gae_lambda", lam)]
    if convention == "torchrl":
        def btf(x):  # (T, N) -> (N, T, 1): batch, time, feature
            return np.ascontiguousarray(x.T[:, :, None])
        return [("gamma", gamma), ("lmbda", lam), ("state_value", btf(v)), ("next_state_value", btf(nv)),
                ("reward", btf(r)), ("done", btf(done)), ("terminated", btf(term))]
    if convention == "value_bootstrap":
        # The raw rewards: the function folds gamma * values[t] in itself (RSL-RL's process_env_step
        # does it before storing the step), which is what a bug in that fold needs in order to show.
        # last_values is the value of the observation after the last step, as RSL-RL's compute_returns
        # gets it; a done last row must not use it.
        return [("rewards", r), ("values", v), ("dones", done.astype(float)),
                ("time_outs", _time_outs(case).astype(float)), ("last_values", nv[-1].copy()),
                ("gamma", gamma), ("lam", lam)]
    if convention == "purejaxrl":
        return [("rewards", r), ("values", v), ("dones", done.astype(float)), ("last_value", nv[-1].copy()),
                ("gamma", gamma), ("gae_lambda", lam)]
    raise AssertionError(convention)  # pragma: no cover


def _segments(case, n: int) -> list:
    """[a, b) row ranges of the episodes (pieces of episodes) in column n."""
    done = case["terminated"][:, n] | case["truncated"][:, n]
    T = done.shape[0]
    cuts = [t + 1 for t in range(T - 1) if done[t]]
    bounds = [0, *cuts, T]
    return list(zip(bounds[:-1], bounds[1:]))


def _sub_case(case, n: int, a: int, b: int, pad_to: int | None = None) -> tuple[dict, int]:
    """The rows a..b-1 of column n as a rollout of their own, and how many filler rows precede them.

    With `pad_to` (backend="jax": the case's own row count, a shape already compiled), filler rows of
    zeros come first, the last of them terminated: nothing flows backwards out of a terminated row, so a
    GAE computes the piece as if it stood alone, whatever it does with the filler.
    """
    keys = ("rewards", "values", "next_values", "terminated", "truncated")
    sub = {k: case[k][a:b, n:n + 1].copy() for k in keys}
    fill = 0 if pad_to is None else pad_to - (b - a)
    if fill > 0:
        for k in keys:
            filler = np.zeros((fill, 1), dtype=sub[k].dtype)
            if k == "terminated":
                filler[-1] = True
            sub[k] = np.concatenate([filler, sub[k]])
    sub.update(gamma=case["gamma"], lam=case["lam"], start=np.ones(1, dtype=bool))
    return sub, fill


def _run(session: Session, case: dict, convention: str, form: _Form = _Form(), pad: bool = False):
    """Call the user's function on `case`: (advantages (T, N) float64 or None, outcomes, inputs,
    returns (T, N) float64 or None). With ``form.returns``, the function returns the pair
    ``form.order``; `pad` pads rlax's one-trajectory calls to a few lengths (backend="jax")."""
    T, N = case["rewards"].shape
    if convention == "rlax":
        return (*_run_rlax(session, case, pad), None)
    args = _args(case, convention)
    inputs = {name: value for name, value in args}
    call = session.call(args)
    outcomes = session.generic_outcomes(call, inputs)
    if call.error is not None:
        return None, outcomes, inputs, None
    raw = call.output
    pair = isinstance(raw, (tuple, list)) and len(raw) == 2
    torchrl = convention == "torchrl"
    shape, what = ((N, T, 1), "advantage") if torchrl else ((T, N), "advantages")
    ret = None
    if form.returns:
        if not pair:
            kind = f"a {type(raw).__name__} of {len(raw)} items" if isinstance(raw, (tuple, list)) else \
                f"one {type(raw).__name__}"
            return None, outcomes + [Outcome(
                "gae.output_shape", f"the function should return a pair ({', '.join(form.order)}) "
                                    f"({form.declared}), actual {kind}", inputs)], inputs, None
        raw, ret_raw = raw if form.order[0] == "advantages" else raw[::-1]
        ret, more = session.output_array(ret_raw, "value_target" if torchrl else "returns", shape, inputs,
                                         check_id="gae.returns")
        outcomes += more
    elif pair and torchrl:
        raw = raw[0]  # TorchRL returns (advantage, value_target)
        session.warn("the function returns (advantage, value_target); value_target was not checked: pass "
                     "returns=True (refpg check: --option returns=True) to check it too")
    elif pair and all(_shape_of(x) == (T, N) for x in raw):
        return None, outcomes + [Outcome(
            "gae.output_shape", f"advantages should be one array of shape {(T, N)}, actual a pair of arrays of "
                                f"that shape: if the function returns (advantages, returns), as SB3 and "
                                f"CleanRL compute both, pass returns=True (refpg check: --option "
                                f"returns=True) to check the returns too, or output='returns,advantages' "
                                f"if the returns come first", inputs)], inputs, None
    adv, more = session.output_array(raw, what, shape, inputs)
    if torchrl:
        adv = None if adv is None else adv[:, :, 0].T
        ret = None if ret is None else ret[:, :, 0].T
    return adv, outcomes + more, inputs, ret


def _returns_outcomes(session: Session, ret, expected_adv, adv, values, inputs, form: _Form = _Form()) -> list:
    """``gae.returns``: the returns against the exact advantages (before any whitening) + values."""
    bad = session.compare("gae.returns", "returns", ret, expected_adv + values, inputs,
                          why="returns = advantages + values (the targets the value function is fitted to, "
                              "as SB3 and CleanRL compute them)")
    if bad is None:
        return []
    own = np.all(np.abs(ret - (adv + values)) <= session.backend.tol * (1.0 + np.abs(adv) + np.abs(values)))
    if own and form.whiten:
        bad.message += ("; they are the function's whitened advantages + values: compute the returns from "
                        "the advantages before whitening (the value targets are not normalised)")
    elif own:
        bad.message += "; they are the function's own advantages + values: only the advantages are wrong"
    return [bad]


def _run_rlax(session: Session, case: dict, pad: bool = False):
    """rlax's GAE is one trajectory with values of length T + 1: one call per episode piece.

    With `pad` (backend="jax"), each piece is padded in front to the next of `_JAX_SEGMENTS` with
    steps of reward 0, value 0 and discount 0: the last of them is cut from the piece by its discount 0,
    so the piece's advantages do not change, and a jitted function sees a few lengths only.
    """
    T, N = case["rewards"].shape
    adv = np.empty((T, N))
    calls = []
    inputs = {k: case[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")}
    inputs.update(gamma=case["gamma"], lam=case["lam"])
    outcomes: list = []
    for n in range(N):
        for a, b in _segments(case, n):
            r = case["rewards"][a:b, n]
            discount = case["gamma"] * (1.0 - case["terminated"][a:b, n])
            values = np.append(case["values"][a:b, n], case["next_values"][b - 1, n])
            fill = next(L for L in _JAX_SEGMENTS + (b - a,) if L >= b - a) - (b - a) if pad else 0
            if fill:
                r, discount, values = (np.concatenate([np.zeros(fill), x]) for x in (r, discount, values))
            args = [("r_t", r), ("discount_t", discount), ("lambda_", case["lam"]), ("values", values)]
            where = f"column {n}, rows {a}..{b - 1}" + (f", after {fill} filler steps of discount 0" if fill else "")
            calls.append(where)
            call = session.call(args)
            call_inputs = {**{name: val for name, val in args}, "(segment of)": where}
            outcomes += session.generic_outcomes(call, call_inputs)
            if call.error is not None:
                return None, outcomes, call_inputs
            part, more = session.output_array(call.output, "advantages", (fill + b - a,), call_inputs)
            outcomes += more
            if part is None:
                return None, outcomes, call_inputs
            adv[a:b, n] = part[fill:]
    inputs["rlax calls"] = "; ".join(calls)
    return adv, outcomes, inputs


def _form_of(convention, returns, output, whiten, whiten_ddof, whiten_eps, whiten_eps_on) -> _Form:
    """The `_Form` the options declare, after checking them."""
    if not isinstance(returns, (bool, np.bool_)):
        raise InvalidInputError(f"returns should be True or False, actual {returns!r}")
    if output is None:
        output = "advantages"
    if isinstance(output, (tuple, list)):  # the Python spelling of the same choice
        output = ",".join(str(x) for x in output)
    if not isinstance(output, str) or output.replace(" ", "") not in GAE_OUTPUTS:
        raise InvalidInputError(f"output should be one of {', '.join(map(repr, GAE_OUTPUTS))} (or the tuple "
                                f"of those names), actual {output!r}")
    output = output.replace(" ", "")
    if returns and output == "returns,advantages":
        raise InvalidInputError("returns=True declares the pair (advantages, returns), but output="
                                "'returns,advantages' declares the reverse: give one of them")
    if not isinstance(whiten, (bool, np.bool_)):
        raise InvalidInputError(f"whiten should be True or False, actual {whiten!r}")
    whiten_ddof = check_positive_int(whiten_ddof, "whiten_ddof", minimum=0)
    if whiten_ddof > 1:
        raise InvalidInputError(f"whiten_ddof should be 0 (population std) or 1 (sample std), actual {whiten_ddof}")
    if isinstance(whiten_eps, (bool, np.bool_)) or not isinstance(whiten_eps, (int, float, np.floating)) \
            or not np.isfinite(whiten_eps) or whiten_eps < 0:
        raise InvalidInputError(f"whiten_eps should be a finite number >= 0, actual {whiten_eps!r}")
    check_choice(whiten_eps_on, "whiten_eps_on", ("std", "var"))
    order = ("advantages", "returns") if returns else GAE_OUTPUTS[output]
    declared = "returns=True" if returns else f"output={output!r}"
    if convention == "rlax" and (returns or output != "advantages" or whiten):
        what = "returns should be False" if returns else \
            "output should be 'advantages'" if output != "advantages" else "whiten should be False"
        raise InvalidInputError(f"convention 'rlax' returns advantages only, one trajectory per call (rlax's "
                                f"truncated_generalized_advantage_estimation), so nothing is whitened over a "
                                f"batch: {what}")
    return _Form(order, declared, bool(whiten), whiten_ddof, float(whiten_eps), whiten_eps_on)


# -- the check ---------------------------------------------------------------------

@numerics_of_their_own
def check_gae(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
              max_examples: int = 100, seed: int = 0, returns: bool = False, output: str | None = None,
              whiten: bool = False, whiten_ddof: int = 1, whiten_eps: float = 1e-8,
              whiten_eps_on: str = "std", **options) -> Report:
    r"""Check a GAE implementation against the exact recursion, on rollouts drawn by Hypothesis.

    .. math::
        \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{terminated}_t)(1 - \mathrm{truncated}_t)
                   \hat A_{t+1}, \quad
        \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V(s_{t+1}) - V(s_t)

    [Schulman2016], with the flags of docs/conventions.md.

    Parameters
    ----------
    fn : callable
        The user's GAE, with the signature of `convention` (`GAE_CONVENTIONS`).
    convention : {"refpg", "sb3", "cleanrl", "torchrl", "rlax", "value_bootstrap", "purejaxrl"}
        Or a convention of `refpg.conformance.gae_layouts` (RLHF token-level
        GAE, episode-at-a-time buffers), whose check this one hands over to
        with `options`.
    backend : {"auto", "numpy", "torch", "jax"}
        Arrays are passed as NumPy arrays, torch tensors or JAX arrays;
        ``"auto"`` tries NumPy first and falls back to torch if the function
        raises on NumPy. If it raises on both, torch is chosen when the NumPy
        error asks for a Tensor, and the report warns with both errors.
    dtype : {"float64", "float32"}
        Float dtype of the inputs; the tolerance follows (1e-9 or 1e-4, relative).
    max_examples : int
        Rollouts drawn per scenario (T <= 8 steps, N <= 3 environments; a
        fifth as many of up to 64 x 8). With backend="jax" the shapes come
        from a short list instead, because a jitted function compiles once per
        input shape: T in {1, 2, 4, 8} by N in {1, 2, 3}, and 64 x 8 for the
        long rollouts; shrinking keeps a case in those shapes (it keeps the
        first or last rows down to a listed count, never drops one row), an
        episode checked alone comes after filler rows up to its rollout's T,
        and rlax's one-trajectory calls are padded in front to a power of two.
    seed : int
        Seed of the search; the same seed gives the same report.
    returns : bool
        The function returns the pair ``(advantages, returns)``, as SB3's
        ``compute_returns_and_advantage`` and CleanRL compute both (TorchRL:
        ``(advantage, value_target)``); the returns are checked too,
        :math:`R_t = \hat A_t + V(s_t)` with ``values`` as passed. The same as
        ``output="advantages,returns"``. CLI: ``--option returns=True``.
    output : {None, "advantages", "advantages,returns", "returns,advantages"}
        What the function returns: the advantages alone, or both in that
        order (PureJaxRL's ``_calculate_gae`` returns (advantages, targets),
        skrl's ``compute_gae`` (returns, advantages)). A tuple of the names is
        accepted too. None: the convention's default, the advantages alone
        (the pair for ``"rlhf"``, ``"openrlhf"``, ``"spinningup"`` and
        ``"rllib"``). Not for ``"rlax"``. CLI: ``--option output=returns,advantages``.
    whiten : bool
        The advantages are whitened over the whole (T, N) batch,
        :math:`(A - \bar A) / (\mathrm{std}(A) + \epsilon)`, and are compared
        with the exact advantages whitened the same way (the returns, if
        returned, are never whitened: :math:`\hat A_t + V(s_t)` before
        whitening). Each drawn rollout has more than `whiten_ddof` entries.
        ``gae.no_flow_across_episodes`` is not run: an episode alone is
        whitened by its own statistics.
    whiten_ddof : {1, 0}
        Delta degrees of freedom of the whitening's variance: 1 for torch's
        ``.std()`` and ``.var()`` (skrl, RSL-RL, verl's ``masked_whiten``,
        TRL's ``whiten``), 0 for NumPy's and JAX's defaults.
    whiten_eps : float
        The epsilon of the whitening (1e-8 in all of those).
    whiten_eps_on : {"std", "var"}
        Where the epsilon is added: ``"std"`` divides by ``std + eps`` (skrl,
        RSL-RL), ``"var"`` by ``sqrt(var + eps)`` (verl, TRL: ``rsqrt``).
    **options
        Options of a `gae_layouts` convention, passed on to its check.

    Returns
    -------
    Report
        Check ids: ``gae.recursion`` (no episode boundary),
        ``gae.terminal_not_bootstrapped``, ``gae.truncation_bootstrapped``
        (a time limit at the last row, or anywhere with lambda = 0),
        ``gae.no_flow_across_episodes`` (the
        result for a rollout equals the results for its episodes computed
        separately; the message says whether the rollout's rows depend on
        rows across a boundary or the function is wrong on an episode alone),
        ``gae.general`` (all flags mixed), plus ``gae.raised``,
        ``gae.output_shape``, ``gae.output_dtype``, ``gae.output_finite`` and
        ``gae.input_mutated``; with returns in `output`, ``gae.returns`` (the
        returns on every case of the value checks, against the exact
        advantages + values).

    Notes
    -----
    Three conventions have no value of a time limit's final observation,
    :math:`V(s_{t+1})`, and declare an approximation: ``"cleanrl"`` and
    ``"purejaxrl"`` pass a time limit as done and cut it like a termination;
    ``"value_bootstrap"`` (RSL-RL, Isaac Lab, rl_games' ``value_bootstrap``,
    skrl's ``time_limit_bootstrap``) adds :math:`\gamma V(s_t)`, the value of
    the state the step started from, to the reward of a time-out step
    (``time_outs[t] = 1``; a step that also terminates is passed as a
    termination alone) and then cuts it. Their reference is that arithmetic,
    ``gae.truncation_bootstrapped`` is not run, and the report's warning
    measures what the approximation costs on the drawn rollouts: the largest
    change of the advantages against the exact bootstrap from
    :math:`V(s_{t+1})`.

    Examples
    --------
    >>> from refpg.conformance import check_gae
    >>> from refpg.returns import gae
    >>> check_gae(gae, max_examples=20).passed
    True
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(GAE_CONVENTIONS))
    if convention not in _OWN_CONVENTIONS:
        return _check_layout(fn, convention=convention, backend=backend, dtype=dtype, max_examples=max_examples,
                             seed=seed, returns=returns, output=output, whiten=whiten, whiten_ddof=whiten_ddof,
                             whiten_eps=whiten_eps, whiten_eps_on=whiten_eps_on, **options)
    if options:
        raise InvalidInputError(f"unknown option{'s' if len(options) > 1 else ''} {sorted(options)} for convention "
                                f"{convention!r}: the options of check_gae are returns, output, whiten, "
                                f"whiten_ddof, whiten_eps and whiten_eps_on")
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    form = _form_of(convention, returns, output, whiten, whiten_ddof, whiten_eps, whiten_eps_on)
    # Every convention, the layouts' too, so that a function of another layout is named as such.
    named = check_signature(fn, "gae", convention, convention_parameters(GAE_CONVENTIONS))

    def probe_case(be):
        return _round({"rewards": np.array([[1.0], [0.0]]), "values": np.array([[0.5], [0.25]]),
                       "next_values": np.array([[0.25], [1.0]]), "terminated": np.zeros((2, 1), bool),
                       "truncated": np.zeros((2, 1), bool), "gamma": 0.9, "lam": 0.95,
                       "start": np.zeros(1, bool)}, be)

    def probe(be):
        probe_session = Session("gae", fn, convention, be, max_examples=1, seed=seed, options={})
        _run(probe_session, probe_case(be), convention, form)
        # The first call that raised, whose error `resolve_backend` may show; True if none did.
        return probe_session.first_error or True

    be, warnings = resolve_backend(fn, backend, dtype, probe)
    if convention not in ("torchrl", "rlax"):
        _refuse_undeclared_output(Session("gae", fn, convention, be, max_examples=1, seed=seed, options={}),
                                  probe_case(be), convention, form)
    shown = {"returns": True} if returns else {"output": ",".join(form.order)} if form.order != ("advantages",) \
        else {}
    if form.whiten:
        shown.update(whiten=True, whiten_ddof=form.ddof, whiten_eps=form.eps, whiten_eps_on=form.eps_on)
    session = Session("gae", fn, convention, be, max_examples=max_examples, seed=seed, options=shown,
                      warnings=named + warnings)
    jax = be.name == "jax"
    sizes = _JAX_SIZES if jax else None
    cost = {"max": 0.0, "n": 0}

    def why(check_id):
        parts = [_HINTS[check_id], _CONVENTION_HINTS.get((convention, check_id), "")]
        if form.whiten:
            parts.append(f"both {form.describe()}")
        return "; ".join(p for p in parts if p)

    def value_scenario(check_id):
        def evaluate(case):
            case = _round(case, be)
            adv, outcomes, inputs, ret = _run(session, case, convention, form, pad=jax)
            if adv is not None:
                raw = _expected(case, convention)
                if convention in _APPROXIMATE and case["truncated"].any():
                    exact = _expected(case, "refpg")
                    cost["max"] = max(cost["max"], float(np.max(np.abs(exact - raw))))
                    cost["n"] += 1
                bad = session.compare(check_id, "advantages", adv, form.whitened(raw), inputs,
                                      scale=form.scale(raw, case), why=why(check_id))
                if bad is not None:
                    outcomes.append(bad)
                if ret is not None:
                    outcomes += _returns_outcomes(session, ret, raw, adv, case["values"], inputs, form)
            return outcomes
        return evaluate

    def evaluate_split(case):
        case = _round(case, be)
        whole, outcomes, inputs, _ = _run(session, case, convention, form, pad=jax)
        if whole is None:
            return outcomes
        T = whole.shape[0]
        pieces = np.empty_like(whole)
        alone = np.empty_like(whole)  # the reference of each episode alone
        parts = []
        for n in range(whole.shape[1]):
            for a, b in _segments(case, n):
                sub, fill = _sub_case(case, n, a, b, pad_to=T if jax else None)
                part, more, part_inputs, _ = _run(session, sub, convention, form, pad=jax)
                if part is None:
                    return outcomes + more
                pieces[a:b, n] = part[fill:, 0]
                alone[a:b, n] = _expected(_sub_case(case, n, a, b)[0], convention)[:, 0]
                label = f"episode of column {n}, rows {a}..{b - 1} alone" + (
                    f" (after {fill} filler rows, the last terminated: the jax backend's fixed shapes)"
                    if fill else "")
                parts.append((label, part_inputs, part))
        bad = session.compare("gae.no_flow_across_episodes", "advantages", whole, pieces, inputs,
                              why=_split_cause(session, whole, pieces, alone, _expected(case, convention)))
        if bad is not None:
            bad.parts = tuple(parts)
            outcomes.append(bad)
        return outcomes

    session.declare(*session.generic_ids())
    if form.returns:
        session.declare("gae.returns", tracked=True)
    # (check id, episode structure, evaluate): shrinking keeps a case within its structure (a
    # counterexample of no_flow_across_episodes keeps an episode boundary, say).
    # Every value check is listed, in this order, even one this convention or an earlier failure skips.
    value_order = ("gae.recursion", "gae.terminal_not_bootstrapped", "gae.truncation_bootstrapped",
                   "gae.no_flow_across_episodes", "gae.general")
    session.declare(*value_order, tracked=True)
    if convention in _APPROXIMATE:
        session.not_run_because("gae.truncation_bootstrapped", _NO_FINAL_VALUE[convention] + ": see the "
                                "warning for its cost", by_design=True)
    if form.whiten:
        session.not_run_because("gae.no_flow_across_episodes",
                                "whiten=True: an episode alone is whitened by its own mean and std, so it "
                                "cannot equal its rows of the whole rollout; the value checks compare the "
                                "whole rollout with the whitened reference instead", by_design=True)

    def strategy(flags, **kwargs):
        return _cases.rollouts(flags=flags, min_size=form.min_size, sizes=sizes, **kwargs)

    def moves(flags, move_sizes=sizes):
        return lambda case: _cases.rollout_moves(case, flags=flags, min_size=form.min_size, sizes=move_sizes)

    scenarios = [("gae.recursion", "none", value_scenario("gae.recursion")),
                 ("gae.terminal_not_bootstrapped", "terminal", value_scenario("gae.terminal_not_bootstrapped"))]
    if convention not in _APPROXIMATE:
        truncation = value_scenario("gae.truncation_bootstrapped")
        scenarios.append(("gae.truncation_bootstrapped", "truncation_end", truncation))
        scenarios.append(("gae.truncation_bootstrapped", "truncation_mid", truncation))
    if convention == "rlax":
        session.not_run_because("gae.no_flow_across_episodes",
                                "rlax's GAE takes one trajectory: its adapter calls the function once per "
                                "episode, so nothing can flow across episodes", by_design=True)
    elif not form.whiten:
        scenarios.append(("gae.no_flow_across_episodes", "boundaries", evaluate_split))
    for check_id, flags, evaluate in scenarios:
        session.run_scenario(strategy(flags), evaluate, (check_id,), moves=moves(flags))
    if not session.catch_all_blocked("gae.general", value_order[:-1], "a catch-all over all flags mixed"):
        session.run_scenario(strategy("any"), value_scenario("gae.general"), ("gae.general",), moves=moves("any"))
        # Long rollouts of many environments: a bug in a window, or in environments past the third.
        # rlax is called per column and episode, so its long rollouts need length, not columns.
        long = dict(sizes=_JAX_LONG_SIZES if convention != "rlax" else ((64,), (1,))) if jax else \
            dict(max_T=64, max_N=8)
        session.run_scenario(_cases.rollouts(flags="any", min_size=form.min_size, **long),
                             value_scenario("gae.general"), ("gae.general",),
                             moves=moves("any", _JAX_LONG_MOVES if jax else None),
                             max_examples=max(1, max_examples // 5))
    if convention in _APPROXIMATE:
        extra = _approximation_cost(be, convention, max_examples, seed) if cost["n"] == 0 else cost["max"]
        session.warn(_COST_WARNINGS[convention].format(extra=extra))
    return session.report()


#: Why a convention cannot express ``gae.truncation_bootstrapped``.
_NO_FINAL_VALUE = {
    "cleanrl": "cleanrl has no truncation flag (a time limit is passed as done)",
    "purejaxrl": "purejaxrl has no truncation flag (a time limit is passed as done)",
    "value_bootstrap": "value_bootstrap has no value of a time limit's final observation (a time-out "
                       "bootstraps from values[t], the state the step started from)",
}

_COST_WARNINGS = {
    "cleanrl": "convention 'cleanrl' has no truncation flag: a time-limit truncation is passed as done and "
               "treated as a termination, so the last delta of a truncated episode loses gamma * V(final "
               "observation), and every advantage before it its discounted share; on the rollouts drawn "
               "here that changed advantages by up to {extra:.3g}. gae.truncation_bootstrapped was not run",
    "purejaxrl": "convention 'purejaxrl' has no truncation flag: dones[t] is True when the episode ended at "
                 "step t for either reason, so a time-limit truncation is treated as a termination and the "
                 "last delta of a truncated episode loses gamma * V(final observation), and every advantage "
                 "before it its discounted share; on the rollouts drawn here that changed advantages by up to "
                 "{extra:.3g}. gae.truncation_bootstrapped was not run",
    "value_bootstrap": "convention 'value_bootstrap' bootstraps a time-out from the value of the state the "
                       "step started from: gamma * V(s_t) is added to its reward and the step is cut like a "
                       "termination, where the exact bootstrap is gamma * V(s_{{t+1}}) of the final "
                       "observation; on the rollouts drawn here that approximation changed advantages by up "
                       "to {extra:.3g} against the exact bootstrap. gae.truncation_bootstrapped was not run",
}


def _split_cause(session, whole, pieces, alone, reference) -> str:
    """Why the rollout and its episodes disagree: flow across a boundary (each episode alone is right, the
    rollout is not), the function's own output on an episode alone (the rollout is right), or both."""
    tol = session.backend.tol

    def wrong(actual, expected):
        return bool(np.any(np.abs(actual - expected) > tol * (1.0 + np.max(np.abs(expected), initial=0.0))))

    whole_wrong, alone_wrong = wrong(whole, reference), wrong(pieces, alone)
    flow = ("flow across the boundary: expected is the function's own output for each episode alone, which "
            "is right, and the whole rollout's rows before a boundary depend on the rows after it. Either "
            "A_{t+1} flows across the boundary (the propagation must stop at terminated OR truncated), or the "
            "boundary's delta reads values[t + 1] (the next episode's first state) instead of next_values[t]")
    own = ("the function's own output on an episode alone is wrong against the reference, while the whole "
           "rollout is right: the episode's last row, now the last row of a rollout, is handled wrongly there "
           "(a termination or truncation at the end: next_values / last_values / next_done)")
    if whole_wrong and not alone_wrong:
        return flow
    if alone_wrong and not whole_wrong:
        return own
    if whole_wrong and alone_wrong:
        return ("both the whole rollout and an episode alone are wrong against the reference: expected is the "
                "function's own output for each episode alone; the rows before a boundary depend on the rows "
                "after it, and the last row of a rollout is handled wrongly too")
    return "expected is the function's own output for each episode alone"


def _approximation_cost(be, convention, max_examples, seed) -> float:
    """Largest change of the advantages between the exact bootstrap and `convention`'s approximation of
    a time limit, over rollouts with truncations."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample
    import random

    worst = [0.0]

    def measure(case):
        case = _round(case, be)
        worst[0] = max(worst[0], float(np.max(np.abs(_expected(case, "refpg") - _expected(case, convention)))))
        return False
    try:
        find(_cases.rollouts(flags="truncation_end"), measure,
             settings=settings(max_examples=max_examples, phases=[Phase.generate], database=None,
                               suppress_health_check=list(HealthCheck)), random=random.Random(seed))
    except NoSuchExample:
        pass
    return worst[0]


def _check_layout(fn, *, convention, returns, output, whiten, whiten_ddof, whiten_eps, whiten_eps_on, **kwargs):
    """Hand a `gae_layouts` convention over to its own check, with the options set away from their defaults."""
    from refpg.conformance import gae_layouts

    # output=None is "the convention's own default" (the pair there), so any output given is passed on.
    defaults = {"returns": False, "output": None, "whiten": False, "whiten_ddof": 1, "whiten_eps": 1e-8,
                "whiten_eps_on": "std"}
    given = {"returns": returns, "output": output, "whiten": whiten, "whiten_ddof": whiten_ddof,
             "whiten_eps": whiten_eps, "whiten_eps_on": whiten_eps_on}
    kwargs.update({k: v for k, v in given.items() if not _same(v, defaults[k])})
    return gae_layouts.check_layout(fn, convention=convention, **kwargs)


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _layout_conventions() -> dict:
    """The conventions of `refpg.conformance.gae_layouts`, if that module exists."""
    try:
        from refpg.conformance import gae_layouts
    except ModuleNotFoundError as exc:
        if exc.name == "refpg.conformance.gae_layouts":
            return {}
        raise
    return {k: v for k, v in getattr(gae_layouts, "LAYOUT_CONVENTIONS", {}).items() if k not in _OWN_CONVENTIONS}


GAE_CONVENTIONS.update(_layout_conventions())

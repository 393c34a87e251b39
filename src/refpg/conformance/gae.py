r"""`check_gae`: a user's generalised advantage estimator against `refpg.returns.gae`.

The canonical form (convention ``"refpg"``, docs/conventions.md), per transition t
of a time-major (T, N) rollout:

.. math::
    \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V(s_{t+1}) - V(s_t), \qquad
    \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{terminated}_t)(1 - \mathrm{truncated}_t) \hat A_{t+1}

[Schulman2016]. The other conventions are adapters that turn the same
rollout into the arguments a library's GAE takes, and its output back.
"""

from __future__ import annotations

import numpy as np

from refpg._validation import check_choice, check_positive_int
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, _shape_of, check_callable,
                                        check_signature, convention_parameters, resolve_backend)
from refpg.conformance.report import Report
from refpg.returns import gae as reference_gae
from refpg.errors import InvalidInputError

__all__ = ["check_gae", "GAE_CONVENTIONS"]

#: Convention -> the signature the user's function has.
GAE_CONVENTIONS = {
    "refpg": "fn(rewards, values, next_values, terminated, truncated, gamma, lam) -> advantages (T, N)",
    "sb3": "fn(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda) -> advantages (T, N)",
    "cleanrl": "fn(rewards, values, dones, next_value, next_done, gamma, gae_lambda) -> advantages (T, N)",
    "torchrl": "fn(gamma, lmbda, state_value, next_state_value, reward, done, terminated) -> advantage "
               "(N, T, 1) or (advantage, value_target)",
    "rlax": "fn(r_t, discount_t, lambda_, values) -> advantages (T,), one trajectory, values (T + 1,)",
}

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


def _refuse_undeclared_output(session, case, convention, returns) -> None:
    """Stop before drawing a case if the function returns (advantages, returns) undeclared, or the reverse.

    Every one of the several hundred calls would otherwise fail `gae.output_shape`
    for the same reason; one call on a tiny rollout tells.
    """
    call = session.call(_args(case, convention))
    raw = call.output
    shape = case["rewards"].shape
    if call.error is not None:
        return  # the check itself reports the error, with its traceback
    if returns and not isinstance(raw, (tuple, list)) and _shape_of(raw) == shape:
        raise InvalidInputError(
            f"returns=True declares that the function returns (advantages, returns), but it returned one "
            f"array of the advantages' shape {shape}: return both, or leave out returns=True (refpg check: "
            f"drop --option returns=true). The check drew no case")
    if not returns and isinstance(raw, (tuple, list)) and len(raw) == 2 \
            and all(_shape_of(x) == shape for x in raw):
        raise InvalidInputError(
            f"the function returned a pair of arrays of the advantages' shape {shape} where one array of "
            f"advantages belongs: if it returns (advantages, returns), as SB3 and CleanRL compute both, pass "
            f"returns=True (refpg check: --option returns=true) to check the returns too. The check drew "
            f"no case")


def _round(case, backend) -> dict:
    out = dict(case)
    for key in ("rewards", "values", "next_values"):
        out[key] = backend.round(case[key])
    return out


def _expected(case, convention) -> np.ndarray:
    term, trunc = case["terminated"], case["truncated"]
    if convention == "cleanrl":  # no truncation flag: a time limit is a termination
        term, trunc = term | trunc, np.zeros_like(trunc)
    return reference_gae(case["rewards"], case["values"], case["next_values"], term, trunc,
                         case["gamma"], case["lam"])


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
    raise AssertionError(convention)  # pragma: no cover


def _segments(case, n: int) -> list:
    """[a, b) row ranges of the episodes (pieces of episodes) in column n."""
    done = case["terminated"][:, n] | case["truncated"][:, n]
    T = done.shape[0]
    cuts = [t + 1 for t in range(T - 1) if done[t]]
    bounds = [0, *cuts, T]
    return list(zip(bounds[:-1], bounds[1:]))


def _sub_case(case, n: int, a: int, b: int) -> dict:
    sub = {k: case[k][a:b, n:n + 1].copy() for k in ("rewards", "values", "next_values", "terminated",
                                                     "truncated")}
    sub.update(gamma=case["gamma"], lam=case["lam"], start=np.ones(1, dtype=bool))
    return sub


def _run(session: Session, case: dict, convention: str, returns: bool = False):
    """Call the user's function on `case`: (advantages (T, N) float64 or None, outcomes, inputs,
    returns (T, N) float64 or None). With `returns`, the function returns (advantages, returns)."""
    T, N = case["rewards"].shape
    if convention == "rlax":
        return (*_run_rlax(session, case), None)
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
    if returns:
        if not pair:
            kind = f"a {type(raw).__name__} of {len(raw)} items" if isinstance(raw, (tuple, list)) else \
                f"one {type(raw).__name__}"
            return None, outcomes + [Outcome(
                "gae.output_shape", f"the function should return a pair (advantages, returns) (returns=True), "
                                    f"actual {kind}", inputs)], inputs, None
        raw, ret_raw = raw
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
                                f"returns=True) to check the returns too", inputs)], inputs, None
    adv, more = session.output_array(raw, what, shape, inputs)
    if torchrl:
        adv = None if adv is None else adv[:, :, 0].T
        ret = None if ret is None else ret[:, :, 0].T
    return adv, outcomes + more, inputs, ret


def _returns_outcomes(session: Session, ret, expected_adv, adv, values, inputs) -> list:
    """``gae.returns``: the returns against the exact advantages + values."""
    bad = session.compare("gae.returns", "returns", ret, expected_adv + values, inputs,
                          why="returns = advantages + values (the targets the value function is fitted to, "
                              "as SB3 and CleanRL compute them)")
    if bad is None:
        return []
    if np.all(np.abs(ret - (adv + values)) <= session.backend.tol * (1.0 + np.abs(adv) + np.abs(values))):
        bad.message += "; they are the function's own advantages + values: only the advantages are wrong"
    return [bad]


def _run_rlax(session: Session, case: dict):
    """rlax's GAE is one trajectory with values of length T + 1: one call per episode piece."""
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
            args = [("r_t", r), ("discount_t", discount), ("lambda_", case["lam"]), ("values", values)]
            calls.append(f"column {n}, rows {a}..{b - 1}")
            call = session.call(args)
            call_inputs = {**{name: val for name, val in args}, "(segment of)": f"column {n}, rows {a}..{b - 1}"}
            outcomes += session.generic_outcomes(call, call_inputs)
            if call.error is not None:
                return None, outcomes, call_inputs
            part, more = session.output_array(call.output, "advantages", (b - a,), call_inputs)
            outcomes += more
            if part is None:
                return None, outcomes, call_inputs
            adv[a:b, n] = part
    inputs["rlax calls"] = "; ".join(calls)
    return adv, outcomes, inputs


# -- the check ---------------------------------------------------------------------

@numerics_of_their_own
def check_gae(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
              max_examples: int = 100, seed: int = 0, returns: bool = False) -> Report:
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
    convention : {"refpg", "sb3", "cleanrl", "torchrl", "rlax"}
    backend : {"auto", "numpy", "torch"}
        Arrays are passed as NumPy arrays or torch tensors; ``"auto"`` tries
        NumPy first and falls back to torch if the function raises on NumPy.
        If it raises on both, torch is chosen when the NumPy error asks for a
        Tensor, and the report warns with both errors.
    dtype : {"float64", "float32"}
        Float dtype of the inputs; the tolerance follows (1e-9 or 1e-4, relative).
    max_examples : int
        Rollouts drawn per scenario (T <= 8 steps, N <= 3 environments; a
        fifth as many of up to 64 x 8).
    seed : int
        Seed of the search; the same seed gives the same report.
    returns : bool
        The function returns the pair ``(advantages, returns)``, as SB3's
        ``compute_returns_and_advantage`` and CleanRL compute both (TorchRL:
        ``(advantage, value_target)``); the returns are checked too,
        :math:`R_t = \hat A_t + V(s_t)` with ``values`` as passed. Not for
        ``"rlax"``. CLI: ``--option returns=True``.

    Returns
    -------
    Report
        Check ids: ``gae.recursion`` (no episode boundary),
        ``gae.terminal_not_bootstrapped``, ``gae.truncation_bootstrapped``
        (a time limit at the last row, or anywhere with lambda = 0),
        ``gae.no_flow_across_episodes`` (the
        result for a rollout equals the results for its episodes computed
        separately), ``gae.general`` (all flags mixed), plus ``gae.raised``,
        ``gae.output_shape``, ``gae.output_dtype``, ``gae.output_finite`` and
        ``gae.input_mutated``; with `returns`, ``gae.returns`` (the returns on
        every case of the value checks, against the exact advantages + values).

    Notes
    -----
    CleanRL's convention has no truncation flag: a truncation is a
    termination there. Its reference treats it so, ``gae.truncation_bootstrapped``
    is not run, and the report's warning measures what that costs on the
    drawn rollouts.

    Examples
    --------
    >>> from refpg.conformance import check_gae
    >>> from refpg.returns import gae
    >>> check_gae(gae, max_examples=20).passed
    True
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(GAE_CONVENTIONS))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    if not isinstance(returns, (bool, np.bool_)):
        raise InvalidInputError(f"returns should be True or False, actual {returns!r}")
    returns = bool(returns)
    if returns and convention == "rlax":
        raise InvalidInputError("convention 'rlax' returns advantages only (rlax's truncated_generalized_"
                                "advantage_estimation); returns should be False")
    named = check_signature(fn, "gae", convention, convention_parameters(GAE_CONVENTIONS))

    def probe_case(be):
        return _round({"rewards": np.array([[1.0], [0.0]]), "values": np.array([[0.5], [0.25]]),
                       "next_values": np.array([[0.25], [1.0]]), "terminated": np.zeros((2, 1), bool),
                       "truncated": np.zeros((2, 1), bool), "gamma": 0.9, "lam": 0.95,
                       "start": np.zeros(1, bool)}, be)

    def probe(be):
        probe_session = Session("gae", fn, convention, be, max_examples=1, seed=seed, options={})
        _run(probe_session, probe_case(be), convention, returns)
        # The first call that raised, whose error `resolve_backend` may show; True if none did.
        return probe_session.first_error or True

    be, warnings = resolve_backend(fn, backend, dtype, probe)
    if convention not in ("torchrl", "rlax"):
        _refuse_undeclared_output(Session("gae", fn, convention, be, max_examples=1, seed=seed, options={}),
                                  probe_case(be), convention, returns)
    session = Session("gae", fn, convention, be, max_examples=max_examples, seed=seed,
                      options={"returns": True} if returns else {}, warnings=named + warnings)
    cost = {"max": 0.0, "n": 0}

    def value_scenario(check_id):
        def evaluate(case):
            case = _round(case, be)
            adv, outcomes, inputs, ret = _run(session, case, convention, returns)
            if adv is not None:
                expected = _expected(case, convention)
                if convention == "cleanrl" and case["truncated"].any():
                    exact = _expected(case, "refpg")
                    cost["max"] = max(cost["max"], float(np.max(np.abs(exact - expected))))
                    cost["n"] += 1
                bad = session.compare(check_id, "advantages", adv, expected, inputs, why=_HINTS[check_id])
                if bad is not None:
                    outcomes.append(bad)
                if ret is not None:
                    outcomes += _returns_outcomes(session, ret, expected, adv, case["values"], inputs)
            return outcomes
        return evaluate

    def evaluate_split(case):
        case = _round(case, be)
        whole, outcomes, inputs, _ = _run(session, case, convention, returns)
        if whole is None:
            return outcomes
        pieces = np.empty_like(whole)
        parts = []
        for n in range(whole.shape[1]):
            for a, b in _segments(case, n):
                part, more, part_inputs, _ = _run(session, _sub_case(case, n, a, b), convention, returns)
                if part is None:
                    return outcomes + more
                pieces[a:b, n] = part[:, 0]
                parts.append((f"episode of column {n}, rows {a}..{b - 1} alone", part_inputs, part))
        bad = session.compare("gae.no_flow_across_episodes", "advantages", whole, pieces, inputs,
                              why="expected is the function's own output for each episode alone: rows "
                                  "before an episode boundary must not depend on the rows after it. Either "
                                  "A_{t+1} flows across the boundary (the propagation must stop at "
                                  "terminated OR truncated), or the boundary's delta reads values[t + 1] "
                                  "(the next episode's first state) instead of next_values[t]")
        if bad is not None:
            bad.parts = tuple(parts)
            outcomes.append(bad)
        return outcomes

    session.declare(*session.generic_ids())
    if returns:
        session.declare("gae.returns", tracked=True)
    # (check id, episode structure, evaluate): shrinking keeps a case within its structure (a
    # counterexample of no_flow_across_episodes keeps an episode boundary, say).
    # Every value check is listed, in this order, even one this convention or an earlier failure skips.
    value_order = ("gae.recursion", "gae.terminal_not_bootstrapped", "gae.truncation_bootstrapped",
                   "gae.no_flow_across_episodes", "gae.general")
    session.declare(*value_order, tracked=True)
    if convention == "cleanrl":
        session.not_run_because("gae.truncation_bootstrapped",
                                "cleanrl has no truncation flag (a time limit is passed as done): see the "
                                "warning for its cost", by_design=True)
    scenarios = [("gae.recursion", "none", value_scenario("gae.recursion")),
                 ("gae.terminal_not_bootstrapped", "terminal", value_scenario("gae.terminal_not_bootstrapped"))]
    if convention != "cleanrl":
        truncation = value_scenario("gae.truncation_bootstrapped")
        scenarios.append(("gae.truncation_bootstrapped", "truncation_end", truncation))
        scenarios.append(("gae.truncation_bootstrapped", "truncation_mid", truncation))
    scenarios.append(("gae.no_flow_across_episodes", "boundaries", evaluate_split))
    for check_id, flags, evaluate in scenarios:
        session.run_scenario(_cases.rollouts(flags=flags), evaluate, (check_id,),
                             moves=lambda case, flags=flags: _cases.rollout_moves(case, flags=flags))
    specific = [c for c in value_order[:-1] if c in session.failures]
    if specific:  # a catch-all adds nothing to a specific failure
        session.not_run_because("gae.general", f"a catch-all over all flags mixed adds nothing to the specific "
                                               f"failure of {', '.join(specific)}: fix that first")
    else:
        session.run_scenario(_cases.rollouts(flags="any"), value_scenario("gae.general"), ("gae.general",),
                             moves=_cases.rollout_moves)
        # Long rollouts of many environments: a bug in a window, or in environments past the third.
        session.run_scenario(_cases.rollouts(flags="any", max_T=64, max_N=8), value_scenario("gae.general"),
                             ("gae.general",), moves=_cases.rollout_moves,
                             max_examples=max(1, max_examples // 5))
    if convention == "cleanrl":
        extra = _cleanrl_cost(session, be, max_examples, seed) if cost["n"] == 0 else cost["max"]
        session.warn("convention 'cleanrl' has no truncation flag: a time-limit truncation is passed as "
                     "done and treated as a termination, so the last delta of a truncated episode loses "
                     f"gamma * V(final observation), and every advantage before it its discounted share; "
                     f"on the rollouts drawn here that changed advantages by up to {extra:.3g}. "
                     "gae.truncation_bootstrapped was not run")
    return session.report()


def _cleanrl_cost(session, be, max_examples, seed) -> float:
    """Largest change of the exact advantages when truncation is treated as termination."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample
    import random

    worst = [0.0]

    def measure(case):
        case = _round(case, be)
        worst[0] = max(worst[0], float(np.max(np.abs(_expected(case, "refpg") - _expected(case, "cleanrl")))))
        return False
    try:
        find(_cases.rollouts(flags="truncation_end"), measure,
             settings=settings(max_examples=max_examples, phases=[Phase.generate], database=None,
                               suppress_health_check=list(HealthCheck)), random=random.Random(seed))
    except NoSuchExample:
        pass
    return worst[0]


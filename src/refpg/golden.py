"""Golden outputs: a versioned, language-neutral reference data set.

Each case is one JSON file, ``golden/<case>.json``, holding its inputs in
full (P, r, rho, gamma, terminal, the policy, theta and a stored sample
batch), every output refpg computes from them, and a tolerance per output
field. `check` rebuilds each case from the file's own inputs (never from
`CASES`), recomputes every output with the current code and compares.

Numbers come from refpg's exact (dense linear-algebra) routines; two
cases are also confirmed by routes that share no code with refpg: the
two-state closed form (Cramer's rule) and torch autograd on Garnets.
See ``golden/README.md`` for the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["CASES", "Case", "CaseOutputs", "FieldCheck", "CheckReport", "SCHEMA_VERSION", "generate_case",
           "regenerate", "check", "case_outputs", "schema"]

#: Version of the golden files' JSON layout: written into each file, and the only one golden/schema.json admits.
SCHEMA_VERSION = 2
GENERATED_BY = "refpg golden regenerate"
DENSE_FISHER_MAX_PARAMS = 64

# Settings shared by every case; written into each file's inputs.
GAE_LAMBDA = 0.95
CLIP_EPS = 0.2
TRPO_MAX_KL = 0.01
PPO_EPOCHS = 3
PPO_LR = 0.1
BATCH_ENVS = 4
BATCH_STEPS = 16
BATCH_MAX_EPISODE_STEPS = 8
KL_STEP = 0.05   # theta_kl = theta + KL_STEP * nat / max(1, max|nat|)

# TRPO as the golden files record it: damped CG run to convergence. Damping (as in every TRPO
# implementation) bounds CG's error by residual / damping; an undamped, truncated CG iterate on an
# ill-conditioned Fisher matrix has digits that differ between BLAS kernels (see _golden_bounds).
TRPO_DAMPING = 0.1
TRPO_CG_RTOL = 1e-12
TRPO_CG_MAX_ITERS = 100
# theta_kl's step is rounded to this many decimals, so the input is the same bits on every machine.
KL_STEP_DECIMALS = 8


@dataclass(frozen=True)
class Case:
    """A named golden case: how to build its MDP, policy kind and seed."""

    name: str
    build: Callable
    kind: str                 # "tabular_softmax" or "log_linear"
    seed: int
    n_features: int = 0
    description: str = ""


def _cliff():
    from refpg.envs import from_gymnasium
    return from_gymnasium("CliffWalking-v1")


def _cases():
    from refpg import envs

    specs = [
        ("two_state", lambda: envs.two_state(), "two_state(gamma=0.9)"),
        ("bandit", lambda: envs.bandit([1.0, 0.9, 0.1]), "bandit([1, 0.9, 0.1])"),
        ("chain5", lambda: envs.chain(5), "chain(5)"),
        ("gridworld3x3", lambda: envs.gridworld(3, 3, slip=0.1), "gridworld(3, 3, slip=0.1)"),
        ("frozen_lake4x4", lambda: envs.frozen_lake("4x4"), "frozen_lake('4x4'), slippery"),
        ("cliff_walking", _cliff, "from_gymnasium('CliffWalking-v1')"),
        ("garnet_5_3_2", lambda: envs.garnet(5, 3, 2, seed=0), "garnet(5, 3, 2, seed=0)"),
        ("garnet_8_2_3", lambda: envs.garnet(8, 2, 3, seed=1), "garnet(8, 2, 3, seed=1)"),
        ("garnet_10_4_2", lambda: envs.garnet(10, 4, 2, seed=2), "garnet(10, 4, 2, seed=2)"),
    ]
    loglinear = {"chain5", "garnet_5_3_2", "garnet_8_2_3", "garnet_10_4_2"}
    out = {}
    for i, (base, build, desc) in enumerate(specs):
        name = f"{base}_softmax"
        out[name] = Case(name, build, "tabular_softmax", seed=100 + i, description=desc)
        if base in loglinear:
            name = f"{base}_loglinear"
            out[name] = Case(name, build, "log_linear", seed=200 + i, n_features=4, description=desc)
    return out


#: Registry of golden cases by name.
CASES: dict = _cases()


TOLERANCE_RULE = (
    "Each field's tolerance is atol = 2 B (rounded up to two digits), rtol = 0, where B ('bound') is a "
    "first-order bound on the inf-norm forward error of a float64 computation of that field (basis says "
    "which): two correct computations each lie within B of the exact value, so within 2 B of each other. "
    "Compare |recomputed - stored| <= atol + rtol |stored| entry by entry; flags and sizes exactly.")


# ---------------------------------------------------------------- helpers

def _policy(kind: str, S: int, A: int, features=None):
    from refpg.policies import LogLinear, TabularSoftmax
    if kind == "tabular_softmax":
        return TabularSoftmax(S, A)
    if kind == "log_linear":
        return LogLinear(np.asarray(features, dtype=np.float64))
    raise ValueError(f"policy kind should be 'tabular_softmax' or 'log_linear', actual {kind!r}")


def _mdp_from_inputs(inp):
    from refpg.mdp import TabularMDP
    return TabularMDP(np.asarray(inp["P"], dtype=np.float64), np.asarray(inp["r"], dtype=np.float64),
                      np.asarray(inp["rho"], dtype=np.float64), float(inp["gamma"]),
                      np.asarray(inp["terminal"], dtype=bool))


def _batch_from_inputs(b):
    from refpg.sampling import Batch
    arr = {k: np.asarray(b[k]) for k in ("states", "actions", "next_states", "step")}
    return Batch(states=arr["states"].astype(np.int64), actions=arr["actions"].astype(np.int64),
                 rewards=np.asarray(b["rewards"], dtype=np.float64),
                 next_states=arr["next_states"].astype(np.int64),
                 terminated=np.asarray(b["terminated"], dtype=bool), truncated=np.asarray(b["truncated"], dtype=bool),
                 log_probs=np.asarray(b["logp"], dtype=np.float64), step=arr["step"].astype(np.int64),
                 valid=np.ones(arr["states"].shape, dtype=bool))


def _jsonable(x):
    """Plain Python lists/floats/ints/bools (json writes floats with repr: round-trip exact)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if not np.isfinite(v):
            raise ValueError(f"golden values should be finite, actual {v!r}")
        return v
    return x


def _dumps(obj) -> str:
    return json.dumps(_jsonable(obj), indent=1, sort_keys=True, allow_nan=False) + "\n"


# ---------------------------------------------------------------- inputs

def _make_inputs(case: Case) -> dict:
    import refpg

    mdp = case.build()
    S, A = mdp.n_states, mdp.n_actions
    rng = np.random.default_rng(case.seed)
    features = None
    if case.kind == "log_linear":
        features = rng.normal(size=(S, A, case.n_features))
    pol = _policy(case.kind, S, A, features)
    theta = 0.5 * rng.normal(size=pol.theta_shape)
    pi = pol.probs(theta)
    batch = refpg.sample_steps(mdp, pi, BATCH_ENVS, BATCH_STEPS, rng=rng,
                               max_episode_steps=BATCH_MAX_EPISODE_STEPS)
    nat = refpg.natural_gradient(mdp, pol, theta)
    # Rounded: the unrounded step differs in its last bits between BLAS kernels, an input must not.
    theta_kl = theta + np.round(KL_STEP * nat / max(1.0, float(np.abs(nat).max())), KL_STEP_DECIMALS)
    policy = {"kind": case.kind}
    if features is not None:
        policy["features"] = features
    return {
        "description": case.description,
        "P": mdp.dense_P(), "r": mdp.r, "rho": mdp.rho, "gamma": mdp.gamma, "terminal": mdp.terminal,
        "policy": policy, "theta": theta, "theta_kl": theta_kl,
        "settings": {"gae_lambda": GAE_LAMBDA, "clip_eps": CLIP_EPS, "trpo_max_kl": TRPO_MAX_KL,
                     "trpo_cg_iters": TRPO_CG_MAX_ITERS, "trpo_cg_rtol": TRPO_CG_RTOL,
                     "trpo_damping": TRPO_DAMPING, "trpo_shrink": 0.5, "trpo_max_backtracks": 10,
                     "ppo_epochs": PPO_EPOCHS, "ppo_lr": PPO_LR, "ppo_optimizer": "sgd"},
        "batch": {"states": batch.states, "actions": batch.actions, "rewards": batch.rewards,
                  "next_states": batch.next_states, "terminated": batch.terminated,
                  "truncated": batch.truncated, "logp": batch.log_probs, "step": batch.step,
                  "note": (f"drawn once with refpg.sample_steps(n_envs={BATCH_ENVS}, n_steps={BATCH_STEPS}, "
                           f"max_episode_steps={BATCH_MAX_EPISODE_STEPS}) under pi(theta); time-major (T, N); "
                           "these stored arrays are the input, not the generator")},
    }


# ---------------------------------------------------------------- outputs

class CaseOutputs(NamedTuple):
    """What `case_outputs` computes from a case's inputs."""

    outputs: dict
    tolerances: dict
    notes: list
    solvers: list
    #: Tolerances of the inputs that are float computations themselves (the batch's log pi_old).
    input_tolerances: dict


def case_outputs(inputs: dict) -> CaseOutputs:
    """Every output of a case from its inputs alone, with each field's tolerance and its basis.

    Tolerances are twice a first-order forward-error bound (``refpg._golden_bounds``).
    """
    import refpg
    from refpg import _golden_bounds as gb
    from refpg.algorithms import clipped_surrogate_gradient, ppo_update, trpo_step
    from refpg.algorithms.ppo import PPOSamples
    from refpg.losses import ppo_clip_loss

    mdp = _mdp_from_inputs(inputs)
    S, A = mdp.n_states, mdp.n_actions
    features = inputs["policy"].get("features")
    pol = _policy(inputs["policy"]["kind"], S, A, features)
    tabular = inputs["policy"]["kind"] == "tabular_softmax"
    theta = np.asarray(inputs["theta"], dtype=np.float64)
    theta_kl = np.asarray(inputs["theta_kl"], dtype=np.float64)
    cfg = inputs["settings"]
    gamma = mdp.gamma
    out, notes, solvers = {}, [], []

    pi = pol.probs(theta)
    ev = refpg.evaluate(mdp, pi)
    for k in ("V", "Q", "A", "d"):
        out[k] = getattr(ev, k)
    out["J"] = ev.J
    out["pi"] = pi
    out["policy_gradient"] = refpg.policy_gradient(mdp, pol, theta, evaluation=ev)
    F = refpg.fisher_matrix(mdp, pol, theta, evaluation=ev)
    if pol.n_params <= DENSE_FISHER_MAX_PARAMS:
        out["fisher"] = F
    else:
        notes.append(f"fisher omitted: n_params = {pol.n_params} > {DENSE_FISHER_MAX_PARAMS}")
    out["natural_gradient"] = refpg.natural_gradient(mdp, pol, theta, evaluation=ev)
    model = gb.ErrorModel.build(mdp, pol, theta, ev, None if tabular else np.asarray(features, dtype=np.float64))
    tol = model.exact_tolerances(model.natural_gradient_bound(F, out["natural_gradient"], tabular))
    if "fisher" not in out:
        del tol["fisher"]
    solvers.append({"field": "natural_gradient", "method": (
        "closed form (A - mean_a A)/(1 - gamma) on states with d > 0, 0 elsewhere" if tabular else
        "minimum-norm least squares F x = g (LAPACK gelsd via scipy.linalg.lstsq, cond = n_params * eps)")})

    damping, cg_rtol = float(cfg["trpo_damping"]), float(cfg["trpo_cg_rtol"])
    tr = trpo_step(mdp, pol, theta, max_kl=cfg["trpo_max_kl"], mode="exact", cg_iters=cfg["trpo_cg_iters"],
                   cg_rtol=cg_rtol, damping=damping, shrink=cfg["trpo_shrink"],
                   max_backtracks=cfg["trpo_max_backtracks"])
    out["trpo"] = {
        "direction": tr.direction, "beta": tr.beta,
        "line_search": [{"fraction": t.fraction, "improvement": t.improvement, "kl": t.kl,
                         "accepted": t.accepted} for t in tr.line_search],
        "kl": tr.kl, "surrogate_improvement": tr.surrogate_improvement, "theta_new": tr.theta,
    }
    tol.update(gb.trpo_tolerances(model, mdp, pol, theta, F, tr, damping=damping, cg_rtol=cg_rtol,
                                  max_kl=cfg["trpo_max_kl"]))
    g_norm = float(np.linalg.norm(tr.gradient))
    solvers.append({"field": "trpo.direction", "method": (
        f"conjugate gradient from x = 0 on (F + {damping:g} I) x = g (F the exact Fisher matrix under d, "
        f"g the exact policy gradient), stopped at the first iterate with ||g - (F + {damping:g} I) x||_2 "
        f"<= {cg_rtol:g} ||g||_2 (residual recomputed from x at every step)"),
        "iterations": int(tr.cg.iterations), "converged": bool(tr.cg.converged),
        "relative_residual": float(tr.cg.residual_norms[-1]) / g_norm if g_norm > 0 else 0.0})

    pp = ppo_update(mdp, pol, theta, mode="exact", clip_eps=cfg["clip_eps"], epochs=cfg["ppo_epochs"],
                    optimizer=cfg["ppo_optimizer"], lr=cfg["ppo_lr"])
    out["ppo"] = {"theta": pp.theta, "objective": [e.objective for e in pp.history]}
    tol.update(gb.ppo_tolerances(model, mdp, pol, theta, ev, pp, clip_eps=cfg["clip_eps"], lr=cfg["ppo_lr"],
                                 tabular=tabular))

    b = _batch_from_inputs(inputs["batch"])
    V = ev.V
    values, next_values = V[b.states], V[b.next_states]
    adv = refpg.gae(b.rewards, values, next_values, b.terminated, b.truncated, gamma, cfg["gae_lambda"])
    logp_new = pol.log_probs(theta_kl)[b.states, b.actions]
    samples = PPOSamples(b.states.ravel(), b.actions.ravel(), b.log_probs.ravel(), adv.ravel())
    bo = {
        "returns": refpg.discounted_returns(b.rewards, b.terminated, b.truncated, gamma),
        "gae": adv,
        "k1": refpg.kl_k1(logp_new, b.log_probs),
        "k2": refpg.kl_k2(logp_new, b.log_probs),
        "k3": refpg.kl_k3(logp_new, b.log_probs),
        "ppo_clip_loss": ppo_clip_loss(logp_new, b.log_probs, adv, cfg["clip_eps"]),
        "clipped_surrogate_gradient": clipped_surrogate_gradient(pol, theta_kl, samples, cfg["clip_eps"]),
    }
    est = refpg.reinforce_estimates(pol, theta, b, gamma)
    if est.shape[0]:
        bo["reinforce_mean"] = est.mean(axis=0)
        bo["reinforce_n_episodes"] = int(est.shape[0])
    else:
        notes.append("reinforce_mean omitted: the batch holds no complete episode")
    out["batch"] = bo
    tol.update(gb.batch_tolerances(model, pol, theta_kl, b, gamma, bo, cfg["clip_eps"]))
    in_tol = {"batch.logp": gb.tolerance(model.e_logpi, "log pi_old(a|s) as the collector records it: "
                                                        "log-softmax of the logits, 2 e_logits + (A+4) u + u |log pi|")}
    return CaseOutputs(_jsonable(out), tol, notes, solvers, in_tol)


# ---------------------------------------------------------------- independent checks

def _two_state_closed_form(p: float, q: float, gamma: float):
    """V and d of `refpg.envs.two_state` by Cramer's rule on 2x2 systems (no refpg code)."""
    # (I - gamma P_pi) V = r_pi with P_pi = [[p, 1-p], [1-q, q]], r_pi = [p, 2q].
    a11, a12, a21, a22 = 1 - gamma * p, -gamma * (1 - p), -gamma * (1 - q), 1 - gamma * q
    b1, b2 = p, 2 * q
    det = a11 * a22 - a12 * a21
    V = np.array([(b1 * a22 - a12 * b2) / det, (a11 * b2 - b1 * a21) / det])
    # (I - gamma P_pi)^T d = (1 - gamma) rho, rho = [1, 0].
    c1, c2 = 1 - gamma, 0.0
    d = np.array([(c1 * a22 - a21 * c2) / det, (a11 * c2 - c1 * a12) / det])
    return V, d


def _torch_J_grad(inputs):
    """J and dJ/dtheta by torch.linalg.solve + autograd (no refpg code)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("golden regenerate needs torch for the independent Garnet check "
                          "(pip install 'refpg[torch]')") from exc
    P = torch.tensor(inputs["P"], dtype=torch.float64)
    r = torch.tensor(inputs["r"], dtype=torch.float64)
    rho = torch.tensor(inputs["rho"], dtype=torch.float64)
    gamma = float(inputs["gamma"])
    theta = torch.tensor(inputs["theta"], dtype=torch.float64, requires_grad=True)
    if inputs["policy"]["kind"] == "log_linear":
        logits = torch.tensor(inputs["policy"]["features"], dtype=torch.float64) @ theta
    else:
        logits = theta
    pi = torch.softmax(logits, dim=-1)
    P_pi = torch.einsum("sat,sa->st", P, pi)
    r_pi = (pi * r).sum(-1)
    V = torch.linalg.solve(torch.eye(P.shape[0], dtype=torch.float64) - gamma * P_pi, r_pi)
    J = rho @ V
    J.backward()
    return float(J.detach()), theta.grad.numpy().copy()


def _independent_checks(name: str, inputs: dict, outputs: dict, tolerances: dict) -> list:
    """Fields recomputed by routes that share no code with refpg; each must agree within the field's atol.

    Another correct float64 computation is exactly what a field's tolerance is for, so these
    checks also test the error bounds behind the tolerances.
    """
    checks = []
    if name == "two_state_softmax":
        pi = np.asarray(outputs["pi"])
        V, d = _two_state_closed_form(pi[0, 0], pi[1, 0], float(inputs["gamma"]))
        for field, val in (("V", V), ("d", d)):
            diff = float(np.abs(np.asarray(outputs[field]) - val).max())
            checks.append({"field": field, "method": "closed form by Cramer's rule on the 2x2 Bellman "
                           "and occupancy systems (refpg.golden._two_state_closed_form)", "max_abs_diff": diff})
    if name.startswith("garnet"):
        J, g = _torch_J_grad(inputs)
        method = "torch.linalg.solve on (I - gamma P_pi) V = r_pi, J = rho . V, torch autograd backward"
        checks.append({"field": "J", "method": method, "max_abs_diff": abs(J - outputs["J"])})
        checks.append({"field": "policy_gradient", "method": method,
                       "max_abs_diff": float(np.abs(g - np.asarray(outputs["policy_gradient"])).max())})
    for c in checks:
        atol = tolerances[c["field"]]["atol"]
        if not c["max_abs_diff"] <= atol:
            raise AssertionError(f"independent check of {name}.{c['field']} should agree within its atol "
                                 f"{atol!r}, actual max_abs_diff {c['max_abs_diff']!r} ({c['method']})")
    return checks


# ---------------------------------------------------------------- public API

def _metadata(case: Case, notes, checks, solvers) -> dict:
    import refpg
    return {
        "schema_version": SCHEMA_VERSION,
        "refpg_version": refpg.__version__,
        "numpy_version": np.__version__,
        "generated_by": GENERATED_BY,
        "provenance": (f"Inputs: the MDP from refpg.envs {case.description}, theta (and log-linear "
                       f"features) from numpy.random.default_rng({case.seed}), the batch from "
                       "refpg.sample_steps with that generator; all written out in full, so no generator "
                       "is needed to read them. Outputs: refpg's exact dense linear "
                       "algebra (evaluate, policy_gradient, fisher_matrix, natural_gradient), "
                       "refpg.algorithms.trpo_step and ppo_update in exact mode, and refpg's sample-based "
                       "functions applied to the stored batch. independent_checks lists fields confirmed "
                       "by a route that shares no code with refpg."),
        "independent_checks": checks,
        "solvers": solvers,
        "tolerance_rule": TOLERANCE_RULE,
        "notes": notes,
    }


def generate_case(name: str) -> dict:
    """Build case `name` of `CASES`: metadata, inputs (in full), outputs and tolerances."""
    if name not in CASES:
        raise KeyError(f"case should be one of {sorted(CASES)}, actual {name!r}")
    inputs = _jsonable(_make_inputs(CASES[name]))
    res = case_outputs(inputs)
    checks = _independent_checks(name, inputs, res.outputs, res.tolerances)
    return {"case": name, "metadata": _metadata(CASES[name], res.notes, checks, res.solvers), "inputs": inputs,
            "outputs": res.outputs, "tolerances": res.tolerances}


def schema() -> dict:
    """JSON Schema (draft 2020-12) of a golden case file."""
    num_array = {"type": "array"}
    tol = {"type": "object", "required": ["atol", "rtol", "bound", "basis"], "additionalProperties": False,
           "properties": {"atol": {"type": "number", "minimum": 0}, "rtol": {"type": "number", "minimum": 0},
                          "bound": {"type": "number", "minimum": 0}, "basis": {"type": "string", "minLength": 1}}}
    batch_keys = ["states", "actions", "rewards", "next_states", "terminated", "truncated", "logp", "step"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://refpg/golden/schema.json",
        "title": "refpg golden case",
        "type": "object",
        "required": ["case", "metadata", "inputs", "outputs", "tolerances"],
        "additionalProperties": False,
        "properties": {
            "case": {"type": "string", "pattern": "^[a-z0-9_]+$"},
            "metadata": {
                "type": "object",
                "required": ["schema_version", "refpg_version", "numpy_version", "generated_by",
                             "provenance", "independent_checks", "solvers", "tolerance_rule", "notes"],
                "properties": {
                    "schema_version": {"const": SCHEMA_VERSION},
                    "refpg_version": {"type": "string"},
                    "numpy_version": {"type": "string"},
                    "generated_by": {"const": GENERATED_BY},
                    "provenance": {"type": "string", "minLength": 1},
                    "independent_checks": {"type": "array", "items": {
                        "type": "object", "required": ["field", "method", "max_abs_diff"],
                        "properties": {"field": {"type": "string"}, "method": {"type": "string"},
                                       "max_abs_diff": {"type": "number", "minimum": 0}}}},
                    "solvers": {"type": "array", "items": {
                        "type": "object", "required": ["field", "method"],
                        "properties": {"field": {"type": "string"}, "method": {"type": "string"},
                                       "iterations": {"type": "integer", "minimum": 0},
                                       "converged": {"type": "boolean"},
                                       "relative_residual": {"type": "number", "minimum": 0}}}},
                    "tolerance_rule": {"type": "string", "minLength": 1},
                    "notes": {"type": "array", "items": {"type": "string"}},
                },
            },
            "inputs": {
                "type": "object",
                "required": ["description", "P", "r", "rho", "gamma", "terminal", "policy", "theta",
                             "theta_kl", "settings", "batch"],
                "properties": {
                    "description": {"type": "string"},
                    "P": {"type": "array", "minItems": 1, "items": {"type": "array", "items": {
                        "type": "array", "items": {"type": "number", "minimum": 0}}}},
                    "r": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    "rho": {"type": "array", "items": {"type": "number", "minimum": 0}},
                    "gamma": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    "terminal": {"type": "array", "items": {"type": "boolean"}},
                    "policy": {"type": "object", "required": ["kind"], "properties": {
                        "kind": {"enum": ["tabular_softmax", "log_linear"]}, "features": num_array},
                        "if": {"properties": {"kind": {"const": "log_linear"}}},
                        "then": {"required": ["kind", "features"]}},
                    "theta": num_array,
                    "theta_kl": num_array,
                    "settings": {"type": "object"},
                    "batch": {"type": "object", "required": batch_keys,
                              "properties": {k: {"type": "array", "items": {"type": "array"}} for k in batch_keys}},
                },
            },
            "outputs": {
                "type": "object",
                "required": ["V", "Q", "A", "d", "J", "pi", "policy_gradient", "natural_gradient", "trpo",
                             "ppo", "batch"],
                "properties": {
                    "J": {"type": "number"},
                    "trpo": {"type": "object", "required": ["direction", "beta", "line_search", "kl",
                                                            "surrogate_improvement", "theta_new"],
                             "properties": {"line_search": {"type": "array", "items": {
                                 "type": "object", "required": ["fraction", "improvement", "kl", "accepted"],
                                 "properties": {"accepted": {"type": "boolean"}}}}}},
                    "ppo": {"type": "object", "required": ["theta", "objective"]},
                    "batch": {"type": "object", "required": ["returns", "gae", "k1", "k2", "k3",
                                                             "ppo_clip_loss", "clipped_surrogate_gradient"]},
                },
            },
            "tolerances": {"type": "object", "additionalProperties": tol},
        },
    }



def regenerate(directory, cases=None) -> list:
    """Write ``<case>.json`` for every case (or `cases`) and ``schema.json`` into `directory`.

    Byte-deterministic: ``json.dumps(indent=1, sort_keys=True)`` plus a newline, floats by repr,
    no timestamps. Returns the paths written.
    """
    from refpg.studies._common import make_directory

    d = make_directory(directory, "golden directory")
    written = []
    for name in (sorted(CASES) if cases is None else cases):
        path = d / f"{name}.json"
        path.write_text(_dumps(generate_case(name)), encoding="utf-8")
        written.append(path)
    path = d / "schema.json"
    path.write_text(_dumps(schema()), encoding="utf-8")
    written.append(path)
    return written


class FieldCheck(NamedTuple):
    """Comparison of one output field of one case."""

    case: str
    field: str
    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    passed: bool
    message: str = ""
    #: max over entries of |x - y| / (atol + rtol |y|): how much of the tolerance the field uses.
    used: float = float("inf")


class CheckReport(NamedTuple):
    """Result of `check`: one FieldCheck per (case, field)."""

    fields: tuple

    @property
    def passed(self) -> bool:
        """True when there is at least one field and every field is within its tolerance."""
        return bool(self.fields) and all(f.passed for f in self.fields)

    @property
    def failures(self) -> tuple:
        """The FieldChecks that did not pass, in order."""
        return tuple(f for f in self.fields if not f.passed)


def _leaves(x, out):
    if isinstance(x, dict):
        for k in sorted(x):
            _leaves(x[k], out)
    elif isinstance(x, list):
        for v in x:
            _leaves(v, out)
    else:
        out.append(x)
    return out


def _drop(inputs: dict, dotted_keys) -> dict:
    """A copy of `inputs` without the ``batch.<key>`` entries named in `dotted_keys`."""
    skip = {k.split(".", 1)[1] for k in dotted_keys}
    return dict(inputs, batch={k: v for k, v in inputs["batch"].items() if k not in skip})


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def _compare(case, field, actual, desired, tolerance) -> FieldCheck:
    atol, rtol = float(tolerance["atol"]), float(tolerance["rtol"])
    a, b = _leaves(actual, []), _leaves(desired, [])
    if len(a) != len(b):
        return FieldCheck(case, field, float("inf"), float("inf"), atol, rtol, False,
                          f"{len(a)} values recomputed, {len(b)} stored")
    for x, y in zip(a, b):
        if isinstance(x, bool) or isinstance(y, bool):
            if x is not y:
                return FieldCheck(case, field, float("inf"), float("inf"), atol, rtol, False,
                                  f"flag recomputed as {x!r}, stored {y!r}")
    num = [(float(x), float(y)) for x, y in zip(a, b) if not isinstance(x, bool)]
    if not num:
        return FieldCheck(case, field, 0.0, 0.0, atol, rtol, True, used=0.0)
    x = np.array([p[0] for p in num])
    y = np.array([p[1] for p in num])
    err = np.abs(x - y)
    rel = np.where(y != 0, err / np.where(y != 0, np.abs(y), 1.0), np.where(err > 0, np.inf, 0.0))
    allowed = atol + rtol * np.abs(y)
    ok = bool(np.all(err <= allowed))
    used = np.where(allowed > 0, err / np.where(allowed > 0, allowed, 1.0), np.where(err > 0, np.inf, 0.0))
    return FieldCheck(case, field, float(err.max()), float(rel.max()), atol, rtol, ok, used=float(used.max()))


def check(directory, *, round_trip: bool = False) -> CheckReport:
    """Recompute every case file in `directory` and compare with its outputs.

    By default each case is recomputed from the file's own inputs. With ``round_trip=True`` the
    inputs are rebuilt from `CASES` as `regenerate` would (an extra ``<inputs>`` row requires them
    to equal the stored ones exactly) and the outputs are computed from them: what a regeneration on
    this machine would write, compared with the committed file.

    A value passes when ``|recomputed - stored| <= atol + rtol * |stored|`` (numpy.allclose's test)
    with the field's stored tolerance; flags (booleans) and array sizes must match exactly.
    """
    d = Path(directory)
    files = sorted(p for p in d.glob("*.json") if p.name != "schema.json")
    rows = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        name = data.get("case", path.stem)
        try:
            inputs = data["inputs"]
            if round_trip:
                if name not in CASES:
                    raise KeyError(f"case should be one of {sorted(CASES)}, actual {name!r}")
                # Through JSON, as regenerate writes it: lists, floats and bools compare exactly...
                inputs = json.loads(_dumps(_make_inputs(CASES[name])))
                res = case_outputs(inputs)
                # ...except log pi_old, a float computation whose last bits follow the BLAS kernel,
                # compared within its own bound below.
                same = _drop(inputs, res.input_tolerances) == _drop(data["inputs"], res.input_tolerances)
                rows.append(FieldCheck(name, "<inputs>", 0.0 if same else float("inf"), 0.0 if same else float("inf"),
                                       0.0, 0.0, same, "" if same else "rebuilt inputs differ from the stored ones",
                                       used=0.0 if same else float("inf")))
                rows.extend(_compare(name, f"<inputs>.{k}", _get(inputs, k), _get(data["inputs"], k), tol)
                            for k, tol in res.input_tolerances.items())
                outputs = res.outputs
            else:
                outputs = case_outputs(inputs).outputs
        except Exception as exc:  # a case that cannot be rebuilt fails, it is not skipped
            rows.append(FieldCheck(name, "<rebuild>", float("inf"), float("inf"), 0.0, 0.0, False,
                                   f"{type(exc).__name__}: {exc}"))
            continue
        for field, tolerance in sorted(data["tolerances"].items()):
            try:
                stored = _get(data["outputs"], field)
            except KeyError:
                rows.append(FieldCheck(name, field, float("inf"), float("inf"), tolerance["atol"],
                                       tolerance["rtol"], False, "missing from stored outputs"))
                continue
            try:
                actual = _get(outputs, field)
            except KeyError:
                rows.append(FieldCheck(name, field, float("inf"), float("inf"), tolerance["atol"],
                                       tolerance["rtol"], False, "not recomputed by the current code"))
                continue
            rows.append(_compare(name, field, actual, stored, tolerance))
    return CheckReport(tuple(rows))

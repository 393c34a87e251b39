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

__all__ = ["CASES", "Case", "FieldCheck", "CheckReport", "SCHEMA_VERSION", "generate_case",
           "regenerate", "check", "case_outputs", "schema"]

SCHEMA_VERSION = 1
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

EXACT = {"atol": 1e-10, "rtol": 1e-10}
# Pseudo-inverse, CG and line-search outputs amplify rounding by the condition number of F.
ITERATIVE = {"atol": 1e-7, "rtol": 1e-7}


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
    theta_kl = theta + KL_STEP * nat / max(1.0, float(np.abs(nat).max()))
    policy = {"kind": case.kind}
    if features is not None:
        policy["features"] = features
    return {
        "description": case.description,
        "P": mdp.dense_P(), "r": mdp.r, "rho": mdp.rho, "gamma": mdp.gamma, "terminal": mdp.terminal,
        "policy": policy, "theta": theta, "theta_kl": theta_kl,
        "settings": {"gae_lambda": GAE_LAMBDA, "clip_eps": CLIP_EPS, "trpo_max_kl": TRPO_MAX_KL,
                     "trpo_cg_iters": 10, "trpo_shrink": 0.5, "trpo_max_backtracks": 10,
                     "ppo_epochs": PPO_EPOCHS, "ppo_lr": PPO_LR, "ppo_optimizer": "sgd"},
        "batch": {"states": batch.states, "actions": batch.actions, "rewards": batch.rewards,
                  "next_states": batch.next_states, "terminated": batch.terminated,
                  "truncated": batch.truncated, "logp": batch.log_probs, "step": batch.step,
                  "note": (f"drawn once with refpg.sample_steps(n_envs={BATCH_ENVS}, n_steps={BATCH_STEPS}, "
                           f"max_episode_steps={BATCH_MAX_EPISODE_STEPS}) under pi(theta); time-major (T, N); "
                           "these stored arrays are the input, not the generator")},
    }


# ---------------------------------------------------------------- outputs

def case_outputs(inputs: dict) -> tuple[dict, dict, list]:
    """Every output of a case from its inputs alone: (outputs, tolerances, notes)."""
    import refpg
    from refpg.algorithms import clipped_surrogate_gradient, ppo_clip_loss, ppo_update, trpo_step
    from refpg.algorithms.ppo import PPOSamples

    mdp = _mdp_from_inputs(inputs)
    S, A = mdp.n_states, mdp.n_actions
    pol = _policy(inputs["policy"]["kind"], S, A, inputs["policy"].get("features"))
    theta = np.asarray(inputs["theta"], dtype=np.float64)
    theta_kl = np.asarray(inputs["theta_kl"], dtype=np.float64)
    cfg = inputs["settings"]
    gamma = mdp.gamma
    out, tol, notes = {}, {}, []

    pi = pol.probs(theta)
    ev = refpg.evaluate(mdp, pi)
    for k in ("V", "Q", "A", "d"):
        out[k], tol[k] = getattr(ev, k), EXACT
    out["J"], tol["J"] = ev.J, EXACT
    out["pi"], tol["pi"] = pi, EXACT
    out["policy_gradient"], tol["policy_gradient"] = refpg.policy_gradient(mdp, pol, theta, evaluation=ev), EXACT
    if pol.n_params <= DENSE_FISHER_MAX_PARAMS:
        out["fisher"], tol["fisher"] = refpg.fisher_matrix(mdp, pol, theta, evaluation=ev), EXACT
    else:
        notes.append(f"fisher omitted: n_params = {pol.n_params} > {DENSE_FISHER_MAX_PARAMS}")
    out["natural_gradient"] = refpg.natural_gradient(mdp, pol, theta, evaluation=ev)
    tol["natural_gradient"] = ITERATIVE

    tr = trpo_step(mdp, pol, theta, max_kl=cfg["trpo_max_kl"], mode="exact", cg_iters=cfg["trpo_cg_iters"],
                   shrink=cfg["trpo_shrink"], max_backtracks=cfg["trpo_max_backtracks"])
    out["trpo"] = {
        "direction": tr.direction, "beta": tr.beta,
        "line_search": [{"fraction": t.fraction, "improvement": t.improvement, "kl": t.kl,
                         "accepted": t.accepted} for t in tr.line_search],
        "kl": tr.kl, "surrogate_improvement": tr.surrogate_improvement, "theta_new": tr.theta,
    }
    for k in out["trpo"]:
        tol[f"trpo.{k}"] = ITERATIVE

    pp = ppo_update(mdp, pol, theta, mode="exact", clip_eps=cfg["clip_eps"], epochs=cfg["ppo_epochs"],
                    optimizer=cfg["ppo_optimizer"], lr=cfg["ppo_lr"])
    out["ppo"] = {"theta": pp.theta, "objective": [e.objective for e in pp.history]}
    tol["ppo.theta"] = tol["ppo.objective"] = {"atol": 1e-9, "rtol": 1e-9}

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
    for k in bo:
        tol[f"batch.{k}"] = EXACT
    return _jsonable(out), tol, notes


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


def _independent_checks(name: str, inputs: dict, outputs: dict) -> list:
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
        if not c["max_abs_diff"] <= 1e-9:
            raise AssertionError(f"independent check of {name}.{c['field']} should agree within 1e-9, "
                                 f"actual max_abs_diff {c['max_abs_diff']!r} ({c['method']})")
    return checks


# ---------------------------------------------------------------- public API

def _metadata(case: Case, notes, checks) -> dict:
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
        "notes": notes,
    }


def generate_case(name: str) -> dict:
    """Build case `name` of `CASES`: metadata, inputs (in full), outputs and tolerances."""
    if name not in CASES:
        raise KeyError(f"case should be one of {sorted(CASES)}, actual {name!r}")
    inputs = _jsonable(_make_inputs(CASES[name]))
    outputs, tolerances, notes = case_outputs(inputs)
    checks = _independent_checks(name, inputs, outputs)
    return {"case": name, "metadata": _metadata(CASES[name], notes, checks), "inputs": inputs,
            "outputs": outputs, "tolerances": tolerances}


def schema() -> dict:
    """JSON Schema (draft 2020-12) of a golden case file."""
    num_array = {"type": "array"}
    tol = {"type": "object", "required": ["atol", "rtol"], "additionalProperties": False,
           "properties": {"atol": {"type": "number", "minimum": 0}, "rtol": {"type": "number", "minimum": 0}}}
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
                             "provenance", "independent_checks", "notes"],
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
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
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


class CheckReport(NamedTuple):
    """Result of `check`: one FieldCheck per (case, field)."""

    fields: tuple

    @property
    def passed(self) -> bool:
        return bool(self.fields) and all(f.passed for f in self.fields)

    @property
    def failures(self) -> tuple:
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
        return FieldCheck(case, field, 0.0, 0.0, atol, rtol, True)
    x = np.array([p[0] for p in num])
    y = np.array([p[1] for p in num])
    err = np.abs(x - y)
    rel = np.where(y != 0, err / np.where(y != 0, np.abs(y), 1.0), np.where(err > 0, np.inf, 0.0))
    ok = bool(np.all(err <= atol + rtol * np.abs(y)))
    return FieldCheck(case, field, float(err.max()), float(rel.max()), atol, rtol, ok)


def check(directory) -> CheckReport:
    """Recompute every case file in `directory` from its own inputs and compare with its outputs.

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
            outputs, _, _ = case_outputs(data["inputs"])
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

"""The bundled examples, checked without the conformance kit.

* Every correct example agrees with refpg's reference (GAE with refpg.returns.gae
  in its own convention, losses with closed forms, REINFORCE with refpg's
  estimator and, statistically, with the exact gradient, TRPO with the trust
  region it promises).
* Every broken example's bug is live: on a witness input it violates exactly
  the property its ``expected`` check id tests.
"""

import functools
import subprocess
import sys
import warnings

import numpy as np
import pytest

import refpg
import refpg.examples as ex
from refpg.conformance.runner import KINDS
from refpg.algorithms.ppo import (normalized_advantages, ppo_clip_grad_logp, ppo_clip_loss,
                                  ratio_outside_fraction)
from refpg.errors import InvalidInputError
from refpg.examples import broken, correct
from refpg.returns import gae as reference_gae
from refpg.stats import mean_test

from tests.helpers import high_signal_episodic

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the test extra
    torch = None

DTYPES = ("float64", "float32")
#: Relative tolerance of a float computation against the float64 reference on rounded inputs.
TOL = {"float64": 1e-12, "float32": 2e-5}


def _skip_without_torch(backend):
    if backend == "torch" and torch is None:
        pytest.skip("torch is not installed")


def _user(x, backend, dtype):
    """A NumPy array as the check would pass it: floats in `dtype`, bools and ints kept."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        x = x.astype(dtype)
    x = x.copy()
    return torch.from_numpy(x) if backend == "torch" else x


def _numpy(y):
    return y.detach().numpy() if torch is not None and isinstance(y, torch.Tensor) else np.asarray(y)


def _close(actual, desired, dtype, *, scale=None):
    desired = np.asarray(desired, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(desired), initial=0.0))) if scale is None else scale
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), desired, rtol=TOL[dtype],
                               atol=TOL[dtype] * scale)


#: The examples of refpg.examples.correct and .broken, which this file witnesses against refpg's own code
#: in the refpg argument order; each topic module's examples (other conventions, JAX, losses) are
#: witnessed by that topic's own test file.
_BASE = (correct.__name__, broken.__name__)
BASE_CORRECT = [e for e in ex.CORRECT if e.fn.__module__ in _BASE]
BASE_BROKEN = [e for e in ex.BROKEN if e.fn.__module__ in _BASE]


# -- registry ------------------------------------------------------------------------------

def test_registry_names_are_unique_and_found_by_name():
    names = [e.name for e in ex.CORRECT + ex.BROKEN]
    assert len(names) == len(set(names))
    for e in ex.CORRECT + ex.BROKEN:
        assert ex.by_name(e.name) is e


def test_registry_entries_are_well_formed():
    assert len(ex.BROKEN) >= 30
    for e in ex.CORRECT:
        assert e.expected is None and not e.broken, e.name
    for e in ex.BROKEN:
        assert e.expected.startswith(e.kind + ".") and e.broken, e.name
    for e in ex.CORRECT + ex.BROKEN:
        assert e.description and "\n" not in e.description, e.name
        topic = e.fn.__module__.startswith("refpg.examples.")  # the topic modules' own tests witness theirs
        assert topic and e.fn.__module__ != "refpg.examples._example", e.name
        with pytest.raises(TypeError):
            e.options["unbiased"] = False  # read-only: one test cannot change it for the next


def test_every_kind_has_correct_and_broken_examples():
    kinds = {e.kind for e in ex.CORRECT}
    assert kinds == {e.kind for e in ex.BROKEN}
    assert kinds == set(KINDS)


def test_by_name_suggests_close_names():
    with pytest.raises(InvalidInputError, match="gae_flattened"):
        ex.by_name("gae_flatened")


def test_example_rejects_an_expected_id_of_another_kind():
    with pytest.raises(InvalidInputError, match="expected should be a check id of kind 'gae'"):
        ex.Example("x", "gae", correct.gae_refpg_numpy, expected="ppo_loss.gradient", description="x")


def test_examples_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import refpg.examples as ex; "
            "assert len(ex.BROKEN) >= 30; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# -- GAE: canonical rollouts and the conventions' arguments --------------------------------

def _rollout(rng, T=7, N=3, *, p_flag=0.2):
    """A canonical rollout with next_values[t] = values[t + 1] inside episodes, as a real critic gives."""
    rewards, values, finals = rng.normal(size=(3, T, N)) * 3
    term = rng.random((T, N)) < p_flag
    trunc = rng.random((T, N)) < p_flag  # both at once included: termination wins
    done = term | trunc
    next_values = finals.copy()
    next_values[:-1][~done[:-1]] = values[1:][~done[:-1]]
    return dict(rewards=rewards, values=values, next_values=next_values, terminated=term, truncated=trunc,
                gamma=float(rng.choice([0.9, 0.99, 0.5])), lam=float(rng.choice([0.95, 0.8, 0.0, 1.0])),
                start=rng.random(N) < 0.5)


def _rounded(case, dtype):
    out = dict(case)
    for key in ("rewards", "values", "next_values"):
        out[key] = case[key].astype(dtype).astype(np.float64)
    return out


def _expected_gae(case, convention):
    term, trunc = case["terminated"], case["truncated"]
    if convention == "cleanrl":  # no truncation flag there: a time limit is a termination
        term, trunc = term | trunc, np.zeros_like(trunc)
    return reference_gae(case["rewards"], case["values"], case["next_values"], term, trunc, case["gamma"],
                         case["lam"])


def _starts(case):
    done = case["terminated"] | case["truncated"]
    return np.concatenate([case["start"][None], done[:-1]]).astype(np.float64)


def _segments(done_column):
    cuts = [t + 1 for t in range(len(done_column) - 1) if done_column[t]]
    bounds = [0, *cuts, len(done_column)]
    return list(zip(bounds[:-1], bounds[1:]))


def _call_gae(fn, case, convention, backend, dtype):
    """Call `fn` in its convention on a canonical case; the advantages as a (T, N) float64 array."""
    r, v, nv = case["rewards"], case["values"], case["next_values"]
    term, trunc, gamma, lam = case["terminated"], case["truncated"], case["gamma"], case["lam"]
    done = term | trunc

    def u(x):
        return _user(x, backend, dtype)

    if convention == "refpg":
        out = fn(u(r), u(v), u(nv), u(term), u(trunc), gamma, lam)
    elif convention == "sb3":
        # SB3's collect_rollouts adds gamma * V(final obs) to the reward of a time limit, then calls it done.
        folded = r + gamma * nv * (trunc & ~term)
        out = fn(u(folded), u(v), u(_starts(case)), u(nv[-1]), u(done[-1].astype(float)), gamma, lam)
    elif convention == "cleanrl":
        out = fn(u(r), u(v), u(_starts(case)), u(nv[-1]), u(done[-1].astype(float)), gamma, lam)
    elif convention == "torchrl":
        def btf(x):  # (T, N) -> (N, T, 1)
            return u(np.ascontiguousarray(x.T[:, :, None]))
        adv, target = fn(gamma, lam, btf(v), btf(nv), btf(r), btf(done), btf(term))
        np.testing.assert_allclose(_numpy(target), _numpy(adv) + _numpy(btf(v)), rtol=1e-6)
        out = _numpy(adv)[:, :, 0].T
    elif convention == "rlax":
        # One trajectory per call: each column split at episode ends, values[T] = V(final obs).
        out = np.empty(r.shape, dtype=dtype)
        for n in range(r.shape[1]):
            for a, b in _segments(done[:, n]):
                discount = gamma * (1.0 - term[a:b, n])
                seg_values = np.append(v[a:b, n], nv[b - 1, n])
                part = _numpy(fn(u(r[a:b, n]), u(discount), lam, u(seg_values)))
                assert part.shape == (b - a,) and part.dtype == np.dtype(dtype)
                out[a:b, n] = part
    else:  # pragma: no cover
        raise AssertionError(convention)
    return _numpy(out)


CORRECT_GAE = [e for e in BASE_CORRECT if e.kind == "gae"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("example", CORRECT_GAE, ids=lambda e: e.name)
def test_correct_gae_matches_reference_in_its_convention(example, dtype):
    _skip_without_torch(example.backend)
    rng = np.random.default_rng(sum(map(ord, example.name)))
    for shape in ((7, 3), (1, 2), (5, 1)):
        case = _rounded(_rollout(rng, *shape), dtype)
        actual = _call_gae(example.fn, case, example.convention, example.backend, dtype)
        assert actual.shape == shape and actual.dtype == np.dtype(dtype)
        _close(actual, _expected_gae(case, example.convention), dtype)


# -- PPO, value loss, KL ----------------------------------------------------------------------

def _ppo_case(rng, n, *, spread=1.0):
    """log-probabilities whose ratios lie inside and outside [0.8, 1.2], and advantages of both signs."""
    logp_old = -rng.random(n) * 3
    logp_new = logp_old + rng.normal(size=n) * spread
    return logp_new, logp_old, rng.normal(size=n) * 2


def _loss_and_fraction(out):
    if isinstance(out, dict):
        return out["loss"], out.get("clip_fraction")
    if isinstance(out, tuple):
        return out
    return out, None


def _ppo_expected(example, logp_new, logp_old, adv, eps):
    if example.convention in ("sb3", "cleanrl") and len(adv) > 1:
        adv = normalized_advantages(adv, ddof=1, eps=1e-8)
    return ppo_clip_loss(logp_new, logp_old, adv, eps), ppo_clip_grad_logp(logp_new, logp_old, adv, eps)


def _call_ppo(fn, convention, backend, dtype, logp_new, logp_old, adv, eps, *, grad=False):
    """(loss as float, clip_fraction or None, d loss / d logp_new or None)."""
    if convention == "rlax":
        return float(fn(np.exp(logp_new - logp_old).astype(dtype), adv.astype(dtype), eps)), None, None
    new = _user(logp_new, backend, dtype)
    if grad:
        new.requires_grad_(True)
    loss, fraction = _loss_and_fraction(fn(new, _user(logp_old, backend, dtype), _user(adv, backend, dtype),
                                           eps))
    assert _numpy(loss).dtype == np.dtype(dtype)
    g = None
    if grad:
        (g,) = torch.autograd.grad(loss, new)
        g = _numpy(g)
    return float(_numpy(loss)), fraction, g


CORRECT_PPO = [e for e in BASE_CORRECT if e.kind == "ppo_loss"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("example", CORRECT_PPO, ids=lambda e: e.name)
def test_correct_ppo_loss_matches_closed_form(example, dtype):
    _skip_without_torch(example.backend)
    rng = np.random.default_rng(1)
    sizes = (9, 2) if example.convention == "cleanrl" else (9, 2, 1)
    for n in sizes:
        logp_new, logp_old, adv = (x.astype(dtype).astype(np.float64) for x in _ppo_case(rng, n))
        loss_ref, grad_ref = _ppo_expected(example, logp_new, logp_old, adv, 0.2)
        grad = example.backend == "torch"
        loss, fraction, g = _call_ppo(example.fn, example.convention, example.backend, dtype, logp_new,
                                      logp_old, adv, 0.2, grad=grad)
        _close(loss, loss_ref, dtype)
        if fraction is not None:
            assert fraction == pytest.approx(ratio_outside_fraction(logp_new, logp_old, 0.2))
        if grad:
            _close(g, grad_ref, dtype)


def _value_ref(style, coef, v, v_old, R, eps):
    unclipped = (v - R) ** 2
    clipped = (v_old + np.clip(v - v_old, -eps, eps) - R) ** 2
    per = {"unclipped": unclipped, "max": np.maximum(unclipped, clipped), "clip_prediction": clipped}[style]
    return coef * per.mean()


VALUE_STYLE = {"refpg": ("unclipped", 0.5), "cleanrl": ("max", 0.5), "sb3": ("clip_prediction", 1.0)}


def _call_value(fn, backend, dtype, v, v_old, R, eps):
    return float(fn(*(_user(x, backend, dtype) for x in (v, v_old, R)), eps))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("example", [e for e in BASE_CORRECT if e.kind == "value_loss"], ids=lambda e: e.name)
def test_correct_value_loss_matches_closed_form(example, dtype):
    _skip_without_torch(example.backend)
    rng = np.random.default_rng(2)
    v, v_old, R = (x.astype(dtype).astype(np.float64) for x in rng.normal(size=(3, 12)))
    style, coef = VALUE_STYLE[example.convention]
    _close(_call_value(example.fn, example.backend, dtype, v, v_old, R, 0.2),
           _value_ref(style, coef, v, v_old, R, 0.2), dtype)


def _kl_call(fn, backend, dtype, logp_new, logp_old):
    return _numpy(fn(_user(logp_new, backend, dtype), _user(logp_old, backend, dtype))).astype(np.float64)


KL_REFERENCE = {"kl_k1_numpy": refpg.kl_k1, "kl_k2_numpy": refpg.kl_k2,
                "kl_k3_mean_torch": lambda new, old: np.mean(refpg.kl_k3(new, old))}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("example", [e for e in BASE_CORRECT if e.kind == "kl_estimator"], ids=lambda e: e.name)
def test_correct_kl_estimators_match_refpg(example, dtype):
    _skip_without_torch(example.backend)
    rng = np.random.default_rng(3)
    logp_new, logp_old, _ = (x.astype(dtype).astype(np.float64) for x in _ppo_case(rng, 10))
    actual = _kl_call(example.fn, example.backend, dtype, logp_new, logp_old)
    _close(actual, KL_REFERENCE[example.name](logp_new, logp_old), dtype)


def _exact_mean(fn, backend, p_old, p_new):
    """E_{a ~ p_old}[estimate] computed exactly: one single-sample call per action."""
    lo, ln = np.log(p_old), np.log(p_new)
    return sum(p_old[a] * float(_kl_call(fn, backend, "float64", ln[[a]], lo[[a]]).mean())
               for a in range(len(p_old)))


def _kl_pair():
    p_old, p_new = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
    return p_old, p_new, float(np.sum(p_old * np.log(p_old / p_new)))


@pytest.mark.parametrize("example", [e for e in BASE_CORRECT if e.kind == "kl_estimator"], ids=lambda e: e.name)
def test_correct_kl_estimators_keep_their_declarations(example):
    _skip_without_torch(example.backend)
    p_old, p_new, kl = _kl_pair()
    mean = _exact_mean(example.fn, example.backend, p_old, p_new)
    if example.options["unbiased"]:
        assert mean == pytest.approx(kl, rel=1e-12)
    if example.options["non_negative"]:
        # Near-equal log-probabilities in float32: where (r - 1) - log r rounds below zero.
        rng = np.random.default_rng(4)
        logp_old = -rng.random(1000).astype(np.float32)
        logp_new = logp_old + (rng.normal(size=1000) * 1e-7).astype(np.float32)
        assert np.all(_kl_call(example.fn, example.backend, "float32", logp_new, logp_old) >= 0)


# -- REINFORCE ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _reinforce_setup():
    """A high-signal episodic MDP, theta, the exact targets and 30 batches of 300 episodes."""
    mdp = high_signal_episodic(n_states=3, n_actions=3, p_end=0.5, gamma=0.9, seed=0)
    policy = refpg.TabularSoftmax.for_mdp(mdp)
    rng = np.random.default_rng(5)
    theta = rng.normal(size=policy.theta_shape) * 0.5
    batches = [refpg.sample_episodes(mdp, policy.probs(theta), 300, rng=rng) for _ in range(30)]
    episodes = [[(e.states, e.actions, e.rewards) for e in b.episodes()] for b in batches]
    return dict(mdp=mdp, policy=policy, theta=theta, batches=batches, episodes=episodes,
                exact=refpg.policy_gradient(mdp, policy, theta),
                gamma_free=refpg.gamma_free_gradient(mdp, policy, theta))


def _call_reinforce(fn, backend, theta, episodes, gamma, dtype="float64"):
    eps = [tuple(_user(x, backend, dtype) for x in ep) for ep in episodes]
    return _numpy(fn(_user(theta, backend, dtype), eps, gamma))


def _batch_estimates(fn, backend="numpy"):
    setup = _reinforce_setup()
    return np.array([_call_reinforce(fn, backend, setup["theta"], eps, setup["mdp"].gamma)
                     for eps in setup["episodes"]])


@pytest.mark.parametrize("name, kwargs", [("reinforce_numpy", {}), ("reinforce_torch", {}),
                                          ("reinforce_gamma_free_numpy", {"discount_weighting": False})])
def test_reinforce_equals_refpg_estimator_on_the_same_batch(name, kwargs):
    example = ex.by_name(name)
    _skip_without_torch(example.backend)
    setup = _reinforce_setup()
    batch, eps = setup["batches"][0], setup["episodes"][0]
    desired = refpg.reinforce_gradient_estimate(setup["policy"], setup["theta"], batch, setup["mdp"].gamma,
                                                **kwargs)
    actual = _call_reinforce(example.fn, example.backend, setup["theta"], eps, setup["mdp"].gamma)
    np.testing.assert_allclose(actual, desired, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("example", [e for e in BASE_CORRECT if e.kind == "reinforce_estimator"],
                         ids=lambda e: e.name)
def test_correct_reinforce_rows_sum_to_zero_in_the_input_dtype(example, dtype):
    _skip_without_torch(example.backend)
    setup = _reinforce_setup()
    g = _call_reinforce(example.fn, example.backend, setup["theta"], setup["episodes"][0][:50],
                        setup["mdp"].gamma, dtype)
    assert g.shape == setup["theta"].shape and g.dtype == np.dtype(dtype)
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=TOL[dtype] * max(1.0, np.abs(g).max()))


@pytest.mark.parametrize("name, target", [("reinforce_numpy", "exact"),
                                          ("reinforce_state_baseline_numpy", "exact"),
                                          ("reinforce_gamma_free_numpy", "gamma_free")])
def test_reinforce_mean_agrees_with_its_exact_expectation(name, target):
    """30 i.i.d. batch estimates against grad J (or the gamma-free target), alpha = 1e-6."""
    result = mean_test(_batch_estimates(ex.by_name(name).fn), _reinforce_setup()[target])
    assert not result.rejected, str(result)


# -- TRPO ----------------------------------------------------------------------------------------

def _trpo_batch(seed, *, S=4, A=3, n=40):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(S, A)) * 1.5
    # Unequal state counts and a non-uniform policy: F is not a multiple of the identity.
    states = rng.choice(S - 1, size=n, p=[0.6, 0.3, 0.1])  # state S - 1 is never visited
    actions = rng.integers(0, A, n)
    return theta, states, actions, rng.normal(size=n)


def _trpo_quantities(theta_old, states, actions, adv):
    """(L, mean KL, F^+ g) of a tabular softmax batch, the Fisher as a dense pseudo-inverse."""
    lo = correct._log_softmax(theta_old)
    po = np.exp(lo)
    S, A = theta_old.shape

    def L(theta):
        return float(np.mean(np.exp(correct._log_softmax(theta)[states, actions] - lo[states, actions]) * adv))

    def kl(theta):
        return float(np.mean(np.sum(po[states] * (lo[states] - correct._log_softmax(theta)[states]), axis=1)))

    w = np.bincount(states, minlength=S) / len(states)
    F = np.zeros((S * A, S * A))
    g = np.zeros((S, A))
    for s in range(S):
        F[s * A:(s + 1) * A, s * A:(s + 1) * A] = w[s] * (np.diag(po[s]) - np.outer(po[s], po[s]))
    for s, a, x in zip(states, actions, adv):
        g[s] += x * (np.eye(A)[a] - po[s]) / len(states)
    return L, kl, (np.linalg.pinv(F, rcond=1e-12) @ g.ravel()).reshape(S, A)


def _cosine(x, y):
    return float(x.ravel() @ y.ravel() / (np.linalg.norm(x) * np.linalg.norm(y)))


def _call_trpo(fn, backend, theta, states, actions, adv, max_kl, dtype="float64"):
    return _numpy(fn(*(_user(x, backend, dtype) for x in (theta, states, actions, adv)), max_kl))


#: A policy so sure of action 0 (log-odds 30) that the natural step towards action 1 is enormous:
#: every candidate of the line search, 2^-10 of the full step included, has a mean KL of hundreds.
REJECT_CASE = (np.array([[0.0, -30.0]]), np.array([0, 0]), np.array([0, 1]), np.array([0.0, 1.0]), 0.01)
#: pi_old(a = 0) = 9e-27 (and 0 in float64 at -800): the Fisher-vector product loses its small
#: terms to rounding, so CG meets p^T F p = 0 (found by check_trpo_step).
DEGENERATE_CASES = [(np.array([[gap, 0.0]]), np.array([0]), np.array([0]), np.array([1.0]), 0.01)
                    for gap in (-60.0, -800.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("example", [e for e in BASE_CORRECT if e.kind == "trpo_step"], ids=lambda e: e.name)
def test_correct_trpo_step_improves_within_the_trust_region(example, dtype):
    _skip_without_torch(example.backend)
    for seed, max_kl in ((0, 0.01), (1, 0.05), (2, 0.5), (3, 0.01)):
        theta, states, actions, adv = (x.astype(dtype).astype(x.dtype) for x in _trpo_batch(seed))
        L, kl, natural = _trpo_quantities(theta, states, actions, adv)
        new = _call_trpo(example.fn, example.backend, theta, states, actions, adv, max_kl, dtype)
        assert new.dtype == np.dtype(dtype)
        # float32: the KL of the rounded theta may pass max_kl by rounding (KL ~ max_kl at the full step).
        assert kl(new) <= max_kl * (1 + TOL[dtype]) and L(new) > L(theta), seed
        step = new - theta
        assert _cosine(step, natural) > 1 - 10 * TOL[dtype], seed
        np.testing.assert_allclose(step[-1], 0.0, atol=1e-12)  # the unvisited state keeps its logits


@pytest.mark.parametrize("example", [e for e in BASE_CORRECT if e.kind == "trpo_step"], ids=lambda e: e.name)
def test_correct_trpo_step_returns_theta_old_values_when_nothing_is_accepted(example):
    _skip_without_torch(example.backend)
    theta, states, actions, adv = _trpo_batch(4)
    for args in ((theta, states, actions, np.zeros_like(adv), 0.01), REJECT_CASE, *DEGENERATE_CASES):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow or 0/0 on the way
            new = _call_trpo(example.fn, example.backend, *args)
        assert np.array_equal(new, args[0]) and new is not args[0]


def test_trpo_numpy_and_torch_agree():
    if torch is None:
        pytest.skip("torch is not installed")
    theta, states, actions, adv = _trpo_batch(5)
    np.testing.assert_allclose(_call_trpo(correct.trpo_step_torch, "torch", theta, states, actions, adv, 0.02),
                               _call_trpo(correct.trpo_step_numpy, "numpy", theta, states, actions, adv, 0.02),
                               rtol=1e-8, atol=1e-10)


# -- broken examples: each bug is live on a witness input -----------------------------------------

def _gae_witness_case():
    """Time limits and terminations mid-rollout and at the last row, in different columns; lam < 1."""
    rng = np.random.default_rng(6)
    case = _rollout(rng, T=6, N=3, p_flag=0.0)
    case["terminated"][[1, 5], [0, 1]] = True
    case["truncated"][[2, 5], [1, 0]] = True
    case = _rollout_relink(case)
    case.update(gamma=0.9, lam=0.8, start=np.array([True, False, True]))
    return case


def _rollout_relink(case):
    done = case["terminated"] | case["truncated"]
    nv = case["next_values"].copy()
    nv[:-1][~done[:-1]] = case["values"][1:][~done[:-1]]
    return {**case, "next_values": nv}


def _counterpart(example):
    """The correct example of the same kind, convention and backend."""
    return next(c for c in ex.CORRECT if (c.kind, c.convention, c.backend)
                == (example.kind, example.convention, example.backend))


def _witness_gae(example):
    case = _gae_witness_case()
    if example.expected == "gae.input_mutated":
        args = [case[k].copy() for k in ("rewards", "values", "next_values", "terminated", "truncated")]
        before = [a.copy() for a in args]
        example.fn(*args, case["gamma"], case["lam"])
        assert any(not np.array_equal(a, b) for a, b in zip(args, before))
        return
    good = _call_gae(_counterpart(example).fn, case, example.convention, example.backend, "float64")
    if example.expected == "gae.output_shape":
        bad = example.fn(*(case[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")),
                         case["gamma"], case["lam"])
        assert bad.shape != good.shape
        return
    bad = _call_gae(example.fn, case, example.convention, example.backend, "float64")
    assert not np.allclose(bad, good)
    if example.expected == "gae.no_flow_across_episodes":
        # The check's own test: the whole rollout against each episode computed alone.
        pieces = np.empty_like(bad)
        done = case["terminated"] | case["truncated"]
        for n in range(bad.shape[1]):
            for a, b in _segments(done[:, n]):
                sub = {k: case[k][a:b, n:n + 1] for k in ("rewards", "values", "next_values", "terminated",
                                                          "truncated")}
                sub.update(gamma=case["gamma"], lam=case["lam"], start=np.ones(1, bool))
                pieces[a:b, n] = _call_gae(example.fn, sub, example.convention, example.backend, "float64")[:, 0]
        assert not np.allclose(bad, pieces)


def _witness_ppo(example):
    rng = np.random.default_rng(7)
    eps = 0.2
    inside = _ppo_case(rng, 8, spread=0.05)
    outside = _ppo_case(rng, 8, spread=1.0)
    outside[2][:] = -np.abs(outside[2])  # A < 0 ...
    outside[0][:4] = outside[1][:4] - 1.0  # ... with r = e^-1 < 1 - eps on half the samples
    good_fn = _counterpart(example).fn

    def run(fn, case, n=None, grad=False):
        new, old, adv = (x[:n] for x in case)
        return _call_ppo(fn, example.convention, example.backend, "float64", new, old, adv, eps, grad=grad)

    check = example.expected.split(".")[1]
    if check == "outside_clip_range":
        assert run(example.fn, inside)[0] == pytest.approx(run(good_fn, inside)[0], rel=1e-12)
        assert run(example.fn, outside)[0] != pytest.approx(run(good_fn, outside)[0], rel=1e-6)
    elif check == "inside_clip_range":
        assert run(example.fn, inside)[0] != pytest.approx(run(good_fn, inside)[0], rel=1e-6)
    elif check == "clip_fraction":
        (bad_loss, bad_frac, _), (loss, frac, _) = run(example.fn, outside), run(good_fn, outside)
        assert bad_loss == pytest.approx(loss, rel=1e-12) and bad_frac != frac
    elif check == "output_finite":
        assert np.isfinite(run(good_fn, inside, n=1)[0]) and not np.isfinite(run(example.fn, inside, n=1)[0])
    elif check == "gradient":
        (bad_loss, _, bad_g), (loss, _, g) = run(example.fn, inside, grad=True), run(good_fn, inside, grad=True)
        assert bad_loss == pytest.approx(loss, rel=1e-12) and not np.allclose(bad_g, g)
    else:  # pragma: no cover
        raise AssertionError(example.expected)


def _witness_value(example):
    rng = np.random.default_rng(8)
    v_old, R = rng.normal(size=(2, 10))
    v = v_old + rng.normal(size=10)  # many |v - v_old| > eps
    style, coef = VALUE_STYLE[example.convention]
    bad = _call_value(example.fn, example.backend, "float64", v, v_old, R, 0.2)
    assert bad != pytest.approx(_value_ref(style, coef, v, v_old, R, 0.2), rel=1e-6)


def _witness_kl(example):
    p_old, p_new, kl = _kl_pair()
    if example.expected == "kl_estimator.non_negative":
        values = _kl_call(example.fn, example.backend, "float64", np.log(p_new), np.log(p_old))
        assert example.options["non_negative"] and values.min() < 0
    else:
        assert example.options["unbiased"]
        assert _exact_mean(example.fn, example.backend, p_old, p_new) != pytest.approx(kl, rel=1e-3)


def _witness_reinforce(example):
    setup = _reinforce_setup()
    if example.expected == "reinforce_estimator.row_sums_zero":
        g = _call_reinforce(example.fn, example.backend, setup["theta"], setup["episodes"][0], setup["mdp"].gamma)
        assert np.abs(g.sum(axis=1)).max() > 0.1
    elif example.name == "reinforce_gamma_free_declared_discounted":
        # The function is right; its declaration is not: its expectation is not grad J.
        assert example.options.get("objective", "discounted") == "discounted"
        gap = np.abs(setup["gamma_free"] - setup["exact"]).max()
        assert gap > 0.05 * np.abs(setup["exact"]).max()
    else:
        result = mean_test(_batch_estimates(example.fn, example.backend), setup["exact"])
        assert result.rejected, str(result)


def _witness_trpo(example):
    check = example.expected.split(".")[1]
    if check in ("kl_constraint", "restores_theta_on_reject"):
        theta, states, actions, adv, max_kl = REJECT_CASE
        new = _call_trpo(example.fn, example.backend, *REJECT_CASE)
        if check == "kl_constraint":
            assert _trpo_quantities(theta, states, actions, adv)[1](new) > max_kl
        else:
            assert not np.array_equal(new, theta)
        return
    theta, states, actions, adv = _trpo_batch(9)
    L, kl, natural = _trpo_quantities(theta, states, actions, adv)
    with np.errstate(invalid="ignore"):
        new = _call_trpo(example.fn, example.backend, theta, states, actions, adv, 0.02)
    if check == "output_finite":
        assert not np.all(np.isfinite(new))
    elif check == "direction":
        assert kl(new) <= 0.02 and L(new) > L(theta)  # a valid trust-region step ...
        assert _cosine(new - theta, natural) < 0.99  # ... in the wrong direction
    elif check == "surrogate_improvement":
        assert kl(new) <= 0.02 and L(new) < L(theta)
    else:  # pragma: no cover
        raise AssertionError(example.expected)


WITNESSES = {"gae": _witness_gae, "ppo_loss": _witness_ppo, "value_loss": _witness_value,
             "kl_estimator": _witness_kl, "reinforce_estimator": _witness_reinforce, "trpo_step": _witness_trpo}


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # the deliberate NaN of ppo_loss_sb3_no_single_guard
@pytest.mark.parametrize("example", BASE_BROKEN, ids=lambda e: e.name)
def test_broken_example_violates_its_expected_property(example):
    _skip_without_torch(example.backend)
    WITNESSES[example.kind](example)


def test_examples_of_real_libraries_declare_them_and_the_demo_skips_them_when_missing(monkeypatch):
    """An example that runs SB3, sb3-contrib, TorchRL, optax or gymnasium says so, and `refpg check` on a
    machine without that library skips it with a note instead of reporting a correct example as failing."""
    import importlib.util
    import io

    from refpg.conformance import runner

    by_module = {e.fn.__module__.rsplit(".", 1)[-1]: e for e in ex.CORRECT + ex.BROKEN}
    assert "stable_baselines3" in by_module["update_sb3"].requires
    assert "sb3_contrib" in by_module["update_trpo"].requires
    assert "gymnasium" in by_module["pipeline_examples"].requires
    assert all("torchrl" in e.requires for e in ex.CORRECT + ex.BROKEN if e.name.startswith("update_torchrl"))
    assert ex.by_name("update_cleanrl_torch").requires == ()

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gymnasium", "stable_baselines3") else real(name, *a))
    assert not ex.by_name("numpy_a2c_pipeline").available
    ran = []
    monkeypatch.setattr(runner, "_run_example", lambda e: ran.append(e.name) or helpers_report(e))
    monkeypatch.setattr(runner, "_demo_set", lambda examples: (examples.by_name("numpy_a2c_pipeline"),
                                                               examples.by_name("update_cleanrl_torch")))
    out = io.StringIO()
    runner.demo(out=out)
    assert "numpy_a2c_pipeline" not in ran and "update_cleanrl_torch" in ran
    assert "gymnasium not installed" in out.getvalue()


def helpers_report(e):
    from tests import helpers
    return helpers.example_report(e)

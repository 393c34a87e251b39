"""Functions of two policies take the old one by name; the earlier positional form still works, with a warning."""

import inspect
import warnings

import numpy as np
import pytest

import refpg
from refpg.algorithms import exact_clipped_surrogate, exact_clipped_surrogate_gradient
from refpg.algorithms.ppo import batch_kl, batch_kl_gradient
from refpg.errors import RefpgDeprecationWarning


def case():
    mdp = refpg.envs.garnet(5, 3, 2, seed=3, gamma=0.9)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    rng = np.random.default_rng(3)
    return mdp, pol, rng.normal(size=pol.theta_shape), rng.normal(size=pol.theta_shape)


def calls():
    """(name, old positional call, new call, the new call as the warning should spell it)."""
    mdp, pol, theta, theta_old = case()
    states = np.array([0, 1, 1, 4])
    pi, pi_old = pol.probs(theta), pol.probs(theta_old)
    return [
        ("kl_divergence", lambda: refpg.kl_divergence(mdp, pol, theta, theta_old),
         lambda: refpg.kl_divergence(mdp, pol, theta, theta_old=theta_old),
         "kl_divergence(mdp, policy, theta, theta_old=theta_old)"),
        ("kl_divergence max", lambda: refpg.kl_divergence(mdp, pol, theta, theta_old, reduction="max"),
         lambda: refpg.kl_divergence(mdp, pol, theta, theta_old=theta_old, reduction="max"),
         "kl_divergence(mdp, policy, theta, theta_old=theta_old)"),
        ("kl_gradient", lambda: refpg.kl_gradient(mdp, pol, theta, theta_old),
         lambda: refpg.kl_gradient(mdp, pol, theta, theta_old=theta_old),
         "kl_gradient(mdp, policy, theta, theta_old=theta_old)"),
        ("surrogate", lambda: refpg.surrogate(mdp, pol, theta, theta_old),
         lambda: refpg.surrogate(mdp, pol, theta, theta_old=theta_old),
         "surrogate(mdp, policy, theta, theta_old=theta_old)"),
        ("surrogate_gradient", lambda: refpg.surrogate_gradient(mdp, pol, theta, theta_old),
         lambda: refpg.surrogate_gradient(mdp, pol, theta, theta_old=theta_old),
         "surrogate_gradient(mdp, policy, theta, theta_old=theta_old)"),
        ("trpo_bound", lambda: refpg.trpo_bound(mdp, pol, theta, theta_old).lower_bound,
         lambda: refpg.trpo_bound(mdp, pol, theta, theta_old=theta_old).lower_bound,
         "trpo_bound(mdp, policy, theta, theta_old=theta_old)"),
        ("batch_kl", lambda: batch_kl(pol, theta, theta_old, states),
         lambda: batch_kl(pol, theta, theta_old=theta_old, states=states),
         "batch_kl(policy, theta, theta_old=theta_old, states=states)"),
        ("batch_kl_gradient", lambda: batch_kl_gradient(pol, theta, theta_old, states),
         lambda: batch_kl_gradient(pol, theta, theta_old=theta_old, states=states),
         "batch_kl_gradient(policy, theta, theta_old=theta_old, states=states)"),
        ("exact_clipped_surrogate", lambda: exact_clipped_surrogate(mdp, pol, theta, theta_old, 0.2),
         lambda: exact_clipped_surrogate(mdp, pol, theta, theta_old=theta_old, clip_eps=0.2),
         "exact_clipped_surrogate(mdp, policy, theta, theta_old=theta_old, clip_eps=clip_eps)"),
        ("exact_clipped_surrogate_gradient", lambda: exact_clipped_surrogate_gradient(mdp, pol, theta, theta_old, 0.2),
         lambda: exact_clipped_surrogate_gradient(mdp, pol, theta, theta_old=theta_old, clip_eps=0.2),
         "exact_clipped_surrogate_gradient(mdp, policy, theta, theta_old=theta_old, clip_eps=clip_eps)"),
        ("policy_kl", lambda: refpg.policy_kl(pi_old, pi),
         lambda: refpg.policy_kl(pi_old=pi_old, pi_new=pi),
         "policy_kl(pi_old=pi_old, pi_new=pi_new)"),
        ("performance_difference", lambda: refpg.performance_difference(mdp, pi, pi_old),
         lambda: refpg.performance_difference(mdp, pi_new=pi, pi_old=pi_old),
         "performance_difference(mdp, pi_new=pi_new, pi_old=pi_old)"),
    ]


CALLS = calls()


@pytest.mark.parametrize("name, old, new, spelled", CALLS, ids=[c[0] for c in CALLS])
def test_the_positional_form_means_what_it_meant_and_warns_with_the_new_call(name, old, new, spelled):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = new()  # the new form is silent
    with pytest.warns(RefpgDeprecationWarning) as record:
        actual = old()
    assert len(record) == 1
    message = str(record[0].message)
    assert spelled in message, message
    assert "deprecated" in message
    assert record[0].filename == __file__  # points at the caller, not at refpg
    np.testing.assert_array_equal(actual, expected)


def test_the_warning_is_shown_when_the_old_call_is_in_a_library_module(tmp_path):
    """Python's default filters hide a DeprecationWarning outside __main__; this one must reach the user."""
    import subprocess
    import sys

    assert issubclass(RefpgDeprecationWarning, FutureWarning)
    assert refpg.errors.RefpgDeprecationWarning is RefpgDeprecationWarning
    (tmp_path / "mylib.py").write_text(
        "import numpy as np, refpg\n"
        "def step():\n"
        "    mdp = refpg.envs.bandit([1.0, 0.0])\n"
        "    pol = refpg.TabularSoftmax.for_mdp(mdp)\n"
        "    return refpg.kl_divergence(mdp, pol, np.ones((1, 2)), np.zeros((1, 2)))\n")
    out = subprocess.run([sys.executable, "-c", "import mylib; mylib.step()"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert "RefpgDeprecationWarning" in out.stderr and "theta_old=theta_old" in out.stderr, out.stderr
    assert "mylib.py" in out.stderr  # it names the caller's line


@pytest.mark.parametrize("fn, keyword_only", [
    (refpg.kl_divergence, ["theta_old"]), (refpg.kl_gradient, ["theta_old"]), (refpg.surrogate, ["theta_old"]),
    (refpg.surrogate_gradient, ["theta_old"]), (refpg.trpo_bound, ["theta_old"]),
    (batch_kl, ["theta_old", "states"]), (batch_kl_gradient, ["theta_old", "states"]),
    (exact_clipped_surrogate, ["theta_old", "clip_eps"]), (exact_clipped_surrogate_gradient, ["theta_old", "clip_eps"]),
    (refpg.policy_kl, ["pi_old", "pi_new"]), (refpg.performance_difference, ["pi_new", "pi_old"]),
])
def test_the_documented_signature_takes_the_old_policy_by_name_only(fn, keyword_only):
    params = inspect.signature(fn).parameters
    for name in keyword_only:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (fn.__name__, name)
    assert "keyword-only" in fn.__doc__ or "keyword-only" in inspect.getdoc(fn)


def test_kl_direction_is_old_then_new():
    mdp, pol, theta, theta_old = case()
    ev_old = refpg.evaluate(mdp, pol.probs(theta_old))
    per_state = refpg.policy_kl(pi_old=pol.probs(theta_old), pi_new=pol.probs(theta))
    mean = refpg.kl_divergence(mdp, pol, theta, theta_old=theta_old)
    np.testing.assert_allclose(mean, ev_old.d @ per_state, rtol=1e-12)
    swapped = refpg.kl_divergence(mdp, pol, theta_old, theta_old=theta)
    assert abs(swapped - mean) > 1e-3 * mean  # the KL is not symmetric: the order is observable


def test_performance_difference_is_J_new_minus_J_old():
    mdp, pol, theta, theta_old = case()
    pi, pi_old = pol.probs(theta), pol.probs(theta_old)
    expected = refpg.evaluate(mdp, pi).J - refpg.evaluate(mdp, pi_old).J
    np.testing.assert_allclose(refpg.performance_difference(mdp, pi_new=pi, pi_old=pi_old), expected, rtol=1e-10)


def test_misuse_of_the_signature_is_a_type_error_not_a_silent_swap():
    mdp, pol, theta, theta_old = case()
    with pytest.raises(TypeError, match="multiple values for argument 'theta_old'"):
        refpg.kl_divergence(mdp, pol, theta, theta_old, theta_old=theta_old)
    with pytest.raises(TypeError, match="at most 4 positional arguments"):
        refpg.kl_divergence(mdp, pol, theta, theta_old, "mean")
    with pytest.raises(TypeError, match="theta_old"):
        refpg.kl_divergence(mdp, pol, theta)
    with pytest.raises(TypeError, match="pi_new"):
        refpg.policy_kl(pi_old=pol.probs(theta))


def test_bad_inputs_name_the_argument():
    mdp, pol, theta, theta_old = case()
    for fn in (refpg.kl_divergence, refpg.kl_gradient, refpg.surrogate, refpg.surrogate_gradient, refpg.trpo_bound):
        with pytest.raises(refpg.errors.ShapeError, match="theta_old should have shape"):
            fn(mdp, pol, theta, theta_old=np.zeros(3))
        with pytest.raises(refpg.errors.ShapeError, match="theta should have shape"):
            fn(mdp, pol, np.zeros(3), theta_old=theta_old)
    bad = np.full((5, 3), 0.5)
    with pytest.raises(refpg.errors.InvalidInputError, match="pi_new"):
        refpg.policy_kl(pi_old=pol.probs(theta), pi_new=bad)
    with pytest.raises(refpg.errors.InvalidInputError, match="pi_old"):
        refpg.performance_difference(mdp, pi_new=pol.probs(theta), pi_old=bad)
    with pytest.raises(refpg.errors.InvalidInputError, match="clip_eps"):
        exact_clipped_surrogate(mdp, pol, theta, theta_old=theta_old, clip_eps=-0.1)
    with pytest.raises(refpg.errors.InvalidInputError, match="states"):
        batch_kl(pol, theta, theta_old=theta_old, states=np.array([0, 7]))


def test_a_mismatched_evaluation_old_is_named_evaluation_old():
    mdp, pol, theta, theta_old = case()
    wrong = refpg.evaluate(mdp, pol.probs(theta))
    for fn in (refpg.kl_divergence, refpg.kl_gradient, refpg.surrogate, refpg.surrogate_gradient, refpg.trpo_bound):
        with pytest.raises(refpg.errors.EvaluationMismatchError,
                           match=r"evaluation_old was computed for another policy: evaluation_old.pi\["):
            fn(mdp, pol, theta, theta_old=theta_old, evaluation_old=wrong)
    with pytest.raises(refpg.errors.InvalidInputError, match="evaluation_old should be a refpg.Evaluation"):
        exact_clipped_surrogate(mdp, pol, theta, theta_old=theta_old, clip_eps=0.2, evaluation_old={})


def test_policy_kl_gives_its_true_values_at_zero_probabilities_without_a_numpy_warning():
    pi_old = np.array([[0.5, 0.5], [1.0, 0.0]])
    pi_new = np.array([[1.0, 0.0], [1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl = refpg.policy_kl(pi_old=pi_old, pi_new=pi_new)
    # pi_new puts 0 where pi_old plays: inf; pi_old puts 0 where pi_new does: that term is 0.
    np.testing.assert_array_equal(kl, [np.inf, 0.0])

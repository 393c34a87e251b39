"""The Gaussian conformance kinds: gaussian_log_prob, gaussian_kl, squashed_log_prob, gaussian_ppo_loss.

Bundled examples (correct pass, broken fail with their id; seed 0 as the zoo checks them, seeds 1..5
slow), the references against torch.distributions and high-precision quadrature, hints that name
the misreading, bad declarations refused before any call, float32, the NumPy numerical derivative, the
declared regulariser band, backward stability in the action (with its power), and shrinking.
"""

import math

import numpy as np
import pytest

from refpg.conformance.gaussian import (check_gaussian_kl, check_gaussian_log_prob, kl_gradients, kl_terms,
                                        log_prob_terms)
from refpg.conformance.gaussian_ppo import check_gaussian_ppo_loss
from refpg.conformance.gaussian_squashed import (_expected_log_sech2, _inverse, _Box, check_squashed_log_prob,
                                                 log_sech2, squashed_gaussian_entropy)
from refpg.errors import InvalidInputError
from refpg.examples import gaussian_examples as G
from tests.helpers import example_report

torch = pytest.importorskip("torch")

CHECKS = {"gaussian_log_prob": check_gaussian_log_prob, "gaussian_kl": check_gaussian_kl,
          "squashed_log_prob": check_squashed_log_prob, "gaussian_ppo_loss": check_gaussian_ppo_loss}


def _run(ex, **kw):
    return CHECKS[ex.kind](ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kw})


def _by_name(name):
    return next(e for e in G.CORRECT + G.BROKEN if e.name == name)


def _param(exs):
    return [pytest.param(ex, id=ex.name) for ex in exs]


# -- the bundled examples ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ex", _param(G.CORRECT))
def test_correct_example_passes(ex):
    if ex.backend == "jax":
        pytest.importorskip("jax")
    report = example_report(ex)  # seed 0, shared with tests/test_conformance_examples.py
    assert report.passed, str(report)


@pytest.mark.parametrize("ex", _param(G.BROKEN))
def test_broken_example_fails_with_its_id(ex):
    report = example_report(ex)
    assert ex.expected in report.failed_ids, str(report)
    assert " should " in report.failure(ex.expected).message


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_examples_at_other_seeds(seed):
    """At the checks' default max_examples (100)."""
    for ex in G.CORRECT + G.BROKEN:
        if ex.backend == "jax":
            continue
        report = _run(ex, seed=seed)
        if ex.expected is None:
            assert report.passed, (ex.name, str(report))
        else:
            assert ex.expected in report.failed_ids, (ex.name, str(report))


def test_every_kind_has_correct_and_broken_examples_and_every_broken_one_cites_a_thread():
    for kind in G.KINDS:
        assert any(e.kind == kind for e in G.CORRECT) and any(e.kind == kind for e in G.BROKEN), kind
    for ex in G.BROKEN:
        assert "#" in ex.description or any(c in ex.description for c in ("f716d73", "8cd6aa6", "d251b24")), ex.name


# -- the references ---------------------------------------------------------------------------------------

def test_log_prob_entropy_and_kl_references_match_torch_distributions():
    rng = np.random.default_rng(0)
    m, m2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    ls, ls2 = rng.uniform(-4, 2, (5, 3)), rng.uniform(-4, 2, (5, 3))
    a = m + np.exp(ls) * rng.normal(size=(5, 3)) * 3
    T = torch.tensor
    p = torch.distributions.Normal(T(m), T(np.exp(ls)))
    q = torch.distributions.Normal(T(m2), T(np.exp(ls2)))
    np.testing.assert_allclose(log_prob_terms(m, ls, a)[0], p.log_prob(T(a)).numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(kl_terms(m, ls, m2, ls2)[0], torch.distributions.kl_divergence(p, q).numpy(),
                               rtol=1e-12, atol=1e-13)
    # The KL's gradients against autograd of torch's own KL.
    args = [T(x, requires_grad=True) for x in (m, ls, m2, ls2)]
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(args[0], args[1].exp()),
                                           torch.distributions.Normal(args[2], args[3].exp())).sum()
    grads = torch.autograd.grad(kl, args)
    for (name, want), got in zip(kl_gradients(m, ls, m2, ls2).items(), grads):
        np.testing.assert_allclose(want, got.numpy(), rtol=1e-11, atol=1e-12, err_msg=name)


def test_kl_reference_keeps_its_digits_for_nearly_equal_distributions():
    """expm1: KL(N(0, e^s) || N(0, e^(s + 1e-9))) = (e^{2 delta} - 1 - 2 delta)/2 ~ delta^2 = 1e-18, not 0 or noise."""
    kl = kl_terms(np.zeros((1, 1)), np.full((1, 1), 0.3), np.zeros((1, 1)), np.full((1, 1), 0.3 + 1e-9))[0]
    np.testing.assert_allclose(kl, 1e-18, rtol=1e-6)


def test_stable_log_jacobian_and_the_inverse_from_the_bounds():
    u = np.array([-30.0, -19.5, -3.0, 0.0, 1e-8, 2.0, 9.5, 25.0])
    with np.errstate(divide="ignore"):
        naive = np.log(1.0 - np.tanh(u) ** 2)
    moderate = np.abs(u) < 5
    np.testing.assert_allclose(log_sech2(u)[moderate], naive[moderate], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(log_sech2(np.array([25.0])), 2 * (math.log(2) - 25.0 - math.log1p(math.exp(-50.0))),
                               rtol=1e-15)
    box = _Box(0.0, 5.0)
    a = np.array([1e-13, 2.5, 5.0 - 4e-15])
    uu, jac = _inverse(a, box)
    np.testing.assert_allclose(2.5 + 2.5 * np.tanh(uu[1:2]), a[1:2], rtol=1e-15)
    np.testing.assert_allclose(jac, np.log(a * (5.0 - a) / 6.25), rtol=1e-13)  # log(1 - t^2) = log((a-l)(h-a)/c^2)


def _mp_expected_log_sech2(m, s):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    m, s = mp.mpf(m), mp.mpf(s)
    f = lambda u: 2 * (mp.log(2) - abs(u) - mp.log1p(mp.e ** (-2 * abs(u)))) * mp.npdf(u, m, s)  # noqa: E731
    pts = sorted({m - 40 * s, m, m + 40 * s} | ({mp.mpf(0)} if m - 40 * s < 0 < m + 40 * s else set()))
    return float(mp.quad(f, pts))


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (0.3, 1e-5), (3.0, 0.01), (20.0, 0.1), (0.0, 12.0), (-5.0, 3.0),
                                  (1e-4, 1e-6), (7.25, 1e-3), (0.5, math.exp(-12)), (-10.84, 0.225)])
def test_squashed_entropy_quadrature_is_within_its_bound_of_a_30_digit_quadrature(m, s):
    """Including a tiny std far from 0, where a quadrature over |u| without the standard score missed the peak."""
    value, bound = _expected_log_sech2(m, s)
    truth = _mp_expected_log_sech2(m, s)
    assert abs(value - truth) <= bound, (value, truth, bound)
    assert bound < 1e-12


def test_squashed_gaussian_entropy_adds_the_gaussian_entropy_and_the_rescaling():
    m, ls = np.array([[0.2, -1.0]]), np.array([[-0.5, 0.7]])
    h, err = squashed_gaussian_entropy(m, ls, low=0.0, high=5.0)
    parts = sum(0.5 * (1 + math.log(2 * math.pi)) + ls[0, i] + math.log(2.5) +
                _expected_log_sech2(m[0, i], math.exp(ls[0, i]))[0] for i in range(2))
    np.testing.assert_allclose(h, [parts], rtol=1e-14)
    # Monte Carlo of -log pi(a), a check of the decomposition rather than of the digits: a z-test at 4.89 standard
    # errors (two-sided false-alarm rate 1e-6, fixed seed); the same test rejects the Gaussian entropy of u, the
    # squashed entropy without its Jacobian term (rl_games #153).
    rng = np.random.default_rng(3)
    u = m + np.exp(ls) * rng.normal(size=(400_000, 2))
    sample = -(np.sum(-0.5 * ((u - m) / np.exp(ls)) ** 2 - ls - 0.5 * math.log(2 * math.pi) - log_sech2(u), -1)
               - 2 * math.log(2.5))
    se = sample.std() / math.sqrt(sample.size)
    assert abs(sample.mean() - h[0]) < 4.89 * se
    gaussian_only = float(np.sum(0.5 * (1 + math.log(2 * math.pi)) + ls))
    assert abs(sample.mean() - gaussian_only) > 4.89 * se


@pytest.mark.parametrize("kwargs, name", [(dict(low=1.0, high=1.0), "high"), (dict(mean=[np.nan]), "mean"),
                                          (dict(log_std=np.zeros(3)), "broadcast")])
def test_squashed_gaussian_entropy_refuses_bad_input(kwargs, name):
    args = dict(mean=np.zeros(2), log_std=np.zeros(2))
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=name):
        squashed_gaussian_entropy(args.pop("mean"), args.pop("log_std"), **args)


# -- hints --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, check_id, words", [
    ("log_prob_mean_over_dims_torch", "gaussian_log_prob.value", "the MEAN over the d = "),
    ("log_std_as_log_variance_numpy", "gaussian_log_prob.value", "log-VARIANCE"),
    ("log_prob_of_clipped_actions_torch", "gaussian_log_prob.value", "CLIPPED to [-1, 1]"),
    ("log_std_detached_torch", "gaussian_log_prob.gradient_scale", "openai/baselines #262"),
    ("log_prob_per_dimension_torch", "gaussian_log_prob.output_shape", "one log-probability per action dimension"),
    ("kl_arguments_swapped_torch", "gaussian_kl.value", "the OTHER direction"),
    ("kl_minus_one_numpy", "gaussian_kl.value", "-1 in place of -d"),
    ("kl_sign_flipped_numpy", "gaussian_kl.value", "-KL: the sign is flipped"),
    ("kl_bracket_misplaced_torch", "gaussian_kl.value", "the bracket closes too late"),
    ("squashed_tanh_applied_twice_torch", "squashed_log_prob.value", "tanh applied twice"),
    ("squashed_correction_added_torch", "squashed_log_prob.value", "sign flipped"),
    ("squashed_missing_rescale_torch", "squashed_log_prob.value", "missing the rescaling term"),
    ("squashed_unregularised_from_action_torch", "squashed_log_prob.output_finite", "2 (log 2 - u - softplus(-2u))"),
    ("squashed_reinverts_clamped_action_torch", "squashed_log_prob.saturation", "re-inverted from the action"),
    ("squashed_unsquash_capped_torch", "squashed_log_prob.saturation", "re-inverted from the action"),
    ("squashed_entropy_of_base_normal_torch", "squashed_log_prob.entropy", "the entropy of the Gaussian of u"),
    ("gaussian_ppo_scores_clipped_actions_torch", "gaussian_ppo_loss.ratio_one_at_old", "CLIPPED to [-1, 1]"),
    ("gaussian_ppo_log_prob_averaged_torch", "gaussian_ppo_loss.ratio_one_at_old", "averaged over the d = "),
    ("gaussian_ppo_log_std_detached_torch", "gaussian_ppo_loss.gradient_scale", "never trained"),
])
def test_failures_name_the_misreading(name, check_id, words):
    failure = _run(_by_name(name), max_examples=40).failure(check_id)
    assert failure is not None and words in failure.message, failure


def test_an_undeclared_regulariser_is_named_and_declaring_it_passes():
    ex = _by_name("sb3_style_squashed_log_prob")
    report = _run(ex, eps=0.0, max_examples=30)
    assert "declare eps=1e-6" in report.failure("squashed_log_prob.value").message
    report = _run(ex, max_examples=30)  # the convention's eps=1e-6
    assert report.passed, str(report)
    assert any("nats per dimension below the exact log-density" in w for w in report.warnings)


def test_the_regulariser_band_admits_the_exact_form_and_nothing_beyond_the_regularised_one():
    exact = _by_name("squashed_log_prob_torch").fn
    assert check_squashed_log_prob(exact, backend="torch", eps=1e-6, max_examples=30).passed

    def ten_times_the_regulariser(mean, log_std, actions, pre_tanh):
        base = torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(pre_tanh)
        return (base - torch.log(1 - actions ** 2 + 1e-5)).sum(-1)
    report = check_squashed_log_prob(ten_times_the_regulariser, backend="torch", eps=1e-6, max_examples=30)
    assert "squashed_log_prob.value" in report.failed_ids


def test_ppo_misdeclared_normalisation_is_named():
    ex = _by_name("sb3_style_gaussian_ppo_loss")
    report = _run(ex, normalize="none", max_examples=30)
    assert "normalised per minibatch by std(ddof=1)" in report.failure("gaussian_ppo_loss.ratio_one_at_old").message


def test_kl_direction_declared_reverse_passes_a_reversed_function_and_fails_the_forward_one():
    fwd = _by_name("diag_gaussian_kl_torch").fn
    rev = _by_name("trpo_kl_new_policy_first_torch").fn
    assert check_gaussian_kl(rev, backend="torch", direction="reverse", max_examples=30).passed
    report = check_gaussian_kl(fwd, backend="torch", direction="reverse", max_examples=30)
    assert "declare direction='reverse'" in report.failure("gaussian_kl.value").message


# -- backward stability in the action (pre_tanh="not_given"), with its power ----------------------------------

def _from_clamped_action(lim_of):
    def fn(loc, scale, action):
        u = torch.atanh(action.clamp(-lim_of(action), lim_of(action)))
        jac = 2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))
        return (torch.distributions.Normal(loc, scale).log_prob(u) - jac).sum(-1)
    return fn


def test_a_one_ulp_clamp_passes_and_a_nine_ulp_clamp_fails_near_the_bound():
    """Within 4 ulps of the normalised action the function is judged backward stable: SB3's clamp to 1 - eps
    (one ulp below the largest float64 under 1) passes, TorchRL's 1 - 1e-15 (nine ulps) does not."""
    one_ulp = _from_clamped_action(lambda a: 1.0 - torch.finfo(a.dtype).eps)
    nine_ulps = _from_clamped_action(lambda a: 1.0 - torch.finfo(a.dtype).resolution)
    assert check_squashed_log_prob(one_ulp, convention="torchrl", backend="torch", max_examples=40).passed
    report = check_squashed_log_prob(nine_ulps, convention="torchrl", backend="torch", max_examples=40)
    assert "squashed_log_prob.saturation" in report.failed_ids
    # ... and the declared region where its clamp never acts passes.
    assert check_squashed_log_prob(nine_ulps, convention="torchrl", backend="torch", max_pre_tanh=17.0,
                                   max_examples=40).passed


def test_float32_caps_the_pre_tanh_value_at_7_25_with_a_resolution_clamp():
    nine = _from_clamped_action(lambda a: 1.0 - torch.finfo(a.dtype).resolution)
    report = check_squashed_log_prob(nine, convention="torchrl", backend="torch", dtype="float32", max_examples=40)
    assert "1 - 1e-06" in report.failure("squashed_log_prob.saturation").message
    assert check_squashed_log_prob(nine, convention="torchrl", backend="torch", dtype="float32", max_pre_tanh=7.0,
                                   max_examples=40).passed


# -- declarations and signatures ----------------------------------------------------------------------------

@pytest.mark.parametrize("check, kwargs, name", [
    (check_gaussian_log_prob, dict(scale="var"), "scale"),
    (check_gaussian_log_prob, dict(state_dependent="yes"), "state_dependent"),
    (check_gaussian_log_prob, dict(entropy=1), "entropy"),
    (check_gaussian_log_prob, dict(min_log_std=1.0), "min_log_std"),
    (check_gaussian_log_prob, dict(convention="rllib"), "convention"),
    (check_gaussian_log_prob, dict(max_examples=0), "max_examples"),
    (check_gaussian_kl, dict(direction="backward"), "direction"),
    (check_squashed_log_prob, dict(pre_tanh="maybe"), "pre_tanh"),
    (check_squashed_log_prob, dict(eps=-1e-6), "eps"),
    (check_squashed_log_prob, dict(low=1.0, high=-1.0), "high"),
    (check_squashed_log_prob, dict(max_pre_tanh=3.0), "max_pre_tanh"),
    (check_gaussian_ppo_loss, dict(normalize="minibatch"), "normalize"),
    (check_gaussian_ppo_loss, dict(ddof=-1), "ddof"),
    (check_gaussian_ppo_loss, dict(normalize="batch", adv_eps=0.0), "adv_eps"),
])
def test_bad_declarations_name_the_option(check, kwargs, name):
    def never(*args):
        raise AssertionError("called")
    with pytest.raises(InvalidInputError, match=name):
        check(never, **kwargs)


def test_a_function_the_convention_cannot_call_is_refused_before_any_call():
    def three(mean, log_std, actions):
        raise AssertionError("called")
    with pytest.raises(InvalidInputError, match="cannot be called"):
        check_squashed_log_prob(three)  # pre_tanh="given" passes four arrays
    with pytest.raises(InvalidInputError, match="cannot be called"):
        check_gaussian_kl(three)


def test_another_conventions_names_are_refused_with_the_convention_to_pass():
    def torchrl_names(loc, scale, action):
        raise AssertionError("called")
    with pytest.raises(InvalidInputError, match='convention="torchrl"'):
        check_gaussian_log_prob(torchrl_names)
    assert check_gaussian_log_prob(_by_name("torchrl_style_log_prob").fn, convention="torchrl",
                                   max_examples=5).passed


# -- backends, dtypes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["diag_gaussian_log_prob_entropy_torch", "diag_gaussian_kl_numpy",
                                  "squashed_log_prob_torch", "sb3_style_squashed_log_prob",
                                  "tanh_normal_log_prob_from_action_torch", "gaussian_ppo_loss_numpy",
                                  "cleanrl_style_gaussian_ppo_loss"])
def test_correct_examples_pass_in_float32(name):
    assert _run(_by_name(name), dtype="float32", max_examples=30).passed


def test_numpy_derivatives_are_numerical_and_the_report_says_so():
    report = _run(_by_name("diag_gaussian_log_prob_numpy"), max_examples=5)
    assert any("numerical" in w for w in report.warnings)
    assert {"gaussian_log_prob.gradient_mean", "gaussian_log_prob.gradient_scale"} <= set(report.checks)
    assert report.passed


def test_a_numpy_function_with_a_wrong_derivative_fails_the_numerical_check():
    """Right values at every drawn point, a slope of 5 too many in log_std around it (the function remembers the
    first log_std it saw with the same mean and actions): only the central differences see it."""
    base = _by_name("diag_gaussian_log_prob_numpy").fn
    first = {}

    def wrong_slope(mean, log_std, actions):
        key = (mean.tobytes(), actions.tobytes())
        start = first.setdefault(key, np.array(log_std, copy=True))
        return base(mean, log_std, actions) + 5.0 * np.sum(np.broadcast_to(log_std - start, mean.shape), axis=-1)
    report = check_gaussian_log_prob(wrong_slope, backend="numpy", max_examples=10)
    assert report.failed_ids == ("gaussian_log_prob.gradient_scale",), str(report)
    assert "numerical" in report.failure("gaussian_log_prob.gradient_scale").message


def test_state_dependent_and_shared_scales_are_passed_in_their_shapes():
    shapes = []

    def spy(mean, log_std, actions):
        shapes.append((tuple(mean.shape), tuple(log_std.shape)))
        return _by_name("diag_gaussian_log_prob_numpy").fn(mean, log_std, actions)
    check_gaussian_log_prob(spy, backend="numpy", max_examples=5)
    assert all(s == (m[1],) for m, s in shapes)
    shapes.clear()
    check_gaussian_log_prob(spy, backend="numpy", state_dependent=True, max_examples=5)
    assert all(s == m for m, s in shapes)
    shapes.clear()
    cleanrl = _by_name("cleanrl_style_logprob").fn

    def spy_cleanrl(action_mean, action_logstd, action):
        shapes.append((tuple(action_mean.shape), tuple(action_logstd.shape)))
        return cleanrl(action_mean, action_logstd, action)
    check_gaussian_log_prob(spy_cleanrl, convention="cleanrl", backend="torch", entropy=True, max_examples=5)
    assert all(s == (1, m[1]) for m, s in shapes)


def test_every_case_stores_an_action_outside_the_box():
    seen = []

    def spy(mean, log_std, actions):
        seen.append(np.max(np.abs(actions)))
        return _by_name("diag_gaussian_log_prob_numpy").fn(mean, log_std, actions)
    check_gaussian_log_prob(spy, backend="numpy", max_examples=20)
    assert min(seen) >= 1.25 - 1e-12


# -- shrinking ----------------------------------------------------------------------------------------------

def test_mean_over_dims_shrinks_to_one_row_of_two_dimensions():
    ce = _run(_by_name("log_prob_mean_over_dims_torch")).failure("gaussian_log_prob.value").counterexample
    assert ce.shrunk and ce.inputs["mean"].shape == (1, 2)


def test_clipped_actions_shrink_to_one_entry():
    ce = _run(_by_name("log_prob_of_clipped_actions_torch")).failure("gaussian_log_prob.value").counterexample
    assert ce.shrunk and ce.inputs["actions"].shape == (1, 1) and abs(ce.inputs["actions"][0, 0]) > 1.0


def test_saturation_counterexample_is_one_row_with_a_saturated_entry():
    ce = _run(_by_name("squashed_reinverts_clamped_action_torch")).failure(
        "squashed_log_prob.saturation").counterexample
    assert ce.shrunk and ce.inputs["pre_tanh"].shape[0] == 1 and np.max(np.abs(ce.inputs["pre_tanh"])) >= 8.0


def test_ppo_counterexample_at_the_old_policy_shrinks_to_one_sample():
    ce = _run(_by_name("gaussian_ppo_scores_clipped_actions_torch")).failure(
        "gaussian_ppo_loss.ratio_one_at_old").counterexample
    assert ce.shrunk and ce.inputs["actions"].shape[0] == 1


def test_a_wrong_kl_gradient_hides_in_no_bound_that_grows_both_ways():
    """A KL exact in value whose d/dlog_std_p is tripled only where log_std_p - log_std_q < -11, where
    sigma_p^2 / sigma_q^2 is ~1e-10 and the true derivative is -1: the tolerance there is set by terms
    of size 1, not by exp(2 |log_std_p - log_std_q|) ~ 1e10 (a bound that once let it pass)."""
    torch = pytest.importorskip("torch")

    def kl(mean_p, log_std_p, mean_q, log_std_q):
        lp = log_std_p.expand_as(mean_p)
        lq = log_std_q.expand_as(mean_q)
        lp2 = torch.where((lp - lq) < -11, 3 * lp - 2 * lp.detach(), lp)
        p = torch.distributions.Normal(mean_p, lp2.exp())
        q = torch.distributions.Normal(mean_q, lq.exp())
        return torch.distributions.kl_divergence(p, q).sum(-1)

    for state_dependent in (False, True):
        report = check_gaussian_kl(kl, backend="torch", state_dependent=state_dependent)
        assert "gaussian_kl.gradient" in report.failed_ids, str(report)
        assert "gaussian_kl.value" not in report.failed_ids

"""check_ppo_loss's dual clip, asymmetric clip range, clip-fraction definitions and conventions (verl,
cleanrl_jax), and the regions of the PPO and value losses, each drawn by construction (issue #15)."""

import math

import numpy as np
import pytest

from refpg.conformance import check, check_ppo_loss, check_value_loss
from refpg.errors import InvalidInputError
from refpg.examples import correct, ppo_variants
from tests.helpers import example_report

FAST = dict(max_examples=25)
SEEDS = [pytest.param(0)] + [pytest.param(s, marks=pytest.mark.slow) for s in range(1, 6)]


def _needs(ex):
    return [pytest.mark.skipif(ex.backend == "torch" and not _has("torch"), reason="needs torch"),
            pytest.mark.skipif(ex.backend == "jax" and not _has("jax"), reason="needs jax")]


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _run(ex, **kwargs):
    return check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kwargs})


# -- the bundled examples, over seeds -------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_needs(ex)) for ex in ppo_variants.BROKEN])
def test_broken_variant_fails_with_its_check_id_at_every_seed(ex, seed):
    report = example_report(ex) if seed == 0 else _run(ex, seed=seed)
    assert ex.expected in report.failed_ids, str(report)
    assert " should " in report.failure(ex.expected).message
    # Every shrunk counterexample keeps its ratios 10% (in log) away from every bound, and its minibatch
    # at the check's minimum size or above.
    for failure in report.failures:
        inputs = failure.counterexample.inputs
        eps = inputs.get("cliprange", inputs.get("clip_eps"))
        high = dict(ex.options).get("eps_high", eps)
        kinks = [math.log1p(-eps), math.log1p(high)] + ([math.log(3.0)] if ex.convention == "verl" else [])
        x = np.log(inputs["ratio (derived)"])
        assert all(np.all(np.abs(x - k) >= 0.1 * abs(k) - 1e-6) for k in kinks), (failure.check_id, inputs)
        assert len(x) >= (2 if ex.convention == "cleanrl_jax" else 1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_needs(ex)) for ex in ppo_variants.CORRECT])
def test_correct_variant_passes_at_every_seed(ex, seed):
    report = example_report(ex) if seed == 0 else _run(ex, seed=seed)
    assert report.passed and not report.not_run, str(report)


# -- regions drawn by construction -----------------------------------------------------------------

def _f64(x):
    return np.array(x.detach() if hasattr(x, "detach") else x, dtype=np.float64)


def _record_ppo(fn, calls):
    """`fn` with the refpg signature, recording each call's (ratio, advantages, clip_eps) as float64."""
    def recording(logp_new, logp_old, advantages, clip_eps):
        calls.append((np.exp(_f64(logp_new) - _f64(logp_old)), _f64(advantages), float(clip_eps)))
        return fn(logp_new, logp_old, advantages, clip_eps)
    return recording


def _ppo_regions(calls, *, dual=None, normalize=None):
    """{(sign of A, band of r)} over every recorded sample; asserts each ratio is >= 10% (in log) away
    from every bound: 1 - eps, 1 + eps and the dual clip."""
    seen = set()
    for ratio, adv, eps in calls:
        a = adv if normalize is None else normalize(adv)
        x = np.log(ratio)
        kinks = [math.log1p(-eps), math.log1p(eps)] + ([math.log(dual)] if dual else [])
        for k in kinks:
            assert np.all(np.abs(x - k) >= 0.1 * abs(k) - 1e-6), (ratio, eps)
        band = np.where(ratio < 1 - eps, "below", np.where(ratio <= 1 + eps, "inside", "above"))
        if dual:
            band = np.where(ratio > dual, "beyond", band)
        seen |= {(int(np.sign(s)), str(b)) for s, b in zip(a, band) if s != 0}
    return seen


def _dual_clip_numpy(logp_new, logp_old, advantages, clip_eps, c=3.0):
    ratio = np.exp(logp_new - logp_old)
    surrogate = np.minimum(ratio * advantages, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    return -np.mean(np.where(advantages < 0, np.maximum(surrogate, c * advantages), surrogate))


def test_ppo_loss_draws_both_signs_of_the_advantage_in_every_ratio_band():
    calls = []
    assert check_ppo_loss(_record_ppo(correct.ppo_loss_refpg_numpy, calls)).passed
    expected = {(s, b) for s in (1, -1) for b in ("below", "inside", "above")}
    assert _ppo_regions(calls) == expected


def test_ppo_loss_with_dual_clip_draws_ratios_beyond_c_for_both_signs():
    calls = []
    report = check_ppo_loss(_record_ppo(_dual_clip_numpy, calls), dual_clip=3.0)
    assert report.passed and "ppo_loss.dual_clip" in report.checks, str(report)
    expected = {(s, b) for s in (1, -1) for b in ("below", "inside", "above", "beyond")}
    assert _ppo_regions(calls, dual=3.0) == expected
    # Between the clip range and c, and beyond c, for a negative advantage: the two sides of the dual clip.
    assert {(-1, "above"), (-1, "beyond")} <= _ppo_regions(calls, dual=3.0)


def test_ppo_loss_regions_are_those_of_the_normalised_advantages():
    calls = []
    assert check_ppo_loss(_record_ppo(correct.ppo_loss_cleanrl_torch, calls), convention="cleanrl",
                          backend="torch").passed

    def normalize(adv):
        return (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)

    expected = {(s, b) for s in (1, -1) for b in ("below", "inside", "above")}
    assert _ppo_regions(calls, normalize=normalize) == expected


def _value_regions(calls):
    """{(position of d, sign of the error, larger term of max)} over every recorded sample, off the kinks."""
    seen = set()
    for v_new, v_old, ret, eps in calls:
        for vn, vo, r in zip(v_new, v_old, ret):
            d, err = vn - vo, vn - r
            if abs(abs(d) - eps) < 0.1 * eps or err == 0:
                continue
            if abs(d) < eps:
                seen.add(("inside", int(np.sign(err)), "equal"))
                continue
            v_clip = vo + math.copysign(eps, d)
            un, cl = abs(vn - r), abs(v_clip - r)
            if abs(un - cl) >= 0.1 * abs(vn - v_clip):
                seen.add(("above" if d > 0 else "below", int(np.sign(err)), "clipped" if cl > un else "unclipped"))
    return seen


def test_value_loss_draws_every_region_of_the_max_form():
    torch = pytest.importorskip("torch")
    calls = []

    def recording(values_new, values_old, returns, clip_eps):
        calls.append(tuple(t.detach().numpy().astype(np.float64) for t in (values_new, values_old, returns))
                     + (float(clip_eps),))
        return correct.value_loss_cleanrl_torch(values_new, values_old, returns, clip_eps)

    assert check_value_loss(recording, convention="cleanrl", backend="torch").passed
    assert isinstance(calls[0][0], np.ndarray) and torch is not None
    # Outside the range the clipped term is necessarily the larger when the error's sign is opposite
    # to d's (R beyond V, away from V_clip): six outside combinations exist, two inside.
    expected = {("inside", 1, "equal"), ("inside", -1, "equal"),
                ("above", -1, "clipped"), ("above", 1, "clipped"), ("above", 1, "unclipped"),
                ("below", 1, "clipped"), ("below", -1, "clipped"), ("below", -1, "unclipped")}
    assert _value_regions(calls) == expected


# -- dual clip -------------------------------------------------------------------------------------

def test_a_missing_dual_clip_is_named_with_a_shrunk_case_in_its_region():
    report = check_ppo_loss(ppo_variants.ppo_loss_dual_clip_missing, convention="verl", backend="torch")
    assert report.failed_ids == ("ppo_loss.dual_clip", "ppo_loss.gradient"), str(report)
    failure = report.failure("ppo_loss.dual_clip")
    assert "WITHOUT the dual clip" in failure.message and "pass dual_clip=None" in failure.message
    ce = failure.counterexample.inputs
    ratio, adv = ce["ratio (derived)"], ce["advantages"]
    assert np.any((adv < 0) & (ratio >= 3.0 ** 1.1 * (1 - 1e-9))), ce  # beyond c, 10% (in log) clear of it
    assert len(adv) == 1  # shrunk to the one sample that shows it
    gradient = report.failure("ppo_loss.gradient").message
    assert "exactly 0 where the dual-clip term c * A is taken" in gradient


def test_dual_clip_on_positive_advantages_is_named():
    report = check_ppo_loss(ppo_variants.ppo_loss_dual_clip_all_signs, convention="verl", backend="torch")
    message = report.failure("ppo_loss.dual_clip").message
    assert "applied to every sample" in message and "only where A < 0" in message


def test_a_plain_ppo_loss_matching_a_dual_clip_at_3_is_told_to_declare_it():
    def verl_default(logp_new, logp_old, advantages, clip_eps):
        return _dual_clip_numpy(logp_new, logp_old, advantages, clip_eps, c=3.0)

    report = check_ppo_loss(verl_default)  # no dual clip declared; u up to 10 reaches ratios past 3
    assert report.failed_ids == ("ppo_loss.outside_clip_range",), str(report)
    assert "pass dual_clip=3" in report.failure("ppo_loss.outside_clip_range").message
    assert check_ppo_loss(verl_default, dual_clip=3).passed


@pytest.mark.parametrize("value, words", [
    (1.0, "dual_clip should be a real number > 1"), (0.5, "actual 0.5"), (True, "actual True"),
    ("3", "actual '3'"), (float("nan"), "actual nan"),
    (1.2, "dual_clip should be well above the upper clip bound"),
])
def test_a_bad_dual_clip_is_refused_by_name(value, words):
    with pytest.raises(InvalidInputError, match="dual_clip") as info:
        check_ppo_loss(correct.ppo_loss_refpg_numpy, dual_clip=value, eps_high=0.3)
    assert words in str(info.value)


def test_a_dual_clip_near_the_widest_clip_range_leaves_that_width_out_and_says_so():
    calls = []
    report = check_ppo_loss(_record_ppo(lambda *a: _dual_clip_numpy(*a, c=1.35), calls), dual_clip=1.35)
    assert report.passed, str(report)
    assert any("clip_eps in [0.3]" in w for w in report.warnings), report.warnings
    assert {eps for _, _, eps in calls[1:]} == {0.1, 0.2}  # calls[0] is the backend probe


# -- asymmetric clip range ---------------------------------------------------------------------------

def test_an_asymmetric_range_is_checked_and_a_symmetric_loss_is_named():
    ex = next(e for e in ppo_variants.CORRECT if e.name == "ppo_loss_verl_dapo_torch")
    assert _run(ex).passed
    report = check_ppo_loss(ppo_variants.ppo_loss_verl_dual_clip_torch, convention="verl", eps_high=0.28)
    assert "ppo_loss.outside_clip_range" in report.failed_ids, str(report)
    assert "symmetric clip range" in report.failure("ppo_loss.outside_clip_range").message


@pytest.mark.parametrize("options, words", [
    (dict(eps_low=1.0), "eps_low should be < 1.0"), (dict(eps_low=0.0), "eps_low should be > 0.0"),
    (dict(eps_high=-0.1), "eps_high should be > 0.0"),
    (dict(clip_fraction="clipped"), "clip_fraction should be one of"),
])
def test_bad_clip_options_are_refused_by_name(options, words):
    with pytest.raises(InvalidInputError) as info:
        check_ppo_loss(correct.ppo_loss_refpg_numpy, **options)
    assert words in str(info.value)


# -- clip fraction definitions ---------------------------------------------------------------------

def _with_fraction(definition):
    def ppo(logp_new, logp_old, advantages, clip_eps):
        ratio = np.exp(logp_new - logp_old)
        outside = (ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)
        active = ((advantages > 0) & (ratio > 1 + clip_eps)) | ((advantages < 0) & (ratio < 1 - clip_eps))
        return correct.ppo_loss_refpg_numpy(logp_new, logp_old, advantages, clip_eps), \
            float(np.mean(active if definition == "active" else outside))
    return ppo


@pytest.mark.parametrize("returned, declared", [("any", "active"), ("active", "any")])
def test_a_fraction_of_the_other_definition_is_named_with_the_option_to_pass(returned, declared):
    report = check_ppo_loss(_with_fraction(returned), clip_fraction=declared, **FAST)
    assert report.failed_ids == ("ppo_loss.clip_fraction",), str(report)
    assert f"pass clip_fraction='{returned}'" in report.failure("ppo_loss.clip_fraction").message
    assert check_ppo_loss(_with_fraction(returned), clip_fraction=returned, **FAST).passed


def test_verl_returns_are_checked_fraction_by_fraction():
    torch = pytest.importorskip("torch")

    def lower_swapped(old_log_prob, log_prob, advantages, response_mask, cliprange):
        loss, clipfrac, kl, lower = ppo_variants.ppo_loss_verl_dual_clip_torch(old_log_prob, log_prob, advantages,
                                                                               response_mask, cliprange)
        return loss, lower, kl, clipfrac

    report = check_ppo_loss(lower_swapped, convention="verl")
    assert report.failed_ids == ("ppo_loss.clip_fraction",), str(report)
    assert torch is not None and "should be" in report.failure("ppo_loss.clip_fraction").message

    def as_dict(old_log_prob, log_prob, advantages, response_mask, cliprange):
        loss, clipfrac, _, lower = ppo_variants.ppo_loss_verl_dual_clip_torch(old_log_prob, log_prob, advantages,
                                                                              response_mask, cliprange)
        return {"loss": loss, "clip_fraction": clipfrac, "dual_clip_fraction": lower * 0}

    message = check_ppo_loss(as_dict, convention="verl").failure("ppo_loss.clip_fraction").message
    assert message.startswith("dual_clip_fraction should be") and "A < 0 and ratio > c" in message


# -- conventions -------------------------------------------------------------------------------------

def test_a_verl_function_declared_refpg_is_refused_before_any_call():
    with pytest.raises(InvalidInputError, match='pass convention="verl"'):
        check_ppo_loss(ppo_variants.ppo_loss_verl_dual_clip_torch)


def test_cleanrl_jax_normalises_with_ddof_0_and_names_ddof_1():
    report = _run(next(e for e in ppo_variants.BROKEN if e.name == "ppo_loss_cleanrl_jax_ddof1"))
    assert "pass ddof=1" in report.failure("ppo_loss.inside_clip_range").message
    # A minibatch of one normalised with ddof = 0 is 0: no sign, so minibatches of one are not drawn.
    ce = report.failure("ppo_loss.inside_clip_range").counterexample
    assert len(ce.inputs["advantages"]) >= 2


# -- JAX: gradients through jax.grad, a few shapes ------------------------------------------------------

def _jax_losses():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def surrogate(logp_new, logp_old, adv, eps, detach=False):
        r = jnp.exp(logp_new - logp_old)
        clipped = jnp.clip(jax.lax.stop_gradient(r) if detach else r, 1 - eps, 1 + eps)
        return jnp.minimum(r * adv, clipped * adv), r

    @jax.jit
    def ppo(logp_new, logp_old, adv, eps):
        return -surrogate(logp_new, logp_old, adv, eps)[0].mean()

    @jax.jit
    def ppo_detached(logp_new, logp_old, adv, eps):
        return -surrogate(logp_new, logp_old, adv, eps, detach=True)[0].mean()

    @jax.jit
    def dual(logp_new, logp_old, adv, eps):
        s, _ = surrogate(logp_new, logp_old, adv, eps)
        return -jnp.where(adv < 0, jnp.maximum(s, 3.0 * adv), s).mean()

    @jax.jit
    def dual_straight_through(logp_new, logp_old, adv, eps):  # right value, r's gradient through c * A
        s, r = surrogate(logp_new, logp_old, adv, eps)
        bound = 3.0 * adv * r / jax.lax.stop_gradient(r)
        return -jnp.where(adv < 0, jnp.maximum(s, bound), s).mean()

    @jax.jit
    def value(v, v_old, ret, eps):
        v_clip = v_old + jnp.clip(v - v_old, -eps, eps)
        return 0.5 * jnp.maximum((v - ret) ** 2, (v_clip - ret) ** 2).mean()

    @jax.jit
    def value_detached(v, v_old, ret, eps):
        v_clip = v_old + jnp.clip(jax.lax.stop_gradient(v) - v_old, -eps, eps)
        return 0.5 * jnp.maximum((v - ret) ** 2, (v_clip - ret) ** 2).mean()

    return ppo, ppo_detached, dual, dual_straight_through, value, value_detached


@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_jax_gradients_are_checked_through_jax_grad(dtype):
    ppo, ppo_detached, dual, dual_straight_through, value, value_detached = _jax_losses()
    kw = dict(backend="jax", dtype=dtype, **FAST)
    for report in (check_ppo_loss(ppo, **kw), check_ppo_loss(dual, dual_clip=3.0, **kw),
                   check_value_loss(value, convention="cleanrl", **kw)):
        assert report.passed and report.backend == "jax" and not report.not_run, str(report)
        assert any(c.endswith(".gradient") for c in report.checks)
    report = check_ppo_loss(ppo_detached, **kw)
    assert report.failed_ids == ("ppo_loss.gradient",), str(report)
    report = check_ppo_loss(dual_straight_through, dual_clip=3.0, **kw)
    assert report.failed_ids == ("ppo_loss.gradient",), str(report)
    assert "where the dual-clip term c * A is taken" in report.failure("ppo_loss.gradient").message
    report = check_value_loss(value_detached, convention="cleanrl", **kw)
    assert report.failed_ids == ("value_loss.gradient",), str(report)


def test_jax_checks_draw_a_few_shapes_and_shrink_within_them():
    ppo, *_ = _jax_losses()
    shapes = set()

    def recording(logp_new, logp_old, advantages, clip_eps):
        shapes.add(tuple(logp_new.shape))
        return ppo(logp_new, logp_old, advantages, clip_eps) + (0.5 if logp_new.shape[0] > 1 else 0.0)

    report = check_ppo_loss(recording, backend="jax")
    assert "ppo_loss.inside_clip_range" in report.failed_ids
    assert len(report.failure("ppo_loss.inside_clip_range").counterexample.inputs["logp_new"]) == 4
    assert shapes == {(1,), (4,), (8,)}  # minibatches of 1, 4 and 8 only, shrinking included


def test_verl_masked_mean_divides_by_the_count_plus_1e_8_as_declared():
    pytest.importorskip("torch")
    fn = ppo_variants.ppo_loss_verl_dual_clip_torch
    assert check_ppo_loss(fn, convention="verl", max_examples=20).passed  # count_eps=1e-8 by the convention
    report = check_ppo_loss(fn, convention="verl", count_eps=0.0, max_examples=20)
    assert "ppo_loss.inside_clip_range" in report.failed_ids
    assert "pass count_eps=1e-08" in report.failure("ppo_loss.inside_clip_range").message
    with pytest.raises(InvalidInputError, match="count_eps"):
        check_ppo_loss(fn, convention="verl", count_eps=-1.0)

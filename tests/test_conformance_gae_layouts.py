"""check_layout (refpg.conformance.gae_layouts): RLHF token-level GAE and episode-at-a-time buffers.

The exact answers by hand; the declared whitening rules, the single-token batch among them; every bundled
example of refpg.examples.gae_layouts_examples at seeds 0..5; the regions that decide correctness drawn by
construction; and the jax backend's bucketed shapes.
"""

import importlib.util

import numpy as np
import pytest

from refpg.conformance.gae_layouts import (LAYOUT_CONVENTIONS, check_layout, episode_expected, token_gae,
                                           whiten)
from refpg.errors import InvalidInputError
from refpg.examples import gae_layouts_examples as layouts
from tests.helpers import example_report

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
RLHF = {"whiten": True, "whiten_ddof": 1, "whiten_eps": 1e-8, "whiten_eps_on": "var", "whiten_count_eps": 0.0,
        "whiten_single_token": "zero"}
VERL = {"whiten": True, "whiten_eps_on": "var"}


def _marks(ex):
    needs = {"torch": HAS_TORCH, "jax": HAS_JAX}.get(ex.backend, True)
    return [pytest.mark.skipif(not needs, reason=f"needs {ex.backend}")]


def _check(ex, **kwargs):
    if ex.convention not in LAYOUT_CONVENTIONS:  # a caller-side example in check_gae's own convention
        from refpg.conformance import check_gae
        return check_gae(ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kwargs})
    return check_layout(ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kwargs})


# -- the exact answers -----------------------------------------------------------------------------

def test_token_gae_bootstraps_zero_after_each_rows_last_token_and_ignores_padding():
    rewards = np.array([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    values = np.array([[0.5, 1.0, 9.0], [2.0, 9.0, 9.0]])
    adv = token_gae(rewards, values, np.array([2, 1]), gamma=0.5, lam=0.5)
    # Row 0: delta_1 = 2 - 1 = 1 (nothing after the last token); delta_0 = 1 + 0.5 * 1 - 0.5 = 1;
    # A_0 = 1 + 0.25 * 1. Row 1: A_0 = 3 - 2. Padding is 0.
    np.testing.assert_allclose(adv, [[1.25, 1.0, 0.0], [1.0, 0.0, 0.0]], rtol=0, atol=1e-15)


def test_whitening_uses_the_response_tokens_of_the_whole_batch_with_bessels_correction():
    adv = np.array([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    valid = np.array([[True, True, False], [True, False, False]])
    out = whiten(adv, valid, {**RLHF, "whiten_eps": 0.0})
    # mean 3, Bessel variance ((4 + 0 + 4) / 2) = 4, std 2.
    np.testing.assert_allclose(out[valid], [-1.0, 0.0, 1.0], rtol=0, atol=1e-15)
    biased = whiten(adv, valid, {**RLHF, "whiten_eps": 0.0, "whiten_ddof": 0})
    np.testing.assert_allclose(biased[valid], np.array([-2.0, 0.0, 2.0]) / np.sqrt(8 / 3), rtol=1e-15)


@pytest.mark.parametrize("where, scale", [("var", np.sqrt(4 + 0.5)), ("std", 2 + 0.5), ("clamp", 2.0)])
def test_the_eps_placements(where, scale):
    adv, valid = np.array([[1.0, 3.0, 5.0]]), np.ones((1, 3), bool)
    out = whiten(adv, valid, {**RLHF, "whiten_eps": 0.5, "whiten_eps_on": where})
    np.testing.assert_allclose(out, np.array([[-2.0, 0.0, 2.0]]) / scale, rtol=1e-15)


def test_whiten_count_eps_divides_the_masked_means_by_n_plus_it_as_recent_verl_does():
    adv, valid = np.array([[1.0, 3.0]]), np.ones((1, 2), bool)
    out = whiten(adv, valid, {**RLHF, "whiten_eps": 0.0, "whiten_count_eps": 0.5})
    mean = 4.0 / 2.5
    var = ((1 - mean) ** 2 + (3 - mean) ** 2) / 2.5 * 2
    np.testing.assert_allclose(out, (adv - mean) / np.sqrt(var), rtol=1e-15)


def test_a_single_token_batch_whitens_to_zero_or_stays_raw_as_declared_and_never_nan():
    adv, valid = np.array([[2.5, 7.0]]), np.array([[True, False]])
    for ddof in (0, 1):
        for eps in (0.0, 1e-8):
            out = whiten(adv, valid, {**RLHF, "whiten_ddof": ddof, "whiten_eps": eps})
            assert out[0, 0] == 0.0 and np.all(np.isfinite(out))
    raw = whiten(adv, valid, {**RLHF, "whiten_single_token": "raw"})
    assert raw[0, 0] == 2.5


def test_equal_advantages_whiten_to_zero_even_without_eps():
    out = whiten(np.full((2, 2), 3.0), np.ones((2, 2), bool), {**RLHF, "whiten_eps": 0.0})
    np.testing.assert_array_equal(out, np.zeros((2, 2)))


def test_spinningup_rewards_to_go_bootstrap_last_val_and_differ_from_advantages_plus_values():
    r, v = np.array([1.0, 2.0]), np.array([4.0, 8.0])
    adv, rtg = episode_expected(r, v, 6.0, 0.5, 0.5, "spinningup")
    np.testing.assert_allclose(rtg, [1 + 0.5 * 2 + 0.25 * 6, 2 + 0.5 * 6], rtol=1e-15)
    # delta = [1 + 4 - 4, 2 + 3 - 8] = [1, -3]; A = [1 - 0.75, -3].
    np.testing.assert_allclose(adv, [0.25, -3.0], rtol=1e-15)
    _, targets = episode_expected(r, v, 6.0, 0.5, 0.5, "rllib")
    np.testing.assert_allclose(targets, adv + v, rtol=1e-15)
    assert not np.allclose(rtg, targets)


# -- the check's own contract ----------------------------------------------------------------------

def test_unknown_and_bad_options_are_refused_naming_them():
    with pytest.raises(InvalidInputError, match="'whitening'"):
        check_layout(layouts.spinningup_finish_path, convention="rlhf", whitening=True)
    with pytest.raises(InvalidInputError, match="option 'whiten' is not one of convention 'spinningup'"):
        check_layout(layouts.spinningup_finish_path, convention="spinningup", whiten=True)
    with pytest.raises(InvalidInputError, match="whiten_ddof should be 0"):
        check_layout(layouts.verl_gae, convention="rlhf", whiten_ddof=2)
    with pytest.raises(InvalidInputError, match="whiten_eps should be a finite float >= 0, actual -1"):
        check_layout(layouts.verl_gae, convention="rlhf", whiten_eps=-1)
    with pytest.raises(InvalidInputError, match="whiten_single_token"):
        check_layout(layouts.verl_gae, convention="rlhf", whiten_single_token="skip")
    with pytest.raises(InvalidInputError, match="output should be one of"):
        check_layout(layouts.verl_gae, convention="rlhf", output="returns")


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_an_openrlhf_function_declared_rlhf_is_refused_before_any_call():
    with pytest.raises(InvalidInputError, match="look like the openrlhf convention"):
        check_layout(layouts.openrlhf_gae, convention="rlhf")


def test_one_array_where_the_pair_belongs_fails_output_shape():
    def advantages_only(rewards, values, last_val, gamma, lam):
        return layouts.spinningup_finish_path(rewards, values, last_val, gamma, lam)[0]
    report = check_layout(advantages_only, convention="spinningup", max_examples=5)
    assert report.failed_ids == ("gae.output_shape",)
    assert "should return a pair (advantages, rewards_to_go)" in report.failure("gae.output_shape").message


def test_the_declared_output_order_is_followed():
    def advantages_only(rewards, values, last_val, gamma, lam):
        return layouts.spinningup_finish_path(rewards, values, last_val, gamma, lam)[0]

    def swapped(rewards, values, last_val, gamma, lam):
        return layouts.spinningup_finish_path(rewards, values, last_val, gamma, lam)[::-1]
    report = check_layout(advantages_only, convention="spinningup", output="advantages", max_examples=10)
    assert report.passed and report.not_applicable == ("gae.returns",)
    assert check_layout(swapped, convention="spinningup", output="returns,advantages", max_examples=10).passed
    report = check_layout(swapped, convention="spinningup", max_examples=10)
    assert "gae.recursion" in report.failed_ids
    report = check_layout(layouts.spinningup_finish_path, convention="spinningup", output="advantages",
                          max_examples=10)
    assert report.failed_ids == ("gae.output_shape",)
    assert "leave out output='advantages'" in report.failure("gae.output_shape").message


def test_nan_in_the_padding_fails_output_finite():
    def nan_padding(token_level_rewards, values, response_mask, gamma, lam):
        adv, ret = layouts.verl_gae(token_level_rewards, values, response_mask, gamma, lam)
        return adv.masked_fill(response_mask == 0, float("nan")), ret
    pytest.importorskip("torch")
    report = check_layout(nan_padding, convention="rlhf", backend="torch", max_examples=20, **VERL)
    assert "gae.output_finite" in report.failed_ids


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_whitening_declared_wrongly_either_way_is_named():
    report = check_layout(layouts.openrlhf_gae, convention="openrlhf", whiten=True, max_examples=20)
    assert "gae.whitening" in report.failed_ids
    assert "nothing is whitened" in report.failure("gae.whitening").message
    assert check_layout(layouts.openrlhf_gae, convention="openrlhf", whiten=False, max_examples=20).passed
    report = check_layout(layouts.verl_gae, convention="rlhf", max_examples=20)
    assert report.failed_ids[0] == "gae.recursion"
    assert "declare whiten=True" in report.failure("gae.recursion").message


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_a_whitening_off_by_whiten_count_eps_names_the_option():
    def verl_recent(token_level_rewards, values, response_mask, gamma, lam):
        import torch
        _, ret = layouts.verl_gae(token_level_rewards, values, response_mask, gamma, lam)
        raw, mask = ret - values, response_mask.to(values.dtype)
        n = mask.sum()
        if n <= 1:
            return torch.zeros_like(raw), ret
        mean = (raw * mask).sum() / (n + 1e-8)
        var = ((raw - mean) ** 2 * mask).sum() / (n + 1e-8) * n / (n - 1)
        return (raw - mean) * torch.rsqrt(var + 1e-8), ret
    report = check_layout(verl_recent, convention="rlhf", **VERL)
    assert report.failed_ids == ("gae.whitening",)
    assert "whiten_count_eps=1e-08" in report.failure("gae.whitening").message
    assert check_layout(verl_recent, convention="rlhf", whiten_count_eps=1e-8, **VERL).passed


def test_float32_value_targets_of_float64_inputs_are_accepted_with_a_warning():
    report = check_layout(layouts.rllib_compute_advantages, convention="rllib", max_examples=10)
    assert report.passed
    assert any("float32" in w for w in report.warnings)


def test_spinningup_rewards_to_go_as_lambda_returns_fail_returns():
    def lambda_returns(rewards, values, last_val, gamma, lam):
        adv, _ = layouts.spinningup_finish_path(rewards, values, last_val, gamma, lam)
        return adv, adv + values
    report = check_layout(lambda_returns, convention="spinningup")
    assert "gae.returns" in report.failed_ids
    assert "they are advantages + values" in report.failure("gae.returns").message


# -- the bundled examples -----------------------------------------------------------------------------

# Seed 0 always runs; seeds 1..5 (about five minutes in all on two busy cores) are marked slow.
SEEDS = [0] + [pytest.param(seed, marks=pytest.mark.slow) for seed in range(1, 6)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_marks(ex)) for ex in layouts.CORRECT])
def test_correct_example_passes(ex, seed):
    report = example_report(ex) if seed == 0 else _check(ex, seed=seed)
    assert report.passed, str(report)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_marks(ex)) for ex in layouts.BROKEN])
def test_broken_example_fails_with_its_check_id(ex, seed):
    report = example_report(ex) if seed == 0 else _check(ex, seed=seed)
    assert ex.expected in report.failed_ids, str(report)
    failure = report.failure(ex.expected)
    assert " should " in failure.message
    assert failure.counterexample is not None or failure.traceback is not None


@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_marks(ex)) for ex in layouts.CORRECT])
def test_correct_example_passes_in_float32(ex):
    report = _check(ex, dtype="float32", max_examples=50)
    assert report.passed, str(report)


def test_every_broken_example_cites_a_public_thread():
    for ex in layouts.BROKEN:
        assert "issue #" in ex.description or "PR #" in ex.description, ex.name


# -- regions drawn by construction -------------------------------------------------------------------

def _recording(fn, calls, convert):
    def recorded(*args):
        calls.append(tuple(convert(a) for a in args))
        return fn(*args)
    return recorded


def _numpy(a):
    return a.detach().numpy().copy() if hasattr(a, "detach") else np.array(a, copy=True) \
        if isinstance(a, np.ndarray) or hasattr(a, "__array__") else a


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
@pytest.mark.parametrize("convention, fn", [("rlhf", "verl_gae"), ("openrlhf", "openrlhf_gae")])
def test_token_regions_are_all_drawn(convention, fn):
    calls = []
    report = check_layout(_recording(getattr(layouts, fn), calls, _numpy), convention=convention,
                          backend="torch", **(VERL if convention == "rlhf" else {}))
    assert report.passed, str(report)
    regions = set()
    for args in calls:
        mask = np.asarray(args[2]).astype(bool)
        B, L = mask.shape
        lengths = mask.sum(axis=1)
        # Right-padded, at least one token per row: the layout the convention declares.
        assert np.all(lengths >= 1) and np.array_equal(mask, np.arange(L)[None, :] < lengths[:, None])
        if (lengths == 1).any():
            regions.add("row of length 1")
        if (lengths == L).any() and L > 1:
            regions.add("row of full length")
        if (lengths < L).any():
            regions.add("padded row")
        if B == 1:
            regions.add("batch of one row")
        if lengths.sum() == 1:
            regions.add("single-token batch")
        if lengths.sum() == 1 and L > 1:
            regions.add("single-token batch with padding")
        if B > 1 and len(set(lengths.tolist())) > 1:
            regions.add("rows of different lengths")
        gamma, lam = args[3], args[4]
        regions.add(f"gamma={gamma}")
        regions.add(f"lam={lam}")
    wanted = {"row of length 1", "row of full length", "padded row", "batch of one row", "single-token batch",
              "single-token batch with padding", "rows of different lengths", "gamma=0.0", "gamma=1.0",
              "lam=0.0", "lam=1.0"}
    assert wanted <= regions, wanted - regions


@pytest.mark.parametrize("convention, fn", [("spinningup", "spinningup_finish_path"),
                                            ("rllib", "rllib_compute_advantages")])
def test_episode_regions_are_all_drawn(convention, fn):
    calls = []
    report = check_layout(_recording(getattr(layouts, fn), calls, _numpy), convention=convention,
                          backend="numpy")
    assert report.passed, str(report)
    regions = set()
    for rewards, values, last, gamma, lam in calls:
        regions.add("terminated (last = 0)" if last == 0 else "cut by a time limit (last != 0)")
        regions.add("one step" if len(rewards) == 1 else "several steps")
        if len(rewards) > 8:
            regions.add("long episode")
        regions.add(f"gamma={gamma}")
        regions.add(f"lam={lam}")
    wanted = {"terminated (last = 0)", "cut by a time limit (last != 0)", "one step", "several steps",
              "long episode", "gamma=0.0", "gamma=1.0", "lam=0.0", "lam=1.0"}
    assert wanted <= regions, wanted - regions


# -- jax -------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_jax_token_batches_come_in_four_shapes():
    calls = []
    report = check_layout(_recording(layouts.rlhf_gae_jax, calls, lambda a: getattr(a, "shape", a)),
                          convention="rlhf", backend="jax", **VERL)
    assert report.passed, str(report)
    assert {args[0] for args in calls} == {(1, 1), (1, 8), (4, 8), (8, 32)}


@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_jax_episodes_come_in_four_lengths():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def finish_path(rewards, values, last_val, gamma, lam):
        rews, vals = jnp.append(rewards, last_val), jnp.append(values, last_val)
        deltas = rews[:-1] + gamma * vals[1:] - vals[:-1]

        def step(carry, x):
            carry = (x[0] + gamma * lam * carry[0], x[1] + gamma * carry[1])
            return carry, carry
        start = (jnp.zeros((), rews.dtype), jnp.asarray(last_val, rews.dtype))
        _, (adv, to_go) = jax.lax.scan(step, start, (deltas, rewards), reverse=True)
        return adv, to_go

    calls = []
    report = check_layout(_recording(finish_path, calls, lambda a: getattr(a, "shape", a)),
                          convention="spinningup", backend="jax")
    assert report.passed, str(report)
    assert {args[0] for args in calls} == {(1,), (4,), (8,), (32,)}


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_check_gae_hands_these_conventions_over_with_its_whitening_options():
    from refpg.conformance import GAE_CONVENTIONS, check_gae
    if "rlhf" not in GAE_CONVENTIONS:
        pytest.skip("check_gae does not hand the layout conventions over yet")
    report = check_gae(layouts.verl_gae, convention="rlhf", whiten=True, whiten_eps_on="var", max_examples=20)
    assert report.passed, str(report)
    report = check_gae(layouts.verl_gae, convention="rlhf", whiten=True, max_examples=20)  # eps on the std
    assert report.failed_ids == ("gae.whitening",)

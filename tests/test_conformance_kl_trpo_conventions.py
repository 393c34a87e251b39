"""The KL check in the (logprob, ref_logprob) order of RLHF code (convention "rlhf") and the TRPO check of
steps written around closures (convention "closure"): the bundled examples at seeds 0..5, the regions
that decide correctness drawn by construction (recorded), the argument-swap hint, the batched test of
mean-returning estimators and its power, what the closure adapter passes and reads, and JAX."""

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refpg.conformance import check, check_kl_estimator, check_trpo_step
from refpg.conformance import kl as kl_check
from refpg.conformance import trpo as trpo_check
from refpg.errors import InvalidInputError
from refpg.examples import correct
from refpg.examples import kl_trpo_conventions as conv

torch = pytest.importorskip("torch")

SEEDS = range(6)


def _run(ex, **kwargs):
    return check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kwargs})


# -- the bundled examples ---------------------------------------------------------------------

# Six seeds of every example take about two minutes in all: slow. Seed 0 runs by default in
# test_conformance_examples.py and in test_the_broken_examples_fail_only_where_they_are_wrong_at_seed_0.
@pytest.mark.slow
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name) for ex in conv.BROKEN])
def test_each_broken_example_fails_with_its_check_id_at_seeds_0_to_5(ex):
    for seed in SEEDS:
        report = _run(ex, seed=seed)
        assert ex.expected in report.failed_ids, f"seed {seed}: {report}"


@pytest.mark.slow
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name) for ex in conv.CORRECT])
def test_each_correct_example_passes_at_seeds_0_to_5(ex):
    for seed in SEEDS:
        report = _run(ex, seed=seed)
        assert report.passed, f"seed {seed}: {report}"


def test_the_broken_examples_fail_only_where_they_are_wrong_at_seed_0():
    # Each closure bug is drawn by one scenario: a second failing id would mean a check blames the wrong thing.
    for ex in conv.BROKEN:
        if ex.name != "trpo_step_closure_no_kl_check":  # it also keeps a step no halving makes acceptable
            assert _run(ex).failed_ids == (ex.expected,), ex.name


# -- KL: the argument order -----------------------------------------------------------------------

def test_rlhf_convention_passes_logprob_of_the_sampling_policy_first():
    seen = []

    def k1(logprob, ref_logprob):
        seen.append((logprob.copy(), ref_logprob.copy()))
        return logprob - ref_logprob

    report = check_kl_estimator(k1, convention="rlhf", max_examples=10)
    assert report.passed, str(report)
    # On the unbiasedness test's first pair pi_old = (0.5, 0.5) draws the actions: the first argument holds
    # log 0.5 everywhere, the second log pi_new = log 0.6 or log 0.4.
    logprob, ref_logprob = next(s for s in seen if s[0].size == kl_check.SAMPLES_PER_PAIR)
    np.testing.assert_allclose(logprob, np.log(0.5), rtol=1e-15)
    assert set(np.round(np.exp(ref_logprob), 12)) == {0.6, 0.4}


def test_arguments_swapped_under_the_default_convention_get_a_hint_naming_rlhf():
    report = _run(conv.BROKEN[1])  # OpenRLHF's compute_approx_kl checked as (logp_new, logp_old)
    message = report.failure("kl_estimator.unbiased").message
    assert "with its two arguments swapped the same function is consistent with KL(pi_old || pi_new)" in message
    assert "the argument order is swapped" in message and "pass convention='rlhf'" in message
    assert "--convention rlhf" in message
    # In its own convention the same function passes.
    assert check_kl_estimator(conv.compute_approx_kl_k3, convention="rlhf", non_negative=True).passed


def test_a_ppo_order_estimator_under_rlhf_gets_a_hint_naming_refpg():
    def k1(a, b):  # neutral names: the signature check lets it through
        return correct.kl_k1_numpy(a, b)

    report = check_kl_estimator(k1, convention="rlhf")
    message = report.failure("kl_estimator.unbiased").message
    assert message.startswith("the mean estimate should be KL(pi || pi_ref) = ")
    assert "pass convention='refpg'" in message and "(logp_new, logp_old)" in message


def test_no_swap_hint_when_the_swapped_arguments_fail_too():
    def k1_doubled(logp_new, logp_old):
        return 2.0 * (logp_old - logp_new)

    message = check_kl_estimator(k1_doubled).failure("kl_estimator.unbiased").message
    assert "arguments swapped" not in message and "argument order" not in message


def test_parameter_names_of_the_other_order_are_refused_before_any_call():
    calls = []

    def kl_penalty(logprob, ref_logprob):
        calls.append(1)
        return logprob - ref_logprob

    with pytest.raises(InvalidInputError, match=r"look like the rlhf convention .* pass convention=\"rlhf\""):
        check_kl_estimator(kl_penalty)
    with pytest.raises(InvalidInputError, match=r"look like the refpg convention"):
        check_kl_estimator(correct.kl_k1_numpy, convention="rlhf")
    assert calls == []


def test_rlhf_messages_use_the_conventions_own_names():
    def k1_declared_non_negative(logprob, ref_logprob):
        return logprob - ref_logprob

    failure = check_kl_estimator(k1_declared_non_negative, convention="rlhf", non_negative=True,
                                 unbiased=False).failure("kl_estimator.non_negative")
    assert "k1 = logprob - ref_logprob is negative whenever pi_ref(a) > pi(a)" in failure.message
    assert set(failure.counterexample.inputs) >= {"logprob", "ref_logprob"}
    assert "logp_new" not in failure.counterexample.inputs


# -- KL: the test of mean-returning estimators ------------------------------------------------------

def _mean_of(fn):
    @functools.wraps(fn)
    def mean(logp_new, logp_old):
        return np.mean(fn(logp_new, logp_old))
    return mean


def _k3(logp_new, logp_old):
    x = logp_new - logp_old
    return np.expm1(x) - x


def _k3_biased_3_percent(logp_new, logp_old):
    return 1.03 * _k3(logp_new, logp_old)


def _k3_ratio_inverted(logp_new, logp_old):
    return _k3(logp_old, logp_new)


@pytest.mark.parametrize("wrong", [correct.kl_k2_numpy, _k3_ratio_inverted, _k3_biased_3_percent,
                                   lambda logp_new, logp_old: logp_new - logp_old],
                         ids=["k2", "k3_ratio_inverted", "k3_biased_3_percent", "k1_sign_flipped"])
def test_the_batched_test_of_mean_returning_estimators_keeps_its_power(wrong):
    # The same wrong estimator, per sample and as a batch mean: both are rejected at every seed.
    for seed in SEEDS:
        for fn in (wrong, _mean_of(wrong)):
            report = check_kl_estimator(fn, seed=seed, max_examples=10)
            assert "kl_estimator.unbiased" in report.failed_ids, (seed, fn)


def test_the_batched_test_raises_no_false_alarm_and_makes_few_calls():
    for seed in SEEDS:
        report = check_kl_estimator(_mean_of(_k3), seed=seed, non_negative=True, max_examples=10)
        assert report.passed, f"seed {seed}: {report}"
    # One call with all samples shows it returns a mean, then BATCHES batches per pair: not 2,000 per pair.
    n_pairs = len(kl_check.KL_PAIRS)
    unbiased_calls = report.examples - 2 * 10
    assert unbiased_calls <= n_pairs * kl_check.BATCHES + 1
    assert kl_check.BATCH * kl_check.BATCHES == kl_check.SAMPLES_PER_PAIR


def test_a_batch_sum_is_named_with_the_batch_size():
    def k3_sum(logp_new, logp_old):
        return np.sum(_k3(logp_new, logp_old))

    message = check_kl_estimator(k3_sum, max_examples=10).failure("kl_estimator.unbiased").message
    assert f"actual = n x expected with n = {kl_check.BATCH}, the batch size" in message
    assert "Student's t" in message


# -- KL: regions drawn by construction -------------------------------------------------------------

def _recorded(fn, order):
    """`fn` wrapped to record every call's (logp_new, logp_old) as NumPy arrays, and the record."""
    calls = []

    def as_np(x):
        return x.detach().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x, copy=True)

    def recording(a, b):
        new, old = (b, a) if order == "rlhf" else (a, b)
        calls.append((as_np(new), as_np(old)))
        return fn(a, b)
    return recording, calls


def _kl_regions(calls) -> set:
    regions = set()
    for new, old in calls:
        log_r = new - old
        if np.any(log_r > 0):
            regions.add("pi_new > pi_old")
        if np.any(log_r < 0):
            regions.add("pi_new < pi_old")
        if np.any(np.abs(log_r) >= 3.0):
            regions.add("large |log r|")
    return regions


ALL_KL_REGIONS = {"pi_new > pi_old", "pi_new < pi_old", "large |log r|"}


# The backend is given, so that no probe call (on a fixed tiny input) is recorded.
@pytest.mark.parametrize("fn, convention, options", [
    (_k3, "refpg", dict(non_negative=True, backend="numpy")),                      # per sample
    (correct.kl_k3_mean_torch, "refpg", dict(non_negative=True, backend="torch")),  # a batch mean
    (conv.kl_penalty_k1, "rlhf", dict(backend="torch")),                           # per sample, other order
    (lambda a, b: torch.mean(conv.kl_penalty_low_var_kl(a, b)), "rlhf", dict(non_negative=True, backend="torch")),
], ids=["k3_per_sample", "k3_mean", "rlhf_k1", "rlhf_k3_mean"])
def test_kl_check_draws_every_deciding_region_at_seed_0(fn, convention, options):
    recording, calls = _recorded(fn, convention)
    report = check_kl_estimator(recording, convention=convention, **options)
    assert report.passed, str(report)
    assert _kl_regions(calls) == ALL_KL_REGIONS
    # The unbiasedness test alone draws every region, per sample or in batches of the mean.
    test_calls = [c for c in calls if c[0].size in (kl_check.SAMPLES_PER_PAIR, kl_check.BATCH)]
    assert _kl_regions(test_calls) == ALL_KL_REGIONS
    if options.get("non_negative"):
        # ... and so does every single case of the non-negativity scenario, by construction.
        scenario = [c for c in calls if c[0].size <= 8 and np.any(c[0] != c[1])]
        assert scenario and all(_kl_regions([c]) == ALL_KL_REGIONS for c in scenario)


# -- TRPO: regions drawn by construction -----------------------------------------------------------

def _line_search_outcome(theta, states, actions, adv, max_kl):
    return trpo_check.line_search_end(theta, states, actions, adv, max_kl)


def test_line_search_end_names_each_end_on_a_hand_built_batch():
    one = np.zeros(1, dtype=int)
    assert _line_search_outcome(np.zeros((1, 2)), one, one, np.zeros(1), 0.1) == "zero gradient"
    assert _line_search_outcome(np.array([[2.0, 0.0]]), one, one, np.ones(1), 0.1) == "full step"
    assert _line_search_outcome(np.array([[-4.0, 0.0]]), one, one, np.ones(1), 0.1) == "backtracked"
    assert _line_search_outcome(np.array([[-60.0, 0.0]]), one, one, np.ones(1), 0.1) == "rejected"
    # The same end as the CG step of refpg.examples.correct: the full step, a halving, or theta_old back.
    for theta, end in ((np.array([[2.0, 0.0]]), "full step"), (np.array([[-60.0, 0.0]]), "rejected")):
        new = correct.trpo_step_numpy(theta, one, one, np.ones(1), 0.1)
        assert np.array_equal(new, theta) == (end == "rejected")


ALL_TRPO_REGIONS = {"zero gradient", "rejected", "full step", "backtracked"}


def _batch_of(case):
    return (np.asarray(case["theta_old"], dtype=float), case["states"].astype(int), case["actions"].astype(int),
            np.asarray(case["advantages"], dtype=float), case["max_kl"])


def test_trpo_check_draws_every_line_search_outcome_at_seed_0(monkeypatch):
    seen = []

    def recording(theta_old, states, actions, advantages, max_kl):
        seen.append((theta_old.copy(), states.copy(), actions.copy(), advantages.copy(), max_kl))
        return correct.trpo_step_numpy(theta_old, states, actions, advantages, max_kl)

    assert check_trpo_step(recording).passed
    assert {_line_search_outcome(*b) for b in seen} == ALL_TRPO_REGIONS

    # Convention "closure": the batches behind the closures, recorded where the kit builds them.
    batches = []
    run_closure = trpo_check._run_closure

    def recording_run(session, batch, damping):
        batches.append(batch)
        return run_closure(session, batch, damping)

    monkeypatch.setattr(trpo_check, "_run_closure", recording_run)
    assert check_trpo_step(conv.trpo_step_closure, convention="closure").passed
    assert {_line_search_outcome(*b) for b in batches} == ALL_TRPO_REGIONS


@pytest.mark.parametrize("strategy, outcome", [
    (trpo_check._full_step(), "full step"), (trpo_check._backtracking(), "backtracked"),
    (trpo_check._batches(zero_advantages=True), "zero gradient"), (trpo_check._hopeless(), "rejected"),
    (trpo_check._full_step(jax=True), "full step"), (trpo_check._backtracking(jax=True), "backtracked"),
    (trpo_check._hopeless(jax=True), "rejected"),
], ids=["full", "backtracking", "zero", "hopeless", "full_jax", "backtracking_jax", "hopeless_jax"])
def test_every_case_of_a_targeted_trpo_scenario_is_in_its_region(strategy, outcome):
    @settings(max_examples=150, database=None, deadline=None)
    @given(strategy)
    def every_case(case):
        assert _line_search_outcome(*_batch_of(case)) == outcome, case

    every_case()


# -- TRPO: the closure convention --------------------------------------------------------------------

def _step_on_a_copy(model, get_loss, get_kl, max_kl, damping):
    """The correct closure step, applied to a copy of the parameters that is returned; the model itself
    is restored, as a function that returns new parameters instead of setting them leaves it."""
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    conv.trpo_step_closure(model, get_loss, get_kl, max_kl, damping)
    new = torch.cat([p.detach().reshape(-1).clone() for p in params])
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    return new


def test_a_step_that_returns_new_parameters_instead_of_setting_them_is_told_so():
    report = check_trpo_step(_step_on_a_copy, convention="closure")
    assert report.failed_ids == ("trpo_step.model_updated_in_place",), str(report)
    failure = report.failure("trpo_step.model_updated_in_place")
    assert "update the model's parameters in place" in failure.message
    assert "vector_to_parameters" in failure.message
    # The returned parameters were judged too: every other check passed on them.


def test_the_counterexample_shows_what_the_closure_convention_passed():
    failure = _run(conv.BROKEN[-1]).failure("trpo_step.restores_theta_on_reject")
    inputs = failure.counterexample.inputs
    assert {"theta_old", "states", "actions", "advantages", "max_kl", "damping", "model (passed)",
            "get_loss (passed)", "get_kl (passed)", "closure calls (derived)"} <= set(inputs)
    assert "logits = theta_old" in inputs["model (passed)"]
    assert "pi_old fixed" in inputs["get_kl (passed)"]
    assert "get_loss(True)" in inputs["closure calls (derived)"]


def test_closures_accept_what_real_code_passes():
    def keywords_and_scalars(model, get_loss, get_kl, max_kl, damping):
        with torch.no_grad():
            before = float(get_loss(volatile=True))
            assert get_loss(volatile=True).grad_fn is None
        assert get_loss().requires_grad and get_kl().shape == (len(get_kl()),)
        assert float(get_kl().mean()) == 0.0  # at theta_old
        assert before == float(get_loss(False))
        return None  # leaves the model as it was: no step

    report = check_trpo_step(keywords_and_scalars, convention="closure", max_examples=10)
    assert "trpo_step.raised" not in report.failed_ids, str(report)
    assert "trpo_step.direction" in report.failed_ids  # it never steps although a step is acceptable


def test_closure_convention_needs_torch_and_pytorch_trpo_names_are_recognised():
    with pytest.raises(InvalidInputError, match="backend should be 'torch' or 'auto' for convention 'closure'"):
        check_trpo_step(conv.trpo_step_closure, convention="closure", backend="numpy")

    def trpo_step(model, get_loss, get_kl, max_kl, damping):
        return conv.trpo_step_closure(model, get_loss, get_kl, max_kl, damping)

    with pytest.raises(InvalidInputError, match='look like the closure convention .* pass convention="closure"'):
        check_trpo_step(trpo_step)
    assert check_trpo_step(trpo_step, convention="closure", max_examples=10).backend == "torch"


def test_closure_step_passes_in_float32():
    report = check_trpo_step(conv.trpo_step_closure, convention="closure", dtype="float32", max_examples=20)
    assert report.passed, str(report)


# -- JAX -------------------------------------------------------------------------------------------

def _jax_trpo(*, test_kl=True):
    """A jitted TRPO step, theta -> theta: exact Fisher by jax.hessian, pinv direction, and the 11
    candidates of the line search evaluated at once."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def step(theta_old, states, actions, advantages, max_kl):
        S, A = theta_old.shape
        logp_old = jax.nn.log_softmax(theta_old, axis=1)
        p_old = jnp.exp(logp_old)

        def surrogate(x):
            logp = jax.nn.log_softmax(x.reshape(S, A), axis=1)
            return jnp.mean(jnp.exp(logp[states, actions] - logp_old[states, actions]) * advantages)

        def mean_kl(x):
            logp = jax.nn.log_softmax(x.reshape(S, A), axis=1)
            return jnp.mean(jnp.sum(p_old[states] * (logp_old[states] - logp[states]), axis=1))

        x0 = theta_old.reshape(-1)
        g = jax.grad(surrogate)(x0)
        F = jax.hessian(mean_kl)(x0)
        d = jnp.linalg.pinv(F, rtol=1e-12, hermitian=True) @ g
        shs = d @ F @ d
        usable = jnp.any(g != 0) & (shs > 0)
        full = jnp.sqrt(2.0 * max_kl / jnp.where(usable, shs, 1.0)) * d
        candidates = x0 + (0.5 ** jnp.arange(11.0))[:, None] * full
        base = surrogate(x0)
        passes = jax.vmap(lambda c: (surrogate(c) > base) & ((mean_kl(c) <= max_kl) | (not test_kl)))(candidates)
        new = jnp.where(usable & passes.any(), candidates[jnp.argmax(passes)], x0)
        return new.reshape(S, A)
    return step


def _shapes_recorded(fn):
    shapes = set()

    def recording(*args):
        shapes.add(tuple(tuple(getattr(a, "shape", ())) for a in args))
        return fn(*args)
    return recording, shapes


def test_jitted_kl_estimators_pass_with_few_shapes():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    k3 = jax.jit(lambda logp_new, logp_old: jnp.expm1(logp_new - logp_old) - (logp_new - logp_old))
    low_var_kl = jax.jit(lambda logprob, ref: jnp.mean(jnp.expm1(ref - logprob) - (ref - logprob)))
    for fn, convention in ((k3, "refpg"), (low_var_kl, "rlhf")):
        recording, shapes = _shapes_recorded(fn)
        report = check_kl_estimator(recording, convention=convention, backend="jax", non_negative=True)
        assert report.passed and report.backend == "jax", str(report)
        assert len(shapes) <= 6, shapes
    wrong = jax.jit(lambda logprob, ref: jnp.expm1(logprob - ref) - (logprob - ref))
    message = check_kl_estimator(wrong, convention="rlhf", backend="jax").failure("kl_estimator.unbiased").message
    assert "pass convention='refpg'" in message


def test_jitted_trpo_step_passes_with_two_shapes_and_a_broken_one_fails():
    pytest.importorskip("jax")
    recording, shapes = _shapes_recorded(_jax_trpo())
    report = check_trpo_step(recording, backend="jax")
    assert report.passed and report.backend == "jax", str(report)
    assert {s[0] for s in shapes} == {(2, 3)} and {s[1] for s in shapes} <= {(4,), (8,)}
    assert "trpo_step.kl_constraint" in check_trpo_step(_jax_trpo(test_kl=False), backend="jax").failed_ids


def test_only_a_tensor_of_the_models_size_counts_as_returned_parameters():
    shape = (1, 2)
    assert trpo_check._returned_parameters(torch.tensor(0.5), shape) is None  # pytorch-trpo's loss
    assert trpo_check._returned_parameters(True, shape) is None  # Khrylx/PyTorch-RL's success flag
    assert trpo_check._returned_parameters((torch.tensor(1.0), torch.tensor(2.0)), shape) is None  # (loss, kl)
    assert trpo_check._returned_parameters(torch.tensor([1, 2]), shape) is None  # integers
    np.testing.assert_array_equal(trpo_check._returned_parameters(torch.tensor([1.0, 2.0]), shape), [[1.0, 2.0]])
    np.testing.assert_array_equal(trpo_check._returned_parameters(np.array([[3.0, 4.0]]), shape), [[3.0, 4.0]])

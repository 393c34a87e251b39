"""`check_reinforce_estimator` on losses (conventions "loss" and "loss_padded"), with declared objectives and
normalizations: the examples of refpg.examples.reinforce_losses at seeds 0..5, the hint naming the declaration
under which the same estimates are unbiased, the mean test reported NOT RUN (never passed) when a call stops
earlier, the exact time-limited target, the regions that decide correctness drawn by construction at seed 0,
and the padded shapes a jitted JAX loss meets."""

import importlib.util
import re

import numpy as np
import pytest

from refpg.conformance import check_reinforce_estimator
from refpg.conformance import reinforce as R
from refpg.errors import InvalidInputError
from refpg.examples import reinforce_losses as L
from refpg.examples.correct import _reinforce_numpy, reinforce_numpy
from refpg.policies import TabularSoftmax
from tests.helpers import example_report

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
UNBIASED = "reinforce_estimator.unbiased"
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")


def _marks(ex):
    return [pytest.mark.skipif(ex.backend == "torch" and not HAS_TORCH, reason="needs torch"),
            pytest.mark.skipif(ex.backend == "jax" and not HAS_JAX, reason="needs jax")]


_REPORTS: dict = {}


def _report(ex, seed=0):
    if seed == 0:  # the zoo's own seed-0 report, computed once per session
        return example_report(ex)
    if (ex.name, seed) not in _REPORTS:
        _REPORTS[ex.name, seed] = check_reinforce_estimator(ex.fn, convention=ex.convention, backend=ex.backend,
                                                            seed=seed, **dict(ex.options))
    return _REPORTS[ex.name, seed]


def _params(examples, seeds):
    return [pytest.param(ex, seed, id=f"{ex.name}-seed{seed}",
                         marks=_marks(ex) + ([pytest.mark.slow] if seed else []))
            for ex in examples for seed in seeds]


# -- the examples --------------------------------------------------------------------------------

@pytest.mark.parametrize("ex, seed", _params(L.CORRECT, range(6)))
def test_correct_loss_example_passes(ex, seed):
    report = _report(ex, seed)
    assert report.passed, str(report)
    assert report.convention == ex.convention and report.backend == ex.backend


@pytest.mark.parametrize("ex, seed", _params(L.BROKEN, range(6)))
def test_broken_loss_example_fails_with_its_check_id(ex, seed):
    report = _report(ex, seed)
    assert report.failed_ids == (ex.expected,), str(report)
    assert " should " in report.failure(ex.expected).message


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
@needs_torch
def test_spinning_up_under_the_default_declaration_gets_a_hint_naming_undiscounted_per_step(seed):
    ex = next(e for e in L.BROKEN if e.name == "reinforce_loss_spinning_up_declared_discounted_torch")
    message = _report(ex, seed).failure(UNBIASED).message
    assert ("the same estimates are unbiased under objective='undiscounted', normalization='per_step' "
            "(the returns are not discounted (gamma is ignored); divided by the batch's number of steps") in message
    assert " or under " not in message  # only the right declaration passes clearly


@needs_torch
def test_the_missing_minus_sign_is_named_as_a_factor_of_minus_one():
    ex = next(e for e in L.BROKEN if e.name == "reinforce_loss_without_minus_torch")
    message = _report(ex).failure(UNBIASED).message
    assert "(close to -1: a flipped sign) x the expected" in message, message
    assert "the same estimates are unbiased under" not in message


@needs_torch
def test_nan_on_a_one_step_episode_stops_at_output_finite_and_the_mean_test_is_not_run():
    ex = next(e for e in L.BROKEN if e.name == "reinforce_loss_standardised_one_step_nan_torch")
    report = _report(ex)
    assert report.status(UNBIASED) == "not_run" and not report.passed
    reason = dict(report.not_run)[UNBIASED]
    assert "the call on one episode of one step" in reason and "reinforce_estimator.output_finite" in reason
    ce = report.failure("reinforce_estimator.output_finite").counterexample
    np.testing.assert_array_equal(ce.inputs["episodes (rows: states, actions, rewards)"][0], [[1.0], [0.0], [2.0]])
    assert f"NOT RUN {UNBIASED}: the mean test needs an estimate from every call" in str(report)
    assert f"ok   {UNBIASED}" not in str(report)


# -- NOT RUN, never passed -----------------------------------------------------------------------

def _nan_on_one_step(theta, episodes, gamma):
    g = reinforce_numpy(theta, episodes, gamma)
    return g * np.nan if min(len(r) for _, _, r in episodes) == 1 else g


def _nan_from_call_3():
    state = {"n": 0}

    def fn(theta, episodes, gamma):
        state["n"] += 1
        g = reinforce_numpy(theta, episodes, gamma)
        return g * np.nan if state["n"] == 3 + 3 else g  # the edge batches are the first 3 calls
    return fn


@pytest.mark.parametrize("fn, stopped_at, where", [
    (lambda theta, episodes, gamma: 1 / 0, "reinforce_estimator.raised", "the call on one episode of one step"),
    (lambda theta, episodes, gamma: np.zeros(3), "reinforce_estimator.output_shape", "one episode of one step"),
    (lambda theta, episodes, gamma: np.zeros((3, 2), dtype=np.float32), "reinforce_estimator.output_dtype",
     "one episode of one step"),
    (_nan_on_one_step, "reinforce_estimator.output_finite", "one episode of one step"),
    (_nan_from_call_3(), "reinforce_estimator.output_finite", "call 3 of stage 1 (200 calls of 50 episodes)"),
], ids=["raised", "output_shape", "output_dtype", "output_finite", "output_finite_mid_stage"])
def test_the_mean_test_is_listed_not_run_with_the_reason_when_a_call_stops_earlier(fn, stopped_at, where):
    report = check_reinforce_estimator(fn, backend="numpy")
    assert stopped_at in report.failed_ids
    assert report.status(UNBIASED) == "not_run", str(report)
    reason = dict(report.not_run)[UNBIASED]
    assert where in reason and stopped_at in reason, reason
    assert report.to_dict()["verdict"] == "failed"


@needs_torch
@pytest.mark.parametrize("fn, words", [
    (lambda theta, episodes, gamma: float(L.reinforce_discounted_loss(theta, episodes, gamma)),
     "the loss should be differentiable with respect to theta"),
    (lambda theta, episodes, gamma: L.reinforce_discounted_loss(theta.detach(), episodes, gamma),
     "the loss should be differentiable with respect to theta"),
])
def test_a_loss_without_a_gradient_fails_differentiable_and_the_mean_test_is_not_run(fn, words):
    report = check_reinforce_estimator(fn, convention="loss", backend="torch")
    assert report.failed_ids == ("reinforce_estimator.differentiable",), str(report)
    assert words in report.failure("reinforce_estimator.differentiable").message
    assert set(report.not_run_ids) == {"reinforce_estimator.row_sums_zero", UNBIASED}


@needs_torch
def test_a_finite_loss_with_a_nan_gradient_fails_output_finite():
    import torch

    def sqrt_of_zero(theta, episodes, gamma):  # d sqrt(x) / dx at 0 is inf, and inf * 0 = nan
        return L.reinforce_discounted_loss(theta, episodes, gamma) + torch.sqrt(theta[2, 0] * 0)

    report = check_reinforce_estimator(sqrt_of_zero, convention="loss", backend="torch")
    message = report.failure("reinforce_estimator.output_finite").message
    assert message.startswith("-d loss / d theta[2, 0] should be finite for finite inputs, actual nan"), message
    assert report.status(UNBIASED) == "not_run"


# -- declarations ----------------------------------------------------------------------------------

def _steps(episodes):
    return sum(len(r) for _, _, r in episodes)


def per_step_estimate(theta, episodes, gamma):
    """reinforce_numpy averaged over the batch's steps rather than its episodes."""
    return reinforce_numpy(theta, episodes, gamma) * len(episodes) / _steps(episodes)


def summed_estimate(theta, episodes, gamma):
    return reinforce_numpy(theta, episodes, gamma) * len(episodes)


@pytest.mark.parametrize("fn, normalization", [(per_step_estimate, "per_step"), (summed_estimate, "sum")])
def test_each_normalization_passes_when_declared_and_is_named_when_not(fn, normalization):
    assert check_reinforce_estimator(fn, normalization=normalization).passed
    message = check_reinforce_estimator(fn).failure(UNBIASED).message
    assert f"the same estimates are unbiased under normalization={normalization!r}" in message, message
    assert "objective=" not in message.split("unbiased under")[1]


def undiscounted_estimate(theta, episodes, gamma):
    return _reinforce_numpy(theta, episodes, 1.0, discount_weighting=False)


def test_undiscounted_passes_gamma_one_and_a_discounted_estimator_is_right_there():
    seen = []

    def recording(theta, episodes, gamma):
        seen.append(gamma)
        return reinforce_numpy(theta, episodes, gamma)

    assert check_reinforce_estimator(recording, objective="undiscounted").passed
    assert set(seen) == {1.0}
    message = check_reinforce_estimator(undiscounted_estimate).failure(UNBIASED).message
    assert "the same estimates are unbiased under objective='undiscounted' (the returns are not discounted" in message


def test_gamma_free_declared_discounted_is_named_gamma_free():
    message = check_reinforce_estimator(lambda th, eps, g: _reinforce_numpy(th, eps, g, discount_weighting=False)
                                        ).failure(UNBIASED).message
    assert ("the same estimates are unbiased under objective='gamma_free' (the returns are discounted but step t "
            "does not weigh gamma^t)") in message, message


def test_bad_declarations_raise():
    with pytest.raises(InvalidInputError, match=r"normalization should be one of \('per_episode', 'per_step', "
                                                r"'sum'\), actual 'mean'"):
        check_reinforce_estimator(reinforce_numpy, normalization="mean")
    with pytest.raises(InvalidInputError, match="objective should be one of"):
        check_reinforce_estimator(reinforce_numpy, objective="average_reward")
    with pytest.raises(InvalidInputError, match="backend should be 'torch' or 'jax' for convention='loss', actual "
                                                "'numpy': the kit judges -d loss / d theta"):
        check_reinforce_estimator(reinforce_numpy, convention="loss", backend="numpy")
    with pytest.raises(InvalidInputError, match="It takes as many arguments as the loss_padded convention"):
        check_reinforce_estimator(L.jax_reinforce_padded_loss, convention="loss")


@needs_torch
def test_auto_picks_torch_for_a_torch_loss():
    report = check_reinforce_estimator(L.reinforce_discounted_loss, convention="loss", calls=30,
                                       episodes_per_call=67)
    assert report.backend == "torch" and report.passed, str(report)


# -- the exact targets -----------------------------------------------------------------------------

@pytest.mark.parametrize("objective", R.OBJECTIVES)
def test_the_time_limited_target_tends_to_the_exact_one_as_the_limit_grows(objective):
    mdp, theta = R._test_case()
    policy = TabularSoftmax(mdp.n_states, mdp.n_actions)
    np.testing.assert_allclose(R._target(mdp, policy, theta, objective, 1500),
                               R._target(mdp, policy, theta, objective, None), rtol=0, atol=1e-12)
    # ... and the limit matters at TIME_LIMIT: the second stage tests a different target.
    assert np.abs(R._target(mdp, policy, theta, objective, R.TIME_LIMIT)
                  - R._target(mdp, policy, theta, objective, None)).max() > 0.01


@pytest.mark.parametrize("objective", R.OBJECTIVES)
def test_reinforce_on_episodes_cut_at_the_time_limit_has_the_time_limited_target_as_mean(objective):
    mdp, theta = R._test_case()
    policy = TabularSoftmax(mdp.n_states, mdp.n_actions)
    gamma = 1.0 if objective == "undiscounted" else mdp.gamma
    rng = np.random.default_rng(11)
    estimates = []
    for _ in range(20):
        episodes, cut = R._stage_pool(mdp, policy.probs(theta), 2000, rng, R.TIME_LIMIT)
        estimates.append(_reinforce_numpy(theta, episodes, gamma, discount_weighting=objective != "gamma_free"))
    estimates = np.array(estimates)[:, :2, 0]  # the tested entries; the terminal row is exactly 0
    z = ((estimates.mean(0) - R._target(mdp, policy, theta, objective, R.TIME_LIMIT)[:2, 0])
         / (estimates.std(0, ddof=1) / np.sqrt(len(estimates))))
    assert np.all(np.abs(z) < 5.3), z  # the kit's own threshold; alpha 1e-6 over these 6 tests x 2 entries
    assert 0.1 < cut.mean() < 0.2  # ~15% of the episodes are cut


def test_the_test_mdp_is_proper_so_the_undiscounted_gradient_is_finite():
    mdp, _ = R._test_case()
    ends = mdp.P[:, :, mdp.terminal].sum(axis=2)[~mdp.terminal]
    assert ends.min() >= 0.05
    assert R._undiscounted(mdp).is_proper()


# -- regions drawn by construction -----------------------------------------------------------------

def _record(objective="discounted"):
    seen = []

    def recording(theta, episodes, gamma):
        seen.append(([(np.array(s), np.array(a), np.array(r)) for s, a, r in episodes], gamma))
        return reinforce_numpy(theta, episodes, gamma)

    report = check_reinforce_estimator(recording, objective=objective, backend="numpy")  # no probe call
    assert report.passed, str(report)
    return seen


def _revisits(s):
    return len(np.unique(s)) < len(s)


@pytest.fixture(scope="module")
def recorded():
    return {objective: _record(objective) for objective in ("discounted", "undiscounted")}


def test_every_region_that_decides_correctness_is_drawn_at_seed_0(recorded):
    mdp, theta = R._test_case()
    calls = recorded["discounted"]
    episodes = [ep for batch, _ in calls for ep in batch]
    lengths = np.array([len(s) for s, _, _ in episodes])
    regions = {
        "a batch of one one-step episode": any(len(b) == 1 and len(b[0][0]) == 1 for b, _ in calls),
        "a one-step episode beside others": any(len(b) > 1 and min(len(s) for s, _, _ in b) == 1 for b, _ in calls),
        "a one-step episode with return 0": any(len(s) == 1 and r[0] == 0 for s, _, r in episodes),
        "an episode that visits state 1 twice": any(np.sum(s == 1) >= 2 for s, _, _ in episodes),
        "an episode that visits state 0 twice": any(np.sum(s == 0) >= 2 for s, _, _ in episodes),
        "an episode that quits (terminates by its action)": any(a[-1] == 1 and s[-1] == 0 for s, a, _ in episodes),
        "an episode of 20 steps or more": lengths.max() >= 20,
        "gamma < 1": {g for _, g in calls} == {mdp.gamma},
        "gamma = 1": {g for _, g in recorded["undiscounted"]} == {1.0},
    }
    assert all(regions.values()), {k: v for k, v in regions.items() if not v}
    # The edge batches come first, whatever the seed: one of them holds an episode cut by the time limit.
    assert [len(b) for b, _ in calls[:3]] == [1, 2, 2]
    assert len(calls[2][0][1][0]) == R.TIME_LIMIT and calls[2][0][1][1][-1] == 0  # no quit: not ended


def test_the_second_stage_passes_episodes_cut_by_the_time_limit_and_episodes_that_terminated(recorded):
    mdp, theta = R._test_case()
    pi = TabularSoftmax(mdp.n_states, mdp.n_actions).probs(theta)
    rng = np.random.default_rng(0)  # the check's own sequence at seed 0: stage 1, then stage 2
    R._stage_pool(mdp, pi, R.CALLS * R.EPISODES_PER_CALL, rng, None)
    pool, cut = R._stage_pool(mdp, pi, R.SMALL_CALLS * R.SMALL_EPISODES, rng, R.TIME_LIMIT)
    stage2 = [ep for batch, _ in recorded["discounted"][3 + R.CALLS:] for ep in batch]
    assert len(stage2) == len(pool)
    for (s, a, r), (s2, a2, r2) in zip(stage2, pool):
        np.testing.assert_array_equal(s, s2)
        np.testing.assert_array_equal(r, r2)
    assert cut.sum() > 200 and (~cut).sum() > 1000  # both kinds, by the hundred
    assert max(len(s) for s, _, _ in stage2) == R.TIME_LIMIT


# -- loss_padded and JAX ---------------------------------------------------------------------------

def _padded_recording(seen):
    def recording(theta, states, actions, rewards, valid, gamma):
        import torch
        seen.append((tuple(states.shape), states.numpy().copy(), valid.numpy().copy(), rewards.numpy().copy()))
        T, E = states.shape
        log_pi = torch.log_softmax(theta, dim=-1)[states, actions]
        t = torch.arange(T, dtype=theta.dtype)[:, None]
        returns = torch.flip(torch.cumsum(torch.flip(rewards * gamma ** t, [0]), 0), [0]) / gamma ** t
        return -(torch.where(valid, log_pi * gamma ** t * returns, 0.0)).sum() / E
    return recording


@needs_torch
def test_loss_padded_arrays_are_time_major_padded_with_the_terminal_state_in_a_few_shapes():
    seen = []
    report = check_reinforce_estimator(_padded_recording(seen), convention="loss_padded", backend="torch")
    assert report.passed, str(report)
    shapes = {shape for shape, *_ in seen}
    assert shapes <= {(8, 1), (8, 2), (16, 50), (32, 50), (64, 50), (128, 50)} and len(shapes) <= 4, shapes
    for shape, states, valid, rewards in seen:
        lengths = valid.sum(axis=0)
        assert np.all(valid == (np.arange(shape[0])[:, None] < lengths[None, :]))  # a prefix per column
        assert np.all(states[~valid] == 2) and np.all(rewards[~valid] == 0)
        assert shape[0] >= 8 and shape[0] & (shape[0] - 1) == 0
    # Both a column the episode fills to the last row (the cut edge episode, 8 steps in 8 rows) and
    # padding below a one-step episode are passed.
    assert any(valid.all(axis=0).any() for _, _, valid, _ in seen)
    assert any(valid.sum(axis=0).min() == 1 for _, _, valid, _ in seen)


@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_a_jitted_jax_loss_compiles_once_per_padded_shape():
    # Its time (under 10 s of CPU) is measured by bench/conformance.py, not asserted here.
    from refpg.examples.reinforce_losses import _JITTED
    _JITTED.clear()
    report = check_reinforce_estimator(L.jax_reinforce_padded_loss, convention="loss_padded", backend="jax")
    assert report.passed, str(report)
    assert _JITTED[False]._cache_size() <= 4  # one compiled loss per padded shape


def test_the_bucket_is_a_power_of_two_at_least_8():
    assert [R._bucket(n) for n in (1, 7, 8, 9, 16, 17, 40, 64, 65)] == [8, 8, 8, 16, 16, 32, 64, 64, 128]


@pytest.mark.parametrize("name", ["reinforce_loss_discounted_torch", "reinforce_loss_spinning_up_torch"])
@needs_torch
def test_a_torch_loss_passes_at_another_seed(name):
    ex = next(e for e in L.CORRECT if e.name == name)
    report = check_reinforce_estimator(ex.fn, convention=ex.convention, backend=ex.backend, seed=7,
                                       **dict(ex.options))
    assert report.passed, str(report)


def test_the_t_value_of_a_spinning_up_failure_is_large():
    """Spinning Up's loss under the default declaration is far off, not borderline (|t| ~ 40 at seed 0)."""
    if not HAS_TORCH:
        pytest.skip("needs torch")
    ex = next(e for e in L.BROKEN if e.name == "reinforce_loss_spinning_up_declared_discounted_torch")
    t = abs(float(re.search(r"\(t = (-?[\d.]+)", _report(ex).failure(UNBIASED).message).group(1)))
    assert t > 20


def jax_list_loss(theta, episodes, gamma):
    """The discounted loss in JAX on the list layout (not jitted: every batch is a new pytree)."""
    import jax
    import jax.numpy as jnp

    states = jnp.concatenate([s for s, _, _ in episodes])
    actions = jnp.concatenate([a for _, a, _ in episodes])
    weights = []
    for _, _, rewards in episodes:  # rewards are concrete under jax.grad (only theta is traced)
        returns = L._returns_backward(np.asarray(rewards).tolist(), gamma)
        weights += [gamma ** t * G for t, G in enumerate(returns)]
    logp = jax.nn.log_softmax(theta, axis=-1)[states, actions]
    return -jnp.sum(logp * jnp.asarray(weights, dtype=theta.dtype)) / len(episodes)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_a_jax_loss_on_the_list_layout_passes_and_its_broken_sign_fails():
    report = check_reinforce_estimator(jax_list_loss, convention="loss", backend="jax", calls=30,
                                       episodes_per_call=67)
    assert report.passed and report.backend == "jax", str(report)
    report = check_reinforce_estimator(lambda th, eps, g: -jax_list_loss(th, eps, g), convention="loss",
                                       backend="jax", calls=30, episodes_per_call=67)
    assert report.failed_ids == (UNBIASED,), str(report)


def _total_return_estimate(theta, episodes):
    """sum_e sum_t grad log pi(a_t|s_t) R(tau_e) / E, by hand (Spinning Up's estimator, per episode)."""
    pi = np.exp(theta - theta.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    g = np.zeros_like(theta)
    for s, a, r in episodes:
        w = np.full(len(s), float(np.sum(r)))
        np.add.at(g, (s, a), w)
        np.add.at(g, s, -w[:, None] * pi[s])
    return g / len(episodes)


@needs_torch
def test_gradient_estimate_of_each_correct_loss_is_the_estimator_it_declares():
    mdp, theta = R._test_case()
    pi = TabularSoftmax(mdp.n_states, mdp.n_actions).probs(theta)
    episodes, _ = R._stage_pool(mdp, pi, 30, np.random.default_rng(4), None)
    by_name = {e.name: e for e in L.CORRECT}

    def estimate(name):
        e = by_name[name]
        return R.gradient_estimate_of(e.fn, e.convention, e.backend, theta, episodes, mdp.gamma,
                                      normalization=e.options.get("normalization", "per_episode"))

    np.testing.assert_allclose(estimate("reinforce_loss_discounted_torch"),
                               reinforce_numpy(theta, episodes, mdp.gamma), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(estimate("reinforce_loss_gamma_free_sum_torch"),
                               _reinforce_numpy(theta, episodes, mdp.gamma, discount_weighting=False),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(estimate("reinforce_loss_spinning_up_torch"), _total_return_estimate(theta, episodes),
                               rtol=1e-12, atol=1e-12)
    if HAS_JAX:
        np.testing.assert_allclose(estimate("reinforce_loss_padded_jax"),
                                   reinforce_numpy(theta, episodes, mdp.gamma), rtol=1e-10, atol=1e-12)


@needs_torch
def test_a_gradient_estimator_declared_as_a_loss_is_told_to_declare_refpg():
    import torch

    report = check_reinforce_estimator(lambda th, eps, g: torch.as_tensor(reinforce_numpy(th.detach().numpy(), [
        (s.numpy(), a.numpy(), r.numpy()) for s, a, r in eps], g)), convention="loss", backend="torch")
    message = report.failure("reinforce_estimator.output_shape").message
    assert message.startswith("loss should have shape (), actual shape (3, 2)")
    assert "declare convention='refpg' for a function that returns the estimate itself" in message
    assert report.status(UNBIASED) == "not_run"

"""`check_reinforce_estimator`: bugs whose bias comes from episode lengths are caught (the test MDP lets the
action change the chance of ending the episode), too few calls are refused, identical estimates are
judged by how likely a correct estimator is to repeat itself, a constant-factor error gets a hint, and
bad seeds and alphas raise InvalidInputError. Every statistical assertion runs on a fixed seed; the
200-seed false-alarm run of the correct examples is `python bench/conformance.py --false-alarms 200`."""

import re

import numpy as np
import pytest

from refpg.conformance import check_reinforce_estimator
from refpg.conformance import reinforce as R
from refpg.errors import InvalidInputError
from refpg.examples.correct import reinforce_numpy, reinforce_state_baseline_numpy

UNBIASED = "reinforce_estimator.unbiased"


def _softmax(theta):
    z = np.exp(theta - theta.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _reward_to_go(rewards, gamma):
    G, acc = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        G[t] = acc
    return G


def _estimate(theta, episodes, weights):
    """Mean over episodes of sum_t weights_e[t] grad log pi(a_t|s_t), tabular softmax."""
    theta = np.asarray(theta, dtype=np.float64)
    pi, g = _softmax(theta), np.zeros_like(theta)
    for (s, a, _), w in zip(episodes, weights):
        np.add.at(g, (s, a), w)
        np.add.at(g, s, -w[:, None] * pi[s])
    return g / len(episodes)


def leaking_reward_to_go(theta, episodes, gamma):
    """The batch's rewards concatenated and one reward-to-go run over them: G_t runs on into the next
    episode (its first return, discounted by the steps left), a classic missing done-mask."""
    G = _reward_to_go(np.concatenate([np.asarray(r, dtype=np.float64) for _, _, r in episodes]), gamma)
    ends = np.cumsum([len(r) for _, _, r in episodes])
    return _estimate(theta, episodes, [gamma ** np.arange(len(r)) * G[e - len(r):e]
                                       for (_, _, r), e in zip(episodes, ends)])


def steps_left_baseline(theta, episodes, gamma):
    """A "baseline" from the steps left in the episode, (1 - gamma^(T - t)) / (2 (1 - gamma)): it looks at
    the episode's future, so it is not independent of a_t."""
    weights = []
    for _, _, r in episodes:
        T = len(r)
        left = T - np.arange(T)
        b = 0.5 * (1 - gamma ** left) / (1 - gamma)
        weights.append(gamma ** np.arange(T) * (_reward_to_go(np.asarray(r, dtype=np.float64), gamma) - b))
    return _estimate(theta, episodes, weights)


def _t(message):
    return abs(float(re.search(r"\(t = (-?[\d.]+)", message).group(1)))


@pytest.fixture(scope="module")
def leak_report():
    return check_reinforce_estimator(leaking_reward_to_go)


def test_the_test_mdp_lets_the_action_change_the_chance_of_ending_the_episode():
    mdp, _ = R._test_case()
    end = mdp.P[:, :, mdp.terminal].sum(axis=2)[~mdp.terminal]
    assert np.ptp(end, axis=1).max() >= 0.5  # quit ends the episode, continue mostly does not


def test_reward_to_go_leaking_into_the_next_episode_is_caught(leak_report):
    failure = leak_report.failure(UNBIASED)
    assert failure is not None, str(leak_report)
    assert _t(failure.message) > 15, failure.message  # ~27 on seed 0, threshold 5.3
    assert "200 calls of 50 episodes" in failure.message
    assert "every entry is about" not in failure.message  # not a constant factor: no misleading hint


def test_baseline_from_the_steps_left_is_caught():
    failure = check_reinforce_estimator(steps_left_baseline).failure(UNBIASED)
    assert failure is not None
    assert _t(failure.message) > 30, failure.message  # ~75 on seed 0


@pytest.mark.parametrize("fn", [reinforce_numpy, reinforce_state_baseline_numpy], ids=lambda f: f.__name__)
@pytest.mark.parametrize("seed", [11, 12])
def test_correct_estimators_pass(fn, seed):
    report = check_reinforce_estimator(fn, seed=seed)
    assert report.passed, str(report)


def test_a_constant_factor_gets_a_hint():
    def one_minus_gamma(theta, episodes, gamma):
        return (1 - gamma) * reinforce_numpy(theta, episodes, gamma)

    failure = check_reinforce_estimator(one_minus_gamma).failure(UNBIASED)
    assert failure is not None
    c = float(re.search(r"every entry is about (-?[\d.]+) \(close to 1-gamma\) x", failure.message).group(1))
    assert c == pytest.approx(0.3, rel=0.03), failure.message
    assert "a sum instead of a mean over episodes?" in failure.message


def test_identical_estimates_off_target_fail_as_zero_spread():
    report = check_reinforce_estimator(lambda theta, episodes, gamma: np.zeros_like(theta))
    message = report.failure(UNBIASED).message
    assert "actual 0 in every one of the 200 calls (zero spread" in message, message


def test_an_entry_of_the_never_visited_terminal_state_must_be_exactly_zero():
    def leaks_onto_terminal(theta, episodes, gamma):
        g = reinforce_numpy(theta, episodes, gamma)
        g[-1] += [1e-3, -1e-3]  # rows still sum to 0
        return g

    message = check_reinforce_estimator(leaks_onto_terminal).failure(UNBIASED).message
    assert "should be exactly 0 in every call" in message and "(terminal)" in message, message


def test_zero_spread_is_evidence_only_where_a_batch_would_have_visited_the_state():
    target = np.array([[0.3, -0.3], [0.7, -0.7], [0.0, 0.0]])
    rng = np.random.default_rng(0)
    estimates = target + rng.normal(scale=0.1, size=(30, 3, 2))
    estimates[:, 1] = 0.0  # state 1 never visited in any of the 30 calls
    estimates[:, 2] = 0.0
    rare = R._mean_test(estimates, target, np.array([1.0, 1e-3, 0.0]), 1, 5e-7)
    assert not rare.rejected and rare.z[1, 0] == 0.0  # 30 misses are likely: no evidence
    common = R._mean_test(estimates, target, np.array([1.0, 0.9, 0.0]), 1, 5e-7)
    assert common.rejected and common.z[1, 0] == -np.inf  # 30 misses at 10% each: a bug


@pytest.mark.parametrize("kwargs, words", [
    (dict(calls=2), "calls should be >= 30, actual 2: the mean test estimates each entry's standard error"),
    (dict(calls=29, episodes_per_call=100), "calls should be >= 30, actual 29"),
    (dict(calls=30, episodes_per_call=50), "calls * episodes_per_call should be >= 2000, actual 30 * 50 = 1500"),
    (dict(calls=0), "calls should be >= 30, actual 0"),
    (dict(calls=2.0), "calls should be an integer, actual 2.0"),
    (dict(episodes_per_call=0), "episodes_per_call should be >= 1, actual 0"),
    (dict(seed=-1), "seed should be >= 0, actual -1"),
    (dict(seed=1.5), "seed should be an integer, actual 1.5"),
    (dict(seed="0"), "seed should be an integer, actual '0'"),
    (dict(seed=None), "seed should be an integer, actual None"),
    (dict(alpha="x"), "alpha should be a finite real number, actual 'x'"),
    (dict(alpha=float("nan")), "alpha should be a finite real number, actual nan"),
    (dict(alpha=0), "alpha should be > 0.0, actual 0.0"),
    (dict(alpha=1), "alpha should be < 1.0, actual 1.0"),
])
def test_bad_arguments_raise_clear_errors(kwargs, words):
    with pytest.raises(InvalidInputError) as info:
        check_reinforce_estimator(reinforce_numpy, **kwargs)
    assert words in str(info.value)


def test_the_smallest_accepted_design_runs():
    report = check_reinforce_estimator(reinforce_numpy, calls=R.MIN_CALLS, episodes_per_call=67)
    assert report.passed, str(report)

"""refpg.estimators against hand computations on batches built entry by entry: the total-return variant,
the default discount weighting, empty and single-episode batches, and the batch checks (issue #14)."""

import re

import numpy as np
import pytest

import refpg
from refpg import errors
from refpg.algorithms import reinforce_step
from refpg.estimators import (
    empirical_fisher_estimate,
    empirical_fisher_vector_product,
    gamma_free_gradient,
    reinforce_estimates,
    reinforce_gradient_estimate,
)
from refpg.sampling import Batch

S, A = 3, 2


def batch_of(states, actions, rewards, terminated, truncated=None, valid=None):
    """A (T, N) batch from lists; log-probs are those of theta = 0 (uniform), steps count from each reset."""
    states, actions = np.array(states), np.array(actions)
    terminated = np.array(terminated, dtype=bool)
    truncated = np.zeros_like(terminated) if truncated is None else np.array(truncated, dtype=bool)
    valid = np.ones_like(terminated) if valid is None else np.array(valid, dtype=bool)
    step = np.zeros(states.shape, dtype=np.int64)
    for t in range(1, states.shape[0]):
        step[t] = np.where(terminated[t - 1] | truncated[t - 1], 0, step[t - 1] + 1)
    return Batch(states=states, actions=actions, rewards=np.array(rewards, dtype=float),
                 next_states=np.zeros_like(states), terminated=terminated, truncated=truncated,
                 log_probs=np.full(states.shape, np.log(0.5)), step=step, valid=valid)


# Episodes are numbered column by column. Column 0: episode 0 = steps 0-1, episode 1 = steps 2-3.
# Column 1: episode 2 = steps 0-2, then an unfinished tail at t = 3 (reward 100), which no estimate uses.
BATCH = batch_of(states=[[0, 1], [1, 2], [2, 0], [0, 1]], actions=[[1, 0], [0, 1], [1, 1], [0, 0]],
                 rewards=[[1.0, 2.0], [3.0, -1.0], [5.0, 4.0], [7.0, 100.0]],
                 terminated=[[False, False], [True, False], [False, True], [True, False]])
POL = refpg.TabularSoftmax(S, A)
THETA = np.zeros((S, A))
GAMMA = 0.5


def score(s, a):
    """grad log pi(a|s) at theta = 0 (uniform over 2 actions): e_{s,a} - 0.5 e_{s,.}."""
    g = np.zeros((S, A))
    g[s] -= 0.5
    g[s, a] += 1.0
    return g


EPISODES = [[(0, 1, 1.0), (1, 0, 3.0)], [(2, 1, 5.0), (0, 0, 7.0)], [(1, 0, 2.0), (2, 1, -1.0), (0, 1, 4.0)]]


def by_hand(variant, discount_weighting=True):
    out = []
    for episode in EPISODES:
        rewards = [r for _, _, r in episode]
        g = np.zeros((S, A))
        for t, (s, a, _) in enumerate(episode):
            G_t = sum(GAMMA ** (k - t) * rewards[k] for k in range(t, len(episode)))
            G_0 = sum(GAMMA ** k * rewards[k] for k in range(len(episode)))
            if variant == "total":
                g += score(s, a) * G_0
            else:
                g += score(s, a) * G_t * (GAMMA ** t if discount_weighting else 1.0)
        out.append(g)
    return np.array(out)


@pytest.mark.parametrize("variant", ["total", "reward_to_go"])
def test_per_episode_estimates_equal_the_hand_computation_in_episode_order(variant):
    est = reinforce_estimates(POL, THETA, BATCH, GAMMA, variant=variant)
    np.testing.assert_allclose(est, by_hand(variant), rtol=1e-14, atol=1e-14)


def test_the_default_weights_by_gamma_to_the_t_and_discount_weighting_false_does_not():
    default = reinforce_estimates(POL, THETA, BATCH, GAMMA)
    np.testing.assert_array_equal(default, reinforce_estimates(POL, THETA, BATCH, GAMMA, discount_weighting=True))
    np.testing.assert_allclose(reinforce_estimates(POL, THETA, BATCH, GAMMA, discount_weighting=False),
                               by_hand("reward_to_go", discount_weighting=False), rtol=1e-14, atol=1e-14)
    assert not np.allclose(default, by_hand("reward_to_go", discount_weighting=False))


def test_discount_weighting_false_is_refused_for_the_total_variant():
    with pytest.raises(errors.InvalidInputError, match="discount_weighting=False applies to variant='reward_to_go'"):
        reinforce_estimates(POL, THETA, BATCH, GAMMA, variant="total", discount_weighting=False)


def test_the_gradient_estimate_is_the_mean_over_episodes_even_of_one():
    np.testing.assert_allclose(reinforce_gradient_estimate(POL, THETA, BATCH, GAMMA),
                               by_hand("reward_to_go").mean(axis=0), rtol=1e-14, atol=1e-14)
    one = batch_of(states=[[0], [1]], actions=[[1], [0]], rewards=[[1.0], [3.0]], terminated=[[False], [True]])
    np.testing.assert_allclose(reinforce_gradient_estimate(POL, THETA, one, GAMMA), by_hand("reward_to_go")[0],
                               rtol=1e-14, atol=1e-14)


def test_a_batch_without_a_complete_episode_is_refused():
    unfinished = batch_of(states=[[0], [1]], actions=[[1], [0]], rewards=[[1.0], [3.0]],
                          terminated=[[False], [False]])
    assert reinforce_estimates(POL, THETA, unfinished, GAMMA).shape == (0, S, A)
    with pytest.raises(errors.InvalidInputError, match="batch holds no complete episode"):
        reinforce_gradient_estimate(POL, THETA, unfinished, GAMMA)


def test_gamma_free_gradient_refuses_a_policy_under_which_an_episode_never_ends():
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, :, 1] = 1.0  # action 0 loops in state 0 forever; action 1 ends
    mdp = refpg.TabularMDP(P, np.zeros((2, 2)), [1.0, 0.0], 0.9, terminal=[False, True])
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    gamma_free_gradient(mdp, pol, np.zeros((2, 2)))  # uniform: ends with probability one
    with pytest.raises(errors.ImproperMDPError, match="gamma_free_gradient needs every episode to end"):
        gamma_free_gradient(mdp, pol, np.array([[800.0, 0.0], [0.0, 0.0]]))


# -- empirical Fisher ----------------------------------------------------------------------

def test_empirical_fisher_is_the_mean_outer_product_over_valid_transitions_even_of_one():
    valid = np.array([[True, True], [True, False], [True, True], [False, True]])
    batch = batch_of(BATCH.states, BATCH.actions, BATCH.rewards, BATCH.terminated, valid=valid)
    scores = [score(s, a).ravel() for s, a, v in zip(BATCH.states.ravel(), BATCH.actions.ravel(), valid.ravel()) if v]
    F = np.mean([np.outer(g, g) for g in scores], axis=0)
    np.testing.assert_allclose(empirical_fisher_estimate(POL, THETA, batch), F, rtol=1e-14, atol=1e-15)
    v = np.arange(S * A, dtype=float).reshape(S, A)
    np.testing.assert_allclose(empirical_fisher_vector_product(POL, THETA, batch, v), (F @ v.ravel()).reshape(S, A),
                               rtol=1e-13, atol=1e-14)
    single = batch_of([[2]], [[1]], [[0.0]], [[True]])
    g = score(2, 1).ravel()
    np.testing.assert_allclose(empirical_fisher_estimate(POL, THETA, single), np.outer(g, g), rtol=1e-14)


@pytest.mark.parametrize("call", [empirical_fisher_estimate, lambda p, t, b: empirical_fisher_vector_product(p, t, b, t)])
def test_a_batch_without_a_valid_transition_is_refused(call):
    empty = batch_of([[0]], [[0]], [[0.0]], [[True]], valid=[[False]])
    with pytest.raises(errors.InvalidInputError, match="batch holds no valid transition"):
        call(POL, THETA, empty)


@pytest.mark.parametrize("n_states, n_actions, too_large", [(10_000, 2, False), (6_667, 3, True)])
def test_empirical_fisher_limit_is_20000_parameters_checked_first(n_states, n_actions, too_large):
    pol = refpg.TabularSoftmax(n_states, n_actions)
    expected = errors.ProblemTooLargeError if too_large else errors.InvalidInputError
    with pytest.raises(expected, match="DENSE_FISHER_MAX_PARAMS=20000" if too_large else "batch should be") as info:
        empirical_fisher_estimate(pol, np.zeros(pol.theta_shape), "not a batch")
    assert type(info.value) is expected


# -- the batch checks ------------------------------------------------------------------------

CALLS = {
    "reinforce_estimates": lambda b: reinforce_estimates(POL, THETA, b, GAMMA),
    "empirical_fisher_estimate": lambda b: empirical_fisher_estimate(POL, THETA, b),
    "empirical_fisher_vector_product": lambda b: empirical_fisher_vector_product(POL, THETA, b, THETA),
    "reinforce_step": lambda b: reinforce_step(
        refpg.envs.garnet(S, A, 2, seed=0, gamma=GAMMA), POL, THETA, mode="sampled", batch=b, lr=0.1),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("field, value, msg", [
    ("states", S, f"batch.states[2, 1] is {S} but the policy has {S} states; expected 0 <= state < {S}"),
    ("states", -1, f"batch.states[2, 1] is -1 but the policy has {S} states"),
    ("actions", A, f"batch.actions[2, 1] is {A} but the policy has {A} actions; expected 0 <= action < {A}"),
])
def test_an_entry_out_of_the_policys_range_is_named(call, field, value, msg):
    arrays = {"states": BATCH.states.copy(), "actions": BATCH.actions.copy()}
    arrays[field][2, 1] = value
    bad = batch_of(arrays["states"], arrays["actions"], BATCH.rewards, BATCH.terminated)
    with pytest.raises(errors.InvalidInputError, match=re.escape(msg)):
        call(bad)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_batch_that_is_not_a_batch_is_named(call):
    with pytest.raises(errors.InvalidInputError, match="batch should be a refpg.sampling.Batch, actual dict"):
        call({"states": BATCH.states})


def test_gamma_one_is_accepted_for_episodic_returns():
    est = reinforce_estimates(POL, THETA, BATCH, 1.0)
    first = score(0, 1) * 4.0 + score(1, 0) * 3.0  # G_0 = 1 + 3, G_1 = 3, no discount weighting left
    np.testing.assert_allclose(est[0], first, rtol=1e-14)

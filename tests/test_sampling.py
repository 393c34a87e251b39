"""The vectorized sampler: determinism, resets, truncation, and the right distribution."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import refpg
from refpg import errors
from refpg import strategies as rst
from refpg.sampling import sample_episodes, sample_steps
from refpg.stats import mean_test
from tests._stats import binomial_pvalues
from tests.helpers import uniform


def assert_consistent(batch, mdp, limit=None):
    """Invariants every batch must satisfy, whatever the seed."""
    P = mdp.dense_P()
    v = batch.valid
    s, a, s2 = batch.states[v], batch.actions[v], batch.next_states[v]
    assert (P[s, a, s2] > 0).all(), "a transition with probability 0"
    np.testing.assert_array_equal(batch.terminated[v], mdp.terminal[s2])
    assert not (batch.terminated & batch.truncated).any()
    done = batch.terminated | batch.truncated
    T = batch.shape[0]
    for t in range(T - 1):
        cont = ~done[t] & v[t + 1]
        # Within an episode the next state is the next observation...
        np.testing.assert_array_equal(batch.states[t + 1, cont], batch.next_states[t, cont])
        np.testing.assert_array_equal(batch.step[t + 1, cont], batch.step[t, cont] + 1)
        # ...and after a reset the new episode starts at step 0 from rho.
        reset = done[t] & v[t + 1]
        assert (batch.step[t + 1, reset] == 0).all()
        assert (mdp.rho[batch.states[t + 1, reset]] > 0).all()
    if limit is not None:
        assert (batch.step[v] < limit).all()
        np.testing.assert_array_equal(batch.truncated[v], (batch.step[v] == limit - 1) & ~batch.terminated[v])


@given(st.data(), rst.mdps(max_states=5, max_actions=3, episodic=True), st.integers(1, 6), st.integers(0, 2**32))
def test_sampled_batches_never_cross_a_reset(data, mdp, limit, seed):
    pi = data.draw(rst.policies(mdp))
    batch = sample_steps(mdp, pi, 7, 25, rng=np.random.default_rng(seed), max_episode_steps=limit)
    assert_consistent(batch, mdp, limit)
    assert batch.shape == (25, 7)
    np.testing.assert_allclose(batch.log_probs, np.log(pi[batch.states, batch.actions]))


@given(st.data(), rst.mdps(max_states=5, max_actions=3, episodic=True, sparse=True), st.integers(0, 2**32))
def test_sparse_mdps_sample_consistently(data, mdp, seed):
    batch = sample_steps(mdp, data.draw(rst.policies(mdp)), 5, 20, rng=np.random.default_rng(seed))
    assert_consistent(batch, mdp)


def test_same_seed_same_batch_and_different_seed_different_batch():
    mdp = refpg.envs.frozen_lake()
    a = sample_steps(mdp, uniform(mdp), 16, 50, rng=np.random.default_rng(3), max_episode_steps=20)
    b = sample_steps(mdp, uniform(mdp), 16, 50, rng=np.random.default_rng(3), max_episode_steps=20)
    c = sample_steps(mdp, uniform(mdp), 16, 50, rng=np.random.default_rng(4), max_episode_steps=20)
    for name in ("states", "actions", "rewards", "next_states", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.actions, c.actions)


def test_episode_view_splits_at_dones_and_keeps_the_final_observation():
    mdp = refpg.envs.frozen_lake()
    batch = sample_steps(mdp, uniform(mdp), 3, 60, rng=np.random.default_rng(0), max_episode_steps=8)
    eps = batch.episodes()
    assert len(eps) == int((batch.terminated | batch.truncated).sum())
    for ep in eps:
        assert ep.complete and len(ep.states) <= 8
        np.testing.assert_array_equal(ep.states[1:], ep.next_states[:-1])
        assert ep.terminated == bool(mdp.terminal[ep.next_states[-1]])
    with_tail = batch.episodes(complete_only=False)
    assert sum(len(e.states) for e in with_tail) == batch.states.size


def test_truncation_marks_the_limit_step_on_a_never_ending_mdp():
    mdp = refpg.envs.two_state()
    batch = sample_steps(mdp, uniform(mdp), 4, 10, rng=np.random.default_rng(0), max_episode_steps=3)
    expected = np.tile((np.arange(10) % 3 == 2)[:, None], (1, 4))
    np.testing.assert_array_equal(batch.truncated, expected)
    assert not batch.terminated.any()


@pytest.mark.parametrize("alias", [True, False])
def test_transition_frequencies_match_P_exactly(alias, monkeypatch):
    """Exact binomial tests on every (s, a, s2) cell; family-wise alpha 1e-6 (Bonferroni).

    Both sampling methods: alias tables, and the inverse CDF that tables of over 20000 rows use.
    """
    if not alias:
        monkeypatch.setattr(refpg.sampling._Categorical, "ALIAS_MAX_ROWS", 0)
    mdp = refpg.envs.garnet(6, 3, 3, seed=5)
    pi = uniform(mdp)
    batch = sample_steps(mdp, pi, 2000, 30, rng=np.random.default_rng(11))
    P = mdp.dense_P()
    n_sa = np.zeros((6, 3))
    np.add.at(n_sa, (batch.states.ravel(), batch.actions.ravel()), 1)
    n_sas = np.zeros((6, 3, 6))
    np.add.at(n_sas, (batch.states.ravel(), batch.actions.ravel(), batch.next_states.ravel()), 1)
    alpha = 1e-6 / P.size
    p = binomial_pvalues(n_sas, n_sa[:, :, None], P)
    assert p.min() > alpha
    # Power: the same test rejects a transition model off by a few percent.
    wrong = P.copy()
    wrong[0, 0] = 0.9 * P[0, 0] + 0.1 * np.roll(P[0, 0], 1)
    assert binomial_pvalues(n_sas[0, 0], n_sa[0, 0], wrong[0, 0]).min() <= alpha


def test_mean_discounted_return_of_complete_episodes_is_J():
    """No truncation: every episode of this MDP terminates, so the estimate is unbiased."""
    mdp = refpg.envs.garnet(5, 2, 2, seed=1, gamma=0.9)
    # Make it episodic: a terminal state entered with probability 0.2 from everywhere.
    P = np.zeros((6, 2, 6))
    P[:5, :, :5] = 0.8 * mdp.P
    P[:5, :, 5] = 0.2
    P[5, :, 5] = 1.0
    r = np.vstack([mdp.r, np.zeros((1, 2))])
    episodic = refpg.TabularMDP(P, r, np.r_[mdp.rho, 0.0], 0.9, np.r_[np.zeros(5, bool), True])
    pi = np.tile([[0.3, 0.7]], (6, 1))
    batch = sample_episodes(episodic, pi, 40_000, rng=np.random.default_rng(2))
    G = (batch.rewards * 0.9 ** batch.step).sum(axis=0)
    J = refpg.evaluate(episodic, pi).J
    assert not mean_test(G[:, None], [J]).rejected
    assert mean_test(G[:, None], [1.03 * J]).rejected  # power: 3% off is caught


def test_sample_episodes_refuses_an_mdp_where_episodes_never_end():
    mdp = refpg.envs.two_state()
    with pytest.raises(errors.ImproperMDPError, match="never reach a terminal state"):
        sample_episodes(mdp, uniform(mdp), 10, rng=np.random.default_rng(0))


def test_sample_episodes_with_a_limit_truncates():
    mdp = refpg.envs.two_state()
    batch = sample_episodes(mdp, uniform(mdp), 10, rng=np.random.default_rng(0), max_episode_steps=4)
    assert batch.shape == (4, 10) and batch.truncated[3].all() and batch.valid.all()


def test_sample_episodes_pads_after_termination():
    mdp = refpg.envs.frozen_lake()
    batch = sample_episodes(mdp, uniform(mdp), 200, rng=np.random.default_rng(0), max_episode_steps=100)
    assert_consistent(batch, mdp, 100)
    ends = (batch.terminated | batch.truncated)
    assert (ends.sum(axis=0) == 1).all()
    assert (batch.rewards[~batch.valid] == 0).all()


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(n_envs=0), errors.InvalidInputError, "n_envs should be >= 1, actual 0"),
    (dict(n_steps=2.5), errors.InvalidInputError, "n_steps should be an integer"),
    (dict(max_episode_steps=0), errors.InvalidInputError, "max_episode_steps should be >= 1"),
    (dict(rng=0), errors.InvalidInputError, "rng should be a numpy.random.Generator"),
    (dict(pi=np.ones((16, 4))), errors.NotADistributionError, "pi[0, :] sums to 4.0"),
])
def test_sampler_bad_input(kwargs, exc, msg):
    mdp = refpg.envs.frozen_lake()
    args = dict(pi=uniform(mdp), n_envs=2, n_steps=3, rng=np.random.default_rng(0))
    args.update(kwargs)
    pi = args.pop("pi")
    with pytest.raises(exc, match=__import__("re").escape(msg)):
        sample_steps(mdp, pi, **args)


@pytest.mark.parametrize("sparse", [False, True])
def test_transition_rewards_are_sampled_per_successor(sparse):
    mdp = refpg.envs.frozen_lake()  # reward 1 only on entering G: a transition reward
    R = mdp.transition_rewards
    S, A = mdp.n_states, mdp.n_actions
    if sparse:
        mdp = refpg.TabularMDP(sp.csr_array(mdp.P.reshape(S * A, S)), sp.csr_array(R.reshape(S * A, S)),
                               mdp.rho, mdp.gamma, mdp.terminal)
    for batch in (sample_steps(mdp, uniform(mdp), 64, 200, rng=np.random.default_rng(0)),
                  sample_episodes(mdp, uniform(mdp), 64, rng=np.random.default_rng(0), max_episode_steps=100)):
        v = batch.valid
        np.testing.assert_array_equal(batch.rewards[v], R[batch.states, batch.actions, batch.next_states][v])
        assert batch.rewards[v].max() == 1.0


# -- the categorical sampler's two methods ------------------------------------------------

def test_alias_tables_up_to_20000_rows_inverse_cdf_beyond():
    from refpg.sampling import _Categorical

    assert _Categorical(sp.csr_array(np.full((20_000, 2), 0.5))).alias
    assert not _Categorical(sp.csr_array(np.full((20_001, 2), 0.5))).alias


@pytest.mark.parametrize("alias", [True, False])
def test_both_categorical_methods_draw_each_row_with_its_probabilities(alias, monkeypatch):
    # Rows of different support sizes (so padding), zeros inside a row, and an outcome of probability 1.
    from refpg.sampling import _Categorical

    if not alias:
        monkeypatch.setattr(_Categorical, "ALIAS_MAX_ROWS", 0)
    probs = np.array([[0.5, 0.25, 0.125, 0.125], [0.0, 0.7, 0.0, 0.3], [0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    cat = _Categorical(sp.csr_array(probs))
    assert cat.alias is alias
    rng = np.random.default_rng(3)
    n = 40_000
    row = np.repeat(np.arange(4), n)
    out = cat.draw(row, rng.random(4 * n))
    counts = np.stack([np.bincount(out[k * n:(k + 1) * n], minlength=4) for k in range(4)])
    assert counts[probs == 0].sum() == 0 and counts[2, 2] == n
    alpha = 1e-6 / probs.size
    p = binomial_pvalues(counts, np.full((4, 1), n), probs)
    assert p[probs > 0].min() > alpha
    # Power: the same test rejects row 0 if its first two outcomes swapped probabilities.
    assert binomial_pvalues(counts[0], n, probs[0][[1, 0, 2, 3]]).min() <= alpha


def test_batches_are_immutable_and_compare_by_identity():
    import dataclasses

    mdp = refpg.envs.two_state()
    batch = sample_steps(mdp, uniform(mdp), 3, 2, rng=np.random.default_rng(0))
    again = sample_steps(mdp, uniform(mdp), 3, 2, rng=np.random.default_rng(0))
    for field in dataclasses.fields(batch):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(batch, field.name, getattr(batch, field.name))
    assert batch == batch and batch != again and {batch: 1, again: 2}[batch] == 1


def test_alias_padding_left_over_by_rounding_points_at_a_real_outcome():
    # A row whose probabilities fall short (0.3 in all, as rounding can starve a row in a much smaller way):
    # every column is left over, and the two padding columns (j >= 1 = the row's support) must yield the
    # row's real outcome 7, not the padding placeholder 0.
    from refpg.sampling import _alias_tables

    keep, first, second = _alias_tables(np.array([[0.3, 0.0, 0.0]]), np.array([[7, 0, 0]]), np.array([1]))
    assert keep.tolist() == [[1.0, 1.0, 1.0]] and first.tolist() == [[7, 7, 7]]


def test_the_same_seed_gives_the_same_batch_in_every_version():
    # Pinned draws (two uniforms per environment and step: the action, then the successor): a change to how
    # the sampler consumes the generator changes every sampled result that users and the golden set seeded.
    P = np.zeros((3, 2, 3))
    P[0, 0], P[0, 1], P[1, 0], P[1, 1] = [0.2, 0.3, 0.5], [0, 0.5, 0.5], [0.6, 0.4, 0], [1 / 3, 1 / 3, 1 / 3]
    P[2, :] = [0.25, 0.25, 0.5]
    mdp = refpg.TabularMDP(P, np.zeros((3, 2)), [0.5, 0.25, 0.25], 0.9)
    pi = np.array([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    batch = sample_steps(mdp, pi, 3, 4, rng=np.random.default_rng(0))
    assert batch.states.tolist() == [[0, 0, 0], [0, 2, 2], [1, 2, 2], [2, 2, 0]]
    assert batch.actions.tolist() == [[0, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 1]]
    assert batch.next_states.tolist() == [[0, 2, 2], [1, 2, 2], [2, 2, 0], [2, 0, 2]]


def test_the_same_seed_gives_the_same_episodes_in_every_version_and_padding_has_step_0():
    P = np.zeros((3, 2, 3))
    P[0, 0], P[0, 1], P[1, 0], P[1, 1] = [0.2, 0.3, 0.5], [0, 0.5, 0.5], [0.6, 0.0, 0.4], [1 / 3, 1 / 3, 1 / 3]
    P[2, :, 2] = 1.0
    mdp = refpg.TabularMDP(P, np.zeros((3, 2)), [0.5, 0.5, 0.0], 0.9, terminal=[False, False, True])
    pi = np.array([[0.3, 0.7], [0.5, 0.5], [0.5, 0.5]])
    batch = sample_episodes(mdp, pi, 3, rng=np.random.default_rng(0))
    assert batch.states.T.tolist() == [[1, 0], [0, 2], [0, 1]]
    assert batch.actions.T.tolist() == [[0, 1], [1, 1], [1, 0]]
    assert batch.valid.T.tolist() == [[True, True], [True, False], [True, True]]
    assert batch.step.T.tolist() == [[0, 1], [0, 0], [0, 1]]  # the padding row of episode 1 has step 0


@pytest.mark.parametrize("alias", [True, False])
def test_first_states_follow_rho_under_both_sampling_methods(alias, monkeypatch):
    if not alias:
        monkeypatch.setattr(refpg.sampling._Categorical, "ALIAS_MAX_ROWS", 0)
    mdp = refpg.envs.garnet(6, 3, 3, seed=5)
    rho = np.array([0.05, 0.3, 0.0, 0.25, 0.15, 0.25])
    mdp = refpg.TabularMDP(mdp.dense_P(), mdp.r, rho, mdp.gamma)
    batch = sample_steps(mdp, uniform(mdp), 20_000, 2, rng=np.random.default_rng(4))
    counts = np.bincount(batch.states[0], minlength=6)
    assert counts[2] == 0
    alpha = 1e-6 / 6
    assert binomial_pvalues(counts, 20_000, rho)[rho > 0].min() > alpha
    # Power: all first states in state 0, as a lost row offset would give, is refused at once.
    assert binomial_pvalues(np.array([20_000, 0, 0, 0, 0, 0]), 20_000, rho).min() <= alpha


def test_inverse_cdf_draws_take_u_in_cdf_intervals_closed_below_and_never_the_padding(monkeypatch):
    # Outcome j is drawn for u in [cdf[j-1], cdf[j]). Ten 0.1s sum to 1 - 2**-53 in floating point, so a u
    # between that and 1 must still draw the last real outcome, not the padding column of the row.
    from refpg.sampling import _Categorical

    monkeypatch.setattr(_Categorical, "ALIAS_MAX_ROWS", 0)
    probs = np.zeros((2, 11))
    probs[0, :10] = 0.1
    probs[1, [0, 10]] = 0.5
    assert np.cumsum(probs[0])[9] < 1.0  # the rounding the test is about
    cat = _Categorical(sp.csr_array(probs))
    assert not cat.alias
    last = np.nextafter(1.0, 0.0)
    assert cat.draw(np.array([0, 0, 1, 1]), np.array([last, 0.0, 0.5, np.nextafter(0.5, 0.0)])).tolist() == [
        9, 0, 10, 0]

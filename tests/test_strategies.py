"""Property tests of refpg.strategies: every example is valid and within its
bounds, episodic MDPs are proper, examples shrink to the documented targets,
and every invalid argument raises InvalidArgument."""

import inspect
import re

import numpy as np
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import refpg
from refpg.strategies import (
    KINDS,
    log_linear,
    mdp_policy_theta,
    mdps,
    parameterizations,
    policies,
    probability_matrices,
    probability_vectors,
    tabular_softmax,
    thetas,
)

ATOL = 1e-12  # rows of normalised integer weights sum to 1 up to a few ulps


#: Every phase but explain. Explain runs after shrinking and only annotates a failure report (which
#: parts of the example could vary); here it took 90% of the time (14.4 of 14.8 s over this module's
#: shrink tests) and every shrink target is the same without it.
_SHRINK_PHASES = tuple(p for p in Phase if p is not Phase.explain)


def minimal(strategy):
    """The example `strategy` shrinks to, i.e. its documented shrink target."""
    return find(strategy, lambda _: True,
                settings=settings(database=None, derandomize=True, phases=_SHRINK_PHASES))


def assert_distributions(x, name):
    x = np.asarray(x)
    assert x.dtype == np.float64, f"{name} dtype should be float64, actual {x.dtype}"
    assert (x >= 0).all(), f"{name} has a negative entry: {x}"
    np.testing.assert_allclose(x.sum(axis=-1), 1.0, rtol=0, atol=ATOL, err_msg=name)


def assert_mdp_equal(mdp, *, P, r, rho, gamma, terminal=None):
    S = len(rho)
    np.testing.assert_array_equal(mdp.dense_P(), P)
    np.testing.assert_array_equal(mdp.r, r)
    np.testing.assert_array_equal(mdp.rho, rho)
    assert mdp.gamma == gamma
    np.testing.assert_array_equal(mdp.terminal, np.zeros(S, bool) if terminal is None else terminal)


def uniform(mdp):
    return np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)


@st.composite
def mdp_arguments(draw):
    """Valid keyword arguments of `mdps`, covering the whole argument space."""
    episodic = draw(st.booleans())
    least = 2 if episodic else 1
    min_states = draw(st.integers(least, 4))
    max_states = draw(st.integers(min_states, 5))
    min_actions = draw(st.integers(1, 3))
    max_actions = draw(st.integers(min_actions, 3))
    top = 1.0 if episodic else 0.99
    min_gamma = draw(st.floats(0.0, top))
    max_gamma = draw(st.floats(min_gamma, top))
    return dict(min_states=min_states, max_states=max_states, min_actions=min_actions,
                max_actions=max_actions, min_gamma=min_gamma, max_gamma=max_gamma,
                episodic=episodic, sparse=draw(st.booleans()),
                reward_scale=draw(st.sampled_from([0.0, 0.25, 1.0, 100.0])))


# -- every example is valid and within bounds ---------------------------------

@given(st.data())
def test_probability_matrices_have_distribution_rows(data):
    n_rows, n_cols = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    M = data.draw(probability_matrices(n_rows, n_cols))
    assert M.shape == (n_rows, n_cols)
    assert_distributions(M, "M")


@given(st.data())
def test_probability_vectors_have_at_least_min_support_positive_entries(data):
    n = data.draw(st.integers(1, 6))
    k = data.draw(st.integers(1, n))
    p = data.draw(probability_vectors(n, min_support=k))
    assert p.shape == (n,)
    assert_distributions(p, "p")
    assert np.count_nonzero(p) >= k


@given(st.data())
def test_mdps_respect_every_bound(data):
    kw = data.draw(mdp_arguments(), label="kwargs")
    mdp = data.draw(mdps(**kw), label="mdp")
    S, A = mdp.n_states, mdp.n_actions
    assert kw["min_states"] <= S <= kw["max_states"]
    assert kw["min_actions"] <= A <= kw["max_actions"]
    assert kw["min_gamma"] <= mdp.gamma <= kw["max_gamma"]
    assert mdp.is_sparse == kw["sparse"]
    assert mdp.transition_rows().shape == (S * A, S)
    assert mdp.r.dtype == np.float64 and np.isfinite(mdp.r).all()
    assert np.abs(mdp.r).max() <= kw["reward_scale"]
    assert_distributions(mdp.dense_P(), "P")
    assert_distributions(mdp.rho, "rho")
    expected_terminal = np.zeros(S, bool)
    if kw["episodic"]:
        expected_terminal[-1] = True
    np.testing.assert_array_equal(mdp.terminal, expected_terminal)


@given(mdps())
def test_mdps_default_is_small_dense_and_discounted(mdp):
    assert 1 <= mdp.n_states <= 5 and 1 <= mdp.n_actions <= 3
    assert 0.0 <= mdp.gamma <= 0.95
    assert not mdp.is_sparse and not mdp.terminal.any()
    assert np.abs(mdp.r).max() <= 1.0


@given(mdps(episodic=True, max_gamma=1.0, reward_scale=1.0).flatmap(
    lambda m: st.tuples(st.just(m), policies(m))))
def test_episodic_mdps_are_proper_for_every_policy(case):
    mdp, pi = case
    t = mdp.n_states - 1
    assert mdp.n_states >= 2
    assert not mdp.trap_states().any()
    assert mdp.rho[t] == 0.0
    P = mdp.dense_P()
    np.testing.assert_array_equal(P[t, :, t], 1.0)
    np.testing.assert_array_equal(mdp.r[t], 0.0)
    # The termination floor: every non-terminal (s, a) ends the episode w.p. >= 0.1.
    assert (P[:t, :, t] >= 0.1 - 1e-15).all(), P[:t, :, t]
    # So under gamma = 1 every policy's expected episode length is at most 10,
    # and |J| <= 10 * reward_scale.
    proper = refpg.TabularMDP(mdp.P, mdp.r, mdp.rho, 1.0, mdp.terminal)
    for policy in (pi, uniform(mdp)):
        ev = refpg.evaluate(proper, policy)
        assert np.isfinite(ev.V).all() and np.isfinite(ev.J)
        assert ev.horizon <= 10.0 + 1e-9, ev.horizon
        assert abs(ev.J) <= 10.0 + 1e-9, ev.J


@given(mdps(episodic=True, sparse=True, min_gamma=1.0, max_gamma=1.0))
def test_sparse_episodic_mdps_accept_gamma_one(mdp):
    assert mdp.is_sparse and mdp.gamma == 1.0
    assert np.isfinite(refpg.evaluate(mdp, uniform(mdp)).J)


@given(mdps(sparse=True, min_states=2))
def test_sparse_mdps_store_transitions_as_csr(mdp):
    assert mdp.is_sparse
    assert mdp.P.format == "csr" and mdp.P.shape == (mdp.n_states * mdp.n_actions, mdp.n_states)


@given(mdps().flatmap(lambda m: st.tuples(st.just(m), tabular_softmax(m))))
def test_tabular_softmax_fits_the_mdp(case):
    mdp, policy = case
    assert policy == refpg.TabularSoftmax(mdp.n_states, mdp.n_actions)


@given(st.data())
def test_log_linear_features_are_grid_points_in_the_unit_box(data):
    mdp = data.draw(mdps())
    lo = data.draw(st.integers(1, 3))
    hi = data.draw(st.integers(lo, 5))
    policy = data.draw(log_linear(mdp, min_features=lo, max_features=hi))
    assert isinstance(policy, refpg.LogLinear)
    S, A, d = policy.features.shape
    assert (S, A) == (mdp.n_states, mdp.n_actions) and lo <= d <= hi
    assert np.abs(policy.features).max() <= 1.0
    np.testing.assert_array_equal(policy.features * 4, np.round(policy.features * 4))


@given(st.data())
def test_parameterizations_draw_only_the_kinds_asked_for(data):
    mdp = data.draw(mdps())
    kinds = tuple(data.draw(st.lists(st.sampled_from(KINDS), min_size=1, unique=True)))
    policy = data.draw(parameterizations(mdp, kinds=kinds))
    kind = {refpg.TabularSoftmax: "tabular", refpg.LogLinear: "log_linear"}[type(policy)]
    assert kind in kinds
    assert (policy.n_states, policy.n_actions) == (mdp.n_states, mdp.n_actions)


@given(st.data())
def test_thetas_have_the_policy_shape_and_bounded_entries(data):
    mdp = data.draw(mdps())
    policy = data.draw(parameterizations(mdp))
    max_abs = data.draw(st.sampled_from([0.0, 0.5, 3.0, 50.0]))
    theta = data.draw(thetas(policy, max_abs=max_abs))
    assert theta.shape == policy.theta_shape and theta.dtype == np.float64
    assert np.abs(theta).max() <= max_abs
    assert_distributions(policy.probs(theta), "pi_theta")


@given(st.data())
def test_policies_are_distributions_with_at_least_min_prob(data):
    mdp = data.draw(mdps())
    min_prob = data.draw(st.floats(0.0, 1.0 / mdp.n_actions))
    pi = data.draw(policies(mdp, min_prob=min_prob))
    assert pi.shape == (mdp.n_states, mdp.n_actions)
    assert_distributions(pi, "pi")
    assert (pi >= min_prob).all()
    assert np.isfinite(refpg.evaluate(mdp, pi).J)


@given(mdps(max_actions=4).flatmap(
    lambda m: st.tuples(st.just(m), policies(m, min_prob=1.0 / m.n_actions))))
def test_policies_with_min_prob_one_over_A_are_uniform(case):
    mdp, pi = case
    np.testing.assert_allclose(pi, uniform(mdp), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mdp_kwargs", [{}, dict(episodic=True, min_gamma=1.0, max_gamma=1.0)],
                         ids=["discounted", "proper-gamma-1"])
@given(data=st.data())
def test_mdp_policy_theta_gives_a_consistent_triple(mdp_kwargs, data):
    mdp, policy, theta = data.draw(mdp_policy_theta(**mdp_kwargs))
    assert (policy.n_states, policy.n_actions) == (mdp.n_states, mdp.n_actions)
    assert theta.shape == policy.theta_shape and np.abs(theta).max() <= 3.0
    assert np.isfinite(refpg.policy_gradient(mdp, policy, theta)).all()


# -- shrink targets, as documented --------------------------------------------

def test_probability_matrices_shrink_to_rows_e0():
    np.testing.assert_array_equal(minimal(probability_matrices(3, 4)), np.eye(4)[[0, 0, 0]])


def test_probability_vectors_shrink_to_uniform_on_first_min_support():
    np.testing.assert_array_equal(minimal(probability_vectors(4)), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(minimal(probability_vectors(4, min_support=2)),
                                  [0.5, 0.5, 0.0, 0.0])


def test_mdps_shrink_to_one_state_one_action_zero_reward():
    assert_mdp_equal(minimal(mdps()), P=[[[1.0]]], r=[[0.0]], rho=[1.0], gamma=0.0)


def test_mdps_shrink_to_min_sizes_all_to_state_0_and_min_gamma():
    mdp = minimal(mdps(min_states=3, min_actions=2, min_gamma=0.5, sparse=True))
    assert mdp.is_sparse
    P = np.zeros((3, 2, 3))
    P[:, :, 0] = 1.0
    assert_mdp_equal(mdp, P=P, r=np.zeros((3, 2)), rho=[1.0, 0.0, 0.0], gamma=0.5)


def test_episodic_mdps_shrink_to_all_transitions_into_the_terminal_state():
    P = np.zeros((3, 1, 3))
    P[:, :, 2] = 1.0
    assert_mdp_equal(minimal(mdps(episodic=True, min_states=3, min_gamma=0.9, max_gamma=1.0)),
                     P=P, r=np.zeros((3, 1)), rho=[1.0, 0.0, 0.0], gamma=0.9,
                     terminal=[False, False, True])
    P = np.zeros((2, 1, 2))
    P[:, :, 1] = 1.0
    assert_mdp_equal(minimal(mdps(episodic=True)), P=P, r=np.zeros((2, 1)), rho=[1.0, 0.0],
                     gamma=0.0, terminal=[False, True])


MDP = refpg.envs.bandit([1.0, 0.0, -1.0])  # S = 1, A = 3
POLICY = refpg.TabularSoftmax(1, 3)


def test_parameterizations_shrink_to_tabular_softmax_in_any_order():
    assert minimal(parameterizations(MDP)) == POLICY
    assert minimal(parameterizations(MDP, kinds=("log_linear", "tabular"))) == POLICY
    assert minimal(tabular_softmax(MDP)) == POLICY


def test_log_linear_shrinks_to_zero_features():
    for strategy in (parameterizations(MDP, kinds=("log_linear",), min_features=2),
                     log_linear(MDP, min_features=2)):
        policy = minimal(strategy)
        assert isinstance(policy, refpg.LogLinear)
        np.testing.assert_array_equal(policy.features, np.zeros((1, 3, 2)))


def test_thetas_shrink_to_zero():
    np.testing.assert_array_equal(minimal(thetas(POLICY)), np.zeros((1, 3)))


def test_policies_shrink_to_action_0_mixed_with_uniform():
    np.testing.assert_array_equal(minimal(policies(MDP)), [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(minimal(policies(MDP, min_prob=0.1)), [[0.8, 0.1, 0.1]],
                               rtol=0, atol=ATOL)


def test_mdp_policy_theta_shrinks_to_the_parts_shrink_targets():
    mdp, policy, theta = minimal(mdp_policy_theta(min_actions=2))
    assert_mdp_equal(mdp, P=[[[1.0], [1.0]]], r=[[0.0, 0.0]], rho=[1.0], gamma=0.0)
    assert policy == refpg.TabularSoftmax(1, 2)
    np.testing.assert_array_equal(theta, np.zeros((1, 2)))


# -- argument validation -----------------------------------------------------

BAD_ARGUMENTS = [
    # probability_vectors / probability_matrices
    lambda: probability_vectors(0),
    lambda: probability_vectors(3, min_support=0),
    lambda: probability_vectors(3, min_support=4),
    lambda: probability_vectors(2.0),
    lambda: probability_matrices(0, 2),
    lambda: probability_matrices(2, 0),
    lambda: probability_matrices(True, 2),
    lambda: probability_matrices(st.just(2), 2),
    # mdps: sizes
    lambda: mdps(min_states=0),
    lambda: mdps(min_states=4, max_states=3),
    lambda: mdps(min_states=1.5),
    lambda: mdps(max_states=None),
    lambda: mdps(min_actions=0),
    lambda: mdps(min_actions=3, max_actions=2),
    lambda: mdps(max_actions=True),
    lambda: mdps(episodic=True, min_states=1),
    lambda: mdps(episodic=True, max_states=1),
    # mdps: discounts
    lambda: mdps(min_gamma=-0.1),
    lambda: mdps(max_gamma=1.0),
    lambda: mdps(min_gamma=1.0, max_gamma=1.0),
    lambda: mdps(episodic=True, max_gamma=1.1),
    lambda: mdps(min_gamma=0.6, max_gamma=0.5),
    lambda: mdps(min_gamma=float("nan")),
    lambda: mdps(max_gamma="0.9"),
    # mdps: the rest
    lambda: mdps(reward_scale=-1.0),
    lambda: mdps(reward_scale=float("inf")),
    lambda: mdps(episodic="yes"),
    lambda: mdps(sparse=1),
    # a strategy where a value is expected
    lambda: mdps(max_states=st.integers(2, 3)),
    lambda: mdps(min_gamma=st.floats(0, 0.5)),
    lambda: mdps(episodic=st.booleans()),
    lambda: tabular_softmax(mdps()),
    lambda: policies(mdps()),
    lambda: thetas(parameterizations(MDP)),
    lambda: thetas(POLICY, max_abs=st.just(1.0)),
    lambda: parameterizations(MDP, kinds=st.just(("tabular",))),
    # policies and parameters
    lambda: tabular_softmax(np.ones((1, 1, 1))),
    lambda: log_linear(MDP, min_features=0),
    lambda: log_linear(MDP, min_features=3, max_features=2),
    lambda: parameterizations(MDP, kinds=("bogus",)),
    lambda: parameterizations(MDP, kinds=()),
    lambda: parameterizations(MDP, kinds="tabular"),
    lambda: parameterizations(MDP, kinds=("tabular", "tabular")),
    lambda: parameterizations(MDP, kinds=("tabular",), max_features=0),
    lambda: thetas(MDP),
    lambda: thetas(POLICY, max_abs=-1.0),
    lambda: thetas(POLICY, max_abs=float("nan")),
    lambda: policies(MDP, min_prob=-0.1),
    lambda: policies(MDP, min_prob=0.34),  # > 1/A for A = 3
    lambda: policies(MDP, min_prob=float("nan")),
    lambda: policies(POLICY),
    # the convenience composite forwards every check
    lambda: mdp_policy_theta(kinds=("bogus",)),
    lambda: mdp_policy_theta(min_states=0),
    lambda: mdp_policy_theta(max_gamma=1.0),
    lambda: mdp_policy_theta(max_abs=-1.0),
    lambda: mdp_policy_theta(min_features=2, max_features=1),
]


def _case_id(make):
    return inspect.getsource(make).split("  #")[0].strip().removeprefix("lambda: ").rstrip(",")


@pytest.mark.parametrize("make", BAD_ARGUMENTS, ids=[_case_id(m) for m in BAD_ARGUMENTS])
def test_invalid_argument_raises_invalid_argument_on_first_use(make):
    strategy = make()  # lazy, like Hypothesis's own strategies: no error yet
    with pytest.raises(InvalidArgument):
        minimal(strategy)


@pytest.mark.parametrize("make, message", [
    (lambda: mdps(min_states=0), "min_states should be >= 1, actual 0"),
    (lambda: mdps(episodic=True, min_states=1), "min_states should be >= 2 when episodic=True"),
    (lambda: mdps(max_gamma=1.0), "max_gamma should be < 1.0 unless episodic=True"),
    (lambda: mdps(min_gamma=-0.1), "min_gamma should be >= 0.0, actual -0.1"),
    (lambda: mdps(min_states=3, max_states=2), "min_states should be <= max_states"),
    (lambda: policies(MDP, min_prob=0.5), "min_prob should be <= 0.333"),
    (lambda: parameterizations(MDP, kinds=("bogus",)), "'bogus'"),
    (lambda: tabular_softmax(mdps()), "mdp should be a value, actual the strategy"),
])
def test_invalid_argument_messages_name_the_argument_and_value(make, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        make().validate()


def test_mdp_policy_theta_refuses_an_unknown_keyword_at_call_time():
    with pytest.raises(TypeError):
        mdp_policy_theta(max_state=3)

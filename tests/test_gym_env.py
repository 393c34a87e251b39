"""`refpg.envs.gym_env.TabularEnv`: a real Gymnasium env sampling a TabularMDP.

Evidence that it is right:

* API: Gymnasium's own ``check_env`` passes with no warning at all, on dense,
  sparse and transition-reward MDPs, and on every registered id;
* registration: every id makes, resets and steps; its ``TimeLimit`` truncates
  at the declared step; ``env.unwrapped.mdp`` is the BUILTIN MDP;
* sampling: exact binomial tests (tests/_stats.py) of next-state counts from
  fixed (s, a) against P and of reset counts against rho, in one Bonferroni
  family with a declared false-alarm rate, whose power is shown by rejecting
  P and rho perturbed by 4 percentage points; rewards, ``info["prob"]`` and
  ``terminated`` checked exactly on every sample;
* seeding, the time limit (terminated takes priority), and bad input.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import refpg.envs as E
from refpg.errors import InvalidInputError, RefpgError
from refpg.mdp import TabularMDP
from tests._stats import binomial_pvalues

gym = pytest.importorskip("gymnasium")
from gymnasium.utils.env_checker import check_env  # noqa: E402

from refpg.envs.gym_env import (  # noqa: E402
    GENERIC_ID,
    REGISTERED,
    ResetNeededError,
    TabularEnv,
    make,
    make_builtin,
    register_envs,
)

SEED = 20240917


# ---------------------------------------------------------------------------
# MDPs
# ---------------------------------------------------------------------------

# 4 states, 2 actions, state 3 terminal. R[s, a, s2] = 1 + s + 10 a + 100 s2 off the
# terminal, so a reward names its transition; rho has a zero entry.
_P = np.array([
    [[0.2, 0.5, 0.0, 0.3], [0.0, 0.0, 0.6, 0.4]],
    [[0.7, 0.0, 0.3, 0.0], [0.1, 0.1, 0.1, 0.7]],
    [[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]],
    [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]],
])
_S, _A = 4, 2
_R = 1.0 + np.arange(_S)[:, None, None] + 10.0 * np.arange(_A)[None, :, None] + 100.0 * np.arange(_S)[None, None, :]
_R[3] = 0.0
_RHO = np.array([0.5, 0.3, 0.2, 0.0])
_TERMINAL = np.array([False, False, False, True])


def reward_mdp(*, sparse: bool) -> TabularMDP:
    """The 4-state MDP above with transition rewards, stored dense or sparse."""
    if sparse:
        return TabularMDP(sp.csr_array(_P.reshape(_S * _A, _S)), sp.csr_array(_R.reshape(_S * _A, _S)),
                          _RHO, 0.9, _TERMINAL, name="rewards(sparse)")
    return TabularMDP(_P, _R, _RHO, 0.9, _TERMINAL, name="rewards(dense)")


MDPS = {
    "two_state": lambda: E.two_state(),
    "frozen_lake": lambda: E.frozen_lake("4x4"),
    "gridworld_sparse": lambda: E.gridworld(5, 5, sparse=True),
    "garnet": lambda: E.garnet(20, 4, 3, seed=0),
    "rewards_dense": lambda: reward_mdp(sparse=False),
    "rewards_sparse": lambda: reward_mdp(sparse=True),
}


def assert_no_warnings(fn, *args, **kwargs):
    """Run fn and fail, listing them, if it emitted any warning at all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert messages == [], "\n".join(messages)
    return out


def assert_same_mdp(actual: TabularMDP, desired: TabularMDP):
    np.testing.assert_array_equal(actual.dense_P(), desired.dense_P())
    np.testing.assert_array_equal(actual.r, desired.r)
    np.testing.assert_array_equal(actual.rho, desired.rho)
    np.testing.assert_array_equal(actual.terminal, desired.terminal)
    assert actual.gamma == desired.gamma
    assert actual.name == desired.name


# ---------------------------------------------------------------------------
# Gymnasium's checker
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MDPS))
@pytest.mark.parametrize("limit, render_mode", [(None, None), (5, "ansi")])
def test_check_env_passes_without_warnings(name, limit, render_mode):
    env = TabularEnv(MDPS[name](), limit, render_mode=render_mode)
    assert_no_warnings(check_env, env)


@pytest.mark.parametrize("env_id", list(REGISTERED))
def test_check_env_passes_without_warnings_on_every_registered_id(env_id):
    env = gym.make(env_id)
    assert_no_warnings(check_env, env.unwrapped)


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", list(REGISTERED))
def test_registered_id_steps_until_its_time_limit_truncates_at_the_declared_step(env_id):
    name, limit = REGISTERED[env_id]
    assert gym.spec(env_id).max_episode_steps == limit
    env = gym.make(env_id)
    mdp = env.unwrapped.mdp
    assert_same_mdp(mdp, E.BUILTIN[name]())
    assert env.unwrapped.max_episode_steps is None  # the limit is TimeLimit's alone: no double limit
    obs, info = env.reset(seed=SEED)
    assert obs in env.observation_space and mdp.rho[obs] > 0 and info["prob"] == mdp.rho[obs]
    env.action_space.seed(SEED)
    for t in range(1, limit + 1):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and isinstance(reward, float)
        assert terminated == bool(mdp.terminal[obs])
        if terminated:
            break
        assert truncated == (t == limit), f"t={t}, limit={limit}"
    assert terminated or (truncated and t == limit)
    if not mdp.terminal.any():
        assert truncated and t == limit


def test_make_accepts_ids_with_or_without_the_prefix_and_overrides_the_limit():
    env = make("TwoState-v0", max_episode_steps=2)
    assert env.spec.id == "refpg/TwoState-v0"
    env.reset(seed=SEED)
    assert env.step(0)[3] is False and env.step(0)[3] is True
    assert make("refpg/Bandit-v0").unwrapped.mdp.n_states == 1


def test_generic_id_wraps_any_mdp_without_copying_it():
    mdp = reward_mdp(sparse=True)
    env = make(GENERIC_ID, mdp=mdp, max_episode_steps=7)
    assert env.unwrapped.mdp is mdp
    assert env.spec.max_episode_steps == 7
    env.reset(seed=SEED)
    env.step(0)


def test_register_envs_is_idempotent():
    before = {env_id: gym.spec(env_id) for env_id in [GENERIC_ID, *REGISTERED]}
    assert_no_warnings(register_envs)
    assert_no_warnings(register_envs)
    for env_id, spec in before.items():
        assert gym.spec(env_id) is spec


def test_vector_env_autoresets_across_episode_ends():
    # The bandit's episodes last one step, so every vector step after the first resets or steps.
    envs = gym.make_vec("refpg/Bandit-v0", num_envs=3, vectorization_mode="sync")
    envs.reset(seed=SEED)
    for _ in range(6):
        obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
        assert obs.shape == (3,)
    envs.close()
    # The env's own limit ends episodes too; neither autoreset mode steps a finished env.
    for mode in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP):
        envs = gym.vector.SyncVectorEnv([lambda: TabularEnv(E.gridworld(1, 4), 2)] * 2, autoreset_mode=mode)
        envs.reset(seed=SEED)
        for _ in range(7):
            envs.step(np.array([1, 0]))
        envs.close()


def test_direct_env_spec_rebuilds_the_same_env():
    env = TabularEnv(E.chain(5), 9, render_mode="ansi")
    again = env.spec.make()
    assert isinstance(again, TabularEnv) and again.max_episode_steps == 9 and again.render_mode == "ansi"
    assert_same_mdp(again.mdp, env.mdp)


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------


def trajectory(env, seed, actions):
    out = [env.reset(seed=seed)]
    for a in actions:
        out.append(env.step(a))
        if out[-1][2] or out[-1][3]:
            out.append(env.reset())
    return out


def test_same_seed_same_trajectory_and_different_seeds_differ():
    mdp = E.garnet(20, 4, 3, seed=0)
    actions = np.random.default_rng(SEED).integers(0, 4, size=60)
    first = trajectory(TabularEnv(mdp, 25), SEED, actions)
    assert trajectory(TabularEnv(mdp, 25), SEED, actions) == first
    assert trajectory(TabularEnv(mdp, 25), SEED + 1, actions) != first


def test_sparse_and_dense_storage_give_the_same_trajectory():
    actions = np.random.default_rng(SEED).integers(0, 4, size=200)
    dense = trajectory(TabularEnv(E.gridworld(5, 5, slip=0.3, sparse=False), 30), SEED, actions)
    sparse = trajectory(TabularEnv(E.gridworld(5, 5, slip=0.3, sparse=True), 30), SEED, actions)
    assert dense == sparse


# ---------------------------------------------------------------------------
# Sampling agrees with P and rho: one family of exact binomial tests
# ---------------------------------------------------------------------------

#: False-alarm rate of the whole family, shared by Bonferroni over at most
#: FAMILY_SIZE p-values: one per successor of each tested (s, a), one per
#: start state. Exact binomial p-values rather than Pearson's chi-square,
#: whose size at these levels is several times its nominal value (tests/_stats.py).
FAMILY_ALPHA = 1e-6
FAMILY_SIZE = 20
ALPHA = FAMILY_ALPHA / FAMILY_SIZE
N_DRAWS = 20_000
#: Probability mass moved between two outcomes by the power checks: 800 of the
#: 20000 expected counts, over 11 standard deviations, where rejection at ALPHA
#: needs about 5.6.
SHIFT = 0.04

#: (MDP, s, a): rows with 3 or 4 successors, dense and sparse, with and
#: without transition rewards, reaching terminal and non-terminal states.
PAIRS = {
    "frozen_lake": ("frozen_lake", 6, 1),        # down from (1, 2): holes 5 and 7, or 10
    "garnet": ("garnet", 5, 2),
    "gridworld_sparse": ("gridworld_slip", 12, 0),  # up from the centre, slip 0.2
    "rewards_sparse": ("rewards_sparse", 0, 0),  # successors 0, 1 and terminal 3
}
_PAIR_MDPS = dict(MDPS, gridworld_slip=lambda: E.gridworld(5, 5, slip=0.2, sparse=True))


def family_size() -> int:
    row = lambda key: _PAIR_MDPS[PAIRS[key][0]]().dense_P()[PAIRS[key][1], PAIRS[key][2]]
    return sum(int((row(k) > 0).sum()) for k in PAIRS) + int((_RHO > 0).sum())


def test_the_family_fits_its_declared_size():
    assert family_size() <= FAMILY_SIZE


@functools.lru_cache(maxsize=None)
def next_state_counts(key: str):
    """N_DRAWS steps of the env from (s, a); also checks each draw's reward, prob and flags exactly."""
    mdp_name, s, a = PAIRS[key]
    mdp = _PAIR_MDPS[mdp_name]()
    env = TabularEnv(mdp, 1000)
    P, R = mdp.dense_P()[s, a], mdp.transition_rewards
    R = None if R is None else (R.toarray().reshape(mdp.n_states, mdp.n_actions, -1) if sp.issparse(R) else R)
    counts = np.zeros(mdp.n_states, dtype=np.int64)
    env.reset(seed=SEED, options={"state": s})
    for _ in range(N_DRAWS):
        s2, reward, terminated, truncated, info = env.step(a)
        counts[s2] += 1
        expected_reward = mdp.r[s, a] if R is None else R[s, a, s2]
        assert (reward, info["prob"], terminated, truncated) == (expected_reward, P[s2], bool(mdp.terminal[s2]), False)
        env.reset(options={"state": s})
    return counts, P


def assert_counts_match(counts, p, what):
    """Every outcome outside the support never occurs; every one inside passes its binomial test."""
    n = counts.sum()
    outside = np.flatnonzero((p == 0) & (counts > 0))
    assert outside.size == 0, f"{what}: outcomes {outside} have probability 0 but were drawn {counts[outside]} times"
    support = np.flatnonzero(p > 0)
    pvals = binomial_pvalues(counts[support], n, p[support])
    assert pvals.min() > ALPHA, (
        f"{what}: counts {counts[support]} of n={n} against p={p[support]} "
        f"(expected {n * p[support]}); p-values {pvals}, alpha {ALPHA:g}")


def perturbed(p):
    """p with SHIFT of mass moved from its largest to its smallest positive entry."""
    q = p.copy()
    support = np.flatnonzero(p > 0)
    hi, lo = support[np.argmax(p[support])], support[np.argmin(p[support])]
    q[hi] -= SHIFT
    q[lo] += SHIFT
    return q


@pytest.mark.parametrize("name", ["rewards_dense", "rewards_sparse", "frozen_lake", "gridworld_sparse", "chain"])
def test_every_step_pays_its_reward_and_reports_its_probability_exactly(name):
    # From every (s, a), 40 draws: the reward is R[s, a, s2] (r[s, a] without
    # transition rewards), info["prob"] is P[s, a, s2], terminated is terminal[s2].
    mdp = dict(MDPS, chain=lambda: E.chain(5, slip=0.2))[name]()
    S, A = mdp.n_states, mdp.n_actions
    P, R = mdp.dense_P(), mdp.transition_rewards
    if sp.issparse(R):
        R = R.toarray().reshape(S, A, S)
    env = TabularEnv(mdp)
    env.reset(seed=SEED)
    for s in range(S):
        for a in range(A):
            for _ in range(40):
                env.reset(options={"state": s})
                s2, reward, terminated, truncated, info = env.step(a)
                desired = mdp.r[s, a] if R is None else R[s, a, s2]
                assert (reward, info["prob"], terminated, truncated) == (desired, P[s, a, s2], mdp.terminal[s2], False), \
                    f"(s, a, s2) = ({s}, {a}, {s2})"


@pytest.mark.parametrize("key", list(PAIRS))
def test_next_state_counts_match_P(key):
    counts, P = next_state_counts(key)
    assert_counts_match(counts, P, f"{key}: next states from {PAIRS[key][1:]}")


@pytest.mark.parametrize("key", list(PAIRS))
def test_next_state_test_rejects_P_perturbed_by_four_points(key):
    counts, P = next_state_counts(key)
    with pytest.raises(AssertionError, match="p-values"):
        assert_counts_match(counts, perturbed(P), key)


@functools.lru_cache(maxsize=None)
def start_state_counts():
    env = TabularEnv(reward_mdp(sparse=False))
    counts = np.zeros(_S, dtype=np.int64)
    s0, info = env.reset(seed=SEED)
    for _ in range(N_DRAWS):
        counts[s0] += 1
        assert info["prob"] == _RHO[s0]
        s0, info = env.reset()
    return counts


def test_reset_counts_match_rho():
    assert_counts_match(start_state_counts(), _RHO, "start states")


def test_reset_test_rejects_rho_perturbed_by_four_points():
    with pytest.raises(AssertionError, match="p-values"):
        assert_counts_match(start_state_counts(), perturbed(_RHO), "start states")


# ---------------------------------------------------------------------------
# Episodes: the time limit, termination, reset options, render
# ---------------------------------------------------------------------------


def test_third_step_truncates_under_max_episode_steps_3_on_a_never_terminating_mdp():
    env = TabularEnv(E.two_state(), max_episode_steps=3)
    for _ in range(2):  # the limit counts from each reset
        env.reset(seed=SEED)
        flags = [env.step(a)[2:4] for a in (0, 1, 0)]
        assert flags == [(False, False), (False, False), (False, True)]
        assert env.elapsed_steps == 3
        with pytest.raises(ResetNeededError, match="after the episode ended"):
            env.step(0)


def test_terminated_takes_priority_over_truncated_on_the_same_step():
    mdp = E.gridworld(1, 4)  # a corridor 0-1-2-3; "right" reaches the goal 3 on step 3
    env = TabularEnv(mdp, max_episode_steps=3)
    env.reset(seed=SEED)
    steps = [env.step(1) for _ in range(3)]
    assert [st[0] for st in steps] == [1, 2, 3]
    assert steps[-1][1:4] == (1.0, True, False)
    with pytest.raises(ResetNeededError):
        env.step(1)


def test_gymnasium_time_limit_sets_both_flags_where_the_env_limit_sets_one():
    # The difference the module docstring documents, pinned down.
    env = make(GENERIC_ID, mdp=E.gridworld(1, 4), max_episode_steps=3)
    env.reset(seed=SEED)
    *_, last = [env.step(1) for _ in range(3)]
    assert last[2:4] == (True, True)


def test_reset_option_state_starts_there_with_prob_one():
    env = TabularEnv(E.garnet(20, 4, 3, seed=0))
    assert env.reset(seed=SEED, options={"state": 7}) == (7, {"prob": 1.0})
    assert env.state == 7
    s0, info = env.reset(options={})
    assert info == {"prob": 1.0 / 20}


def test_starting_in_a_terminal_state_terminates_with_zero_reward():
    env = TabularEnv(E.frozen_lake("4x4"))
    env.reset(seed=SEED, options={"state": 5})  # a hole
    assert env.step(2)[:4] == (5, 0.0, True, False)


def test_inverse_cdf_never_picks_a_zero_probability_entry_nor_spills_past_the_row():
    from refpg.envs.gym_env import _inverse_cdf

    assert _inverse_cdf(np.array([0.0, 0.3, 0.3, 1.0]), 0.0) == 1  # a leading zero entry is skipped
    assert _inverse_cdf(np.array([0.0, 0.3, 0.3, 1.0]), 0.3) == 3  # so is a zero in the middle
    assert _inverse_cdf(np.array([0.5, 1.0 - 1e-12]), np.nextafter(1.0, 0.0)) == 1  # no spill


def test_observations_and_flags_have_the_types_gymnasium_expects():
    env = TabularEnv(E.garnet(20, 4, 3, seed=0))
    obs, info = env.reset(seed=SEED)
    assert type(obs) is int and type(info["prob"]) is float
    obs, reward, terminated, truncated, info = env.step(np.int64(1))
    assert (type(obs), type(reward), type(terminated), type(truncated)) == (int, float, bool, bool)


def test_ansi_render_names_the_current_state():
    env = TabularEnv(E.frozen_lake("4x4"), render_mode="ansi")
    env.reset(seed=SEED, options={"state": 5})
    assert env.render() == "frozen_lake(4x4, slippery=True): state 5 of 16, step 0, terminal\n"


def test_render_without_a_render_mode_warns_and_returns_none():
    env = TabularEnv(E.two_state())
    env.reset(seed=SEED)
    with pytest.warns(UserWarning, match="render_mode=None"):
        assert env.render() is None


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("action", [2, -1, 1.0, True, np.bool_(False), np.array([0]), "0", None])
def test_action_outside_the_space_is_refused(action):
    env = TabularEnv(E.two_state())
    env.reset(seed=SEED)
    with pytest.raises(InvalidInputError, match=r"action should be an integer in \[0, 2\)"):
        env.step(action)
    assert env.elapsed_steps == 0  # nothing happened


@pytest.mark.parametrize("action", [1, np.int64(1), np.int32(1), np.array(1), np.uint8(1)])
def test_integer_actions_of_any_integer_type_are_accepted(action):
    env = TabularEnv(E.two_state())
    env.reset(seed=SEED)
    assert env.step(action)[0] == 1


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "10"])
def test_bad_max_episode_steps_is_refused_naming_it(limit):
    with pytest.raises(InvalidInputError, match="max_episode_steps"):
        TabularEnv(E.two_state(), limit)


@pytest.mark.parametrize("mdp", [None, "two_state", np.ones((1, 1, 1))])
def test_mdp_that_is_not_a_tabular_mdp_is_refused(mdp):
    with pytest.raises(InvalidInputError, match="mdp should be a refpg.TabularMDP"):
        TabularEnv(mdp)


def test_unsupported_render_mode_is_refused():
    with pytest.raises(InvalidInputError, match="render_mode"):
        TabularEnv(E.two_state(), render_mode="human")


@pytest.mark.parametrize("options, match", [
    ({"state": 2}, r"options\['state'\] should be an integer in \[0, 2\)"),
    ({"state": True}, r"options\['state'\]"),
    ({"start": 0}, "extra keys"),
    ("state", "options should be a dict"),
])
def test_bad_reset_options_are_refused(options, match):
    with pytest.raises(InvalidInputError, match=match):
        TabularEnv(E.two_state()).reset(options=options)


def test_step_or_render_before_reset_needs_a_reset():
    env = TabularEnv(E.two_state(), render_mode="ansi")
    for call in (lambda: env.step(0), env.render):
        with pytest.raises(ResetNeededError, match="before reset") as info:
            call()
        assert isinstance(info.value, RefpgError) and isinstance(info.value, gym.error.ResetNeeded)


def test_unknown_names_are_refused():
    with pytest.raises(InvalidInputError, match="env_id should be one of"):
        make("CartPole-v1")
    with pytest.raises(InvalidInputError, match="name should be one of"):
        make_builtin("no_such_mdp")

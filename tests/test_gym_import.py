"""`refpg.envs.from_gymnasium`: Gymnasium's toy-text tables as TabularMDPs.

Three kinds of evidence that the import is right:

* structure: terminal cells, rho, summed duplicates and exact expected
  rewards, read off gymnasium's own table and map;
* exact values: V* of the MDP equals value iteration run directly on
  gymnasium's table with gymnasium's semantics (no bootstrap after
  ``terminated``), and the closed forms of the deterministic maps;
* the import proof: the REAL env, stepped from every live (s, a) (a seeded
  subset for rainy Taxi), against the MDP's P, r and terminal (see
  `import_check`), with its power shown on deliberately wrong imports.
"""

from __future__ import annotations

import functools
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

import refpg
from refpg.envs import from_gymnasium
from refpg.errors import InvalidDiscountError, InvalidInputError, NotADistributionError, RefpgWarning
from tests._stats import binomial_pvalues, hoeffding_pvalue

gym = pytest.importorskip("gymnasium")

GAMMA = 0.99
SEED = 20240917

# ---------------------------------------------------------------------------
# The family of statistical tests and its false-alarm rate
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One env configuration of the import proof."""

    env_id: str
    kwargs: dict
    n: int                  # real env steps per sampled (s, a)
    n_pairs: int | None     # None: every live (s, a); else a seeded random subset
    n_resets: int           # real env resets, against rho
    budget: int             # most hypothesis tests this config may charge to the family


CONFIGS = {
    "FrozenLake4x4-slippery": Config("FrozenLake-v1", {"map_name": "4x4", "is_slippery": True}, 8000, None, 100, 150),
    "FrozenLake4x4": Config("FrozenLake-v1", {"map_name": "4x4", "is_slippery": False}, 50, None, 100, 0),
    "FrozenLake8x8-slippery": Config("FrozenLake8x8-v1", {}, 1000, None, 100, 700),
    "FrozenLake8x8": Config("FrozenLake-v1", {"map_name": "8x8", "is_slippery": False}, 50, None, 100, 0),
    "CliffWalking": Config("CliffWalking-v1", {}, 50, None, 100, 0),
    "CliffWalkingSlippery": Config("CliffWalkingSlippery-v1", {}, 1000, None, 100, 500),
    "Taxi": Config("Taxi-v4", {}, 20, None, 20000, 350),
    # Same rho as "Taxi", so no resets.
    "Taxi-rainy": Config("Taxi-v4", {"is_rainy": True}, 1500, 80, 0, 300),
}

#: Declared false-alarm rate of the whole import proof (docs/conventions.md: at most 1e-6).
ALPHA_FAMILY = 1e-6
#: Bonferroni: the family holds at most this many tests (each config asserts its share).
FAMILY_SIZE = sum(c.budget for c in CONFIGS.values())
#: Per-test level, 1e-6 / 2000 = 5e-10. Every p-value is exact (tests/_stats.py),
#: so the family's false-alarm rate is at most ALPHA_FAMILY, not just asymptotically.
ALPHA_PER_TEST = ALPHA_FAMILY / FAMILY_SIZE


# ---------------------------------------------------------------------------
# Gymnasium's own table, read independently of refpg
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawTable:
    """``env.unwrapped.P`` flattened: one row per listed (prob, next, reward, terminated)."""

    S: int
    A: int
    s: np.ndarray
    a: np.ndarray
    prob: np.ndarray
    next: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray

    def successor_sums(self) -> np.ndarray:
        """(S, A, S): the probabilities of each listed successor, summed by hand."""
        P = np.zeros((self.S, self.A, self.S))
        np.add.at(P, (self.s, self.a, self.next), self.prob)
        return P

    def reward_sets(self) -> dict:
        """(s, a, s2) -> the set of rewards gymnasium pays on that transition (prob > 0)."""
        sets: dict = {}
        for s, a, p, s2, r in zip(self.s, self.a, self.prob, self.next, self.reward):
            if p > 0:
                sets.setdefault((int(s), int(a), int(s2)), set()).add(float(r))
        return sets


def raw_table(env) -> RawTable:
    u = env.unwrapped
    S, A = int(u.observation_space.n), int(u.action_space.n)
    rows = [(s, a, p, int(s2), float(r), bool(t))
            for s in range(S) for a in range(A) for (p, s2, r, t) in u.P[s][a]]
    s, a, p, s2, r, t = map(np.array, zip(*rows))
    return RawTable(S, A, s, a, p.astype(float), s2, r.astype(float), t.astype(bool))


def gym_value_iteration(raw: RawTable, gamma: float) -> np.ndarray:
    r"""V* under gymnasium's semantics, straight from its table.

    :math:`Q(s,a) = \sum_k p_k\,(r_k + \gamma (1 - d_k) V(s'_k))`, V = max_a Q,
    iterated until the sup-norm change is below 1e-13 * max(1, |V|_inf), so
    that V is within 1e-13 gamma/(1-gamma) ~ 1e-11 of the fixed point, relative
    to that scale (relative, because round-off alone is ~1e-16 |V|).
    """
    V = np.zeros(raw.S)
    row = raw.s * raw.A + raw.a
    for _ in range(100_000):
        target = raw.prob * (raw.reward + gamma * (~raw.terminated) * V[raw.next])
        V_new = np.bincount(row, weights=target, minlength=raw.S * raw.A).reshape(raw.S, raw.A).max(axis=1)
        if np.max(np.abs(V_new - V)) < 1e-13 * max(1.0, np.max(np.abs(V_new))):
            return V_new
        V = V_new
    raise AssertionError("value iteration on gymnasium's table did not converge")


def expected_terminal(env) -> np.ndarray:
    """Terminal cells from each env's description, not from its table."""
    u = env.unwrapped
    S = int(u.observation_space.n)
    mask = np.zeros(S, dtype=bool)
    name = type(u).__name__
    if name == "FrozenLakeEnv":
        mask[:] = np.isin(u.desc.ravel(), [b"G", b"H"])
    elif name == "CliffWalkingEnv":
        mask[S - 1] = True   # the goal, bottom right; the cliff teleports instead
    elif name == "TaxiEnv":
        # The passenger delivered: at its destination, out of the taxi.
        for d, (row, col) in enumerate(u.locs):
            mask[u.encode(row, col, d, d)] = True
    else:
        raise AssertionError(f"no expected terminal set for {name}")
    return mask


@functools.lru_cache(maxsize=None)
def imported(name: str) -> refpg.TabularMDP:
    cfg = CONFIGS[name]
    return from_gymnasium(cfg.env_id, gamma=GAMMA, **cfg.kwargs)


def make(name: str):
    cfg = CONFIGS[name]
    return gym.make(cfg.env_id, **cfg.kwargs)


# ---------------------------------------------------------------------------
# Structure and exact values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_import_matches_gymnasiums_description(name):
    mdp, env = imported(name), make(name)
    raw = raw_table(env)
    P, r_sas = mdp.dense_P(), mdp.transition_rewards
    np.testing.assert_allclose(P.sum(axis=2), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(mdp.terminal, expected_terminal(env))
    np.testing.assert_array_equal(mdp.rho, env.unwrapped.initial_state_distrib)
    assert mdp.gamma == GAMMA and mdp.name.startswith(CONFIGS[name].env_id + "(")

    kept = ~mdp.terminal   # rows that keep gymnasium's transitions
    np.testing.assert_allclose(P[kept], raw.successor_sums()[kept], rtol=0, atol=1e-15)
    # Expected reward exact: r(s, a) = sum_k p_k r_k over gymnasium's list.
    r_gym = np.zeros((raw.S, raw.A))
    np.add.at(r_gym, (raw.s, raw.a), raw.prob * raw.reward)
    np.testing.assert_allclose(mdp.r[kept], r_gym[kept], rtol=1e-14, atol=1e-14)
    # Terminal states: absorbing with zero reward, whatever gymnasium lists for them.
    for t in np.flatnonzero(mdp.terminal):
        np.testing.assert_array_equal(P[t], np.eye(raw.S)[[t] * raw.A])
        np.testing.assert_array_equal(r_sas[t], 0.0)
    env.close()


@pytest.mark.parametrize("name", CONFIGS)
def test_optimal_values_equal_value_iteration_on_gymnasiums_table(name):
    mdp, env = imported(name), make(name)
    V_gym = gym_value_iteration(raw_table(env), GAMMA)
    live = mdp.reachable_states() & ~mdp.terminal
    V_ref = refpg.optimal_policy(mdp).V
    np.testing.assert_allclose(V_ref[live], V_gym[live], rtol=1e-10, atol=1e-9)
    env.close()


@pytest.mark.parametrize("name, J_star", [
    # Shortest paths: 6 moves on the 4x4 map, 14 on the 8x8; only the last pays 1.
    ("FrozenLake4x4", GAMMA ** 5),
    ("FrozenLake8x8", GAMMA ** 13),
    # 13 moves along the cliff edge at -1 each, the last one into the goal.
    ("CliffWalking", -(1 - GAMMA ** 13) / (1 - GAMMA)),
])
def test_optimal_return_of_deterministic_maps_is_the_closed_form(name, J_star):
    np.testing.assert_allclose(refpg.optimal_policy(imported(name)).J, J_star, rtol=1e-12)


@pytest.mark.parametrize("name", ["FrozenLake4x4-slippery", "FrozenLake8x8-slippery"])
def test_optimal_return_of_slippery_lakes_is_a_probability(name):
    J = refpg.optimal_policy(imported(name)).J
    assert 0.0 < J < 1.0, J
    if name == "FrozenLake4x4-slippery":
        # The value `refpg exact` prints (tests/test_cli_and_docs.py).
        np.testing.assert_allclose(J, 0.5420259320, atol=1e-10)


def test_duplicate_successors_are_summed():
    mdp, env = imported("FrozenLake4x4-slippery"), make("FrozenLake4x4-slippery")
    LEFT = 0
    # From the top-left corner, left: slipping up and moving left both bump into the border.
    raw_row = env.unwrapped.P[0][LEFT]
    assert [s2 for _, s2, _, _ in raw_row].count(0) == 2, raw_row
    assert mdp.P[0, LEFT, 0] == sum(p for p, s2, _, _ in raw_row if s2 == 0) == pytest.approx(2 / 3)
    assert mdp.P[0, LEFT, 4] == pytest.approx(1 / 3)
    env.close()


def test_mixed_rewards_of_one_successor_are_averaged():
    mdp, env = imported("CliffWalkingSlippery"), make("CliffWalkingSlippery")
    START, RIGHT = 36, 1
    raw_row = env.unwrapped.P[START][RIGHT]
    # Slipping up (-1, to 24), walking into the cliff (-100, back to the start),
    # slipping down into the border (-1, stay at the start).
    assert sorted((int(s2), r) for _, s2, r, _ in raw_row) == [(24, -1), (36, -100), (36, -1)]
    assert mdp.P[START, RIGHT, START] == pytest.approx(2 / 3)
    assert mdp.transition_rewards[START, RIGHT, START] == pytest.approx(-50.5, rel=1e-15)
    assert mdp.r[START, RIGHT] == pytest.approx(-102 / 3, rel=1e-15)
    env.close()


def test_taxi_flags_after_a_delivery_do_not_decide_terminality():
    # Gymnasium's Taxi table re-enters a delivered state with terminated=False
    # once the taxi drives on after the delivery; step() never does that.
    env = make("Taxi")
    u = env.unwrapped
    delivered_R = u.encode(0, 0, 0, 0)
    DROPOFF, WEST = 5, 3
    ends = [t for _, s2, _, t in u.P[u.encode(0, 0, 4, 0)][DROPOFF] if s2 == delivered_R]
    goes_on = [t for _, s2, _, t in u.P[u.encode(0, 1, 0, 0)][WEST] if s2 == delivered_R]
    assert ends == [True] and goes_on == [False]
    mdp = imported("Taxi")
    assert mdp.terminal[delivered_R]
    assert not mdp.reachable_states()[u.encode(0, 1, 0, 0)]
    env.close()


def test_a_made_env_gives_the_same_mdp_as_its_id():
    env = gym.make("FrozenLake-v1", map_name="4x4", is_slippery=True)
    mdp = from_gymnasium(env, gamma=GAMMA)
    ref = imported("FrozenLake4x4-slippery")
    np.testing.assert_array_equal(mdp.P, ref.P)
    np.testing.assert_array_equal(mdp.transition_rewards, ref.transition_rewards)
    assert mdp.name == ref.name == "FrozenLake-v1(map_name=4x4, is_slippery=True)"
    env.close()


def test_an_env_without_spec_is_named_by_its_class():
    from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

    assert from_gymnasium(FrozenLakeEnv(is_slippery=False)).name == "FrozenLakeEnv"


def test_large_maps_are_stored_sparse():
    # 50 x 50 open ice, S = 2500 > 2000: the shortest path is 98 moves.
    desc = ["S" + "F" * 49] + ["F" * 50] * 48 + ["F" * 49 + "G"]
    mdp = from_gymnasium("FrozenLake-v1", desc=desc, is_slippery=False, gamma=GAMMA)
    assert mdp.is_sparse and mdp.n_states == 2500
    assert mdp.name == f"FrozenLake-v1(desc={desc}, is_slippery=False)"
    np.testing.assert_allclose(refpg.optimal_policy(mdp).J, GAMMA ** 97, rtol=1e-12)


def test_gamma_is_the_mdps_and_not_passed_to_gymnasium():
    assert from_gymnasium("CliffWalking-v1", gamma=0.5).gamma == 0.5


@pytest.mark.parametrize("map_name", ["4x4", "8x8"])
@pytest.mark.parametrize("slippery", [True, False])
def test_native_frozen_lake_equals_the_import(map_name, slippery):
    native = refpg.envs.frozen_lake(map_name, slippery=slippery, gamma=GAMMA)
    mdp = from_gymnasium("FrozenLake-v1", map_name=map_name, is_slippery=slippery, gamma=GAMMA)
    np.testing.assert_allclose(native.dense_P(), mdp.dense_P(), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(native.r, mdp.r)
    np.testing.assert_array_equal(native.terminal, mdp.terminal)
    np.testing.assert_array_equal(native.rho, mdp.rho)


# ---------------------------------------------------------------------------
# The import proof: the real env against the MDP
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """Real env steps: row i holds n draws from (s, a) = pairs[i]."""

    pairs: np.ndarray          # (m, 2)
    next: np.ndarray           # (m, n)
    reward: np.ndarray         # (m, n)
    terminated: np.ndarray     # (m, n)
    starts: np.ndarray         # (n_resets,) states returned by reset()


@functools.lru_cache(maxsize=None)
def samples(name: str) -> Samples:
    """Step the real env (through gymnasium.make's wrappers) from each live (s, a)."""
    cfg = CONFIGS[name]
    mdp = imported(name)
    live = np.flatnonzero(mdp.reachable_states() & ~mdp.terminal)
    pairs = np.array([(s, a) for s in live for a in range(mdp.n_actions)])
    if cfg.n_pairs is not None:
        pick = np.random.default_rng(SEED).choice(len(pairs), cfg.n_pairs, replace=False)
        pairs = pairs[np.sort(pick)]
    env = make(name)
    env.reset(seed=SEED)
    m = len(pairs)
    nxt = np.empty((m, cfg.n), dtype=np.int64)
    rew = np.empty((m, cfg.n))
    term = np.empty((m, cfg.n), dtype=bool)
    unwrapped, step = env.unwrapped, env.step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # stepping on after TimeLimit's truncation is intended
        for i, (s, a) in enumerate(pairs.tolist()):
            draws = []
            for _ in range(cfg.n):
                unwrapped.s = s
                draws.append(step(a)[:3])
            nxt[i], rew[i], term[i] = zip(*draws)
        starts = np.array([env.reset()[0] for _ in range(cfg.n_resets)], dtype=np.int64)
    env.close()
    return Samples(pairs, nxt, rew, term, starts)


@dataclass
class ImportCheck:
    """What `import_check` found; printed in full on failure."""

    n_tests: int = 0
    rejected: list = field(default_factory=list)    # statistical: p-value <= alpha
    impossible: list = field(default_factory=list)  # zero tolerance: probability 0 under the MDP

    def __str__(self) -> str:
        lines = [f"{self.n_tests} tests at alpha = {ALPHA_PER_TEST:.2e} each; "
                 f"{len(self.rejected)} rejected, {len(self.impossible)} impossible observations"]
        lines += ["  rejected: " + x for x in self.rejected[:15]]
        lines += ["  impossible: " + x for x in self.impossible[:15]]
        return "\n".join(lines)


def import_check(smp: Samples, P, r_sas, terminal, rho, reward_sets, *, alpha=ALPHA_PER_TEST) -> ImportCheck:
    r"""Compare real env draws with an MDP's (P, r_sas, terminal, rho).

    Zero tolerance (no false alarms possible when the MDP is right): every
    observed next state s2 has P[s, a, s2] > 0; ``terminated`` equals
    ``terminal[s2]``; the reward equals ``r_sas[s, a, s2]`` exactly where
    gymnasium pays one reward on (s, a, s2); every reset state has rho > 0.

    Statistical, one test per cell, each at level `alpha`:

    * each (s, a, s2) with 0 < P < 1: the count of s2 among the n draws from
      (s, a) is Binomial(n, P[s, a, s2]); exact two-sided binomial test;
    * each (s, a, s2) where gymnasium pays several rewards (duplicates that
      the MDP averages): the mean reward of the draws that reached s2 against
      ``r_sas[s, a, s2]``, by Hoeffding's bound with the width of those rewards;
    * each state with 0 < rho < 1: its count among the resets, exact binomial.

    The number of tests depends only on the MDP and the design, never on the
    draws, so the Bonferroni count is fixed in advance.
    """
    out = ImportCheck()
    for i, (s, a) in enumerate(smp.pairs):
        nxt, rew, term = smp.next[i], smp.reward[i], smp.terminated[i]
        n = nxt.size
        p_obs = P[s, a, nxt]
        if (p_obs <= 0).any():
            s2 = int(nxt[p_obs <= 0][0])
            out.impossible.append(f"({s}, {a}) reached {s2} in {int((nxt == s2).sum())}/{n} draws; "
                                  f"P[{s}, {a}, {s2}] = {P[s, a, s2]}")
        if (term != terminal[nxt]).any():
            j = int(np.flatnonzero(term != terminal[nxt])[0])
            out.impossible.append(f"({s}, {a}) -> {nxt[j]}: terminated={term[j]}, terminal[{nxt[j]}]={terminal[nxt[j]]}")

        support = np.flatnonzero(P[s, a] > 0)
        if support.size > 1:
            counts = np.bincount(nxt, minlength=P.shape[2])[support]
            pvals = binomial_pvalues(counts, n, P[s, a, support])
            out.n_tests += support.size
            for s2, c, pv in zip(support, counts, pvals):
                if pv <= alpha:
                    out.rejected.append(f"P[{s}, {a}, {s2}] = {P[s, a, s2]:.5f} but {c}/{n} = {c / n:.5f} "
                                        f"draws; exact binomial p = {pv:.2e}")
        for s2 in support:
            got = rew[nxt == s2]
            paid = reward_sets.get((int(s), int(a), int(s2)), set())
            if len(paid) <= 1:
                if (got != r_sas[s, a, s2]).any():
                    out.impossible.append(f"({s}, {a}) -> {s2} paid {got[got != r_sas[s, a, s2]][0]}; "
                                          f"r_sas[{s}, {a}, {s2}] = {r_sas[s, a, s2]}")
                continue
            out.n_tests += 1
            if got.size:
                pv = hoeffding_pvalue(got.mean(), r_sas[s, a, s2], got.size, max(paid) - min(paid))
                if pv <= alpha:
                    out.rejected.append(f"r_sas[{s}, {a}, {s2}] = {r_sas[s, a, s2]} but the mean of "
                                        f"{got.size} rewards is {got.mean():.4f}; Hoeffding p = {pv:.2e}")

    if (rho[smp.starts] <= 0).any():
        out.impossible.append(f"reset() returned state {smp.starts[rho[smp.starts] <= 0][0]} with rho = 0")
    cells = np.flatnonzero((rho > 0) & (rho < 1))
    if cells.size and smp.starts.size:
        counts = np.bincount(smp.starts, minlength=rho.size)[cells]
        pvals = binomial_pvalues(counts, smp.starts.size, rho[cells])
        out.n_tests += cells.size
        out.rejected += [f"rho[{s}] = {rho[s]:.5f} but {c}/{smp.starts.size} resets; p = {pv:.2e}"
                         for s, c, pv in zip(cells, counts, pvals) if pv <= alpha]
    return out


def check_against(name: str, *, P=None, r_sas=None, mdp=None) -> ImportCheck:
    """`import_check` of `name`'s real-env samples against its import, or against replacements."""
    mdp = imported(name) if mdp is None else mdp
    env = make(name)
    reward_sets = raw_table(env).reward_sets()
    env.close()
    return import_check(samples(name),
                        mdp.dense_P() if P is None else P,
                        mdp.transition_rewards if r_sas is None else r_sas,
                        mdp.terminal, mdp.rho, reward_sets)


def test_the_declared_alpha_is_the_one_used():
    # The docstrings quote these numbers; the budgets must add up to them.
    assert FAMILY_SIZE == 2000 and ALPHA_PER_TEST == pytest.approx(5e-10, rel=1e-12)


@pytest.mark.parametrize("name", CONFIGS)
def test_real_env_samples_match_the_mdp(name):
    """The import proof, one config at a time.

    False-alarm rate: every p-value is exact, each test runs at
    ALPHA_PER_TEST = 1e-6 / 2000 = 5e-10, and the whole family (every
    config, at most 2000 tests, each config's count bounded by its budget)
    has a false-alarm rate of at most 1e-6 by Bonferroni. Seeds are fixed.
    """
    check = check_against(name)
    assert 0 <= check.n_tests <= CONFIGS[name].budget, check
    assert not check.impossible, check
    assert not check.rejected, check


# -- power: the same test rejects wrong imports -----------------------------


def test_import_check_rejects_duplicates_not_summed():
    """Wrong import: each duplicate overwrites the last instead of adding to it.

    From a corner, the bumping successor then gets 1/3 instead of 2/3: with
    n = 8000 draws that is about 63 standard deviations away.
    """
    env = make("FrozenLake4x4-slippery")
    raw = raw_table(env)
    env.close()
    P_wrong = imported("FrozenLake4x4-slippery").dense_P().copy()
    live = ~imported("FrozenLake4x4-slippery").terminal
    P_wrong[live] = 0.0
    for s, a, p, s2 in zip(raw.s, raw.a, raw.prob, raw.next):
        if live[s]:
            P_wrong[s, a, s2] = p
    check = check_against("FrozenLake4x4-slippery", P=P_wrong)
    # The four corner rows with a duplicate, and only they.
    assert len(check.rejected) == 4, check
    assert all("= 0.33333 but" in x for x in check.rejected), check


def test_import_check_rejects_a_slip_probability_four_points_off():
    """Wrong import: success_rate 1/3 + 0.04 (each slip 0.3133 instead of 0.3333).

    For a row whose intended move has its own successor the count is off by
    0.04 sqrt(n / (2/9)) = 7.6 standard deviations at n = 8000, against a
    threshold of 6.2 (two-sided, 5e-10): each such row rejects with
    probability about 0.9, and about 30 rows do not share that successor.
    """
    wrong = from_gymnasium("FrozenLake-v1", map_name="4x4", is_slippery=True,
                           success_rate=1 / 3 + 0.04, gamma=GAMMA)
    check = check_against("FrozenLake4x4-slippery", mdp=wrong)
    assert not check.impossible, check
    assert len(check.rejected) >= 10, check


def test_import_check_rejects_the_last_duplicates_reward():
    """Wrong import: a mixed (s, a, s2) keeps the reward of its last duplicate.

    Cliff walking on ice, from the start: -100 (cliff) and -1 (border) both
    land on the start. For "up" and "right" the mean -50.5 becomes -100 or -1,
    49.5 off, against a Hoeffding half-width 99 sqrt(log(2/alpha) / (2 N)) of
    about 13 for the N ~ 670 draws that land there (n = 1000, P = 2/3); for
    "down" (N = 1000, half-width 10) the mean -34 becomes -1.
    """
    env = make("CliffWalkingSlippery")
    P_gym = env.unwrapped.P
    env.close()
    r_wrong = imported("CliffWalkingSlippery").transition_rewards.copy()
    START = 36
    for a in range(4):
        for _, s2, r, _ in P_gym[START][a]:
            if s2 == START:
                r_wrong[START, a, START] = r
    check = check_against("CliffWalkingSlippery", r_sas=r_wrong)
    assert sum("Hoeffding" in x for x in check.rejected) == 3, check
    assert not check.impossible, check


def test_import_check_rejects_holes_that_do_not_end_the_episode():
    mdp = imported("FrozenLake4x4")
    env = make("FrozenLake4x4")
    hole = np.isin(env.unwrapped.desc.ravel(), [b"H"])
    env.close()
    wrong = refpg.TabularMDP(mdp.P, mdp.transition_rewards, mdp.rho, GAMMA, mdp.terminal & ~hole)
    check = check_against("FrozenLake4x4", mdp=wrong)
    assert any("terminated=True" in x for x in check.impossible), check


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


class TableEnv(gym.Env):
    """A minimal toy-text style env for the error paths."""

    def __init__(self, P, n_actions, rho=None):
        self.observation_space = gym.spaces.Discrete(len(P))
        self.action_space = gym.spaces.Discrete(n_actions)
        self.P = P
        if rho is not None:
            self.initial_state_distrib = np.asarray(rho, dtype=float)


def test_unknown_id_is_a_clear_error():
    with pytest.raises(InvalidInputError, match=r"'NoSuchEnv-v0' could not be made by gymnasium.make"):
        from_gymnasium("NoSuchEnv-v0")


def test_unknown_map_name_is_a_clear_error_not_a_key_error():
    with pytest.raises(InvalidInputError, match=r"gymnasium.make\('FrozenLake-v1', \*\*\{'map_name': '9x9'\}\) "
                                                r"failed: KeyError: '9x9'"):
        from_gymnasium("FrozenLake-v1", map_name="9x9")


def test_env_without_a_table_names_what_is_missing():
    with pytest.raises(InvalidInputError, match=r"CartPole-v1 cannot be imported.*"
                       r"observation_space should be gymnasium.spaces.Discrete, actual Box.*"
                       r"has no transition table P.*has no initial_state_distrib"):
        from_gymnasium("CartPole-v1")


def test_kwargs_with_a_made_env_are_refused():
    env = gym.make("FrozenLake-v1")
    with pytest.raises(InvalidInputError, match=r"keyword arguments \['is_slippery'\].*need an env id"):
        from_gymnasium(env, is_slippery=False)
    env.close()


def test_a_keyword_the_env_does_not_take_is_a_clear_error():
    with pytest.raises(InvalidInputError, match=r"gymnasium.make\('FrozenLake-v1'.*slipery"):
        from_gymnasium("FrozenLake-v1", slipery=False)


def test_not_an_env_is_refused():
    with pytest.raises(InvalidInputError, match=r"env_or_id should be a Gymnasium env id \(str\) or a gymnasium.Env, actual dict"):
        from_gymnasium({"P": {}})


def test_bad_gamma_is_refused_before_making_the_env():
    with pytest.raises(InvalidDiscountError, match=r"gamma should be in \[0, 1\], actual 1.5"):
        from_gymnasium("NoSuchEnv-v0", gamma=1.5)


def test_missing_gymnasium_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)   # makes `import gymnasium` fail
    with pytest.raises(ImportError, match=r"pip install refpg\[gym\]"):
        from_gymnasium("FrozenLake-v1")


def test_fickle_taxi_is_refused():
    with pytest.raises(InvalidInputError, match=r"Taxi-v4 with fickle_passenger=True cannot be imported.*outside its table P"):
        from_gymnasium("Taxi-v4", fickle_passenger=True)


def test_inconsistent_terminal_flags_name_both_transitions():
    P = {0: {0: [(0.5, 1, 0.0, False), (0.5, 2, 1.0, True)]},
         1: {0: [(1.0, 2, 0.0, False)]},
         2: {0: [(1.0, 2, 0.0, True)]}}
    with pytest.raises(InvalidInputError, match=r"P\[0\]\[0\] enters state 2 with terminated=True but "
                                                 r"env.unwrapped.P\[1\]\[0\] enters it with terminated=False"):
        from_gymnasium(TableEnv(P, 1, rho=[1.0, 0.0, 0.0]))


def test_a_terminal_start_state_is_refused():
    P = {0: {0: [(1.0, 1, 1.0, True)]}, 1: {0: [(1.0, 0, 0.0, False)]}}
    with pytest.raises(InvalidInputError, match=r"initial_state_distrib\[1\] is 0.5 but .*P\[0\]\[0\] enters state 1 "
                                                 r"with terminated=True"):
        from_gymnasium(TableEnv(P, 1, rho=[0.5, 0.5]))


def test_missing_start_distribution_is_named():
    P = {0: {0: [(1.0, 0, 0.0, False)]}}
    with pytest.raises(InvalidInputError, match=r"TableEnv cannot be imported.*no initial_state_distrib"):
        from_gymnasium(TableEnv(P, 1))


def test_a_row_not_summing_to_one_is_named():
    P = {0: {0: [(0.5, 0, 0.0, False), (0.25, 1, 0.0, False)]}, 1: {0: [(1.0, 1, 0.0, False)]}}
    with pytest.raises(NotADistributionError, match=r"env.unwrapped.P\[0\]\[0\] has probabilities summing to 0.75"):
        from_gymnasium(TableEnv(P, 1, rho=[1.0, 0.0]))


def test_a_malformed_entry_is_named():
    P = {0: {0: [(1.0, 5, 0.0, False)]}}
    with pytest.raises(InvalidInputError, match=r"P\[0\]\[0\]\[0\]: next_state should be an integer in \[0, 1\), actual 5"):
        from_gymnasium(TableEnv(P, 1, rho=[1.0]))


def test_wrappers_that_are_ignored_give_a_warning():
    env = gym.wrappers.TransformReward(gym.make("FrozenLake-v1"), lambda r: 2 * r)
    with pytest.warns(RefpgWarning, match=r"wrappers \['TransformReward'\] are ignored"):
        from_gymnasium(env)
    env.close()


@pytest.mark.skipif("Taxi-v3" in gym.envs.registry, reason="this gymnasium still provides Taxi-v3")
@pytest.mark.filterwarnings("ignore:.*Taxi-v3 is out of date:DeprecationWarning")
def test_taxi_v3_is_imported_as_v4_with_a_warning():
    with pytest.warns(RefpgWarning, match=r"importing Taxi-v4"):
        mdp = from_gymnasium("Taxi-v3")
    assert mdp.name.startswith("Taxi-v4(")
    np.testing.assert_array_equal(mdp.P, imported("Taxi").P)
    with pytest.raises(InvalidInputError, match=r"'Taxi-v3' with \['is_rainy'\]"):
        from_gymnasium("Taxi-v3", is_rainy=True)

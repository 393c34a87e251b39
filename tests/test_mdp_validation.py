"""TabularMDP refuses every malformed argument, and never shares or changes its arrays.

Issue #14: each check here could be deleted from refpg.mdp without any other
test failing. Every test asserts the exception class and the entry the message
names, so that a check which fires for the wrong reason fails too.
"""

import re

import numpy as np
import pytest
import scipy.sparse as sp

import refpg
from tests.helpers import ring_arrays
from refpg import errors



def good(S=3, A=2):
    return ring_arrays(S, A)


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


# -- shapes -----------------------------------------------------------------------

def test_terminal_of_the_wrong_length_is_refused():
    P, r, rho = good()
    with raises(errors.ShapeError, "terminal should have shape (3,), actual shape (2,)"):
        refpg.TabularMDP(P, r, rho, 0.9, terminal=np.zeros(2, dtype=bool))


def test_terminal_of_the_wrong_rank_is_refused():
    P, r, rho = good()
    with raises(errors.ShapeError, "terminal should have shape (3,), actual shape (3, 1)"):
        refpg.TabularMDP(P, r, rho, 0.9, terminal=np.zeros((3, 1), dtype=bool))


def test_transition_reward_with_one_next_state_does_not_broadcast():
    P, r, rho = good()
    with raises(errors.ShapeError, "r should have shape (3, 2, 3), actual shape (3, 2, 1) (axis 2 is 1, expected 3)"):
        refpg.TabularMDP(P, r[:, :, None], rho, 0.9)


def test_zero_actions_are_refused():
    with raises(errors.ShapeError, "P should have at least one state and one action, actual shape (3, 0, 3)"):
        refpg.TabularMDP(np.zeros((3, 0, 3)), np.zeros((3, 0)), [1.0, 0.0, 0.0], 0.9)


def test_zero_states_are_refused():
    with raises(errors.ShapeError, "P should have at least one state and one action, actual shape (0, 2, 0)"):
        refpg.TabularMDP(np.zeros((0, 2, 0)), np.zeros((0, 2)), np.zeros(0), 0.9)


# -- immutability and aliasing ------------------------------------------------------

def test_assigning_any_attribute_raises_and_changes_nothing():
    P, r, rho = good()
    mdp = refpg.TabularMDP(P, r, rho, 0.9)
    # The private names too: __slots__ alone would let these through.
    for name, value in [("_gamma", 0.1), ("_P", np.zeros_like(P)), ("_r", np.zeros_like(r)), ("_frozen", False)]:
        with raises(AttributeError, "TabularMDP is immutable"):
            setattr(mdp, name, value)
    assert mdp.gamma == 0.9
    np.testing.assert_array_equal(mdp.P, P)
    np.testing.assert_array_equal(mdp.r, r)


@pytest.mark.parametrize("field", ["P", "r", "rho", "terminal", "transition_rewards"])
def test_dense_arrays_are_copied_and_read_only(field):
    P, r, rho = good()
    r_sas = np.ones((3, 2, 3))
    terminal = np.zeros(3, dtype=bool)
    given = {"P": P, "r": r, "rho": rho, "terminal": terminal, "transition_rewards": r_sas}
    if field == "r":
        mdp = refpg.TabularMDP(P, r, rho, 0.9, terminal)
    else:
        mdp = refpg.TabularMDP(P, r_sas, rho, 0.9, terminal)
    stored = getattr(mdp, field)
    before = stored.copy()
    assert not np.shares_memory(stored, given[field])
    assert not stored.flags.writeable
    given[field][...] = ~given[field] if field == "terminal" else 7.0  # the caller changes theirs
    np.testing.assert_array_equal(getattr(mdp, field), before)
    with pytest.raises(ValueError):
        stored.flat[0] = stored.flat[0]


# -- tolerance of rho: the identities must hold for every rho accepted ----------------

def test_rho_off_by_more_than_1e12_is_refused_naming_the_tolerance():
    P, r, _ = good()
    rho = np.array([1.0 + 5e-10, 0.0, 0.0])
    with raises(errors.NotADistributionError, "rho[:] sums to 1.0000000005; expected 1 within atol=1e-12"):
        refpg.TabularMDP(P, r, rho, 0.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_every_accepted_rho_gives_an_occupancy_summing_to_one_within_1e10(gamma, recwarn):
    P, r, _ = good()
    # The worst rho the tolerance admits, on each side of 1.
    for excess in (0.9e-12, -0.9e-12):
        rho = np.array([0.5 + excess, 0.25, 0.25])
        mdp = refpg.TabularMDP(P, r, rho, gamma)
        e = refpg.evaluate(mdp, np.full((3, 2), 0.5))
        assert abs(float(e.d.sum()) - 1.0) <= 1e-10, (excess, float(e.d.sum()) - 1.0)
    assert not [w for w in recwarn if issubclass(w.category, errors.RefpgWarning)], [str(w.message) for w in recwarn]


def test_rho_rounded_by_a_normalisation_is_accepted():
    P, r, _ = good()
    rho = np.array([1.0, 1.0, 1.0]) / 3.0  # sums to 1 up to one rounding
    mdp = refpg.TabularMDP(P, r, rho, 0.9)
    np.testing.assert_array_equal(mdp.rho, rho)


# -- traps and properness ---------------------------------------------------------------

def trap_mdp(storage="dense"):
    """s0: a0 ends (-> s3), a1 -> s1; s1: a0 loops, a1 ends; s2 loops either way (unreachable); s3 terminal."""
    P = np.zeros((4, 2, 4))
    P[0, 0, 3] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 3] = 1.0
    P[2, :, 2] = P[3, :, 3] = 1.0
    if storage == "sparse":
        P = sp.csr_array(P.reshape(8, 4))
    return refpg.TabularMDP(P, np.zeros((4, 2)), [1.0, 0.0, 0.0, 0.0], 0.9,
                            terminal=np.array([False, False, False, True]))


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_trap_states_are_the_states_from_which_some_policy_never_ends(storage):
    mdp = trap_mdp(storage)
    # s0 is a trap too: a1 then a0 forever never ends. Some but not all reachable states are traps.
    np.testing.assert_array_equal(mdp.trap_states(), [True, True, True, False])
    assert not mdp.is_proper()


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_is_proper_under_a_policy_needs_every_reached_state_to_be_able_to_end(storage):
    mdp = trap_mdp(storage)
    # s0 can end (a0) but s1, which it reaches, only loops: not proper although one reached state can end.
    assert not mdp.is_proper(np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]))
    assert mdp.is_proper(np.array([[0.5, 0.5], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]]))
    # s2 never ends under any policy, but it is not reached from rho.
    assert mdp.is_proper(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))

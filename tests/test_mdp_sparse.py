"""The sparse storage of TabularMDP: validation, copies, reachability and sparse rewards.

Issue #14: none of these paths was run by the fast suite. A sparse P is an
(S*A, S) matrix whose row s*A + a is P[s, a, :]; every result is compared
with the dense MDP holding the same numbers.
"""

import re

import numpy as np
import pytest
import scipy.sparse as sp

import refpg
from tests.helpers import ring_arrays
from refpg import errors


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))



def ring(S=4, A=2):
    return ring_arrays(S, A)


def rows(P):
    S, A, _ = P.shape
    return sp.csr_array(P.reshape(S * A, S))


# -- shapes and entries ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
def test_sparse_P_with_no_rows_or_no_columns_is_refused(shape):
    with raises(errors.ShapeError, f"sparse P should have shape (S*A, S) with S, A >= 1, actual shape {shape}"):
        refpg.TabularMDP(sp.csr_array(shape), np.zeros((1, 1)), [1.0], 0.9)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_sparse_P_entry_is_named(bad):
    P, r, rho = ring()
    M = rows(P)
    M.data[M.indptr[5]] = bad  # row 5 is (s, a) = (2, 1), whose only entry is column 3
    msg = f"P[2, 1, 3] is {bad!r}; expected a finite number (1 non-finite entries in all)"
    with raises(errors.NonFiniteError, msg):
        refpg.TabularMDP(M, r, rho, 0.9)


def test_nan_sparse_P_row_cannot_pass_the_row_sum_test():
    # A NaN alongside a valid entry: the row sum is NaN, and |NaN - 1| > atol is False.
    P, r, rho = ring()
    M = rows(P).tolil()
    M[3, 0] = np.nan
    with raises(errors.NonFiniteError, "P[1, 1, 0] is nan"):
        refpg.TabularMDP(M.tocsr(), r, rho, 0.9)


def test_duplicate_sparse_entries_are_summed():
    P, r, rho = ring()
    S, A, _ = P.shape
    M = rows(P).tocoo()
    # Split every probability into two stored halves at the same index.
    dup = sp.coo_array((np.concatenate([M.data / 2, M.data / 2]),
                        (np.concatenate([M.row, M.row]), np.concatenate([M.col, M.col]))), shape=M.shape)
    assert not dup.has_canonical_format
    mdp = refpg.TabularMDP(dup, r, rho, 0.9)
    np.testing.assert_array_equal(mdp.dense_P(), P)
    assert mdp.P.nnz == S * A
    pi = np.full((S, A), 1.0 / A)
    dense = refpg.evaluate(refpg.TabularMDP(P, r, rho, 0.9), pi)
    np.testing.assert_allclose(refpg.evaluate(mdp, pi).V, dense.V, rtol=1e-12, atol=1e-12)


def test_duplicates_are_summed_before_the_sign_and_sum_checks():
    # 1.5 + (-0.5) at P[0, 0, 1]: the summed entry is a valid probability.
    # A CSR matrix keeps duplicates as given (a COO one is summed on conversion).
    P, r, rho = ring()
    M = rows(P)
    assert M.indptr[1] == 1 and M.indices[0] == 0  # row 0 is P[0, 0, :], one entry at column 0
    data = np.concatenate([[1.5, -0.5], M.data[1:]])
    indices = np.concatenate([[0, 0], M.indices[1:]])
    indptr = np.concatenate([[0], M.indptr[1:] + 1])
    dup = sp.csr_array((data, indices, indptr), shape=M.shape)
    assert dup.nnz == M.nnz + 1
    mdp = refpg.TabularMDP(dup, r, rho, 0.9)
    np.testing.assert_array_equal(mdp.dense_P(), P)
    assert mdp.P.nnz == M.nnz


def test_stored_zeros_are_not_edges():
    # Explicit zeros make state 3 look reachable from 0 if the pattern were read as stored.
    S, A = 4, 1
    P = np.zeros((S, A, S))
    P[0, 0, 1] = P[1, 0, 0] = P[2, 0, 2] = P[3, 0, 3] = 1.0
    M = sp.csr_array((np.array([1.0, 0.0, 1.0, 1.0, 1.0]),
                      np.array([1, 3, 0, 2, 3]), np.array([0, 2, 3, 4, 5])), shape=(S * A, S))
    assert M.nnz == 5
    rho = np.array([1.0, 0.0, 0.0, 0.0])
    r = np.ones((S, A))
    mdp = refpg.TabularMDP(M, r, rho, 0.9)
    assert mdp.P.nnz == 4
    np.testing.assert_array_equal(mdp.reachable_states(), [True, True, False, False])
    pi = np.ones((S, A))
    np.testing.assert_array_equal(mdp.reachable_states(pi), [True, True, False, False])
    e = refpg.evaluate(mdp, pi)
    np.testing.assert_array_equal(e.support, [True, True, False, False])
    assert e.d[3] == 0.0
    np.testing.assert_allclose(e.d, refpg.evaluate(refpg.TabularMDP(P, r, rho, 0.9), pi).d, rtol=1e-12, atol=0)


# -- copies --------------------------------------------------------------------------

def test_sparse_P_is_copied_and_read_only():
    P, r, rho = ring()
    M = rows(P)
    mdp = refpg.TabularMDP(M, r, rho, 0.9)
    M.data[:] = 0.5  # the caller changes theirs afterwards
    M.indices[:] = 0
    np.testing.assert_array_equal(mdp.dense_P(), P)
    for name in ("data", "indices", "indptr"):
        arr = getattr(mdp.P, name)
        assert not np.shares_memory(arr, getattr(M, name)), name
        assert not arr.flags.writeable, name
        with pytest.raises(ValueError):
            arr[0] = arr[0]


def test_sparse_transition_reward_is_copied_and_read_only():
    P, r, rho = ring()
    R = sp.csr_array(np.ones((8, 4)))
    mdp = refpg.TabularMDP(rows(P), R, rho, 0.9)
    R.data[:] = 9.0
    np.testing.assert_array_equal(mdp.transition_rewards.toarray(), np.ones((8, 4)))
    np.testing.assert_array_equal(mdp.r, np.ones((4, 2)))
    assert not np.shares_memory(mdp.transition_rewards.data, R.data)
    assert not mdp.transition_rewards.data.flags.writeable


# -- the sparse reward matrix ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 8), (8, 5), (4, 4)])
def test_sparse_reward_of_the_wrong_shape_is_refused(shape):
    P, _, rho = ring()
    with raises(errors.ShapeError, f"r should have shape (8, 4) as a sparse matrix, actual {shape}"):
        refpg.TabularMDP(rows(P), sp.csr_array(shape), rho, 0.9)


@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_sparse_reward_entry_is_named(storage, bad):
    P, _, rho = ring()
    R = np.zeros((8, 4))
    R[5, 1] = 2.0
    R[5, 3] = bad  # (s, a) = (2, 1), next state 3
    with raises(errors.NonFiniteError, f"r[2, 1, 3] is {bad!r}; expected a finite number"):
        refpg.TabularMDP(P if storage == "dense" else rows(P), sp.csr_array(R), rho, 0.9)


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_sparse_reward_reduces_like_the_dense_reward(storage):
    rng = np.random.default_rng(14)
    S, A = 5, 3
    P = rng.random((S, A, S)) * (rng.random((S, A, S)) < 0.6)
    P[:, :, 0] += 0.1
    P /= P.sum(axis=-1, keepdims=True)
    R = rng.normal(size=(S, A, S))
    rho = np.full(S, 1.0 / S)
    dense = refpg.TabularMDP(P, R, rho, 0.9)
    sparse_r = sp.csr_array(R.reshape(S * A, S))
    mdp = refpg.TabularMDP(P if storage == "dense" else rows(P), sparse_r, rho, 0.9)
    np.testing.assert_allclose(mdp.r, np.einsum("sat,sat->sa", P, R), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mdp.r, dense.r, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(mdp.transition_rewards.toarray(), R.reshape(S * A, S))
    pi = rng.dirichlet(np.ones(A), size=S)
    np.testing.assert_allclose(refpg.evaluate(mdp, pi).Q, refpg.evaluate(dense, pi).Q, rtol=1e-12, atol=1e-12)


def test_a_dense_transition_reward_on_a_sparse_P_reduces_like_the_dense_mdp():
    # The fourth storage pair (sparse P, dense (S, A, S) r): r is reshaped to P's (S*A, S) rows.
    rng = np.random.default_rng(7)
    S, A = 4, 3
    P = rng.random((S, A, S))
    P /= P.sum(axis=-1, keepdims=True)
    R = rng.normal(size=(S, A, S))
    rho = np.full(S, 1.0 / S)
    mdp = refpg.TabularMDP(rows(P), R, rho, 0.9)
    np.testing.assert_allclose(mdp.r, np.einsum("sat,sat->sa", P, R), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mdp.r, refpg.TabularMDP(P, R, rho, 0.9).r, rtol=1e-12, atol=1e-12)


def test_sparse_reward_duplicates_are_summed():
    # CSR with two stored entries at r[0, 1, 1]; (s, a) = (0, 1) moves to state 1.
    P, _, rho = ring()
    indptr = np.array([0, 0, 2, 2, 2, 2, 2, 2, 2])
    R = sp.csr_array((np.array([1.0, 2.0]), np.array([1, 1]), indptr), shape=(8, 4))
    assert R.nnz == 2
    expected = np.zeros((4, 2))
    expected[0, 1] = 3.0
    for storage in (P, rows(P)):
        mdp = refpg.TabularMDP(storage, R, rho, 0.9)
        np.testing.assert_array_equal(mdp.r, expected)
        assert mdp.transition_rewards.nnz == 1
        assert mdp.transition_rewards[1, 1] == 3.0


# -- reachability ---------------------------------------------------------------------------

def two_islands(S=6):
    """0 -> 1 -> 1 and 2 -> 3 -> 3, while 4 and 5 stay put; a second action always stays."""
    P = np.zeros((S, 2, S))
    nxt = {0: 1, 1: 1, 2: 3, 3: 3, 4: 4, 5: 5}
    for s in range(S):
        P[s, 0, nxt[s]] = 1.0
        P[s, 1, s] = 1.0
    return P, np.ones((S, 2))


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_reachability_starts_from_every_state_rho_covers(storage):
    P, r = two_islands()
    rho = np.array([0.5, 0.0, 0.5, 0.0, 0.0, 0.0])
    mdp = refpg.TabularMDP(P if storage == "dense" else rows(P), r, rho, 0.9)
    expected = [True, True, True, True, False, False]
    np.testing.assert_array_equal(mdp.reachable_states(), expected)
    pi = np.full((6, 2), 0.5)
    np.testing.assert_array_equal(mdp.reachable_states(pi), expected)
    e = refpg.evaluate(mdp, pi)
    np.testing.assert_array_equal(e.support, expected)
    assert e.d[3] > 0.0 and e.d[4] == 0.0


@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("start", [[1], [1, 5]])
def test_reachability_follows_edges_forwards_only(storage, start):
    # 0 -> 1 is an edge, so from 1 state 0 is not reachable (nor 2 from 3).
    P, r = two_islands()
    rho = np.zeros(6)
    rho[start] = 1.0 / len(start)
    mdp = refpg.TabularMDP(P if storage == "dense" else rows(P), r, rho, 0.9)
    expected = np.zeros(6, dtype=bool)
    expected[start] = True
    np.testing.assert_array_equal(mdp.reachable_states(), expected)
    np.testing.assert_array_equal(mdp.reachable_states(np.full((6, 2), 0.5)), expected)


@pytest.mark.parametrize("indices, indptr", [(np.int64, np.int64), (np.int64, np.int32), (np.int32, np.int64),
                                             (np.int32, np.int32)])
def test_int32_indices_gives_int32_index_arrays_whatever_the_input_mixes(indices, indptr):
    # scipy 1.11's csgraph and SuperLU refuse int64 indices; a mix of the two is as bad as int64 alone.
    from refpg.mdp import int32_indices

    a = sp.csr_array((np.array([1.0, 2.0]), np.array([0, 1]), np.array([0, 1, 2])), shape=(2, 2))
    a.indices, a.indptr = a.indices.astype(indices), a.indptr.astype(indptr)
    b = int32_indices(a)
    assert (b.indices.dtype, b.indptr.dtype) == (np.int32, np.int32)
    assert (a.indices.dtype, a.indptr.dtype) == (indices, indptr)  # the input is left as it was
    np.testing.assert_array_equal(b.toarray(), [[1.0, 0.0], [0.0, 2.0]])


@pytest.mark.parametrize("n_cols, cast", [(2**31 - 1, True), (2**31, False)])
def test_int32_indices_casts_up_to_the_int32_limit_and_no_further(n_cols, cast):
    from refpg.mdp import int32_indices

    a = sp.csr_array((np.ones(1), np.array([5]), np.array([0, 1])), shape=(1, n_cols))
    a.indices, a.indptr = a.indices.astype(np.int64), a.indptr.astype(np.int64)
    b = int32_indices(a)
    assert (b is a) is not cast
    assert b.indices.dtype == (np.int32 if cast else np.int64)


def test_int32_indices_leaves_an_array_with_more_entries_than_int32_counts_alone():
    # 2**31 stored entries would take 24 GB; int32_indices reads only shape, nnz and the index arrays.
    from refpg.mdp import int32_indices

    class Huge:
        shape, nnz = (3, 3), 2**31
        indices, indptr = np.zeros(1, dtype=np.int64), np.zeros(4, dtype=np.int64)

    huge = Huge()
    assert int32_indices(huge) is huge


def test_the_negative_entry_named_is_the_first_negative_one_not_a_stored_zero_or_a_small_probability():
    # Row (0, 0) holds a stored zero and 0.5 before the negative entry of row (0, 1).
    P = sp.csr_array((np.array([0.0, 0.5, 0.5, -0.5, 1.5, 1.0, 1.0, 1.0, 1.0]),
                      np.array([0, 1, 2, 0, 1, 1, 1, 2, 2]), np.array([0, 3, 5, 6, 7, 8, 9])), shape=(6, 3))
    assert P.data[0] == 0.0 and P.nnz == 9  # the stored zero is stored
    with raises(errors.NegativeEntryError, "P[0, 1, 0] is -0.5; expected a probability >= 0"):
        refpg.TabularMDP(P, np.zeros((3, 2)), [1.0, 0.0, 0.0], 0.9)

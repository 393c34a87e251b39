"""Real libraries' GAE against refpg.returns.gae, through refpg.examples.real_libraries.

The adapters call TorchRL's ``generalized_advantage_estimate`` (and its
vectorised form) and Stable-Baselines3's ``RolloutBuffer.compute_returns_and_advantage``.
Here canonical rollouts (T, N), with terminations, truncations (at the last
row too, and rows with both flags) and mid-rollout boundaries where
``next_values[t] != values[t + 1]``, are converted into each library's
arguments by hand, independently of the conformance checker, and the results
compared with the reference. What the libraries do differently is pinned down
by the tests marked FINDING.

Tested with stable-baselines3==2.9.2, torchrl==0.14.1, tensordict==0.14.3 and
torch==2.13.0+cpu. Each part skips when its library is not installed.
"""

import numpy as np
import pytest

from refpg.returns import gae

torch = pytest.importorskip("torch", reason="the real-library adapters need PyTorch (refpg[torch])")

from refpg.examples.real_libraries import sb3_gae, torchrl_gae, torchrl_vec_gae  # noqa: E402

GAMMAS_LAMS = [(0.99, 0.95), (0.9, 0.8), (0.5, 0.5), (1.0, 1.0), (0.9, 1.0), (1.0, 0.9)]


# -- canonical rollouts and their conversion -----------------------------------

def canonical_rollout(seed, T=12, N=4):
    """A canonical GAE case with every kind of boundary.

    Column 0 is truncated at the last row, column 1 terminated at the last row;
    column 2 has a mid-rollout truncation and column 3 a mid-rollout
    termination (with N >= 4); other rows get random flags, both at once
    included. Inside an episode next_values[t] == values[t + 1], as in a real
    rollout (and as SB3's buffer assumes); after a flag and at the last row it
    is V(final observation), drawn independently, so it differs from
    values[t + 1] across every boundary.
    """
    rng = np.random.default_rng(seed)
    rewards = rng.normal(0.0, 3.0, (T, N))
    values = rng.normal(0.0, 5.0, (T, N))
    finals = rng.normal(0.0, 5.0, (T, N))
    term = rng.random((T, N)) < 0.12
    trunc = rng.random((T, N)) < 0.12
    term[-1, 0], trunc[-1, 0] = False, True
    if N > 1:
        term[-1, 1], trunc[-1, 1] = True, False
    if N > 2:
        term[T // 2, 2], trunc[T // 2, 2] = False, True
    if N > 3:
        term[T // 3, 3], trunc[T // 3, 3] = True, False
    done = term | trunc
    next_values = finals.copy()
    inside = ~done[:-1]
    next_values[:-1][inside] = values[1:][inside]
    assert (next_values[:-1][done[:-1]] != values[1:][done[:-1]]).all()
    return dict(rewards=rewards, values=values, next_values=next_values,
                terminated=term, truncated=trunc)


def reference(case, gamma, lam):
    return gae(case["rewards"], case["values"], case["next_values"], case["terminated"],
               case["truncated"], gamma, lam)


def to_sb3(case, gamma, start0=True):
    """SB3's arguments: what collect_rollouts would have put in the buffer."""
    r, nv = case["rewards"], case["next_values"]
    term, trunc = case["terminated"], case["truncated"]
    done = term | trunc
    # collect_rollouts: rewards[idx] += gamma * V(terminal_observation) on a time limit
    # (info["TimeLimit.truncated"] = truncated and not terminated)
    rewards = r + gamma * np.where(trunc & ~term, nv, 0.0)
    episode_starts = np.empty(done.shape)
    episode_starts[0] = float(start0)  # must not matter
    episode_starts[1:] = done[:-1]
    return dict(rewards=rewards, values=case["values"].copy(), episode_starts=episode_starts,
                last_values=nv[-1].copy(), dones=done[-1].astype(float))


def call_sb3(case, gamma, lam, start0=True):
    a = to_sb3(case, gamma, start0)
    return sb3_gae(a["rewards"], a["values"], a["episode_starts"], a["last_values"], a["dones"],
                   gamma, lam)


def btf(x):
    """(T, N) -> (N, T, 1): TorchRL's batch, time, feature."""
    return torch.as_tensor(np.ascontiguousarray(np.asarray(x).T[:, :, None]))


def call_torchrl(fn, case, gamma, lam, dtype=torch.float64):
    term, trunc = case["terminated"], case["truncated"]
    adv = fn(gamma, lam, btf(case["values"]).to(dtype), btf(case["next_values"]).to(dtype),
             btf(case["rewards"]).to(dtype), btf(term | trunc), btf(term))
    assert isinstance(adv, torch.Tensor) and adv.dtype == dtype
    return adv[:, :, 0].T.double().numpy()


def float32_tolerance(expected, T):
    """float32 rounding of the inputs and of each of up to T recursion steps."""
    return 4 * T * np.finfo(np.float32).eps * (1.0 + np.max(np.abs(expected)))


def reference_as_torchrl(case, gamma, lam, *, vectorized=False):
    """refpg.returns.gae with the discounts TorchRL actually uses on float64 inputs.

    Both forms multiply gamma by an int32 mask in delta, so delta sees
    float32(gamma). The loop also forms its carry as ``lmbda * gamma * not_done``,
    float32(gamma * lam); the vectorised form builds its weights (gamma * lam)^k
    in the values' dtype, so its carry stays float64.
    """
    g32 = float(np.float32(gamma))
    if not vectorized:  # discount g32, carry float32(gamma * lam) = g32 * lam', lam' <= 1
        return gae(case["rewards"], case["values"], case["next_values"], case["terminated"],
                   case["truncated"], g32, float(np.float32(lam * gamma)) / g32 if g32 else lam)
    # discount gamma and carry gamma * lam, with V(s') scaled so that gamma * V'(s') = g32 * V(s')
    scaled = case["next_values"] * (g32 / gamma if gamma else 1.0)
    return gae(case["rewards"], case["values"], scaled, case["terminated"], case["truncated"], gamma, lam)


# -- TorchRL ----------------------------------------------------------------------

class TestTorchRL:
    @pytest.fixture(autouse=True)
    def _torchrl(self):
        pytest.importorskip(
            "torchrl.objectives.value.functional",
            reason="TorchRL not installed: pip install torchrl==0.14.1 tensordict==0.14.3 torch==2.13.0")

    def test_hand_example_exact(self):
        # refpg.returns.gae's docstring example: a time limit at t = 1 bootstraps from
        # next_values[1] = 8; every number is a dyadic rational, so the result is exact.
        case = dict(rewards=np.array([[1.], [2.], [3.], [4.]]), values=np.array([[2.], [4.], [2.], [6.]]),
                    next_values=np.array([[4.], [8.], [6.], [2.]]), terminated=np.zeros((4, 1), bool),
                    truncated=np.array([[False], [True], [False], [False]]))
        np.testing.assert_array_equal(call_torchrl(torchrl_gae, case, 0.5, 0.5),
                                      [[1.5], [2.0], [3.75], [-1.0]])

    @pytest.mark.parametrize("gamma,lam", GAMMAS_LAMS)
    @pytest.mark.parametrize("seed", range(5))
    def test_matches_reference_float32(self, seed, gamma, lam):
        case = canonical_rollout(seed)
        expected = reference(case, gamma, lam)
        actual = call_torchrl(torchrl_gae, case, gamma, lam, dtype=torch.float32)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=float32_tolerance(expected, 12))

    @pytest.mark.parametrize("gamma,lam", GAMMAS_LAMS)
    @pytest.mark.parametrize("seed", range(5))
    def test_float64_equals_reference_with_float32_discounts(self, seed, gamma, lam):
        """FINDING: float64 inputs, yet gamma and gamma * lam act as float32 numbers.

        ``gamma * (~terminated).int()`` is a Python float times an int32
        tensor, which torch makes float32 (the default dtype). With the
        discounts rounded so, TorchRL agrees with refpg to 1e-12.
        """
        case = canonical_rollout(seed)
        actual = call_torchrl(torchrl_gae, case, gamma, lam)
        expected = reference_as_torchrl(case, gamma, lam)
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)

    def test_float64_discount_rounding_size(self):
        """FINDING: one step, gamma = 0.99, V(s') = 10: 9.900000095 for 9.9."""
        case = dict(rewards=np.zeros((1, 1)), values=np.zeros((1, 1)), next_values=np.full((1, 1), 10.0),
                    terminated=np.zeros((1, 1), bool), truncated=np.zeros((1, 1), bool))
        actual = call_torchrl(torchrl_gae, case, 0.99, 0.95)[0, 0]
        assert actual - 9.9 == pytest.approx(10 * (float(np.float32(0.99)) - 0.99), rel=1e-6)
        assert abs(actual - 9.9) > 1e-9 * (1 + 9.9)  # beyond the conformance kit's float64 tolerance

    @pytest.mark.parametrize("seed", range(3))
    def test_float64_exact_with_float64_default_dtype(self, seed):
        """The cause, confirmed: with torch's default dtype float64 the discounts stay float64."""
        case = canonical_rollout(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            actual = call_torchrl(torchrl_gae, case, 0.99, 0.95)
        finally:
            torch.set_default_dtype(previous)
        np.testing.assert_allclose(actual, reference(case, 0.99, 0.95), rtol=1e-12, atol=1e-12)

    def test_independent_next_values(self):
        """TorchRL takes next_state_value explicitly: it needs no next_values[t] == values[t+1]."""
        case = canonical_rollout(7)
        case["next_values"] = np.random.default_rng(8).normal(0.0, 5.0, case["values"].shape)
        actual = call_torchrl(torchrl_gae, case, 0.5, 0.5)  # float32-exact discounts
        np.testing.assert_allclose(actual, reference(case, 0.5, 0.5), rtol=1e-12, atol=1e-12)

    def test_done_not_terminated_is_a_bootstrapped_boundary(self):
        """done & ~terminated (a truncation): bootstrap from next_state_value, stop the recursion."""
        T = 5
        case = dict(rewards=np.ones((T, 1)), values=np.zeros((T, 1)), next_values=np.full((T, 1), 4.0),
                    terminated=np.zeros((T, 1), bool), truncated=np.zeros((T, 1), bool))
        case["truncated"][2, 0] = True
        actual = call_torchrl(torchrl_gae, case, 0.5, 0.5)[:, 0]
        # delta = 1 + 0.5 * 4 = 3 everywhere; rows 0-2 and 3-4 are separate episodes, carry 0.25.
        np.testing.assert_array_equal(actual, [3 + 0.75 + 0.1875, 3.75, 3.0, 3.75, 3.0])
        np.testing.assert_array_equal(actual, reference(case, 0.5, 0.5)[:, 0])

    def test_omitting_terminated_makes_truncation_terminal(self):
        """FINDING (API pitfall): terminated defaults to done, so a time limit is not bootstrapped."""
        from torchrl.objectives.value.functional import generalized_advantage_estimate

        case = canonical_rollout(3)
        term, trunc = case["terminated"], case["truncated"]
        adv, _ = generalized_advantage_estimate(
            0.5, 0.5, btf(case["values"]), btf(case["next_values"]), btf(case["rewards"]),
            done=btf(term | trunc), time_dim=-2)
        as_terminal = gae(case["rewards"], case["values"], case["next_values"], term | trunc,
                          np.zeros_like(trunc), 0.5, 0.5)
        np.testing.assert_allclose(adv[:, :, 0].T.numpy(), as_terminal, rtol=1e-12, atol=1e-12)
        assert np.abs(as_terminal - reference(case, 0.5, 0.5)).max() > 0.1

    def test_numpy_in_numpy_out(self):
        case = canonical_rollout(0)
        term, trunc = case["terminated"], case["truncated"]
        out = torchrl_gae(0.5, 0.5, *(btf(case[k]).numpy() for k in ("values", "next_values", "rewards")),
                          btf(term | trunc).numpy(), btf(term).numpy())
        assert isinstance(out, np.ndarray) and out.shape == (4, 12, 1)
        np.testing.assert_allclose(out[:, :, 0].T, reference(case, 0.5, 0.5), rtol=1e-12, atol=1e-12)

    # vectorised form (TorchRL's GAE module, vectorized=True by default)

    @pytest.mark.parametrize("gamma,lam", GAMMAS_LAMS)
    @pytest.mark.parametrize("seed", range(3))
    def test_vec_matches_reference_float32(self, seed, gamma, lam):
        case = canonical_rollout(seed)
        expected = reference(case, gamma, lam)
        actual = call_torchrl(torchrl_vec_gae, case, gamma, lam, dtype=torch.float32)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=float32_tolerance(expected, 12))

    @pytest.mark.parametrize("gamma,lam", GAMMAS_LAMS)
    def test_vec_float64_equals_reference_with_float32_gamma(self, gamma, lam):
        """FINDING: the vectorised form rounds gamma in delta to float32, not its carry gamma * lam."""
        case = canonical_rollout(11)
        actual = call_torchrl(torchrl_vec_gae, case, gamma, lam)
        expected = reference_as_torchrl(case, gamma, lam, vectorized=True)
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)

    def test_vec_cuts_the_series_below_1e7(self):
        """FINDING: the series (gamma lam)^k is cut after int(log(1e-7) / log(gamma lam)) terms.

        40 steps, gamma 1, lam 0.5, delta 1: 23 terms are kept, and the first one
        dropped, 2**-23 = 1.2e-7, is not below the threshold 1e-7.
        """
        T = 40
        case = dict(rewards=np.ones((T, 1)), values=np.zeros((T, 1)), next_values=np.zeros((T, 1)),
                    terminated=np.zeros((T, 1), bool), truncated=np.zeros((T, 1), bool))
        vec = call_torchrl(torchrl_vec_gae, case, 1.0, 0.5)[0, 0]
        loop = call_torchrl(torchrl_gae, case, 1.0, 0.5)[0, 0]
        assert loop == reference(case, 1.0, 0.5)[0, 0] == 2 - 2.0 ** -39
        assert vec == 2 - 2.0 ** -22  # 23 terms: int(log(1e-7) / log(0.5)) = 23

    @pytest.mark.xfail(raises=IndexError, strict=True,
                       reason="FINDING: torchrl 0.14.1 vec_generalized_advantage_estimate raises "
                              "IndexError when gamma * lmbda == 0 (_geom_series_like returns zeros "
                              "without the trailing axis _custom_conv1d indexes)")
    @pytest.mark.parametrize("gamma,lam", [(0.0, 0.95), (0.99, 0.0)])
    def test_vec_zero_discount(self, gamma, lam):
        case = canonical_rollout(0)
        actual = call_torchrl(torchrl_vec_gae, case, gamma, lam, dtype=torch.float32)
        expected = reference(case, gamma, lam)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=float32_tolerance(expected, 12))

    def test_loop_handles_zero_discount(self):
        case = canonical_rollout(0)
        for gamma, lam in [(0.0, 0.95), (0.99, 0.0)]:
            expected = reference_as_torchrl(case, gamma, lam)
            np.testing.assert_allclose(call_torchrl(torchrl_gae, case, gamma, lam), expected,
                                       rtol=1e-12, atol=1e-12)


# -- Stable-Baselines3 ------------------------------------------------------------

class TestSB3:
    @pytest.fixture(autouse=True)
    def _sb3(self):
        pytest.importorskip("stable_baselines3",
                            reason="Stable-Baselines3 not installed: pip install stable-baselines3==2.9.2 "
                                   "torch==2.13.0")

    def test_hand_example_exact(self):
        case = dict(rewards=np.array([[1.], [2.], [3.], [4.]]), values=np.array([[2.], [4.], [2.], [6.]]),
                    next_values=np.array([[4.], [8.], [6.], [2.]]), terminated=np.zeros((4, 1), bool),
                    truncated=np.array([[False], [True], [False], [False]]))
        np.testing.assert_array_equal(call_sb3(case, 0.5, 0.5), [[1.5], [2.0], [3.75], [-1.0]])

    @pytest.mark.parametrize("gamma,lam", GAMMAS_LAMS)
    @pytest.mark.parametrize("seed", range(5))
    def test_matches_reference_float32(self, seed, gamma, lam):
        case = canonical_rollout(seed)
        expected = reference(case, gamma, lam)
        actual = call_sb3(case, gamma, lam)
        assert actual.dtype == np.float64 and actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=0, atol=float32_tolerance(expected, 12))

    @pytest.mark.parametrize("seed", range(3))
    def test_is_float32_not_float64(self, seed):
        """FINDING: SB3's buffer is float32; the error is float32-sized even for float64 input."""
        case = canonical_rollout(seed, T=64, N=4)
        expected = reference(case, 0.99, 0.95)
        err = np.abs(call_sb3(case, 0.99, 0.95) - expected).max()
        assert 1e-9 * (1 + np.abs(expected).max()) < err < float32_tolerance(expected, 64)

    def test_first_episode_start_does_not_matter(self):
        case = canonical_rollout(4)
        np.testing.assert_array_equal(call_sb3(case, 0.9, 0.8, start0=True),
                                      call_sb3(case, 0.9, 0.8, start0=False))

    def test_truncation_needs_the_reward_fold(self):
        """Without collect_rollouts' gamma * V(final obs), a time limit is a termination."""
        case = canonical_rollout(5)
        a = to_sb3(case, 0.9)
        done = case["terminated"] | case["truncated"]
        unfolded = sb3_gae(case["rewards"], a["values"], a["episode_starts"], a["last_values"], a["dones"],
                           0.9, 0.8)
        as_terminal = gae(case["rewards"], case["values"], case["next_values"], done,
                          np.zeros_like(done), 0.9, 0.8)
        np.testing.assert_allclose(unfolded, as_terminal, rtol=0, atol=float32_tolerance(as_terminal, 12))
        assert np.abs(as_terminal - reference(case, 0.9, 0.8)).max() > 0.1

    def test_torch_inputs_and_no_mutation(self):
        case = canonical_rollout(6)
        a = to_sb3(case, 0.9)
        tensors = {k: torch.as_tensor(v) for k, v in a.items()}
        before = {k: t.clone() for k, t in tensors.items()}
        out = sb3_gae(tensors["rewards"], tensors["values"], tensors["episode_starts"],
                      tensors["last_values"], tensors["dones"], 0.9, 0.8)
        np.testing.assert_array_equal(out, call_sb3(case, 0.9, 0.8))
        for k in tensors:
            assert torch.equal(tensors[k], before[k]), k


# -- through the conformance checker ------------------------------------------------
# CHECKER: these run refpg.conformance.check_gae on the adapters; they skip until the
# checker (being written concurrently) is importable.

def _checker():
    conformance = pytest.importorskip("refpg.conformance", reason="refpg.conformance not there yet")
    if not hasattr(conformance, "check_gae"):
        pytest.skip("refpg.conformance has no check_gae yet")
    return conformance


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_checker_torchrl_float32(backend):
    pytest.importorskip("torchrl.objectives.value.functional", reason="TorchRL not installed")
    _checker()
    from refpg.conformance import assert_conforms, check_gae

    report = check_gae(torchrl_gae, convention="torchrl", backend=backend, dtype="float32")
    assert_conforms(report)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_checker_sb3_float32(backend):
    pytest.importorskip("stable_baselines3", reason="Stable-Baselines3 not installed")
    _checker()
    from refpg.conformance import assert_conforms, check_gae

    report = check_gae(sb3_gae, convention="sb3", backend=backend, dtype="float32")
    assert_conforms(report)


def test_checker_torchrl_float64_finds_the_float32_discount():
    """FINDING through the checker: at float64 TorchRL fails the value checks by ~1e-7, nothing else."""
    pytest.importorskip("torchrl.objectives.value.functional", reason="TorchRL not installed")
    _checker()
    from refpg.conformance import check_gae

    report = check_gae(torchrl_gae, convention="torchrl", backend="torch", max_examples=30)
    assert not report.passed
    assert set(report.failed_ids) <= {"gae.recursion", "gae.terminal_not_bootstrapped",
                                      "gae.truncation_bootstrapped", "gae.general"}


def test_checker_torchrl_vec_finds_the_zero_discount_crash():
    """FINDING through the checker: the vectorised form raises at gamma * lmbda == 0."""
    pytest.importorskip("torchrl.objectives.value.functional", reason="TorchRL not installed")
    _checker()
    from refpg.conformance import check_gae

    report = check_gae(torchrl_vec_gae, convention="torchrl", backend="torch", dtype="float32",
                       max_examples=30)
    assert "gae.raised" in report.failed_ids
    assert "IndexError" in report.failure("gae.raised").message
    assert not {"gae.recursion", "gae.terminal_not_bootstrapped", "gae.truncation_bootstrapped",
                "gae.no_flow_across_episodes", "gae.general"} & set(report.failed_ids)


def test_checker_sb3_returns_float32():
    """SB3's buffer.returns, the value function's targets, are its advantages + values."""
    pytest.importorskip("stable_baselines3", reason="Stable-Baselines3 not installed")
    _checker()
    from refpg.conformance import assert_conforms, check_gae
    from refpg.examples.real_libraries import sb3_gae_and_returns

    report = check_gae(sb3_gae_and_returns, convention="sb3", returns=True, backend="numpy", dtype="float32",
                       max_examples=30)
    assert_conforms(report)
    assert "gae.returns" in report.checks and "gae.returns" not in report.not_run_ids

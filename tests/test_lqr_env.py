"""Sampling the LQR: the Gymnasium environment (refpg.envs.LQREnv) and the vectorised sampler (refpg.lqr.sampling).

Both are checked against the exact finite-horizon recursions of refpg.lqr by
Monte Carlo (refpg.stats.mean_test, family-wise alpha = 1e-6 per test, fixed
seeds), and each test is shown to reject a wrong model on the same draws.
"""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from refpg import lqr
from refpg.envs import LQREnv, ResetNeededError
from refpg.errors import InvalidInputError, ShapeError
from refpg.lqr import LinearGaussian, LQRSystem
from refpg.stats import mean_test
from tests.helpers import assert_identity

ALPHA = 1e-6

SYSTEM = LQRSystem(A=[[0.9, 0.3], [-0.2, 0.8]], B=[[0.0], [1.0]], Q=[[1.0, 0.2], [0.2, 0.5]], R=[[0.5]],
                   W=0.3 * np.eye(2), mu0=[1.0, -0.5], Sigma0=0.5 * np.eye(2), gamma=0.8)
POLICY = LinearGaussian.for_system(SYSTEM)
K, LOG_STD = np.array([[0.3, 0.4]]), np.array([-0.2])
THETA = POLICY.pack(K, LOG_STD)
H = 8


def quiet(system):
    """The same system without process noise: a wrong model for the power checks."""
    return LQRSystem(system.A, system.B, system.Q, system.R, np.zeros_like(system.W), system.mu0, system.Sigma0,
                     system.gamma)


def discounted(rewards, gamma):
    return (gamma ** np.arange(rewards.shape[0])) @ rewards


#: What check_env says about an unbounded Box, which the LQR's Gaussian states and actions need.
UNBOUNDED_BOX_WARNINGS = (
    "A Box action space minimum value is -infinity",
    "A Box action space maximum value is infinity",
    "A Box observation space minimum value is -infinity",
    "A Box observation space maximum value is infinity",
    "For Box action spaces, we recommend using a symmetric and normalized space",
)


# -- the Gymnasium environment -------------------------------------------------------------------

@pytest.mark.parametrize("how", ["direct", "make"])
def test_check_env_passes_with_only_the_unbounded_box_warnings(how):
    env = (LQREnv(lqr.random_system(0, 3, 2), max_episode_steps=5, render_mode="ansi") if how == "direct"
           else gymnasium.make("refpg/LQR-v0", system=lqr.random_system(0, 3, 2), max_episode_steps=5).unwrapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    messages = [str(w.message) for w in caught]
    assert messages, "check_env should have warned about the unbounded boxes"
    unexpected = [m for m in messages if not any(k in m for k in UNBOUNDED_BOX_WARNINGS)]
    assert unexpected == []


def test_the_environment_follows_the_system_step_by_step():
    env = LQREnv(SYSTEM, max_episode_steps=3)
    x, info = env.reset(seed=7)
    assert info == {} and x.dtype == np.float64 and x.shape == (2,)
    x_again, _ = LQREnv(SYSTEM).reset(seed=7)
    np.testing.assert_array_equal(x, x_again)
    # the start is mu0 + Sigma0^{1/2} z with the env's own generator
    z = np.random.default_rng(7).standard_normal(2)
    assert_identity(x, SYSTEM.mu0 + lqr.sampling.psd_sqrt(SYSTEM.Sigma0) @ z)
    u = np.array([0.7])
    x2, reward, terminated, truncated, info = env.step(u)
    cost = x @ SYSTEM.Q @ x + u @ SYSTEM.R @ u
    assert_identity(reward, -cost)
    assert_identity(info["cost"], cost)
    assert (terminated, truncated) == (False, False)
    # the step is A x + B u + W^{1/2} z' with the next normal of the same generator
    rng = np.random.default_rng(7)
    rng.standard_normal(2)
    assert_identity(x2, SYSTEM.A @ x + SYSTEM.B @ u + lqr.sampling.psd_sqrt(SYSTEM.W) @ rng.standard_normal(2))
    env.step(np.float32([0.1]))  # float32 is widened
    assert env.step(u)[3] is True and env.elapsed_steps == 3
    with pytest.raises(ResetNeededError, match="after the episode was truncated"):
        env.step(u)
    shown = LQREnv(SYSTEM, render_mode="ansi")
    shown.reset(seed=0)
    assert shown.render().startswith("LQR: x = [")


def test_episodes_through_the_environment_estimate_the_finite_horizon_cost_and_reject_a_wrong_model():
    env = LQREnv(SYSTEM, max_episode_steps=H)
    rng = np.random.default_rng(3)
    N = 3000
    returns = np.empty(N)
    for e in range(N):
        x, _ = env.reset(seed=1000 + e)
        total, discount, truncated = 0.0, 1.0, False
        while not truncated:
            u = POLICY.sample_actions(THETA, x, rng)
            x, r, _, truncated, _ = env.step(u)
            total += discount * r
            discount *= SYSTEM.gamma
        returns[e] = total
    exact = -lqr.finite_horizon_cost(SYSTEM, K, LOG_STD, H)
    result = mean_test(returns[:, None], [exact], alpha=ALPHA)
    assert not result.rejected, str(result)
    assert mean_test(returns[:, None], [-lqr.finite_horizon_cost(quiet(SYSTEM), K, LOG_STD, H)], alpha=ALPHA).rejected


def test_the_environment_refuses_bad_input_with_clear_errors():
    with pytest.raises(InvalidInputError, match="system should be a refpg.lqr.LQRSystem, actual dict"):
        LQREnv({})
    with pytest.raises(InvalidInputError, match="max_episode_steps"):
        LQREnv(SYSTEM, max_episode_steps=0)
    with pytest.raises(InvalidInputError, match="render_mode should be None or one of"):
        LQREnv(SYSTEM, render_mode="human")
    env = LQREnv(SYSTEM)
    with pytest.raises(ResetNeededError, match="before reset"):
        env.step(np.zeros(1))
    with pytest.raises(ResetNeededError, match="before reset"):
        LQREnv(SYSTEM, render_mode="ansi").render()
    with pytest.raises(InvalidInputError, match="options should be empty or None"):
        env.reset(options={"state": 0})
    env.reset(seed=0)
    with pytest.raises(ShapeError, match=r"action should have shape \(1,\).*actual shape \(2,\)"):
        env.step(np.zeros(2))
    with pytest.raises(InvalidInputError, match=r"action should be finite, actual action\[0\] = nan"):
        env.step(np.array([np.nan]))
    with pytest.raises(InvalidInputError, match="action should be a real vector"):
        env.step(np.array([True]))


# -- the vectorised sampler ---------------------------------------------------------------------------

def test_sampled_episodes_estimate_the_finite_horizon_cost_and_reject_wrong_models():
    batch = lqr.sample_episodes(SYSTEM, POLICY, THETA, 20_000, horizon=H, rng=np.random.default_rng(0))
    assert batch.states.shape == (H, 20_000, 2) and batch.actions.shape == (H, 20_000, 1)
    returns = discounted(batch.rewards, SYSTEM.gamma)
    exact = -lqr.finite_horizon_cost(SYSTEM, K, LOG_STD, H)
    result = mean_test(returns[:, None], [exact], alpha=ALPHA)
    assert not result.rejected, str(result)
    tr_R_psi = float(SYSTEM.R.diagonal() @ np.exp(2 * LOG_STD))
    wrong = {
        "no process noise": -lqr.finite_horizon_cost(quiet(SYSTEM), K, LOG_STD, H),
        "no exploration cost": exact + tr_R_psi * (1 - SYSTEM.gamma ** H) / (1 - SYSTEM.gamma),
        "the infinite horizon": -lqr.cost(SYSTEM, K, LOG_STD),
    }
    for name, value in wrong.items():
        assert mean_test(returns[:, None], [value], alpha=ALPHA).rejected, name


def test_sampled_state_second_moments_follow_the_exact_recursion_and_not_a_transposed_a():
    batch = lqr.sample_episodes(SYSTEM, POLICY, THETA, 20_000, horizon=H, rng=np.random.default_rng(1))
    outer = np.einsum("tni,tnj->ntij", batch.states, batch.states)  # one sample per episode, (H, n, n) each
    S = lqr.finite_horizon(SYSTEM, K, LOG_STD, H).S
    result = mean_test(outer, S, alpha=ALPHA)
    assert not result.rejected, str(result)
    wrong = LQRSystem(SYSTEM.A.T, SYSTEM.B, SYSTEM.Q, SYSTEM.R, SYSTEM.W, SYSTEM.mu0, SYSTEM.Sigma0, SYSTEM.gamma)
    assert mean_test(outer, lqr.finite_horizon(wrong, K, LOG_STD, H).S, alpha=ALPHA).rejected


def test_sample_steps_resets_at_the_time_limit_and_keeps_the_true_successor():
    batch = lqr.sample_steps(SYSTEM, POLICY, THETA, 4, 7, rng=np.random.default_rng(2), max_episode_steps=3)
    assert batch.shape == (7, 4)
    np.testing.assert_array_equal(batch.truncated[:, 0], [False, False, True, False, False, True, False])
    np.testing.assert_array_equal(batch.step[:, 0], [0, 1, 2, 0, 1, 2, 0])
    assert not batch.terminated.any() and batch.valid.all()
    for t in range(6):
        same = np.array_equal(batch.next_states[t], batch.states[t + 1])
        assert same != bool(batch.truncated[t, 0])  # a reset draws a new start; otherwise the successor
    assert_identity(batch.log_probs, POLICY.sample_log_probs(THETA, batch.states, batch.actions))
    assert_identity(batch.rewards, -(np.einsum("tni,ij,tnj->tn", batch.states, SYSTEM.Q, batch.states)
                                     + np.einsum("tni,ij,tnj->tn", batch.actions, SYSTEM.R, batch.actions)))
    again = lqr.sample_steps(SYSTEM, POLICY, THETA, 4, 7, rng=np.random.default_rng(2), max_episode_steps=3)
    np.testing.assert_array_equal(again.states, batch.states)  # seeded
    assert len(batch.episodes()) == 8  # two complete episodes per environment, the tails dropped


def test_occupancy_draws_have_the_discounted_second_moment_and_not_the_unnormalised_one():
    draw = lqr.sample_occupancy(SYSTEM, POLICY, THETA, 50_000, rng=np.random.default_rng(4))
    outer = np.einsum("ni,nj->nij", draw.states, draw.states)
    Sigma = lqr.second_moment(SYSTEM, K, LOG_STD)
    g = SYSTEM.gamma
    result = mean_test(outer, (1 - g) * Sigma, alpha=ALPHA)
    assert not result.rejected, str(result)
    assert mean_test(outer, Sigma, alpha=ALPHA).rejected
    # the action given the state is the policy's: E[(u + K x) (u + K x)^T] = Psi
    e = draw.actions + draw.states @ K.T
    assert not mean_test(e[:, :, None] * e[:, None, :], np.diag(np.exp(2 * LOG_STD)), alpha=ALPHA).rejected
    # the times are Geometric(1 - gamma) on 0, 1, ...: mean gamma / (1 - gamma)
    assert not mean_test(draw.times[:, None].astype(float), [g / (1 - g)], alpha=ALPHA).rejected


def test_a_quadratic_value_is_recovered_exactly_from_noiseless_targets():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 3))
    P = np.array([[1.0, 0.5, 0.0], [0.5, -2.0, 0.3], [0.0, 0.3, 0.7]])
    fit = lqr.fit_quadratic_value(x, np.einsum("ni,ij,nj->n", x, P, x) - 4.0)
    assert_identity(fit.P, P)
    assert_identity(fit.c, -4.0)
    v = lqr.exact_value(SYSTEM, POLICY, THETA)
    assert_identity(v(x[:, :2]), -lqr.state_value(SYSTEM, K, LOG_STD, x[:, :2]))


def test_the_sampler_refuses_bad_input_and_an_overflowing_rollout():
    with pytest.raises(InvalidInputError, match="rng should be a numpy.random.Generator"):
        lqr.sample_episodes(SYSTEM, POLICY, THETA, 3, horizon=2, rng=0)
    with pytest.raises(InvalidInputError, match="n_envs"):
        lqr.sample_steps(SYSTEM, POLICY, THETA, 0, 3, rng=np.random.default_rng(0))
    with pytest.raises(ShapeError, match="policy has state_dim=3"):
        lqr.sample_steps(SYSTEM, LinearGaussian(3, 1), np.zeros(4), 2, 3, rng=np.random.default_rng(0))
    unstable = POLICY.pack([[0.0, -3.0]], [0.0])
    with pytest.raises(InvalidInputError, match="the rollout overflows float64 at step .*spectral radius of A - B K"):
        lqr.sample_episodes(SYSTEM, POLICY, unstable, 2, horizon=2000, rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="does not stabilise"):
        lqr.sample_occupancy(SYSTEM, POLICY, unstable, 10, rng=np.random.default_rng(0))
    with pytest.raises(ShapeError, match="targets should have shape"):
        lqr.fit_quadratic_value(np.zeros((3, 2)), np.zeros(2))


def test_a_step_that_overflows_float64_is_refused_by_name_not_returned_as_inf():
    env = LQREnv(lqr.random_system(0, 2, 1))
    env.reset(seed=0)
    with pytest.raises(InvalidInputError, match="overflows float64 at step"):
        for _ in range(10):
            env.step(np.array([1e200]))


def test_make_without_a_system_says_what_to_pass():
    with pytest.raises(InvalidInputError, match="system should be a refpg.lqr.LQRSystem, actual none given"):
        gymnasium.make("refpg/LQR-v0")

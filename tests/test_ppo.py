"""PPO ([Schulman2017]): the clipped loss, its gradients, the update loop and the KL-penalty rule.

Per-sample identities are exact (bit-for-bit where the formula is the
definition); theta gradients are checked against central finite differences
(rtol 1e-6, away from the clipping kinks) and torch autograd (float64).
"""

import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import refpg
from refpg import errors
from refpg import strategies as rst
from refpg.algorithms import SampleConfig
from refpg.algorithms.ppo import (
    KL_STOP_FACTOR,
    AdamState,
    PPOSamples,
    adapt_kl_coefficient,
    approx_kl,
    batch_kl,
    batch_kl_gradient,
    clip_fraction,
    clipped_surrogate,
    clipped_surrogate_gradient,
    exact_clipped_surrogate,
    exact_clipped_surrogate_gradient,
    normalized_advantages,
    ppo_clip_grad_logp,
    ppo_clip_loss,
    ppo_clip_terms,
    ppo_kl_penalty_update,
    ppo_update,
    ratio_outside_fraction,
)
from tests.helpers import assert_identity, central_difference

both = ("tabular", "log_linear")


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


# -- strategies ------------------------------------------------------------------

GRID_LOGP = st.integers(-24, 24).map(lambda k: k / 8)
GRID_ADV = st.integers(-8, 8).map(lambda k: k / 4)
GRID_EPS = st.integers(1, 12).map(lambda k: k / 20)


@st.composite
def clip_cases(draw):
    """(logp_new, logp_old, advantages, clip_eps) on 1/8 and 1/4 grids; shrinks to one sample, r = 1, A = 0."""
    shape = draw(array_shapes(min_dims=1, max_dims=2, max_side=6))
    new, old = (draw(arrays(np.float64, shape, elements=GRID_LOGP)) for _ in range(2))
    adv = draw(arrays(np.float64, shape, elements=GRID_ADV))
    return new, old, adv, draw(GRID_EPS)


@st.composite
def batches(draw, *, max_samples=8):
    """(policy, theta_old, theta, samples): a batch with logp_old from theta_old, theta nearby."""
    _, policy, theta_old = draw(rst.mdp_policy_theta(kinds=both, max_states=4, min_actions=2,
                                                     max_actions=3, max_abs=1.0))
    theta = theta_old + draw(rst.thetas(policy, max_abs=0.5))
    M = draw(st.integers(1, max_samples))
    states = np.array(draw(st.lists(st.integers(0, policy.n_states - 1), min_size=M, max_size=M)))
    actions = np.array(draw(st.lists(st.integers(0, policy.n_actions - 1), min_size=M, max_size=M)))
    adv = draw(arrays(np.float64, M, elements=GRID_ADV))
    logp_old = policy.log_probs(theta_old)[states, actions]
    return policy, theta_old, theta, PPOSamples(states, actions, logp_old, adv)


def eps_away_from_kinks(log_r, margin=0.02):
    """The clip_eps in [0.05, 0.8] whose boundaries log(1 +- eps) are farthest from every log r."""
    best, best_gap = None, -1.0
    for eps in np.arange(0.05, 0.8, 0.01):
        gap = np.min(np.minimum(np.abs(log_r - np.log1p(eps)), np.abs(log_r - np.log1p(-eps))))
        if gap > best_gap:
            best, best_gap = float(eps), gap
    assume(best_gap >= margin)
    return best


def torch_log_pi(policy, t):
    from tests.torch_reference import log_pi
    return log_pi(policy, t)


# -- per-sample layer ----------------------------------------------------------------

@given(clip_cases())
def test_grad_logp_is_zero_exactly_where_clipped_and_minus_rA_over_M_elsewhere(case):
    new, old, adv, eps = case
    r = np.exp(new - old)
    g = ppo_clip_grad_logp(new, old, adv, eps)
    clipped = ((adv > 0) & (r > 1 + eps)) | ((adv < 0) & (r < 1 - eps))
    np.testing.assert_array_equal(g[clipped], 0.0)
    np.testing.assert_array_equal(g[~clipped], (-r * adv / r.size)[~clipped])
    np.testing.assert_array_equal(ppo_clip_terms(new, old, adv, eps).clipped, clipped)


@given(clip_cases())
def test_grad_logp_matches_torch_autograd_of_the_loss(case):
    torch = pytest.importorskip("torch")
    new, old, adv, eps = case
    t_new = torch.tensor(new, requires_grad=True)
    r = torch.exp(t_new - torch.tensor(old))
    A = torch.tensor(adv)
    loss = -torch.min(r * A, torch.clamp(r, 1 - eps, 1 + eps) * A).mean()
    loss.backward()
    np.testing.assert_allclose(ppo_clip_loss(new, old, adv, eps), loss.item(), rtol=1e-14, atol=1e-15)
    g = ppo_clip_grad_logp(new, old, adv, eps)
    np.testing.assert_allclose(g, t_new.grad.numpy(), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(g == 0, t_new.grad.numpy() == 0)


@given(clip_cases())
def test_clipped_objective_is_at_most_the_unclipped_one(case):
    new, old, adv, eps = case
    unclipped = np.exp(new - old) * adv
    terms = ppo_clip_terms(new, old, adv, eps)
    assert np.all(terms.objective <= unclipped)
    assert -ppo_clip_loss(new, old, adv, eps) <= np.mean(unclipped)


@given(clip_cases())
def test_loss_equals_the_unclipped_one_when_the_policies_agree(case):
    _, old, adv, eps = case
    np.testing.assert_array_equal(ppo_clip_loss(old, old, adv, eps), -np.mean(adv))
    np.testing.assert_array_equal(ppo_clip_grad_logp(old, old, adv, eps), -adv / adv.size)
    assert clip_fraction(old, old, adv, eps) == 0.0


@given(clip_cases())
def test_clip_fraction_is_at_most_the_libraries_ratio_outside_fraction(case):
    new, old, adv, eps = case
    assert clip_fraction(new, old, adv, eps) <= ratio_outside_fraction(new, old, eps)


def test_clip_fraction_on_hand_made_cases():
    eps = 0.2
    r = np.array([1.5, 1.5, 0.5, 0.5, 1.0, 1.5, 1.1])
    A = np.array([1.0, -1.0, -1.0, 1.0, 1.0, 0.0, -2.0])
    # Clipped: (r=1.5, A>0) and (r=0.5, A<0). Outside but not clipped: (1.5, A<0),
    # (0.5, A>0) and (1.5, A=0), whose min keeps the unclipped term.
    logp_new, logp_old = np.log(r), np.zeros_like(r)
    np.testing.assert_array_equal(ppo_clip_terms(logp_new, logp_old, A, eps).clipped,
                                  [True, False, True, False, False, False, False])
    assert clip_fraction(logp_new, logp_old, A, eps) == 2 / 7
    assert ratio_outside_fraction(logp_new, logp_old, eps) == 5 / 7
    g = ppo_clip_grad_logp(logp_new, logp_old, A, eps)
    np.testing.assert_array_equal(g == 0, [True, False, True, False, False, True, False])


def test_ratio_exactly_on_the_boundary_counts_as_unclipped():
    # eps = e^x - 1 makes 1 + eps == exp(x) exactly (both subtractions are exact,
    # Sterbenz), so r sits on the boundary; likewise 1 - eps == exp(-x).
    x = 0.25
    hi_eps, lo_eps = float(np.exp(x) - 1.0), float(1.0 - np.exp(-x))
    assert np.exp(x) == 1.0 + hi_eps and np.exp(-x) == 1.0 - lo_eps
    for logp_new, A, eps in (([x], [1.0], hi_eps), ([-x], [-1.0], lo_eps)):
        r = np.exp(logp_new[0])
        assert clip_fraction(logp_new, [0.0], A, eps) == 0.0
        assert ratio_outside_fraction(logp_new, [0.0], eps) == 0.0
        np.testing.assert_array_equal(ppo_clip_grad_logp(logp_new, [0.0], A, eps), [-r * A[0]])
        # A hair further out (one ulp of log r may round to the same r) is clipped.
        beyond = [logp_new[0] * (1 + 1e-12)]
        assert clip_fraction(beyond, [0.0], A, eps) == 1.0
        np.testing.assert_array_equal(ppo_clip_grad_logp(beyond, [0.0], A, eps), [0.0])


def test_loss_value_on_a_hand_made_batch():
    # r = [2, 0.5, 1], A = [1, -2, 3], eps = 0.2: terms min(2, 1.2) = 1.2,
    # min(-1, -1.6) = -1.6, min(3, 3) = 3; loss = -(1.2 - 1.6 + 3)/3 = -2.6/3.
    loss = ppo_clip_loss(np.log([2.0, 0.5, 1.0]), [0.0, 0.0, 0.0], [1.0, -2.0, 3.0], 0.2)
    np.testing.assert_allclose(loss, -2.6 / 3, rtol=1e-15)


def test_approx_kl_is_the_mean_of_k3():
    new, old = np.log([0.5, 0.2, 0.3]), np.log([0.2, 0.3, 0.5])
    np.testing.assert_allclose(approx_kl(new, old), np.mean(np.exp(new - old) - 1 - (new - old)), rtol=1e-14)


# -- advantage normalisation ---------------------------------------------------------

@given(arrays(np.float64, st.integers(2, 8), elements=GRID_ADV), st.sampled_from([0, 1]),
       st.sampled_from([0.0, 1e-8, 0.5]))
def test_normalized_advantages_follow_the_formula_with_explicit_ddof_and_eps(adv, ddof, eps):
    assume(np.ptp(adv) > 0 or eps > 0)
    np.testing.assert_allclose(normalized_advantages(adv, ddof=ddof, eps=eps),
                               (adv - adv.mean()) / (adv.std(ddof=ddof) + eps), rtol=1e-15, atol=1e-15)


def test_single_sample_normalisation_is_refused_with_ddof_one_and_zero_with_ddof_zero():
    with raises(errors.InvalidInputError, "ddof=1 of advantages is undefined for 1 sample(s)"):
        normalized_advantages([3.0], ddof=1)
    np.testing.assert_array_equal(normalized_advantages([3.0], ddof=0), [0.0])


def test_constant_advantages_with_zero_eps_are_refused_not_nan():
    with raises(errors.InvalidInputError, "std + eps is 0 with eps=0.0"):
        normalized_advantages([1.0, 1.0], eps=0.0)


# -- theta layer: sampled ------------------------------------------------------------

@given(batches())
def test_clipped_surrogate_gradient_matches_central_differences_away_from_kinks(case):
    policy, theta_old, theta, samples = case
    log_r = policy.log_probs(theta)[samples.states, samples.actions] - samples.logp_old
    eps = eps_away_from_kinks(log_r)
    g = clipped_surrogate_gradient(policy, theta, samples, eps)
    fd = central_difference(lambda t: clipped_surrogate(policy, t, samples, eps), theta)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(fd).max()))


@given(batches())
def test_clipped_surrogate_and_gradient_match_torch_autograd(case):
    torch = pytest.importorskip("torch")
    policy, theta_old, theta, samples = case
    eps = 0.2
    t = torch.tensor(theta, requires_grad=True)
    logp = torch_log_pi(policy, t)[torch.tensor(samples.states), torch.tensor(samples.actions)]
    r = torch.exp(logp - torch.tensor(samples.logp_old))
    A = torch.tensor(samples.advantages)
    obj = torch.min(r * A, torch.clamp(r, 1 - eps, 1 + eps) * A).mean()
    obj.backward()
    np.testing.assert_allclose(clipped_surrogate(policy, theta, samples, eps), obj.item(), rtol=1e-12, atol=1e-14)
    g = t.grad.numpy()
    np.testing.assert_allclose(clipped_surrogate_gradient(policy, theta, samples, eps), g,
                               rtol=1e-10, atol=1e-13 * max(1.0, np.abs(g).max()))


@given(batches())
def test_at_theta_old_the_sample_gradient_is_the_unclipped_score_function_mean(case):
    policy, theta_old, _, samples = case
    jac = policy.log_prob_jacobian(theta_old)  # rows s * A + a: independent of log_prob_vjp
    rows = samples.states * policy.n_actions + samples.actions
    expected = (samples.advantages[:, None] * jac[rows]).mean(axis=0).reshape(policy.theta_shape)
    for eps in (0.2, None):
        assert_identity(clipped_surrogate_gradient(policy, theta_old, samples, eps), expected)
        np.testing.assert_allclose(clipped_surrogate(policy, theta_old, samples, eps),
                                   samples.advantages.mean(), rtol=1e-14, atol=1e-15)


@given(batches())
def test_batch_kl_gradient_matches_central_differences(case):
    policy, theta_old, theta, samples = case
    g = batch_kl_gradient(policy, theta, theta_old=theta_old, states=samples.states)
    fd = central_difference(lambda t: batch_kl(policy, t, theta_old=theta_old, states=samples.states), theta)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(fd).max()))


def test_batch_kl_averages_the_exact_state_kl_over_batch_states():
    pol = refpg.TabularSoftmax(3, 2)
    theta_old, theta = np.zeros((3, 2)), np.array([[1.0, 0.0], [0.0, 0.0], [0.0, -2.0]])
    per_state = refpg.policy_kl(pi_old=pol.probs(theta_old), pi_new=pol.probs(theta))
    states = np.array([0, 0, 2, 1])
    np.testing.assert_allclose(batch_kl(pol, theta, theta_old=theta_old, states=states),
                               (2 * per_state[0] + per_state[2] + per_state[1]) / 4, rtol=1e-14)


# -- theta layer: exact -----------------------------------------------------------------

def exact_setting(**kw):
    return rst.mdp_policy_theta(kinds=both, max_states=4, max_actions=3, max_abs=1.0, **kw)


@given(exact_setting(), st.data())
def test_exact_gradient_matches_central_differences_away_from_kinks(case, data):
    mdp, policy, theta_old = case
    theta = theta_old + data.draw(rst.thetas(policy, max_abs=0.5))
    ev_old = refpg.evaluate(mdp, policy.probs(theta_old))
    log_r = (policy.log_probs(theta) - policy.log_probs(theta_old))[ev_old.support]
    eps = eps_away_from_kinks(log_r.ravel())
    g = exact_clipped_surrogate_gradient(mdp, policy, theta, theta_old=theta_old, clip_eps=eps, evaluation_old=ev_old)
    fd = central_difference(
        lambda t: exact_clipped_surrogate(mdp, policy, t, theta_old=theta_old, clip_eps=eps, evaluation_old=ev_old), theta)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * max(1.0, np.abs(fd).max()))


@given(exact_setting(), st.data())
def test_exact_surrogate_and_gradient_match_torch_autograd(case, data):
    torch = pytest.importorskip("torch")
    mdp, policy, theta_old = case
    theta = theta_old + data.draw(rst.thetas(policy, max_abs=0.5))
    eps = 0.2
    ev = refpg.evaluate(mdp, policy.probs(theta_old))
    t = torch.tensor(theta, requires_grad=True)
    logp_old = torch.tensor(policy.log_probs(theta_old))
    r = torch.exp(torch_log_pi(policy, t) - logp_old)
    A = torch.tensor(ev.A)
    w = torch.tensor(ev.d)[:, None] * torch.exp(logp_old)
    obj = (w * torch.min(r * A, torch.clamp(r, 1 - eps, 1 + eps) * A)).sum()
    obj.backward()
    scale = max(1.0, float(np.abs(ev.A).max()))
    np.testing.assert_allclose(exact_clipped_surrogate(mdp, policy, theta, theta_old=theta_old, clip_eps=eps), obj.item(),
                               rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(exact_clipped_surrogate_gradient(mdp, policy, theta, theta_old=theta_old, clip_eps=eps),
                               t.grad.numpy(), rtol=1e-10, atol=1e-12 * scale)


@given(exact_setting(max_gamma=0.95))
def test_at_theta_old_exact_value_is_zero_and_gradient_is_policy_gradient_over_horizon(case):
    mdp, policy, theta = case
    ev = refpg.evaluate(mdp, policy.probs(theta))
    g = exact_clipped_surrogate_gradient(mdp, policy, theta, theta_old=theta, clip_eps=0.2, evaluation_old=ev)
    assert_identity(g, refpg.policy_gradient(mdp, policy, theta, evaluation=ev) / ev.horizon)
    assert_identity(g, exact_clipped_surrogate_gradient(mdp, policy, theta, theta_old=theta, clip_eps=None))
    scale = max(1.0, float(np.abs(ev.A).max()))
    assert_identity(exact_clipped_surrogate(mdp, policy, theta, theta_old=theta, clip_eps=0.2), 0.0, scale=scale)


@given(exact_setting(episodic=True, min_states=2, min_gamma=1.0, max_gamma=1.0))
def test_at_theta_old_exact_gradient_uses_the_episode_length_for_gamma_one(case):
    mdp, policy, theta = case
    ev = refpg.evaluate(mdp, policy.probs(theta))
    assert_identity(exact_clipped_surrogate_gradient(mdp, policy, theta, theta_old=theta, clip_eps=0.2),
                    refpg.policy_gradient(mdp, policy, theta) / ev.horizon)


@given(exact_setting(), st.data())
def test_exact_surrogate_is_the_d_old_pi_old_expectation_of_the_sample_terms(case, data):
    mdp, policy, theta_old = case
    theta = theta_old + data.draw(rst.thetas(policy, max_abs=1.0))
    eps = data.draw(GRID_EPS)
    ev = refpg.evaluate(mdp, policy.probs(theta_old))
    terms = ppo_clip_terms(policy.log_probs(theta), policy.log_probs(theta_old), ev.A, eps)
    expected = float(np.sum(ev.d[:, None] * ev.pi * terms.objective))
    scale = max(1.0, float(np.abs(ev.A).max()))
    assert_identity(exact_clipped_surrogate(mdp, policy, theta, theta_old=theta_old, clip_eps=eps), expected, scale=scale)
    # Without clipping it is the TRPO surrogate minus J_old, per sample.
    L = refpg.surrogate(mdp, policy, theta, theta_old=theta_old)
    assert_identity(exact_clipped_surrogate(mdp, policy, theta, theta_old=theta_old, clip_eps=None), (L - ev.J) / ev.horizon,
                    scale=scale)


# -- optimisers ---------------------------------------------------------------------

def garnet_case(kind, seed=1):
    mdp = refpg.envs.garnet(5, 3, 2, seed=seed, gamma=0.9)
    rng = np.random.default_rng(seed)
    if kind == "tabular":
        pol = refpg.TabularSoftmax.for_mdp(mdp)
    else:
        pol = refpg.LogLinear(rng.normal(size=(5, 3, 4)))
    return mdp, pol, 0.5 * rng.normal(size=pol.theta_shape)


@pytest.mark.parametrize("kind", both)
def test_first_adam_step_is_lr_times_bias_corrected_sign_and_sgd_step_is_lr_times_g(kind):
    mdp, pol, theta = garnet_case(kind)
    g = exact_clipped_surrogate_gradient(mdp, pol, theta, theta_old=theta, clip_eps=0.2)
    lr, eps = 0.01, 1e-8
    res = ppo_update(mdp, pol, theta, epochs=1, optimizer="adam", lr=lr, adam_eps=eps)
    # m_hat = g and v_hat = g^2 after one step: the step is lr g / (|g| + eps) ~ lr sign(g).
    # atol: theta - theta_old cancels to an ulp of theta (~0.5).
    np.testing.assert_allclose(res.theta - theta, lr * g / (np.abs(g) + eps), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.abs(res.theta - theta)[np.abs(g) > 1e-4], lr, rtol=1e-3)
    assert res.optimizer_state.t == 1
    res = ppo_update(mdp, pol, theta, epochs=1, optimizer="sgd", lr=lr)
    np.testing.assert_allclose(res.theta - theta, lr * g, rtol=1e-12, atol=1e-15)
    assert res.optimizer_state is None


@pytest.mark.parametrize("kind", both)
def test_exact_mode_adam_run_matches_torch_adam_on_the_torch_loss(kind):
    torch = pytest.importorskip("torch")
    mdp, pol, theta0 = garnet_case(kind)
    eps, lr, betas, adam_eps, epochs = 0.2, 0.05, (0.8, 0.99), 1e-6, 8
    res = ppo_update(mdp, pol, theta0, clip_eps=eps, epochs=epochs, lr=lr, adam_betas=betas, adam_eps=adam_eps)
    ev = refpg.evaluate(mdp, pol.probs(theta0))
    logp_old = torch.tensor(pol.log_probs(theta0))
    w, A = torch.tensor(ev.d)[:, None] * torch.exp(logp_old), torch.tensor(ev.A)
    t = torch.tensor(theta0, requires_grad=True)
    opt = torch.optim.Adam([t], lr=lr, betas=betas, eps=adam_eps)
    for _ in range(epochs):
        opt.zero_grad()
        r = torch.exp(torch_log_pi(pol, t) - logp_old)
        loss = -(w * torch.min(r * A, torch.clamp(r, 1 - eps, 1 + eps) * A)).sum()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(res.theta, t.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert res.n_updates == epochs and res.optimizer_state.t == epochs


def test_optimizer_state_carries_over_between_updates():
    mdp, pol, theta = garnet_case("tabular")
    first = ppo_update(mdp, pol, theta, epochs=3, lr=0.01)
    second = ppo_update(mdp, pol, first.theta, epochs=2, lr=0.01, optimizer_state=first.optimizer_state)
    assert second.optimizer_state.t == 5
    fresh = ppo_update(mdp, pol, first.theta, epochs=2, lr=0.01)
    assert not np.allclose(second.theta, fresh.theta)


# -- the update loop ------------------------------------------------------------------

def small_batch(mdp, pol, theta, seed=0, n_envs=4, n_steps=16):
    from refpg.algorithms import collect
    return collect(mdp, pol.probs(theta), SampleConfig(n_envs=n_envs, n_steps=n_steps, critic="exact"),
                   rng=np.random.default_rng(seed))


def replay_sgd(pol, theta, data, *, eps, lr, epochs, mb, seed, normalize, ddof=0, norm_eps=1e-8):
    """SGD PPO by hand from the public theta-level functions, for comparison with ppo_update."""
    rng = np.random.default_rng(seed)
    A = np.asarray(data.advantages, dtype=float)
    M = A.size
    if normalize == "batch":
        A = (A - A.mean()) / (A.std(ddof=ddof) + norm_eps)
    for _ in range(epochs):
        perm = rng.permutation(M)
        for k in range(0, M, mb):
            idx = perm[k:k + mb]
            a = A[idx]
            if normalize == "minibatch":
                a = (a - a.mean()) / (a.std(ddof=ddof) + norm_eps)
            sub = PPOSamples(data.states[idx], data.actions[idx], data.logp_old[idx], a)
            theta = theta + lr * clipped_surrogate_gradient(pol, theta, sub, eps)
    return theta


@pytest.mark.parametrize("normalize", [None, "batch", "minibatch"])
def test_sampled_minibatch_sgd_replays_by_hand(normalize):
    mdp, pol, theta = garnet_case("log_linear")
    data = small_batch(mdp, pol, theta)
    M = data.states.size
    res = ppo_update(mdp, pol, theta, mode="sampled", data=data, epochs=3, minibatch_size=10, optimizer="sgd",
                     lr=0.3, normalize_advantages=normalize, norm_ddof=1, rng=np.random.default_rng(7))
    expected = replay_sgd(pol, theta, data, eps=0.2, lr=0.3, epochs=3, mb=10, seed=7, normalize=normalize, ddof=1)
    assert_identity(res.theta, expected)
    assert res.n_updates == 3 * -(-M // 10)
    assert [h.n_updates for h in res.history] == [-(-M // 10)] * 3


def test_batch_and_minibatch_normalisation_differ_with_minibatches_and_agree_without():
    mdp, pol, theta = garnet_case("tabular")
    data = small_batch(mdp, pol, theta)
    kw = dict(mode="sampled", data=data, epochs=2, optimizer="sgd", lr=0.3)
    with_mb = {n: ppo_update(mdp, pol, theta, minibatch_size=8, normalize_advantages=n,
                             rng=np.random.default_rng(3), **kw).theta for n in ("batch", "minibatch")}
    assert np.abs(with_mb["batch"] - with_mb["minibatch"]).max() > 1e-6
    full = {n: ppo_update(mdp, pol, theta, normalize_advantages=n, **kw).theta for n in ("batch", "minibatch")}
    np.testing.assert_array_equal(full["batch"], full["minibatch"])


def test_exact_batch_normalisation_divides_by_the_d_old_pi_old_std():
    # sum_a pi_old A_old = 0 in every state, so the exact batch mean is 0 and
    # normalising only rescales A_old by 1 / (sigma + eps).
    mdp, pol, theta = garnet_case("log_linear")
    ev = refpg.evaluate(mdp, pol.probs(theta))
    sigma = np.sqrt(np.sum(ev.d[:, None] * ev.pi * ev.A ** 2))
    g = exact_clipped_surrogate_gradient(mdp, pol, theta, theta_old=theta, clip_eps=0.2)
    for norm_eps in (1e-8, 0.5):
        res = ppo_update(mdp, pol, theta, epochs=1, optimizer="sgd", lr=0.1, normalize_advantages="batch",
                         norm_eps=norm_eps)
        np.testing.assert_allclose(res.theta - theta, 0.1 * g / (sigma + norm_eps), rtol=1e-10, atol=1e-15)


def test_single_sample_minibatch_with_ddof_one_is_refused_before_any_step():
    mdp, pol, theta = garnet_case("tabular")
    data = small_batch(mdp, pol, theta)
    M = data.states.size
    assert M % 7 == 1  # 64 samples: the last minibatch of 7 holds one
    with raises(errors.InvalidInputError, "normalize_advantages='minibatch' with norm_ddof=1 needs more than 1 "
                "samples in every minibatch, but minibatch_size=7 on M=64 samples leaves a minibatch of 1"):
        ppo_update(mdp, pol, theta, mode="sampled", data=data, minibatch_size=7, normalize_advantages="minibatch",
                   norm_ddof=1, rng=np.random.default_rng(0))
    # ddof = 0 is defined on one sample (it normalises to 0) and runs without NaN.
    res = ppo_update(mdp, pol, theta, mode="sampled", data=data, minibatch_size=7, normalize_advantages="minibatch",
                     norm_ddof=0, rng=np.random.default_rng(0), epochs=2)
    assert np.isfinite(res.theta).all()


def test_sampled_mode_collects_its_own_batch_reproducibly():
    mdp, pol, theta = garnet_case("tabular")
    cfg = SampleConfig(n_envs=4, n_steps=8)
    runs = [ppo_update(mdp, pol, theta, mode="sampled", sample_config=cfg, minibatch_size=8, epochs=2, lr=0.05,
                       rng=np.random.default_rng(11)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].theta, runs[1].theta)
    assert runs[0].data.states.size == 32 and runs[0].n_updates == 8
    assert runs[0].J_before == refpg.objective(mdp, pol, theta)


def test_history_records_and_exact_summary_agree_with_the_theta_level_functions():
    mdp, pol, theta = garnet_case("tabular")
    res = ppo_update(mdp, pol, theta, epochs=4, lr=0.1)
    last = res.history[-1]
    np.testing.assert_allclose(last.surrogate, exact_clipped_surrogate(mdp, pol, res.theta, theta_old=theta, clip_eps=0.2), rtol=1e-12)
    np.testing.assert_allclose(last.mean_kl, refpg.kl_divergence(mdp, pol, res.theta, theta_old=theta), rtol=1e-12)
    np.testing.assert_allclose(res.mean_kl, last.mean_kl, rtol=1e-12)
    np.testing.assert_allclose(res.max_kl, refpg.kl_divergence(mdp, pol, res.theta, theta_old=theta, reduction="max"),
                               rtol=1e-12)
    assert (res.ratio_min, res.ratio_max) == (last.ratio_min, last.ratio_max)
    np.testing.assert_allclose(res.J_after, refpg.objective(mdp, pol, res.theta), rtol=1e-12)
    assert res.J_after > res.J_before
    # Sampled mode: the record is the batch's clip fraction and k1/k3 means.
    data = small_batch(mdp, pol, theta)
    res = ppo_update(mdp, pol, theta, mode="sampled", data=data, epochs=3, lr=0.1)
    last = res.history[-1]
    logp_new = pol.log_probs(res.theta)[data.states, data.actions]
    assert last.clip_fraction == clip_fraction(logp_new, data.logp_old, data.advantages, 0.2)
    np.testing.assert_allclose(last.approx_kl, approx_kl(logp_new, data.logp_old), rtol=1e-13)
    np.testing.assert_allclose(last.approx_kl_k1, np.mean(data.logp_old - logp_new), rtol=1e-12)
    np.testing.assert_allclose(last.mean_kl, batch_kl(pol, res.theta, theta_old=theta, states=data.states), rtol=1e-12)


# -- early stopping --------------------------------------------------------------------

def test_early_stopping_fires_above_one_and_a_half_target_kl_and_is_recorded():
    mdp, pol, theta = garnet_case("tabular")
    free = ppo_update(mdp, pol, theta, epochs=6, lr=0.1)
    kls = [h.approx_kl for h in free.history]
    assert all(np.diff(kls) > 0)
    # Every KL within 1.4 target_kl: no stop, although KL exceeds target_kl itself.
    target = kls[-1] / 1.4
    res = ppo_update(mdp, pol, theta, epochs=6, lr=0.1, target_kl=target)
    assert not res.stopped_early and res.stop_kl is None and res.n_updates == 6
    assert kls[-1] > target
    # Crossing 1.5 target_kl after epoch 3: epoch 4 stops before its step.
    target = (kls[2] / KL_STOP_FACTOR) * (1 - 1e-6)
    assert kls[1] <= KL_STOP_FACTOR * target < kls[2]
    res = ppo_update(mdp, pol, theta, epochs=6, lr=0.1, target_kl=target)
    assert res.stopped_early and res.n_updates == 3 and len(res.history) == 4
    assert [h.early_stopped for h in res.history] == [False, False, False, True]
    assert res.history[-1].n_updates == 0
    assert res.stop_kl == res.history[2].approx_kl > KL_STOP_FACTOR * target
    np.testing.assert_array_equal(res.theta, ppo_update(mdp, pol, theta, epochs=3, lr=0.1).theta)


def test_early_stopping_in_sampled_mode_uses_the_minibatch_k3_before_the_step():
    mdp, pol, theta = garnet_case("tabular")
    data = small_batch(mdp, pol, theta)
    res = ppo_update(mdp, pol, theta, mode="sampled", data=data, epochs=10, minibatch_size=16, lr=0.05,
                     target_kl=0.002, rng=np.random.default_rng(1))
    assert res.stopped_early and res.history[-1].early_stopped
    assert res.stop_kl > KL_STOP_FACTOR * 0.002
    assert res.n_updates < 40 and sum(h.n_updates for h in res.history) == res.n_updates


# -- KL penalty -------------------------------------------------------------------------

def test_adaptive_beta_doubles_and_halves_exactly_per_the_rule():
    d_targ = 0.01
    assert adapt_kl_coefficient(1.0, 0.001, d_targ) == 0.5
    assert adapt_kl_coefficient(1.0, 0.02, d_targ) == 2.0
    assert adapt_kl_coefficient(3.0, 0.01, d_targ) == 3.0
    # On the thresholds beta is kept (strict inequalities).
    assert adapt_kl_coefficient(1.0, d_targ / 1.5, d_targ) == 1.0
    assert adapt_kl_coefficient(1.0, d_targ * 1.5, d_targ) == 1.0
    assert adapt_kl_coefficient(1.0, np.nextafter(d_targ * 1.5, 1.0), d_targ) == 2.0
    assert adapt_kl_coefficient(1.0, np.nextafter(d_targ / 1.5, 0.0), d_targ) == 0.5


@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_kl_penalty_update_adapts_beta_from_the_measured_kl(mode):
    mdp, pol, theta = garnet_case("tabular")
    kw = dict(mode=mode, epochs=5, beta=1.0, d_targ=0.01)
    if mode == "sampled":
        kw["data"] = small_batch(mdp, pol, theta)
    big = ppo_kl_penalty_update(mdp, pol, theta, lr=0.2, **kw)
    small = ppo_kl_penalty_update(mdp, pol, theta, lr=1e-4, **kw)
    assert big.kl > 0.015 and big.beta == 2.0
    assert small.kl < 0.01 / 1.5 and small.beta == 0.5
    for res in (big, small):
        assert res.beta_old == 1.0 and res.beta == adapt_kl_coefficient(1.0, res.kl, 0.01)
        if mode == "exact":
            np.testing.assert_allclose(res.kl, refpg.kl_divergence(mdp, pol, res.theta, theta_old=theta), rtol=1e-12)
        else:
            np.testing.assert_allclose(res.kl, batch_kl(pol, res.theta, theta_old=theta, states=kw["data"].states), rtol=1e-12)


def test_kl_penalty_sgd_steps_use_the_penalised_gradient():
    # Two SGD epochs: the second step is at theta_1 != theta_old, where the KL gradient is not zero.
    mdp, pol, theta = garnet_case("log_linear")
    beta, lr = 3.0, 0.5
    res = ppo_kl_penalty_update(mdp, pol, theta, beta=beta, d_targ=0.01, epochs=2, optimizer="sgd", lr=lr)
    t1 = theta + lr * exact_clipped_surrogate_gradient(mdp, pol, theta, theta_old=theta, clip_eps=None)
    g1 = (exact_clipped_surrogate_gradient(mdp, pol, t1, theta_old=theta, clip_eps=None)
          - beta * refpg.kl_gradient(mdp, pol, t1, theta_old=theta))
    assert_identity(res.theta, t1 + lr * g1)
    data = small_batch(mdp, pol, theta)
    res = ppo_kl_penalty_update(mdp, pol, theta, beta=beta, d_targ=0.01, epochs=2, optimizer="sgd", lr=lr,
                                mode="sampled", data=data)
    t1 = theta + lr * clipped_surrogate_gradient(pol, theta, data, None)
    g1 = clipped_surrogate_gradient(pol, t1, data, None) - beta * batch_kl_gradient(pol, t1, theta_old=theta, states=data.states)
    assert_identity(res.theta, t1 + lr * g1)


# -- PPO does not bound the ratio --------------------------------------------------------

@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_ppo_does_not_keep_ratios_inside_the_clip_interval(mode):
    """A known property of PPO, not a bug ([Wang2019], "Truly proximal policy optimization").

    Bandit with three arms, rewards (1, 0, 0), pi_old uniform, so A_old =
    (2/3, -1/3, -1/3) and eps = 0.2. Once r_0 > 1.2 the term of arm 0 is
    clipped and its own gradient is zero, but arms 1 and 2 keep their
    unclipped terms until r < 0.8. Their gradient lowers theta_1 and theta_2,
    and through the softmax normalisation that raises pi(0) further. The
    update comes to rest only when every term is clipped: pi(1) = pi(2) just
    under 0.8/3, so pi(0) ~ 1 - 1.6/3 and r_0 ~ 1.4, far outside [0.8, 1.2].
    Small SGD steps, so this is not an overshoot of one large step. Sampled
    mode runs the same on a fixed batch of the three (s, a) pairs.
    """
    mdp = refpg.envs.bandit([1.0, 0.0, 0.0])
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.zeros((1, 3))
    kw = dict(clip_eps=0.2, epochs=300, optimizer="sgd", lr=0.03)
    if mode == "sampled":
        logp = pol.log_probs(theta)[0]
        kw["data"] = PPOSamples(np.zeros(3, dtype=int), np.arange(3), logp, np.array([2, -1, -1]) / 3)
    res = ppo_update(mdp, pol, theta, mode=mode, **kw)
    last = res.history[-1]
    assert last.ratio_max > 1.35 and res.ratio_max > 1.35
    assert last.clip_fraction == 1.0  # at rest: every term clipped, the gradient is zero
    np.testing.assert_array_equal(
        exact_clipped_surrogate_gradient(mdp, pol, res.theta, theta_old=theta, clip_eps=0.2), np.zeros((1, 3)))
    # The steps were small: the ratio drifted, it did not jump.
    assert max(abs(b.ratio_max - a.ratio_max) for a, b in zip(res.history, res.history[1:])) < 0.01


# -- bad inputs ----------------------------------------------------------------------------

def test_bad_per_sample_inputs_name_the_argument():
    with raises(errors.InvalidInputError, "clip_eps should be > 0.0, actual 0.0"):
        ppo_clip_loss([0.0], [0.0], [1.0], 0.0)
    with raises(errors.InvalidInputError, "clip_eps should be > 0.0, actual -0.1"):
        clip_fraction([0.0], [0.0], [1.0], -0.1)
    with raises(errors.ShapeError, "advantages should have the shape of logp_new, (2,), actual shape (3,)"):
        ppo_clip_loss([0.0, 0.0], [0.0, 0.0], [1.0, 2.0, 3.0], 0.2)
    with raises(errors.ShapeError, "logp_old should have the shape of logp_new, (2,), actual shape (1,)"):
        ppo_clip_grad_logp([0.0, 0.0], [0.0], [1.0, 2.0], 0.2)
    with raises(errors.NonFiniteError, "logp_new[1] is nan"):
        ppo_clip_loss([0.0, np.nan], [0.0, 0.0], [1.0, 1.0], 0.2)
    with raises(errors.NonFiniteError, "logp_old[0] is -inf"):
        ppo_clip_loss([0.0], [-np.inf], [1.0], 0.2)
    with raises(errors.ShapeError, "logp_new should hold at least one sample"):
        ppo_clip_loss([], [], [], 0.2)


def test_bad_batches_name_the_entry():
    pol = refpg.TabularSoftmax(2, 2)
    good = PPOSamples(np.array([0, 1]), np.array([1, 0]), np.log([0.5, 0.5]), np.array([1.0, -1.0]))
    with raises(errors.InvalidInputError, "data.actions[1] is 2; expected an integer in [0, 2)"):
        clipped_surrogate(pol, np.zeros((2, 2)), good._replace(actions=np.array([0, 2])), 0.2)
    with raises(errors.InvalidInputError, "data.states should be an integer array, actual dtype float64"):
        clipped_surrogate(pol, np.zeros((2, 2)), good._replace(states=np.array([0.0, 1.0])), 0.2)
    with raises(errors.ShapeError, "data.advantages should have shape (2,), actual shape (3,)"):
        clipped_surrogate(pol, np.zeros((2, 2)), good._replace(advantages=np.ones(3)), 0.2)
    with raises(errors.InvalidInputError, "data should be a refpg.algorithms.SampledData or a PPOSamples"):
        clipped_surrogate(pol, np.zeros((2, 2)), {"states": [0]}, 0.2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip_eps=0.0), "clip_eps should be > 0.0, actual 0.0"),
    (dict(epochs=0), "epochs should be >= 1, actual 0"),
    (dict(optimizer="rmsprop"), "optimizer should be one of ('adam', 'sgd'), actual 'rmsprop'"),
    (dict(minibatch_size=4), "minibatch_size should be None in exact mode"),
    (dict(normalize_advantages="bogus"),
     "normalize_advantages should be one of (None, 'batch', 'minibatch'), actual 'bogus'"),
    (dict(normalize_advantages="minibatch"), "normalize_advantages='minibatch' does not apply in exact mode"),
    (dict(mode="monte-carlo"), "mode should be one of ('exact', 'sampled'), actual 'monte-carlo'"),
    (dict(lr=-1.0), "lr should be > 0.0, actual -1.0"),
    (dict(adam_betas=(0.9, 1.0)), "adam_betas[1] should be < 1.0, actual 1.0"),
    (dict(target_kl=0.0), "target_kl should be > 0.0, actual 0.0"),
    (dict(norm_ddof=-1), "norm_ddof should be >= 0, actual -1"),
    (dict(mode="sampled"), "rng should be a numpy.random.Generator in sampled mode without data"),
    (dict(optimizer="sgd", optimizer_state=AdamState(np.zeros((5, 3)), np.zeros((5, 3)), 0)),
     "optimizer_state is Adam's state; it should be None with optimizer='sgd'"),
])
def test_bad_update_arguments_are_refused_by_name(kwargs, message):
    mdp, pol, theta = garnet_case("tabular")
    with raises(errors.InvalidInputError, message):
        ppo_update(mdp, pol, theta, **kwargs)


def test_a_batch_from_another_policy_is_refused():
    mdp, pol, theta = garnet_case("tabular")
    data = small_batch(mdp, pol, theta)
    with raises(errors.InvalidInputError, "data.logp_old[0] is"):
        ppo_update(mdp, pol, theta + 0.1 * np.arange(3), mode="sampled", data=data)
    with raises(errors.InvalidInputError, "minibatch_size should be >= 1, actual 0"):
        ppo_update(mdp, pol, theta, mode="sampled", data=data, minibatch_size=0)
    with raises(errors.InvalidInputError, "rng should be a numpy.random.Generator when minibatch_size is set"):
        ppo_update(mdp, pol, theta, mode="sampled", data=data, minibatch_size=8)


def test_bad_penalty_arguments():
    mdp, pol, theta = garnet_case("tabular")
    with raises(errors.InvalidInputError, "d_targ should be > 0.0, actual 0.0"):
        ppo_kl_penalty_update(mdp, pol, theta, beta=1.0, d_targ=0.0)
    with raises(errors.InvalidInputError, "beta should be >= 0.0, actual -1.0"):
        adapt_kl_coefficient(-1.0, 0.1, 0.01)

"""refpg.collection: exact laws of a rollout buffer and the exact mean first gradient of a pipeline.

Checked against an enumeration of every path of one environment (to 1e-10), against Monte Carlo with
refpg's own TabularEnv stepped by an auto-resetting loop (mean tests at alpha 1e-6), against torch
autograd, and on bad input.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from refpg import TabularMDP, evaluate
from refpg.collection import (COLLECTORS, expected_advantage_weights, expected_pipeline_gradient,
                              rollout_state_distribution, rollout_state_marginals)
from refpg.errors import InvalidInputError, NotADistributionError, ShapeError
from refpg.returns import gae
from refpg.stats import mean_test


def _mdp(gamma=0.8) -> TabularMDP:
    """Three live states and a terminal one, stochastic, two start states."""
    P = np.zeros((4, 2, 4))
    P[0, 0] = [0.1, 0.6, 0.2, 0.1]
    P[0, 1] = [0.0, 0.2, 0.7, 0.1]
    P[1, 0] = [0.5, 0.0, 0.3, 0.2]
    P[1, 1] = [0.0, 0.9, 0.1, 0.0]
    P[2, 0] = [0.3, 0.3, 0.4, 0.0]
    P[2, 1] = [0.0, 0.0, 0.4, 0.6]
    P[3, :, 3] = 1.0
    r = np.array([[0.5, -1.0], [2.0, 0.0], [-0.5, 3.0], [0.0, 0.0]])
    return TabularMDP(P, r, [0.7, 0.3, 0.0, 0.0], gamma, terminal=[False, False, False, True], name="test4")


PI = np.array([[0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.5, 0.5]])


def _paths(mdp, pi, T, L):
    """Every path of one environment over T steps: (probability, [(s, a, r, s_final, term, trunc, s_next)])."""
    S, A = mdp.n_states, mdp.n_actions
    paths = [(rho_s, s, 0, ()) for s, rho_s in enumerate(mdp.rho) if rho_s > 0]
    for _ in range(T):
        grown = []
        for prob, s, k, steps in paths:
            for a, s2 in itertools.product(range(A), range(S)):
                p = prob * pi[s, a] * mdp.P[s, a, s2]
                if p == 0:
                    continue
                term = bool(mdp.terminal[s2])
                trunc = (not term) and L is not None and k + 1 >= L
                if term or trunc:
                    for s0 in np.flatnonzero(mdp.rho > 0):
                        grown.append((p * mdp.rho[s0], int(s0), 0,
                                      steps + ((s, a, mdp.r[s, a], s2, term, trunc, int(s0)),)))
                else:
                    grown.append((p, s2, k + 1, steps + ((s, a, mdp.r[s, a], s2, False, False, s2),)))
        paths = grown
    return paths


def _advantages(steps, V, gamma, lam, collector):
    """GAE of one path as each collector computes it, through refpg.returns.gae or a plain loop."""
    s, a, r, fin, term, trunc, nxt = (np.array(x) for x in zip(*steps))
    v, nv = V[s], V[fin]
    if collector == "truncation_as_termination":
        return gae(r, v, nv, term | trunc, np.zeros_like(trunc), gamma, lam)
    if collector == "truncation_bootstraps_reset":
        nv = np.where(trunc, V[nxt], nv)
    elif collector == "truncation_bootstraps_current":
        nv = np.where(trunc, v, nv)
    elif collector == "last_step_not_bootstrapped" and not (term[-1] or trunc[-1]):
        nv = nv.copy()
        nv[-1] = 0.0
    if collector == "gae_across_episodes":
        delta = r + np.where(term, 0.0, gamma * nv) - v
        out, acc = np.zeros(len(r)), 0.0
        for t in reversed(range(len(r))):
            acc = delta[t] + gamma * lam * acc
            out[t] = acc
        return out
    return gae(r, v, nv, term, trunc, gamma, lam)


def _enumerated(mdp, pi, T, L, V, gamma, lam, collector, ent_coef=0.0):
    """(p_t (T, S), w (S, A), mean gradient of -(1/T) sum_t [log pi(a_t|s_t) A_t + c_e H(s_t)] in the logits)."""
    S, A = pi.shape
    p = np.zeros((T, S))
    w = np.zeros((S, A))
    g = np.zeros((S, A))
    logp = np.log(pi)
    H = -(pi * logp).sum(axis=1)
    dH = -pi * (logp + H[:, None])
    for prob, _, _, steps in _paths(mdp, pi, T, L):
        adv = _advantages(steps, V, gamma, lam, collector)
        for t, (s, a, *_rest) in enumerate(steps):
            p[t, s] += prob
            w[s, a] += prob * adv[t] / T
            score = -pi[s].copy()
            score[a] += 1.0
            g[s] -= prob * (score * adv[t] + ent_coef * dH[s]) / T
    return p, w, g


@pytest.mark.parametrize("T, L", [(4, 2), (3, 3), (3, None), (2, 5), (3, 1)])
def test_state_marginals_equal_enumeration(T, L):
    mdp = _mdp()
    p, _, _ = _enumerated(mdp, PI, T, L, np.zeros(4), 0.8, 0.9, "correct")
    np.testing.assert_allclose(rollout_state_marginals(mdp, PI, T, L), p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rollout_state_distribution(mdp, PI, T, L), p.mean(axis=0), rtol=0, atol=1e-12)
    by_age = rollout_state_marginals(mdp, PI, T, L, by_age=True)
    assert by_age.shape == (T, 1 if L is None else min(L, T), 4)
    np.testing.assert_allclose(by_age.sum(axis=1), p, rtol=0, atol=1e-12)
    assert np.all(p[:, 3] == 0)  # never at a terminal state: it is reset in the step that enters it


@pytest.mark.parametrize("collector", list(COLLECTORS))
@pytest.mark.parametrize("T, L", [(4, 2), (3, None)])
def test_advantage_weights_and_gradient_equal_enumeration_for_every_collector(collector, T, L):
    mdp = _mdp()
    V = np.array([1.5, -0.7, 2.2, 0.9])  # any critic (the terminal entry never counts)
    gamma, lam, ent = 0.7, 0.6, 0.05
    _, w, g = _enumerated(mdp, PI, T, L, V, gamma, lam, collector, ent_coef=ent)
    got_w = expected_advantage_weights(mdp, PI, T, L, gae_lambda=lam, gamma=gamma, values=V, collector=collector)
    np.testing.assert_allclose(got_w, w, rtol=0, atol=1e-10)
    res = expected_pipeline_gradient(mdp, PI, T, L, gae_lambda=lam, gamma=gamma, values=V, collector=collector,
                                     ent_coef=ent, scale=3.0)
    np.testing.assert_allclose(res.actor_w, 3.0 * g, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.actor_b, 3.0 * g.sum(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.advantage_weights, w, rtol=0, atol=1e-10)


def test_collectors_differ_from_correct_on_the_enumerated_case():
    # Every wrong collector changes the mean on this case (else the enumeration test above proves less),
    # with the exact critic, except GAE run across episode ends: after a reset, each later delta still has
    # mean 0 given the past, so with the exact critic that bug costs variance only. With another critic it
    # changes the mean too.
    mdp = _mdp()
    T, L = 4, 2
    base = expected_advantage_weights(mdp, PI, T, L, gae_lambda=0.6)
    V = np.array([1.5, -0.7, 2.2, 0.9])
    for name in COLLECTORS:
        if name == "correct":
            continue
        other = expected_advantage_weights(mdp, PI, T, L, gae_lambda=0.6, collector=name)
        if name == "gae_across_episodes":
            np.testing.assert_allclose(other, base, rtol=0, atol=1e-12)
            other = expected_advantage_weights(mdp, PI, T, L, gae_lambda=0.6, collector=name, values=V)
            assert np.max(np.abs(other - expected_advantage_weights(mdp, PI, T, L, gae_lambda=0.6, values=V))) > 1e-3
        else:
            assert np.max(np.abs(other - base)) > 1e-3, name


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("L", [3, None])
def test_exact_critic_makes_gae_conditionally_unbiased_for_every_lambda(lam, L):
    mdp = _mdp()
    ev = evaluate(mdp, PI)
    T = 7
    nu = rollout_state_distribution(mdp, PI, T, L)
    w = expected_advantage_weights(mdp, PI, T, L, gae_lambda=lam)
    np.testing.assert_allclose(w, nu[:, None] * PI * ev.A, rtol=0, atol=1e-12)
    g = expected_pipeline_gradient(mdp, PI, T, L, gae_lambda=lam).actor_w
    np.testing.assert_allclose(g, -nu[:, None] * PI * ev.A, rtol=0, atol=1e-12)  # sum_a pi A = 0


def test_gradient_is_autograd_of_the_expected_loss():
    torch = pytest.importorskip("torch")
    mdp = _mdp()
    logits = np.array([[0.3, -0.2], [1.0, 0.1], [-0.4, 0.6], [0.0, 0.0]])
    pi = np.exp(logits - logits.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    V = np.array([0.4, 1.1, -0.3, 0.0])
    c, ce = 2.5, 0.3
    res = expected_pipeline_gradient(mdp, pi, 5, 2, gae_lambda=0.8, values=V, scale=c, ent_coef=ce)
    b0 = np.array([0.2, -0.1])  # logits = W + b with the same total
    W = torch.tensor(logits - b0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    logp = torch.log_softmax(W + b, dim=1)
    H = -(logp.exp() * logp).sum(1)
    weights = torch.tensor(res.advantage_weights)
    nu = torch.tensor(res.state_distribution)
    loss = -c * (weights * logp).sum() - c * ce * (nu * H).sum()
    gW, gb = torch.autograd.grad(loss, (W, b))
    np.testing.assert_allclose(res.actor_w, gW.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.actor_b, gb.numpy(), rtol=1e-12, atol=1e-14)


def _rollouts(mdp, pi, T, L, n, seed):
    """n independent single-env buffers from refpg.envs.TabularEnv, reset in the step an episode ends."""
    from refpg.envs import TabularEnv

    env = TabularEnv(mdp, max_episode_steps=L)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s, _ = env.reset(seed=int(rng.integers(2**31)))
        steps = []
        for _ in range(T):
            a = int(rng.choice(mdp.n_actions, p=pi[s]))
            s2, r, term, trunc, _ = env.step(a)
            nxt = env.reset()[0] if term or trunc else s2
            steps.append((s, a, r, s2, term, trunc, nxt))
            s = nxt
        out.append(steps)
    return out


def test_monte_carlo_with_tabular_env_matches_marginals_and_gradient():
    mdp = _mdp(gamma=0.9)
    T, L, lam = 6, 3, 0.9
    V = evaluate(mdp, PI).V
    runs = _rollouts(mdp, PI, T, L, 6000, seed=5)
    onehot = np.zeros((len(runs), T, 3))  # the live states; the terminal one is never observed
    grads = np.zeros((len(runs), 3, 1))
    for i, steps in enumerate(runs):
        adv = _advantages(steps, V, mdp.gamma, lam, "correct")
        for t, (s, a, *_rest) in enumerate(steps):
            assert s != 3
            onehot[i, t, s] = 1.0
            score = -PI[s].copy()
            score[a] += 1.0
            grads[i, s, 0] -= score[0] * adv[t] / T
    p = rollout_state_marginals(mdp, PI, T, L)
    test = mean_test(onehot[:, :, :2], p[:, :2], student=True)  # the third live state is 1 - the others
    assert not test.rejected, str(test)
    exact = expected_pipeline_gradient(mdp, PI, T, L, gae_lambda=lam).actor_w
    test = mean_test(grads, exact[:3, :1], student=True)
    assert not test.rejected, str(test)
    # Power: the same draws reject the truncation-as-termination mean.
    wrong = expected_pipeline_gradient(mdp, PI, T, L, gae_lambda=lam, collector="truncation_as_termination")
    assert mean_test(grads, wrong.actor_w[:3, :1], student=True).rejected


def test_nu_tends_to_d_when_every_step_ends_the_episode_with_probability_one_minus_gamma():
    # P(terminal | s, a) = 1 - gamma everywhere, the rest as in a discounted MDP: the reset chain's stationary
    # law is d, and nu_T - d = O(1/T).
    gamma = 0.8
    base = _mdp(gamma)
    P = np.zeros((4, 2, 4))
    P[:3, :, :3] = gamma * base.P[:3, :, :3] / base.P[:3, :, :3].sum(axis=2, keepdims=True)
    P[:3, :, 3] = 1.0 - gamma
    P[3, :, 3] = 1.0
    coin = TabularMDP(P, base.r, base.rho, gamma, terminal=base.terminal)
    mdp = TabularMDP(P[:3, :, :3] / gamma, base.r[:3], base.rho[:3], gamma)  # the same chain, discounted
    d = evaluate(mdp, PI[:3]).d
    errors = [np.abs(rollout_state_distribution(coin, PI, T)[:3] - d).max() for T in (100, 1000)]
    assert errors[1] < errors[0] / 5 and errors[1] < 2e-3
    # With a time limit the weighting is no longer d.
    assert np.abs(rollout_state_distribution(coin, PI, 1000, 2)[:3] - d).max() > 1e-2


def test_bad_inputs_are_named():
    mdp = _mdp()
    with pytest.raises(InvalidInputError, match="mdp should be"):
        rollout_state_marginals("mdp", PI, 3)
    with pytest.raises(ShapeError, match="pi should have shape"):
        rollout_state_marginals(mdp, PI[:3], 3)
    with pytest.raises(NotADistributionError, match=r"pi\[1, :\]"):
        rollout_state_marginals(mdp, PI + np.array([[0, 0], [0.1, 0], [0, 0], [0, 0]]), 3)
    with pytest.raises(InvalidInputError, match="n_steps should be >= 1"):
        rollout_state_marginals(mdp, PI, 0)
    with pytest.raises(InvalidInputError, match="max_episode_steps should be an integer"):
        rollout_state_distribution(mdp, PI, 3, 2.5)
    with pytest.raises(InvalidInputError, match="collector should be one of .*did you mean 'correct'"):
        expected_advantage_weights(mdp, PI, 3, collector="corect")
    with pytest.raises(InvalidInputError, match="gae_lambda should be <= 1"):
        expected_advantage_weights(mdp, PI, 3, gae_lambda=1.5)
    with pytest.raises(ShapeError, match="values should have shape"):
        expected_pipeline_gradient(mdp, PI, 3, values=np.zeros(3))
    with pytest.raises(InvalidInputError, match=r"values\[2\] is nan"):
        expected_pipeline_gradient(mdp, PI, 3, values=np.array([0.0, 1.0, np.nan, 0.0]))
    with pytest.raises(InvalidInputError, match="scale should be a finite real number"):
        expected_pipeline_gradient(mdp, PI, 3, scale=np.inf)
    with pytest.raises(InvalidInputError, match="gamma should be in"):
        expected_pipeline_gradient(mdp, PI, 3, gamma=1.5)


def test_sparse_mdp_gives_the_dense_answers():
    import scipy.sparse as sp

    mdp = _mdp()
    sparse = TabularMDP(sp.csr_array(mdp.P.reshape(8, 4)), mdp.r, mdp.rho, mdp.gamma, terminal=mdp.terminal)
    np.testing.assert_allclose(rollout_state_marginals(sparse, PI, 5, 2), rollout_state_marginals(mdp, PI, 5, 2),
                               rtol=0, atol=1e-15)
    for name in COLLECTORS:
        np.testing.assert_allclose(
            expected_pipeline_gradient(sparse, PI, 5, 2, collector=name, ent_coef=0.1).actor_w,
            expected_pipeline_gradient(mdp, PI, 5, 2, collector=name, ent_coef=0.1).actor_w, rtol=0, atol=1e-13)

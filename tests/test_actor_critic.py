"""refpg.algorithms.actor_critic: the whole-update reference, against finite differences and torch.

The loss gradient is checked against central finite differences and torch autograd on configurations
away from the kinks; the whole update (epochs, minibatches, clipping, optimisers) against an
independent torch float64 implementation written here with torch.optim and clip_grad_norm_.
"""

import itertools

import numpy as np
import pytest

from refpg.algorithms.actor_critic import (ACParams, OptimizerState, UpdateBatch, UpdateConfig, actor_critic_update,
                                           batch_advantages, check_batch, check_params, flat_index, minibatch_loss,
                                           policy_tables)
from refpg.errors import InvalidInputError, ShapeError

S, A, T, N = 4, 3, 6, 2


def make(seed, *, actor_bias=True, critic_bias=True, shape=(T, N)):
    rng = np.random.default_rng(seed)
    p = ACParams(rng.normal(size=(S, A)), rng.normal(size=A) if actor_bias else None, rng.normal(size=S),
                 np.asarray(rng.normal()) if critic_bias else None)
    logp, _ = policy_tables(p)
    st, ac, ns = rng.integers(0, S, shape), rng.integers(0, A, shape), rng.integers(0, S, shape)
    v = p.state_values()
    batch = UpdateBatch(st, ac, rng.normal(size=shape), rng.random(shape) < 0.2, rng.random(shape) < 0.2, ns,
                        logp[st, ac], v[st], v[ns])
    return p, batch, rng


CONFIGS = [
    dict(),
    dict(algorithm="a2c", ent_coef=0.05, value_loss="half_mse"),
    dict(clip_range_vf=0.2, value_clip="prediction", ent_coef=0.01),
    dict(clip_range_vf=0.2, value_clip="max", value_loss="half_mse", ent_coef=0.02),
    dict(value_loss="smooth_l1", vf_coef=1.0, ent_coef=0.01, clip_range_vf=0.3, value_clip="max"),
]


def _samples(p, batch, rng, B=8):
    """A minibatch of B samples at parameters moved away from those that collected it (ratios != 1)."""
    idx = rng.choice(batch.states.size, size=B, replace=False)
    flat = {k: getattr(batch, k).reshape(-1)[idx] for k in ("states", "actions", "logp_old", "values")}
    adv, ret = (x.reshape(-1)[idx] for x in batch_advantages(batch, UpdateConfig()))
    moved = ACParams(*(None if t is None else np.asarray(t + 0.3 * rng.normal(size=np.shape(t))) for t in p))
    return moved, flat, adv, ret


@pytest.mark.parametrize("opts", CONFIGS)
def test_loss_gradient_matches_central_differences(opts):
    p, batch, rng = make(1)
    cfg = UpdateConfig(**opts)
    moved, flat, adv, ret = _samples(p, batch, rng)
    g = minibatch_loss(moved, flat, adv, ret, cfg).grad
    h = 1e-6
    for name in moved.present():
        base = getattr(moved, name)
        for i in np.ndindex(base.shape):
            up, dn = base.copy(), base.copy()
            up[i] += h
            dn[i] -= h
            fd = (minibatch_loss(moved._replace(**{name: up}), flat, adv, ret, cfg).loss
                  - minibatch_loss(moved._replace(**{name: dn}), flat, adv, ret, cfg).loss) / (2 * h)
            assert getattr(g, name)[i] == pytest.approx(fd, rel=1e-6, abs=1e-8), (name, i)


# -- an independent torch implementation ---------------------------------------------------------

def _torch_loss(tp, flat, adv, ret, cfg):
    import torch
    s = torch.as_tensor(flat["states"])
    a = torch.as_tensor(flat["actions"])
    logits = tp["actor_w"][s] + (tp["actor_b"] if "actor_b" in tp else 0.0)
    dist = torch.distributions.Categorical(logits=logits)
    logp = dist.log_prob(a)
    adv, ret = torch.as_tensor(adv), torch.as_tensor(ret)
    if cfg.algorithm == "ppo":
        ratio = torch.exp(logp - torch.as_tensor(flat["logp_old"]))
        pg = -torch.min(ratio * adv, torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range) * adv).mean()
    else:
        pg = -(logp * adv).mean()
    v = tp["critic_w"][s] + (tp["critic_b"] if "critic_b" in tp else 0.0)

    def ell(x):
        if cfg.value_loss == "smooth_l1":
            return torch.nn.functional.smooth_l1_loss(x, ret, reduction="none")
        sq = (x - ret) ** 2
        return sq if cfg.value_loss == "mse" else 0.5 * sq

    if cfg.clip_range_vf is None:
        vl = ell(v).mean()
    else:
        v_old = torch.as_tensor(flat["values"])
        vc = v_old + torch.clamp(v - v_old, -cfg.clip_range_vf, cfg.clip_range_vf)
        vl = ell(vc).mean() if cfg.value_clip == "prediction" else torch.max(ell(v), ell(vc)).mean()
    return pg + cfg.vf_coef * vl - cfg.ent_coef * dist.entropy().mean()


@pytest.mark.parametrize("opts", CONFIGS)
def test_loss_and_gradient_match_torch_autograd(opts):
    torch = pytest.importorskip("torch")
    p, batch, rng = make(2)
    cfg = UpdateConfig(**opts)
    moved, flat, adv, ret = _samples(p, batch, rng)
    terms = minibatch_loss(moved, flat, adv, ret, cfg)
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in moved.as_dict().items()}
    loss = _torch_loss(tp, flat, adv, ret, cfg)
    loss.backward()
    assert terms.loss == pytest.approx(loss.item(), rel=1e-12)
    for k, t in tp.items():
        np.testing.assert_allclose(getattr(terms.grad, k), t.grad.numpy(), rtol=1e-10, atol=1e-13)


def _torch_update(p, batch, cfg, perms):
    """The update written with torch.optim and clip_grad_norm_, as a library writes it (float64)."""
    import torch
    from refpg.algorithms.actor_critic import _flatten

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.as_dict().items()}
    actor = [tp[k] for k in tp if k.startswith("actor")]
    critic = [tp[k] for k in tp if k.startswith("critic")]

    def opt(params, lr):
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, betas=cfg.betas, eps=cfg.eps)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)

    opts = [opt(actor + critic, cfg.lr)] if cfg.critic_lr is None else [opt(actor, cfg.lr), opt(critic, cfg.critic_lr)]
    adv2, ret2 = batch_advantages(batch, cfg)
    adv, ret = _flatten(adv2, cfg), _flatten(ret2, cfg)
    flat = {k: _flatten(getattr(batch, k), cfg) for k in ("states", "actions", "logp_old", "values")}
    if cfg.normalize_advantage == "batch":
        adv = (adv - adv.mean()) / (adv.std(ddof=cfg.norm_ddof) + cfg.norm_eps)
    out = []
    for perm in perms:
        B = cfg.minibatch_size or perm.size
        for k in range(0, perm.size, B):
            idx = perm[k:k + B]
            a = adv[idx]
            if cfg.normalize_advantage == "minibatch" and a.size > 1:
                a = (a - a.mean()) / (a.std(ddof=cfg.norm_ddof) + cfg.norm_eps)
            loss = _torch_loss(tp, {kk: v[idx] for kk, v in flat.items()}, a, ret[idx], cfg)
            for o in opts:
                o.zero_grad()
            loss.backward()
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.grad) for t in tp.values()]))
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(tp.values()), cfg.max_grad_norm)
            for o in opts:
                o.step()
            out.append((loss.item(), norm.item(), {k: t.detach().numpy().copy() for k, t in tp.items()}))
    return out


UPDATES = [
    dict(minibatch_size=4, n_epochs=3, normalize_advantage="minibatch", max_grad_norm=0.5, ent_coef=0.01,
         lr=0.05, eps=1e-5),
    dict(minibatch_size=5, n_epochs=2, clip_range_vf=0.1, value_clip="max", value_loss="half_mse", lr=0.1,
         normalize_advantage="batch", flatten="env_major"),
    dict(minibatch_size=3, n_epochs=2, optimizer="sgd", momentum=0.9, lr=0.2, max_grad_norm=0.3),
    dict(minibatch_size=6, n_epochs=2, critic_lr=0.3, lr=0.05, value_loss="smooth_l1", max_grad_norm=1.0),
    dict(algorithm="a2c", optimizer="rmsprop", alpha=0.99, eps=1e-5, lr=0.01, max_grad_norm=0.5, ent_coef=0.01),
]


@pytest.mark.parametrize("opts", UPDATES)
def test_whole_update_matches_a_torch_optim_implementation(opts):
    pytest.importorskip("torch")
    cfg = UpdateConfig(**opts)
    p, batch, rng = make(3)
    M = batch.states.size
    perms = np.arange(M)[None] if cfg.algorithm == "a2c" else np.stack([rng.permutation(M) for _ in range(cfg.n_epochs)])
    ref = actor_critic_update(batch, p, cfg, order=None if cfg.algorithm == "a2c" else perms)
    theirs = _torch_update(p, batch, cfg, perms)
    assert len(ref.steps) == len(theirs) == cfg.total_steps(M)
    for step, (loss, norm, params) in zip(ref.steps, theirs):
        assert step.loss == pytest.approx(loss, rel=1e-10)
        assert step.grad_norm == pytest.approx(norm, rel=1e-10)
        for k, v in params.items():
            np.testing.assert_allclose(getattr(step.params, k), v, rtol=1e-10, atol=1e-12)


def test_flat_index_numbers_samples_as_declared():
    cfg_t, cfg_e = UpdateConfig(flatten="time_major"), UpdateConfig(flatten="env_major")
    assert flat_index((3, 2), cfg_t).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert flat_index((3, 2), cfg_e).tolist() == [[0, 3], [1, 4], [2, 5]]


def test_minibatches_cover_every_sample_once_per_epoch():
    p, batch, rng = make(4)
    res = actor_critic_update(batch, p, UpdateConfig(minibatch_size=5, n_epochs=3), rng=rng)
    assert len(res.steps) == 3 * 3
    for e in range(3):
        idx = np.concatenate([s.indices for s in res.steps if s.epoch == e])
        assert sorted(idx.tolist()) == list(range(12))
    assert [s.indices.size for s in res.steps[:3]] == [5, 5, 2]


def test_target_kl_stops_before_the_offending_step():
    p, batch, rng = make(5)
    cfg = UpdateConfig(minibatch_size=4, n_epochs=10, lr=0.5, target_kl=0.01)
    res = actor_critic_update(batch, p, cfg, rng=rng)
    assert res.stopped_early and 0 < len(res.steps) < cfg.total_steps(12)
    assert all(s.approx_kl <= 1.5 * 0.01 for s in res.steps)


def test_first_step_has_ratio_one_and_a2c_takes_one_step():
    p, batch, rng = make(6)
    res = actor_critic_update(batch, p, UpdateConfig(minibatch_size=4), rng=rng)
    assert res.steps[0].approx_kl == pytest.approx(0.0, abs=1e-15) and res.steps[0].clip_fraction == 0.0
    a2c = actor_critic_update(batch, p, UpdateConfig(algorithm="a2c", n_epochs=7, minibatch_size=2))
    assert len(a2c.steps) == 1 and a2c.steps[0].indices.tolist() == list(range(12))


def test_two_optimisers_keep_separate_learning_rates():
    p, batch, rng = make(7)
    only_actor = actor_critic_update(batch, p, UpdateConfig(critic_lr=0.0, lr=0.1, n_epochs=1))
    np.testing.assert_array_equal(only_actor.params.critic_w, p.critic_w)
    assert not np.allclose(only_actor.params.actor_w, p.actor_w)
    assert isinstance(only_actor.optimizer_state, OptimizerState) and only_actor.optimizer_state.critic is not None


def test_advantages_are_gae_with_the_contract_flags():
    p, batch, _ = make(8)
    adv, ret = batch_advantages(batch, UpdateConfig(gamma=0.9, gae_lambda=0.0))
    delta = batch.rewards + np.where(batch.terminated, 0.0, 0.9 * batch.next_values) - batch.values
    np.testing.assert_allclose(adv, delta, rtol=1e-14)
    np.testing.assert_allclose(ret, adv + batch.values, rtol=1e-14)


# -- bad input -------------------------------------------------------------------------------------

def test_bad_params_are_named():
    p, batch, rng = make(9)
    with pytest.raises(InvalidInputError, match="params is missing 'critic_w'"):
        check_params({"actor_w": p.actor_w})
    with pytest.raises(InvalidInputError, match="unknown key 'actor_bias'"):
        check_params({**p.as_dict(), "actor_bias": p.actor_b})
    with pytest.raises(ShapeError, match=r"params\['critic_w'\]"):
        check_params({**p.as_dict(), "critic_w": np.zeros(S + 1)})
    with pytest.raises(ShapeError, match="critic_b.*scalar"):
        check_params({**p.as_dict(), "critic_b": np.zeros(2)})
    with pytest.raises(InvalidInputError, match=r"params\['actor_w'\]"):
        check_params({**p.as_dict(), "actor_w": np.full((S, A), np.nan)})


def test_bad_batches_are_named():
    p, batch, rng = make(10)
    bad = batch._replace(actions=np.where(batch.actions == 0, A, batch.actions))
    with pytest.raises(InvalidInputError, match=r"batch\['actions'\]\[.*\] is 3; expected an integer in \[0, 3\)"):
        check_batch(bad, S, A)
    with pytest.raises(ShapeError, match=r"batch\['rewards'\] should have shape \(6, 2\)"):
        check_batch(batch._replace(rewards=np.zeros((6, 3))), S, A)
    with pytest.raises(InvalidInputError, match=r"batch\['logp_old'\]\[0, 0\] is 0.5"):
        lp = batch.logp_old.copy()
        lp[0, 0] = 0.5
        check_batch(batch._replace(logp_old=lp), S, A)
    with pytest.raises(InvalidInputError, match=r"batch\['terminated'\]\[.*\] should be a bool"):
        check_batch(batch._replace(terminated=np.full(batch.shape, 2)), S, A)
    with pytest.raises(InvalidInputError, match="batch is missing 'next_values'"):
        check_batch({k: v for k, v in batch._asdict().items() if k != "next_values"}, S, A)


def test_bad_configs_and_orders_are_named():
    p, batch, rng = make(11)
    with pytest.raises(InvalidInputError, match="value_clip"):
        UpdateConfig(value_clip="both")
    with pytest.raises(InvalidInputError, match="clip_range should be > 0"):
        UpdateConfig(clip_range=0.0)
    with pytest.raises(InvalidInputError, match="no option 'clip_vf'"):
        UpdateConfig.from_options({"clip_vf": 0.2})
    with pytest.raises(InvalidInputError, match="rng should be a numpy.random.Generator"):
        actor_critic_update(batch, p, UpdateConfig(minibatch_size=4))
    with pytest.raises(InvalidInputError, match=r"order\[1\] should be a permutation of range\(12\)"):
        actor_critic_update(batch, p, UpdateConfig(minibatch_size=4, n_epochs=2),
                            order=np.stack([np.arange(12), np.zeros(12, dtype=int)]))
    with pytest.raises(ShapeError, match=r"order should have shape \(n_epochs, M\) = \(2, 12\)"):
        actor_critic_update(batch, p, UpdateConfig(minibatch_size=4, n_epochs=2), order=np.arange(12)[None])


# -- exact mode --------------------------------------------------------------------------------------

def _exact_case(seed, terminal=False):
    from refpg.envs.classic import episodic_garnet, garnet

    mdp = episodic_garnet(5, 3, 2, seed=seed) if terminal else garnet(5, 3, 2, seed=seed, gamma=0.9)
    rng = np.random.default_rng(seed)
    p = ACParams(rng.normal(size=(mdp.n_states, mdp.n_actions)), rng.normal(size=mdp.n_actions),
                 rng.normal(size=mdp.n_states), np.asarray(0.2))
    return mdp, p


@pytest.mark.parametrize("terminal", [False, True])
def test_exact_gae_identities(terminal):
    from refpg.algorithms.actor_critic import exact_gae
    from refpg.evaluation import policy_evaluation

    mdp, p = _exact_case(12, terminal)
    ev = policy_evaluation(mdp, policy_tables(p)[1])
    live = ~mdp.terminal
    # lambda = 1: the mean advantage plus the critic is Q, whatever the critic.
    a1 = exact_gae(mdp, p, UpdateConfig(gamma=mdp.gamma, gae_lambda=1.0))
    np.testing.assert_allclose((a1 + p.state_values()[:, None])[live], ev.Q[live], rtol=1e-10, atol=1e-12)
    # The exact critic: the mean advantage is A^pi for every lambda.
    exact = p._replace(critic_w=ev.V.copy(), critic_b=None)
    for lam in (0.0, 0.5, 0.95):
        np.testing.assert_allclose(exact_gae(mdp, exact, UpdateConfig(gamma=mdp.gamma, gae_lambda=lam))[live],
                                   ev.A[live], rtol=1e-10, atol=1e-12)


def test_exact_a2c_gradient_is_the_policy_gradient():
    from refpg.algorithms.actor_critic import exact_actor_critic_update
    from refpg.evaluation import policy_evaluation
    from refpg.gradient import policy_gradient
    from refpg.policies import TabularSoftmax

    mdp, p = _exact_case(13)
    p = p._replace(actor_b=None)  # a logits table: TabularSoftmax's parameters
    ev = policy_evaluation(mdp, policy_tables(p)[1])
    exact = p._replace(critic_w=ev.V.copy(), critic_b=None)
    res = exact_actor_critic_update(mdp, exact, UpdateConfig(algorithm="a2c", gamma=mdp.gamma, vf_coef=0.0,
                                                             optimizer="sgd", lr=1.0))
    grad_J = policy_gradient(mdp, TabularSoftmax(mdp.n_states, mdp.n_actions), exact.actor_w)
    np.testing.assert_allclose(res.steps[0].grad.actor_w, -(1 - mdp.gamma) * grad_J, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.params.actor_w, exact.actor_w + (1 - mdp.gamma) * grad_J, rtol=1e-10, atol=1e-13)


def test_exact_ppo_policy_loss_is_the_exact_clipped_surrogate():
    from refpg.algorithms.actor_critic import exact_actor_critic_update
    from refpg.algorithms.ppo import exact_clipped_surrogate
    from refpg.evaluation import policy_evaluation
    from refpg.policies import TabularSoftmax

    mdp, p = _exact_case(14)
    p = p._replace(actor_b=None)
    ev = policy_evaluation(mdp, policy_tables(p)[1])
    exact = p._replace(critic_w=ev.V.copy(), critic_b=None)
    res = exact_actor_critic_update(mdp, exact, UpdateConfig(gamma=mdp.gamma, n_epochs=3, lr=0.3, vf_coef=0.7,
                                                             ent_coef=0.05, max_grad_norm=0.4))
    pol = TabularSoftmax(mdp.n_states, mdp.n_actions)
    for before, step in zip((exact,) + tuple(s.params for s in res.steps), res.steps):
        L = exact_clipped_surrogate(mdp, pol, before.actor_w, theta_old=exact.actor_w, clip_eps=0.2)
        assert step.policy_loss == pytest.approx(-L, rel=1e-10, abs=1e-13)
    # The exact critic: the value loss is the variance of Q around V, and its gradient is zero.
    np.testing.assert_allclose(res.steps[0].grad.critic_w, 0.0, atol=1e-14)
    assert res.steps[1].grad_norm > 0 and len(res.steps) == 3


def test_exact_mode_gradient_matches_central_differences():
    from refpg.algorithms.actor_critic import exact_actor_critic_update

    mdp, p = _exact_case(15, terminal=True)
    cfg = UpdateConfig(gamma=0.9, gae_lambda=0.7, clip_range_vf=0.3, value_clip="max", ent_coef=0.03,
                       optimizer="sgd", lr=0.0, n_epochs=1)
    step = exact_actor_critic_update(mdp, p, cfg).steps[0]
    # Through the weighted minibatch loss at moved parameters (the same expectation the step uses).
    from refpg.algorithms.actor_critic import exact_gae
    logp_old, pi_old = policy_tables(p)
    from refpg.evaluation import policy_evaluation
    d = policy_evaluation(mdp, pi_old).d
    om = d[:, None] * pi_old
    s, a = np.nonzero(om > 0)
    w = om[s, a] / om[s, a].sum()
    A_ = exact_gae(mdp, p, cfg)
    samples = {"states": s, "actions": a, "logp_old": logp_old[s, a], "values": p.state_values()[s]}
    adv, ret = A_[s, a], (A_ + p.state_values()[:, None])[s, a]
    assert minibatch_loss(p, samples, adv, ret, cfg, weights=w).loss == pytest.approx(step.loss, rel=1e-12)
    rng = np.random.default_rng(0)
    moved = ACParams(*(np.asarray(t + 0.3 * rng.normal(size=np.shape(t))) for t in p))
    g = minibatch_loss(moved, samples, adv, ret, cfg, weights=w).grad
    h = 1e-6
    for name in moved.present():
        base = getattr(moved, name)
        for i in np.ndindex(base.shape):
            up, dn = base.copy(), base.copy()
            up[i] += h
            dn[i] -= h
            fd = (minibatch_loss(moved._replace(**{name: up}), samples, adv, ret, cfg, weights=w).loss
                  - minibatch_loss(moved._replace(**{name: dn}), samples, adv, ret, cfg, weights=w).loss) / (2 * h)
            assert getattr(g, name)[i] == pytest.approx(fd, rel=1e-6, abs=1e-9), (name, i)


def test_exact_mode_refuses_minibatches_and_a_wrong_shape():
    from refpg.algorithms.actor_critic import exact_actor_critic_update

    mdp, p = _exact_case(16)
    with pytest.raises(InvalidInputError, match="exact mode has no minibatches"):
        exact_actor_critic_update(mdp, p, UpdateConfig(minibatch_size=4))
    with pytest.raises(ShapeError, match=r"params\['actor_w'\] should have shape \(S, A\) = \(5, 3\)"):
        exact_actor_critic_update(mdp, {"actor_w": np.zeros((4, 3)), "critic_w": np.zeros(4)})


def test_declared_library_conventions_cut_time_limits_and_clamp_the_std():
    p, batch, rng = make(17)
    cut = batch_advantages(batch, UpdateConfig(truncation="cut", gamma=0.9, gae_lambda=0.7))[0]
    as_done = batch_advantages(batch._replace(terminated=batch.terminated | batch.truncated),
                               UpdateConfig(gamma=0.9, gae_lambda=0.7))[0]
    np.testing.assert_array_equal(cut, as_done)
    from refpg.algorithms.actor_critic import _normalize
    a = np.array([1.0, 1.0 + 1e-9, 1.0])
    clamp = _normalize(a, UpdateConfig(normalize_advantage="minibatch", norm_eps=1e-6, norm_eps_on="clamp"))
    np.testing.assert_allclose(clamp, (a - a.mean()) / 1e-6, rtol=1e-12)
    with pytest.raises(InvalidInputError, match="norm_eps should be > 0 when normalize_advantage is set"):
        UpdateConfig(normalize_advantage="minibatch", norm_eps=0.0)


"""`run`'s options mean the same step in exact and sampled mode: with a large batch the two agree.

The MDP of `iid_mdp` draws every next state from rho whatever (s, a), so the
rollouts' state visitation is exactly d_old = rho. That removes the one
documented difference of distribution (`refpg.algorithms.run` Notes), so any
gap left is a difference in what an option means, or sampling error.
"""

import numpy as np
import pytest

import refpg
from refpg.algorithms import ALGORITHMS, SampleConfig, npg_step, run
from refpg.algorithms.common import collect, horizon_estimate
from refpg.algorithms.driver import _step_functions
from refpg.errors import InvalidInputError


def iid_mdp(seed=0, S=4, A=3, gamma=0.9):
    """P[s, a, :] = rho for every (s, a); rewards uniform in [0, 1) from default_rng(seed); no terminal state."""
    rng = np.random.default_rng(seed)
    rho = rng.dirichlet(np.ones(S))
    return refpg.TabularMDP(np.broadcast_to(rho, (S, A, S)).copy(), rng.uniform(size=(S, A)), rho, gamma)


def policy_case(kind):
    mdp = iid_mdp()
    rng = np.random.default_rng(1)
    pol = refpg.TabularSoftmax.for_mdp(mdp) if kind == "tabular" else refpg.LogLinear(rng.normal(size=(4, 3, 3)))
    return mdp, pol, 0.5 * rng.normal(size=pol.theta_shape)


#: 1024 envs x 64 steps = 65,536 transitions, GAE with the exact critic
#: (unbiased advantages; the default batch critic is biased, see run's Notes).
BIG = SampleConfig(n_envs=1024, n_steps=64, critic="exact")

#: (algorithm, options for both modes, sampled-only options).
CASES = {
    "reinforce": ("reinforce", dict(lr=1.0), dict(n_episodes=10_000, max_episode_steps=200, baseline="exact")),
    "npg": ("npg", dict(eta=0.1, cg_iters=10), dict(sample_config=BIG)),
    "trpo": ("trpo", dict(max_kl=0.02), dict(sample_config=BIG)),
    "ppo_sgd_clipped": ("ppo", dict(lr=0.3, optimizer="sgd"), dict(sample_config=BIG)),
    "ppo_adam_unclipped": ("ppo", dict(lr=0.05, clip_eps=None), dict(sample_config=BIG)),
    "ppo_kl_penalty": ("ppo_kl_penalty", dict(beta=1.0, d_targ=0.01, lr=0.05), dict(sample_config=BIG)),
}

#: Tolerances of the comparison after two iterations; the measured gaps are
#: below a fifth of them (largest: gain 0.74%, TV 1.3%).
GAIN_RTOL = 0.03
TV_RATIO = 0.05


def gaps(mdp, pol, theta0, exact, sampled):
    """(relative error of the J gain, TV(pi_exact, pi_sampled) / TV(pi_old, pi_exact)), TV weighted by d_old."""
    d = refpg.evaluate(mdp, pol.probs(theta0)).d

    def tv(p, q):
        return float(d @ np.abs(p - q).sum(axis=1) / 2)

    gain = (sampled.J[-1] - exact.J[-1]) / (exact.J[-1] - exact.J0)
    p0, pe, ps = pol.probs(theta0), pol.probs(exact.theta), pol.probs(sampled.theta)
    return gain, tv(pe, ps) / tv(p0, pe)


@pytest.mark.parametrize("kind", ["tabular", "log_linear"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_large_batch_takes_the_exact_step(case, kind):
    algorithm, options, sampled_only = CASES[case]
    mdp, pol, theta0 = policy_case(kind)
    exact = run(algorithm, mdp, pol, theta0, n_iters=2, **options)
    sampled = run(algorithm, mdp, pol, theta0, n_iters=2, mode="sampled", seed=1, **options, **sampled_only)
    gain, tv = gaps(mdp, pol, theta0, exact, sampled)
    assert exact.J[-1] > exact.J0  # a real step, so the comparison means something
    assert abs(gain) <= GAIN_RTOL and tv <= TV_RATIO, (
        f"{case}/{kind}: J exact {exact.J}, sampled {sampled.J}; gain error {gain:.3g} (tolerance {GAIN_RTOL}), "
        f"TV ratio {tv:.3g} (tolerance {TV_RATIO})")


def test_the_comparison_catches_the_old_npg_scale():
    # The power of the test above: sampled NPG used to step (1 - gamma) times as far as exact NPG.
    mdp, pol, theta0 = policy_case("tabular")
    exact = run("npg", mdp, pol, theta0, n_iters=2, eta=0.1)
    old = run("npg", mdp, pol, theta0, n_iters=2, eta=0.1 * (1 - mdp.gamma))
    gain, tv = gaps(mdp, pol, theta0, exact, old)
    assert abs(gain) > 10 * GAIN_RTOL and tv > 10 * TV_RATIO


def test_npg_sampled_gradient_carries_the_horizon():
    mdp, pol, theta0 = policy_case("tabular")
    res = npg_step(mdp, pol, theta0, eta=0.1, mode="sampled", rng=np.random.default_rng(0), sample_config=BIG,
                   cg_iters=10)
    exact = refpg.policy_gradient(mdp, pol, theta0)
    np.testing.assert_allclose(res.gradient, exact, rtol=0, atol=0.05 * np.abs(exact).max())


def test_npg_exact_mode_honours_damping_and_cg_iters():
    mdp, pol, theta = policy_case("log_linear")
    ev = refpg.evaluate(mdp, pol.probs(theta))
    F = refpg.fisher_matrix(mdp, pol, theta, evaluation=ev)
    g = refpg.policy_gradient(mdp, pol, theta, evaluation=ev).ravel()
    damped = npg_step(mdp, pol, theta, eta=0.5, damping=0.1)
    assert damped.cg is not None and damped.cg.converged
    np.testing.assert_allclose((F + 0.1 * np.eye(pol.n_params)) @ damped.direction.ravel(), g,
                               rtol=0, atol=1e-8 * np.abs(g).max())
    one = npg_step(mdp, pol, theta, eta=0.5, cg_iters=1)
    assert one.cg.iterations == 1
    # One CG iteration from 0 is the Cauchy step along g.
    np.testing.assert_allclose(one.direction.ravel(), (g @ g) / (g @ F @ g) * g, rtol=1e-10)
    full = npg_step(mdp, pol, theta, eta=0.5, cg_iters=pol.n_params)
    np.testing.assert_allclose(full.direction, npg_step(mdp, pol, theta, eta=0.5).direction, rtol=1e-6, atol=1e-10)
    assert npg_step(mdp, pol, theta, eta=0.5).cg is None  # the closed form


def test_npg_on_frozen_lake_the_same_eta_is_the_same_step():
    # The figures that exposed the old scale: from the uniform policy, eta = 1
    # gave J = 0.0758 after one exact step and 0.0124 -> 0.0146 after a sampled
    # one (a step (1 - gamma) = 1/100 as long). Now a large batch lands near the exact step.
    mdp = refpg.envs.frozen_lake()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta0 = np.zeros(pol.theta_shape)
    exact = run("npg", mdp, pol, theta0, n_iters=1, eta=1.0)
    # From the uniform policy CG run to convergence on the batch Fisher is stable (one step).
    sampled = run("npg", mdp, pol, theta0, n_iters=1, eta=1.0, mode="sampled", seed=0, cg_iters=pol.n_params,
                  sample_config=SampleConfig(n_envs=4096, critic="exact"))
    np.testing.assert_allclose(exact.J[1], 0.0758, atol=1e-4)
    gain = (sampled.J[1] - exact.J0) / (exact.J[1] - exact.J0)
    assert 0.7 < gain < 1.3, (exact.J, sampled.J)


def test_run_drives_every_step_function_the_package_exports():
    import refpg.algorithms as alg

    steps = {name for name in alg.__all__ if name.endswith(("_step", "_update")) and callable(getattr(alg, name))}
    driven = {fn.__name__ for fn in _step_functions().values()}
    assert driven == steps
    assert set(_step_functions()) == set(ALGORITHMS)


def test_run_ppo_kl_penalty_carries_the_adapted_coefficient():
    mdp, pol, theta0 = policy_case("tabular")
    history = run("ppo_kl_penalty", mdp, pol, theta0, n_iters=4, beta=1.0, d_targ=1e-4, lr=0.05)
    betas = [r.beta_old for r in history.results]
    assert betas[0] == 1.0
    for prev, res in zip(history.results, history.results[1:]):
        assert res.beta_old == prev.beta
    assert betas[-1] > betas[0]  # KL above 1.5 d_targ every time: doubled
    for rec, res in zip(history.records, history.results):
        np.testing.assert_allclose(rec.mean_kl, res.kl, rtol=1e-10)  # exact mode measures the same KL
    sampled = run("ppo_kl_penalty", mdp, pol, theta0, n_iters=2, mode="sampled", seed=0, beta=1.0, d_targ=0.01)
    assert all(rec.samples == 64 * 64 for rec in sampled.records)


@pytest.mark.parametrize("algorithm, options, match", [
    ("ppo", dict(data=None), "'data' cannot be passed to run: it is a batch collected under one theta"),
    ("trpo", dict(data=None), "'data' cannot be passed to run"),
    ("reinforce", dict(lr=1.0, batch=None), "'batch' cannot be passed to run"),
    ("ppo_kl_penalty", dict(beta=1.0, d_targ=0.01, optimizer_state=None), "'optimizer_state' cannot be passed"),
    ("ppo_kl_penalty", dict(beta=1.0), r"'ppo_kl_penalty' needs the option\(s\) d_targ"),
    ("ppo_kl_penalty", dict(beta=1.0, d_targ=0.0), "d_targ should be > 0"),
    ("ppo_kl_penalty", dict(beta=-1.0, d_targ=0.01), "beta should be >= 0"),
    ("ppo_kl_penalty", dict(beta=1.0, d_targ=0.01, penalty=1.0), "'penalty' is not an option of 'ppo_kl_penalty'"),
    ("npg", dict(eta=1.0, rng=np.random.default_rng(0)), r"'rng' cannot be passed to run: .*pass seed"),
    ("npg", dict(eta=1.0, etta=2.0), r"'etta' is not an option of 'npg'; did you mean 'eta'\? \(its options: "
                                     r"cg_iters, cg_rtol, damping, eta, fisher, sample_config\)"),
    ("npg", dict(eta=1.0, cg_iters=0), "cg_iters should be >= 1"),
    ("npg", dict(eta=1.0, damping=-1.0), "damping should be >= 0"),
    ("npg", dict(eta=1.0, sample_config=BIG), "sample_config is only used in mode='sampled'"),
    ("trpo", dict(line_search_objective="J"), "line_search_objective should be one of"),
])
def test_run_refuses_bad_options_naming_them(algorithm, options, match):
    mdp, pol, theta0 = policy_case("tabular")
    with pytest.raises(refpg.errors.InvalidInputError, match=match):
        run(algorithm, mdp, pol, theta0, n_iters=1, **options)


def test_run_refuses_sampled_only_choices_in_exact_mode_and_exact_only_ones_in_sampled_mode():
    mdp, pol, theta0 = policy_case("tabular")
    with pytest.raises(refpg.errors.InvalidInputError, match="true_J' needs mode='exact'"):
        run("trpo", mdp, pol, theta0, n_iters=1, mode="sampled", line_search_objective="true_J")
    with pytest.raises(refpg.errors.InvalidInputError, match="minibatch_size should be None in exact mode"):
        run("ppo", mdp, pol, theta0, n_iters=1, minibatch_size=64)
    with pytest.raises(refpg.errors.InvalidInputError, match="n_episodes is only used in mode='sampled'"):
        run("reinforce", mdp, pol, theta0, n_iters=1, lr=1.0, n_episodes=10)


@pytest.mark.parametrize("seed, match", [(-1, "seed should be >= 0"), (1.5, "seed should be an integer"),
                                         ("0", "seed should be an integer")])
def test_run_refuses_a_bad_seed(seed, match):
    mdp, pol, theta0 = policy_case("tabular")
    with pytest.raises(refpg.errors.InvalidInputError, match=match):
        run("npg", mdp, pol, theta0, n_iters=1, eta=1.0, seed=seed)


def test_with_gamma_one_the_horizon_is_estimated_from_the_batch():
    mdp = refpg.envs.episodic_garnet(5, 3, 2, seed=0, gamma=1.0)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta0 = 0.3 * np.random.default_rng(0).normal(size=pol.theta_shape)
    H = refpg.evaluate(mdp, pol.probs(theta0)).horizon  # the expected episode length, 5.0 here
    config = SampleConfig(n_envs=1024, n_steps=64, critic="exact", max_episode_steps=None)
    data = collect(mdp, pol.probs(theta0), config, rng=np.random.default_rng(0))
    np.testing.assert_allclose(horizon_estimate(1.0, data), H, rtol=0.03)
    assert horizon_estimate(0.9, data) == pytest.approx(10.0, rel=1e-15)
    exact = run("npg", mdp, pol, theta0, n_iters=2, eta=0.1, cg_iters=10)
    sampled = run("npg", mdp, pol, theta0, n_iters=2, eta=0.1, cg_iters=10, mode="sampled", seed=0,
                  sample_config=config)
    gain, _ = gaps(mdp, pol, theta0, exact, sampled)
    assert abs(gain) <= 0.1, (exact.J, sampled.J)


@pytest.mark.parametrize("kind", ["tabular", "log_linear"])
def test_ppo_clipping_of_noisy_advantage_estimates_is_the_documented_gap(kind):
    # run's Notes: sampled PPO clips each sample's A-hat. With GAE(0.95) the
    # estimates of one (s, a) take both signs and, once ratios are clipped
    # (here most are), the sampled update leaves the exact one by over 10%;
    # with TD errors (lambda = 0, far less noise on this MDP) the gap is gone.
    mdp, pol, theta0 = policy_case(kind)
    exact = run("ppo", mdp, pol, theta0, n_iters=2, lr=0.05)
    assert exact.results[-1].history[-1].clip_fraction > 0.4
    noisy, quiet = (run("ppo", mdp, pol, theta0, n_iters=2, lr=0.05, mode="sampled", seed=1,
                        sample_config=SampleConfig(n_envs=1024, n_steps=64, critic="exact", lam=lam))
                    for lam in (0.95, 0.0))
    assert abs(gaps(mdp, pol, theta0, exact, noisy)[0]) > 3 * GAIN_RTOL
    gain, tv = gaps(mdp, pol, theta0, exact, quiet)
    assert abs(gain) <= GAIN_RTOL and tv <= TV_RATIO


def test_the_readme_names_exactly_the_algorithms_run_drives():
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## Algorithms\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    rows = dict(re.findall(r'^\| `"(\w+)"` \| `(\w+)` \|', section, re.M))
    assert rows == {name: fn.__name__ for name, fn in _step_functions().items()}
    # Every step function the package table lists is one of them.
    listed = re.search(r"^\| `refpg.algorithms` \|(.*)$", text, re.M).group(1)
    named = set(re.findall(r"`(\w+_(?:step|update))`", listed))
    assert named == set(rows.values())


def test_sampled_npg_refuses_the_unregularised_solve_that_diverges():
    """The minimum-norm solve of a batch Fisher diverges near a deterministic policy; truncated CG does not.

    FrozenLake, eta = 0.1, 262,144 transitions a batch, exact critic: CG run to
    convergence on the batch Fisher took a step of norm 2e3 at iteration 6
    (exact: 3.7) and J fell to 0.06 by iteration 10 where the exact NPG reaches
    0.33. So sampled mode refuses cg_iters=None with damping=0, and with
    cg_iters=10 in both modes the two runs stay together.
    """
    mdp = refpg.envs.frozen_lake()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta0 = np.zeros(pol.theta_shape)
    with pytest.raises(InvalidInputError, match=r"needs a regularised solve: pass cg_iters .* or damping > 0"):
        run("npg", mdp, pol, theta0, n_iters=1, eta=0.1, mode="sampled", seed=0)
    config = SampleConfig(n_envs=256, n_steps=1024, critic="exact")
    exact = run("npg", mdp, pol, theta0, n_iters=10, eta=0.1, cg_iters=10)
    sampled = run("npg", mdp, pol, theta0, n_iters=10, eta=0.1, cg_iters=10, mode="sampled", seed=0,
                  sample_config=config)
    assert max(r.step_norm for r in sampled.records) < 2 * max(r.step_norm for r in exact.records)
    np.testing.assert_allclose(sampled.J, exact.J, rtol=0.1)
    # The refused solve, asked for explicitly, is the one that diverges.
    unregularised = run("npg", mdp, pol, theta0, n_iters=10, eta=0.1, cg_iters=pol.n_params, mode="sampled",
                        seed=0, sample_config=config)
    assert max(r.step_norm for r in unregularised.records) > 100 * max(r.step_norm for r in exact.records)


def test_gamma_one_with_no_ended_episode_refuses_to_guess_the_horizon():
    # A chain of 100 steps, gamma = 1, rollouts of 64 steps: no episode ends, and the old
    # fallback H = M (4096) made the gradient 58 times too large.
    P = np.zeros((101, 1, 101))
    P[np.arange(100), 0, np.arange(1, 101)] = 1.0
    P[100, 0, 100] = 1.0
    r = np.zeros((101, 1))
    r[99, 0] = 1.0
    rho = np.zeros(101)
    rho[0] = 1.0
    terminal = np.zeros(101, bool)
    terminal[100] = True
    mdp = refpg.TabularMDP(P, r, rho, 1.0, terminal)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    data = collect(mdp, pol.probs(np.zeros(pol.theta_shape)), SampleConfig(n_envs=4, n_steps=64),
                   rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match=r"gamma = 1 and no episode ended in the batch's 256 transitions"):
        horizon_estimate(1.0, data)

"""Studies cen2022_entropy_npg and gradient_estimates (issue 7, items 4 and 5): quick mode writes
figures and report, and reproduces the headline numbers."""

import numpy as np
import pytest

from refpg.studies import STUDIES, cen2022_entropy_npg as cen, gradient_estimates as ge
from tests.helpers import assert_study_outputs

FIGURES = {
    "cen2022_entropy_npg": ("error_vs_bound.png", "rates.png"),
    "gradient_estimates": ("cosine_vs_batch.png", "gamma_free_bias.png", "gamma_free_convergence.png"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_study_is_registered_and_writes_figures_and_report(name, outputs):
    assert name in STUDIES
    assert_study_outputs(*outputs(name), FIGURES[name])


# --- Cen et al. 2022 ------------------------------------------------------------------------------

def test_cen2022_theorem1_bound_never_violated(outputs):
    _, h = outputs("cen2022_entropy_npg")
    assert h["n_runs"] == len(cen.TAUS) * len(cen.FRACTIONS)
    assert h["bound_never_violated"]
    assert h["max_q_error_over_bound"] <= 1
    assert h["max_logpi_error_over_bound"] <= 1


def test_cen2022_measured_rate_at_most_one_minus_eta_tau(outputs):
    _, h = outputs("cen2022_entropy_npg")
    for key, r in h["rates"].items():
        assert r["K"] >= 2, key                                   # enough iterates above round-off to fit
        assert r["mean"] <= r["theory"] + 1e-3, key
        assert r["tail"] <= r["theory"] + 1e-3, key
    assert h["max_rate_minus_theory"] <= 1e-3
    # Measured asymptotic rates (1 - f)^2 for Q and 1 - f for log pi, f = eta tau/(1 - gamma): tau = 1, f = 0.5.
    r = h["rates"]["tau=1,eta=0.05"]
    assert r["tail"] == pytest.approx(0.25, abs=0.01)
    assert r["logpi_tail"] == pytest.approx(0.5, abs=0.01)
    # Soft policy iteration (eta = (1 - gamma)/tau, bound rate gamma) reaches round-off in a few steps.
    assert h["soft_pi_iterations_to_floor"] <= 5
    assert h["soft_pi_rate"] < 0.01


def test_cen2022_cross_checks_against_refpg(outputs):
    _, h = outputs("cen2022_entropy_npg")
    assert h["soft_eval_vs_refpg_tau0"] < 1e-12
    assert h["soft_eval_vs_refpg_shifted_reward"] < 1e-12
    assert h["update_tau0_vs_refpg_npg_step"] < 1e-12
    assert h["soft_optimum_residual"] < 1e-10                   # soft VI stopped at 1e-12 a posteriori
    assert h["soft_performance_difference_residual"] < 1e-10


def test_cen2022_bound_holds_iterate_by_iterate():
    mdp = cen.study_mdp()
    r = cen.run_npg(mdp, 0.1, 0.25, t_max=200)
    assert r["T"] == 200 and r["q_bound"].shape == (200,)
    assert np.all(r["q_err"][1:] <= r["q_bound"])
    assert np.all(r["pi_err"][1:] <= r["pi_bound"])
    assert r["q_err"][-1] < 1e-9                                 # converged long before the bound says so


def test_cen2022_update_at_largest_step_is_soft_policy_iteration():
    rng = np.random.default_rng(3)
    Q = rng.normal(size=(4, 3))
    logpi = np.log(rng.dirichlet(np.ones(3), size=4))
    tau, gamma = 0.3, 0.9
    new = cen.npg_update(logpi, Q, (1 - gamma) / tau, tau, gamma)
    expected = Q / tau - np.log(np.exp(Q / tau).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(new, expected, rtol=1e-12, atol=1e-12)


# --- gradient estimates ---------------------------------------------------------------------------

def test_baseline_raises_cosine_at_every_batch_size(outputs):
    _, h = outputs("gradient_estimates")
    assert all(h["baseline_wins_every_batch_size"].values())
    for name, by_est in h["mean_cosines"].items():
        nb, wb = by_est["reward-to-go, no baseline"], by_est["reward-to-go, baseline V"]
        gain = np.mean([wb[N] - nb[N] for N in ge.BATCH_SIZES])
        assert gain > 0.03, name
    assert h["cos_batch1_baseline"] > h["cos_batch1_no_baseline"]
    assert h["cos_batch1024_baseline"] > h["cos_batch1024_no_baseline"] > 0.8
    assert h["cos_batch1_no_baseline"] < 0.2                       # one episode says little about grad J


def test_gamma_free_mean_is_biased_but_is_what_the_samples_estimate(outputs):
    _, h = outputs("gradient_estimates")
    b = h["gamma_free_bias_at_0.9"]
    assert b["episodic_garnet"]["rel"] > 0.3                      # measured 0.407
    assert b[f"delayed_chain({ge.CHAIN_LENGTH})"]["rel"] > 0.5    # measured 0.635
    assert b[f"delayed_chain({ge.CHAIN_LENGTH})"]["cos"] < 0.95   # the direction turns, too (0.898)
    assert max(h["gamma_free_bias_at_1"].values()) < 1e-12        # no bias when gamma = 1
    for name, tests in h["mean_tests"].items():
        for key in ("free_vs_gamma_free_gradient", "free_baseline_vs_gamma_free_gradient",
                    "rtg_vs_policy_gradient", "rtg_baseline_vs_policy_gradient"):
            t = tests[key]
            assert t["alpha"] == ge.ALPHA == 1e-6 and t["n"] >= 10_000
            assert not t["rejected"], (name, key, t)
        # Power: the same test rejects grad J as the mean of the gamma-free estimator.
        assert tests["free_baseline_vs_policy_gradient"]["rejected"], name
    assert h["mean_tests"][f"delayed_chain({ge.CHAIN_LENGTH})"]["free_vs_policy_gradient"]["rejected"]
    assert h["mean_tests_as_expected"]


def test_gradient_estimate_mdps_terminate_under_every_policy():
    for make in ge.MDPS.values():
        mdp = make(1.0)                                           # gamma = 1 is accepted only for proper MDPs
        assert mdp.is_proper(np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions))

r"""An exact linear-quadratic-Gaussian world: continuous states and actions, Gaussian policies.

The discounted LQR with process noise and the linear-Gaussian policy
:math:`\pi_K(u|x) = N(-Kx, \mathrm{diag}(e^{2\,\mathrm{log\_std}}))` (state-independent
``log_std``, as SB3 and CleanRL have it) is the continuous-action problem on
which every quantity a policy-gradient library estimates has a closed form
through two Lyapunov equations: the value, the discounted state second moment,
the cost, its gradient, the Fisher matrix, the natural gradient, the optimal
gain, the KL between two policies. See docs/conventions.md,
"Linear-quadratic-Gaussian".

* `LQRSystem`: the validated system; `random_system` builds one.
* `LinearGaussian`: the policy, with the sample-level parameterisation
  interface (`sample_log_probs`, `sample_log_prob_jvp`, `sample_log_prob_vjp`)
  that `refpg.Parameterization` shares.
* `refpg.lqr.exact`: every exact quantity, cost side ``(system, K, log_std)``
  and reward side ``(system, policy, theta)``, each labelled with its objective.
* `refpg.lqr.sampling`: vectorised rollouts (`sample_steps`,
  `sample_episodes`), exact draws from the discounted occupancy
  (`sample_occupancy`), PPO's clipped objective by Monte Carlo with its
  standard error (`clipped_surrogate_estimate`: it has no closed form), and
  the quadratic critic of sampled-mode GAE.

`refpg.algorithms` (REINFORCE, NPG, TRPO, PPO and `run`) accepts an
``(LQRSystem, LinearGaussian)`` pair wherever it accepts ``(TabularMDP,
policy)``, in exact mode (these closed forms) and in sampled mode (these
rollouts), and `refpg.envs.LQREnv` is the system as a Gymnasium environment.

Example::

    import numpy as np
    from refpg import lqr

    system = lqr.random_system(0, state_dim=3, action_dim=2)
    K, log_std = np.zeros((2, 3)), np.full(2, -0.5)
    C = lqr.cost(system, K, log_std)                      # expected discounted cost
    assert np.isclose(C, lqr.cost_from_second_moment(system, K, log_std), rtol=1e-10)
    grad = lqr.cost_gradient(system, K, log_std)          # 2 E_K Sigma_K, and d C / d log_std
    K_star = lqr.optimal_gain(system).K                   # E_{K*} = 0
"""

from refpg.lqr.system import PSD_RTOL, SYMMETRY_RTOL, LQRSystem, random_system
from refpg.lqr.policy import LOG_STD_BOUND, LinearGaussian
from refpg.lqr.exact import (
    CostGradient,
    BOUNDARY_MARGIN,
    HEWER_MAX_STEPS,
    FiniteHorizon,
    LQREvaluation,
    OptimalGain,
    action_value,
    advantage,
    cost,
    cost_from_second_moment,
    cost_gradient,
    evaluate,
    finite_horizon,
    finite_horizon_cost,
    finite_horizon_cost_gradient,
    fisher_matrix,
    fisher_vector_product,
    gain_error,
    gamma_free_direction,
    kl_divergence,
    kl_gradient,
    mean_kl,
    natural_cost_gradient,
    natural_gradient,
    objective,
    optimal_gain,
    policy_gradient,
    second_moment,
    state_kl,
    state_value,
    surrogate,
    surrogate_gradient,
    value_constant,
    value_matrix,
)
from refpg.lqr.sampling import (
    MonteCarloEstimate,
    OccupancySample,
    QuadraticValue,
    clipped_surrogate_estimate,
    exact_value,
    fit_quadratic_value,
    sample_episodes,
    sample_occupancy,
    sample_steps,
)

__all__ = [
    "LQRSystem",
    "random_system",
    "SYMMETRY_RTOL",
    "PSD_RTOL",
    "LinearGaussian",
    "LOG_STD_BOUND",
    "LQREvaluation",
    "CostGradient",
    "OptimalGain",
    "FiniteHorizon",
    "evaluate",
    "value_matrix",
    "value_constant",
    "state_value",
    "action_value",
    "advantage",
    "second_moment",
    "cost",
    "cost_from_second_moment",
    "gain_error",
    "cost_gradient",
    "natural_cost_gradient",
    "optimal_gain",
    "HEWER_MAX_STEPS",
    "BOUNDARY_MARGIN",
    "state_kl",
    "mean_kl",
    "finite_horizon",
    "finite_horizon_cost",
    "finite_horizon_cost_gradient",
    "gamma_free_direction",
    "objective",
    "policy_gradient",
    "fisher_matrix",
    "fisher_vector_product",
    "natural_gradient",
    "surrogate",
    "surrogate_gradient",
    "kl_divergence",
    "kl_gradient",
    "sample_steps",
    "sample_episodes",
    "OccupancySample",
    "sample_occupancy",
    "MonteCarloEstimate",
    "clipped_surrogate_estimate",
    "QuadraticValue",
    "fit_quadratic_value",
    "exact_value",
]

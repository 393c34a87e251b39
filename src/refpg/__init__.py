"""refpg: a reference oracle for policy-gradient reinforcement learning.

Exact (infinite-sample) values, occupancies, policy gradients, Fisher
matrices, natural gradients, surrogates and KL divergences on finite MDPs,
following the contract of docs/conventions.md.
"""

from refpg import envs, errors
from refpg.bounds import TRPOBound, performance_difference, trpo_bound, trpo_constant
from refpg.evaluation import Evaluation, evaluate
from refpg.fisher import fisher_matrix, fisher_vector_product, natural_gradient
from refpg.gradient import objective, policy_gradient
from refpg.kl import kl_divergence, kl_gradient, policy_kl
from refpg.mdp import TabularMDP
from refpg.planning import OptimalSolution, optimal_policy
from refpg.policies import LogLinear, Parameterization, TabularSoftmax, log_softmax
from refpg.surrogate import surrogate, surrogate_gradient
from refpg.returns import discounted_returns, gae, lambda_returns
from refpg.kl_estimators import importance_ratio, kl_k1, kl_k2, kl_k3, log_ratio
from refpg.sampling import Batch, Episode, Sampler, sample_episodes, sample_steps
from refpg.estimators import (
    empirical_fisher_estimate,
    empirical_fisher_vector_product,
    gamma_free_gradient,
    reinforce_estimates,
    reinforce_gradient_estimate,
)

__version__ = "0.1.0"

__all__ = [
    "TabularMDP",
    "Parameterization",
    "TabularSoftmax",
    "LogLinear",
    "log_softmax",
    "Evaluation",
    "evaluate",
    "objective",
    "policy_gradient",
    "fisher_matrix",
    "fisher_vector_product",
    "natural_gradient",
    "surrogate",
    "surrogate_gradient",
    "kl_divergence",
    "kl_gradient",
    "policy_kl",
    "performance_difference",
    "trpo_bound",
    "trpo_constant",
    "TRPOBound",
    "optimal_policy",
    "OptimalSolution",
    "discounted_returns",
    "gae",
    "lambda_returns",
    "importance_ratio",
    "log_ratio",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "Batch",
    "Episode",
    "Sampler",
    "sample_steps",
    "sample_episodes",
    "reinforce_estimates",
    "reinforce_gradient_estimate",
    "gamma_free_gradient",
    "empirical_fisher_estimate",
    "empirical_fisher_vector_product",
    "envs",
    "errors",
]

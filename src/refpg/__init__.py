"""refpg: a reference oracle for policy-gradient reinforcement learning.

Exact (infinite-sample) values, occupancies, policy gradients, Fisher
matrices, natural gradients, surrogates and KL divergences on finite MDPs,
following the contract of CONVENTIONS.md.
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
    "envs",
    "errors",
]

r"""Exact policy gradients for language models on token trees.

A prompt and its responses form a small tree-shaped MDP (`TokenTree`), on
which every expectation a language-model policy-gradient method estimates is an
exact finite sum: J and the sequence KL with their gradients (`refpg.sequences.exact`)
and the exact expected gradient of the loss a GRPO, RLOO, Dr. GRPO, DAPO, GSPO
or CISPO implementation backpropagates (`expected_gradient`). See
docs/conventions.md, "Sequences".
"""

from refpg.sequences.tree import MAX_PREFIXES, Responses, TokenTree
from refpg.sequences.builders import length_bias_tree, random_tree
from refpg.sequences.estimators import MAX_TUPLES, EstimatorMean, LossSpec, count_batches, expected_gradient
from refpg.sequences.exact import (
    local_forward_kl_gradient,
    local_kl_gradient,
    penalty_mdp,
    prefix_reach,
    regularized_objective,
    regularized_objective_gradient,
    sequence_kl,
    sequence_kl_gradient,
    sequence_objective,
    sequence_objective_gradient,
)

__all__ = [
    "TokenTree",
    "Responses",
    "MAX_PREFIXES",
    "length_bias_tree",
    "random_tree",
    "prefix_reach",
    "sequence_objective",
    "sequence_objective_gradient",
    "sequence_kl",
    "sequence_kl_gradient",
    "local_kl_gradient",
    "local_forward_kl_gradient",
    "regularized_objective",
    "regularized_objective_gradient",
    "penalty_mdp",
    "LossSpec",
    "EstimatorMean",
    "expected_gradient",
    "count_batches",
    "MAX_TUPLES",
]

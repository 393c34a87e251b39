"""Loss primitives: sample-level PPO terms (refpg.losses.sample), token-level losses and aggregations for
sequences (refpg.losses.tokens), group advantages (refpg.losses.group).

Each formula has its one home here; `refpg.algorithms` and the conformance kit's references import it
from this package.
"""

from refpg.losses import group, sample, tokens
from refpg.losses.sample import (
    ClipTerms,
    approx_kl,
    clip_fraction,
    normalized_advantages,
    ppo_clip_grad_logp,
    ppo_clip_loss,
    ppo_clip_terms,
    ratio_clip_terms,
    ratio_outside_fraction,
)

from refpg.losses.tokens import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    TOKEN_LOSSES,
    TokenLoss,
    aggregate,
    aggregation_weights,
    clip_bounds,
    kl_penalty_terms,
    token_policy_loss,
)
from refpg.losses.group import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    group_mean_advantages,
    grpo_advantages,
    rloo_advantages,
    whitened_advantages,
)

__all__ = [*sample.__all__, *tokens.__all__, *group.__all__]

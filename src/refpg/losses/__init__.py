"""Loss primitives: sample-level PPO terms (refpg.losses.sample), token-level losses and aggregations for
sequences (refpg.losses.tokens), group advantages (refpg.losses.group).

Each formula has its one home here; `refpg.algorithms` and the conformance kit's references import it
from this package.
"""

from refpg.losses import sample
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

__all__ = [*sample.__all__]

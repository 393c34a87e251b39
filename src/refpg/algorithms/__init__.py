"""Reference policy-gradient algorithms: REINFORCE, NPG, TRPO and PPO.

Each runs in exact mode (infinite-sample expectations) or sampled mode, and
exposes every intermediate quantity for inspection; `run` drives any of them
for N iterations and records exact diagnostics.
"""

from refpg.algorithms.common import MODES, SampleConfig, SampledData, collect
from refpg.algorithms.driver import ALGORITHMS, History, IterationRecord, run
from refpg.algorithms.npg import NPGResult, npg_bound, npg_step
from refpg.algorithms.ppo import (
    AdamState,
    KLPenaltyResult,
    PPOEpoch,
    PPOResult,
    PPOSamples,
    adapt_kl_coefficient,
    clip_fraction,
    clipped_surrogate,
    clipped_surrogate_gradient,
    exact_clipped_surrogate,
    exact_clipped_surrogate_gradient,
    ppo_clip_loss,
    ppo_kl_penalty_update,
    ppo_update,
)
from refpg.algorithms.reinforce import ReinforceResult, reinforce_step
from refpg.algorithms.trpo import (
    CGResult,
    LineSearchResult,
    LineSearchTry,
    TRPOResult,
    backtracking_line_search,
    conjugate_gradient,
    max_step_size,
    trpo_step,
)

__all__ = [
    "MODES", "SampleConfig", "SampledData", "collect",
    "ALGORITHMS", "History", "IterationRecord", "run",
    "NPGResult", "npg_bound", "npg_step",
    "ReinforceResult", "reinforce_step",
    "CGResult", "LineSearchResult", "LineSearchTry", "TRPOResult", "backtracking_line_search", "conjugate_gradient",
    "max_step_size", "trpo_step",
    "AdamState", "KLPenaltyResult", "PPOEpoch", "PPOResult", "PPOSamples", "adapt_kl_coefficient",
    "clip_fraction", "clipped_surrogate", "clipped_surrogate_gradient", "exact_clipped_surrogate",
    "exact_clipped_surrogate_gradient", "ppo_clip_loss", "ppo_kl_penalty_update", "ppo_update",
]

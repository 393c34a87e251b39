"""Reference policy-gradient algorithms: REINFORCE, NPG, TRPO and PPO.

Each runs in exact mode (infinite-sample expectations) or sampled mode, and
exposes every intermediate quantity for inspection.
"""

from refpg.algorithms.common import MODES, SampleConfig, SampledData, collect

__all__ = ["MODES", "SampleConfig", "SampledData", "collect"]

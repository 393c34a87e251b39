"""GAE conventions of real projects: time-out bootstrap from V(s_t), RLHF token-level GAE, done-after-step flags, episode-at-a-time buffers.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.
"""

from __future__ import annotations

from refpg.examples._example import Example

CORRECT: tuple[Example, ...] = ()
BROKEN: tuple[Example, ...] = ()

"""PPO-loss variants of real projects: dual clip (verl), the 'active' clip fraction (TRL, verl, OpenRLHF).

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.
"""

from __future__ import annotations

from refpg.examples._example import Example

CORRECT: tuple[Example, ...] = ()
BROKEN: tuple[Example, ...] = ()

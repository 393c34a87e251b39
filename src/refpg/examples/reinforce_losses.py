"""REINFORCE written as a surrogate loss to backpropagate.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.
"""

from __future__ import annotations

from refpg.examples._example import Example

CORRECT: tuple[Example, ...] = ()
BROKEN: tuple[Example, ...] = ()

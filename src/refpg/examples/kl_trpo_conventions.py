"""KL estimators taking (logprob, ref_logprob), and TRPO steps written around closures.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.
"""

from __future__ import annotations

from refpg.examples._example import Example

CORRECT: tuple[Example, ...] = ()
BROKEN: tuple[Example, ...] = ()

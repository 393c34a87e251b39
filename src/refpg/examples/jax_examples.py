"""Examples in JAX, the way rlax, PureJaxRL and CleanRL-JAX write them (jax is imported inside the functions).

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.
"""

from __future__ import annotations

from refpg.examples._example import Example

CORRECT: tuple[Example, ...] = ()
BROKEN: tuple[Example, ...] = ()

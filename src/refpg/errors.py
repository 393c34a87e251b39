"""The exception and warning hierarchy of refpg.

Every error refpg raises on bad input is a subclass of `InvalidInputError`,
itself a `ValueError`, so ``except ValueError`` keeps working for callers who
do not care about the detail. Messages name the argument, the offending entry,
its value and what was expected, e.g.
``P[3, 1, :] sums to 0.98; expected 1 within atol=1e-12``.
"""

from __future__ import annotations

__all__ = [
    "RefpgError",
    "InvalidInputError",
    "ShapeError",
    "NonFiniteError",
    "NegativeEntryError",
    "NotADistributionError",
    "InvalidDiscountError",
    "ImproperMDPError",
    "TerminalStateError",
    "EvaluationMismatchError",
    "ProblemTooLargeError",
    "NonPositiveCurvatureError",
    "ConformanceError",
    "RefpgWarning",
    "RefpgDeprecationWarning",
]


class RefpgError(Exception):
    """Base class of every exception raised by refpg."""


class InvalidInputError(RefpgError, ValueError):
    """An argument violates the contract of docs/conventions.md."""


class ShapeError(InvalidInputError):
    """An array has the wrong number of dimensions or the wrong shape."""


class NonFiniteError(InvalidInputError):
    """An array holds NaN or an infinity."""


class NegativeEntryError(InvalidInputError):
    """A probability (or another non-negative quantity) is negative."""


class NotADistributionError(InvalidInputError):
    """A vector that must sum to one does not, within the stated tolerance."""


class InvalidDiscountError(InvalidInputError):
    """gamma is outside [0, 1), or gamma = 1 on an MDP that is not proper."""


class ImproperMDPError(InvalidDiscountError):
    """gamma = 1 on an MDP where some policy never terminates."""


class TerminalStateError(InvalidInputError):
    """A state flagged terminal is not absorbing with zero reward."""


class EvaluationMismatchError(InvalidInputError):
    """A precomputed `Evaluation` was passed for a different policy or MDP."""


class ProblemTooLargeError(InvalidInputError):
    """A dense object was requested for a problem too large to hold densely."""


class NonPositiveCurvatureError(InvalidInputError):
    r"""A direction s has :math:`s^\top F s \le 0`: no trust-region step exists along it."""


class ConformanceError(RefpgError, AssertionError):
    """A user's implementation failed a conformance check."""


class RefpgWarning(UserWarning):
    """Something legal but suspicious."""


class RefpgDeprecationWarning(FutureWarning):
    """A call in a form that still works but will be removed; the message shows the new form.

    A subclass of `FutureWarning`, not `DeprecationWarning`: Python's default
    filters hide a `DeprecationWarning` raised in any module but ``__main__``,
    so a library or training script that calls refpg from its own package
    would never see it. ``-W error::FutureWarning`` (or this class) turns it
    into an error.
    """

"""The `Example` record of the bundled zoo (kept apart so that topic modules can build examples
without importing the package they are registered in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from refpg.errors import InvalidInputError

__all__ = ["Example"]

_KINDS = ("gae", "ppo_loss", "value_loss", "kl_estimator", "reinforce_estimator", "trpo_step", "group_advantages", "token_policy_loss",
          "llm_loss", "kl_penalty", "gaussian_log_prob", "gaussian_kl", "squashed_log_prob",
          "gaussian_ppo_loss", "update", "pipeline_gradient")
_BACKENDS = ("numpy", "torch", "jax")


@dataclass(frozen=True)
class Example:
    """One bundled implementation and how to check it.

    Attributes
    ----------
    name : str
        Unique; `by_name` finds the example by it.
    kind : str
        The check it is for: ``"gae"``, ``"ppo_loss"``, ``"value_loss"``,
        ``"kl_estimator"``, ``"reinforce_estimator"`` or ``"trpo_step"``.
    fn : callable
        The implementation, called with positional arguments in the order of
        its convention.
    convention : str
        ``"refpg"`` (canonical), ``"sb3"``, ``"cleanrl"``, ``"torchrl"`` or ``"rlax"``.
    backend : str
        ``"numpy"``, ``"torch"`` or ``"jax"``.
    options : Mapping
        Options of the check, e.g. ``{"unbiased": False}``; read-only.
    expected : str or None
        For a broken example, the check id that must fail (it starts with
        ``kind + "."``); None for a correct one.
    description : str
        One line: what the example is, or what the bug is and where it has
        been reported.
    requires : tuple of str
        Importable packages the example needs besides its backend (the real
        library it runs, e.g. ``"stable_baselines3"``); the demo skips it
        when one is missing.
    """

    name: str
    kind: str
    fn: Callable
    convention: str = "refpg"
    backend: str = "numpy"
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    expected: str | None = None
    description: str = ""
    requires: tuple = ()

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise InvalidInputError(f"kind should be one of {list(_KINDS)}, actual {self.kind!r}")
        if self.backend not in _BACKENDS:
            raise InvalidInputError(f"backend should be one of {list(_BACKENDS)}, actual {self.backend!r}")
        if self.expected is not None and not self.expected.startswith(self.kind + "."):
            raise InvalidInputError(
                f"expected should be a check id of kind {self.kind!r} ({self.kind}.<check>), "
                f"actual {self.expected!r}")
        if not callable(self.fn):
            raise InvalidInputError(f"fn should be callable, actual {type(self.fn).__name__}")
        # Read-only, so that a shared registry entry cannot be changed by one test for the next.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def available(self) -> bool:
        """Whether every package of `requires` can be imported here."""
        import importlib.util
        return all(importlib.util.find_spec(name) is not None for name in self.requires)

    @property
    def broken(self) -> bool:
        """True for a deliberately broken example (it has an `expected` check id)."""
        return self.expected is not None

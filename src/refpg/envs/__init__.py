"""Canonical finite MDPs, with their matrices in the docstrings.

Every builder returns a validated `refpg.TabularMDP`. The Gymnasium faces,
loaded on first use (gymnasium is optional): `TabularEnv` samples a
TabularMDP, `LQREnv` a `refpg.lqr.LQRSystem`.
"""

from refpg.envs.classic import (bandit, chain, episodic_garnet, frozen_lake, garnet, gridworld, high_signal,
                                two_state)
from refpg.envs.gym_import import from_gymnasium

__all__ = ["two_state", "bandit", "chain", "gridworld", "garnet", "frozen_lake", "high_signal", "episodic_garnet",
           "from_gymnasium", "BUILTIN"]

#: Built-in MDPs by name, as used by the CLI (`refpg exact NAME`).
BUILTIN = {
    "frozen_lake": lambda: frozen_lake("4x4"),
    "frozen_lake_8x8": lambda: frozen_lake("8x8"),
    "two_state": lambda: two_state(),
    "bandit": lambda: bandit([1.0, 0.9, 0.1]),
    "chain": lambda: chain(5),
    "gridworld": lambda: gridworld(4, 4, slip=0.1),
    "garnet": lambda: garnet(20, 4, 3, seed=0),
    "FrozenLake-v1": lambda: from_gymnasium("FrozenLake-v1"),
    "FrozenLake8x8-v1": lambda: from_gymnasium("FrozenLake-v1", map_name="8x8"),
    "CliffWalking-v1": lambda: from_gymnasium("CliffWalking-v1"),
    "Taxi-v4": lambda: from_gymnasium("Taxi-v4"),
}

_GYM_ENV_NAMES = ("TabularEnv", "ResetNeededError", "register_envs")
_LQR_ENV_NAMES = ("LQREnv",)


def __getattr__(name):
    # refpg.envs must import without gymnasium: load the Gymnasium face on first use.
    if name in _GYM_ENV_NAMES:
        from refpg.envs import gym_env

        return getattr(gym_env, name)
    if name in _LQR_ENV_NAMES:
        from refpg.envs import lqr_env

        return getattr(lqr_env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_GYM_ENV_NAMES, *_LQR_ENV_NAMES])

r"""Group advantages for language-model policy gradients.

G responses to one prompt form a group with rewards :math:`R_1..R_G`; each
estimator turns them into per-response advantages. See docs/conventions.md,
"Sequences". Every function takes rewards with the group on the last axis,
``(..., G)``, and works on any number of leading axes, so the exact estimator
mean (`refpg.sequences.expected_gradient`) evaluates millions of groups at once.
Degenerate groups (one response, or every reward equal) give advantage 0,
never NaN or inf.
"""

from __future__ import annotations

import numbers

import numpy as np

from refpg._validation import as_float_array, check_choice
from refpg.errors import InvalidInputError, ShapeError

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "group_advantages",
    "rloo_advantages",
    "group_mean_advantages",
    "grpo_advantages",
    "whitened_advantages",
]

#: The estimators `group_advantages` knows, by name.
ADVANTAGE_ESTIMATORS = ("rloo", "group_mean", "grpo", "reinforce_pp")


def _rewards(rewards, name: str = "rewards", *, min_ndim: int = 1) -> np.ndarray:
    R = as_float_array(rewards, name)
    if R.ndim < min_ndim or R.shape[-1] == 0:
        raise ShapeError(f"{name} should have shape (..., G) with G >= 1, actual shape {R.shape}")
    return R


def _deviation(R: np.ndarray, k: int) -> np.ndarray:
    """R - mean(R) over the first `k` axes, exactly 0 where every reward of the set is equal.

    The mean of equal floats is not always that float (3 x 0.1 / 3 is one ulp
    off), and divided by a std of the same size the ulp would become an O(1)
    advantage out of nothing. The set runs over the *leading* axes: reducing a
    C-contiguous array over its first axis adds whole rows, which is many times
    faster than reducing millions of short last axes (the exact estimator mean
    calls this on (G, n_batches) arrays).
    """
    flat = R.reshape((-1,) + R.shape[k:])
    dev = R - (np.add.reduce(flat, axis=0) / flat.shape[0])
    same = np.maximum.reduce(flat, axis=0) == np.minimum.reduce(flat, axis=0)
    return np.where(same, 0.0, dev)


def _normalised(dev: np.ndarray, k: int, ddof: int, eps: float) -> np.ndarray:
    """dev / (std + eps) over the first `k` axes; 0 where dev is 0 (flat sets, lone responses)."""
    n = int(np.prod(dev.shape[:k]))
    if n - ddof <= 0:
        return dev
    sd = np.sqrt(np.add.reduce((dev * dev).reshape((-1,) + dev.shape[k:]), axis=0) / (n - ddof))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dev == 0, 0.0, dev / (sd + eps))


def advantage_kernel(R: np.ndarray, estimator: str, *, std: str = "bessel", eps: float | None = None) -> np.ndarray:
    """Group advantages of float64 rewards laid out group-first: (G, ...) or, for reinforce_pp, (G, n_groups, ...).

    No validation: the public functions validate and call this; so does the
    exact estimator mean on millions of groups at once.
    """
    G = R.shape[0]
    if estimator == "rloo":
        return G / (G - 1) * _deviation(R, 1)
    if estimator == "group_mean":
        return _deviation(R, 1)
    if estimator == "grpo":
        return _normalised(_deviation(R, 1), 1, 1 if std == "bessel" else 0, 1e-6 if eps is None else eps)
    return _normalised(_deviation(R, 2), 2, 1 if std == "bessel" else 0, 1e-8 if eps is None else eps)


def _last_first(R: np.ndarray, k: int) -> np.ndarray:
    """Move the last `k` axes to the front, in order (a batch's axes lead)."""
    return np.moveaxis(R, tuple(range(R.ndim - k, R.ndim)), tuple(range(k)))


def _first_last(R: np.ndarray, k: int) -> np.ndarray:
    return np.moveaxis(R, tuple(range(k)), tuple(range(R.ndim - k, R.ndim)))


def rloo_advantages(rewards) -> np.ndarray:
    r"""REINFORCE leave-one-out: :math:`A_i = R_i - \frac{1}{G-1}\sum_{j\ne i} R_j`.

    .. math:: A_i = \frac{G}{G-1}\,(R_i - \bar R)

    Its expected policy gradient is :math:`\nabla J` exactly: the baseline of
    response i does not depend on :math:`y_i`.

    Parameters
    ----------
    rewards : array_like (..., G), G >= 2

    Returns
    -------
    ndarray (..., G)

    Raises
    ------
    refpg.errors.InvalidInputError
        For G = 1: a lone response has no others to leave out.

    References
    ----------
    [Ahmadian2024] Section 3; [Williams1992].
    """
    R = _rewards(rewards)
    G = R.shape[-1]
    if G < 2:
        raise InvalidInputError(f"rewards has groups of G = {G}; RLOO needs G >= 2 (a lone response has no "
                                "others to form its baseline)")
    return _first_last(advantage_kernel(_last_first(R, 1), "rloo"), 1)


def group_mean_advantages(rewards) -> np.ndarray:
    r"""Group-mean baseline (Dr. GRPO): :math:`A_i = R_i - \bar R`.

    Its expected gradient is :math:`\frac{G-1}{G}\nabla J`: :math:`\bar R`
    contains :math:`R_i` itself. G = 1 gives 0.

    Parameters
    ----------
    rewards : array_like (..., G)

    Returns
    -------
    ndarray (..., G)

    References
    ----------
    [Liu2025] Section 3.2.
    """
    return _first_last(advantage_kernel(_last_first(_rewards(rewards), 1), "group_mean"), 1)


def grpo_advantages(rewards, *, std: str = "bessel", eps: float = 1e-6) -> np.ndarray:
    r"""GRPO's group-normalised advantage :math:`A_i = (R_i - \bar R) / (\mathrm{std}(R) + \epsilon)`.

    Parameters
    ----------
    rewards : array_like (..., G)
    std : {"bessel", "population"}
        Bessel's correction (``ddof=1``, torch's default ``std``; TRL and verl)
        or none (``ddof=0``, NumPy's default).
    eps : float >= 0
        Added to the std.

    Returns
    -------
    ndarray (..., G)
        0 for a group whose rewards are all equal, and for a lone response
        (G = 1), whatever eps: the std is 0 or undefined there and the
        deviation is exactly 0.

    References
    ----------
    [Shao2024] Section 4.1.2.
    """
    check_choice(std, "std", ("bessel", "population"))
    eps = _nonnegative(eps, "eps")
    R = _rewards(rewards)
    return _first_last(advantage_kernel(_last_first(R, 1), "grpo", std=std, eps=eps), 1)


def whitened_advantages(rewards, *, ddof: int = 0, eps: float = 1e-8) -> np.ndarray:
    r"""Batch whitening (REINFORCE++): :math:`A = (R - \mathrm{mean}_B R) / (\mathrm{std}_B R + \epsilon)`.

    The mean and std run over the whole batch, every response of every group,
    not per group.

    Parameters
    ----------
    rewards : array_like (..., n_groups, G) or (n,)
        The last two axes (the one axis of 1-d input) are one batch.
    ddof : {0, 1}
    eps : float >= 0

    Returns
    -------
    ndarray of the shape of `rewards`

    References
    ----------
    [Hu2025] Section 3.
    """
    if ddof not in (0, 1) or isinstance(ddof, bool):
        raise InvalidInputError(f"ddof should be 0 or 1, actual {ddof!r}")
    eps = _nonnegative(eps, "eps")
    R = _rewards(rewards)
    k = 2 if R.ndim >= 2 else 1
    return _first_last(_normalised(_deviation(_last_first(R, k), k), k, ddof, eps), k)


def group_advantages(rewards, estimator: str, *, std: str = "bessel", eps: float | None = None) -> np.ndarray:
    """Dispatch on the estimator's name: ``"rloo"``, ``"group_mean"``, ``"grpo"`` or ``"reinforce_pp"``.

    Parameters
    ----------
    rewards : array_like (..., n_groups, G)
        For ``"reinforce_pp"`` the last two axes are one batch.
    estimator : str
    std : {"bessel", "population"}
        GRPO's std and REINFORCE++'s ddof (bessel = 1).
    eps : float, optional
        GRPO's (default 1e-6) or REINFORCE++'s (default 1e-8) eps.
    """
    check_choice(estimator, "estimator", ADVANTAGE_ESTIMATORS)
    if estimator == "rloo":
        return rloo_advantages(rewards)
    if estimator == "group_mean":
        return group_mean_advantages(rewards)
    if estimator == "grpo":
        return grpo_advantages(rewards, std=std, eps=1e-6 if eps is None else eps)
    check_choice(std, "std", ("bessel", "population"))
    return whitened_advantages(_rewards(rewards, min_ndim=2), ddof=1 if std == "bessel" else 0,
                               eps=1e-8 if eps is None else eps)


def _nonnegative(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not np.isfinite(x) or x < 0:
        raise InvalidInputError(f"{name} should be a finite real number >= 0, actual {x!r}")
    return float(x)

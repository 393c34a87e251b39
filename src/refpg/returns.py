r"""Time-major returns and advantage estimators: discounted returns, GAE, TD(lambda).

Every trajectory array has shape (T, N): T steps of N parallel environments,
as in SB3's and CleanRL's rollout buffers (a (T,) array is one environment and
the result then has shape (T,) too). The flags belong to transition t:

* ``terminated[t, n]``: s_{t+1} is terminal; nothing is bootstrapped from it.
* ``truncated[t, n]``: a time limit cut the episode at t; s_{t+1} is the final
  observation and *is* bootstrapped from ``next_values[t, n]``.

After either flag, row t + 1 starts a new episode (the environment was reset),
so nothing flows backwards across it. A last row ``t = T - 1`` with neither
flag is the end of the rollout in the middle of an episode, and bootstraps
from ``next_values[T - 1]`` like a truncation. Where both flags are set,
termination wins (Gymnasium allows both; a terminal state has value 0).

``values[t] = V(s_t)`` and ``next_values[t] = V(s_{t+1})`` of the true next
observation, read *before* any reset, so ``next_values[t]`` and
``values[t + 1]`` differ across an episode boundary.
"""

from __future__ import annotations

import numpy as np

from refpg._validation import as_float_array, check_discount, check_real, entry
from refpg.errors import InvalidInputError, ShapeError

__all__ = ["discounted_returns", "gae", "lambda_returns"]


# -- validation ---------------------------------------------------------------

def _trajectory(x, name: str, like: tuple[str, tuple] | None = None) -> np.ndarray:
    """A float64 (T,) or (T, N) array; with `like`, of the same shape as that argument."""
    try:
        shape = np.shape(x)
    except Exception:  # ragged lists: let as_float_array word the error
        shape = None
    if shape is not None and len(shape) not in (1, 2):
        raise ShapeError(f"{name} should have shape (T,) or (T, N), actual shape {shape}")
    arr = as_float_array(x, name)
    if like is not None:
        _same_shape(arr, name, *like)
    return arr


def _same_shape(arr: np.ndarray, name: str, ref_name: str, ref_shape: tuple) -> None:
    if arr.shape != ref_shape:
        raise ShapeError(
            f"{name} should have the shape of {ref_name}, {ref_shape}, actual shape {arr.shape}")


def _flags(x, name: str, ref_name: str, ref_shape: tuple) -> np.ndarray:
    """A boolean array of shape `ref_shape`; numbers are accepted only if exactly 0 or 1."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ShapeError(f"{name} could not be converted to an array: {exc}") from None
    _same_shape(arr, name, ref_name, ref_shape)
    if arr.dtype == bool:
        return arr
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        raise InvalidInputError(
            f"{name} should be a boolean array, actual dtype {arr.dtype}")
    # Rounding 0.5 (or a NaN) to a flag would silently decide whether to bootstrap.
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)
        raise InvalidInputError(
            f"{entry(name, idx)} is {arr[idx].item()!r}; expected a boolean "
            f"(True/False, or exactly 0/1)")
    return arr == 1


def _as_columns(arr: np.ndarray) -> np.ndarray:
    return arr[:, None] if arr.ndim == 1 else arr


def _check_rollout(rewards, terminated, truncated, values=None, next_values=None):
    """Validate a rollout and return its arrays as (T, N) views, plus the given shape.

    Nothing is written to the inputs: the float conversion of a float64 array
    is the array itself, and the recursions below only read it.
    """
    r = _trajectory(rewards, "rewards")
    like = ("rewards", r.shape)
    v = None if values is None else _trajectory(values, "values", like)
    nv = None if next_values is None else _trajectory(next_values, "next_values", like)
    term = _flags(terminated, "terminated", *like)
    trunc = _flags(truncated, "truncated", *like)
    cols = [None if a is None else _as_columns(a) for a in (r, v, nv, term, trunc)]
    return r.shape, cols


# -- estimators ---------------------------------------------------------------

def gae(rewards, values, next_values, terminated, truncated, gamma, lam) -> np.ndarray:
    r"""Generalised advantage estimates :math:`\hat A^{GAE(\gamma,\lambda)}_t`.

    .. math::
        \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V(s_{t+1}) - V(s_t), \\
        \hat A_t = \delta_t + \gamma\lambda (1 - \mathrm{terminated}_t)
                   (1 - \mathrm{truncated}_t) \hat A_{t+1}, \qquad \hat A_T = 0,

    computed by the backward recursion over t, vectorised over the N
    environments [Schulman2016].

    Parameters
    ----------
    rewards : array_like, shape (T, N) or (T,)
        :math:`r_t`.
    values : array_like, same shape
        :math:`V(s_t)`.
    next_values : array_like, same shape
        :math:`V(s_{t+1})` of the true next observation (the final observation
        on termination or truncation, before the reset). Ignored where
        ``terminated``.
    terminated, truncated : array_like of bool, same shape
        Per transition, as in the module docstring; numbers are accepted if
        exactly 0 or 1.
    gamma : float in [0, 1]
    lam : float in [0, 1]

    Returns
    -------
    ndarray, float64, of the shape of `rewards`
        A new array; the inputs are never modified.

    Raises
    ------
    refpg.errors.ShapeError
        An array is not (T,) or (T, N), or its shape differs from `rewards`'.
    refpg.errors.NonFiniteError
        A NaN or infinite reward or value, naming the entry.
    refpg.errors.InvalidInputError
        A flag other than a boolean, 0 or 1; `lam` outside [0, 1].
    refpg.errors.InvalidDiscountError
        `gamma` outside [0, 1].

    Notes
    -----
    [Schulman2016] Eqs. (11)-(16) write one infinite episode, with
    :math:`V(s_{t+1})` read from ``values[t + 1]``. Here ``next_values`` is a
    separate argument so that a truncated episode bootstraps from its final
    observation, not from the first state of the next episode. Eqs. (17)-(18)
    (:math:`\lambda = 0` gives :math:`\delta_t`; :math:`\lambda = 1` gives
    :math:`G_t - V(s_t)`, with :math:`G_t` from `discounted_returns` with the
    same bootstrapping) hold exactly for the first and, for the second, when
    ``next_values[t] == values[t + 1]`` inside every episode, as it is for
    a critic evaluated once per state; the function does not require it.

    References
    ----------
    [Schulman2016] Eqs. (11)-(18).

    Examples
    --------
    A time limit at t = 1 bootstraps from next_values[1] = 8 and stops the
    recursion; t = 3 is the end of the rollout, mid-episode:

    >>> gae([1., 2., 3., 4.], [2., 4., 2., 6.], [4., 8., 6., 2.],
    ...     [False] * 4, [False, True, False, False], gamma=0.5, lam=0.5)
    array([ 1.5 ,  2.  ,  3.75, -1.  ])
    """
    shape, (r, v, nv, term, trunc) = _check_rollout(
        rewards, terminated, truncated, values, next_values)
    gamma = check_discount(gamma, "gamma", allow_one=True)
    lam = check_real(lam, "lam", low=0.0, high=1.0)
    return _gae(r, v, nv, term, trunc, gamma, lam).reshape(shape)


def _gae(r, v, nv, term, trunc, gamma, lam):
    # np.where, not a product with (1 - terminated), so that the critic's value
    # of a terminal observation takes no part at all, whatever it is.
    delta = r + np.where(term, 0.0, gamma * nv) - v
    carry = np.where(term | trunc, 0.0, gamma * lam)
    adv = np.empty_like(delta)
    acc = np.zeros(delta.shape[1])
    for t in range(delta.shape[0] - 1, -1, -1):
        acc = delta[t] + carry[t] * acc
        adv[t] = acc
    return adv


def lambda_returns(rewards, values, next_values, terminated, truncated, gamma, lam) -> np.ndarray:
    r"""TD(lambda) targets :math:`G^\lambda_t = \hat A^{GAE(\gamma,\lambda)}_t + V(s_t)`.

    Equivalently, with :math:`V'_t` = ``next_values[t]`` and
    :math:`G^\lambda_T = V_T = 0`,

    .. math::
        G^\lambda_t = r_t + \gamma (1 - \mathrm{terminated}_t)\big[V'_t
            + \lambda (1 - \mathrm{truncated}_t)(G^\lambda_{t+1} - V(s_{t+1}))\big],

    which is the familiar :math:`r_t + \gamma[(1-\lambda) V(s_{t+1}) + \lambda
    G^\lambda_{t+1}]` inside an episode when ``next_values[t] == values[t + 1]``:
    the value-function target of PPO and of [Schulman2016] Section 5.

    Parameters
    ----------
    rewards, values, next_values, terminated, truncated, gamma, lam
        As in `gae`.

    Returns
    -------
    ndarray, float64, of the shape of `rewards`

    Raises
    ------
    refpg.errors.InvalidInputError
        On the same inputs as `gae`.

    Notes
    -----
    Computed as ``gae(...) + values``, the form PPO implementations use, so
    it is the target they should produce to rounding. If V is the true value
    of a deterministic environment and policy, :math:`G^\lambda_t = V(s_t)`
    for every lambda, also across a bootstrapped time limit (see the tests).

    References
    ----------
    [Schulman2016] Section 5; [Schulman2017] Section 5 (the target of L^VF).
    """
    shape, (r, v, nv, term, trunc) = _check_rollout(
        rewards, terminated, truncated, values, next_values)
    gamma = check_discount(gamma, "gamma", allow_one=True)
    lam = check_real(lam, "lam", low=0.0, high=1.0)
    return (_gae(r, v, nv, term, trunc, gamma, lam) + v).reshape(shape)


def discounted_returns(rewards, terminated, truncated, gamma, *, next_values=None) -> np.ndarray:
    r"""Discounted returns :math:`G_t = \sum_{k=t}^{e} \gamma^{k-t} r_k + \gamma^{e-t+1} B_e`.

    Here e is the last step of t's episode within the rollout, and the
    bootstrap :math:`B_e` is 0 if ``terminated[e]``, else ``next_values[e]``
    (a truncation, or the end of the rollout mid-episode), or 0 if
    `next_values` is not given. Computed backwards:

    .. math::
        G_t = r_t + \gamma \begin{cases}
            G_{t+1} & \text{neither flag at } t,\ t < T - 1 \\
            0 & \mathrm{terminated}_t \\
            B_t & \text{otherwise (truncated, or } t = T - 1)
        \end{cases}

    This is the return of docs/conventions.md ("within one episode").

    Parameters
    ----------
    rewards : array_like, shape (T, N) or (T,)
    terminated, truncated : array_like of bool, same shape
        As in `gae`.
    gamma : float in [0, 1]
    next_values : array_like, same shape, optional
        :math:`V(s_{t+1})` of the true next observation, read only at a
        truncation or at the last row. Without it, :math:`G_t` is the
        discounted return of the observed segment only: on an episode cut by
        a time limit or by the end of the rollout it is short of the true
        return by the missing tail.

    Returns
    -------
    ndarray, float64, of the shape of `rewards`

    Raises
    ------
    refpg.errors.InvalidInputError
        On the same inputs as `gae` (there is no `lam`); a `next_values` of
        another shape than `rewards` is a `refpg.errors.ShapeError`.

    References
    ----------
    docs/conventions.md, "Sample-based quantities"; [Williams1992] weighs
    :math:`\nabla \log\pi(a_t|s_t)` by this :math:`G_t`.

    Examples
    --------
    >>> discounted_returns([1., 2., 3., 4.], [False] * 4, [False, True, False, False], 0.5)
    array([2., 2., 5., 4.])
    """
    shape, (r, _, nv, term, trunc) = _check_rollout(
        rewards, terminated, truncated, next_values=next_values)
    gamma = check_discount(gamma, "gamma", allow_one=True)
    boot = np.zeros_like(r) if nv is None else np.where(term, 0.0, nv)
    follow = ~(term | trunc)
    follow[-1:] = False  # the rollout ends here: the rest of the episode is unseen
    out = np.empty_like(r)
    acc = np.zeros(r.shape[1])
    for t in range(r.shape[0] - 1, -1, -1):
        acc = r[t] + gamma * np.where(follow[t], acc, boot[t])
        out[t] = acc
    return out.reshape(shape)

r"""Token-level policy losses, KL penalties and loss aggregation for sequences.

See docs/conventions.md, "Sequences". Arrays are ``(n, L)``: n responses
padded to length L, with a response mask ``m[i, t]``. Each token loss returns
its value :math:`\ell_{i,t}` and its derivative :math:`\partial\ell_{i,t}/\partial\log\pi_\theta(y_{i,t})`
with everything the code detaches held fixed, so that the gradient a framework
backpropagates through a loss :math:`\sum_{i,t} w_{i,t}\ell_{i,t}` is
:math:`\sum_{i,t} w_{i,t}\,\partial\ell_{i,t}\,\nabla\log\pi_\theta(y_{i,t}|s_{i,t})`.
The weights :math:`w` are those of the aggregation (`aggregation_weights`).
Masked entries are 0 in every output, whatever the input holds there.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg._validation import check_choice, check_real as _real
from refpg.errors import InvalidInputError, ShapeError
from refpg.losses.sample import _ratio_terms

__all__ = [
    "TOKEN_LOSSES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "TokenLoss",
    "clip_bounds",
    "token_policy_loss",
    "kl_penalty_terms",
    "aggregation_weights",
    "aggregate",
]

TOKEN_LOSSES = ("ppo_clip", "gspo", "cispo")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


class TokenLoss(NamedTuple):
    """A token loss and its derivative in the token's own log-probability, both (n, L)."""

    value: np.ndarray
    dlogp: np.ndarray


def clip_bounds(eps_low, eps_high=None, dual_clip=None) -> tuple:
    r"""Validate a clip range: ``(eps_low, eps_high, dual_clip)`` as floats (dual_clip may be None).

    The ratio is clipped to :math:`[1-\epsilon_{low}, 1+\epsilon_{high}]`;
    `eps_high` defaults to `eps_low` (symmetric PPO); DAPO's clip-higher sets
    it larger [Yu2025]. The dual clip c > 1 bounds the loss of a negative
    advantage at :math:`-cA` [Ye2020].
    """
    lo = _real(eps_low, "eps_low", low=0.0)
    hi = lo if eps_high is None else _real(eps_high, "eps_high", low=0.0)
    if lo >= 1.0:
        raise InvalidInputError(f"eps_low should be < 1 (the lower bound 1 - eps_low must stay positive), "
                                f"actual {lo!r}")
    if dual_clip is not None:
        return lo, hi, _real(dual_clip, "dual_clip", low=1.0, low_open=True)
    return lo, hi, None


def token_policy_loss(logp, logp_old, advantages, mask, *, loss: str = "ppo_clip", eps_low: float = 0.2,
                      eps_high: float | None = None, dual_clip: float | None = None) -> TokenLoss:
    r"""Per-token policy loss :math:`\ell_{i,t}` (to minimise) and :math:`\partial\ell_{i,t}/\partial\log\pi_{i,t}`.

    ``"ppo_clip"`` (PPO, DAPO's clip-higher, dual clip):

    .. math:: \ell = -\min(r_t A,\ \mathrm{clip}(r_t, 1-\epsilon_{low}, 1+\epsilon_{high}) A),
              \qquad \partial\ell = -r_t A\ \text{where unclipped, else } 0

    and, with a dual clip c, :math:`\ell = -\max(\min(\cdot), cA)` for A < 0.

    ``"gspo"`` (GSPO-token): every token of response i carries the sequence
    ratio :math:`s_i = \exp(\frac{1}{|y_i|}\sum_t \log r_{i,t})` in value, with
    :math:`s_{i,t} = \mathrm{sg}(s_i)\,\pi_\theta(y_t)/\mathrm{sg}(\pi_\theta(y_t))`, and is clipped as
    PPO clips :math:`r_t`. Aggregated by seq-mean-token-mean its gradient is
    that of GSPO's sequence loss :math:`-\min(s_i A_i, \mathrm{clip}(s_i) A_i)`;
    token-sum aggregation multiplies response i's gradient by :math:`|y_i|`.

    ``"cispo"``: :math:`\ell = -\mathrm{sg}(\mathrm{clip}(r_t, 1-\epsilon_{low}, 1+\epsilon_{high}))\,A\log\pi_\theta`;
    no token's gradient is ever zeroed, the importance weight is clipped instead.
    Its value is reported as :math:`-\mathrm{clip}(r_t) A` (the loss up to the
    factor log pi that only its gradient sees), so that at theta = theta_old
    all three losses have the value :math:`-A`.

    Parameters
    ----------
    logp, logp_old : array_like (n, L)
        :math:`\log\pi_\theta` and :math:`\log\pi_{old}` of the sampled tokens.
    advantages : array_like (n, L) or (n,)
        Per-token or per-response advantages.
    mask : array_like of bool (n, L)
    loss : {"ppo_clip", "gspo", "cispo"}
    eps_low, eps_high, dual_clip
        See `clip_bounds`. GSPO's paper uses eps of order 3e-4 and 4e-4; CISPO
        uses a large eps_low (no lower clip).

    Returns
    -------
    TokenLoss
        ``value`` and ``dlogp``, (n, L), 0 where masked.

    References
    ----------
    [Schulman2017] Eq. (7); [Yu2025] (clip-higher); [Ye2020] (dual clip);
    [Zheng2025] Eqs. (5)-(7) and Section 4.3 (GSPO-token); [MiniMax2025] Eq. (4) (CISPO).
    """
    check_choice(loss, "loss", TOKEN_LOSSES)
    lo, hi, c = clip_bounds(eps_low, eps_high, dual_clip)
    lp, lpo, m = _token_arrays(logp, logp_old, mask)
    adv = np.asarray(advantages, dtype=np.float64)
    if adv.shape == lp.shape[:1]:
        adv = np.broadcast_to(adv[:, None], lp.shape)
    elif adv.shape != lp.shape:
        raise ShapeError(f"advantages should have shape {lp.shape} or ({lp.shape[0]},), actual {adv.shape}")
    logr = np.where(m, lp - lpo, 0.0)
    if loss == "gspo":
        n_tok = m.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            seq = np.where(n_tok > 0, logr.sum(axis=1, keepdims=True) / np.maximum(n_tok, 1), 0.0)
        ratio = np.broadcast_to(np.exp(seq), lp.shape)
    else:
        ratio = np.exp(logr)
    if loss == "cispo":
        w = np.clip(ratio, 1.0 - lo, 1.0 + hi)
        value, d = -w * adv, -w * adv
    else:
        terms = _ratio_terms(ratio, adv, lo, hi, c)
        # The gradient flows where the min takes r A: not clipped, A != 0, and not where the
        # dual clip's c A is taken (A < 0, r > c), whose gradient is zero too.
        flows = ~terms.clipped & (adv != 0)
        if c is not None:
            flows &= ~((adv < 0) & (ratio > c))
        value = -terms.objective
        d = np.where(flows, -ratio * adv, 0.0)
    return TokenLoss(np.where(m, value, 0.0), np.where(m, d, 0.0))


def kl_penalty_terms(logp, ref_logp, mask, estimator: str, *, logp_old=None,
                     importance: str = "none") -> TokenLoss:
    r"""A per-token KL penalty :math:`k_j` and its derivative in :math:`\log\pi_\theta`.

    With :math:`u = \log\pi_{ref} - \log\pi_\theta` at the sampled token
    ([Schulman2020]; the same values as `refpg.kl_k1` .. `refpg.kl_k3` with
    ``logp_new = ref_logp`` and ``logp_old = logp``):

    .. math:: k_1 = -u,\quad k_2 = u^2/2,\quad k_3 = e^u - 1 - u;\qquad
              \partial k_1 = 1,\quad \partial k_2 = -u,\quad \partial k_3 = 1 - e^u

    Parameters
    ----------
    logp, ref_logp : array_like (n, L)
    mask : array_like of bool (n, L)
    estimator : {"k1", "k2", "k3"}
    logp_old : array_like (n, L), optional
        Needed for an importance weight :math:`r_t = \pi_\theta/\pi_{old}`.
    importance : {"none", "detached", "differentiated"}
        ``"none"``: the penalty is :math:`k`. ``"detached"``: :math:`\mathrm{sg}(r_t)\,k`
        (its derivative :math:`r_t\,\partial k`). ``"differentiated"``: :math:`r_t k`
        (derivative :math:`r_t (k + \partial k)`), whose value is unbiased for the
        per-token KL under samples from pi_old.

    Returns
    -------
    TokenLoss
        ``value`` and ``dlogp``, (n, L), 0 where masked.

    References
    ----------
    [Schulman2020]; [TangMunos2025]; [Shah2025].
    """
    check_choice(estimator, "estimator", KL_ESTIMATORS)
    check_choice(importance, "importance", ("none", "detached", "differentiated"))
    lp, lref, m = _token_arrays(logp, ref_logp, mask, names=("logp", "ref_logp"))
    u = np.where(m, lref - lp, 0.0)
    if estimator == "k1":
        k, dk = -u, np.ones_like(u)
    elif estimator == "k2":
        k, dk = 0.5 * u * u, -u
    else:
        # expm1 keeps k3 exact to the last bit near u = 0, where e^u - 1 - u cancels.
        k, dk = np.expm1(u) - u, -np.expm1(u)
    if importance != "none":
        if logp_old is None:
            raise InvalidInputError(f"importance={importance!r} needs logp_old (the sampling policy's log-probs)")
        _, lpo, _ = _token_arrays(logp, logp_old, mask, names=("logp", "logp_old"))
        r = np.exp(np.where(m, lp - lpo, 0.0))
        k, dk = (r * k, r * dk) if importance == "detached" else (r * k, r * (k + dk))
    return TokenLoss(np.where(m, k, 0.0), np.where(m, dk, 0.0))


def aggregation_weights(mask, mode: str, *, norm_length: float | None = None) -> np.ndarray:
    r"""Weights :math:`w_{i,t}` with :math:`\mathrm{aggregate}(\ell) = \sum_{i,t} w_{i,t}\ell_{i,t}`.

    .. math::
        \text{token-mean: } \frac{m_{i,t}}{\sum_{j,s} m_{j,s}},\quad
        \text{seq-mean-token-sum: } \frac{m_{i,t}}{n},\quad
        \text{seq-mean-token-mean: } \frac{m_{i,t}}{n\sum_s m_{i,s}},\quad
        \text{seq-mean-token-sum-norm: } \frac{m_{i,t}}{n L_{norm}}

    Parameters
    ----------
    mask : array_like of bool (..., n, L)
        Leading axes are batches of their own.
    mode : str
        One of `AGGREGATIONS` (verl's ``loss_agg_mode`` names).
    norm_length : float, optional
        :math:`L_{norm}` of seq-mean-token-sum-norm (Dr. GRPO's constant; verl
        uses the maximum response length). Required for that mode.

    Returns
    -------
    ndarray (..., n, L)
        0 on masked positions; a response with no token gets weight 0
        (it counts in n for the seq-mean modes).

    References
    ----------
    [Liu2025] Section 3.1 (the length normalisation it removes).
    """
    check_choice(mode, "mode", AGGREGATIONS)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise InvalidInputError(f"mask should be a boolean array, actual dtype {m.dtype}")
    if m.ndim < 2 or m.shape[-2] == 0:
        raise ShapeError(f"mask should have shape (..., n, L) with n >= 1, actual shape {m.shape}")
    mf = m.astype(np.float64)
    n = m.shape[-2]
    if mode == "token-mean":
        total = mf.sum(axis=(-2, -1), keepdims=True)
        return np.divide(mf, total, out=np.zeros_like(mf), where=total > 0)
    if mode == "seq-mean-token-sum":
        return mf / n
    if mode == "seq-mean-token-mean":
        per = mf.sum(axis=-1, keepdims=True)
        return np.divide(mf, n * per, out=np.zeros_like(mf), where=per > 0)
    if norm_length is None:
        raise InvalidInputError("mode='seq-mean-token-sum-norm' needs norm_length (the constant L_norm)")
    return mf / (n * _real(norm_length, "norm_length", low=0.0, low_open=True))


def aggregate(loss_mat, mask, mode: str, *, norm_length: float | None = None) -> float | np.ndarray:
    r"""Aggregate a per-token loss under `mode`: :math:`\sum_{i,t} w_{i,t}\ell_{i,t}` (`aggregation_weights`)."""
    w = aggregation_weights(mask, mode, norm_length=norm_length)
    lm = np.asarray(loss_mat, dtype=np.float64)
    if lm.shape != w.shape:
        raise ShapeError(f"loss_mat should have the shape of mask {w.shape}, actual {lm.shape}")
    out = np.where(w != 0, lm * w, 0.0).sum(axis=(-2, -1))
    return float(out) if out.ndim == 0 else out


def _token_arrays(a, b, mask, names=("logp", "logp_old")):
    m = np.asarray(mask)
    if m.dtype != bool:
        raise InvalidInputError(f"mask should be a boolean array, actual dtype {m.dtype}")
    A = np.asarray(a, dtype=np.float64)
    B = np.asarray(b, dtype=np.float64)
    for arr, nm in ((A, names[0]), (B, names[1])):
        if arr.shape != m.shape:
            raise ShapeError(f"{nm} should have the shape of mask {m.shape}, actual {arr.shape}")
        bad = m & ~np.isfinite(arr)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInputError(f"{nm}[{', '.join(map(str, idx))}] is {float(arr[idx])!r} at an unmasked "
                                    "position; expected a finite log-probability")
    return A, B, m


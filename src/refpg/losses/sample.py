r"""Sample-level PPO terms ([Schulman2017]): the clipped surrogate, its gradient and its diagnostics.

Functions of per-sample log-probabilities (any shape, one entry per
sample): `ppo_clip_loss` (the loss to *minimise*, the conformance kit's
canonical form), `ppo_clip_terms`, `ppo_clip_grad_logp`, `clip_fraction`,
`ratio_outside_fraction`, `approx_kl`, `normalized_advantages`; and
`ratio_clip_terms`, the same terms on ratios with an asymmetric clip range and
the dual clip of [Ye2020], on which they and the conformance kit's reference
(`refpg.conformance.check_ppo_loss`) are built.

Sign convention: `ppo_clip_loss` and `ppo_clip_grad_logp` are the *loss*
:math:`-L^{CLIP}` as libraries minimise it; `ppo_clip_terms` and
`ratio_clip_terms` return the per-sample *objective* (to maximise).

This is the one home of these formulas: `refpg.algorithms.ppo` builds its
theta-level surrogates and updates on them and re-exports them under their
old names.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg._validation import as_float_array, check_positive_int, check_real
from refpg.errors import InvalidInputError, ShapeError
from refpg.kl_estimators import kl_k3

__all__ = [
    "ClipTerms",
    "ppo_clip_loss",
    "ppo_clip_terms",
    "ppo_clip_grad_logp",
    "clip_fraction",
    "ratio_outside_fraction",
    "approx_kl",
    "normalized_advantages",
    "ratio_clip_terms",
]

class ClipTerms(NamedTuple):
    """Per-sample pieces of the clipped surrogate, each of the input shape.

    Attributes
    ----------
    objective : ndarray
        :math:`\\min(r A, \\mathrm{clip}(r, 1-\\epsilon, 1+\\epsilon) A)`.
    ratio : ndarray
        :math:`r = \\exp(\\log\\pi_{new} - \\log\\pi_{old})`.
    clipped : ndarray of bool
        The min selects the clipped term strictly, so the sample's gradient
        is zero: :math:`(A > 0 \\wedge r > 1+\\epsilon) \\vee (A < 0 \\wedge r < 1-\\epsilon)`.
    """

    objective: np.ndarray
    ratio: np.ndarray
    clipped: np.ndarray


def _check_clip_eps(clip_eps, *, allow_none: bool = False):
    if clip_eps is None and allow_none:
        return None
    return check_real(clip_eps, "clip_eps", low=0.0, low_open=True)


def _sample_arrays(logp_new, logp_old, *more):
    """Validated float64 copies of logp_new, logp_old (and advantages), one shape, non-empty."""
    new = as_float_array(logp_new, "logp_new")
    if new.size == 0:
        raise ShapeError(f"logp_new should hold at least one sample, actual shape {new.shape}")
    out = [new]
    for name, x in zip(("logp_old", "advantages"), (logp_old, *more)):
        arr = as_float_array(x, name)
        if arr.shape != new.shape:
            raise ShapeError(f"{name} should have the shape of logp_new, {new.shape}, actual shape {arr.shape}")
        out.append(arr)
    return tuple(out)


def _terms(log_r: np.ndarray, adv: np.ndarray, eps) -> ClipTerms:
    """ClipTerms on validated arrays; ``eps=None`` means no clipping."""
    return _ratio_terms(np.exp(log_r), adv, eps, eps, None)


def _unclipped(r: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """r A, with A = 0 contributing 0 even where r overflowed to inf (inf * 0 is NaN)."""
    with np.errstate(invalid="ignore"):
        return np.where(adv == 0, 0.0, r * adv)


def _ratio_terms(r: np.ndarray, adv: np.ndarray, low, high, dual) -> ClipTerms:
    """ClipTerms on float64 arrays of one shape, unchecked; ``low=None``: no clipping; ``dual=None``: no dual clip."""
    unclipped = _unclipped(r, adv)
    if low is None:
        return ClipTerms(unclipped, r, np.zeros(r.shape, dtype=bool))
    lo, hi = 1.0 - low, 1.0 + high
    clipped = ((adv > 0) & (r > hi)) | ((adv < 0) & (r < lo))
    objective = np.minimum(unclipped, np.clip(r, lo, hi) * adv)
    if dual is not None:
        # [Ye2020]: a lower bound c A on the objective of a negative advantage only.
        objective = np.where(adv < 0, np.maximum(objective, dual * adv), objective)
    return ClipTerms(objective, r, clipped)


def ratio_clip_terms(ratio, advantages, eps_low, eps_high=None, *, dual_clip=None) -> ClipTerms:
    r"""Per-sample clipped objective on given ratios, with an asymmetric clip range and a dual clip.

    .. math::
        \ell_i = \min\big(r_i A_i,\ \mathrm{clip}(r_i, 1-\epsilon_{low}, 1+\epsilon_{high}) A_i\big),
        \qquad \ell_i \leftarrow \max(\ell_i, c A_i) \text{ where } A_i < 0 \text{ (dual clip } c\text{)}

    The building block of `ppo_clip_terms` (``eps_low = eps_high = clip_eps``,
    no dual clip, ``r = exp(logp_new - logp_old)``) and of the conformance
    kit's PPO reference (`refpg.conformance.check_ppo_loss`), which draws the
    ratios itself and declares the clip range and the dual clip as options.

    Parameters
    ----------
    ratio : array_like
        The ratios :math:`r_i`, taken as given: no finiteness check (a NaN
        propagates), so that the kit can evaluate it on degenerate inputs.
    advantages : array_like, the shape of `ratio`
    eps_low : float > 0
        :math:`\epsilon_{low}`, the lower side of the clip range.
    eps_high : float > 0 or None
        :math:`\epsilon_{high}`; None takes `eps_low` (a symmetric range).
    dual_clip : float > 1 or None
        The bound :math:`c` of the dual clip [Ye2020] (verl's ``clip_ratio_c``);
        None turns it off.

    Returns
    -------
    ClipTerms
        ``clipped`` marks the samples where the min takes the clipped term
        (:math:`A_i > 0, r_i > 1+\epsilon_{high}` or :math:`A_i < 0, r_i < 1-\epsilon_{low}`);
        it never marks a sample where the dual-clip term :math:`c A_i` is taken
        (:math:`A_i < 0, r_i > c > 1`), whose gradient is zero too.

    Raises
    ------
    refpg.errors.ShapeError
        advantages has another shape than ratio.
    refpg.errors.InvalidInputError
        eps_low or eps_high not > 0, or dual_clip not > 1.

    Notes
    -----
    Boundary convention as in `ppo_clip_terms`: a ratio exactly on a bound
    is not clipped.

    References
    ----------
    [Schulman2017] Eq. (7); [Ye2020] (dual clip); [Yu2025] (the asymmetric clip range).
    """
    r = np.asarray(ratio, dtype=np.float64)
    adv = np.asarray(advantages, dtype=np.float64)
    if adv.shape != r.shape:
        raise ShapeError(f"advantages should have the shape of ratio, {r.shape}, actual shape {adv.shape}")
    low = check_real(eps_low, "eps_low", low=0.0, low_open=True)
    high = low if eps_high is None else check_real(eps_high, "eps_high", low=0.0, low_open=True)
    dual = None if dual_clip is None else check_real(dual_clip, "dual_clip", low=1.0, low_open=True)
    return _ratio_terms(r, adv, low, high, dual)


def ppo_clip_terms(logp_new, logp_old, advantages, clip_eps) -> ClipTerms:
    r"""Per-sample clipped objective, ratio and clipped mask ([Schulman2017] Eq. 7).

    .. math::
        \ell_i = \min\big(r_i A_i,\ \mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon) A_i\big),
        \qquad r_i = e^{\log\pi_{new,i} - \log\pi_{old,i}}

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
        Finite log-probabilities (or log-densities) of the sampled actions.
    advantages : array_like, the same shape
        Finite advantage estimates.
    clip_eps : float > 0

    Returns
    -------
    ClipTerms

    Raises
    ------
    refpg.errors.ShapeError
        Shapes differ, or no samples.
    refpg.errors.NonFiniteError
        A NaN or infinite entry, naming it.
    refpg.errors.InvalidInputError
        clip_eps is not > 0.

    Notes
    -----
    Boundary convention: a ratio exactly at :math:`1 \pm \epsilon` is *not*
    clipped (the two terms are equal there and the unclipped gradient is
    kept), which is what ``torch.clamp`` (gradient 1 on the closed interval)
    and ``torch.min`` (ties split evenly between equal branches) give.
    ``r`` overflows to ``inf`` (NumPy warns) for log-ratios above about 709.78.

    References
    ----------
    [Schulman2017] Eq. (7).
    """
    eps = _check_clip_eps(clip_eps)
    new, old, adv = _sample_arrays(logp_new, logp_old, advantages)
    return _terms(new - old, adv, eps)


def ppo_clip_loss(logp_new, logp_old, advantages, clip_eps) -> float:
    r"""The PPO clipped loss to minimise, :math:`-L^{CLIP}` ([Schulman2017] Eq. 7).

    .. math::
        \mathcal{L} = -\frac{1}{M}\sum_{i=1}^M
        \min\big(r_i A_i,\ \mathrm{clip}(r_i, 1-\epsilon, 1+\epsilon) A_i\big),
        \qquad r_i = \exp(\log\pi_{new,i} - \log\pi_{old,i})

    This signature is the conformance kit's canonical form.

    Parameters
    ----------
    logp_new, logp_old, advantages : array_like, one shape
        As in `ppo_clip_terms`; M is their size (the mean is over all entries).
    clip_eps : float > 0

    Returns
    -------
    float

    Raises
    ------
    refpg.errors.InvalidInputError
        As `ppo_clip_terms`.

    References
    ----------
    [Schulman2017] Eq. (7).

    Examples
    --------
    >>> from refpg.losses import ppo_clip_loss
    >>> import numpy as np
    >>> ppo_clip_loss([np.log(2.0)], [0.0], [1.0], 0.2)   # r = 2 > 1.2: clipped
    -1.2
    """
    return -float(np.mean(ppo_clip_terms(logp_new, logp_old, advantages, clip_eps).objective))


def ppo_clip_grad_logp(logp_new, logp_old, advantages, clip_eps) -> np.ndarray:
    r"""Per-sample :math:`\partial\mathcal{L}/\partial\log\pi_{new,i}` of `ppo_clip_loss`.

    .. math::
        \frac{\partial \mathcal{L}}{\partial \log\pi_{new,i}} =
        \begin{cases} 0 & (A_i > 0 \wedge r_i > 1+\epsilon) \vee (A_i < 0 \wedge r_i < 1-\epsilon)\\
        -r_i A_i / M & \text{otherwise}\end{cases}

    Parameters
    ----------
    logp_new, logp_old, advantages, clip_eps
        As in `ppo_clip_loss`.

    Returns
    -------
    ndarray of the input shape

    Notes
    -----
    At a ratio exactly on :math:`1\pm\epsilon` the loss has a kink; the
    value returned is the unclipped one (see `ppo_clip_terms`), which is also
    what torch autograd returns.

    References
    ----------
    [Schulman2017] Eq. (7).
    """
    terms = ppo_clip_terms(logp_new, logp_old, advantages, clip_eps)
    unclipped = _unclipped(terms.ratio, np.asarray(advantages, dtype=np.float64))
    return np.where(terms.clipped, 0.0, -unclipped / terms.ratio.size)


def clip_fraction(logp_new, logp_old, advantages, clip_eps) -> float:
    r"""Fraction of samples whose gradient clipping zeroes ([Schulman2017] Eq. 7).

    .. math::
        f = \frac{1}{M}\sum_i 1\big[(A_i > 0 \wedge r_i > 1+\epsilon) \vee
        (A_i < 0 \wedge r_i < 1-\epsilon)\big]

    Parameters
    ----------
    logp_new, logp_old, advantages, clip_eps
        As in `ppo_clip_loss`.

    Returns
    -------
    float in [0, 1]

    Notes
    -----
    SB3 and CleanRL log ``clip_fraction = mean(|r - 1| > eps)``
    (`ratio_outside_fraction` here), which ignores the advantage. That counts
    also samples outside the interval on the side where the min keeps the
    *unclipped* term (A > 0 with r < 1-eps, A < 0 with r > 1+eps, and A = 0),
    whose gradient is not zeroed. So ``clip_fraction <= ratio_outside_fraction``
    always, with equality when no sample is outside on its pessimistic side.
    The definition here is the one that says how much of the batch stopped
    contributing to the update. Ratios exactly on the boundary count as
    unclipped in both (strict inequalities).

    References
    ----------
    [Schulman2017] Eq. (7) and Figure 1.
    """
    return float(np.mean(ppo_clip_terms(logp_new, logp_old, advantages, clip_eps).clipped))


def ratio_outside_fraction(logp_new, logp_old, clip_eps) -> float:
    r"""SB3's and CleanRL's logged "clip fraction", :math:`\frac1M\sum_i 1[|r_i - 1| > \epsilon]`.

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
    clip_eps : float > 0

    Returns
    -------
    float in [0, 1]
        At least `clip_fraction` on the same samples (see its Notes).

    References
    ----------
    [Schulman2017]; Stable-Baselines3 ``PPO.train``; CleanRL ``ppo.py`` (``clipfracs``).
    """
    eps = _check_clip_eps(clip_eps)
    new, old = _sample_arrays(logp_new, logp_old)
    return float(np.mean(np.abs(np.exp(new - old) - 1.0) > eps))


def approx_kl(logp_new, logp_old) -> float:
    r"""Batch mean of :math:`k_3 = (r - 1) - \log r`, the approximate KL(pi_old || pi_new).

    .. math:: \widehat{D} = \frac1M \sum_i \big((r_i - 1) - \log r_i\big)

    The estimator SB3 (``approx_kl_div``) and CleanRL (``approx_kl``) use for
    early stopping: unbiased for :math:`D_{KL}(\pi_{old}\|\pi_{new})` on
    samples :math:`a \sim \pi_{old}`, and non-negative sample by sample.
    The mean of :math:`k_1 = -\log r` (CleanRL's ``old_approx_kl``) is also
    unbiased but can be negative; `ppo_update` records both.

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape, at least one sample

    Returns
    -------
    float >= 0

    References
    ----------
    [Schulman2020].
    """
    new, old = _sample_arrays(logp_new, logp_old)
    return float(np.mean(kl_k3(new, old)))


def normalized_advantages(advantages, *, ddof: int = 0, eps: float = 1e-8) -> np.ndarray:
    r"""Advantage normalisation :math:`(A - \bar A) / (\mathrm{std}_{ddof}(A) + \epsilon)`.

    .. math::
        \mathrm{std}_{ddof}(A) = \Big(\frac{1}{M - ddof}\sum_i (A_i - \bar A)^2\Big)^{1/2}

    SB3 and CleanRL normalise each minibatch with ``adv.std()`` of torch,
    i.e. ddof = 1, and eps = 1e-8.

    Parameters
    ----------
    advantages : array_like, shape (M,)
    ddof : int >= 0
        Delta degrees of freedom of the standard deviation.
    eps : float >= 0
        Added to the standard deviation.

    Returns
    -------
    ndarray (M,)

    Raises
    ------
    refpg.errors.InvalidInputError
        ``M <= ddof`` (the standard deviation is undefined: one sample with
        ddof = 1 would give 0/0 = NaN), or ``std + eps == 0``.
    """
    adv = as_float_array(advantages, "advantages", ndim=1)
    ddof = check_positive_int(ddof, "ddof", minimum=0)
    eps = check_real(eps, "eps", low=0.0)
    return _normalize(adv, ddof, eps, "advantages")


def _normalize(adv, ddof, eps, where):
    if adv.size <= ddof:
        raise InvalidInputError(
            f"the standard deviation with ddof={ddof} of {where} is undefined for {adv.size} "
            f"sample(s); expected more than {ddof} samples")
    denom = adv.std(ddof=ddof) + eps
    if denom == 0.0:
        raise InvalidInputError(
            f"{where} are all equal, so std + eps is 0 with eps={eps!r}; expected eps > 0")
    return (adv - adv.mean()) / denom

r"""`check_ppo_loss` and `check_value_loss`: PPO's two per-minibatch losses.

PPO's clipped policy loss [Schulman2017], Eq. (7), as the scalar to minimise:

.. math::
    \mathcal L^{CLIP} = -\frac1n \sum_i \min\big(r_i \hat A_i,\
        \mathrm{clip}(r_i, 1 - \epsilon, 1 + \epsilon) \hat A_i\big), \qquad
    r_i = \exp(\log\pi_{new}(a_i|s_i) - \log\pi_{old}(a_i|s_i)),

with :math:`\hat A` optionally normalised per minibatch, the clip range
optionally asymmetric, :math:`[1 - \epsilon_{low}, 1 + \epsilon_{high}]`
(DAPO [Yu2025], verl), and optionally the dual clip of [Ye2020]: where
:math:`\hat A_i < 0` the term is :math:`\max(\min(\dots), c \hat A_i)`. The
value loss comes in the three forms that libraries use (unclipped; the
PPO2/CleanRL maximum of the clipped and unclipped errors; SB3's clipped
prediction).

Correctness depends on which branch each sample takes, so every branch is
drawn by construction: a *region* is a sign of the advantage and a band of
the ratio (below the clip range, inside, above, beyond the dual clip), and
each region has a scenario whose every case puts a sample in it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, check_callable, check_signature,
                                        convention_parameters, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.losses.sample import ratio_clip_terms

__all__ = ["check_ppo_loss", "check_value_loss", "PPO_CONVENTIONS", "VALUE_CONVENTIONS"]

#: Convention -> (signature, default options). SB3 and CleanRL normalise the advantages of each
#: minibatch with torch's std (ddof = 1) plus 1e-8; SB3 skips normalisation for a minibatch of one.
#: CleanRL's JAX scripts and PureJaxRL normalise each minibatch too, with jnp.std (ddof = 0) plus 1e-8.
#: verl passes the old log-probabilities first and a response mask before the clip range (all ones here:
#: one token per sample, so its masked token-mean is the mean), dual-clips at clip_ratio_c = 3 by default
#: and reports the fraction of samples whose clipped term is active.
PPO_CONVENTIONS = {
    "refpg": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="none")),
    "torchrl": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="none")),
    "sb3": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="batch", ddof=1, eps=1e-8)),
    "cleanrl": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="batch", ddof=1, eps=1e-8)),
    "cleanrl_jax": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss",
                    dict(normalize="batch", ddof=0, eps=1e-8)),
    "purejaxrl": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss",
                  dict(normalize="batch", ddof=0, eps=1e-8)),
    "rlax": ("fn(prob_ratios_t, adv_t, epsilon) -> loss", dict(normalize="none")),
    "verl": ("fn(old_log_prob, log_prob, advantages, response_mask, cliprange) -> loss",
             dict(normalize="none", dual_clip=3.0, clip_fraction="active", count_eps=1e-8)),
}
#: The options of `check_ppo_loss` and their defaults where the convention sets none.
PPO_OPTIONS = dict(normalize="none", ddof=1, eps=1e-8, dual_clip=None, eps_low=None, eps_high=None,
                   clip_fraction="any", count_eps=0.0)
CLIP_FRACTIONS = ("any", "active")

#: Value loss: convention -> default (style, coef).
VALUE_CONVENTIONS = {
    "refpg": dict(style="unclipped", coef=0.5),
    "cleanrl": dict(style="max", coef=0.5),
    "sb3": dict(style="clip_prediction", coef=1.0),
}
VALUE_STYLES = ("unclipped", "max", "clip_prediction")
#: The value loss's parameters, the same in every convention.
VALUE_PARAMETERS = ("values_new", "values_old", "returns", "clip_eps")

CLIPS = (0.2, 0.1, 0.3)
# A ratio is drawn through u (see `_log_ratio`): |u| < 1 is inside the clip range, u = +-1 are its
# bounds and u = u_c its dual-clip bound c. Every u is drawn at least 10% away from every bound, so
# the branch each sample takes is unambiguous in float32 too; shrinking keeps that margin.
_MARGIN = 0.1
#: Ratio bands, in the order regions are listed: below the clip range, inside, above, beyond the dual clip.
BANDS = ("below", "inside", "above", "beyond")
_MAGNITUDES = st.one_of(st.sampled_from([1.0, 2.0, 0.5, 3.0]), st.floats(0.25, 8.0, width=32).map(float))


# -- reference ------------------------------------------------------------------------

class _Clip(NamedTuple):
    """The clip geometry of one case: the range [1 - low, 1 + high] and the dual-clip bound (None: off)."""

    low: float
    high: float
    dual: float | None

    @property
    def u_dual(self) -> float:
        """The dual-clip bound in units of u (`_log_ratio`); inf without a dual clip."""
        return math.inf if self.dual is None else math.log(self.dual) / math.log1p(self.high)

    def describe(self) -> str:
        rng = (f"eps={self.low:g}" if self.low == self.high else f"eps_low={self.low:g}, eps_high={self.high:g}")
        return rng + ("" if self.dual is None else f", dual_clip={self.dual:g}")


def _clip_of(clip_eps: float, opts: dict) -> _Clip:
    """A case's geometry: eps_low / eps_high fall back to the clip_eps passed to the function (verl's rule)."""
    low = clip_eps if opts["eps_low"] is None else opts["eps_low"]
    high = clip_eps if opts["eps_high"] is None else opts["eps_high"]
    return _Clip(low, high, opts["dual_clip"])


def _log_ratio(u, clip: _Clip):
    """log r with r = (1 + high)^u for u >= 0 and (1 - low)^(-u) for u < 0: u = +-1 are the clip bounds."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u >= 0, u * np.log1p(clip.high), -u * np.log1p(-clip.low))


def _bands(u, clip: _Clip) -> np.ndarray:
    """The band of each u ("below", "inside", "above", "beyond"), or "" within 10% of a bound (a kink)."""
    u = np.asarray(u, dtype=np.float64)
    lo, hi = 1.0 - _MARGIN, 1.0 + _MARGIN
    uc = clip.u_dual
    out = np.full(u.shape, "", dtype=object)
    out[np.abs(u) <= lo] = "inside"
    out[u <= -hi] = "below"
    out[(u >= hi) & (u <= lo * uc)] = "above"
    out[u >= hi * uc] = "beyond"
    return out


def _u_interval(band: str, u_dual: float) -> tuple:
    """(simple values, low, high) of the u drawn in `band` (`_bands`); `u_dual` is inf without a dual clip."""
    lo, hi = 1.0 - _MARGIN, 1.0 + _MARGIN
    if band == "inside":
        return (0.0, 0.5, -0.5), -lo, lo
    if band == "below":
        return (-2.0, -3.0), -10.0, -hi
    if band == "above":
        top = min(10.0, lo * u_dual)
        return tuple(x for x in (2.0, 3.0, 5.0) if x <= top), hi, top
    # Beyond the dual clip: up to c^2 (a ratio of 9 for verl's c = 3).
    start = float(math.ceil(hi * u_dual))
    return (start, start + 1.0), hi * u_dual, 2 * u_dual


@functools.lru_cache(maxsize=None)
def _u_strategy(band: str, u_dual: float):
    """Draws of u in `band`, shrinking towards its simple values."""
    simple, low, high = _u_interval(band, u_dual)
    floats = st.floats(low, high)
    return st.one_of(st.sampled_from(simple), floats) if simple else floats


def _random_u(rng, bands, u_dual: float) -> np.ndarray:
    """One u per entry of `bands`, drawn by NumPy: a third of them simple values, the rest uniform in the band."""
    out = np.empty(len(bands))
    for i, band in enumerate(bands):
        simple, low, high = _u_interval(band, u_dual)
        out[i] = simple[rng.integers(len(simple))] if simple and rng.random() < 1 / 3 else rng.uniform(low, high)
    return out


def _normalized(adv: np.ndarray, opts: dict) -> np.ndarray:
    """Per-minibatch normalisation; a minibatch with n <= ddof is left as is (SB3's rule for n = 1)."""
    if not _normalizes(adv.size, opts):
        return adv
    return (adv - adv.mean()) / (adv.std(ddof=opts["ddof"]) + opts["eps"])


def _normalizes(n: int, opts: dict) -> bool:
    return opts["normalize"] == "batch" and n > opts["ddof"]


def _normalization_ill_conditioned(adv, opts, be) -> bool:
    """Whether per-minibatch normalisation turns the dtype's rounding of A - mean(A) into an error
    above the tolerance (nearly tied, non-integer advantages in float32, say)."""
    if not _normalizes(adv.size, opts):
        return False
    rounding = 4 * np.finfo(be.np_dtype).eps * (1.0 + abs(float(adv.mean())))
    return rounding / (adv.std(ddof=opts["ddof"]) + opts["eps"]) > 0.1 * be.tol


def _sign_noise(adv, opts, be) -> float:
    """How far from 0 a normalised advantage may land by the dtype's rounding of A - mean(A): below it,
    its sign (hence its branch) is not decided by the inputs. 0 without normalisation (A is given)."""
    if not _normalizes(adv.size, opts):
        return 0.0
    rounding = 8 * np.finfo(be.np_dtype).eps * (1.0 + float(np.max(np.abs(adv))))
    return rounding / (adv.std(ddof=opts["ddof"]) + opts["eps"])


class _PPORef(NamedTuple):
    loss: float
    d_ratio: np.ndarray     # d loss / d ratio
    clipped: np.ndarray     # the clipped term is taken (A > 0, r > 1 + high, or A < 0, r < 1 - low)
    dual: np.ndarray        # the dual-clip term c A is taken (A < 0, r > c)
    outside: np.ndarray     # r outside the clip range, whatever the sign of A

    @property
    def fractions(self) -> dict:
        return {"any": float(np.mean(self.outside)), "active": float(np.mean(self.clipped)),
                "dual": float(np.mean(self.dual))}


def _ppo_reference(ratio, adv, clip: _Clip, *, dual_signs: str = "negative", count_eps: float = 0.0) -> _PPORef:
    r"""-mean of :math:`\min(r A, \mathrm{clip}(r, 1 - low, 1 + high) A)`, and where A < 0 with a dual clip
    c, of :math:`\max(\min(\dots), c A)` [Ye2020], with its derivative in r and branch masks.

    `dual_signs` = "all" or "min" give the misreadings the failure message names (`_variant_hint`).
    The mean divides by n + `count_eps` (verl's masked mean adds 1e-8 to the token count).
    """
    n = ratio.size
    # The terms come from the one home of the formula (refpg.losses); the misreadings are built on its
    # terms without the dual clip. `clipped`: the min picks the clipped term (zero gradient) when A > 0 and
    # r > 1 + high, or A < 0 and r < 1 - low.
    right = dual_signs == "negative"
    surrogate, _, clipped = ratio_clip_terms(ratio, adv, clip.low, clip.high, dual_clip=clip.dual if right else None)
    dual = np.zeros(n, bool)
    if clip.dual is not None:
        if not right:
            surrogate = (np.minimum if dual_signs == "min" else np.maximum)(surrogate, clip.dual * adv)
        # Where A < 0, min(r A, clip(r) A) = r A for r > 1 + high, and r A < c A exactly when r > c.
        dual = (adv < 0) & (ratio > clip.dual)
        clipped &= ~dual
    count = n + count_eps
    d_ratio = np.where(clipped | dual, 0.0, -adv / count)
    outside = (ratio < 1.0 - clip.low) | (ratio > 1.0 + clip.high)
    return _PPORef(float(-np.sum(surrogate) / count), d_ratio, clipped, dual, outside)


def _normalization_hint(ratio, adv, clip, actual, opts, be) -> str:
    """Name a common normalisation that reproduces `actual`, if one does."""
    n = adv.size
    variants = [dict(normalize="none", ddof=1, eps=1e-8)]
    variants += [dict(normalize="batch", ddof=d, eps=e) for d in (0, 1) for e in (1e-8, 1e-5, 0.0)]
    # Each other normalisation, as is and with the scaling bugs the declared one is tested for already
    # (a sum where the mean belongs, a flipped sign): a summed un-normalised loss is neither.
    scalings = [(1.0, ""), (-1.0, "-1 x "), (float(n), "n x "), (-float(n), "-n x ")] if n > 1 else \
        [(1.0, ""), (-1.0, "-1 x ")]
    for c, times in scalings:
        for v in variants:
            if v == {k: opts[k] for k in v} or (v["normalize"] == "batch" and n <= v["ddof"]):
                continue
            with np.errstate(all="ignore"):
                loss = _ppo_reference(ratio, _normalized(adv, v), clip).loss
            if not np.isfinite(loss) or abs(loss) <= be.tol or abs(actual - c * loss) > be.tol * (1 + abs(c * loss)):
                continue
            bug = {1.0: "", -1.0: " (the sign is flipped)"}.get(c, f" (n = {n}, the minibatch size: a sum where "
                                                                  f"the mean belongs{', and the sign flipped' if c < 0 else ''})")
            if v["normalize"] == "none":
                return (f"; the actual value is {times}the loss WITHOUT advantage normalisation{bug}: pass "
                        f"normalize='none' (on the command line --option normalize=none) if that is intended")
            return (f"; the actual value is {times}the loss with advantages normalised by std(ddof={v['ddof']}) + "
                    f"{v['eps']:g}{bug}: pass ddof={v['ddof']}, eps={v['eps']:g} (on the command line "
                    f"--option ddof={v['ddof']} --option eps={v['eps']:g}) if that is intended")
    return ""


def _variant_hint(ratio, a, clip: _Clip, clip_eps: float, actual: float, ref: float, be, scale: float,
                  count_eps: float = 0.0) -> str:
    """Name the dual-clip, clip-range or count misreading that reproduces `actual`, if one does.

    `a` are the advantages the loss sees (normalised as declared); `ref` is the right loss.
    """
    def fits(alt: float) -> bool:
        allowed = be.tol * (1.0 + scale)
        return abs(alt - ref) > allowed and abs(actual - alt) <= allowed

    for other in (0.0, 1e-8):
        if other != count_eps and fits(_ppo_reference(ratio, a, clip, count_eps=other).loss):
            return (f"; the actual value is the mean with the sum divided by n + {other:g} instead of n + "
                    f"{count_eps:g} (verl's masked_mean adds 1e-8 to the token count): pass count_eps={other:g} "
                    f"(on the command line --option count_eps={other:g}) if that is intended")

    def _ref(c: _Clip, **kw):
        return _ppo_reference(ratio, a, c, count_eps=count_eps, **kw)

    if clip.dual is not None:
        if fits(_ref(clip._replace(dual=None)).loss):
            return ("; the actual value is the loss WITHOUT the dual clip (plain PPO: where A < 0 and ratio > c "
                    "the term should be c * A): pass dual_clip=None if that is intended")
        if fits(_ref(clip, dual_signs="all").loss):
            return ("; the actual value is the loss with the dual clip applied to every sample: the bound "
                    "max(..., c * A) belongs only where A < 0 (where A > 0 it replaces every term by c * A)")
        if fits(_ref(clip, dual_signs="min").loss):
            return ("; the actual value takes min(..., c * A) where A < 0 (in loss terms max(-ratio * A, "
                    "-clip(ratio) * A, -c * A)): the dual clip is a lower bound on the objective, a max")
    elif fits(_ref(clip._replace(dual=3.0)).loss):
        return ("; the actual value is the loss with a dual clip at c = 3 (verl's default clip_ratio_c): pass "
                "dual_clip=3 (on the command line --option dual_clip=3) if that is intended")
    if (clip.low, clip.high) != (clip_eps, clip_eps):
        if fits(_ref(clip._replace(low=clip_eps, high=clip_eps)).loss):
            return (f"; the actual value is the loss with the symmetric clip range [1 - clip_eps, 1 + clip_eps] "
                    f"(clip_eps={clip_eps:g}): the declared eps_low / eps_high are not applied")
        if fits(_ref(clip._replace(low=clip.high, high=clip.low)).loss):
            return "; the actual value is the loss with eps_low and eps_high swapped"
    return ""


def _parse_loss(session, raw, inputs, *, allow_fraction, verl=False):
    """(loss, fractions, outcomes) from what the function returned; `fractions` maps "clip" and "dual"
    to the returned clip fraction and dual-clip fraction (either may be absent)."""
    fractions = {}
    if isinstance(raw, dict):
        if "loss" not in raw:
            return None, {}, [Outcome(f"{session.kind}.output_shape",
                                      f"the returned dict should have a 'loss' key, actual keys "
                                      f"{sorted(raw)}", inputs)]
        loss = raw["loss"]
        fractions = {k: raw[key] for k, key in (("clip", "clip_fraction"), ("dual", "dual_clip_fraction"))
                     if key in raw}
    elif isinstance(raw, (tuple, list)) and allow_fraction and len(raw) == 2:
        loss, fractions = raw[0], {"clip": raw[1]}
    elif isinstance(raw, (tuple, list)) and verl and len(raw) == 4:
        # verl's compute_policy_loss: (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower).
        loss, fractions = raw[0], {"clip": raw[1], "dual": raw[3]}
    elif isinstance(raw, (tuple, list)) and allow_fraction:
        four = ", verl's (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower)" if verl else ""
        return None, {}, [Outcome(f"{session.kind}.output_shape",
                                  f"the function should return loss, (loss, clip_fraction){four} or a dict with "
                                  f"'loss' (and 'clip_fraction', 'dual_clip_fraction'), actual a "
                                  f"{type(raw).__name__} of {len(raw)} items", inputs)]
    else:
        loss = raw
    return loss, fractions, []


def _resolve(options: dict, defaults: dict, allowed: dict) -> dict:
    unknown = set(options) - set(allowed)
    if unknown:
        raise InvalidInputError(f"options should be among {sorted(allowed)}, actual unknown "
                                f"{sorted(unknown)}")
    out = {**{k: v for k, v in allowed.items()}, **defaults, **options}
    return out


def _ppo_options(convention: str, options: dict) -> tuple[dict, tuple, list]:
    """The resolved options, the clip widths drawn, and warnings; `InvalidInputError` naming a bad option."""
    opts = _resolve(options, PPO_CONVENTIONS[convention][1], PPO_OPTIONS)
    check_choice(opts["normalize"], "normalize", ("none", "batch"))
    if isinstance(opts["ddof"], bool) or not isinstance(opts["ddof"], (int, np.integer)) or opts["ddof"] < 0:
        raise InvalidInputError(f"ddof should be a non-negative integer, actual {opts['ddof']!r}")
    opts["eps"] = check_real(opts["eps"], "eps")
    opts["count_eps"] = check_real(opts["count_eps"], "count_eps", low=0.0)
    check_choice(opts["clip_fraction"], "clip_fraction", CLIP_FRACTIONS)
    if opts["eps_low"] is not None:
        opts["eps_low"] = check_real(opts["eps_low"], "eps_low", low=0.0, high=1.0, low_open=True, high_open=True)
    if opts["eps_high"] is not None:
        opts["eps_high"] = check_real(opts["eps_high"], "eps_high", low=0.0, low_open=True)
    warnings = []
    clips = CLIPS
    if opts["dual_clip"] is not None:
        c = opts["dual_clip"]
        if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) or not np.isfinite(c) \
                or not c > 1:
            raise InvalidInputError(f"dual_clip should be a real number > 1 (the bound c of the dual clip, verl's "
                                    f"clip_ratio_c; None turns it off), actual {c!r}")
        opts["dual_clip"] = c = float(c)
        # Ratios are drawn between the clip range and c too: c must clear 1 + eps_high by a margin.
        room = [e for e in CLIPS if _clip_of(e, opts).u_dual >= 1.25]
        if not room:
            high = opts["eps_high"] if opts["eps_high"] is not None else min(CLIPS)
            raise InvalidInputError(
                f"dual_clip should be well above the upper clip bound 1 + eps_high, so that ratios between them "
                f"can be drawn (dual_clip >= (1 + eps_high)^1.25 = {(1 + high) ** 1.25:.4g}), actual {c!r}")
        if len(room) < len(CLIPS):
            warnings.append(f"dual_clip={c:g} is close to 1 + clip_eps for clip_eps in "
                            f"{sorted(set(CLIPS) - set(room))}: those clip widths were not drawn")
        clips = tuple(room)
    return opts, clips, warnings


# -- PPO clipped loss ---------------------------------------------------------------------

@numerics_of_their_own
def check_ppo_loss(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                   max_examples: int = 100, seed: int = 0, **options) -> Report:
    r"""Check a PPO clipped policy loss against :math:`-\frac1n\sum_i \min(r_i A_i, \mathrm{clip}(r_i) A_i)`.

    [Schulman2017], Eq. (7), with the advantages normalised per minibatch
    when ``normalize="batch"``: :math:`(A - \bar A)/(\mathrm{std}_{ddof}(A) + eps)`
    (left as is when n <= ddof); the clip range
    :math:`[1 - \epsilon_{low}, 1 + \epsilon_{high}]`; and with a dual clip
    ``c`` [Ye2020], the term of a sample with :math:`A_i < 0` is
    :math:`\max(\min(r_i A_i, \mathrm{clip}(r_i) A_i), c A_i)`: :math:`c A_i`
    once :math:`r_i > c`, where its derivative in :math:`r_i` is exactly 0.

    Every region that decides the loss is drawn by construction, each by a
    scenario whose cases all put a sample in it (the other samples are drawn
    freely), and shrinking never leaves it: both signs of A with the ratio
    below, inside and above the clip range, and with a dual clip, both signs
    with the ratio beyond c. Every ratio is at least 10% (in log) away from
    every bound, so float32 rounding cannot change a branch.

    Parameters
    ----------
    fn : callable
        ``fn(logp_new, logp_old, advantages, clip_eps) -> loss`` (rlax:
        ``fn(prob_ratios_t, adv_t, epsilon)``; verl: ``fn(old_log_prob,
        log_prob, advantages, response_mask, cliprange)``, old first, as verl's
        ``compute_policy_loss`` takes them; the mask is all ones, one token per sample). It may
        return ``(loss, clip_fraction)``, a dict with ``"loss"`` (and
        ``"clip_fraction"``, ``"dual_clip_fraction"``), or under verl its
        ``(pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower)``; every fraction
        returned is checked (ppo_kl is not).
    convention : {"refpg", "sb3", "cleanrl", "cleanrl_jax", "purejaxrl", "torchrl", "rlax", "verl"}
        Sets the defaults of the options (`PPO_CONVENTIONS`): SB3 and CleanRL
        normalise with ddof=1, CleanRL's JAX scripts ("cleanrl_jax") and
        PureJaxRL with ddof=0, verl dual-clips at 3 and reports the active
        clip fraction.
    backend, dtype, max_examples, seed
        As in `check_gae`. The cases are shared among the region scenarios:
        about ``max_examples`` per check id.
    **options
        ``normalize`` ("none" or "batch"), ``ddof``, ``eps``;
        ``dual_clip`` (c > 1, or None for no dual clip);
        ``eps_low``, ``eps_high`` (the clip range's two sides; None takes
        the ``clip_eps`` passed to the function, as verl's
        ``cliprange_low``/``cliprange_high`` do);
        ``clip_fraction``: what a returned clip fraction counts, ``"any"``
        (SB3, CleanRL: :math:`\frac1n\#\{i: r_i \notin [1-\epsilon_{low}, 1+\epsilon_{high}]\}`)
        or ``"active"`` (TRL, verl, OpenRLHF: the samples whose clipped
        term is taken, :math:`A_i > 0, r_i > 1 + \epsilon_{high}` or
        :math:`A_i < 0, r_i < 1 - \epsilon_{low}`). A dual-clip fraction
        counts :math:`A_i < 0, r_i > c` (verl's ``pg_clipfrac_lower``);
        ``count_eps`` (default 0; 1e-8 under verl): the mean divides the sum by
        n + count_eps, as verl's ``masked_mean`` divides by the token count plus 1e-8.

    Returns
    -------
    Report
        Check ids ``ppo_loss.inside_clip_range`` (every ratio within the clip
        range: the loss is -mean(r A)), ``ppo_loss.outside_clip_range``
        (ratios below or above it, no dual clip active), ``ppo_loss.dual_clip``
        (with ``dual_clip``: ratios beyond c, for either sign of A),
        ``ppo_loss.clip_fraction`` (if returned), ``ppo_loss.gradient``
        (torch backend through autograd, jax through ``jax.grad``: d loss / d
        logp_new is exactly 0 where the clipped or the dual-clip term is taken
        and -A r / n elsewhere), plus the generic ones.

    Notes
    -----
    With ``backend="jax"`` minibatches have 4 or 8 samples, or the check's
    minimum (1, or 2 where a one-sample minibatch has no usable advantage),
    and shrinking keeps to those sizes: a jitted function compiles once per
    input shape, and its ``jax.grad`` once more.

    Raises
    ------
    refpg.errors.InvalidInputError
        An unknown option or a bad value, named: ``dual_clip`` not a real
        number > 1, ``eps_low`` outside (0, 1), ``clip_fraction`` not one of
        "any", "active".

    References
    ----------
    [Schulman2017] Eq. (7); [Ye2020] (dual clip); [Yu2025] (DAPO's
    asymmetric clip range); huggingface/trl PR #3175 (the active clip fraction).
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(PPO_CONVENTIONS))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    opts, clips, warnings = _ppo_options(convention, options)
    if convention == "rlax" and opts["normalize"] != "none":
        raise InvalidInputError("convention 'rlax' takes ratios and advantages as given; normalize "
                                "should be 'none'")
    rlax, verl = convention == "rlax", convention == "verl"
    # cleanrl normalises a minibatch of one too, where std(ddof >= 1) is NaN (SB3 skips it): only then are
    # minibatches of one left out.
    nan_for_one = convention == "cleanrl" and opts["normalize"] == "batch" and opts["ddof"] >= 1
    # A minibatch of one normalised with ddof = 0 has the advantage 0: no sign, so no region to draw.
    n_min = 2 if nan_for_one or (opts["normalize"] == "batch" and opts["ddof"] == 0) else 1
    if nan_for_one:
        warnings.append(f"convention 'cleanrl' normalises with the ddof={opts['ddof']} std, which is NaN for a "
                        "minibatch of one; minibatches of one were not drawn")

    named = check_signature(fn, "ppo_loss", convention, convention_parameters(PPO_CONVENTIONS))

    def args_of(case, be):
        clip = _clip_of(case["clip_eps"], opts)
        logp_old = be.round(case["logp_old"])
        logp_new = be.round(case["logp_old"] + _log_ratio(case["u"], clip))
        adv = be.round(case["advantages"])
        ratio = np.exp(logp_new - logp_old)
        if rlax:
            args = [("prob_ratios_t", be.round(ratio)), ("adv_t", adv), ("epsilon", case["clip_eps"])]
            ratio = be.round(ratio)
        elif verl:
            args = [("old_log_prob", logp_old), ("log_prob", logp_new), ("advantages", adv),
                    ("response_mask", np.ones_like(adv)), ("cliprange", case["clip_eps"])]
        else:
            args = [("logp_new", logp_new), ("logp_old", logp_old), ("advantages", adv),
                    ("clip_eps", case["clip_eps"])]
        return args, ratio, adv, clip

    def probe(be):
        s = Session("ppo_loss", fn, convention, be, max_examples=1, seed=seed, options=opts)
        args, *_ = args_of({"logp_old": np.array([-1.0, -0.5]), "u": np.array([0.5, 2.0]),
                            "advantages": np.array([1.0, -1.0]), "clip_eps": clips[0]}, be)
        return s.call(args)

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("ppo_loss", fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=named + warnings + warn0)
    torch_grad = be.name == "torch"
    grad_arg = {"rlax": "prob_ratios_t", "verl": "log_prob"}.get(convention, "logp_new")
    seen = {"fraction": False}

    def evaluate_for(check_id, band, background):
        def evaluate(case):
            args, ratio, adv, clip = args_of(case, be)
            bands = _bands(case["u"], clip)
            if any(b != band and b not in background for b in bands):
                return []  # a shrink move left the scenario's bands, or put a ratio within 10% of a bound
            if not any(b in _FAMILY[check_id] for b in bands):
                return []  # no ratio left in the bands of the check id (shrinking may change the signs)
            a = _normalized(adv, opts)
            noise = _sign_noise(adv, opts, be)
            inputs = dict(args)
            inputs["ratio (derived)"] = ratio
            call = session.call(args, grad_of=grad_arg if torch_grad else None)
            outcomes = session.generic_outcomes(call, inputs)
            if call.error is not None:
                return outcomes
            loss_raw, fractions, bad = _parse_loss(session, call.output, inputs, allow_fraction=True, verl=verl)
            if bad:
                return outcomes + bad
            ref = _ppo_reference(ratio, a, clip, count_eps=opts["count_eps"])
            if fractions:
                seen["fraction"] = True
                ambiguous = int(np.sum(np.abs(a) <= noise))
                outcomes += _fraction_outcomes(session, fractions, ref, clip, opts["clip_fraction"], ambiguous,
                                               inputs)
            loss, more = session.output_array(loss_raw, "loss", (), inputs)
            outcomes += more
            if loss is None:
                return outcomes
            if not np.isfinite(ref.loss):
                return outcomes
            if opts["normalize"] == "batch":
                inputs["normalized advantages (derived)"] = a
            if _normalization_ill_conditioned(adv, opts, be):
                return outcomes  # A - mean(A) is rounding noise, amplified by 1/(std + eps): no verdict
            scale = float(np.max(np.abs(ratio * a)))
            o = session.compare(check_id, "loss", loss, ref.loss, inputs, scale=scale,
                                why=_why(check_id, clip), n=ratio.size, n_is="the minibatch size")
            if o is not None:
                if "; actual = " not in o.message:  # no scaling bug under the declared normalisation
                    o.message += (_normalization_hint(ratio, adv, clip, float(loss), opts, be)
                                  or _variant_hint(ratio, a, clip, case["clip_eps"], float(loss), ref.loss, be,
                                                   scale, opts["count_eps"]))
                outcomes.append(o)
            if be.differentiable:
                c = clip.dual

                def zero_why(i):
                    if ref.dual[i]:
                        return f"where the dual-clip term c * A is taken (A < 0 and ratio > c = {c:g})"
                    return "where the clipped term is taken"

                outcomes += _gradient_outcomes(session, call, grad_arg, _loss_item,
                                               ref.d_ratio if rlax else ref.d_ratio * ratio, ref.clipped | ref.dual,
                                               inputs, "ppo_loss.gradient",
                                               "where the unclipped term is taken the gradient is that of "
                                               "-ratio * A / n", judged=np.abs(a) > noise, zero_why=zero_why)
            return outcomes
        return evaluate

    session.declare(*session.generic_ids())
    scenarios = _ppo_scenarios(opts["dual_clip"] is not None)
    n_ids = len({cid for cid, *_ in scenarios})
    # About max_examples cases per check id, shared among its regions: each region is drawn by construction.
    per_scenario = max(1, math.ceil(max_examples * n_ids / len(scenarios)))
    buckets = _buckets(be, n_min)
    for check_id, sign, band, background in scenarios:
        session.run_scenario(_ppo_cases(sign, band, background, n_min, clips, opts, _sizes(n_min, buckets)),
                             evaluate_for(check_id, band, background), (check_id,),
                             moves=functools.partial(_ppo_moves, n_min=n_min, clips=clips, buckets=buckets),
                             max_examples=per_scenario)
    if seen["fraction"]:
        session.declare("ppo_loss.clip_fraction", tracked=True)
    if be.differentiable:
        session.declare("ppo_loss.gradient", tracked=True)
    return session.report()


#: The bands of which a case of each check id has at least one ratio (a shrink move must keep one).
_FAMILY = {"ppo_loss.inside_clip_range": ("inside",), "ppo_loss.outside_clip_range": ("below", "above"),
           "ppo_loss.dual_clip": ("beyond",)}


def _ppo_scenarios(dual: bool) -> list:
    """(check id, sign of A, band of the ratio, bands the other samples may take) of every region scenario."""
    out = [("ppo_loss.inside_clip_range", s, "inside", ("inside",)) for s in (1, -1)]
    out += [("ppo_loss.outside_clip_range", s, band, ("below", "inside", "above"))
            for band in ("above", "below") for s in (1, -1)]
    if dual:
        out += [("ppo_loss.dual_clip", s, "beyond", BANDS) for s in (-1, 1)]
    return out


def _why(check_id: str, clip: _Clip) -> str:
    sym = clip.low == clip.high
    lo, hi = ("eps", "eps") if sym else ("eps_low", "eps_high")
    dual = "" if clip.dual is None else (f"; where A < 0 the dual clip bounds the term below by c * A "
                                         f"(c = dual_clip = {clip.dual:g})")
    if check_id == "ppo_loss.inside_clip_range":
        return f"every ratio is inside [1 - {lo}, 1 + {hi}], so the loss is -mean(ratio * A) ({clip.describe()})"
    if check_id == "ppo_loss.outside_clip_range":
        return (f"loss = -mean(min(ratio * A, clip(ratio, 1 - {lo}, 1 + {hi}) * A)): the min takes the clipped "
                f"term when A > 0 and ratio > 1 + {hi}, or A < 0 and ratio < 1 - {lo} ({clip.describe()}){dual}")
    return (f"where A < 0 the term is max(min(ratio * A, clip(ratio, 1 - {lo}, 1 + {hi}) * A), c * A) with "
            f"c = dual_clip = {clip.dual:g}, which is c * A once ratio > c; where A >= 0 the dual clip changes "
            f"nothing ({clip.describe()})")


_FRACTION_MEANING = {
    "any": "the fraction of samples with the ratio outside the clip range",
    "active": "the fraction of samples whose clipped term is taken: A > 0 and ratio > 1 + eps_high, or A < 0 "
              "and ratio < 1 - eps_low",
    "dual": "the fraction of samples where the dual clip is taken: A < 0 and ratio > c",
}


def _fraction_outcomes(session, fractions: dict, ref: _PPORef, clip: _Clip, definition: str, ambiguous: int,
                       inputs) -> list:
    """Each returned fraction against the declared definition; any other value, shape, type or a NaN is a
    ``ppo_loss.clip_fraction`` failure (a fraction that is not checked must not read as passed).

    `ambiguous` samples have a normalised advantage within rounding of 0, whose sign (so whether their
    clipped term is active) is not decided by the inputs: each widens the tolerance by one sample.
    """
    outcomes = []
    for key, raw in fractions.items():
        what = "clip_fraction" if key == "clip" else "dual_clip_fraction"
        if key == "dual" and clip.dual is None:
            session.warn(f"the function returned a dual-clip fraction, which was not checked: no dual_clip "
                         f"was declared (pass dual_clip=c)")
            continue
        # A fraction in float32 (``.float().mean()``) is fine: only a wrong count is a bug.
        f, more = session.output_array(raw, what, (), inputs, dtype_matters=False,
                                       check_id="ppo_loss.clip_fraction")
        outcomes += more
        if f is None:
            continue
        session.ran("ppo_loss.clip_fraction")
        kind = definition if key == "clip" else "dual"
        expected = ref.fractions[kind]
        n = ref.d_ratio.size
        # Half a sample's share: the ratios are drawn at least 10% away from every bound, so the count is
        # unambiguous and any wrong count is off by at least 1/n.
        slack = (0.5 + (ambiguous if kind != "any" else 0)) / n
        f = float(f)
        if abs(f - expected) <= slack:
            continue
        if kind == "any" and clip.low == clip.high:
            meaning = f"the fraction of samples with |ratio - 1| > eps, eps={clip.low:g}"
        else:
            meaning = f"{_FRACTION_MEANING[kind]}; {clip.describe()}"
        message = f"{what} should be {expected:.6g} ({meaning}), actual {f:.6g}"
        for other in ("active", "any", "dual") if key == "clip" else ("active", "any"):
            if other == kind or (other == "dual" and clip.dual is None):
                continue
            value = ref.fractions[other]
            if abs(f - value) <= 0.5 / n:
                if other == "dual":
                    message += (f"; the actual value is {_FRACTION_MEANING['dual']} (verl reports it apart, "
                                f"as pg_clipfrac_lower: return it as dual_clip_fraction)")
                elif key == "clip":
                    message += (f"; the actual value is {_FRACTION_MEANING[other]}: pass clip_fraction="
                                f"'{other}' (on the command line --option clip_fraction={other}) if that is "
                                f"what the function reports")
                else:
                    message += f"; the actual value is {_FRACTION_MEANING[other]}, not the dual-clip fraction"
                break
        outcomes.append(Outcome("ppo_loss.clip_fraction", message, inputs, expected=expected, actual=f))
    return outcomes


def _ppo_cases(sign: int, band: str, background: tuple, n_min: int, clips: tuple, opts: dict, sizes=None):
    """Minibatches of up to 8 samples, one of which (the focus) has an advantage of sign `sign` (after the
    declared normalisation) and a ratio in `band`; the others have ratios in the `background` bands.

    The focus's advantage is made the batch's strict maximum (minimum for a negative sign) when the
    minibatch is normalised, so that A - mean(A) has the sign; otherwise it is sign x a magnitude.
    """
    clip_choice = st.sampled_from(clips)
    seeds = st.integers(0, 2**32 - 1)
    sizes = _sizes(n_min) if sizes is None else sizes

    @st.composite
    def build(draw):
        clip_eps = draw(clip_choice)
        u_dual = _clip_of(clip_eps, opts).u_dual
        n = draw(sizes)
        focus = draw(_indices(n))
        # The structure (sizes, the focus and its ratio, the clip width) is Hypothesis's to explore; the
        # other samples' numbers come from a seed it draws (`_cases.random_numbers`), ten times faster.
        rng = np.random.default_rng(draw(seeds))
        u = _random_u(rng, [background[i] for i in rng.integers(len(background), size=n)], u_dual)
        u[focus] = draw(_u_strategy(band, u_dual))
        logp_old = np.where(rng.random(n) < 1 / 3, rng.choice([-1.0, -0.5, -2.0, 0.0], size=n),
                            rng.uniform(-5.0, 0.0, size=n).astype(np.float32))
        adv = _cases.random_numbers(rng, (n,))
        m = draw(_MAGNITUDES)
        others = np.delete(adv, focus)
        if _normalizes(n, opts) and others.size:
            adv[focus] = others.max() + m if sign > 0 else others.min() - m
        else:
            adv[focus] = sign * m
        return {"logp_old": logp_old.astype(np.float64), "u": u, "advantages": adv, "clip_eps": clip_eps}
    return build()


@functools.lru_cache(maxsize=None)
def _indices(n: int):
    """Indices into n samples; one strategy per n (a new strategy costs a validation on its first draw)."""
    return st.integers(0, n - 1)


def _ppo_moves(case, n_min: int = 1, clips: tuple = CLIPS, buckets: tuple | None = None):
    return _sample_moves(case, ("logp_old", "u", "advantages"), {"clip_eps": clips}, n_min, buckets)


#: Minibatch sizes drawn for backend="jax", on top of the check's minimum: a jitted function compiles
#: once per input shape (and jax.grad of it once more), about half a second each.
JAX_SIZES = (4, 8)


def _sizes(n_min: int, buckets: tuple | None = None):
    """Minibatch sizes: every one from `n_min` to 8, or only `buckets` (backend="jax")."""
    return st.integers(n_min, 8) if buckets is None else st.sampled_from(buckets)


def _buckets(be, n_min: int) -> tuple | None:
    return tuple(sorted({n_min, *JAX_SIZES})) if be.name == "jax" else None


def _sample_moves(case, keys, choices, n_min, buckets):
    """`_cases.sample_moves`; with `buckets` (backend="jax"), a sample is never dropped alone: the case
    shrinks to a window of each smaller bucket size instead, so that shrinking compiles no new shape."""
    if buckets is None:
        return _cases.sample_moves(case, keys, choices, n_min=n_min)
    n = len(case[keys[0]])
    out = [{**case, **{k: case[k][i:i + b] for k in keys}} for b in buckets if b < n for i in range(n - b + 1)]
    return out + _cases.sample_moves(case, keys, choices, n_min=n)


def _gradient_outcomes(session, call, grad_arg, pick, expected, clipped, inputs, check_id, why,
                       judged=None, zero_why=None):
    """Compare the gradient of the loss `pick(output)` (torch autograd or ``jax.grad``, through
    `Session.input_gradient`) with `expected`; exactly 0 where `clipped`.

    Only the entries in `judged` (all by default) are compared: an entry at a kink of the loss has no
    single right derivative. With none judged, the check reaches no verdict on this case. `zero_why(i)`
    says where the derivative of entry i must be 0 ("where the clipped term is taken" by default).
    """
    judged = np.ones(expected.shape, bool) if judged is None else judged
    if not judged.any():
        return []
    got, problem = session.input_gradient(call, grad_arg, pick)
    if problem is not None:
        return [Outcome(check_id, problem, inputs)]
    session.ran(check_id)
    leak = clipped & judged & (got != 0.0)
    if leak.any():
        i = int(np.flatnonzero(leak)[0])
        where = zero_why(i) if zero_why is not None else "where the clipped term is taken"
        return [Outcome(check_id, f"d loss / d {grad_arg}[{i}] should be exactly 0 {where} (it does not "
                                  f"depend on {grad_arg} there), actual {got[i]:.6g}",
                        inputs, expected=expected, actual=got, where=(i,))]
    if not judged.all():
        why += (f"; entries {np.flatnonzero(~judged).tolist()} sit at a kink of the loss (no single "
                f"derivative) and are not judged")
    o = session.compare(check_id, f"d loss / d {grad_arg}", np.where(judged, got, expected), expected, inputs,
                        why=why, n=expected.size, n_is="the minibatch size")
    if o is None:
        return []
    o.actual = got  # what the function returned, the unjudged entries included
    return [o]


def _loss_item(raw):
    """The loss out of any accepted output form (for a gradient of a call made again, under jax.grad)."""
    if isinstance(raw, dict):
        return raw["loss"]
    if isinstance(raw, (tuple, list)):
        return raw[0]
    return raw


# -- value loss ---------------------------------------------------------------------------

def _value_reference(v_new, v_old, ret, eps, style, coef, tol):
    """(loss, d loss / d v_new, judged, clipped) of the three value-loss forms.

    The loss is a mean of per-sample terms, so d loss / d v_new[i] depends on sample i alone and
    each sample is judged on its own. With d = v_new - v_old and v_clip = v_old + clip(d, -eps, eps):

    * strictly inside the clip range (|d| < eps), v_clip = v_new on a whole neighbourhood of v_new,
      so the clipped and unclipped terms are the same function there and the derivative is the full
      2 coef (v_new - R) / n, in every style, whatever branch a tie-break picks (torch.max splits a
      tie evenly, and each half is that derivative only if v_clip is built from values_new itself:
      a detached v_clip halves it);
    * strictly outside (|d| > eps), v_clip is a constant: the clipped term has derivative exactly 0,
      the unclipped one 2 coef (v_new - R) / n; "max" takes whichever term is larger;
    * not judged (`judged` False): |d| = eps, the clip's own kink, where d v_clip / d v_new is 1 on one
      side and 0 on the other, and for "max" outside the range a tie of the two terms, where the max
      has a kink. "Equal" means within the tolerance `tol`, since the user's float32 arithmetic may
      land on either side of a kink that the float64 reference puts on one.

    `clipped` marks the samples whose derivative must be exactly 0 (the clipped term is taken).
    """
    n = v_new.size
    d = v_new - v_old
    v_clip = v_old + np.clip(d, -eps, eps)
    un, cl = (v_new - ret) ** 2, (v_clip - ret) ** 2
    full = 2 * coef * (v_new - ret) / n
    kink = np.abs(np.abs(d) - eps) <= tol * (1 + np.abs(v_old) + eps)
    outside = (np.abs(d) > eps) & ~kink
    if style == "unclipped":
        return coef * un.mean(), full, np.ones(n, bool), np.zeros(n, bool)
    if style == "clip_prediction":
        return coef * cl.mean(), np.where(outside, 0.0, full), ~kink, outside
    tie = outside & (np.abs(np.abs(v_new - ret) - np.abs(v_clip - ret))
                     <= tol * (1 + np.abs(v_new) + np.abs(ret) + np.abs(v_old) + eps))
    clipped = outside & ~tie & (cl > un)
    return coef * np.maximum(un, cl).mean(), np.where(clipped, 0.0, full), ~(kink | tie), clipped


VALUE_CLIPS = (0.2, 0.5, 1.0)
#: The regions of one sample that decide the value loss and its gradient: (position of d = V - V_old
#: against the clip range, sign of the error V - R, the larger of the two terms of "max"). Inside the
#: range both terms are equal; outside, the clipped term is necessarily the larger when R lies beyond
#: V away from V_clip (the error's sign is then opposite to d's), so six outside combinations exist.
VALUE_REGIONS = (("inside", 1, "equal"), ("inside", -1, "equal"),
                 ("above", -1, "clipped"), ("above", 1, "clipped"), ("above", 1, "unclipped"),
                 ("below", 1, "clipped"), ("below", -1, "clipped"), ("below", -1, "unclipped"))


def _value_cases(region: tuple, n_min: int = 1, buckets: tuple | None = None):
    """Minibatches of up to 8 samples, one of which (the focus) lies in `region` (`VALUE_REGIONS`); the
    others are drawn freely (their numbers from a seed, as in `_ppo_cases`)."""
    where, sign, larger = region
    seeds = st.integers(0, 2**32 - 1)
    sizes = _sizes(n_min, buckets)
    clip_choice = st.sampled_from(VALUE_CLIPS)
    inside_t = st.one_of(st.sampled_from([0.0, 0.5, -0.5]), st.floats(-0.9, 0.9))
    outside_t = st.one_of(st.sampled_from([2.0, 3.0]), st.floats(1.1, 4.0))
    # Where R sits between V and V_clip, as a fraction f of their distance from V: the clipped term is
    # the larger for f < 1/2; kept 10% away from the tie at 1/2 and from R = V.
    near = st.one_of(st.just(0.25), st.floats(0.1, 0.4))
    far = st.one_of(st.sampled_from([1.0, 2.0]), st.floats(0.6, 3.0))

    @st.composite
    def build(draw):
        eps = draw(clip_choice)
        n = draw(sizes)
        focus = draw(_indices(n))
        rng = np.random.default_rng(draw(seeds))
        v_old = _cases.random_numbers(rng, (n,))
        ret = _cases.random_numbers(rng, (n,))
        delta = np.where(rng.random(n) < 1 / 3, rng.choice([0.0, 0.1, -0.1, 1.0, -1.0, 2.0], size=n),
                         rng.uniform(-3.0, 3.0, size=n).astype(np.float32))
        m = draw(_MAGNITUDES)
        if where == "inside":
            delta[focus] = draw(inside_t) * eps
            ret[focus] = v_old[focus] + delta[focus] - sign * m
        else:
            side = 1.0 if where == "above" else -1.0
            t = draw(outside_t)
            delta[focus] = side * t * eps
            v_new = v_old[focus] + delta[focus]
            if sign == -side:  # R beyond V, away from V_clip
                ret[focus] = v_new + side * m
            else:  # R on V_clip's side of V, at a fraction f of the gap (t - 1) eps
                f = draw(near if larger == "clipped" else far)
                ret[focus] = v_new - side * f * (t - 1.0) * eps
        return {"values_old": v_old, "delta": delta, "returns": ret, "clip_eps": eps}
    return build()


@numerics_of_their_own
def check_value_loss(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                     max_examples: int = 100, seed: int = 0, **options) -> Report:
    r"""Check a PPO value loss in one of its three forms.

    With :math:`V^{clip} = V_{old} + \mathrm{clip}(V - V_{old}, -\epsilon, \epsilon)`:

    * ``"unclipped"``: :math:`c\,\frac1n\sum_i (V_i - R_i)^2`;
    * ``"max"`` (OpenAI baselines' PPO2, CleanRL):
      :math:`c\,\frac1n\sum_i \max\big((V_i - R_i)^2, (V^{clip}_i - R_i)^2\big)`;
    * ``"clip_prediction"`` (SB3 with ``clip_range_vf``): :math:`c\,\frac1n\sum_i (V^{clip}_i - R_i)^2`.

    Parameters
    ----------
    fn : callable
        ``fn(values_new, values_old, returns, clip_eps) -> loss``.
    convention : {"refpg", "cleanrl", "sb3"}
        Default form and coefficient (`VALUE_CONVENTIONS`): refpg unclipped
        0.5, CleanRL max 0.5, SB3 clip_prediction 1 (SB3 weighs it by
        ``vf_coef`` outside).
    **options
        ``style`` and ``coef``.

    Returns
    -------
    Report
        ``value_loss.value``, ``value_loss.gradient`` (torch backend through
        autograd, jax through ``jax.grad``), and the generic ids.

    Notes
    -----
    Each of the ``VALUE_REGIONS`` of a sample (the new value inside, above or
    below the clip range around the old one; the sign of its error; which of
    the two terms of "max" is the larger) is drawn by construction, by a
    scenario whose every case puts a sample in it. With ``backend="jax"``
    minibatches have 1, 4 or 8 samples, shrinking included (one compilation
    per shape).
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(VALUE_CONVENTIONS))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    opts = _resolve(options, VALUE_CONVENTIONS[convention], dict(style="unclipped", coef=0.5))
    check_choice(opts["style"], "style", VALUE_STYLES)
    opts["coef"] = check_real(opts["coef"], "coef")

    named = check_signature(fn, "value_loss", convention, {c: VALUE_PARAMETERS for c in VALUE_CONVENTIONS})

    def args_of(case, be):
        v_old = be.round(case["values_old"])
        v_new = be.round(case["values_old"] + case["delta"])
        ret = be.round(case["returns"])
        return [("values_new", v_new), ("values_old", v_old), ("returns", ret),
                ("clip_eps", case["clip_eps"])]

    def probe(be):
        s = Session("value_loss", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of({"values_old": np.array([0.0, 1.0]), "delta": np.array([0.1, 2.0]),
                               "returns": np.array([1.0, -1.0]), "clip_eps": 0.2}, be))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("value_loss", fn, convention, be, max_examples=max_examples, seed=seed,
                      options=opts, warnings=named + warn0)
    torch_grad = be.name == "torch"

    def evaluate(case):
        args = args_of(case, be)
        inputs = dict(args)
        v_new, v_old, ret, eps = (a for _, a in args)
        call = session.call(args, grad_of="values_new" if torch_grad else None)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return outcomes
        loss, more = session.output_array(call.output, "loss", (), inputs)
        outcomes += more
        if loss is None:
            return outcomes
        ref, grad, judged, clipped = _value_reference(v_new, v_old, ret, eps, opts["style"], opts["coef"], be.tol)
        o = session.compare("value_loss.value", "loss", loss, ref, inputs,
                            why=f"style={opts['style']!r}, coef={opts['coef']}: {_VALUE_FORMS[opts['style']]}",
                            n=v_new.size, n_is="the minibatch size")
        if o is not None:
            outcomes.append(o)
        if be.differentiable:
            outcomes += _gradient_outcomes(session, call, "values_new", _loss_item, grad, clipped, inputs,
                                           "value_loss.gradient", f"the gradient of "
                                           f"{_VALUE_FORMS[opts['style']]}{_VALUE_GRADIENTS[opts['style']]}",
                                           judged=judged)
        return outcomes

    session.declare(*session.generic_ids())
    # Every region of a sample is drawn by construction, each by a scenario of its own sharing the
    # max_examples cases; shrinking may leave a region (value_loss.value claims none).
    per_scenario = max(1, math.ceil(max_examples / len(VALUE_REGIONS)))
    buckets = _buckets(be, 1)
    for region in VALUE_REGIONS:
        session.run_scenario(_value_cases(region, 1, buckets), evaluate, ("value_loss.value",),
                             moves=lambda c: _sample_moves(c, ("values_old", "delta", "returns"),
                                                           {"clip_eps": VALUE_CLIPS}, 1, buckets),
                             max_examples=per_scenario)
    if be.differentiable:
        session.declare("value_loss.gradient", tracked=True)
    return session.report()


_VALUE_FORMS = {
    "unclipped": "loss = coef * mean((values_new - returns)^2)",
    "max": "loss = coef * mean(max((values_new - returns)^2, (v_clip - returns)^2)), "
           "v_clip = values_old + clip(values_new - values_old, -eps, eps)",
    "clip_prediction": "loss = coef * mean((v_clip - returns)^2), "
                       "v_clip = values_old + clip(values_new - values_old, -eps, eps)",
}

_VALUE_GRADIENTS = {
    "unclipped": "",
    "max": ": 2 * coef * (values_new - returns) / n inside the clip range (v_clip is values_new there, so "
           "a v_clip built from a detached copy halves it) and where the unclipped term is the larger, "
           "exactly 0 where the clipped term is",
    "clip_prediction": ": 2 * coef * (values_new - returns) / n inside the clip range, exactly 0 outside",
}

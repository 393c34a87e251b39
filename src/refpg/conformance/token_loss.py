r"""`check_token_policy_loss`: the token-level policy loss of language-model RL (PPO clip, GSPO, CISPO).

The loss of a batch of n responses padded to length L, with response mask m, is

.. math::
    \mathcal L = \sum_{i,t} w_{i,t}\,\ell_{i,t}, \qquad
    \frac{\partial \mathcal L}{\partial \log\pi_\theta(y_{i,t})} = w_{i,t}\,\partial\ell_{i,t},

with the per-token loss :math:`\ell` of `refpg.losses.tokens.token_policy_loss` (PPO's clipped
objective with an asymmetric range and an optional dual clip [Schulman2017] [Yu2025] [Ye2020],
GSPO's sequence ratio [Zheng2025], CISPO's clipped, detached importance weight) and the weights
:math:`w` of the aggregation (`refpg.losses.tokens.aggregation_weights`: token-mean,
seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm). See docs/conventions.md,
"Sequences".

Correctness depends on the branch each token takes, on the mask and on how micro-batches are
scaled, so each is drawn by construction: every case of a region scenario puts one token (one
response for GSPO, whose ratio is a response's) in its region, a ratio band (below the clip range,
inside, above, beyond the dual clip) times the sign of its advantage; every case holds a response
of full length L, one of a single token and one with no token at all (post-EOS padding is the rest
of each row); the accumulation scenario splits the batch into micro-batches of unequal token counts.
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance._harness import (Outcome, Session, check_callable, check_signature, numerics_of_their_own,
                                        resolve_backend)
from refpg.conformance.losses import _loss_item  # the output forms ppo_loss accepts
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.losses.tokens import AGGREGATIONS, TOKEN_LOSSES, clip_bounds, token_policy_loss

__all__ = ["check_token_policy_loss", "TOKEN_LOSS_CONVENTIONS", "ACCUMULATIONS", "TRL_LOSS_TYPES"]

KIND = "token_policy_loss"

#: Convention -> (signature, default options). The arrays are (n, L) unless said otherwise.
#:
#: * refpg: the scalar loss of `refpg.losses.tokens`; advantages per token (n, L), or per response (n,)
#:   with ``advantages="sequence"``; a boolean mask.
#: * verl: a policy-loss function of ``verl.trainer.ppo.core_algos`` as it is (``compute_policy_loss_vanilla``,
#:   the ``gspo`` and ``cispo`` entries of its registry): old log-probs first, a float response mask, the
#:   aggregation name (``loss_agg_mode``) and an actor config; it returns ``(loss, metrics)``. Its vanilla
#:   loss always dual-clips (``clip_ratio_c``, 3 by default); its aggregations leave responses without a
#:   token out of the sequence count and add 1e-8 to each response's token count in seq-mean-token-mean.
#: * trl: a GRPOTrainer-style loss: per-response advantages (n,), an integer completion mask, the token
#:   count of the whole accumulated batch (``num_items_in_batch``, a 0-d array) and the number of
#:   micro-batches accumulated (``gradient_accumulation_steps``); ``loss_type`` and
#:   ``importance_sampling_level`` say which loss and aggregation (`TRL_LOSS_TYPES`).
#: * openrlhf: ``openrlhf.models.loss.PolicyLoss`` (an instance, or the class, which the check builds
#:   from the declared options), ``forward(log_probs, old_log_probs, advantages, action_mask)``, returning
#:   a tuple whose first item is the loss; token-mean (``token_level_loss=True``) or seq-mean-token-mean.
TOKEN_LOSS_CONVENTIONS = {
    "refpg": ("fn(logp, logp_old, advantages, mask) -> loss",
              dict(empty_rows="count", count_eps=0.0)),
    "verl": ("fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config) -> (loss, metrics)",
             dict(empty_rows="skip", count_eps=1e-8, accumulation="global")),
    "trl": ("fn(per_token_logps, old_per_token_logps, advantages, completion_mask, num_items_in_batch, "
            "gradient_accumulation_steps) -> loss",
            dict(empty_rows="count", count_eps=0.0, accumulation="global", loss_type="dapo")),
    "openrlhf": ("fn(log_probs, old_log_probs, advantages, action_mask) -> (loss, clip_ratio, ...)",
                 dict(empty_rows="skip", count_eps=1e-8, accumulation="global")),
}

#: How the micro-batch losses of one optimiser step are combined (the ``accumulation`` option):
#: ``"global"``: the function is given the whole batch's totals (TRL's num_items_in_batch and the
#: number of micro-batches; verl's ``config.global_batch_info``; OpenRLHF's batch_num_tokens and
#: global_batch_size) and its losses are summed as they are; ``"tokens"``: each micro-batch's own loss
#: weighted by its share of the tokens (the fix of transformers PR #34191 and verl PR #5641);
#: ``"sequences"``: weighted by its share of the responses (verl's legacy micro/mini-batch ratio);
#: ``"steps"``: divided by the number of micro-batches (the Trainer's 1/gradient_accumulation_steps;
#: micro-batches of equal size); ``"none"``: not checked.
ACCUMULATIONS = ("global", "tokens", "sequences", "steps", "none")

#: TRL's loss_type -> (aggregation, accumulation the function does itself). grpo, bnpo and dr_grpo
#: divide the micro-batch's own aggregate by gradient_accumulation_steps; dapo and cispo divide the token
#: sum by num_items_in_batch, luspo takes a sequence mean of token sums over gradient_accumulation_steps.
TRL_LOSS_TYPES = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "luspo": "seq-mean-token-sum",
}

EMPTY_ROWS = ("count", "skip")
ADVANTAGE_SHAPES = ("token", "sequence")

#: Ratio bands, in the order regions are listed.
BANDS = ("below", "inside", "above", "beyond")
_MARGIN = 0.1  # every drawn log-ratio stays 10% (in log space) away from every clip bound
# Without a declared dual clip the "above" band reaches ratio 5, past the usual dual-clip bound (verl's default
# clip_ratio_c = 3), so that a dual clip the declaration leaves out is seen.
_NO_DUAL_TOP = math.log(5.0)

#: Sizes drawn for backend="jax" (a jitted function compiles once per shape): n responses, length L.
JAX_SHAPE = (4, 5)


# -- declarations ------------------------------------------------------------------------

class _Geom(NamedTuple):
    """The clip geometry: ratio bounds (None: no bound) and the dual-clip bound."""

    low: float | None   # the lower bound of the ratio, 1 - eps_low
    high: float         # the upper bound, 1 + eps_high (TRL's cispo: eps_high itself)
    dual: float | None

    def regions(self, loss: str) -> tuple:
        bands = [b for b in BANDS if (b != "below" or self.low is not None) and (b != "beyond" or self.dual)]
        return tuple((b, s) for b in bands for s in (1, -1))


def _options(convention: str, o: dict) -> dict:
    """Resolve and validate the declaration; `InvalidInputError` names a bad option and its value."""
    conv_defaults = TOKEN_LOSS_CONVENTIONS[convention][1]
    opts = dict(o)
    if convention == "trl":
        loss_type = opts.pop("loss_type") or conv_defaults["loss_type"]
        check_choice(loss_type, "loss_type", tuple(TRL_LOSS_TYPES))
        level = opts.pop("importance_sampling_level") or "token"
        check_choice(level, "importance_sampling_level", ("token", "sequence"))
        derived_loss = "cispo" if loss_type == "cispo" else ("gspo" if level == "sequence" else "ppo_clip")
        if loss_type == "cispo" and level == "sequence":
            raise InvalidInputError("importance_sampling_level should be 'token' with loss_type='cispo', "
                                    "actual 'sequence'")
        for name, derived in (("loss", derived_loss), ("aggregation", TRL_LOSS_TYPES[loss_type])):
            if opts[name] is not None and opts[name] != derived:
                raise InvalidInputError(f"{name} should be left unset or {derived!r} under the trl convention with "
                                        f"loss_type={loss_type!r}, actual {opts[name]!r} (TRL's loss_type and "
                                        f"importance_sampling_level decide it)")
            opts[name] = derived
        opts["loss_type"], opts["importance_sampling_level"] = loss_type, level
        if opts["accumulation"] is None:
            opts["accumulation"] = "global"
    else:
        for name in ("loss_type", "importance_sampling_level"):
            if opts.pop(name) is not None:
                raise InvalidInputError(f"{name} is an option of the trl convention only, actual convention "
                                        f"{convention!r}")
    opts["loss"] = opts["loss"] or "ppo_clip"
    check_choice(opts["loss"], "loss", TOKEN_LOSSES)
    opts["aggregation"] = opts["aggregation"] or "token-mean"
    check_choice(opts["aggregation"], "aggregation", AGGREGATIONS)
    if opts["dual_clip"] == "default":
        opts["dual_clip"] = 3.0 if convention == "verl" and opts["loss"] == "ppo_clip" else None
    if opts["loss"] == "cispo" and opts["dual_clip"] is not None:
        raise InvalidInputError(f"dual_clip should be None with loss='cispo' (its weight is clipped, not its "
                                f"objective), actual {opts['dual_clip']!r}")
    if convention == "trl" and opts["loss"] == "cispo":
        # TRL's cispo caps the weight at epsilon_high itself, with no lower clip.
        cap = check_real(opts["eps_high"] if opts["eps_high"] is not None else opts["eps_low"], "eps_high",
                         low=0.0, low_open=True)
        check_real(opts["eps_low"], "eps_low", low=0.0)
        opts["eps_high"] = cap
        opts["geom"] = _Geom(None, cap, None)
    else:
        lo, hi, c = clip_bounds(opts["eps_low"], opts["eps_high"], opts["dual_clip"])
        if c is not None and c <= 1.0 + hi:
            raise InvalidInputError(f"dual_clip should be > 1 + eps_high = {1.0 + hi!r}, actual {c!r}")
        opts["eps_low"], opts["eps_high"], opts["dual_clip"] = lo, hi, c
        opts["geom"] = _Geom(1.0 - lo, 1.0 + hi, None if opts["loss"] == "cispo" else c)
    if opts["norm_length"] is not None:
        opts["norm_length"] = check_real(opts["norm_length"], "norm_length", low=0.0, low_open=True)
    for name, choices in (("empty_rows", EMPTY_ROWS), ("advantages", ADVANTAGE_SHAPES)):
        opts[name] = opts[name] or conv_defaults.get(name, choices[0])
        check_choice(opts[name], name, choices)
    if convention == "trl" and opts["advantages"] != "sequence":
        opts["advantages"] = "sequence"  # TRL's advantages are per completion, (n,)
    if opts["loss"] == "gspo" and opts["advantages"] == "token" and convention == "refpg":
        pass  # GSPO's advantages are per response; the (n, L) array holds each response's value on every token
    opts["count_eps"] = check_real(conv_defaults["count_eps"] if opts["count_eps"] is None else opts["count_eps"],
                                   "count_eps", low=0.0)
    acc = opts["accumulation"]
    if acc is None:
        acc = conv_defaults.get("accumulation") or ("tokens" if opts["aggregation"] == "token-mean" else "sequences")
    check_choice(acc, "accumulation", ACCUMULATIONS)
    if acc == "global" and convention == "refpg":
        raise InvalidInputError("accumulation should be one of 'tokens', 'sequences', 'steps' or 'none' under the "
                                "refpg convention (its function is not given the whole batch's totals), actual "
                                "'global'")
    opts["accumulation"] = acc
    if convention == "openrlhf" and opts["aggregation"] not in ("token-mean", "seq-mean-token-mean"):
        raise InvalidInputError(f"aggregation should be 'token-mean' (token_level_loss=True) or "
                                f"'seq-mean-token-mean' (token_level_loss=False) under the openrlhf convention, "
                                f"actual {opts['aggregation']!r}")
    return opts


# -- the reference --------------------------------------------------------------------------

def _weights(mask: np.ndarray, opts: dict) -> np.ndarray:
    r"""Aggregation weights :math:`w_{i,t}` as declared (`aggregation_weights` with two library details):
    ``empty_rows="skip"`` leaves responses with no token out of n (verl, OpenRLHF), and `count_eps` is
    added to each response's token count in seq-mean-token-mean (verl's and OpenRLHF's 1e-8)."""
    mf = mask.astype(np.float64)
    per = mf.sum(axis=-1, keepdims=True)
    n = mask.shape[0] if opts["empty_rows"] == "count" else max(int(np.count_nonzero(per)), 1)
    mode = opts["aggregation"]
    if mode == "token-mean":
        total = mf.sum()
        return mf / total if total > 0 else np.zeros_like(mf)
    if mode == "seq-mean-token-sum":
        return mf / n
    if mode == "seq-mean-token-mean":
        return np.divide(mf, n * (per + opts["count_eps"]), out=np.zeros_like(mf), where=per > 0)
    return mf / (n * _norm_length(mask, opts))


def _norm_length(mask, opts) -> float:
    """L_norm of seq-mean-token-sum-norm: as declared, else the padded length L (verl's default)."""
    return float(mask.shape[-1]) if opts["norm_length"] is None else opts["norm_length"]


def _token_terms(lp, lpo, adv, mask, opts):
    """(value, d value / d logp) per token, (n, L), 0 where masked; CISPO's value includes its log pi factor,
    since that is the loss a CISPO implementation returns (`token_policy_loss` reports it without)."""
    if opts["loss"] == "cispo" and opts["geom"].low is None:  # TRL: min(r, eps_high), no lower clip
        r = np.exp(np.where(mask, lp - lpo, 0.0))
        d = np.where(mask, -np.minimum(r, opts["geom"].high) * adv, 0.0)
        return np.where(mask, d * lp, 0.0), d
    tl = token_policy_loss(np.where(mask, lp, 0.0), np.where(mask, lpo, 0.0), np.where(mask, adv, 0.0), mask,
                           loss=opts["loss"], eps_low=opts["eps_low"], eps_high=opts["eps_high"],
                           dual_clip=opts["geom"].dual)
    if opts["loss"] == "cispo":
        return np.where(mask, tl.dlogp * lp, 0.0), tl.dlogp
    return tl.value, tl.dlogp


class _Ref(NamedTuple):
    value: float
    grad: np.ndarray      # d loss / d logp, (n, L)
    zero: np.ndarray      # where the gradient must be exactly 0 (a clipped token, unmasked, A != 0)


def _reference(lp, lpo, adv, mask, opts) -> _Ref:
    val, d = _token_terms(lp, lpo, adv, mask, opts)
    w = _weights(mask, opts)
    zero = mask & (d == 0.0) & (adv != 0.0) & (w != 0.0)
    return _Ref(float(np.sum(np.where(w != 0, w * val, 0.0))), w * d, zero)


def _alternatives(lp, lpo, adv, mask, opts) -> list:
    """(label, reference) of the misreadings a failure message can name, each differing from the declaration."""
    out = []
    for agg in AGGREGATIONS:
        if agg != opts["aggregation"]:
            alt = {**opts, "aggregation": agg}
            out.append((f"the loss under aggregation={agg!r}" + (
                f" with L_norm = {_norm_length(mask, alt):g}" if agg.endswith("norm") else ""), alt))
    other = "skip" if opts["empty_rows"] == "count" else "count"
    out.append((f"the loss with empty_rows={other!r} (responses without a token "
                f"{'left out of' if other == 'skip' else 'counted in'} the number of responses)",
                {**opts, "empty_rows": other}))
    if opts["aggregation"] == "seq-mean-token-mean":
        ce = 1e-8 if opts["count_eps"] == 0 else 0.0
        out.append((f"the loss with count_eps={ce:g} (verl and OpenRLHF add 1e-8 to each response's token count)",
                    {**opts, "count_eps": ce}))
    g = opts["geom"]
    if g.low is not None and opts["eps_high"] != opts["eps_low"]:
        out.append((f"the loss with the symmetric clip range [1 - eps_low, 1 + eps_low] (clip-higher, eps_high = "
                    f"{opts['eps_high']:g}, ignored)",
                    {**opts, "eps_high": opts["eps_low"], "geom": g._replace(high=1.0 + opts["eps_low"])}))
    if g.dual is not None:
        out.append(("the loss WITHOUT the dual clip (where A < 0 and ratio > c the token's loss should be -c A)",
                    {**opts, "dual_clip": None, "geom": g._replace(dual=None)}))
    elif opts["loss"] != "cispo" and g.high < 3.0:
        out.append(("the loss WITH a dual clip at c = 3 (-3 A where A < 0 and ratio > 3; verl's vanilla loss always "
                    "dual-clips, clip_ratio_c = 3 by default)", {**opts, "dual_clip": 3.0, "geom": g._replace(dual=3.0)}))
    refs = [("the loss with the mask ignored (padding counted as tokens)",
             _reference(lp, lpo, np.where(mask, adv, 0.0), np.ones_like(mask), opts))]
    return refs + [(label, _reference(lp, lpo, adv, mask, alt)) for label, alt in out]


def _hint(actual, expected, alternatives, field: str, tol: float, scale: float) -> str:
    """Name the misreading whose `field` ("value" or "grad") reproduces `actual`, if one does."""
    allowed = tol * (1.0 + scale)
    fits = [label for label, ref in alternatives
            if np.max(np.abs(np.asarray(getattr(ref, field)) - expected), initial=0.0) > allowed
            and np.max(np.abs(actual - np.asarray(getattr(ref, field))), initial=0.0) <= allowed]
    if not fits:
        return ""
    same = f" (on this input the same as {'; '.join(fits[1:])})" if len(fits) > 1 else ""
    return f"the actual {'value' if field == 'value' else 'gradient'} is {fits[0]}{same}"


def _factor_hint(actual, expected, tol: float, scale: float) -> str:
    """"actual = k x expected" when the two differ by one constant factor k != 1."""
    a, e = np.ravel(actual), np.ravel(expected)
    ee = float(e @ e)
    if ee <= (tol * (1 + scale)) ** 2:
        return ""
    k = float(a @ e) / ee
    if abs(k - 1.0) < 1e-6 or abs(k) < 1e-6 or not np.all(np.abs(a - k * e) <= tol * (1 + abs(k) * scale)):
        return ""
    return f"actual = {k:.6g} x expected"


# -- cases ----------------------------------------------------------------------------------

def _log_bounds(g: _Geom):
    return (None if g.low is None else math.log(g.low)), math.log(g.high), (None if g.dual is None else math.log(g.dual))


def _band_interval(band: str, g: _Geom) -> tuple:
    """(low, high) of the log-ratio drawn in `band`, 10% (in log space) away from every bound."""
    llo, lhi, lc = _log_bounds(g)
    lo, hi = 1.0 - _MARGIN, 1.0 + _MARGIN
    if band == "inside":
        return (lo * llo if llo is not None else -1.0), lo * lhi
    if band == "below":
        return 3.0 * llo, hi * llo
    if band == "above":
        top = max(3.0 * lhi, _NO_DUAL_TOP) if lc is None else min(3.0 * lhi, lo * lc)
        return hi * lhi, max(top, hi * lhi)
    return hi * lc, hi * lc + 0.5


def _random_log_ratio(rng, g: _Geom, shape) -> np.ndarray:
    """Log-ratios in random bands (each band equally likely; never at a kink)."""
    bands = [b for b in BANDS if (b != "below" or g.low is not None) and (b != "beyond" or g.dual is not None)]
    which = rng.integers(len(bands), size=shape)
    out = np.empty(shape)
    for k, b in enumerate(bands):
        lo, hi = _band_interval(b, g)
        out[which == k] = rng.uniform(lo, hi, size=int(np.sum(which == k)))
    return out


def _advantage_values(rng, shape) -> np.ndarray:
    """Advantages: a tenth 0, the rest +-{1, 2, 0.5} or +-U(0.25, 4) (float32-exact)."""
    mag = np.where(rng.random(shape) < 0.5, rng.choice([1.0, 2.0, 0.5], size=shape),
                   rng.uniform(0.25, 4.0, size=shape).astype(np.float32))
    sign = np.where(rng.random(shape) < 0.5, 1.0, -1.0)
    return np.where(rng.random(shape) < 0.1, 0.0, sign * mag)


def _lengths(rng, n: int, L: int) -> np.ndarray:
    """Response lengths: one of L, one of 1, one of 0 (a response with no token), the rest from 0..L."""
    lengths = rng.integers(0, L + 1, size=n)
    lengths[rng.permutation(n)[:3]] = [L, 1, 0][:min(3, n)]
    return lengths


def _build(rng, n, L, g: _Geom, opts, region=None, on_policy=False, splits=None) -> dict:
    """One case: logp_old, the log-ratio x, advantages, lengths, junk for the masked positions, splits."""
    lengths = _lengths(rng, n, L)
    if splits is not None:
        lengths = _fix_splits(lengths, splits, L)
    mask = np.arange(L)[None, :] < lengths[:, None]
    lpo = -rng.uniform(0.05, 4.0, size=(n, L)).astype(np.float32).astype(np.float64)
    seq = opts["loss"] == "gspo" or opts["advantages"] == "sequence"
    adv = _advantage_values(rng, (n, 1) if seq else (n, L))
    adv = np.broadcast_to(adv, (n, L)).copy()
    if opts["loss"] == "gspo":
        s = _random_log_ratio(rng, g, (n, 1))
        noise = rng.uniform(-0.1, 0.1, size=(n, L)) * (g.high - 1.0) / 0.2 * mask
        noise -= np.where(mask, noise.sum(axis=1, keepdims=True) / np.maximum(lengths[:, None], 1), 0.0)
        x = s + noise
    else:
        x = _random_log_ratio(rng, g, (n, L))
    if region is not None:
        band, sign = region
        row = int(np.flatnonzero(lengths == L)[0])
        t = int(rng.integers(L))
        lo, hi = _band_interval(band, g)
        v = rng.uniform(lo, hi)
        if opts["loss"] == "gspo":
            x[row] += v - x[row].mean()  # the row's mean log-ratio (all L tokens unmasked) is v
        else:
            x[row, t] = v
        if seq:
            adv[row] = sign * abs(adv[row, 0] or 1.0)
        else:
            adv[row, t] = sign * abs(adv[row, t] or 1.0)
    if on_policy:
        x[:] = 0.0
    lp = (lpo + x).astype(np.float32).astype(np.float64)
    lp, lpo, adv = (np.where(mask, a, 0.0) for a in (lp, lpo, adv))
    junk = [rng.integers(-8, 9, size=(n, L)).astype(np.float64) for _ in range(3)]
    return {"logp": lp, "logp_old": lpo, "advantages": adv, "mask": mask, "junk": junk, "splits": splits}


def _fix_splits(lengths, splits, L) -> np.ndarray:
    """Every micro-batch gets a token, and the micro-batches' token counts are not all equal."""
    lengths = lengths.copy()
    start = 0
    for size in splits:
        if lengths[start:start + size].sum() == 0:
            lengths[start] = 1
        start += size
    counts = [int(lengths[s:s + k].sum()) for s, k in zip(np.cumsum((0,) + tuple(splits[:-1])), splits)]
    if len(set(counts)) == 1:
        i = int(np.argmax(lengths[:splits[0]]))
        lengths[i] += 1 if lengths[i] < L else -1
    return lengths


@functools.lru_cache(maxsize=None)
def _region_cases(region, opts_key, jax: bool):
    opts = dict(opts_key)
    sizes = st.just(JAX_SHAPE) if jax else st.tuples(st.integers(3, 6), st.integers(2, 6))
    return st.builds(lambda nl, seed: _build(np.random.default_rng(seed), nl[0], nl[1], opts["geom"], opts,
                                             region=region),
                     sizes, st.integers(0, 2**32 - 1))


@functools.lru_cache(maxsize=None)
def _on_policy_cases(opts_key, jax: bool):
    opts = dict(opts_key)
    sizes = st.just(JAX_SHAPE) if jax else st.tuples(st.integers(3, 6), st.integers(2, 6))
    return st.builds(lambda nl, seed: _build(np.random.default_rng(seed), nl[0], nl[1], opts["geom"], opts,
                                             on_policy=True),
                     sizes, st.integers(0, 2**32 - 1))


def _split_choices(n: int, equal: bool) -> tuple:
    """Micro-batch sizes of n rows: K = 2 or 3 parts, equal when `equal`, else unequal ones too."""
    out = [tuple([n // k] * k) for k in (2, 3) if n % k == 0 and n // k >= 1]
    if not equal:
        out += [(1, n - 1), (n - 2, 2)] + ([(1, 2, n - 3)] if n > 3 else [])
    return tuple(s for s in out if all(p >= 1 for p in s) and len(s) >= 2)


@functools.lru_cache(maxsize=None)
def _accumulation_cases(opts_key, equal: bool, jax: bool):
    opts = dict(opts_key)

    @st.composite
    def build(draw):
        if jax:
            n, L = JAX_SHAPE
            splits = (n // 2, n // 2)
        else:
            n = draw(st.sampled_from((4, 6)) if equal else st.integers(3, 6))
            L = draw(st.integers(2, 6))
            splits = draw(st.sampled_from(_split_choices(n, equal)))
        return _build(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), n, L, opts["geom"], opts,
                      splits=splits)
    return build()


def _moves(case, jax: bool) -> list:
    """Smaller or simpler variants: a row dropped, the last column dropped (NumPy and torch only), then
    logp_old set to -1 and advantages to +-1 where that keeps the ratio and the sign."""
    out = []
    mask = case["mask"]
    n, L = mask.shape
    if not jax and case["splits"] is None:
        for i in range(n):
            if n > 1:
                out.append(_take(case, np.arange(n) != i, slice(None)))
        if L > 1 and mask[:, -1].any():
            out.append(_take(case, np.ones(n, bool), slice(0, L - 1)))
    x = case["logp"] - case["logp_old"]
    simple_old = np.where(mask, -1.0, 0.0)
    if not np.array_equal(case["logp_old"], simple_old):
        lp = np.where(mask, (simple_old + x).astype(np.float32).astype(np.float64), 0.0)
        out.append({**case, "logp_old": simple_old, "logp": lp})
    simple_adv = np.sign(case["advantages"])
    if not np.array_equal(case["advantages"], simple_adv):
        out.append({**case, "advantages": simple_adv})
    return out


def _take(case, rows, cols) -> dict:
    out = {k: (v[rows][:, cols] if isinstance(v, np.ndarray) else v) for k, v in case.items()}
    out["junk"] = [j[rows][:, cols] for j in case["junk"]]
    return out


# -- calling the function in its convention ----------------------------------------------------------

class _VerlConfig(types.SimpleNamespace):
    """The fields of verl's ActorConfig its policy losses read, with its Mapping-style ``get``."""

    def get(self, key, default=None):
        return getattr(self, key, default)

    def __getitem__(self, key):
        return getattr(self, key)


def _verl_config(opts: dict):
    """verl's real ActorConfig when verl imports (its gspo and cispo losses insist on one), else a stand-in."""
    fields = dict(clip_ratio=opts["eps_low"], clip_ratio_low=opts["eps_low"], clip_ratio_high=opts["eps_high"],
                  clip_ratio_c=opts["dual_clip"] if opts["dual_clip"] is not None else 3.0,
                  loss_agg_mode=opts["aggregation"])
    try:
        from verl.workers.config import ActorConfig, PolicyLossConfig
    except Exception:  # not installed, or it fails to import: the stand-in has every field the losses read
        return _VerlConfig(**fields, global_batch_info={},
                           policy_loss=_VerlConfig(loss_mode={"ppo_clip": "vanilla"}.get(opts["loss"], opts["loss"])))
    mode = {"ppo_clip": "vanilla"}.get(opts["loss"], opts["loss"])
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                       policy_loss=PolicyLossConfig(loss_mode=mode), **fields)


def _openrlhf_instance(fn, opts):
    """An OpenRLHF PolicyLoss class is built from the declaration; an instance is used as it is."""
    if not isinstance(fn, type):
        return fn
    kwargs = dict(clip_eps_low=opts["eps_low"], clip_eps_high=opts["eps_high"], dual_clip=opts["dual_clip"],
                  token_level_loss=opts["aggregation"] == "token-mean")
    if opts["loss"] == "gspo":
        kwargs["policy_loss_type"] = "gspo"
    elif opts["loss"] != "ppo_clip":
        raise InvalidInputError(f"loss should be 'ppo_clip' or 'gspo' for OpenRLHF's PolicyLoss, actual {opts['loss']!r}")
    return fn(**kwargs)


def _args(convention, lp, lpo, adv, mask, opts, config, micro=None) -> list:
    """The (name, value) arguments of one call. `micro` = (batch tokens, batch non-empty responses,
    number of micro-batches, batch responses) on a micro-batch call with accumulation='global'."""
    if convention == "refpg":
        a = adv[:, 0].copy() if opts["advantages"] == "sequence" else adv
        return [("logp", lp), ("logp_old", lpo), ("advantages", a), ("mask", mask)]
    if convention == "verl":
        info = {}
        if micro is not None:
            info = dict(dp_size=1, batch_num_tokens=micro[0], global_batch_size=micro[1])
        if opts["norm_length"] is not None:
            info["loss_scale_factor"] = opts["norm_length"]
        config.global_batch_info.clear()
        config.global_batch_info.update(info)
        return [("old_log_prob", lpo), ("log_prob", lp), ("advantages", adv),
                ("response_mask", mask.astype(np.float64)), ("loss_agg_mode", opts["aggregation"]),
                ("config", config)]
    if convention == "trl":
        tokens, steps = (int(mask.sum()), 1) if micro is None else (micro[0], micro[2])
        return [("per_token_logps", lp), ("old_per_token_logps", lpo), ("advantages", adv[:, 0].copy()),
                ("completion_mask", mask.astype(np.int64)), ("num_items_in_batch", np.array(float(tokens))),
                ("gradient_accumulation_steps", steps)]
    args = [("log_probs", lp), ("old_log_probs", lpo), ("advantages", adv), ("action_mask", mask)]
    if micro is not None:
        args += [("rollout_log_probs", None), ("dp_size", 1), ("batch_num_tokens", float(micro[0])),
                 ("global_batch_size", float(micro[1]))]
    return args


_LOGP = {"refpg": "logp", "verl": "log_prob", "trl": "per_token_logps", "openrlhf": "log_probs"}


# -- the check ------------------------------------------------------------------------------------

@numerics_of_their_own
def check_token_policy_loss(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                            max_examples: int = 100, seed: int = 0, loss: str | None = None,
                            eps_low: float = 0.2, eps_high: float | None = None, dual_clip: Any = "default",
                            aggregation: str | None = None, norm_length: float | None = None,
                            accumulation: str | None = None, empty_rows: str | None = None,
                            count_eps: float | None = None, advantages: str | None = None,
                            loss_type: str | None = None, importance_sampling_level: str | None = None) -> Report:
    r"""Check a token-level policy loss: value, gradient, masking, clipping and gradient accumulation.

    The reference is :math:`\mathcal L = \sum_{i,t} w_{i,t}\ell_{i,t}` with the token losses of
    `refpg.losses.tokens.token_policy_loss` and the aggregation weights of
    `refpg.losses.tokens.aggregation_weights` (module docstring). CISPO's expected value is
    :math:`\sum w\,(-\mathrm{sg}(\mathrm{clip}(r))A\log\pi)`, what an implementation returns.

    Parameters
    ----------
    fn : callable
        The loss, in `convention` (`TOKEN_LOSS_CONVENTIONS`). Its output is the loss, or a tuple (or a
        dict with ``"loss"``) whose first item is.
    convention : {"refpg", "verl", "trl", "openrlhf"}
    backend : {"auto", "numpy", "torch", "jax"}
        NumPy: value checks only (the gradient checks are not run; a clipped token is checked by
        moving its log-probability, which must leave the loss unchanged).
    dtype : {"float64", "float32"}
    max_examples, seed : int
    loss : {"ppo_clip", "gspo", "cispo"}
        Under trl, set by `loss_type` and `importance_sampling_level` ("sequence" is GSPO).
    eps_low, eps_high, dual_clip
        The clip range :math:`[1-\epsilon_{low}, 1+\epsilon_{high}]` (eps_high defaults to eps_low) and the
        dual-clip bound c (None: none; ``"default"``: 3 for verl's vanilla loss, else None). TRL's
        ``epsilon``, ``epsilon_high`` and ``delta`` (its two-sided clip is the dual clip at c = delta).
        Under trl with loss_type="cispo" the weight is ``min(r, eps_high)``, with no lower clip.
    aggregation : {"token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
        Default token-mean; under trl set by `loss_type` (`TRL_LOSS_TYPES`).
    norm_length : float, optional
        L_norm of seq-mean-token-sum-norm; None: the padded length L of the arrays passed (verl's
        default). TRL's max_completion_length.
    accumulation : {"global", "tokens", "sequences", "steps", "none"}, optional
        How micro-batch losses are combined (`ACCUMULATIONS`); default "global" under verl, trl and
        openrlhf, and under refpg "tokens" for token-mean, else "sequences".
    empty_rows : {"count", "skip"}, optional
        Whether a response with no token counts in the number of responses n of the seq-mean modes
        (refpg, TRL) or not (verl, OpenRLHF).
    count_eps : float, optional
        Added to each response's token count in seq-mean-token-mean (1e-8 under verl and openrlhf).
    advantages : {"token", "sequence"}, optional
        refpg: pass advantages (n, L) (default) or (n,).
    loss_type, importance_sampling_level : str, optional
        The trl convention's declaration (`TRL_LOSS_TYPES`; default "dapo" and "token").

    Returns
    -------
    Report
        ``token_policy_loss.value``, ``.gradient``, ``.masked_positions``, ``.clipped_zero_gradient``,
        ``.on_policy_gradient``, ``.accumulation`` and the generic ids.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad declaration (the message names the option and its value), or a function whose signature
        no call of `convention` binds.

    References
    ----------
    [Schulman2017]; [Yu2025]; [Ye2020]; [Zheng2025]; [Liu2025]; MiniMax-M1 (arXiv:2506.13585).
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(TOKEN_LOSS_CONVENTIONS))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    opts = _options(convention, dict(loss=loss, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip,
                                     aggregation=aggregation, norm_length=norm_length, accumulation=accumulation,
                                     empty_rows=empty_rows, count_eps=count_eps, advantages=advantages,
                                     loss_type=loss_type, importance_sampling_level=importance_sampling_level))
    if convention == "openrlhf":
        fn = _openrlhf_instance(fn, opts)
    params = {c: tuple(p.strip() for p in sig.split("(", 1)[1].split(")", 1)[0].split(","))
              for c, (sig, _) in TOKEN_LOSS_CONVENTIONS.items()}
    named = check_signature(fn, KIND, convention, params)
    config = _verl_config(opts) if convention == "verl" else None
    shown = {k: v for k, v in opts.items() if k != "geom"}
    g: _Geom = opts["geom"]
    logp_name = _LOGP[convention]

    def probe(be):
        s = Session(KIND, fn, convention, be, max_examples=1, seed=seed, options=shown)
        case = _build(np.random.default_rng(0), 3, 3, g, opts)
        return s.call(_args(convention, *(be.round(case[k]) for k in ("logp", "logp_old", "advantages")),
                            case["mask"], opts, config))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session(KIND, fn, convention, be, max_examples=max_examples, seed=seed, options=shown,
                      warnings=named + warn0)
    jax = be.name == "jax"
    grad_of = logp_name if be.name == "torch" else None
    ids = {k: f"{KIND}.{k}" for k in ("value", "gradient", "masked_positions", "clipped_zero_gradient",
                                      "on_policy_gradient", "accumulation")}

    def arrays(case, junk=False):
        mask = case["mask"]
        out = [be.round(case[k]) for k in ("logp", "logp_old", "advantages")]
        if junk:
            out = [np.where(mask, a, be.round(j)) for a, j in zip(out, case["junk"])]
        return out

    def run(case, *, junk=False, micro=None, rows=None):
        """Call the function; (inputs, loss value or None, call, outcomes)."""
        lp, lpo, adv = arrays(case, junk)
        mask = case["mask"]
        if rows is not None:
            lp, lpo, adv, mask = lp[rows], lpo[rows], adv[rows], mask[rows]
        args = _args(convention, lp, lpo, adv, mask, opts, config, micro)
        inputs = {k: v for k, v in args if k != "config"}
        call = session.call(args, grad_of=grad_of)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return inputs, None, call, outcomes
        try:
            raw = _loss_item(call.output)
        except (KeyError, IndexError, TypeError):
            raw = call.output
        value, more = session.output_array(raw, "loss", (), inputs)
        return inputs, (None if value is None else float(value)), call, outcomes + more

    def gradient(call, shape):
        if not be.differentiable:
            return None, None
        got, problem = session.input_gradient(call, logp_name, _loss_item)
        return got, problem

    def scale_of(lp, lpo, adv):
        return float(max(np.max(np.abs(adv), initial=0.0) * np.max(np.exp(np.clip(lp - lpo, -30, 30)),
                                                                    initial=1.0), 1.0))

    def evaluate(case, *, on_policy=False):
        lp, lpo, adv = arrays(case)
        mask = case["mask"]
        inputs, value, call, outcomes = run(case)
        if value is None:
            return outcomes
        ref = _reference(lp, lpo, adv, mask, opts)
        scale = scale_of(lp, lpo, adv) * (1.0 + np.max(np.abs(lp), initial=0.0) * (opts["loss"] == "cispo"))
        alts = None
        o = session.compare(ids["value"], "loss", value, ref.value, inputs, scale=scale)
        if o is not None:
            alts = _alternatives(lp, lpo, adv, mask, opts)
            h = _hint(value, ref.value, alts, "value", be.tol, scale)
            o.message += f"; {h}" if h else ""
            outcomes.append(o)
        # Junk at the masked positions: the loss and its gradient must not move.
        junk_inputs, junk_value, junk_call, more = run(case, junk=True)
        if junk_value is None:
            session.ran(ids["masked_positions"])
            why = "; ".join(m.message for m in more) or "no usable loss"
            outcomes.append(Outcome(ids["masked_positions"],
                                    f"the function should return the same finite loss when the masked positions "
                                    f"(padding, post-EOS tokens) hold finite junk instead of zeros, actual: {why}",
                                    junk_inputs, traceback=junk_call.error))
        else:
            session.ran(ids["masked_positions"])
            if abs(junk_value - value) > be.tol * (1.0 + scale):
                outcomes.append(Outcome(ids["masked_positions"],
                                        f"the loss should not depend on the entries at masked positions (padding, "
                                        f"post-EOS tokens, responses without a token): with finite junk there it "
                                        f"should be {value:.10g} (its value with zeros there), actual {junk_value:.10g}",
                                        junk_inputs, expected=value, actual=junk_value))
        if not be.differentiable:
            outcomes += _numpy_clipped(case, lp, lpo, adv, mask, ref, value, scale, inputs)
            return outcomes
        got, problem = gradient(call, mask.shape)
        if problem is not None:
            return outcomes + [Outcome(ids["on_policy_gradient" if on_policy else "gradient"], problem, inputs)]
        session.ran(ids["masked_positions"])
        leak = ~mask & (got != 0.0)
        if leak.any():
            idx = tuple(int(i) for i in np.argwhere(leak)[0])
            outcomes.append(Outcome(ids["masked_positions"],
                                    f"d loss / d {logp_name}[{idx[0]}, {idx[1]}] should be exactly 0 at a masked "
                                    f"position (padding leaks into the loss), actual {got[idx]:.6g}",
                                    inputs, expected=ref.grad, actual=got, where=idx))
        if junk_value is not None:
            got_junk, problem = gradient(junk_call, mask.shape)
            if problem is None:
                bad = np.abs(np.where(mask, got_junk - got, got_junk)) > be.tol * (1.0 + np.max(np.abs(got)))
                if bad.any():
                    idx = tuple(int(i) for i in np.argwhere(bad)[0])
                    outcomes.append(Outcome(ids["masked_positions"],
                                            f"d loss / d {logp_name}[{idx[0]}, {idx[1]}] should not depend on the "
                                            f"entries at masked positions: with finite junk there it should be "
                                            f"{(got[idx] if mask[idx] else 0.0):.10g}, actual {got_junk[idx]:.10g}",
                                            junk_inputs, expected=np.where(mask, got, 0.0), actual=got_junk, where=idx))
        if opts["loss"] != "cispo":
            session.ran(ids["clipped_zero_gradient"])
            nonzero = ref.zero & (got != 0.0)
            if nonzero.any():
                idx = tuple(int(i) for i in np.argwhere(nonzero)[0])
                outcomes.append(Outcome(ids["clipped_zero_gradient"],
                                        f"d loss / d {logp_name}[{idx[0]}, {idx[1]}] should be exactly 0 where the "
                                        f"clipped term is taken ({_why_clipped(lp, lpo, adv, mask, idx, opts)}), "
                                        f"actual {got[idx]:.6g}", inputs, expected=ref.grad, actual=got, where=idx))
        cid = ids["on_policy_gradient" if on_policy else "gradient"]
        what = f"d loss / d {logp_name}"
        o = session.compare(cid, what, np.where(mask, got, ref.grad), ref.grad, inputs, scale=0.0)
        if o is not None:
            o.actual = got
            why = ("at logp == logp_old the gradient is -A w (w the aggregation weights)" if on_policy else
                   "the gradient is w * d loss_token / d logp, w the aggregation weights")
            alts = alts or _alternatives(lp, lpo, adv, mask, opts)
            h = _hint(got, ref.grad, alts, "grad", be.tol, float(np.max(np.abs(ref.grad), initial=0.0))) or \
                _factor_hint(got, ref.grad, be.tol, float(np.max(np.abs(ref.grad), initial=0.0)))
            o.message += f"; {why}" + (f"; {h}" if h else "")
            outcomes.append(o)
        return outcomes

    def _numpy_clipped(case, lp, lpo, adv, mask, ref, value, scale, inputs):
        """NumPy: moving the log-probability of a clipped token (within its band) leaves the loss unchanged."""
        if opts["loss"] == "cispo" or not ref.zero.any():
            return []
        idx = tuple(int(i) for i in np.argwhere(ref.zero)[0])
        if opts["loss"] == "gspo":
            return []  # a response's ratio moves with every token: no single token to move alone
        moved = dict(case)
        step = 0.01 * abs(_band_interval("inside", g)[1])
        sign = 1.0 if (lp - lpo)[idx] > 0 else -1.0
        lp2 = case["logp"].copy()
        lp2[idx] += sign * step  # further out of the clip range, so still clipped
        moved["logp"] = lp2
        m_inputs, m_value, _, more = run(moved)
        if m_value is None:
            return []
        session.ran(ids["clipped_zero_gradient"])
        if abs(m_value - value) > be.tol * (1.0 + scale):
            return [Outcome(ids["clipped_zero_gradient"],
                            f"the loss should not change when {logp_name}[{idx[0]}, {idx[1]}] moves further out of "
                            f"the clip range where the clipped term is taken "
                            f"({_why_clipped(lp, lpo, adv, mask, idx, opts)}): it should stay {value:.10g}, actual "
                            f"{m_value:.10g}", m_inputs, expected=value, actual=m_value)]
        return []

    def evaluate_accumulation(case):
        lp, lpo, adv = arrays(case)
        mask = case["mask"]
        splits = case["splits"]
        n = mask.shape[0]
        ref = _reference(lp, lpo, adv, mask, opts)
        tokens = int(mask.sum())
        nonempty = int(np.count_nonzero(mask.sum(axis=1)))
        k = len(splits)
        acc = opts["accumulation"]
        micro = (tokens, nonempty if opts["empty_rows"] == "skip" else n, k, n) if acc == "global" else None
        values, grads, factors, calls = [], [], [], []
        starts = np.cumsum((0,) + tuple(splits[:-1]))
        all_inputs = {}
        outcomes = []
        for j, (s, size) in enumerate(zip(starts, splits)):
            rows = np.zeros(n, bool)
            rows[s:s + size] = True
            inputs, value, call, more = run(case, micro=micro, rows=rows)
            all_inputs.update({f"{name} (micro-batch {j + 1})": v for name, v in inputs.items()})
            if value is None:
                return more
            values.append(value)
            calls.append(call)
            mb = mask[rows]
            factors.append({"global": 1.0, "steps": 1.0 / k,
                            "tokens": mb.sum() / tokens,
                            "sequences": (np.count_nonzero(mb.sum(axis=1)) / nonempty if opts["empty_rows"] == "skip"
                                          else size / n)}[acc])
            if be.differentiable:
                got, problem = gradient(call, mb.shape)
                if problem is not None:
                    return [Outcome(ids["accumulation"], problem, inputs)]
                grads.append((rows, got))
        declared = f"accumulation={acc!r}"
        what = ("the summed micro-batch gradient d loss / d " + logp_name) if be.differentiable else \
            "the summed micro-batch loss"
        if be.differentiable:
            total = np.zeros(mask.shape)
            raw = []
            for (rows, got), c in zip(grads, factors):
                total[rows] += c * got
                part = np.zeros(mask.shape)
                part[rows] = got
                raw.append(part)
            actual, expected = total, ref.grad
        else:
            actual, expected = float(np.dot(factors, values)), ref.value
            raw = [np.asarray(v) for v in values]
        scale = float(np.max(np.abs(expected), initial=0.0))
        o = session.compare(ids["accumulation"], what, actual, expected, all_inputs, scale=scale)
        if o is None:
            return outcomes
        hints = [f"splits of {list(map(int, splits))} responses, token counts "
                 f"{[int(mask[s:s + z].sum()) for s, z in zip(starts, splits)]}, micro-batch losses "
                 f"{[round(v, 10) for v in values]} combined as {declared}"]
        f = _factor_hint(actual, expected, be.tol, scale)
        if f:
            kf = float(np.ravel(actual) @ np.ravel(expected)) / float(np.ravel(expected) @ np.ravel(expected))
            known = {1.0 / k: f" = 1/{k}, the number of micro-batches: 1/gradient_accumulation_steps applied once too "
                              f"often (a loss normalised by the whole batch's token count, divided by the "
                              f"number of steps again)",
                     float(k): f" = {k}, the number of micro-batches: a 1/gradient_accumulation_steps missing"}
            note = next((txt for val, txt in known.items() if abs(kf - val) <= 1e-6 * val), "")
            hints.append(f + note)
        passing = _passing_declarations(raw, mask, splits, acc, opts, expected, be.tol, scale, be.differentiable)
        if passing:
            hints.append(f"the declaration{'s' if len(passing) > 1 else ''} "
                         f"{' or '.join(f'accumulation={p!r}' for p in passing)} would pass")
        o.message += "; " + "; ".join(hints)
        o.actual = actual
        return outcomes + [o]

    session.declare(*session.generic_ids())
    opts_key = tuple(sorted((k, v) for k, v in opts.items()))
    regions = g.regions(opts["loss"])
    per = max(1, math.ceil(max_examples / (len(regions) + 2)))
    session.declare(ids["value"], ids["masked_positions"], tracked=True)
    if be.differentiable:
        session.declare(ids["gradient"], tracked=True)
    else:
        session.declare(ids["gradient"], ids["on_policy_gradient"])
        for cid in ("gradient", "on_policy_gradient"):
            session.not_run_because(ids[cid], "backend='numpy' gives no gradient (pass backend='torch' or 'jax')",
                                    by_design=True)
    if opts["loss"] == "cispo":
        session.declare(ids["clipped_zero_gradient"])
        session.not_run_because(ids["clipped_zero_gradient"], "CISPO clips the importance weight, never a "
                                "token's gradient: no gradient is zeroed", by_design=True)
    elif opts["loss"] == "gspo" and not be.differentiable:
        session.declare(ids["clipped_zero_gradient"])
        session.not_run_because(ids["clipped_zero_gradient"], "GSPO's ratio is a response's: with backend='numpy' "
                                "no single token can be moved alone; pass backend='torch' or 'jax'", by_design=True)
    else:
        session.declare(ids["clipped_zero_gradient"], tracked=True)
    moves = functools.partial(_moves, jax=jax)
    for region in regions:
        session.run_scenario(_region_cases(region, opts_key, jax), evaluate, (ids["value"],), moves=moves,
                             max_examples=per)
    if be.differentiable:
        session.declare(ids["on_policy_gradient"], tracked=True)
        session.run_scenario(_on_policy_cases(opts_key, jax), functools.partial(evaluate, on_policy=True),
                             (ids["value"],), moves=moves, max_examples=per)
    if opts["accumulation"] == "none":
        session.declare(ids["accumulation"])
        session.not_run_because(ids["accumulation"], "accumulation='none' was declared", by_design=True)
    else:
        equal = opts["accumulation"] == "steps" or convention == "trl"
        session.run_scenario(_accumulation_cases(opts_key, equal, jax), evaluate_accumulation, (ids["accumulation"],),
                             moves=moves, max_examples=per)
    return session.report()


def _why_clipped(lp, lpo, adv, mask, idx, opts) -> str:
    r = math.exp(lp[idx] - lpo[idx])
    if opts["loss"] == "gspo":
        i = idx[0]
        m = mask[i]
        r = math.exp(float(np.sum((lp[i] - lpo[i])[m]) / max(int(m.sum()), 1)))
        what = f"the response's sequence ratio {r:.4g}"
    else:
        what = f"ratio {r:.4g}"
    a = adv[idx]
    g: _Geom = opts["geom"]
    if a < 0 and g.dual is not None and r > g.dual:
        return f"A = {a:g} < 0 and {what} > dual_clip = {g.dual:g}"
    if a > 0:
        return f"A = {a:g} > 0 and {what} > 1 + eps_high = {g.high:g}"
    return f"A = {a:g} < 0 and {what} < 1 - eps_low = {g.low:g}"


def _passing_declarations(raw, mask, splits, declared, opts, expected, tol, scale, grad: bool) -> list:
    """The accumulation declarations under which the same micro-batch outputs would pass."""
    n = mask.shape[0]
    k = len(splits)
    tokens = mask.sum()
    starts = np.cumsum((0,) + tuple(splits[:-1]))
    nonempty = max(int(np.count_nonzero(mask.sum(axis=1))), 1)
    out = []
    for name in ("tokens", "sequences", "steps", "global"):
        if name == declared:
            continue
        if declared == "global" or name == "global":
            continue  # the function's own outputs depend on what it is given: no reweighting tells
        fs = []
        for s, z in zip(starts, splits):
            mb = mask[s:s + z]
            fs.append({"steps": 1.0 / k, "tokens": mb.sum() / tokens,
                       "sequences": (np.count_nonzero(mb.sum(axis=1)) / nonempty if opts["empty_rows"] == "skip"
                                     else z / n)}[name])
        total = sum(f * np.asarray(r) for f, r in zip(fs, raw))
        if np.all(np.abs(total - expected) <= tol * (1.0 + scale)):
            out.append(name)
    return out

r"""`check_ppo_loss` and `check_value_loss`: PPO's two per-minibatch losses.

PPO's clipped policy loss [Schulman2017], Eq. (7), as the scalar to minimise:

.. math::
    \mathcal L^{CLIP} = -\frac1n \sum_i \min\big(r_i \hat A_i,\
        \mathrm{clip}(r_i, 1 - \epsilon, 1 + \epsilon) \hat A_i\big), \qquad
    r_i = \exp(\log\pi_{new}(a_i|s_i) - \log\pi_{old}(a_i|s_i)),

with :math:`\hat A` optionally normalised per minibatch. The value loss comes
in the three forms that libraries use (unclipped; the PPO2/CleanRL maximum of
the clipped and unclipped errors; SB3's clipped prediction).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, check_callable, check_signature,
                                        convention_parameters, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_ppo_loss", "check_value_loss", "PPO_CONVENTIONS", "VALUE_CONVENTIONS"]

#: Convention -> (signature, default options). SB3 and CleanRL normalise the advantages of each
#: minibatch with torch's std (ddof = 1) plus 1e-8; SB3 skips normalisation for a minibatch of one.
PPO_CONVENTIONS = {
    "refpg": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="none")),
    "torchrl": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="none")),
    "sb3": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="batch", ddof=1, eps=1e-8)),
    "cleanrl": ("fn(logp_new, logp_old, advantages, clip_eps) -> loss", dict(normalize="batch", ddof=1, eps=1e-8)),
    "rlax": ("fn(prob_ratios_t, adv_t, epsilon) -> loss", dict(normalize="none")),
}

#: Convention -> default (style, coef) of the value loss.
VALUE_CONVENTIONS = {
    "refpg": dict(style="unclipped", coef=0.5),
    "cleanrl": dict(style="max", coef=0.5),
    "sb3": dict(style="clip_prediction", coef=1.0),
}
VALUE_STYLES = ("unclipped", "max", "clip_prediction")
#: The value loss's parameters, the same in every convention.
VALUE_PARAMETERS = ("values_new", "values_old", "returns", "clip_eps")

CLIPS = (0.2, 0.1, 0.3)
# Ratios are drawn through u (see `_log_ratio`): |u| < 1 is inside the clip range, |u| > 1 outside.
# Keeping u at least 10% away from +-1 keeps the (discontinuous) clip indicator and gradient
# unambiguous in float32.
_INSIDE_U = st.one_of(st.sampled_from([0.0, 0.5, -0.5]), st.floats(-0.9, 0.9))
_OUTSIDE_U = st.one_of(st.sampled_from([2.0, -2.0, 3.0, 5.0]), st.floats(1.1, 10.0),
                       st.floats(-10.0, -1.1))
_LOGP = st.one_of(st.sampled_from([-1.0, -0.5, -2.0, 0.0]), st.floats(-5.0, 0.0))


# -- reference ------------------------------------------------------------------------

def _log_ratio(u, eps):
    """log r with r = (1 + eps)^u for u >= 0 and (1 - eps)^(-u) for u < 0: u = +-1 are the clip bounds."""
    return np.where(u >= 0, u * np.log1p(eps), -u * np.log1p(-eps))


def _normalized(adv: np.ndarray, opts: dict) -> np.ndarray:
    """Per-minibatch normalisation; a minibatch with n <= ddof is left as is (SB3's rule for n = 1)."""
    if opts["normalize"] == "none" or adv.size <= opts["ddof"]:
        return adv
    return (adv - adv.mean()) / (adv.std(ddof=opts["ddof"]) + opts["eps"])


def _normalization_ill_conditioned(adv, opts, be) -> bool:
    """Whether per-minibatch normalisation turns the dtype's rounding of A - mean(A) into an error
    above the tolerance (nearly tied, non-integer advantages in float32, say)."""
    if opts["normalize"] == "none" or adv.size <= opts["ddof"]:
        return False
    rounding = 4 * np.finfo(be.np_dtype).eps * (1.0 + abs(float(adv.mean())))
    return rounding / (adv.std(ddof=opts["ddof"]) + opts["eps"]) > 0.1 * be.tol


def _normalization_hint(ratio, adv, eps, actual, opts, be) -> str:
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
                loss = _ppo_reference(ratio, _normalized(adv, v), eps)[0]
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


def _ppo_reference(ratio, adv, eps):
    """(loss, d loss / d ratio, clipped mask, clip fraction) of -mean(min(r A, clip(r) A))."""
    n = ratio.size
    clipped_r = np.clip(ratio, 1.0 - eps, 1.0 + eps)
    loss = -np.mean(np.minimum(ratio * adv, clipped_r * adv))
    # The min picks the clipped term (zero gradient) when A > 0 and r > 1 + eps, or A < 0 and r < 1 - eps.
    clipped = ((adv > 0) & (ratio > 1.0 + eps)) | ((adv < 0) & (ratio < 1.0 - eps))
    d_ratio = np.where(clipped, 0.0, -adv / n)
    fraction = float(np.mean(np.abs(ratio - 1.0) > eps))
    return float(loss), d_ratio, clipped, fraction


def _parse_loss(session, raw, inputs, *, allow_fraction):
    """(loss tensor or array, clip fraction or None, outcomes) from what the function returned."""
    fraction = None
    if isinstance(raw, dict):
        if "loss" not in raw:
            return None, None, [Outcome(f"{session.kind}.output_shape",
                                        f"the returned dict should have a 'loss' key, actual keys "
                                        f"{sorted(raw)}", inputs)]
        loss, fraction = raw["loss"], raw.get("clip_fraction")
    elif isinstance(raw, (tuple, list)) and allow_fraction and len(raw) == 2:
        loss, fraction = raw
    elif isinstance(raw, (tuple, list)) and allow_fraction:
        return None, None, [Outcome(f"{session.kind}.output_shape",
                                    f"the function should return loss, (loss, clip_fraction) or a dict with "
                                    f"'loss' (and 'clip_fraction'), actual a {type(raw).__name__} of "
                                    f"{len(raw)} items", inputs)]
    else:
        loss = raw
    return loss, fraction, []


def _resolve(options: dict, defaults: dict, allowed: dict) -> dict:
    unknown = set(options) - set(allowed)
    if unknown:
        raise InvalidInputError(f"options should be among {sorted(allowed)}, actual unknown "
                                f"{sorted(unknown)}")
    out = {**{k: v for k, v in allowed.items()}, **defaults, **options}
    return out


# -- PPO clipped loss ---------------------------------------------------------------------

@numerics_of_their_own
def check_ppo_loss(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                   max_examples: int = 100, seed: int = 0, **options) -> Report:
    r"""Check a PPO clipped policy loss against :math:`-\frac1n\sum_i \min(r_i A_i, \mathrm{clip}(r_i) A_i)`.

    [Schulman2017], Eq. (7), with the advantages normalised per minibatch
    when ``normalize="batch"``: :math:`(A - \bar A)/(\mathrm{std}_{ddof}(A) + eps)`
    (left as is when n <= ddof).

    Parameters
    ----------
    fn : callable
        ``fn(logp_new, logp_old, advantages, clip_eps) -> loss`` (rlax:
        ``fn(prob_ratios_t, adv_t, epsilon)``). It may return ``(loss,
        clip_fraction)`` or a dict with ``"loss"`` and ``"clip_fraction"``;
        a clip fraction, if returned, must be :math:`\frac1n\#\{i: |r_i - 1| > \epsilon\}`.
    convention : {"refpg", "sb3", "cleanrl", "torchrl", "rlax"}
        Sets the normalisation defaults (`PPO_CONVENTIONS`).
    backend, dtype, max_examples, seed
        As in `check_gae`.
    **options
        ``normalize`` ("none" or "batch"), ``ddof``, ``eps``.

    Returns
    -------
    Report
        Check ids ``ppo_loss.inside_clip_range`` (every ratio within the clip
        range: the loss is -mean(r A)), ``ppo_loss.outside_clip_range``,
        ``ppo_loss.clip_fraction`` (if returned), ``ppo_loss.gradient`` (torch
        backend: d loss / d logp_new is exactly 0 where the clipped term is
        taken and -A r / n elsewhere), plus the generic ones.
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(PPO_CONVENTIONS))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    opts = _resolve(options, PPO_CONVENTIONS[convention][1], dict(normalize="none", ddof=1, eps=1e-8))
    check_choice(opts["normalize"], "normalize", ("none", "batch"))
    if isinstance(opts["ddof"], bool) or not isinstance(opts["ddof"], (int, np.integer)) or opts["ddof"] < 0:
        raise InvalidInputError(f"ddof should be a non-negative integer, actual {opts['ddof']!r}")
    opts["eps"] = check_real(opts["eps"], "eps")
    if convention == "rlax" and opts["normalize"] != "none":
        raise InvalidInputError("convention 'rlax' takes ratios and advantages as given; normalize "
                                "should be 'none'")
    rlax = convention == "rlax"
    # cleanrl normalises a minibatch of one too, where std(ddof >= 1) is NaN (SB3 skips it): only then are
    # minibatches of one left out.
    nan_for_one = convention == "cleanrl" and opts["normalize"] == "batch" and opts["ddof"] >= 1
    n_min = 2 if nan_for_one else 1
    warnings = []
    if nan_for_one:
        warnings.append(f"convention 'cleanrl' normalises with the ddof={opts['ddof']} std, which is NaN for a "
                        "minibatch of one; minibatches of one were not drawn")

    named = check_signature(fn, "ppo_loss", convention, convention_parameters(PPO_CONVENTIONS))

    def args_of(case, be):
        logp_old = be.round(case["logp_old"])
        logp_new = be.round(case["logp_old"] + _log_ratio(case["u"], case["clip_eps"]))
        adv = be.round(case["advantages"])
        ratio = np.exp(logp_new - logp_old)
        if rlax:
            args = [("prob_ratios_t", be.round(ratio)), ("adv_t", adv), ("epsilon", case["clip_eps"])]
            ratio = be.round(ratio)
        else:
            args = [("logp_new", logp_new), ("logp_old", logp_old), ("advantages", adv),
                    ("clip_eps", case["clip_eps"])]
        return args, ratio, adv

    def probe(be):
        s = Session("ppo_loss", fn, convention, be, max_examples=1, seed=seed, options=opts)
        args, _, _ = args_of({"logp_old": np.array([-1.0, -0.5]), "u": np.array([0.5, 2.0]),
                              "advantages": np.array([1.0, -1.0]), "clip_eps": 0.2}, be)
        return s.call(args)

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("ppo_loss", fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=named + warnings + warn0)
    torch_grad = be.name == "torch"
    grad_arg = "prob_ratios_t" if rlax else "logp_new"
    fraction_seen = {"any": False}

    def evaluate_for(check_id, inside: bool):
        def evaluate(case):
            outside = np.abs(case["u"]) >= 1.1
            if inside and outside.any() or not inside and not outside.any():
                return []  # a shrink move left the scenario
            if np.any((np.abs(case["u"]) > 0.9) & ~outside):
                return []  # a shrink move put a ratio within 10% of a clip bound, where no case is drawn
            args, ratio, adv = args_of(case, be)
            inputs = dict(args)
            inputs["ratio (derived)"] = ratio
            call = session.call(args, grad_of=grad_arg if torch_grad else None)
            outcomes = session.generic_outcomes(call, inputs)
            if call.error is not None:
                return outcomes
            loss_raw, fraction_raw, bad = _parse_loss(session, call.output, inputs, allow_fraction=True)
            if bad:
                return outcomes + bad
            if fraction_raw is not None:
                fraction_seen["any"] = True
                outcomes += _fraction_outcomes(session, fraction_raw, ratio, case["clip_eps"], inputs)
            loss, more = session.output_array(loss_raw, "loss", (), inputs)
            outcomes += more
            if loss is None:
                return outcomes
            a = _normalized(adv, opts)
            ref, d_ratio, clipped, _ = _ppo_reference(ratio, a, case["clip_eps"])
            if not np.isfinite(ref):
                return outcomes
            if opts["normalize"] == "batch":
                inputs["normalized advantages (derived)"] = a
            why = ("every ratio is inside [1 - eps, 1 + eps], so the loss is -mean(ratio * A)" if inside else
                   "loss = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)): the min takes the "
                   "clipped term when A > 0 and ratio > 1 + eps, or A < 0 and ratio < 1 - eps")
            if _normalization_ill_conditioned(adv, opts, be):
                return outcomes  # A - mean(A) is rounding noise, amplified by 1/(std + eps): no verdict
            o = session.compare(check_id, "loss", loss, ref, inputs, scale=float(np.max(np.abs(ratio * a))),
                                why=why, n=ratio.size, n_is="the minibatch size")
            if o is not None:
                if "; actual = " not in o.message:  # no scaling bug under the declared normalisation
                    o.message += _normalization_hint(ratio, adv, case["clip_eps"], float(loss), opts, be)
                outcomes.append(o)
            if torch_grad:
                outcomes += _gradient_outcomes(session, call, grad_arg, loss_raw, d_ratio if rlax
                                               else d_ratio * ratio, clipped, inputs,
                                               "ppo_loss.gradient",
                                               "where the unclipped term is taken the gradient is that of "
                                               "-ratio * A / n")
            return outcomes
        return evaluate

    session.declare(*session.generic_ids())
    def moves(case):
        return _ppo_moves(case, n_min)
    session.run_scenario(_ppo_cases(_INSIDE_U, n_min), evaluate_for("ppo_loss.inside_clip_range", True),
                         ("ppo_loss.inside_clip_range",), moves=moves)
    session.run_scenario(_ppo_cases(_OUTSIDE_U, n_min, any_u=True),
                         evaluate_for("ppo_loss.outside_clip_range", False),
                         ("ppo_loss.outside_clip_range",), moves=moves)
    if fraction_seen["any"]:
        session.declare("ppo_loss.clip_fraction", tracked=True)
    if torch_grad:
        session.declare("ppo_loss.gradient", tracked=True)
    return session.report()


def _fraction_outcomes(session, raw, ratio, eps, inputs) -> list:
    """The returned clip fraction against (1/n) #{i: |r_i - 1| > eps}; any other value, shape, type or a
    NaN is a ``ppo_loss.clip_fraction`` failure (a fraction that is not checked must not read as passed)."""
    expected = float(np.mean(np.abs(ratio - 1.0) > eps))
    # A fraction in float32 (``.float().mean()``) is fine: only a wrong count is a bug.
    f, outcomes = session.output_array(raw, "clip_fraction", (), inputs, dtype_matters=False,
                                       check_id="ppo_loss.clip_fraction")
    if f is None:
        return outcomes
    session.ran("ppo_loss.clip_fraction")
    # Half a sample's share: the ratios are drawn at least 10% away from the clip bounds, so the count
    # is unambiguous and any wrong count is off by at least 1/n.
    if abs(float(f) - expected) > 0.5 / ratio.size:
        outcomes.append(Outcome(
            "ppo_loss.clip_fraction",
            f"clip_fraction should be {expected:.6g} (the fraction of samples with |ratio - 1| > eps, "
            f"eps={eps}), actual {float(f):.6g}", inputs, expected=expected, actual=float(f)))
    return outcomes


def _ppo_cases(u_strategy, n_min, *, any_u: bool = False):
    """Minibatches of up to 8 samples; with `any_u`, ratios inside and outside the range are mixed."""
    u = st.one_of(u_strategy, _INSIDE_U) if any_u else u_strategy
    base = _cases.samples(n_min=n_min, logp_old=_LOGP, u=u, advantages=_cases.numbers())
    return st.tuples(base, st.sampled_from(CLIPS)).map(lambda bc: {**bc[0], "clip_eps": bc[1]})


def _ppo_moves(case, n_min: int = 1):
    return _cases.sample_moves(case, ("logp_old", "u", "advantages"), {"clip_eps": CLIPS}, n_min=n_min)


def _gradient_outcomes(session, call, grad_arg, loss_raw, expected, clipped, inputs, check_id, why,
                       judged=None):
    """Compare the torch gradient of the returned loss with `expected`; exactly 0 where `clipped`.

    Only the entries in `judged` (all by default) are compared: an entry at a kink of the loss has no
    single right derivative. With none judged, the check reaches no verdict on this case.
    """
    import torch

    judged = np.ones(expected.shape, bool) if judged is None else judged
    if not judged.any():
        return []
    names = [name for name, _ in inputs.items()]
    x = call.user_args[names.index(grad_arg)]
    if not isinstance(loss_raw, torch.Tensor) or loss_raw.grad_fn is None:
        return [Outcome(check_id, f"the loss should be differentiable with respect to {grad_arg} "
                                  f"(a torch tensor with requires_grad=True was passed), actual a "
                                  f"{type(loss_raw).__name__} with no gradient", inputs)]
    try:
        (g,) = torch.autograd.grad(loss_raw, x, allow_unused=True)
    except RuntimeError as exc:
        return [Outcome(check_id, f"the loss should be differentiable with respect to {grad_arg}, actual "
                                  f"{exc}".splitlines()[0], inputs)]
    got = np.zeros(expected.shape) if g is None else g.detach().cpu().numpy().astype(np.float64)
    session.ran(check_id)
    leak = clipped & judged & (got != 0.0)
    if leak.any():
        i = int(np.flatnonzero(leak)[0])
        return [Outcome(check_id, f"d loss / d {grad_arg}[{i}] should be exactly 0 where the clipped "
                                  f"term is taken (it does not depend on {grad_arg} there), actual {got[i]:.6g}",
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


_VALUE_DELTA = st.one_of(st.sampled_from([0.0, 0.1, -0.1, 1.0, -1.0, 2.0]), st.floats(-3.0, 3.0))
VALUE_CLIPS = (0.2, 0.5, 1.0)


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
        ``value_loss.value``, ``value_loss.gradient`` (torch backend), and the generic ids.
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
        if torch_grad:
            outcomes += _gradient_outcomes(session, call, "values_new", call.output, grad, clipped, inputs,
                                           "value_loss.gradient", f"the gradient of "
                                           f"{_VALUE_FORMS[opts['style']]}{_VALUE_GRADIENTS[opts['style']]}",
                                           judged=judged)
        return outcomes

    session.declare(*session.generic_ids())
    strategy = st.tuples(_cases.samples(values_old=_cases.numbers(), delta=_VALUE_DELTA,
                                        returns=_cases.numbers()),
                         st.sampled_from(VALUE_CLIPS)).map(lambda bc: {**bc[0], "clip_eps": bc[1]})
    session.run_scenario(strategy, evaluate, ("value_loss.value",),
                         moves=lambda c: _cases.sample_moves(c, ("values_old", "delta", "returns"),
                                                             {"clip_eps": VALUE_CLIPS}))
    if torch_grad:
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

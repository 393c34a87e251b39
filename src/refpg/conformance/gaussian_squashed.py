r"""`check_squashed_log_prob`: the tanh-squashed Gaussian of SAC-style policies, including near saturation.

The action is :math:`a = m + c \tanh(u)` with :math:`u \sim N(\mu, \mathrm{diag}\,\sigma^2)`, the box
:math:`[low, high]`, :math:`m = (high + low)/2` and :math:`c = (high - low)/2` (c = 1, m = 0 for
[-1, 1]). Its log-density, summed over the d dimensions (docs/conventions.md,
"Linear-quadratic-Gaussian"), is

.. math::

    \log\pi(a) = \sum_i \Big[\log N(u_i; \mu_i, \sigma_i) - \log(1 - \tanh^2 u_i) - \log c_i\Big],
    \qquad \log(1 - \tanh^2 u) = 2\big(\log 2 - u - \mathrm{softplus}(-2u)\big),

the stable form, which stays exact where :math:`\tanh u` rounds to :math:`\pm 1` (:math:`|u| > 19.1` in
float64, 9.0 in float32). The :math:`-\log c_i` term is the change of variables of the rescaling
(openai/spinningup #314 left it out).

**Given or not.** With ``pre_tanh="given"`` the function receives u besides the action (SB3's
``log_prob(actions, gaussian_actions)``, CleanRL's ``x_t``) and the reference is exact at u: a
function that re-inverts the rounded action (TorchRL's ``TanhNormal`` before pytorch/rl PR #4080),
caps the pre-tanh value (RLlib's ``atanh(clamp(...))`` at about 7.25, ray PR #65036), or evaluates
:math:`1 - \tanh^2` on the squashed action (google-deepmind/rlax #54) fails near saturation. With
``"not_given"`` the function receives the action only (TorchRL's ``TanhNormal.log_prob``) and the
reference is exact at that action: :math:`u^* = \tfrac12[\log(a - low) - \log(high - a)]` and
:math:`\log(1 - \tanh^2 u^*) = \log(high - a) + \log(a - low) - 2\log c`, the differences to the bounds
exact for an action near them. Near a bound the log-density's last digits depend on the action's last
bits, so there the function is judged backward stable in the action: it may be off by what moving each
entry of the normalised action :math:`t = (a - m)/c` by 4 units in the last place (of the dtype)
changes, evaluated exactly.

**Regions.** ``squashed_log_prob.value`` draws every :math:`|u| \le 4`; ``squashed_log_prob.saturation``
puts one entry or more at :math:`|u| \in [8, 20]` (``max_pre_tanh`` bounds it; in "not_given", the
largest action below the bound is drawn too), with a confident policy (mean near u, small std) or a
wide one. Mean and log-std gradients are checked as in `refpg.conformance.gaussian.check_gaussian_log_prob`
(the pathwise derivative in u is not: the kit cannot compute the action from u inside the
function's graph).

**The regulariser.** SB3 and CleanRL compute :math:`\log(1 - \tanh^2 u + \epsilon)`
(:math:`\log(c(1 - \tanh^2 u) + \epsilon)`), :math:`\epsilon = 10^{-6}`, which lowers the density's
log by up to :math:`\log(1 + \epsilon/(c\,\mathrm{sech}^2 u))` per dimension: 1e-4 at u = 2, 24 at
u = 20. Declared as ``eps``, the check accepts any value between the exact log-density and that
much below it (a one-sided band, per dimension summed); with ``eps=0`` the exact form is required, and a
failure that matches the regularised form says to declare it.

**Entropy.** The entropy of the squashed Gaussian has no closed form. With ``entropy=True`` the
function returns ``(log_prob, entropy)`` and the entropy is compared with `squashed_gaussian_entropy`,
a quadrature whose error bound is part of the tolerance.

References
----------
docs/conventions.md, "Linear-quadratic-Gaussian"; the stable form is TensorFlow Probability's
``Tanh`` bijector's, adopted by rail-berkeley/rlkit #37 and torch's ``TanhTransform``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_real
from refpg.conformance._harness import Session, check_signature, numerics_of_their_own, resolve_backend
from refpg.conformance.gaussian import (JAX_SHAPE, LOG_2PI, Spec, _log_std_draw, _gaussian_moves, autograd,
                                        check_min_log_std, common_arguments, compare_rows, gradient_outcome,
                                        natural_steps, numeric_gradients, shape_outcome, split_pair, weighted_sum, weights)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_squashed_log_prob", "squashed_gaussian_entropy", "SQUASHED_CONVENTIONS", "PRE_TANH"]

KIND = "squashed_log_prob"
#: Whether the function receives the pre-tanh value u besides the action.
PRE_TANH = ("given", "not_given")
#: Convention -> signature (pre_tanh="given"; with "not_given" the last argument is absent).
SQUASHED_CONVENTIONS = {
    "refpg": "fn(mean, log_std, actions, pre_tanh) -> log_prob (n,): actions = m + c tanh(pre_tanh) in the box, "
             "(n, d) each; log_std (n, d) per state (SAC); fn(mean, log_std, actions) with pre_tanh='not_given'",
    "sb3": "fn(mean_actions, log_std, actions, gaussian_actions) -> log_prob (n,), as SB3's "
           "SquashedDiagGaussianDistribution(d).proba_distribution(mean_actions, log_std).log_prob(actions, "
           "gaussian_actions) (eps=1e-6 by default)",
    "cleanrl": "fn(mean, log_std, action, x_t) -> log_prob (n,), as CleanRL's sac_continuous_action: "
               "Normal(mean, std).log_prob(x_t) - log(action_scale (1 - tanh(x_t)^2) + 1e-6), summed (eps=1e-6)",
    "torchrl": "fn(loc, scale, action) -> log_prob (n,), as TorchRL's TanhNormal(loc, scale, low=low, high=high)"
               ".log_prob(action) (pre_tanh='not_given', scale the std)",
}
_NAMES = {
    "refpg": ("mean", {"log_std": "log_std", "std": "std"}, "actions", "pre_tanh"),
    "sb3": ("mean_actions", {"log_std": "log_std", "std": "std"}, "actions", "gaussian_actions"),
    "cleanrl": ("mean", {"log_std": "log_std", "std": "std"}, "action", "x_t"),
    "torchrl": ("loc", {"log_std": "log_scale", "std": "scale"}, "action", "pre_tanh"),
}
_DEFAULTS = {"refpg": dict(pre_tanh="given", eps=0.0), "sb3": dict(pre_tanh="given", eps=1e-6),
             "cleanrl": dict(pre_tanh="given", eps=1e-6), "torchrl": dict(pre_tanh="not_given", eps=0.0)}
#: Action entries are judged backward stable to this many units in the last place ("not_given").
ULPS = 4
MODERATE = 4.0
LOG2 = math.log(2.0)


# -- references -----------------------------------------------------------------------------------------

def log_sech2(u: np.ndarray) -> np.ndarray:
    r""":math:`\log(1 - \tanh^2 u) = 2(\log 2 - |u| - \log(1 + e^{-2|u|}))`, exact for every finite u."""
    au = np.abs(u)
    return 2.0 * (LOG2 - au - np.log1p(np.exp(-2.0 * au)))


def _folded_remainder(m: float, s: float) -> tuple:
    r"""(E[log(1 + e^{-2|u|})] for u ~ N(m, s^2), QUADPACK's error estimate).

    Integrated in the standard score z = (u - m)/s over [-40, 40] (the mass beyond is below 1e-348), split
    at the density's peak z = 0 and around the kink z0 = -m/s at the decay scales 1/(2s) of the integrand,
    so that no feature lies inside a subinterval where the Gauss-Kronrod nodes could step over it."""
    from scipy import integrate

    z0 = -m / s
    cuts = {0.0, z0}
    for k in (0.5, 2.0, 8.0, 20.0):
        cuts |= {z0 - k / s, z0 + k / s}
    points = sorted(c for c in cuts if -40.0 < c < 40.0)
    c0 = 1.0 / math.sqrt(2.0 * math.pi)

    def f(z):
        return math.log1p(math.exp(-2.0 * abs(m + s * z))) * c0 * math.exp(-0.5 * z * z)

    val, err = integrate.quad(f, -40.0, 40.0, points=points, epsabs=1e-15, epsrel=1e-13, limit=500)
    return val, err


@functools.lru_cache(maxsize=4096)
def _expected_log_sech2(m: float, s: float) -> tuple:
    r"""(E[log(1 - tanh^2 u)], error bound) for u ~ N(m, s^2): :math:`2\log 2 - 2E|u| - 2E\log(1 + e^{-2|u|})`,
    E|u| in closed form (the folded normal's mean), the rest by quadrature."""
    e_abs = s * math.sqrt(2.0 / math.pi) * math.exp(-0.5 * (m / s) ** 2) + m * math.erf(m / (s * math.sqrt(2.0)))
    rem, err = _folded_remainder(m, s)
    value = 2.0 * LOG2 - 2.0 * e_abs - 2.0 * rem
    # Twice the quadrature's estimate (doubled: the value doubles it), and the rounding of the closed form.
    return value, 4.0 * err + 1e-15 * (1.0 + abs(value))


def squashed_gaussian_entropy(mean, log_std, *, low=-1.0, high=1.0) -> tuple:
    r"""The entropy of the tanh-squashed diagonal Gaussian, per row, by quadrature, with an error bound.

    .. math::
        H\big(m + c\tanh(u)\big) = \sum_i \Big[\tfrac12\log(2\pi e\,\sigma_i^2) + \log c_i
        + E_{u_i \sim N(\mu_i, \sigma_i^2)} \log(1 - \tanh^2 u_i)\Big],

    :math:`c = (high - low)/2`. The expectation has no closed form; it is computed as
    :math:`2\log 2 - 2E|u| - 2E\log(1 + e^{-2|u|})`, with :math:`E|u|` the folded normal's mean in
    closed form and the last term, bounded in :math:`[0, \log 2]`, by adaptive Gauss-Kronrod quadrature
    (QUADPACK through ``scipy.integrate.quad``, absolute tolerance 1e-15) in the standard score
    :math:`z = (u - \mu)/\sigma \in [-40, 40]` (the mass beyond is below 1e-348), split at the density's
    peak and around the kink :math:`u = 0` at the integrand's decay scales :math:`k/(2\sigma)`.

    Parameters
    ----------
    mean, log_std : array_like, shape (n, d) or (d,)
        The pre-tanh Gaussian; log_std broadcasts against mean.
    low, high : float, low < high
        The box of the action.

    Returns
    -------
    entropy : ndarray, shape (n,) (or () for 1-d input)
    error_bound : ndarray, same shape
        Twice QUADPACK's error estimate (of the doubled term) summed over the dimensions, plus 1e-15
        relative for the closed-form part: an estimate of
        the error, not a proof (adaptive quadrature can miss a feature no subinterval resolves; the
        integrand here is bounded, smooth on each side of :math:`|u| = 0`, and split at the density's
        peak).

    Raises
    ------
    refpg.errors.InvalidInputError
        Non-finite entries, a shape that does not broadcast, or low >= high.

    References
    ----------
    docs/conventions.md, "Linear-quadratic-Gaussian" (the entropy has no closed form).
    """
    low = check_real(low, "low")
    high = check_real(high, "high")
    if not high > low:
        raise InvalidInputError(f"high should be > low, actual low={low!r}, high={high!r}")
    m = np.asarray(mean, dtype=np.float64)
    ls = np.asarray(log_std, dtype=np.float64)
    try:
        m, ls = np.broadcast_arrays(m, ls)
    except ValueError:
        raise InvalidInputError(f"log_std of shape {ls.shape} should broadcast against mean of shape {m.shape}") from None
    for name, x in (("mean", m), ("log_std", ls)):
        if not np.all(np.isfinite(x)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise InvalidInputError(f"{name}{list(idx)} should be finite, actual {x[idx]}")
    e = np.empty(m.shape)
    err = np.empty(m.shape)
    for idx in np.ndindex(m.shape):
        e[idx], err[idx] = _expected_log_sech2(float(m[idx]), float(math.exp(ls[idx])))
    per = 0.5 * (1.0 + LOG_2PI) + ls + math.log(0.5 * (high - low)) + e
    return per.sum(-1), err.sum(-1)


def _logn(u, m, ls):
    z = (u - m) * np.exp(-ls)
    return -0.5 * z * z - ls - 0.5 * LOG_2PI, z


class _Box:
    def __init__(self, low: float, high: float):
        self.low, self.high = low, high
        self.c = 0.5 * (high - low)
        self.mid = 0.5 * (high + low)
        self.log_c = math.log(self.c)

    @property
    def trivial(self) -> bool:
        return self.low == -1.0 and self.high == 1.0

    def describe(self) -> str:
        return "[-1, 1]" if self.trivial else f"[{self.low:g}, {self.high:g}]"


def _inverse(action, box: _Box):
    """(u*, log(1 - tanh^2 u*)) of actions strictly inside the box, from the differences to its bounds."""
    up = box.high - action
    dn = action - box.low
    u = 0.5 * (np.log(dn) - np.log(up))
    return u, np.log(up) + np.log(dn) - 2.0 * box.log_c


# -- drawing --------------------------------------------------------------------------------------------

def _case(seed, n, d, region, min_log_std, max_pre_tanh, state_dependent):
    rng = np.random.default_rng(seed)
    shape = (n, d) if state_dependent else (d,)
    ls = np.broadcast_to(_log_std_draw(rng, shape, min_log_std), (n, d)).copy()
    u = np.clip(rng.normal(0.0, 1.5, (n, d)), -MODERATE, MODERATE)
    mean = u - np.exp(ls) * np.where(rng.random((n, d)) < 0.7, rng.normal(0.0, 1.0, (n, d)),
                                     rng.choice([-1.0, 1.0], (n, d)) * rng.uniform(2.0, 5.0, (n, d)))
    if region == "saturated":
        lo = min(8.0, 0.5 * (MODERATE + max_pre_tanh))
        hit = rng.random((n, d)) < 0.4
        hit[int(rng.integers(n)), int(rng.integers(d))] = True
        mag = np.where(rng.random((n, d)) < 0.25, max_pre_tanh, rng.uniform(lo, max_pre_tanh, (n, d)))
        us = rng.choice([-1.0, 1.0], (n, d)) * mag
        u = np.where(hit, us, u)
        confident = rng.random((n, d)) < 0.7
        if state_dependent:  # a confident policy: mean near u; or a wide one that reaches u from near 0
            ls = np.where(hit & ~confident, rng.uniform(1.5, 2.5, (n, d)), ls)
        z = rng.normal(0.0, 1.0, (n, d))
        mean = np.where(hit, np.where(confident, u - np.exp(ls) * z, rng.normal(0.0, 1.0, (n, d))), mean)
    return {"mean": mean, "log_std": ls, "pre_tanh": u}


@functools.lru_cache(maxsize=None)
def _cases(jax, region, min_log_std, max_pre_tanh, state_dependent):
    sizes = st.just(JAX_SHAPE) if jax else st.tuples(st.integers(1, 4), st.integers(1, 3))
    return st.builds(lambda nd, seed: _case(seed, nd[0], nd[1], region, min_log_std, max_pre_tanh, state_dependent),
                     sizes, st.integers(0, 2**32 - 1))


def _actions(u, box: _Box, be, inside: bool) -> np.ndarray:
    """m + c tanh(u) rounded to the dtype; with `inside`, an action that rounds onto a bound moves to the
    nearest representable value inside."""
    dt = be.np_dtype
    a = np.asarray(box.mid + box.c * np.tanh(u), dtype=dt)
    if inside:
        hi, lo = np.asarray(box.high, dtype=dt), np.asarray(box.low, dtype=dt)
        a = np.where(a >= hi, np.nextafter(hi, lo), a)
        a = np.where(a <= lo, np.nextafter(lo, hi), a)
    return a.astype(np.float64)


def _shifted(a, k: int, box: _Box, dtype) -> np.ndarray:
    """`a` moved by k units in the last place of the normalised action t = (a - m)/c in `dtype` (the coordinate the
    squashing works in: an action near a bound of [0, 5] is known to the ulps of t, not to those of a value near
    0), in float64; a move that would leave the box leaves the entry where it is."""
    t = (np.asarray(a, dtype=np.float64) - box.mid) / box.c
    step = k * np.spacing(np.abs(t).astype(dtype)).astype(np.float64) * box.c
    x = np.asarray(a, dtype=np.float64) + step
    return np.where((x < box.high) & (x > box.low), x, a)


def _candidates(m, ls, u, a_box, box: _Box, expected, d, eps, be, given: bool):
    """(label, values) of the misreadings of a squashed log-density."""
    with np.errstate(all="ignore"):
        logn = _logn(u, m, ls)[0]
        t = (a_box - box.mid) / box.c
        jac = log_sech2(u)
        out = [
            ("the log-density of the Gaussian of u alone: the tanh correction -sum log(1 - tanh(u)^2) is missing",
             logn.sum(-1) - d * box.log_c),
            ("with the correction's sign flipped: log N(u) + sum log(1 - tanh(u)^2) (google-deepmind/rlax #11)",
             (logn + jac).sum(-1) - d * box.log_c),
            *((f"with the correction evaluated at tanh of the squashed action, log(1 - tanh(a)^2{r}): tanh applied "
               f"twice (google-deepmind/rlax #54, boyu-ai/Hands-on-RL #44, cpnota/autonomous-learning-library #154)",
               (logn - np.log(1.0 - np.tanh(t) ** 2 + e)).sum(-1) - d * box.log_c)
              for e, r in ((0.0, ""), (1e-6, " + 1e-6"), (1e-7, " + 1e-7"))),
            (f"the MEAN over the d = {d} dimensions, not the sum", expected / d),
            ("-log pi: the sign is flipped", -expected),
        ]
        if not box.trivial:
            out += [(f"missing the rescaling term -sum_i log c_i, c = (high - low)/2 = {box.c:g}: the log-density of "
                     f"tanh(u), not of the rescaled action (openai/spinningup #314)", expected + d * box.log_c),
                    ("with +sum_i log c_i: the rescaling term's sign is flipped", expected + 2 * d * box.log_c),
                    ("with -sum_i log(high - low): the rescaling term uses the width, not the half-width",
                     expected - d * math.log(2.0))]
        if given:
            out.append(("with the correction log(1 - a^2) computed from the rounded squashed action: near saturation "
                        "a = tanh(u) has lost the digits of 1 - a^2; compute it from the pre-tanh value, 2 (log 2 - u - "
                        "softplus(-2u)) (rail-berkeley/rlkit #37)",
                        (logn - np.log((1.0 - t) * (1.0 + t))).sum(-1) - d * box.log_c))
        if eps == 0.0:
            out.append(("the regularised form log N(u) - sum log(1 - tanh(u)^2 + 1e-6) (SB3, CleanRL): declare eps=1e-6 "
                        "if that is intended", (logn - np.log(np.exp(jac) + 1e-6)).sum(-1) - d * box.log_c))
        clamps = [(float(np.finfo(be.np_dtype).eps), "the dtype's machine epsilon (SB3's TanhBijector)"),
                  (10.0 ** -np.finfo(be.np_dtype).precision, "the dtype's resolution (TorchRL's safeatanh; 1e-6 in "
                                                             "float32 caps u near 7.25)")]
        if clamps[1][0] != 1e-6:
            clamps.append((1e-6, "RLlib's SMALL_NUMBER, which caps u near 7.25 (ray-project/ray PR #65036)"))
        for delta, why in clamps:
            uc = np.arctanh(np.clip(t, -1.0 + delta, 1.0 - delta))
            out.append((f"the log-density at the pre-tanh value re-inverted from the action, atanh(clamp(a, 1 - "
                        f"{delta:.3g})) with {why}{' instead of the given one (pytorch/rl PR #4080)' if given else ''}",
                        (_logn(uc, m, ls)[0] + (-log_sech2(uc))).sum(-1) - d * box.log_c))
    return out


# -- the check ------------------------------------------------------------------------------------------

@numerics_of_their_own
def check_squashed_log_prob(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                            max_examples: int = 100, seed: int = 0, pre_tanh: str = None, eps: float = None,
                            low: float = -1.0, high: float = 1.0, scale: str = None, state_dependent: bool = None,
                            entropy: bool = False, max_pre_tanh: float = 20.0, min_log_std: float = -12.0) -> Report:
    r"""Check a tanh-squashed Gaussian log-density against the stable exact form, near saturation too.

    .. math::
        \log\pi(a) = \sum_i \Big[\log N(u_i;\mu_i,\sigma_i) - 2\big(\log 2 - u_i - \mathrm{softplus}(-2u_i)\big)
        - \log\tfrac{high - low}{2}\Big], \qquad a = \tfrac{high + low}{2} + \tfrac{high - low}{2}\tanh u

    Parameters
    ----------
    fn : callable
        ``fn(mean, log_std, actions, pre_tanh) -> log_prob`` (n,) (``pre_tanh="given"``) or
        ``fn(mean, log_std, actions)`` (``"not_given"``), in the convention's names
        (`SQUASHED_CONVENTIONS`); with ``entropy=True`` it returns ``(log_prob, entropy)``.
    convention : {"refpg", "sb3", "cleanrl", "torchrl"}
        Defaults: refpg given, eps 0; sb3 and cleanrl given, eps 1e-6; torchrl not_given, eps 0,
        scale "std". The log-std is per state (SAC's actors) unless ``state_dependent=False``.
    backend, dtype, max_examples, seed
        As in `refpg.conformance.check_gae`.
    pre_tanh : {"given", "not_given"} or None
        Whether the function receives u; None takes the convention's.
    eps : float >= 0 or None
        The declared regulariser of :math:`\log(1 - \tanh^2 u + \epsilon)`: values between the exact
        log-density and :math:`\sum_i \log(1 + \epsilon/(\min(c_i, 1)\,\mathrm{sech}^2 u_i))` below it pass.
        0: the exact form is required. None (default): the convention's, 1e-6 for sb3 and cleanrl, 0
        for refpg and torchrl.
    low, high : float
        The action box; the function's own rescaling (bind it, e.g. TorchRL's ``low``/``high``).
    scale, state_dependent, min_log_std
        As in `refpg.conformance.gaussian.check_gaussian_log_prob` (state_dependent defaults to True here).
    entropy : bool
        The function also returns the entropy, compared with `squashed_gaussian_entropy` within
        :math:`tol\,(1 + |H|)` plus the quadrature's error bound.
    max_pre_tanh : float > 4.5
        The largest :math:`|u|` drawn (default 20). For a function with a documented clamp, to check it
        where the clamp never acts.

    Returns
    -------
    Report
        ``squashed_log_prob.value`` (:math:`|u| \le 4`), ``squashed_log_prob.saturation``,
        ``squashed_log_prob.gradient_mean``, ``squashed_log_prob.gradient_scale``,
        ``squashed_log_prob.entropy`` (entropy=True) and the generic ids.

    Notes
    -----
    A row passes when :math:`expected - B - A \le actual \le expected + A`, A = tol (1 + S) plus, with
    "not_given", the change 4 ulps of each normalised action entry make, B the declared regulariser's
    band (0 with eps = 0), S the sum of the magnitudes of the row's terms.

    References
    ----------
    docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    max_examples, seed = common_arguments(fn, convention, SQUASHED_CONVENTIONS, max_examples, seed)
    defaults = _DEFAULTS[convention]
    pre_tanh = defaults["pre_tanh"] if pre_tanh is None else check_choice(pre_tanh, "pre_tanh", PRE_TANH)
    eps = defaults["eps"] if eps is None else check_real(eps, "eps", low=0.0)
    low, high = check_real(low, "low"), check_real(high, "high")
    if not high > low:
        raise InvalidInputError(f"high should be > low, actual low={low!r}, high={high!r}")
    spec = Spec(convention, scale, True if state_dependent is None else state_dependent)
    if not isinstance(entropy, (bool, np.bool_)):
        raise InvalidInputError(f"entropy should be True or False, actual {entropy!r}")
    entropy = bool(entropy)
    max_pre_tanh = check_real(max_pre_tanh, "max_pre_tanh", low=MODERATE + 0.5, high=50.0)
    min_log_std = check_min_log_std(min_log_std)
    box = _Box(low, high)
    given = pre_tanh == "given"

    def names_of(c):
        mean, scales, act, pre = _NAMES[c]
        return (mean, scales[spec.scale], act) + ((pre,) if given else ())

    names = names_of(convention)
    warned = check_signature(fn, KIND, convention, {c: names_of(c) for c in _NAMES})
    opts = dict(pre_tanh=pre_tanh, eps=eps, low=low, high=high, **spec.options, entropy=entropy,
                max_pre_tanh=max_pre_tanh, min_log_std=min_log_std)

    def args_of(m, s, a, u):
        return list(zip(names, (m, s, a) + ((u,) if given else ())))

    def probe(be):
        sp, _ = spec.scale_arg(np.zeros((1, 2)), be)
        u = np.array([[0.5, -0.5]])
        s = Session(KIND, fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of(np.zeros((1, 2)), sp, _actions(u, box, be, True), u))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session(KIND, fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=warned + warn0)
    jax = be.name == "jax"
    ids = {k: f"{KIND}.{k}" for k in ("value", "saturation", "gradient_mean", "gradient_scale", "entropy")}
    p_mean, p_scale, p_act = names[:3]
    spacing_dtype = be.np_dtype
    worst_band = {"v": 0.0}

    def evaluate(case, region):
        m = be.round(case["mean"])
        s_arg, ls = spec.scale_arg(case["log_std"], be)
        n, d = m.shape
        extra = extra_m = extra_s = None
        if given:
            u = be.round(case["pre_tanh"])
            a = _actions(u, box, be, False)
            jac = log_sech2(u)
        else:
            a = _actions(case["pre_tanh"], box, be, True)
            u, jac = _inverse(a, box)
        logn, z = _logn(u, m, ls)
        per_dim = logn - jac - box.log_c
        expected = per_dim.sum(-1)
        row_scale = np.sum(0.5 * z * z + np.abs(ls) + 0.5 * LOG_2PI + np.abs(jac) + abs(box.log_c) + np.abs(u), -1)
        if not given:
            # Backward stability in the action: what moving each entry by ULPS units in the last place (staying
            # inside the box) changes, evaluated exactly (near a bound the change is logarithmic, not linear).
            shifts = [_shifted(a, k, box, spacing_dtype) for k in (-ULPS, ULPS)]
            moved = [(_logn(ui, m, ls), ji) for ui, ji in (_inverse(x, box) for x in shifts)]
            extra = np.max([np.abs((ln - ji) - (logn - jac)) for (ln, _), ji in moved], axis=0).sum(-1)
            extra_m = np.max([np.abs(zi - z) for (_, zi), _ in moved], axis=0) * np.exp(-ls)
            extra_s = np.max([np.abs(zi * zi - z * z) for (_, zi), _ in moved], axis=0)
        below = None
        if eps > 0.0:
            # The regularised form is computed from the action as passed: in "given" mode its rounding moves
            # 1 - tanh(u)^2 by up to 2 |tanh(u) - t| plus the rounding of t^2, which the band takes in too.
            slack = eps / min(box.c, 1.0)
            if given:
                t = (a - box.mid) / box.c
                slack = slack + 2.0 * np.abs(np.tanh(u) - t) + 2.0 * float(np.finfo(spacing_dtype).eps)
            band = np.log1p(slack / np.exp(jac))
            below = band.sum(-1)
            worst_band["v"] = max(worst_band["v"], float(np.max(band)))
        inputs = dict(zip(names, (m, s_arg, a) + ((u,) if given else ())))
        if not given:
            inputs["pre-tanh value of each action (exact, not passed)"] = u
        args = args_of(m, s_arg, a, u)
        call = session.call(args, grad_of=p_mean if be.name == "torch" else None)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return outcomes
        raw_lp, raw_h = call.output, None
        if entropy:
            raw_lp, raw_h, more = split_pair(session, call.output, ("log_prob", "entropy"), inputs)
            if more:
                return outcomes + more
        lp, more = session.output_array(raw_lp, "log_prob", (n,), inputs)
        outcomes += shape_outcome(session, more, raw_lp, "log-probability", n, d)
        for o in more:
            if o.check_id.endswith(".output_finite") and np.any(np.abs(u) > 9.0):
                o.message += (f"; the row holds |pre-tanh| up to {np.max(np.abs(u)):.3g}, where tanh(u) rounds to "
                              f"+-1 in float32 (|u| > 9.0) or float64 (|u| > 19.1): log(1 - tanh(u)^2) computed from "
                              f"the action is log(0) there; compute it from the pre-tanh value as 2 (log 2 - u - "
                              f"softplus(-2u)) (rail-berkeley/rlkit #37), or declare the regulariser eps")
        if lp is None:
            return outcomes
        cid = ids["value"] if region == "moderate" else ids["saturation"]
        o = compare_rows(session, cid, "log_prob", lp, expected, row_scale, inputs, below=below, extra=extra,
                         candidates=_candidates(m, ls, u, a, box, expected, d, eps, be, given),
                         why=(f"the log-density of the squashed action in {box.describe()}, summed over the d = {d} "
                              f"dimensions" + (f" (declared eps={eps:g}: values down to the regularised form pass)"
                                               if eps > 0.0 else "")))
        if o is not None:
            outcomes.append(o)
        if entropy:
            h, more = session.output_array(raw_h, "entropy", (n,), inputs)
            outcomes += shape_outcome(session, more, raw_h, "entropy", n, d)
            if h is not None:
                h_exp, h_err = squashed_gaussian_entropy(m, ls, low=low, high=high)
                gauss = (0.5 * (1.0 + LOG_2PI) + ls).sum(-1)
                o = compare_rows(session, ids["entropy"], "entropy", h, h_exp, np.abs(h_exp) + 1.0, inputs,
                                 extra=h_err, candidates=(
                                     ("the entropy of the Gaussian of u: E[log(1 - tanh(u)^2)] (and the rescaling) is "
                                      "missing; the squashed entropy has no closed form", gauss),
                                     (f"the MEAN over the d = {d} dimensions", h_exp / d)),
                                 why="the squashed Gaussian's entropy by quadrature (squashed_gaussian_entropy)")
                if o is not None:
                    outcomes.append(o)
        w = weights(n)
        want_m = w[:, None] * z * np.exp(-ls)
        want_s = spec.reduce(spec.scale_derivative(w[:, None] * (z * z - 1.0), ls))
        sc_m = w[:, None] * (np.abs(z) + 1.0) * np.exp(-ls)
        sc_s = spec.reduce(np.abs(spec.scale_derivative(w[:, None] * (z * z + 1.0), ls)))
        if extra_m is not None:  # the derivatives move with u* as the value does (tolerance = scale x tol)
            sc_m = sc_m + w[:, None] * extra_m / be.tol
            sc_s = sc_s + spec.reduce(np.abs(spec.scale_derivative(w[:, None] * extra_s, ls))) / be.tol
        pick = weighted_sum(tuple(w), 0 if entropy else None)
        detach = f"{p_scale} does not reach the output through autograd (detached, or outside the graph)"
        if be.differentiable:
            grads = autograd(session, args, call, (p_mean, p_scale), pick)
            for gid, name, want, sc in ((ids["gradient_mean"], p_mean, want_m, sc_m),
                                        (ids["gradient_scale"], p_scale, want_s, sc_s)):
                g, problem = grads[name]
                o = gradient_outcome(session, gid, f"d(sum_n w_n log_prob_n)/d{name}", g, problem, want, sc, inputs,
                                     zero_means=detach if name == p_scale else f"{name} does not reach the output")
                if o is not None:
                    outcomes.append(o)
        elif region == "moderate":
            nat_m, nat_s = natural_steps(spec, z, ls)
            outcomes += numeric_gradients(session, args, ((ids["gradient_mean"], 0, want_m, sc_m, nat_m),
                                                          (ids["gradient_scale"], 1, want_s, sc_s, nat_s)), pick)
        return outcomes

    session.declare(*session.generic_ids())
    session.declare(ids["value"], ids["saturation"], ids["gradient_mean"], ids["gradient_scale"], tracked=True)
    if entropy:
        session.declare(ids["entropy"], tracked=True)
    if not be.differentiable:
        session.warn("backend='numpy': the derivatives in the mean and the scale are numerical (five-point central "
                     "differences of the function's values), which cannot see a detach")
    keys = ("mean", "log_std", "pre_tanh")
    shared = not spec.state_dependent
    half = max(1, max_examples // 2)
    for region, cid in (("moderate", ids["value"]), ("saturated", ids["saturation"])):
        session.run_scenario(_cases(jax, region, min_log_std, max_pre_tanh, spec.state_dependent),
                             functools.partial(evaluate, region=region), (cid,),
                             moves=functools.partial(_moves, keys=keys, jax=jax, shared=shared, region=region,
                                                     max_pre_tanh=max_pre_tanh), max_examples=half)
    if eps > 0.0 and worst_band["v"] > 1.0:
        session.warn(f"eps={eps:g} declared: the regularised form may lie up to {worst_band['v']:.3g} nats per "
                     f"dimension below the exact log-density in the drawn cases (near saturation); the check accepts "
                     f"that band by declaration")
    return session.report()


def _moves(case, keys, jax, shared, region, max_pre_tanh):
    """`_gaussian_moves`, keeping the saturated region's defining entry (the largest |u|)."""
    out = []
    for c in _gaussian_moves(case, keys, jax, shared):
        if region == "saturated" and np.max(np.abs(c["pre_tanh"]), initial=0.0) < min(8.0, 0.5 * (MODERATE + max_pre_tanh)):
            continue
        if region == "moderate" and np.max(np.abs(c["pre_tanh"]), initial=0.0) > MODERATE:
            continue
        out.append(c)
    return out

r"""`check_gaussian_log_prob` and `check_gaussian_kl`: the diagonal Gaussian of continuous-action policies.

A diagonal-Gaussian policy has mean :math:`\mu \in R^d` and standard deviations
:math:`\sigma_i = e^{s_i}` (``log_std`` :math:`s`) per state. Its log-density, entropy and KL
are **sums** over the d action dimensions (docs/conventions.md, "Linear-quadratic-Gaussian"):

.. math::

    \log\pi(a) = \sum_{i=1}^d \Big[-\tfrac12 z_i^2 - s_i - \tfrac12\log 2\pi\Big],\quad
    z_i = \frac{a_i - \mu_i}{\sigma_i}, \qquad
    H = \sum_i \Big[\tfrac12(1 + \log 2\pi) + s_i\Big],

.. math::

    KL(N_p \,\|\, N_q) = \sum_i \Big[s_{q,i} - s_{p,i}
        + \frac{\sigma_{p,i}^2 + (\mu_{p,i} - \mu_{q,i})^2}{2\sigma_{q,i}^2} - \tfrac12\Big].

The references are computed in float64 from the arrays exactly as the function received them
(rounded to its dtype), with the KL's :math:`\sigma_p^2/\sigma_q^2 - 1 - 2\log(\sigma_p/\sigma_q)`
through ``expm1`` so that nearly equal distributions keep their digits.

**Values.** Every case holds, by construction, an action outside [-1, 1] (a Box's usual bounds:
a function that scores the action clipped to the action space, as RLlib did when it stored the
clipped action, ray #8889, and tianshou #312, fails there), actions at the mean, actions 3 to 9
standard deviations away, and standard deviations from :math:`e^{-12}` (a collapsed policy;
``min_log_std`` sets the floor) to :math:`e^{2.5}`. A row passes when
:math:`|actual - expected| \le tol\,(1 + S)`, S the sum of the magnitudes of the row's terms
(:math:`\sum_i \tfrac12 z_i^2 + |s_i| + 0.92`), tol 1e-9 in float64, 1e-4 in float32. A failure
names the misreading its values match: the mean over dimensions instead of the sum (tianshou #40,
ElegantRL PR #273, jumanji #141), ``log_std`` read as a log-variance (hill-a/stable-baselines
#1058), the std read as a log-std or the reverse, a missing :math:`-\tfrac12\log 2\pi` or
:math:`-s_i` per dimension, actions clipped to [-1, 1], a flipped sign; and for the KL the reversed
direction (openai/spinningup #264), "-1" for "-d", a misplaced bracket, a missing factor 1/2.

**Gradients.** As a loss :math:`\sum_n w_n \log\pi_n` (fixed weights :math:`w_n` that differ by
row), the derivatives in the mean and in the scale argument are checked against the closed forms

.. math::

    \frac{\partial\log\pi}{\partial\mu_i} = \frac{z_i}{\sigma_i},\qquad
    \frac{\partial\log\pi}{\partial s_i} = z_i^2 - 1 \quad
    \Big(\frac{\partial\log\pi}{\partial\sigma_i} = \frac{z_i^2 - 1}{\sigma_i}\Big),

summed over the rows for a state-independent ``log_std`` (one vector shared by every row, as SB3's
``DiagGaussianDistribution`` and CleanRL's ``actor_logstd`` hold it). torch and JAX: the function's
own autograd (``torch.autograd.grad``, ``jax.grad``); a ``log_std`` cut from the graph gives
exactly 0 and is named (openai/baselines #262: TRPO's ``logstd`` was left out of the trained
variables, and TRPO failed on Ant). NumPy: five-point central differences of the function's values
along one random direction per argument, tolerance 1e-6 (float64) or 3e-3 (float32) relative, which
the report states (a numerical derivative cannot see a detach).

Conventions (`GAUSSIAN_LOG_PROB_CONVENTIONS`, `GAUSSIAN_KL_CONVENTIONS`) differ in names, in what
the scale argument is (``scale``: ``"log_std"`` or ``"std"``) and in its shape
(``state_dependent``): refpg, SB3 and CleanRL pass a state-independent log-std ((d,), CleanRL's
(1, d) parameter), TorchRL the per-row std that ``NormalParamExtractor`` gives. Arguments are
passed by position; a function whose parameter names are clearly another convention's is refused
before any call.

References
----------
[Schulman2015] (the KL of TRPO's constraint, old policy first); docs/conventions.md,
"Linear-quadratic-Gaussian".
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance._harness import (Outcome, Session, _is_torch_tensor, _shape_of, check_callable,
                                        check_signature, numerics_of_their_own, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_gaussian_log_prob", "check_gaussian_kl", "GAUSSIAN_LOG_PROB_CONVENTIONS",
           "GAUSSIAN_KL_CONVENTIONS", "CONVENTION_DEFAULTS", "SCALES", "KL_DIRECTIONS"]

KIND_LOG_PROB = "gaussian_log_prob"
KIND_KL = "gaussian_kl"
LOG_2PI = math.log(2.0 * math.pi)
#: What the scale argument holds: the log standard deviation or the standard deviation itself.
SCALES = ("log_std", "std")
#: "forward": the function computes KL(N_1 || N_2), N_1 given by its first two arguments (TRPO's
#: KL(old || new) with the old policy first); "reverse": KL(N_2 || N_1).
KL_DIRECTIONS = ("forward", "reverse")
#: The defaults each convention sets: what its scale argument holds, and whether it has one row per
#: state (True) or one vector shared by every row (False).
CONVENTION_DEFAULTS = {
    "refpg": dict(scale="log_std", state_dependent=False),
    "sb3": dict(scale="log_std", state_dependent=False),
    "cleanrl": dict(scale="log_std", state_dependent=False),
    "torchrl": dict(scale="std", state_dependent=True),
}

# Parameter names per convention, with the scale argument's name for each `scale`.
_LOG_PROB_NAMES = {
    "refpg": ("mean", {"log_std": "log_std", "std": "std"}, "actions"),
    "sb3": ("mean_actions", {"log_std": "log_std", "std": "std"}, "actions"),
    "cleanrl": ("action_mean", {"log_std": "action_logstd", "std": "action_std"}, "action"),
    "torchrl": ("loc", {"log_std": "log_scale", "std": "scale"}, "action"),
}
_KL_NAMES = {
    "refpg": (("mean_p", "mean_q"), {"log_std": ("log_std_p", "log_std_q"), "std": ("std_p", "std_q")}),
    "sb3": (("mean_true", "mean_pred"), {"log_std": ("log_std_true", "log_std_pred"),
                                         "std": ("std_true", "std_pred")}),
    "cleanrl": (("action_mean_p", "action_mean_q"), {"log_std": ("action_logstd_p", "action_logstd_q"),
                                                     "std": ("action_std_p", "action_std_q")}),
    "torchrl": (("loc_p", "loc_q"), {"log_std": ("log_scale_p", "log_scale_q"), "std": ("scale_p", "scale_q")}),
}

#: Convention -> signature of the log-prob function (scale as the convention sets it by default).
GAUSSIAN_LOG_PROB_CONVENTIONS = {
    "refpg": "fn(mean, log_std, actions) -> log_prob (n,): mean and actions (n, d), log_std (d,) shared by the "
             "rows (or (n, d) with state_dependent=True); with entropy=True, (log_prob, entropy)",
    "sb3": "fn(mean_actions, log_std, actions) -> log_prob (n,), as SB3's DiagGaussianDistribution()"
           ".proba_distribution(mean_actions, log_std).log_prob(actions) (and .entropy() with entropy=True)",
    "cleanrl": "fn(action_mean, action_logstd, action) -> logprob (n,), as CleanRL's ppo_continuous_action: "
               "Normal(action_mean, exp(action_logstd)).log_prob(action).sum(1), action_logstd (1, d)",
    "torchrl": "fn(loc, scale, action) -> log_prob (n,), scale the std per row as NormalParamExtractor gives it "
               "(IndependentNormal(loc, scale).log_prob(action))",
}
#: Convention -> signature of the KL function.
GAUSSIAN_KL_CONVENTIONS = {
    "refpg": "fn(mean_p, log_std_p, mean_q, log_std_q) -> kl (n,), KL(N_p || N_q) summed over the d dimensions",
    "sb3": "fn(mean_true, log_std_true, mean_pred, log_std_pred) -> kl (n,), SB3's names: kl_divergence(dist_true, "
           "dist_pred) of two DiagGaussianDistribution summed over dim 1 (SB3 2.9.2's own returns (n, d), unsummed)",
    "cleanrl": "fn(action_mean_p, action_logstd_p, action_mean_q, action_logstd_q) -> kl (n,), "
               "kl_divergence(Normal(...), Normal(...)).sum(1) in CleanRL's style, action_logstd (1, d)",
    "torchrl": "fn(loc_p, scale_p, loc_q, scale_q) -> kl (n,), kl_divergence of two IndependentNormal, as "
               "KLPENPPOLoss computes KL(previous || current)",
}

#: Row weights of the gradient checks' loss sum_n w_n f_n: unequal, so that a row mix-up shows.
_WEIGHTS = np.array([1.0, 0.5, 1.5, 0.75, 1.25, 2.0, 0.25, 1.75, 0.625, 1.125, 0.875, 1.375])
#: Shapes (n, d) drawn for backend="jax" (a jitted function compiles once per input shape).
JAX_SHAPE = (3, 2)
#: Numerical-derivative tolerances (NumPy backend), relative to the closed form's scale.
_NUMERIC_RTOL = {"float64": 1e-6, "float32": 3e-3}
_NUMERIC_STEP = {"float64": 2.0 ** -10, "float32": 2.0 ** -6}
#: Five-point central-difference weights at steps -2, -1, 1, 2 (divided by 12 h).
_FIVE = ((-2, 1.0), (-1, -8.0), (1, 8.0), (2, -1.0))


# -- declarations -----------------------------------------------------------------------------------------

class Spec:
    """What is declared for the Gaussian kinds: the convention, what the scale argument holds, and its shape."""

    def __init__(self, convention: str, scale, state_dependent):
        defaults = CONVENTION_DEFAULTS[convention]
        self.convention = convention
        self.scale = defaults["scale"] if scale is None else check_choice(scale, "scale", SCALES)
        if state_dependent is None:
            state_dependent = defaults["state_dependent"]
        elif not isinstance(state_dependent, (bool, np.bool_)):
            raise InvalidInputError(f"state_dependent should be True or False, actual {state_dependent!r}")
        self.state_dependent = bool(state_dependent)

    @property
    def options(self) -> dict:
        return dict(scale=self.scale, state_dependent=self.state_dependent)

    def scale_shape(self, n: int, d: int) -> tuple:
        if self.state_dependent:
            return (n, d)
        return (1, d) if self.convention == "cleanrl" else (d,)

    def scale_arg(self, log_std: np.ndarray, be) -> tuple:
        """(the scale argument as passed, in the backend's dtype as float64; the (n, d) log-std it means).

        `log_std` is the case's (n, d) log-std (rows equal when the scale is state-independent). With
        scale="std" the reference's log-std is the log of the std as rounded for the function."""
        n, d = log_std.shape
        rows = log_std if self.state_dependent else log_std[:1]
        if self.scale == "std":
            arg = be.round(np.exp(rows))
            ls = np.log(arg)
        else:
            arg = be.round(rows)
            ls = arg
        ls_full = np.broadcast_to(ls, (n, d)).copy()
        return arg.reshape(self.scale_shape(n, d)), ls_full

    def reduce(self, per_entry: np.ndarray) -> np.ndarray:
        """A per-(row, dimension) derivative in log_std as the scale argument's shape holds it: summed over the
        rows of a shared vector."""
        if self.state_dependent:
            return per_entry
        n, d = per_entry.shape
        return per_entry.sum(axis=0).reshape(self.scale_shape(n, d))

    def scale_derivative(self, d_log_std: np.ndarray, log_std: np.ndarray) -> np.ndarray:
        """d/d(scale argument) from d/d(log_std), per (row, dimension): the std's is d/dlog_std / std."""
        return d_log_std if self.scale == "log_std" else d_log_std * np.exp(-log_std)

    @property
    def scale_word(self) -> str:
        return "log_std" if self.scale == "log_std" else "std"


def log_prob_names(convention: str, scale: str) -> tuple:
    mean, scales, actions = _LOG_PROB_NAMES[convention]
    return mean, scales[scale], actions


def kl_names(convention: str, scale: str) -> tuple:
    means, scales = _KL_NAMES[convention]
    sp, sq = scales[scale]
    return means[0], sp, means[1], sq


def common_arguments(fn, convention, conventions, max_examples, seed):
    """Validate fn, convention, max_examples, seed (the same for every Gaussian kind)."""
    check_callable(fn)
    check_choice(convention, "convention", tuple(conventions))
    return check_positive_int(max_examples, "max_examples"), check_positive_int(seed, "seed", minimum=0)


def check_min_log_std(min_log_std) -> float:
    return check_real(min_log_std, "min_log_std", low=-30.0, high=0.0, high_open=True)


# -- references -----------------------------------------------------------------------------------------

def log_prob_terms(mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray) -> tuple:
    """(per-dimension log-density, z, per-row scale S) of N(mean, exp(log_std)^2) at actions, float64."""
    z = (actions - mean) * np.exp(-log_std)
    per_dim = -0.5 * z * z - log_std - 0.5 * LOG_2PI
    scale = np.sum(0.5 * z * z + np.abs(log_std) + 0.5 * LOG_2PI, axis=-1)
    return per_dim, z, scale


def entropy_terms(log_std: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + LOG_2PI) + log_std


def kl_terms(mp, lp, mq, lq) -> tuple:
    """(per-dimension KL(N_p || N_q), per-row scale), computed through expm1 for nearly equal pairs."""
    delta = lp - lq
    q = (mp - mq) * np.exp(-lq)
    per_dim = 0.5 * (np.expm1(2.0 * delta) - 2.0 * delta) + 0.5 * q * q
    scale = np.sum(0.5 * np.exp(2.0 * delta) + np.abs(delta) + 0.5 + 0.5 * q * q, axis=-1)
    return per_dim, scale


def kl_gradients(mp, lp, mq, lq) -> dict:
    """d KL(N_p || N_q) / d (mean_p, log_std_p, mean_q, log_std_q), per entry."""
    r2 = np.exp(2.0 * (lp - lq))
    dm = (mp - mq) * np.exp(-2.0 * lq)
    q2 = (mp - mq) ** 2 * np.exp(-2.0 * lq)
    return {"mean_p": dm, "log_std_p": np.expm1(2.0 * (lp - lq)), "mean_q": -dm, "log_std_q": 1.0 - r2 - q2}


def kl_gradient_scales(mp, lp, mq, lq) -> dict:
    """The size of the terms each derivative of KL(N_p || N_q) is a sum of, per entry: what its rounding
    error is relative to. Directional: sigma_p^2 / sigma_q^2 enters, never its inverse, so a large
    ratio the other way widens no bound (a wrong derivative hides in a bound that grows both ways)."""
    r2 = np.exp(2.0 * (lp - lq))
    q2 = (mp - mq) ** 2 * np.exp(-2.0 * lq)
    g = kl_gradients(mp, lp, mq, lq)
    mean = (np.abs(g["mean_p"]) + (1.0 + np.abs(mp - mq) * np.exp(-lq))) * np.exp(-lq)
    return {"mean_p": mean, "log_std_p": np.abs(g["log_std_p"]) + 1.0 + r2, "mean_q": mean,
            "log_std_q": np.abs(g["log_std_q"]) + 1.0 + r2 + q2}


# -- drawing cases -----------------------------------------------------------------------------------------

def _log_std_draw(rng, shape, min_log_std: float) -> np.ndarray:
    """Log-stds: most moderate, some small (a collapsed policy, down to `min_log_std`), some large."""
    u = rng.random(shape)
    small_top = max(min_log_std + 0.5, -3.0)
    out = np.where(u < 0.6, rng.uniform(-1.5, 1.0, shape),
                   np.where(u < 0.8, rng.uniform(min_log_std, small_top, shape), rng.uniform(1.0, 2.5, shape)))
    return np.maximum(out, min_log_std)


def gaussian_case(seed: int, n: int, d: int, state_dependent: bool, min_log_std: float) -> dict:
    """Mean, (n, d) log-std (rows equal if state-independent) and actions; one action entry lies outside
    [-1, 1] with a moderate standard score, whatever its standard deviation."""
    rng = np.random.default_rng(seed)
    if state_dependent:
        log_std = _log_std_draw(rng, (n, d), min_log_std)
    else:
        log_std = np.broadcast_to(_log_std_draw(rng, (d,), min_log_std), (n, d)).copy()
    mean = rng.normal(0.0, 1.0, (n, d))
    far = rng.random((n, d)) < 0.2
    mean = np.where(far, rng.choice([-1.0, 1.0], (n, d)) * rng.uniform(2.0, 5.0, (n, d)), mean)
    kind = rng.random((n, d))
    z = np.where(kind < 0.6, rng.normal(0.0, 1.0, (n, d)),
                 np.where(kind < 0.85, rng.choice([-1.0, 1.0], (n, d)) * rng.uniform(3.0, 9.0, (n, d)), 0.0))
    actions = mean + np.exp(log_std) * z
    i, j = int(rng.integers(n)), int(rng.integers(d))
    side = 1.0 if rng.random() < 0.5 else -1.0
    actions[i, j] = side * rng.uniform(1.25, 3.0)
    mean[i, j] = actions[i, j] - np.exp(log_std[i, j]) * rng.uniform(-2.0, 2.0)
    return {"mean": mean, "log_std": log_std, "actions": actions}


@functools.lru_cache(maxsize=None)
def gaussian_cases(jax: bool, state_dependent: bool, min_log_std: float):
    sizes = st.just(JAX_SHAPE) if jax else st.tuples(st.integers(1, 4), st.integers(1, 4))
    return st.builds(lambda nd, seed: gaussian_case(seed, nd[0], nd[1], state_dependent, min_log_std),
                     sizes, st.integers(0, 2**32 - 1))


def row_moves(case: dict, keys, jax: bool) -> list:
    """Fewer rows, fewer dimensions (not for JAX, whose shapes stay fixed), then rounder numbers."""
    arrays = {k: case[k] for k in keys}
    n, d = next(iter(arrays.values())).shape
    out = []
    if not jax:
        if n > 1:
            out += [{**case, **{k: np.delete(v, i, 0) for k, v in arrays.items()}} for i in range(n)]
        if d > 1:
            out += [{**case, **{k: np.delete(v, j, 1) for k, v in arrays.items()}} for j in range(d)]
    for k, v in arrays.items():
        for digits in (0, 1):
            r = np.round(v, digits)
            if not np.array_equal(r, v):
                out.append({**case, k: r})
    return out


# -- comparing --------------------------------------------------------------------------------------------

def compare_rows(session: Session, check_id: str, what: str, actual, expected, scale, inputs: dict, *,
                 why: str = "", candidates=(), below: np.ndarray | None = None,
                 extra: np.ndarray | None = None) -> Outcome | None:
    """An outcome if any entry misses: ``expected - below - allowed <= actual <= expected + allowed`` with
    ``allowed = tol (1 + max(scale, |expected|)) + extra`` per entry.

    `below` is a declared one-sided slack (a regulariser's); `candidates` are (label, values) of the
    misreadings the message names when `actual` matches one of them everywhere."""
    session.ran(check_id)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    allowed = session.backend.tol * (1.0 + np.maximum(np.asarray(scale, dtype=np.float64), np.abs(expected)))
    if extra is not None:
        allowed = allowed + extra
    err = actual - expected
    low = allowed if below is None else allowed + below
    bad = (err > allowed) | (-err > low)
    if not np.any(bad):
        return None
    excess = np.where(bad, np.abs(err) / np.where(err > 0, allowed, low), 0.0)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape)) if excess.ndim else ()
    label = f"{what}[{', '.join(map(str, idx))}]" if idx else what
    tol_shown = (allowed if err[idx] > 0 else low)[idx] if np.ndim(allowed) else allowed
    msg = (f"{label} should be {expected[idx] + 0.0:.10g}, actual {actual[idx] + 0.0:.10g} "
           f"(error {abs(err[idx]):.3g} > tolerance {float(tol_shown):.3g})")
    if below is not None and np.any(below > 0):
        msg += (f" (the declared regulariser allows values down to {expected[idx] - below[idx]:.10g})"
                if np.ndim(below) else "")
    best = None  # of the misreadings the values match, the closest one
    for label_c, values in candidates:
        with np.errstate(all="ignore"):
            values = np.asarray(values, dtype=np.float64)
            if values.shape == actual.shape and np.all(np.abs(actual - values) <= allowed) \
                    and np.any(np.abs(values - expected) > allowed):
                gap = float(np.max(np.abs(actual - values) / allowed))
                if best is None or gap < best[0]:
                    best = (gap, label_c)
    if best is not None:
        msg += f"; the values are {best[1]}"
    if why:
        msg += f"; {why}"
    return Outcome(check_id, msg, inputs, expected=expected, actual=actual, where=idx or None)


def weights(n: int) -> np.ndarray:
    reps = -(-n // _WEIGHTS.size)
    return np.tile(_WEIGHTS, reps)[:n]


@functools.lru_cache(maxsize=64)
def weighted_sum(w: tuple, item: int | None = None):
    """``pick(output) = sum_n w_n output_n`` in the output's own framework (cached, so that JAX reuses its
    jitted gradient from case to case)."""
    w_np = np.array(w)

    def pick(out):
        if item is not None:
            out = out[item]
        if _is_torch_tensor(out):
            import torch
            return (out * torch.as_tensor(w_np, dtype=out.dtype, device=out.device)).sum()
        if type(out).__module__.startswith(("jax", "jaxlib")):
            import jax.numpy as jnp
            return jnp.sum(out * jnp.asarray(w_np, dtype=out.dtype))
        return np.sum(np.asarray(out) * w_np)
    return pick


def autograd(session: Session, args: list, first_call, names: tuple, pick) -> dict:
    """name -> (gradient of pick(output) with respect to that argument, or None; problem or None).

    torch: one call per name (each with that argument requiring grad; `first_call` was made with the first
    name's); JAX: jax.grad of the first call's arguments."""
    out = {}
    for k, name in enumerate(names):
        call = first_call
        if session.backend.name == "torch" and k > 0:
            call = session.call(args, grad_of=name)
        if call.error is not None:
            out[name] = (None, f"the function raised when called with {name} requiring grad: {call.error_summary}")
            continue
        if session.backend.name == "torch":
            picked = _picked(call.output, pick)
            if _is_torch_tensor(picked) and picked.grad_fn is None:
                # A tensor output that autograd cannot trace back to the argument: its derivative is 0 for the
                # training code too (a detach, or a value computed outside the graph).
                out[name] = (np.zeros(tuple(call.user_args[call.names.index(name)].shape)), None)
                continue
        out[name] = session.input_gradient(call, name, pick)
    return out


def _picked(output, pick):
    try:
        return pick(output)
    except Exception:  # a malformed output: input_gradient reports it
        return None


def numeric_directional(session: Session, args: list, index: int, v: np.ndarray, pick, step: float | None = None):
    """(five-point central difference of F(t) = pick(fn(..., x + t v, ...)), the displacement sum_k c_k dx_k / (12 h)
    it is the derivative along), x the argument at `index`, nodes rounded to the dtype (so the displacement is
    what the function received); (None, None) if a call failed or returned something unusable."""
    be = session.backend
    name, x = args[index]
    h = _NUMERIC_STEP[be.dtype] if step is None else step
    total, mag, disp = 0.0, 0.0, np.zeros_like(x)
    for c, wgt in _FIVE:
        xc = be.round(x + c * h * v)
        a = list(args)
        a[index] = (name, xc)
        call = session.call(a)
        if call.error is not None:
            return None, None
        try:
            fc = float(pick(call.output))
        except Exception:  # a malformed output: the value check reports it
            return None, None
        total += wgt * fc
        mag += abs(wgt * fc)
        disp += wgt * (xc - x)
    # The rounding of the function's values enters the difference quotient as eps |F| / h.
    noise = 8.0 * float(np.finfo(be.np_dtype).eps) * mag / (12.0 * h)
    return (total / (12.0 * h), noise), disp / (12.0 * h)


def numeric_gradients(session: Session, args: list, items, pick, *, step: float | None = None) -> list:
    """Outcomes of numerical derivative checks (NumPy backend): `items` lists (check id, argument index, closed-form
    gradient, its scale, natural step size per entry); the direction is random, scaled entrywise by the natural
    step so that no entry's move changes the function by more than about one unit per unit of t."""
    out = []
    for cid, k, want, sc, natural in items:
        name, x = args[k]
        rng = np.random.default_rng(31 * x.size + x.ndim)
        v = rng.choice([-1.0, 1.0], x.shape) * rng.uniform(0.5, 1.0, x.shape) * np.broadcast_to(natural, x.shape)
        got, disp = numeric_directional(session, args, k, v, pick, step)
        if got is None:
            continue
        (got, noise) = got
        o = gradient_outcome(session, cid, f"d(output)/d{name}", None, None, want, sc, {name: x},
                             directional=(got, float(np.sum(want * disp)), float(np.sum(np.abs(sc * disp))), noise))
        if o is not None:
            out.append(o)
    return out


def natural_steps(spec: "Spec", z: np.ndarray, log_std: np.ndarray) -> tuple:
    """Entrywise step scales for the mean and the scale argument: a move of one unit changes each log-density term
    by about one (z / sigma and z^2 - 1 set the sensitivities)."""
    d = z.shape[-1]
    nat_m = np.exp(log_std) / (1.0 + np.abs(z)) / d
    nat_s = 1.0 / (1.0 + z * z) / d
    if spec.scale == "std":
        nat_s = nat_s * np.exp(log_std)
    if not spec.state_dependent:
        nat_s = nat_s.min(axis=0).reshape(spec.scale_shape(*z.shape)) / z.shape[0]
    return nat_m, nat_s


def gradient_outcome(session, check_id, what, grad, problem, expected, scale, inputs, *, zero_means="",
                     numeric=False, directional=None):
    """The outcome of one gradient comparison (autograd or, with `directional`, a numerical derivative)."""
    be = session.backend
    session.ran(check_id)
    if problem is not None:
        return Outcome(check_id, f"{what}: {problem}", inputs)
    if directional is not None:
        got, want, sc, noise = directional
        allowed = _NUMERIC_RTOL[be.dtype] * (1.0 + sc) + noise
        if abs(got - want) <= allowed:
            return None
        return Outcome(check_id, f"{what} along a random direction should be {want:.10g}, actual {got:.10g} "
                                 f"(error {abs(got - want):.3g} > tolerance {allowed:.3g}; the derivative is "
                                 f"numerical: five-point central differences of the function's values, "
                                 f"backend='numpy')", inputs, expected=want, actual=got)
    grad = np.asarray(grad, dtype=np.float64)
    if grad.shape != expected.shape:
        return Outcome(check_id, f"{what} should have shape {expected.shape}, actual {grad.shape}", inputs)
    o = compare_rows(session, check_id, what, grad, expected, scale, inputs, candidates=(
        ("-expected: the sign is flipped", -expected),))
    if o is None:
        return None
    if np.all(grad == 0.0) and np.any(expected != 0.0):
        o.message += f"; it is exactly 0 everywhere: {zero_means}"
    return o


_SB3_KL_NOTE = ("; SB3 2.9.2's kl_divergence of two DiagGaussianDistribution does not sum: apply "
                "sum_independent_dims to it")


def shape_outcome(session, outcomes: list, raw, what: str, n: int, d: int):
    """Add to an output-shape failure what an (n, d) output means: per-dimension values, not summed."""
    shape = _shape_of(raw)
    for o in outcomes:
        if o.check_id.endswith(".output_shape") and shape == (n, d):
            o.message += (f"; one {what} per action dimension{' (or a trailing axis kept, keepdim=True)' if d == 1 else ''}"
                          f": the {what} of a diagonal Gaussian is the SUM over the d = {d} dimension"
                          f"{'s' if d > 1 else ''}, one value per row (SB3's sum_independent_dims, CleanRL's .sum(1); "
                          f"tianshou #40 and ElegantRL PR #273 lost that sum"
                          f"{_SB3_KL_NOTE if what == 'KL' else ''})")
    return outcomes


def split_pair(session, raw, names: tuple, inputs: dict):
    """(first, second, outcomes) of a function that should return a pair, e.g. (log_prob, entropy)."""
    if isinstance(raw, dict) and all(k in raw for k in names):
        return raw[names[0]], raw[names[1]], []
    if isinstance(raw, (tuple, list)) and len(raw) == 2:
        return raw[0], raw[1], []
    session.ran(f"{session.kind}.output_shape")
    kind = f"a {type(raw).__name__} of {len(raw)} items" if isinstance(raw, (tuple, list)) else type(raw).__name__
    return None, None, [Outcome(f"{session.kind}.output_shape",
                                f"the function should return ({names[0]}, {names[1]}) (declared entropy=True), "
                                f"actual {kind}", inputs)]


# -- check_gaussian_log_prob --------------------------------------------------------------------------------

def _log_prob_candidates(m, ls, a, spec: Spec, expected, d):
    """(label, values) of the misreadings of a diagonal-Gaussian log-density."""
    with np.errstate(all="ignore"):
        def lp(mean, log_std, act):
            return log_prob_terms(mean, log_std, act)[0].sum(-1)
        out = [
            (f"the MEAN over the d = {d} action dimensions, not the sum (actual = expected / d; tianshou #40, "
             f"ElegantRL PR #273, jumanji #141)", expected / d),
            ("-log pi: the sign is flipped (a negative log-likelihood)", -expected),
            ("the log-density with log_std read as a log-VARIANCE, sigma = exp(log_std / 2) (hill-a/stable-baselines "
             "#1058, #1059: the std used as a variance)", lp(m, ls / 2.0, a)),
            ("the log-density of the actions CLIPPED to [-1, 1]: score the action as sampled and stored, clip only "
             "what the environment receives (ray #8889, tianshou #312)", lp(m, ls, np.clip(a, -1.0, 1.0))),
            (f"missing the constant -log(2 pi)/2 per dimension (actual = expected + {d} x 0.9189)",
             expected + 0.5 * d * LOG_2PI),
            ("missing the normaliser -sum_i log sigma_i", expected + ls.sum(-1)),
        ]
        if spec.scale == "std":
            out.append(("the log-density with the std read as a log-std, sigma = exp(std): declare scale='log_std' if "
                        "the function takes the log-std", lp(m, np.exp(ls), a)))
        else:
            out.append(("the log-density with log_std read as the std itself, sigma = log_std: declare scale='std' "
                        "if the function takes the std", lp(m, np.log(ls), a)))
    return out


def _entropy_candidates(ls, expected, d):
    return [
        (f"the MEAN over the d = {d} dimensions, not the sum", expected / d),
        ("missing the constant log(2 pi)/2 per dimension", expected - 0.5 * d * LOG_2PI),
        ("the entropy with log_std read as a log-variance (sum of (1 + log 2 pi + log_std) / 2)",
         (0.5 * (1.0 + LOG_2PI) + ls / 2.0).sum(-1)),
        ("-H: the sign is flipped", -expected),
    ]


@numerics_of_their_own
def check_gaussian_log_prob(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                            max_examples: int = 100, seed: int = 0, scale: str = None,
                            state_dependent: bool = None, entropy: bool = False,
                            min_log_std: float = -12.0) -> Report:
    r"""Check a diagonal-Gaussian log-density (and entropy) exactly, with its gradient in the mean and the scale.

    .. math::
        \log\pi(a) = \sum_{i=1}^d \Big[-\tfrac12\Big(\frac{a_i - \mu_i}{\sigma_i}\Big)^2 - \log\sigma_i
        - \tfrac12\log 2\pi\Big], \qquad H = \sum_i \Big[\tfrac12(1 + \log 2\pi) + \log\sigma_i\Big]

    Parameters
    ----------
    fn : callable
        ``fn(mean, log_std, actions) -> log_prob`` of shape (n,) in the declared convention
        (`GAUSSIAN_LOG_PROB_CONVENTIONS`); with ``entropy=True`` it returns ``(log_prob, entropy)``,
        both (n,).
    convention : {"refpg", "sb3", "cleanrl", "torchrl"}
        The names and defaults (`CONVENTION_DEFAULTS`): refpg, sb3 and cleanrl pass a state-independent
        log-std ((d,); CleanRL's ``actor_logstd`` is (1, d)); torchrl the per-row std.
    backend, dtype, max_examples, seed
        As in `refpg.conformance.check_gae`. With backend="numpy" the derivatives are five-point central
        differences of the function's values (the report says so).
    scale : {"log_std", "std"} or None
        What the second argument holds; None takes the convention's.
    state_dependent : bool or None
        True: one scale row per action row, (n, d); False: one vector shared by every row. None takes
        the convention's.
    entropy : bool
        Whether the function also returns the entropy, checked with its derivative in the scale.
    min_log_std : float < 0
        The smallest log-std drawn (default -12, a collapsed policy; TorchRL's ``NormalParamExtractor``
        clamps the std at 1e-4, i.e. log-std -9.21, by default).

    Returns
    -------
    Report
        ``gaussian_log_prob.value``, ``gaussian_log_prob.gradient_mean``,
        ``gaussian_log_prob.gradient_scale``, ``gaussian_log_prob.entropy`` (entropy=True) and the
        generic ids (raised, output_shape, output_dtype, output_finite, input_mutated).

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad declaration, or a function the convention's call cannot bind (refused before any call).

    Notes
    -----
    A row passes when :math:`|actual - expected| \le tol\,(1 + S)`, S the sum of the magnitudes of its
    terms; a gradient entry when it is within tol (1 + its own closed-form scale). Counterexamples shrink
    to the fewest rows and dimensions, then to rounder numbers.

    References
    ----------
    docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    max_examples, seed = common_arguments(fn, convention, GAUSSIAN_LOG_PROB_CONVENTIONS, max_examples, seed)
    spec = Spec(convention, scale, state_dependent)
    if not isinstance(entropy, (bool, np.bool_)):
        raise InvalidInputError(f"entropy should be True or False, actual {entropy!r}")
    entropy = bool(entropy)
    min_log_std = check_min_log_std(min_log_std)
    names = log_prob_names(convention, spec.scale)
    table = {c: log_prob_names(c, spec.scale) for c in _LOG_PROB_NAMES}
    warned = check_signature(fn, KIND_LOG_PROB, convention, table)
    opts = dict(**spec.options, entropy=entropy, min_log_std=min_log_std)
    p_mean, p_scale, p_act = names

    def args_of(m, s, a):
        return [(p_mean, m), (p_scale, s), (p_act, a)]

    def probe(be):
        sp_arg, _ = spec.scale_arg(np.zeros((1, 2)), be)
        s = Session(KIND_LOG_PROB, fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of(np.zeros((1, 2)), sp_arg, np.array([[0.5, -0.5]])))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session(KIND_LOG_PROB, fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=warned + warn0)
    jax = be.name == "jax"
    ids = {k: f"{KIND_LOG_PROB}.{k}" for k in ("value", "gradient_mean", "gradient_scale", "entropy")}
    detach = (f"{p_scale} does not reach the output through autograd (detached, or computed outside the graph): "
              f"a log-std that is not trained (openai/baselines #262: TRPO's logstd was left out of var_list and "
              f"TRPO failed on Ant)")

    def evaluate(case):
        m, a = be.round(case["mean"]), be.round(case["actions"])
        s_arg, ls = spec.scale_arg(case["log_std"], be)
        n, d = m.shape
        per_dim, z, row_scale = log_prob_terms(m, ls, a)
        expected = per_dim.sum(-1)
        inputs = {p_mean: m, p_scale: s_arg, p_act: a}
        args = args_of(m, s_arg, a)
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
        if lp is None:
            return outcomes
        o = compare_rows(session, ids["value"], "log_prob", lp, expected, row_scale, inputs,
                         candidates=_log_prob_candidates(m, ls, a, spec, expected, d),
                         why=f"the log-density of N(mean, diag(sigma^2)) at the action, summed over the d = {d} "
                             f"dimensions")
        if o is not None:
            outcomes.append(o)
        w = weights(n)
        if entropy:
            h, more = session.output_array(raw_h, "entropy", (n,), inputs)
            outcomes += shape_outcome(session, more, raw_h, "entropy", n, d)
            if h is not None:
                h_exp = entropy_terms(ls).sum(-1)
                o = compare_rows(session, ids["entropy"], "entropy", h, h_exp, np.sum(np.abs(ls) + 1.42, -1), inputs,
                                 candidates=_entropy_candidates(ls, h_exp, d),
                                 why=f"sum over the d = {d} dimensions of (1 + log 2 pi)/2 + log sigma_i")
                if o is not None:
                    outcomes.append(o)
        # Gradients of sum_n w_n log_prob_n.
        want_m = w[:, None] * z * np.exp(-ls)
        want_s = spec.reduce(spec.scale_derivative(w[:, None] * (z * z - 1.0), ls))
        sc_m = w[:, None] * (np.abs(z) + 1.0) * np.exp(-ls)
        sc_s = spec.reduce(np.abs(spec.scale_derivative(w[:, None] * (z * z + 1.0), ls)))
        pick = weighted_sum(tuple(w), 0 if entropy else None)
        if be.differentiable:
            grads = autograd(session, args, call, (p_mean, p_scale), pick)
            for cid, name, want, sc in ((ids["gradient_mean"], p_mean, want_m, sc_m),
                                        (ids["gradient_scale"], p_scale, want_s, sc_s)):
                g, problem = grads[name]
                o = gradient_outcome(session, cid, f"d(sum_n w_n log_prob_n)/d{name}", g, problem, want, sc,
                                     inputs, zero_means=detach if name == p_scale else
                                     f"{p_mean} does not reach the output through autograd")
                if o is not None:
                    outcomes.append(o)
            if entropy:
                hpick = weighted_sum(tuple(w), 1)
                hg = autograd(session, args, session.call(args, grad_of=p_scale) if be.name == "torch" else call,
                              (p_scale,), hpick)[p_scale]
                want_h = spec.reduce(spec.scale_derivative(np.broadcast_to(w[:, None], ls.shape), ls))
                o = gradient_outcome(session, ids["entropy"], f"d(sum_n w_n entropy_n)/d{p_scale}", hg[0], hg[1],
                                     want_h, np.abs(want_h), inputs, zero_means=detach)
                if o is not None:
                    outcomes.append(o)
        else:
            nat_m, nat_s = natural_steps(spec, z, ls)
            outcomes += numeric_gradients(session, args, ((ids["gradient_mean"], 0, want_m, sc_m, nat_m),
                                                          (ids["gradient_scale"], 1, want_s, sc_s, nat_s)), pick)
        return outcomes

    session.declare(*session.generic_ids())
    session.declare(ids["value"], ids["gradient_mean"], ids["gradient_scale"], tracked=True)
    if entropy:
        session.declare(ids["entropy"], tracked=True)
    if not be.differentiable:
        session.warn("backend='numpy': the derivatives in the mean and the scale are numerical (five-point central "
                     "differences of the function's values along a random direction), which cannot see a detach; "
                     "check a torch or JAX function on its own backend")
    keys = ("mean", "log_std", "actions")
    session.run_scenario(gaussian_cases(jax, spec.state_dependent, min_log_std), evaluate, (ids["value"],),
                         moves=functools.partial(_gaussian_moves, keys=keys, jax=jax,
                                                 shared=not spec.state_dependent))
    return session.report()


def _gaussian_moves(case, keys, jax, shared):
    """`row_moves`, keeping a shared log-std's rows equal."""
    out = []
    for c in row_moves(case, keys, jax):
        if shared:
            for k in keys:
                if k.startswith("log_std"):
                    c[k] = np.broadcast_to(c[k][:1], c[k].shape).copy()
        out.append(c)
    return out


# -- check_gaussian_kl --------------------------------------------------------------------------------------

def kl_case(seed: int, n: int, d: int, state_dependent: bool, min_log_std: float) -> dict:
    """Pairs of diagonal Gaussians: some rows equal (KL 0), some nearly equal, some far apart."""
    rng = np.random.default_rng(seed)
    shape = (n, d) if state_dependent else (d,)
    lp = _log_std_draw(rng, shape, min_log_std)
    lq = np.where(rng.random(shape) < 0.5, lp + rng.uniform(-0.5, 0.5, shape), _log_std_draw(rng, shape, min_log_std))
    lp, lq = (np.broadcast_to(x, (n, d)).copy() for x in (lp, lq))
    mp = rng.normal(0.0, 1.0, (n, d))
    z = np.where(rng.random((n, d)) < 0.7, rng.normal(0.0, 1.0, (n, d)),
                 rng.choice([-1.0, 1.0], (n, d)) * rng.uniform(3.0, 8.0, (n, d)))
    mq = mp + np.exp(lq) * z
    kind = rng.random(n)
    for i in range(n):
        if kind[i] < 0.2:  # the same distribution: KL exactly 0
            mq[i] = mp[i]
            if state_dependent:
                lq[i] = lp[i]
        elif kind[i] < 0.35:  # nearly equal
            mq[i] = mp[i] + np.exp(lq[i]) * rng.normal(0.0, 1e-4, d)
    return {"mean_p": mp, "log_std_p": lp, "mean_q": mq, "log_std_q": lq}


@functools.lru_cache(maxsize=None)
def _kl_cases(jax: bool, state_dependent: bool, min_log_std: float):
    sizes = st.just(JAX_SHAPE) if jax else st.tuples(st.integers(1, 4), st.integers(1, 4))
    return st.builds(lambda nd, seed: kl_case(seed, nd[0], nd[1], state_dependent, min_log_std),
                     sizes, st.integers(0, 2**32 - 1))


def _kl_candidates(mp, lp, mq, lq, expected, d):
    with np.errstate(all="ignore"):
        def kl(a, b, c, e):
            return kl_terms(a, b, c, e)[0].sum(-1)
        delta = lp - lq
        return [
            ("the OTHER direction: the arguments' roles are swapped (openai/spinningup #264, #443: TRPO's constraint is "
             "KL(old || new), the old policy first); declare direction='reverse' if that is what the function computes",
             kl(mq, lq, mp, lp)),
            (f"the MEAN over the d = {d} dimensions, not the sum (actual = expected / d)", expected / d),
            (f"the matrix formula with -1 in place of -d (actual = expected + (d - 1)/2 = expected + {(d - 1) / 2:g})",
             expected + 0.5 * (d - 1)),
            ("-KL: the sign is flipped", -expected),
            ("2 x KL: the factor 1/2 is missing", 2.0 * expected),
            ("missing the -1/2 per dimension (actual = expected + d/2)", expected + 0.5 * d),
            ("the KL with log_std read as a log-variance (sigma = exp(log_std / 2))", kl(mp, lp / 2, mq, lq / 2)),
            ("log(sigma_q/sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2 / (2 sigma_q^2)) - 1/2 per dimension: the bracket "
             "closes too late (PacktPublishing/Deep-Reinforcement-Learning-Hands-On #17)",
             (-delta + np.exp(2 * lp) + 0.5 * (mp - mq) ** 2 * np.exp(-2 * lq) - 0.5).sum(-1)),
        ]


@numerics_of_their_own
def check_gaussian_kl(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                      max_examples: int = 100, seed: int = 0, direction: str = "forward", scale: str = None,
                      state_dependent: bool = None, min_log_std: float = -12.0) -> Report:
    r"""Check the KL divergence of two diagonal Gaussians exactly, summed over dimensions, in its declared direction.

    .. math::
        KL(N_p\,\|\,N_q) = \sum_{i=1}^d \Big[\log\frac{\sigma_{q,i}}{\sigma_{p,i}}
        + \frac{\sigma_{p,i}^2 + (\mu_{p,i} - \mu_{q,i})^2}{2\sigma_{q,i}^2} - \frac12\Big]

    Parameters
    ----------
    fn : callable
        ``fn(mean_p, log_std_p, mean_q, log_std_q) -> kl`` of shape (n,) in the declared convention
        (`GAUSSIAN_KL_CONVENTIONS`).
    convention : {"refpg", "sb3", "cleanrl", "torchrl"}
    backend, dtype, max_examples, seed
        As in `refpg.conformance.check_gae`; backend="numpy" derivatives are numerical.
    direction : {"forward", "reverse"}
        "forward": fn computes :math:`KL(N_p\|N_q)`, p given by its first two arguments (TRPO's
        KL(old || new) with the old policy passed first, SB3's ``kl_divergence(dist_true, dist_pred)``);
        "reverse": :math:`KL(N_q\|N_p)`.
    scale, state_dependent, min_log_std
        As in `check_gaussian_log_prob`.

    Returns
    -------
    Report
        ``gaussian_kl.value``, ``gaussian_kl.gradient`` (the derivative of :math:`\sum_n w_n KL_n` in
        each of the four arguments: TRPO's Fisher-vector products differentiate it twice) and the
        generic ids.

    Notes
    -----
    Rows include equal pairs (KL exactly 0), nearly equal pairs and pairs far apart (log-std
    differences up to 14, means up to 8 standard deviations apart). A row passes within tol (1 + S),
    S the sum of the magnitudes of its terms.

    References
    ----------
    [Schulman2015]; docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    max_examples, seed = common_arguments(fn, convention, GAUSSIAN_KL_CONVENTIONS, max_examples, seed)
    check_choice(direction, "direction", KL_DIRECTIONS)
    spec = Spec(convention, scale, state_dependent)
    min_log_std = check_min_log_std(min_log_std)
    names = kl_names(convention, spec.scale)
    warned = check_signature(fn, KIND_KL, convention, {c: kl_names(c, spec.scale) for c in _KL_NAMES})
    opts = dict(direction=direction, **spec.options, min_log_std=min_log_std)

    def probe(be):
        sp, _ = spec.scale_arg(np.zeros((1, 2)), be)
        s = Session(KIND_KL, fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(list(zip(names, (np.zeros((1, 2)), sp, np.ones((1, 2)), sp.copy()))))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session(KIND_KL, fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=warned + warn0)
    jax = be.name == "jax"
    ids = {k: f"{KIND_KL}.{k}" for k in ("value", "gradient")}
    roles = ("mean_p", "log_std_p", "mean_q", "log_std_q")

    def evaluate(case):
        mp, mq = be.round(case["mean_p"]), be.round(case["mean_q"])
        sp, lp = spec.scale_arg(case["log_std_p"], be)
        sq, lq = spec.scale_arg(case["log_std_q"], be)
        n, d = mp.shape
        first, second = (mp, lp, mq, lq), (mq, lq, mp, lp)
        src = first if direction == "forward" else second
        per_dim, row_scale = kl_terms(*src)
        expected = per_dim.sum(-1)
        values = (mp, sp, mq, sq)
        inputs = dict(zip(names, values))
        args = list(zip(names, values))
        call = session.call(args, grad_of=names[0] if be.name == "torch" else None)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return outcomes
        kl, more = session.output_array(call.output, "kl", (n,), inputs)
        outcomes += shape_outcome(session, more, call.output, "KL", n, d)
        if kl is None:
            return outcomes
        cands = _kl_candidates(mp, lp, mq, lq, expected, d) if direction == "forward" else \
            _kl_candidates(mq, lq, mp, lp, expected, d)
        o = compare_rows(session, ids["value"], "kl", kl, expected, row_scale, inputs, candidates=cands,
                         why=f"KL({'N_p || N_q' if direction == 'forward' else 'N_q || N_p'}) (declared direction="
                             f"{direction!r}), summed over the d = {d} dimensions")
        if o is not None:
            outcomes.append(o)
        w = weights(n)
        g, scales = kl_gradients(*src), kl_gradient_scales(*src)
        if direction == "reverse":  # the roles of the two pairs swap back
            def swap(t):
                return {"mean_p": t["mean_q"], "log_std_p": t["log_std_q"], "mean_q": t["mean_p"],
                        "log_std_q": t["log_std_p"]}
            g, scales = swap(g), swap(scales)
        logs = {"log_std_p": lp, "log_std_q": lq}
        want, sc = {}, {}
        for role, name in zip(roles, names):
            gw = w[:, None] * g[role]
            bound = w[:, None] * scales[role]
            if role.startswith("log_std"):
                want[name] = spec.reduce(spec.scale_derivative(gw, logs[role]))
                sc[name] = spec.reduce(np.abs(spec.scale_derivative(bound, logs[role])))
            else:
                want[name], sc[name] = gw, bound
        pick = weighted_sum(tuple(w))
        if be.differentiable:
            grads = autograd(session, args, call, names, pick)
            for name in names:
                gr, problem = grads[name]
                o = gradient_outcome(session, ids["gradient"], f"d(sum_n w_n kl_n)/d{name}", gr, problem, want[name],
                                     sc[name], inputs, zero_means=f"{name} does not reach the KL through autograd "
                                                                  f"(detached): TRPO's Fisher-vector products need "
                                                                  f"its second derivative")
                if o is not None:
                    outcomes.append(o)
                    break
        else:
            zq = (mp - mq) * np.exp(-lq)
            nat = {"mean_p": np.exp(lq) / (1.0 + np.abs(zq)), "mean_q": np.exp(lq) / (1.0 + np.abs(zq)),
                   "log_std_p": 1.0 / (1.0 + np.exp(2.0 * (lp - lq))),
                   "log_std_q": 1.0 / (1.0 + np.exp(2.0 * (lp - lq)) + zq * zq)}
            items = []
            for k, (role, name) in enumerate(zip(roles, names)):
                step = nat[role] / d
                if role.startswith("log_std"):
                    step = step * (np.exp(logs[role]) if spec.scale == "std" else 1.0)
                    if not spec.state_dependent:
                        step = step.min(axis=0).reshape(spec.scale_shape(n, d)) / n
                items.append((ids["gradient"], k, want[name], sc[name], step))
            outcomes += numeric_gradients(session, args, items, pick)[:1]
        return outcomes

    session.declare(*session.generic_ids())
    session.declare(ids["value"], ids["gradient"], tracked=True)
    if not be.differentiable:
        session.warn("backend='numpy': the derivatives are numerical (five-point central differences of the "
                     "function's values along a random direction), which cannot see a detach")
    keys = ("mean_p", "log_std_p", "mean_q", "log_std_q")
    session.run_scenario(_kl_cases(jax, spec.state_dependent, min_log_std), evaluate, (ids["value"],),
                         moves=functools.partial(_gaussian_moves, keys=keys, jax=jax,
                                                 shared=not spec.state_dependent))
    return session.report()

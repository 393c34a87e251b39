r"""`check_kl_penalty`: a per-token KL penalty of language-model RL, judged exactly as a value and as a loss.

The function under test maps the log-probabilities of sampled tokens under the policy and under
the reference, elementwise, to per-token estimates, ``fn(logp, ref_logp) -> k`` of the same shape
(verl's ``kl_penalty``, OpenRLHF's ``compute_approx_kl``, the k3 TRL's GRPOTrainer computes
inline). With :math:`u = \log\pi_{ref}(a) - \log\pi(a)` the estimators of [Schulman2020] are
:math:`k_1 = -u`, :math:`k_2 = u^2/2` and :math:`k_3 = e^u - 1 - u` (docs/conventions.md,
"Sequences"). A token tree's next-token distributions are finite, so both judgements are exact
finite sums; nothing is sampled.

**As a value** (``value="unbiased"``): on categorical pairs :math:`(\pi, \pi_{ref})` over V tokens,

.. math:: \sum_a \pi(a)\, fn(\log\pi(a), \log\pi_{ref}(a)) = KL(\pi\,\|\,\pi_{ref})

to the dtype's tolerance (``kl_penalty.unbiased``). k1 and k3 satisfy it, k2 does not. Each case
holds a moderate pair, a near-deterministic one (one token of probability :math:`1 - \delta`,
:math:`\delta` down to 1e-8) and one with :math:`\log\pi_{ref} - \log\pi < -10` at a token of
probability >= 0.2 and :math:`> 3` at another: where verl's ``low_var_kl`` clamps k3 to
[-10, 10] (k3 > 10 as soon as :math:`\pi_{ref}/\pi > 13.6` at a token) and where a clamp of the
log-ratio to [-10, 10] (OpenRLHF) changes the value. ``max_log_ratio`` bounds
:math:`|\log\pi_{ref} - \log\pi|` in every drawn case, for an estimator whose clamp is a documented
choice. Also ``fn(x, x) = 0`` (``kl_penalty.zero_at_equal``) and, whatever ``value`` says, the
function is elementwise: permuting the entries of both inputs permutes the output alike
(``kl_penalty.elementwise``).

**As a loss** (``gradient``): used as a loss, the estimate at the sampled tokens is differentiated
but the sampling is not. On a token tree (`refpg.sequences`, tabular softmax or log-linear policy,
:math:`\theta \ne \theta_{ref}`) the expected gradient of :math:`\sum_t fn(\log\pi_\theta(y_t|s_t),
\log\pi_{ref}(y_t|s_t))` over :math:`y \sim \pi_\theta` is

.. math:: g = \sum_s \Pr(s) \sum_a \pi(a|s)\, \frac{\partial fn}{\partial \log\pi}(a|s)\, \nabla\log\pi(a|s),

computed with the policy's ``log_prob_vjp``. :math:`\partial fn/\partial\log\pi` comes from the
function itself: torch autograd or ``jax.grad`` (what the framework backpropagates, detaches and
straight-through tricks included), or for NumPy a five-point central difference of its values.
``kl_penalty.loss_gradient`` compares g with the declared target, to 1e-9 relative in float64:

* ``"reverse"``: :math:`\nabla KL_{seq}` (`refpg.sequences.sequence_kl_gradient`);
* ``"local"``: :math:`g_{loc} = \sum_s \Pr(s)\sum_a \pi(a|s)\,(\log\pi - \log\pi_{ref})\nabla\log\pi`
  (`local_kl_gradient`), k2's;
* ``"forward"``: :math:`\sum_s \Pr(s)\nabla KL(\pi_{ref}(\cdot|s)\,\|\,\pi_\theta(\cdot|s))`
  (`local_forward_kl_gradient`), k3's, since :math:`\pi\,(1 - \pi_{ref}/\pi) = \pi - \pi_{ref}`;
* ``"zero"``: 0, k1's, since :math:`\sum_a \pi(a|s)\nabla\log\pi(a|s) = 0`.

No elementwise function meets ``"reverse"`` on a tree of depth > 1. :math:`\nabla KL_{seq}` weighs
each token's score by the KL still to come, :math:`\sum_{t' \ge t} l_{t'}`, which depends on the
subtree below the token and not on its own two log-probabilities; a per-token loss can only give a
weight :math:`\partial fn/\partial\log\pi` of those two numbers. On trees of depth 1,
:math:`\nabla KL_{seq} = g_{loc}` and k2 meets it. The exact code agrees
(tests/test_conformance_kl_penalty.py): k1, k2 and k3 each miss :math:`\nabla KL_{seq}` on depth-2
trees, and k1 *in the reward* (each token's advantage :math:`-\beta\sum_{t' \ge t} k_{1,t'}`) gives it
(`refpg.sequences.expected_gradient`). The option stays, because users declare it: the failure
says which target their loss does meet.

A failure names what the function matches: for values, k1, k2, k3, verl's clamped ``low_var_kl``,
a log-ratio clamped to [-10, 10], the arguments swapped or the sign flipped; for the gradient,
which of the four targets (or their negatives) it is, with cosine and relative error against each.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance._harness import (Outcome, Session, check_callable, check_signature,
                                        convention_parameters, numerics_of_their_own, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_kl_penalty", "KL_PENALTY_CONVENTIONS", "VALUES", "GRADIENTS"]

KIND = "kl_penalty"

#: Convention -> signature. Every convention passes the sampling policy's log-probabilities first and
#: the reference's second; they differ in names and in the keyword that carries a library's own
#: estimator name (``kl_type``).
KL_PENALTY_CONVENTIONS = {
    "refpg": "fn(logp, ref_logp) -> estimates of the same shape (log pi and log pi_ref of the sampled tokens)",
    "verl": "fn(logprob, ref_logprob) -> estimates (verl.trainer.ppo.core_algos.kl_penalty and "
            "kl_penalty_forward; kl_type is passed as kl_penalty=)",
    "openrlhf": "fn(log_probs, log_probs_base) -> estimates (openrlhf.models.utils.compute_approx_kl; kl_type is "
                "passed as kl_estimator=, by keyword, since some versions take action_mask third)",
    "trl": "fn(per_token_logps, ref_per_token_logps) -> per_token_kl (the k3 TRL's GRPOTrainer computes inline "
           "in _compute_loss)",
}
_PARAMS = convention_parameters(KL_PENALTY_CONVENTIONS)
#: The keyword a library takes its estimator's name by (the ``kl_type`` option).
_KL_TYPE_KEYWORD = {"verl": "kl_penalty", "openrlhf": "kl_estimator"}

VALUES = ("unbiased", "any")
GRADIENTS = ("reverse", "local", "forward", "zero")

#: Shapes drawn for backend="jax" (a jitted function compiles once per shape): value pairs (rows, V),
#: generic arrays (n, L), and one tree shape (prompts, V, L), whose prefix table is (7, 3).
JAX_PAIRS = (3, 4)
JAX_ARRAYS = (3, 5)
JAX_TREE = (1, 3, 3)
FAMILIES = ("moderate", "sharp", "large")

_LABELS = {
    "reverse": "grad KL_seq, the gradient of the sequence KL(pi_theta || pi_ref)",
    "local": "the local reverse-KL gradient g_loc = E[sum_t (log pi_t - log pi_ref,t) grad log pi_t] (k2's)",
    "forward": "the forward-KL gradient sum_s Pr(s) grad KL(pi_ref(.|s) || pi_theta(.|s)) (k3's)",
    "zero": "0 (k1's: sum_a pi(a|s) grad log pi(a|s) = 0)",
}
_SHORT = {"reverse": "grad KL_seq", "local": "the local reverse-KL gradient g_loc",
          "forward": "the forward-KL gradient", "zero": "0"}
_REVERSE_WHY = ("no per-token loss meets grad KL_seq on a tree of depth > 1: grad KL_seq weighs each token's score "
                "by the KL still to come (sum over t' >= t of log pi - log pi_ref), which depends on the subtree "
                "below the token, not on its two log-probabilities; k1 in the reward gives grad KL_seq (verl's "
                "use_kl_in_reward with kl_penalty='kl'), or declare the gradient the loss has (k2: 'local', "
                "k3: 'forward', k1: 'zero')")


# -- values ---------------------------------------------------------------------------------------

def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _pair_logits(rng, family: str, V: int, bound: float | None) -> tuple:
    """Logits (z, z_ref) of one pair; the logit difference is clipped to +-bound/2, so that
    |log pi_ref - log pi| <= bound at every token."""
    z = rng.normal(0.0, 1.0, V)
    if family == "moderate":
        delta = rng.uniform(-1.5, 1.5, V)
    elif family == "sharp":
        k = int(rng.integers(V))
        z[k] += rng.uniform(8.0, 18.0)  # pi(k) = 1 - delta, delta down to ~1e-8
        if rng.random() < 0.5:
            delta = rng.normal(0.0, 1.0, V) - (z - z.mean())  # pi_ref an independent, flat-ish draw
        else:
            delta = rng.uniform(-2.0, 2.0, V)
    else:  # large: one likely token far less likely under pi_ref, another far more
        k = int(rng.integers(V))
        z[k] += 1.5
        delta = rng.uniform(-1.0, 1.0, V)
        delta[k] = -rng.uniform(10.5, 16.0)
        if V > 2:
            j = (k + 1 + int(rng.integers(V - 1))) % V
            delta[j] = rng.uniform(3.0, 6.0)
    if bound is not None:
        delta = np.clip(delta, -bound / 2.0, bound / 2.0)
    return z, z + delta


def _pairs_case(seed: int, n: int, V: int, start: int, bound) -> dict:
    rng = np.random.default_rng(seed)
    fams = tuple(FAMILIES[(start + i) % 3] for i in range(n))
    z, zr = zip(*(_pair_logits(rng, f, V, bound) for f in fams))
    return {"z": np.array(z), "z_ref": np.array(zr), "families": fams}


@functools.lru_cache(maxsize=None)
def _pair_cases(jax: bool, bound):
    sizes = st.just(JAX_PAIRS) if jax else st.tuples(st.integers(3, 5), st.integers(2, 6))
    return st.builds(lambda nv, start, seed: _pairs_case(seed, nv[0], nv[1], start, bound),
                     sizes, st.integers(0, 2), st.integers(0, 2**32 - 1))


def _pair_moves(case: dict, jax: bool) -> list:
    """Fewer rows, then fewer tokens (each distribution renormalised over the rest); JAX keeps its shape."""
    if jax:
        return []
    z, zr, fams = case["z"], case["z_ref"], case["families"]
    out = []
    if z.shape[0] > 1:
        out += [{"z": np.delete(z, i, 0), "z_ref": np.delete(zr, i, 0), "families": fams[:i] + fams[i + 1:]}
                for i in range(z.shape[0])]
    if z.shape[1] > 2:
        out += [{**case, "z": np.delete(z, j, 1), "z_ref": np.delete(zr, j, 1)} for j in range(z.shape[1])]
    return out


def _candidates(lp: np.ndarray, ref: np.ndarray) -> list:
    """(label, values) of the estimators a failing function's values may be; u = ref - lp."""
    u = ref - lp
    uc = np.clip(u, -20.0, 20.0)
    k3 = np.expm1(u) - u
    return [
        ("k1 = log pi - log pi_ref (verl 'kl'/'k1', OpenRLHF 'k1')", -u),
        ("k2 = (log pi - log pi_ref)^2 / 2 (verl 'mse'/'k2', OpenRLHF 'k2'): biased as a value, its mean is not "
         "KL(pi || pi_ref); declare value='any' if only its gradient matters", 0.5 * u * u),
        ("k3 = pi_ref/pi - 1 - log(pi_ref/pi) (verl 'low_var_kl'/'k3' without its clamps, OpenRLHF 'k3', TRL)", k3),
        ("verl's 'low_var_kl': k3 with log(pi_ref/pi) clamped to [-20, 20] and the estimate to [-10, 10], biased "
         "wherever k3 > 10, i.e. wherever pi_ref/pi > 13.6 or pi/pi_ref > e^11 at a token; declare "
         "max_log_ratio=2.5 to check it where the clamp never acts",
         np.clip(np.expm1(uc) - uc, -10.0, 10.0)),
        ("k3 with log(pi_ref/pi) clamped to [-10, 10] (OpenRLHF PR #1160's clamp): biased where |log r| > 10",
         np.expm1(np.clip(u, -10, 10)) - np.clip(u, -10, 10)),
        ("k1 with the log-ratio clamped to [-10, 10]: biased where |log pi - log pi_ref| > 10",
         np.clip(-u, -10.0, 10.0)),
        ("|log pi - log pi_ref| (verl 'abs'): not an estimate of the KL", np.abs(u)),
        ("-k1 = log pi_ref - log pi: the sign is flipped, or the two arguments are swapped (fn(ref_logp, logp))",
         u),
        ("-k2: the sign is flipped (a penalty that maximises the KL)", -0.5 * u * u),
        ("-k3: the sign is flipped (a penalty that maximises the KL, as verl's GRPO loss did before verl PR #179)",
         -k3),
        ("k3 with its two arguments swapped, pi/pi_ref - 1 - log(pi/pi_ref): its mean under pi is not a KL",
         np.expm1(-u) + u),
    ]


def _value_hint(out: np.ndarray, lp: np.ndarray, ref: np.ndarray, tol: float) -> str:
    for label, vals in _candidates(lp, ref):
        if np.all(np.abs(out - vals) <= tol * (1.0 + np.abs(vals))):
            return f"the estimates are {label}"
    return ""


# -- trees ----------------------------------------------------------------------------------------

class _Tree(NamedTuple):
    tree: object
    policy: object
    theta: np.ndarray
    label: str


def _tree_logits_bound(kind: str, bound):
    """The largest logit difference drawn: |log pi_ref - log pi| <= 2 x (tabular) or 10 x (log-linear:
    |psi(s)|_1 <= 5) its value."""
    if bound is None:
        return None
    return bound / 2.0 if kind == "tabular" else bound / 10.0


@functools.lru_cache(maxsize=64)
def _build_tree(X: int, V: int, L: int, kind: str, family: str, seed: int, bound) -> _Tree:
    """A token tree, a policy and theta != theta_ref; "extreme" adds large logit differences."""
    from refpg.sequences.tree import TokenTree

    rng = np.random.default_rng(seed)
    base = TokenTree(X, V, L, lambda x, y: 0.0)
    clip = _tree_logits_bound(kind, bound)
    if kind == "tabular":
        policy = base.tabular_policy()
        ref_logits = rng.normal(0.0, 1.0, policy.theta_shape)
        delta = rng.uniform(-1.5, 1.5, policy.theta_shape)
        if family == "extreme":
            hit = rng.random(policy.theta_shape) < 0.3
            delta = np.where(hit, rng.choice([-1.0, 1.0], policy.theta_shape) * rng.uniform(4.0, 9.0,
                                                                                           policy.theta_shape), delta)
    else:
        policy = base.log_linear_policy()
        d = policy.theta_shape
        theta_ref = rng.normal(0.0, 0.7, d)
        delta = rng.uniform(-0.4, 0.4, d)
        if family == "extreme":
            delta = delta * 3.0
        ref_logits = np.einsum("sad,d->sa", policy.features, theta_ref)
    if clip is not None:
        delta = np.clip(delta, -clip, clip)
    tree = TokenTree(X, V, L, lambda x, y: 0.0, ref_logits=ref_logits,
                     name=f"tree(prompts={X}, V={V}, L={L})")
    if kind == "tabular":
        theta = ref_logits + delta
        policy = tree.tabular_policy()
    else:
        theta = theta_ref + delta
        policy = tree.log_linear_policy()
    return _Tree(tree, policy, theta, f"{kind} {family}")


@functools.lru_cache(maxsize=None)
def _tree_cases(jax: bool):
    if jax:
        shapes = st.just(JAX_TREE)
    else:
        shapes = st.tuples(st.integers(1, 2), st.integers(2, 4), st.integers(1, 3))
    return st.builds(lambda s, kind, fam, seed: {"X": s[0], "V": s[1], "L": s[2], "kind": kind, "family": fam,
                                                 "seed": seed},
                     shapes, st.sampled_from(("tabular", "log_linear")), st.sampled_from(("moderate", "extreme")),
                     st.integers(0, 2**32 - 1))


def _tree_moves(case: dict, jax: bool) -> list:
    """Fewer prompts, shorter, a smaller vocabulary, tabular, moderate (JAX: only the last two)."""
    out = []
    if not jax:
        for key, low in (("X", 1), ("L", 1), ("V", 2)):
            if case[key] > low:
                out.append({**case, key: case[key] - 1})
    if case["kind"] != "tabular":
        out.append({**case, "kind": "tabular"})
    if case["family"] != "moderate":
        out.append({**case, "family": "moderate"})
    return out


def _targets(t: _Tree) -> dict:
    from refpg.sequences.exact import local_forward_kl_gradient, local_kl_gradient, sequence_kl_gradient

    return {"reverse": sequence_kl_gradient(t.tree, t.policy, t.theta),
            "local": local_kl_gradient(t.tree, t.policy, t.theta),
            "forward": local_forward_kl_gradient(t.tree, t.policy, t.theta),
            "zero": np.zeros(t.policy.theta_shape)}


def _compare_to(g: np.ndarray, t: np.ndarray, scale: float) -> tuple:
    """(relative error, cosine) of g against target t; for t = 0 the error is |g| over `scale`."""
    gn, tn = float(np.linalg.norm(g)), float(np.linalg.norm(t))
    err = float(np.linalg.norm(g - t))
    if tn == 0.0:
        return err / max(scale, 1e-300), float("nan")
    cos = float(np.vdot(g, t) / (gn * tn)) if gn > 0 else 0.0
    return err / tn, cos


def _fmt_cmp(name: str, rel: float, cos: float) -> str:
    if name == "zero" or math.isnan(cos):
        return f"|g| / |g_loc| = {rel:.3g}"
    return f"cosine {cos:.6f}, rel. error {rel:.2g}"


def _five_point(fn_values, x: np.ndarray, f0: np.ndarray, dtype: str) -> np.ndarray:
    """d f / d x per entry from f at x and at four nodes x + c h (c = -2, -1, 1, 2) rounded to `dtype`,
    with the weights exact for those (possibly rounded) nodes: error O(h^4) plus rounding."""
    h = 2.0 ** -10 if dtype == "float64" else 2.0 ** -5
    nodes = [np.zeros_like(x)]
    values = [f0]
    for c in (-2, -1, 1, 2):
        xc = np.asarray(x + c * h, dtype=dtype).astype(np.float64)
        fc = fn_values(xc)
        if fc is None:
            return None
        nodes.append(xc - x)
        values.append(fc)
    d = np.stack(nodes, axis=-1)                      # (..., 5)
    A = np.stack([d ** k for k in range(5)], axis=-2)  # (..., 5 powers, 5 nodes)
    rhs = np.zeros(d.shape[:-1] + (5,))
    rhs[..., 1] = 1.0
    w = np.linalg.solve(A, rhs[..., None])[..., 0]
    return np.sum(w * np.stack(values, axis=-1), axis=-1)


def _token_hint(gradient: str, lp, ref, dk, tol: float) -> str:
    """For a per-token target (local: d = log pi - log pi_ref; forward: d = 1 - pi_ref/pi), the first prefix
    and token whose derivative differs, and why when it is 0 (a clamp, or a detach)."""
    if gradient not in ("local", "forward"):
        return ""
    u = ref - lp
    want = -u if gradient == "local" else -np.expm1(u)
    bad = np.abs(dk - want) > tol * (1.0 + np.abs(want)) * 10.0
    if not bad.any():
        return ""
    s, a = (int(i) for i in np.argwhere(bad)[0])
    form = "log pi - log pi_ref" if gradient == "local" else "1 - pi_ref/pi"
    text = (f"at prefix {s}, token {a} (log pi_ref - log pi = {u[s, a]:.4g}) d estimate / d logp should be "
            f"{form} = {want[s, a]:.6g}, actual {dk[s, a] + 0.0:.6g}")
    if dk[s, a] == 0.0:
        text += " (exactly 0: the estimate is clamped or detached there, as verl's low_var_kl clamps k3 at 10)"
    return text


def _total(out):
    """The scalar whose gradient in logp is d fn / d logp entrywise, for an elementwise fn."""
    return out.sum()


# -- the check ------------------------------------------------------------------------------------

@numerics_of_their_own
def check_kl_penalty(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                     max_examples: int = 100, seed: int = 0, value: str = "unbiased", gradient: str = None,
                     kl_type: str = None, max_log_ratio: float = None) -> Report:
    r"""Check a per-token KL penalty exactly: its values' mean under pi, and its expected gradient as a loss.

    Parameters
    ----------
    fn : callable
        ``fn(logp, ref_logp) -> estimates`` of the same shape, elementwise (`KL_PENALTY_CONVENTIONS`):
        the log-probabilities of the sampled tokens under the policy pi and the reference pi_ref.
    convention : {"refpg", "verl", "openrlhf", "trl"}
        All pass the sampling policy's log-probabilities first. ``"verl"``: ``kl_penalty(logprob,
        ref_logprob, kl_penalty=...)`` as verl 0.9.1 has it; ``"openrlhf"``:
        ``compute_approx_kl(log_probs, log_probs_base, kl_estimator=...)``; ``"trl"``: a function of
        ``(per_token_logps, ref_per_token_logps)``, as TRL's GRPOTrainer computes its k3.
    backend, dtype, max_examples, seed
        As in `check_gae`. With backend="numpy" the derivative in logp is a five-point central
        difference of the values (the report says so): it cannot see a detach or a straight-through
        trick, so check such a function on torch or jax.
    value : {"unbiased", "any"}
        "unbiased": :math:`\sum_a \pi(a) fn = KL(\pi\|\pi_{ref})` exactly on every drawn pair, and
        ``fn(x, x) = 0`` (k1, k3). "any": neither is checked (k2, or a penalty used for its gradient only).
    gradient : {"reverse", "local", "forward", "zero"} or None
        The expected gradient the estimate has when it is used as a loss (module docstring):
        "reverse" grad KL_seq (no per-token loss meets it on a tree of depth > 1; the failure says
        which target the loss meets), "local" g_loc (k2), "forward" the forward-KL gradient (k3),
        "zero" (k1). None (the default; also the string "none"): not checked, and the report's warning
        says so and lists what to declare. A penalty used in the reward, detached, needs none; one
        used as a loss should declare the gradient it is meant to have.
    kl_type : str, optional
        verl and openrlhf only: the library's estimator name, passed to the function as
        ``kl_penalty=kl_type`` (verl: "kl", "k1", "mse", "k2", "low_var_kl", "k3", "abs", and their
        straight-through forms "k1+", "k3+", "low_var_kl+") or ``kl_estimator=kl_type`` (OpenRLHF:
        "k1", "k2", "k3"), so that the library function is checked as it is; without it the
        function is called with the two arrays only (bind the name with `functools.partial`).
    max_log_ratio : float > 0, optional
        The largest :math:`|\log\pi_{ref}(a) - \log\pi(a)|` any drawn case holds. Default: no bound
        (the drawn cases reach 16 and more). For an estimator clamped by design, to check it where
        the clamp never acts: verl's ``low_var_kl`` is exact with ``max_log_ratio=2.5``.

    Returns
    -------
    Report
        ``kl_penalty.unbiased`` and ``kl_penalty.zero_at_equal`` (value="unbiased"),
        ``kl_penalty.elementwise``, ``kl_penalty.loss_gradient`` (unless gradient=None), and the
        generic ids (raised, output_shape, output_dtype, output_finite, input_mutated).

    Notes
    -----
    A value passes when :math:`|\sum_a \pi fn - KL| \le tol\,(1 + \max(KL, E_\pi|u|))`; the gradient
    when :math:`\max|g - g^*| \le tol\,(1 + S)`, S the largest entry of the three non-zero targets;
    tol is 1e-9 in float64 and 1e-4 in float32. Counterexamples shrink to the fewest pairs and
    tokens, and to the smallest tree (prompts, length, vocabulary; tabular, moderate logits).

    References
    ----------
    [Schulman2020]; [TangMunos2025]; [Shah2025]; docs/conventions.md, "Sequences".
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(KL_PENALTY_CONVENTIONS))
    check_choice(value, "value", VALUES)
    if isinstance(gradient, str) and gradient.lower() == "none":  # as the CLI writes it
        gradient = None
    if gradient is not None:
        check_choice(gradient, "gradient", GRADIENTS + ("none",))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    if kl_type is not None:
        if convention not in _KL_TYPE_KEYWORD:
            raise InvalidInputError(f"kl_type is passed as verl's kl_penalty= or OpenRLHF's kl_estimator=: it "
                                    f"needs convention='verl' or 'openrlhf', actual convention={convention!r} "
                                    f"with kl_type={kl_type!r} (bind your function's own options with "
                                    f"functools.partial)")
        if not isinstance(kl_type, str) or not kl_type:
            raise InvalidInputError(f"kl_type should be the library's estimator name, a non-empty string, actual "
                                    f"{kl_type!r}")
    bound = None
    if max_log_ratio is not None:
        bound = check_real(max_log_ratio, "max_log_ratio", low=0.0, low_open=True)
    params = _PARAMS[convention]
    target = fn
    if kl_type is not None:
        keyword = _KL_TYPE_KEYWORD[convention]
        named = check_signature(functools.partial(fn, **{keyword: kl_type}), KIND, convention,
                                {convention: params})

        @functools.wraps(fn)
        def target(a, b):
            return fn(a, b, **{keyword: kl_type})
    else:
        named = check_signature(fn, KIND, convention, {convention: params})
    opts = dict(value=value, gradient=gradient)
    if kl_type is not None:
        opts["kl_type"] = kl_type
    if bound is not None:
        opts["max_log_ratio"] = bound

    def args(lp, ref):
        return [(params[0], lp), (params[1], ref)]

    def probe(be):
        s = Session(KIND, target, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args(np.array([[-1.0, -0.5]]), np.array([[-0.5, -1.0]])))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session(KIND, target, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=named + warn0)
    jax = be.name == "jax"
    ids = {k: f"{KIND}.{k}" for k in ("unbiased", "zero_at_equal", "elementwise", "loss_gradient")}
    p0, p1 = params

    def run(lp, ref, inputs, *, grad=False):
        """(call, estimates as float64 of the inputs' shape or None, outcomes)."""
        call = session.call(args(lp, ref), grad_of=p0 if grad and be.name == "torch" else None)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return call, None, outcomes
        out, more = session.output_array(call.output, "estimate", lp.shape, inputs)
        return call, out, outcomes + more

    # -- value: E_pi[fn] = KL ---------------------------------------------------------------------
    def evaluate_pairs(case):
        lp = be.round(_log_softmax(case["z"]))
        ref = be.round(_log_softmax(case["z_ref"]))
        p, q = np.exp(lp), np.exp(ref)
        u = ref - lp
        kl = np.sum(p * (lp - ref), axis=-1)
        inputs = {"pi (one distribution per row)": p, "pi_ref": q, p0: lp, p1: ref,
                  "KL(pi || pi_ref) per row (exact)": kl}
        _, out, outcomes = run(lp, ref, inputs)
        if out is None:
            return outcomes
        mean = np.sum(p * out, axis=-1)
        scale = float(np.max(np.maximum(kl, np.sum(p * np.abs(u), axis=-1))))
        o = session.compare(ids["unbiased"], "E_pi[estimate]", mean, kl, inputs, scale=scale,
                            why="the mean of the estimates under pi, sum_a pi(a) fn(log pi(a), log pi_ref(a)), "
                                "should be KL(pi || pi_ref) (declared value='unbiased')")
        if o is not None:
            hint = _value_hint(out, lp, ref, be.tol)
            if hint:
                o.message += f"; {hint}"
            o.actual = mean
            o.inputs = {**inputs, "estimates (the function's output)": out}
            outcomes.append(o)
        return outcomes

    # -- generic arrays: elementwise, zero at equal -------------------------------------------------
    def evaluate_arrays(case):
        lp, ref = be.round(case["logp"]), be.round(case["ref"])
        inputs = {p0: lp, p1: ref}
        _, out, outcomes = run(lp, ref, inputs)
        if out is None:
            return outcomes
        perm = np.random.default_rng(case["perm"]).permutation(lp.size)
        lp2, ref2 = lp.ravel()[perm].reshape(lp.shape), ref.ravel()[perm].reshape(lp.shape)
        p_inputs = {f"{p0} (entries permuted)": lp2, f"{p1} (entries permuted)": ref2}
        _, out2, more = run(lp2, ref2, p_inputs)
        outcomes += more
        if out2 is not None:
            expected = out.ravel()[perm].reshape(lp.shape)
            o = session.compare(ids["elementwise"], "estimate", out2, expected, {**inputs, **p_inputs},
                                why="the estimate should be elementwise, one per token from that token's two "
                                    "log-probabilities: permuting the entries of both inputs should permute the "
                                    "output alike (a function that averages, sums or normalises over a row or "
                                    "the batch is not a per-token estimate)")
            if o is not None:
                outcomes.append(o)
        if value == "unbiased":
            z_inputs = {p0: lp, p1: lp}
            _, out0, more = run(lp, lp.copy(), z_inputs)
            outcomes += more
            if out0 is not None:
                o = session.compare(ids["zero_at_equal"], "estimate", out0, np.zeros_like(out0), z_inputs,
                                    why="at pi_ref = pi every token's estimate of KL(pi || pi_ref) = 0 should be 0")
                if o is not None:
                    outcomes.append(o)
        return outcomes

    # -- the gradient as a loss ---------------------------------------------------------------------
    def derivative(call, lp, ref, out):
        """d fn / d logp per entry, or (None, message)."""
        if be.differentiable:
            return session.input_gradient(call, p0, _total)

        def values_at(x):
            _, fx, more = run(x, ref, {p0: x, p1: ref})
            return None if more or fx is None else fx

        d = _five_point(values_at, lp, out, be.dtype)
        if d is None:
            return None, "a call at a shifted logp (for the central difference) failed"
        return d, None

    def evaluate_tree(case):
        t = _build_tree(case["X"], case["V"], case["L"], case["kind"], case["family"], case["seed"], bound)
        tree, policy, theta = t.tree, t.policy, t.theta
        N = tree.n_prefixes
        logp_all = policy.log_probs(theta)
        pi = np.exp(logp_all)
        lp, ref = be.round(logp_all[:N]), be.round(np.log(tree.ref_probs[:N]))
        inputs = {"tree": repr(tree), "policy": t.label, "theta": theta,
                  f"{p0} (one row per prefix, one column per token)": lp, f"{p1}": ref}
        call, out, outcomes = run(lp, ref, inputs, grad=True)
        if out is None:
            return outcomes
        dk, problem = derivative(call, lp, ref, out)
        if problem is not None:
            session.ran(ids["loss_gradient"])
            return outcomes + [Outcome(ids["loss_gradient"], problem + (
                "; declare gradient=None for a penalty used in the reward (detached)" if be.differentiable else ""),
                inputs)]
        from refpg.sequences.exact import prefix_reach

        W = np.zeros_like(pi)
        W[:N] = prefix_reach(tree, policy, theta)[:N, None] * pi[:N] * dk
        g = policy.log_prob_vjp(theta, W, pi)
        targets = _targets(t)
        want = targets[gradient]
        scale = max(float(np.max(np.abs(targets[k]))) for k in ("reverse", "local", "forward"))
        session.ran(ids["loss_gradient"])
        allowed = be.tol * (1.0 + scale)
        if np.max(np.abs(g - want), initial=0.0) <= allowed:
            return outcomes
        norm = float(np.linalg.norm(targets["local"])) or 1.0
        rel, cos = _compare_to(g, want, norm)
        msg = (f"the expected gradient of sum_t fn(log pi(y_t), log pi_ref(y_t)) as a loss (y ~ pi_theta, the "
               f"sampling not differentiated) should be {_LABELS[gradient]} (declared gradient={gradient!r}), "
               f"actual {_fmt_cmp(gradient, rel, cos)} against it (max error {np.max(np.abs(g - want)):.3g} > "
               f"tolerance {allowed:.3g})")
        matches = []
        for name in ("local", "forward", "zero", "reverse"):  # grad KL_seq last: at depth 1 it is g_loc
            tv = targets[name]
            for sign, word in ((1.0, ""), (-1.0, "minus ")):
                if name == gradient and sign > 0 or name == "zero" and sign < 0:
                    continue
                if np.max(np.abs(g - sign * tv), initial=0.0) <= allowed:
                    r, c = _compare_to(g, sign * tv, norm)
                    matches.append(f"{word}{_SHORT[name]} ({_fmt_cmp(name, r, c)})"
                                   + (": the sign is flipped, the loss maximises the KL" if sign < 0 else ""))
        if matches:
            msg += f"; its expected gradient is {' and '.join(matches)}, not {_SHORT[gradient]} you declared"
        else:
            msg += "; it matches none of the four targets (" + ", ".join(
                f"{n}: {_fmt_cmp(n, *_compare_to(g, tv, norm))}" for n, tv in targets.items()) + ")"
        hint = _token_hint(gradient, lp, ref, dk, be.tol)
        if hint:
            msg += f"; {hint}"
        if gradient == "reverse" and case["L"] > 1:
            msg += f"; {_REVERSE_WHY}"
        if not be.differentiable:
            msg += "; d fn / d logp by central differences of the values (backend='numpy')"
        outcomes.append(Outcome(ids["loss_gradient"], msg, {**inputs, "d estimate / d logp": dk},
                                expected=want, actual=g))
        return outcomes

    session.declare(*session.generic_ids())
    session.declare(ids["elementwise"], tracked=True)
    # Calls are cheap and Hypothesis's own work dominates: half the budget to the pairs, which hold every
    # value region in each case, a third to the trees (half of them with extreme logits), a quarter to the rest.
    per_pairs, per_arrays, per_tree = (max(1, math.ceil(max_examples / k)) for k in (2, 4, 3))
    if value == "unbiased":
        session.declare(ids["unbiased"], ids["zero_at_equal"], tracked=True)
        session.run_scenario(_pair_cases(jax, bound), evaluate_pairs, (ids["unbiased"],),
                             moves=functools.partial(_pair_moves, jax=jax), max_examples=per_pairs)
    session.run_scenario(_array_cases(jax), evaluate_arrays, (ids["elementwise"],),
                         moves=functools.partial(_array_moves, jax=jax), max_examples=per_arrays)
    if gradient is None:
        session.warn("gradient not declared: the expected gradient of fn used as a loss was not checked. Declare "
                     "the one it is meant to have: gradient='zero' (k1), 'local' (k2, g_loc), 'forward' (k3, the "
                     "forward-KL gradient) or 'reverse' (grad KL_seq, which no per-token loss meets beyond one "
                     "token: put the penalty in the reward for it)")
    else:
        session.declare(ids["loss_gradient"], tracked=True)
        if not be.differentiable:
            session.warn("backend='numpy': d fn / d logp is a five-point central difference of the function's "
                         "values, which cannot see a detach or a straight-through trick (verl's 'k3+'): check "
                         "such a function with backend='torch'")
        session.run_scenario(_tree_cases(jax), evaluate_tree, (ids["loss_gradient"],),
                             moves=functools.partial(_tree_moves, jax=jax), max_examples=per_tree)
    return session.report()


def _arrays_case(seed: int, n: int, L: int, perm: int) -> dict:
    """Log-probabilities in [-20, 0] (a tenth exactly 0), the reference equal at a few entries."""
    rng = np.random.default_rng(seed)
    lp = -rng.exponential(2.0, (n, L)).clip(0.0, 20.0)
    lp[rng.random((n, L)) < 0.1] = 0.0
    ref = -rng.exponential(2.0, (n, L)).clip(0.0, 20.0)
    same = rng.random((n, L)) < 0.2
    ref[same] = lp[same]
    return {"logp": lp, "ref": ref, "perm": perm}


@functools.lru_cache(maxsize=None)
def _array_cases(jax: bool):
    sizes = st.just(JAX_ARRAYS) if jax else st.tuples(st.integers(1, 4), st.integers(2, 6))
    return st.builds(lambda nl, seed, perm: _arrays_case(seed, nl[0], nl[1], perm), sizes,
                     st.integers(0, 2**32 - 1), st.integers(0, 2**16))


def _array_moves(case: dict, jax: bool) -> list:
    if jax:
        return []
    lp, ref = case["logp"], case["ref"]
    out = []
    if lp.shape[0] > 1:
        out += [{**case, "logp": np.delete(lp, i, 0), "ref": np.delete(ref, i, 0)} for i in range(lp.shape[0])]
    if lp.shape[1] > 2:
        out += [{**case, "logp": np.delete(lp, j, 1), "ref": np.delete(ref, j, 1)} for j in range(lp.shape[1])]
    return out

r"""`check_gaussian_ppo_loss`: PPO's clipped loss for a diagonal-Gaussian policy, from mean, log-std and stored actions.

The function under test computes the new log-probabilities itself, from the policy's mean and scale
and the actions stored at rollout, and returns the clipped loss [Schulman2017]:

.. math::

    \mathcal L = -\frac1n\sum_{k=1}^n \min\big(r_k \hat A_k,\ \mathrm{clip}(r_k, 1-\epsilon, 1+\epsilon)\hat A_k\big),
    \qquad r_k = \exp\big(\log\pi_\theta(a_k|s_k) - \log\pi_{old}(a_k|s_k)\big),

:math:`\log\pi_\theta` the diagonal-Gaussian log-density summed over dimensions
(`refpg.conformance.gaussian.check_gaussian_log_prob`), :math:`\hat A` the advantages, normalised per
minibatch where the convention does (SB3, CleanRL: :math:`(A - \bar A)/(\mathrm{std}_1(A) + 10^{-8})`).
The reference takes its clipped terms and their derivative in :math:`\log\pi_\theta` from
`refpg.losses` (`refpg.losses.ratio_clip_terms`, `refpg.losses.ppo_clip_grad_logp`), the one home of
those formulas.

**Ratios exactly 1 at the old policy** (``gaussian_ppo_loss.ratio_one_at_old``). With
:math:`\theta = \theta_{old}` and :math:`\log\pi_{old}` the exact log-density of the stored actions,
every ratio is 1 and the loss is :math:`-\mathrm{mean}(\hat A)`. Every case stores an action outside
[-1, 1], as a Gaussian policy samples them: a loss that scores the action clipped to the action space
while the old log-probability belongs to the sampled one (RLlib stored the clipped action, ray #8889;
tianshou #312) has ratios other than 1 there, and fails with that named.

**Ratios in every band** (``gaussian_ppo_loss.value``). Away from the old policy, each case holds
ratios below, inside and above the clip range with advantages of both signs (by construction:
:math:`\log\pi_{old}` is the exact new log-density minus a drawn log-ratio), every ratio at least 10%
of :math:`\epsilon` away from a clip bound.

**Gradients** (``gaussian_ppo_loss.gradient_mean``, ``gaussian_ppo_loss.gradient_scale``), in both
scenarios, against

.. math::

    \frac{\partial\mathcal L}{\partial\mu_{k,i}} = g_k \frac{z_{k,i}}{\sigma_{k,i}},\quad
    \frac{\partial\mathcal L}{\partial s_{k,i}} = g_k (z_{k,i}^2 - 1),\quad
    g_k = \frac{\partial\mathcal L}{\partial\log\pi_\theta(a_k)} = \begin{cases}0 & \text{clipped}\\
    -r_k\hat A_k/n & \text{otherwise}\end{cases}

(summed over rows for a state-independent log-std); by autograd on torch and JAX, numerically on
NumPy. A log-std cut from the graph gives 0 and is named (openai/baselines #262).

A failure names what the loss matches: the stored clipped actions, the log-probability averaged over
dimensions, a log-density off by a constant (harmless only when the old log-probabilities come from
the same code), no clipping, another advantage normalisation, a flipped sign or a sum for the mean.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance._harness import Session, check_signature, numerics_of_their_own, resolve_backend
from refpg.conformance.gaussian import (LOG_2PI, Spec, _gaussian_moves, autograd, check_min_log_std,
                                        common_arguments, compare_rows, gaussian_case, gradient_outcome,
                                        log_prob_terms, natural_steps, numeric_gradients)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.losses import normalized_advantages, ppo_clip_grad_logp, ratio_clip_terms

__all__ = ["check_gaussian_ppo_loss", "GAUSSIAN_PPO_CONVENTIONS"]

KIND = "gaussian_ppo_loss"
#: Convention -> signature of the loss function.
GAUSSIAN_PPO_CONVENTIONS = {
    "refpg": "fn(mean, log_std, actions, logp_old, advantages, clip_eps) -> loss (scalar): the new log-probabilities "
             "from mean, log_std and the stored actions; advantages used as given",
    "sb3": "fn(mean_actions, log_std, actions, old_log_prob, advantages, clip_range) -> loss, as SB3's PPO.train: "
           "DiagGaussianDistribution log-probabilities, advantages normalised per minibatch (std ddof 1, + 1e-8, "
           "not for a minibatch of one)",
    "cleanrl": "fn(action_mean, action_logstd, action, logprob, advantages, clip_coef) -> pg_loss, as CleanRL's "
               "ppo_continuous_action (norm_adv: std ddof 1, + 1e-8); action_logstd (1, d)",
    "torchrl": "fn(loc, scale, action, action_log_prob, advantage, clip_epsilon) -> loss_objective, as TorchRL's "
               "ClipPPOLoss (normalize_advantage=False), scale the std per row",
}
_NAMES = {
    "refpg": ("mean", {"log_std": "log_std", "std": "std"}, "actions", "logp_old", "advantages", "clip_eps"),
    "sb3": ("mean_actions", {"log_std": "log_std", "std": "std"}, "actions", "old_log_prob", "advantages",
            "clip_range"),
    "cleanrl": ("action_mean", {"log_std": "action_logstd", "std": "action_std"}, "action", "logprob", "advantages",
                "clip_coef"),
    "torchrl": ("loc", {"log_std": "log_scale", "std": "scale"}, "action", "action_log_prob", "advantage",
                "clip_epsilon"),
}
_NORMALISATION = {"refpg": dict(normalize="none", ddof=1, adv_eps=1e-8),
                  "sb3": dict(normalize="batch", ddof=1, adv_eps=1e-8),
                  "cleanrl": dict(normalize="batch", ddof=1, adv_eps=1e-8),
                  "torchrl": dict(normalize="none", ddof=1, adv_eps=1e-8)}
NORMALIZE = ("none", "batch")
CLIPS = (0.2, 0.1, 0.3)
_MARGIN = 0.1
#: (n, d) drawn for backend="jax".
JAX_SHAPE = (6, 2)


def _normalised(adv: np.ndarray, opts: dict) -> np.ndarray:
    """The advantages the loss uses: per-minibatch normalisation where declared (not for n <= ddof)."""
    if opts["normalize"] != "batch" or adv.size <= opts["ddof"]:
        return adv
    return normalized_advantages(adv, ddof=opts["ddof"], eps=opts["adv_eps"])


def _log_ratio(u: np.ndarray, eps: float) -> np.ndarray:
    """log r with r = (1 + eps)^u for u >= 0, (1 - eps)^(-u) for u < 0: u = +-1 are the clip bounds."""
    return np.where(u >= 0, u * math.log1p(eps), -u * math.log1p(-eps))


def _case(seed, n, d, state_dependent, min_log_std, moved):
    case = gaussian_case(seed, n, d, state_dependent, min_log_std)
    rng = np.random.default_rng(seed + 1)
    adv = rng.choice([-1.0, 1.0], n) * np.where(rng.random(n) < 0.3, rng.integers(1, 4, n).astype(float),
                                                rng.uniform(0.2, 3.0, n))
    if n > 1 and np.all(adv == adv[0]):
        adv[0] += 1.0
    case["advantages"] = adv
    case["clip_eps"] = CLIPS[int(rng.integers(len(CLIPS)))]
    # A band per sample (assigned once the advantages' signs are known): -1 below, 0 inside, +1 above.
    case["band_u"] = rng.uniform(1.0 + _MARGIN, 3.0, n) if moved else np.zeros(n)
    case["inside_u"] = rng.uniform(-(1.0 - _MARGIN), 1.0 - _MARGIN, n)
    case["band_pick"] = rng.random(n)
    case["moved"] = moved
    return case


@functools.lru_cache(maxsize=None)
def _cases(jax, state_dependent, min_log_std, moved, min_n):
    sizes = st.just(JAX_SHAPE) if jax else st.tuples(st.integers(min_n, 6) if not moved else st.integers(3, 8),
                                                      st.integers(1, 3))
    return st.builds(lambda nd, seed: _case(seed, nd[0], nd[1], state_dependent, min_log_std, moved),
                     sizes, st.integers(0, 2**32 - 2))


def _bands(a_hat: np.ndarray, case: dict) -> np.ndarray:
    """The drawn u of each sample (`_log_ratio`): the first three samples clipped above with A > 0, clipped below
    with A < 0, inside; the rest at random. A sample whose normalised advantage is within 0.05 of 0 stays inside
    (its branch would hang on the rounding of A - mean(A))."""
    n = a_hat.size
    u = case["inside_u"].copy()
    if not case["moved"]:
        return np.zeros(n)
    pick = case["band_pick"]
    for k in range(n):
        if abs(a_hat[k]) < 0.05:
            continue
        clipped = k == 0 or (k >= 3 and pick[k] < 0.4)
        outside = k == 1 or (k >= 3 and 0.4 <= pick[k] < 0.6)
        if clipped:  # the clipped side: above the range for A > 0, below it for A < 0
            u[k] = case["band_u"][k] * np.sign(a_hat[k])
        elif outside:  # the unclipped side outside the range: below for A > 0, above for A < 0
            u[k] = -case["band_u"][k] * np.sign(a_hat[k])
    return u


def _moves(case, jax, shared, min_n=1):
    keys = ("mean", "log_std", "actions", "advantages", "band_u", "inside_u", "band_pick")
    out = []
    n = case["mean"].shape[0]
    if not jax and n > (3 if case["moved"] else min_n):
        for i in range(n):
            c = dict(case)
            for k in keys:
                c[k] = np.delete(case[k], i, 0)
            out.append(c)
    g = {k: case[k] for k in ("mean", "log_std", "actions")}
    for c in _gaussian_moves({**case, **g}, ("mean", "log_std", "actions"), jax, shared):
        if c["mean"].shape[0] == n:  # rows are removed above, with every per-sample array
            out.append(c)
    if not np.array_equal(np.round(case["advantages"]), case["advantages"]):
        out.append({**case, "advantages": np.where(np.round(case["advantages"]) == 0, np.sign(case["advantages"]),
                                                   np.round(case["advantages"]))})
    return out


@numerics_of_their_own
def check_gaussian_ppo_loss(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                            max_examples: int = 100, seed: int = 0, scale: str = None, state_dependent: bool = None,
                            normalize: str = None, ddof: int = None, adv_eps: float = None,
                            min_log_std: float = -12.0) -> Report:
    r"""Check PPO's clipped loss for a diagonal-Gaussian policy: ratios exactly 1 at the old policy, every band,
    and its gradient in the mean and the scale.

    .. math::
        \mathcal L = -\frac1n\sum_k \min\big(r_k\hat A_k,\ \mathrm{clip}(r_k, 1\pm\epsilon)\hat A_k\big),\qquad
        r_k = \exp\big(\log N(a_k; \mu_k, \sigma_k) - \log\pi_{old}(a_k)\big)

    Parameters
    ----------
    fn : callable
        ``fn(mean, log_std, actions, logp_old, advantages, clip_eps) -> loss`` (a scalar) in the declared
        convention (`GAUSSIAN_PPO_CONVENTIONS`).
    convention : {"refpg", "sb3", "cleanrl", "torchrl"}
        Names and defaults: sb3 and cleanrl normalise the advantages per minibatch (ddof 1, + 1e-8),
        refpg and torchrl do not; torchrl's scale is the per-row std.
    backend, dtype, max_examples, seed
        As in `refpg.conformance.check_gae`; NumPy derivatives are numerical.
    scale, state_dependent, min_log_std
        As in `refpg.conformance.gaussian.check_gaussian_log_prob`.
    normalize : {"none", "batch"} or None
        Per-minibatch advantage normalisation, :math:`(A - \bar A)/(\mathrm{std}_{ddof}(A) + adv\_eps)`,
        skipped for n <= ddof (SB3's rule for a minibatch of one); with "batch" every drawn minibatch has
        two samples or more. None: the convention's.
    ddof : int >= 0 or None
    adv_eps : float >= 0 or None

    Returns
    -------
    Report
        ``gaussian_ppo_loss.ratio_one_at_old``, ``gaussian_ppo_loss.value``,
        ``gaussian_ppo_loss.gradient_mean``, ``gaussian_ppo_loss.gradient_scale`` and the generic ids.

    Notes
    -----
    ``logp_old`` is the exact log-density of the stored action (rounded to the dtype), so the
    function's log-density must be exact too: one off by a constant (a missing :math:`-\tfrac12\log 2\pi`)
    is harmless in training, where the old log-probabilities come from the same code, and fails here
    with that named (`refpg.conformance.gaussian.check_gaussian_log_prob` checks it alone). The loss passes within
    :math:`tol\,(1 + \mathrm{mean}_k\, r_k |\hat A_k| (1 + S_k))`, S_k the k-th log-density's term magnitudes.

    References
    ----------
    [Schulman2017] Eq. (7); docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    max_examples, seed = common_arguments(fn, convention, GAUSSIAN_PPO_CONVENTIONS, max_examples, seed)
    spec = Spec(convention, scale, state_dependent)
    min_log_std = check_min_log_std(min_log_std)
    opts = dict(_NORMALISATION[convention])
    if normalize is not None:
        opts["normalize"] = check_choice(normalize, "normalize", NORMALIZE)
    if ddof is not None:
        opts["ddof"] = check_positive_int(ddof, "ddof", minimum=0)
    if adv_eps is not None:
        opts["adv_eps"] = check_real(adv_eps, "adv_eps", low=0.0)
    if opts["normalize"] == "batch" and opts["adv_eps"] == 0.0:
        raise InvalidInputError("adv_eps should be > 0 with normalize='batch' (advantages of equal values would "
                                "divide 0 by 0), actual adv_eps=0.0")

    def names_of(c):
        m, scales, *rest = _NAMES[c]
        return (m, scales[spec.scale], *rest)

    names = names_of(convention)
    warned = check_signature(fn, KIND, convention, {c: names_of(c) for c in _NAMES})
    report_opts = dict(**spec.options, **opts, min_log_std=min_log_std)
    p_mean, p_scale, p_act, p_old, p_adv, p_clip = names

    def args_of(m, s, a, old, adv, clip):
        return list(zip(names, (m, s, a, old, adv, float(clip))))

    def probe(be):
        sp, ls = spec.scale_arg(np.zeros((2, 1)), be)
        a = np.array([[0.5], [-0.5]])
        old = log_prob_terms(np.zeros((2, 1)), ls, a)[0].sum(-1)
        s = Session(KIND, fn, convention, be, max_examples=1, seed=seed, options=report_opts)
        return s.call(args_of(np.zeros((2, 1)), sp, a, be.round(old), np.array([1.0, -1.0]), 0.2))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session(KIND, fn, convention, be, max_examples=max_examples, seed=seed, options=report_opts,
                      warnings=warned + warn0)
    jax = be.name == "jax"
    ids = {k: f"{KIND}.{k}" for k in ("ratio_one_at_old", "value", "gradient_mean", "gradient_scale")}

    def reference(new, old, a_hat, eps):
        r = np.exp(new - old)
        terms = ratio_clip_terms(r, a_hat, eps)
        return -float(np.mean(terms.objective)), r

    def evaluate(case):
        m, a = be.round(case["mean"]), be.round(case["actions"])
        s_arg, ls = spec.scale_arg(case["log_std"], be)
        n, d = m.shape
        per_dim, z, row_scale = log_prob_terms(m, ls, a)
        new = per_dim.sum(-1)
        adv = be.round(case["advantages"])
        a_hat = _normalised(adv, opts)
        eps = case["clip_eps"]
        u = _bands(a_hat, case)
        old = be.round(new - _log_ratio(u, eps))
        loss, r = reference(new, old, a_hat, eps)
        scale = float(np.mean(r * np.abs(a_hat) * (1.0 + row_scale)))
        moved = case["moved"]
        inputs = {p_mean: m, p_scale: s_arg, p_act: a, p_old: old, p_adv: adv, p_clip: eps}
        if opts["normalize"] == "batch" and n > opts["ddof"]:
            inputs["advantages as normalised (what the loss uses)"] = a_hat
        inputs["ratio (exact)"] = r
        args = args_of(m, s_arg, a, old, adv, eps)
        call = session.call(args, grad_of=p_mean if be.name == "torch" else None)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return outcomes
        out, more = session.output_array(call.output, "loss", (), inputs)
        outcomes += more
        if out is None:
            return outcomes
        cid = ids["value"] if moved else ids["ratio_one_at_old"]
        why = ("at theta = theta_old (mean and scale those the stored actions were sampled from, logp_old their exact "
               "log-density) every ratio should be exactly 1 and the loss -mean(A)") if not moved else \
            "the clipped loss -mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) with ratios in every band"
        o = compare_rows(session, cid, "loss", out, np.array(loss), np.array(scale), inputs, why=why,
                         candidates=_candidates(m, ls, a, old, adv, a_hat, eps, new, loss, opts, d))
        if o is not None:
            outcomes.append(o)
        g = ppo_clip_grad_logp(new, old, a_hat, eps)
        want_m = g[:, None] * z * np.exp(-ls)
        want_s = spec.reduce(spec.scale_derivative(g[:, None] * (z * z - 1.0), ls))
        mag = (r * np.abs(a_hat) / n)[:, None]
        sc_m = mag * (np.abs(z) + 1.0) * np.exp(-ls) * (1.0 + row_scale[:, None])
        sc_s = spec.reduce(np.abs(spec.scale_derivative(mag * (z * z + 1.0) * (1.0 + row_scale[:, None]), ls)))
        detach = (f"{p_scale} does not reach the loss through autograd (detached, or computed outside the graph): a "
                  f"log-std that is never trained (openai/baselines #262)")
        pick = _loss_pick
        if be.differentiable:
            grads = autograd(session, args, call, (p_mean, p_scale), pick)
            for gid, name, want, sc in ((ids["gradient_mean"], p_mean, want_m, sc_m),
                                        (ids["gradient_scale"], p_scale, want_s, sc_s)):
                gr, problem = grads[name]
                o = gradient_outcome(session, gid, f"dloss/d{name}", gr, problem, want, sc, inputs,
                                     zero_means=detach if name == p_scale else f"{name} does not reach the loss")
                if o is not None:
                    outcomes.append(o)
        else:
            nat_m, nat_s = natural_steps(spec, z, ls)
            outcomes += numeric_gradients(session, args, ((ids["gradient_mean"], 0, want_m, sc_m, nat_m),
                                                          (ids["gradient_scale"], 1, want_s, sc_s, nat_s)), pick, step=2.0 ** -10)
        return outcomes

    session.declare(*session.generic_ids())
    session.declare(*ids.values(), tracked=True)
    if not be.differentiable:
        session.warn("backend='numpy': the derivatives in the mean and the scale are numerical (five-point central "
                     "differences of the loss), which cannot see a detach")
    half = max(1, max_examples // 2)
    shared = not spec.state_dependent
    # A minibatch that is normalised has at least two samples (CleanRL's std of one sample is NaN; SB3 skips it).
    min_n = 2 if opts["normalize"] == "batch" else 1
    for moved, cid in ((False, ids["ratio_one_at_old"]), (True, ids["value"])):
        session.run_scenario(_cases(jax, spec.state_dependent, min_log_std, moved, min_n), evaluate, (cid,),
                             moves=functools.partial(_moves, jax=jax, shared=shared, min_n=min_n), max_examples=half)
    return session.report()


def _loss_pick(out):
    """The loss itself (a scalar, or a one-entry array), in its own framework."""
    if hasattr(out, "reshape") and hasattr(out, "sum"):
        return out.sum()
    return float(np.sum(np.asarray(out)))


def _candidates(m, ls, a, old, adv, a_hat, eps, new, loss, opts, d):
    """(label, loss) of the misreadings of a Gaussian PPO loss."""
    with np.errstate(all="ignore"):
        def clipped_loss(new_lp, adv_used=a_hat, clip=True):
            r = np.exp(new_lp - old)
            obj = ratio_clip_terms(r, adv_used, eps).objective if clip else r * adv_used
            return np.array(-np.mean(obj))

        clipped_a = log_prob_terms(m, ls, np.clip(a, -1.0, 1.0))[0].sum(-1)
        out = [
            ("the loss with the new log-probabilities of the actions CLIPPED to [-1, 1] while logp_old belongs to the "
             "sampled ones: store and score the action as sampled, clip only what the environment receives (ray "
             "#8889, tianshou #312)", clipped_loss(clipped_a)),
            (f"the loss with the new log-probability averaged over the d = {d} dimensions instead of summed",
             clipped_loss(new / d)),
            ("the loss with a new log-density missing -log(2 pi)/2 per dimension: exact log-probabilities are "
             "expected (a constant offset cancels only if logp_old came from the same code)",
             clipped_loss(new + 0.5 * d * LOG_2PI)),
            ("the UNCLIPPED surrogate -mean(r A): the clip is missing", clipped_loss(new, clip=False)),
            ("-loss: the sign is flipped (the objective returned where the loss belongs)", np.array(-loss)),
            (f"n x the loss with n = {adv.size}: a sum where the mean belongs", np.array(adv.size * loss)),
        ]
        variants = [("none", None), ("batch", 1), ("batch", 0)]
        for mode, dd in variants:
            if mode == opts["normalize"] and (dd is None or dd == opts["ddof"]):
                continue
            if mode == "batch" and adv.size <= dd:
                continue
            alt = adv if mode == "none" else normalized_advantages(adv, ddof=dd, eps=1e-8)
            label = ("the loss WITHOUT advantage normalisation: declare normalize='none'" if mode == "none" else
                     f"the loss with advantages normalised per minibatch by std(ddof={dd}) + 1e-8: declare "
                     f"normalize='batch', ddof={dd}")
            out.append((label, clipped_loss(new, adv_used=alt)))
    return out

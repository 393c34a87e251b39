r"""`check_update` for a TRPO update: the policy step and the critic's steps, each against the reference.

`refpg.conformance.update.check_update` with ``algorithm="trpo"`` hands a
trace (or final parameters) here. A TRPO trace is ``{"advantages",
"returns", "steps"}`` as for PPO, its first step the policy step and the rest
the critic's minibatch steps:

- ``steps[0]``: "params" after the line search, and optionally "loss"
  (:math:`-L(\theta_{old})`, the negated surrogate), "grad"
  (:math:`-\nabla L` for the actor's tensors, zeros for the critic's) and
  "indices" (the batch, in any order);
- ``steps[1:]``: the critic's steps, each with "params" and any of
  "indices", "loss" (the value loss, coefficient 1), "grad", "grad_norm",
  "clipped_grad", teacher-forced like PPO's minibatch steps (each from the
  function's own parameters after the step before).

The policy step is judged by ``update.trpo_step`` (and ``update.loss``,
``update.gradient`` for its loss and gradient). The actor after it is
compared with :math:`\theta_{old} + c^k\beta s` (`refpg.algorithms.actor_critic_trpo`),
with a tolerance that admits any conjugate gradient meeting sb3-contrib's
stopping rule (squared residual below 1e-10: the direction is then known to
:math:`\|r\|/\lambda_{min}(F+\lambda I)`). When they differ the message says
which of these it is: the line search rejected every try where the reference
accepts one (or the reverse, or accepted another try), with the KL and the
improvement of each try; a step along the reference's direction with another
length (the coefficient ratio, named when it is a known slip: a missing square
root, the damping left out of the step size, a factor 2); or another direction
(its cosine with the natural direction, and with the plain gradient). A
decision the float tolerance cannot settle (a try's KL within tolerance of
``max_kl``, or its improvement within tolerance of 0) is accepted either way.
"""

from __future__ import annotations

import math

import numpy as np

from refpg.algorithms.actor_critic import (ACParams, batch_advantages, clip_gradient, epoch_minibatches,
                                           epoch_samples)
from refpg.algorithms.actor_critic_trpo import (RESIDUAL_TOL, actor_vector, batch_mean_kl, batch_surrogate,
                                                check_trpo_config, critic_loss, critic_optimizer_step,
                                                trpo_actor_critic_update, trpo_policy_step, with_actor_vector)
from refpg.conformance._harness import Outcome

__all__ = ["trpo_trace_outcomes", "trpo_final_outcomes", "TRPO_STEP_ID"]

#: The check id of the policy step (the line search's outcome: the actor after it).
TRPO_STEP_ID = "update.trpo_step"


# -- the policy step ------------------------------------------------------------------------------

class _PolicyJudge:
    """The reference's policy step with every try of the line search evaluated, and the tolerances."""

    def __init__(self, checker, batch, params0):
        cfg = checker.cfg
        self.cfg, self.be = cfg, checker.be
        self.params0 = params0
        self.flat, self.adv, self.ret = epoch_samples(batch, cfg)
        self.ill = _ill_conditioned(checker, batch, self.flat)
        self.ref = ref = trpo_policy_step(params0, self.flat, self.adv, cfg)
        self.theta0 = ref.theta_old
        P = self.theta0.size
        A = ref.fisher + ref.damping * np.eye(P)
        eig = np.linalg.eigvalsh(A)
        lam_min = float(eig[eig > 1e-12 * max(eig[-1], 1e-300)].min()) if np.any(eig > 0) else 0.0
        s_norm = float(np.linalg.norm(ref.direction))
        # Any CG meeting the stopping rule is within ||r|| / lambda_min of the solve, in either direction.
        slack = 2.0 * math.sqrt(RESIDUAL_TOL) / lam_min if lam_min > 0 else math.inf
        if not ref.cg.converged or ref.damping == 0.0:
            # A truncated CG keeps part of its start (sb3-contrib: 1e-4 N(0, I)); without damping F's null
            # directions keep it forever (they do not change the policy, but they do move the parameters).
            slack += 3e-4 * math.sqrt(P)
        self.rel = self.be.tol + (slack / s_norm if s_norm > 0 else math.inf)
        self.determined = self.rel < 0.5
        self.scale_L = float(np.mean(np.abs(self.adv))) + abs(ref.surrogate)
        # Every try the line search may make, evaluated whatever the reference decided.
        self.coefs = [cfg.line_search_shrinking_factor ** k for k in range(cfg.line_search_max_iter)]
        self.table = [self._evaluate(self.theta0 + c * ref.full_step) for c in self.coefs] if ref.quad > 0 else []

    def _evaluate(self, theta):
        """(improvement, KL in the declared direction, KL in the other) of a candidate actor."""
        p = with_actor_vector(self.params0, theta)
        L, _ = batch_surrogate(p, self.flat, self.adv)
        states = self.flat["states"]
        other = "new_old" if self.cfg.kl_direction == "old_new" else "old_new"
        return (L - self.ref.surrogate, batch_mean_kl(p, self.params0, states, self.cfg.kl_direction),
                batch_mean_kl(p, self.params0, states, other))

    def passes(self, improvement, kl) -> bool:
        return bool(kl < self.cfg.max_kl and improvement > 0.0)

    def borderline(self, improvement, kl) -> bool:
        """Whether float error in the step or the sums could flip the line search's test."""
        kl_tol = 3.0 * self.rel * kl + self.be.tol * self.cfg.max_kl
        imp_tol = 2.0 * self.rel * abs(improvement) + self.be.tol * self.scale_L
        return abs(kl - self.cfg.max_kl) <= kl_tol or abs(improvement) <= imp_tol

    def accepted_index(self):
        return next((k for k, (imp, kl, _) in enumerate(self.table) if self.passes(imp, kl)), None)

    def consistent(self, k_user) -> bool:
        """Whether accepting try `k_user` (None: none) is what the line search does, up to borderline tries."""
        last = len(self.table) if k_user is None else k_user
        for k in range(last):
            imp, kl, _ = self.table[k]
            if self.passes(imp, kl) and not self.borderline(imp, kl):
                return False
        if k_user is not None:
            imp, kl, _ = self.table[k_user]
            return self.passes(imp, kl) or self.borderline(imp, kl)
        return True

    def describe_tries(self, upto=None) -> str:
        cfg = self.cfg
        rows = []
        for k, (imp, kl, kl_other) in enumerate(self.table[:upto]):
            verdict = "accepted" if self.passes(imp, kl) else (
                "rejected: KL >= max_kl" if kl >= cfg.max_kl else "rejected: no improvement")
            rows.append(f"try {k} (coefficient {self.coefs[k]:.6g}): KL {kl:.6g}, improvement {imp:.6g}, {verdict}")
            if self.passes(imp, kl):
                break
        return "; ".join(rows)


def _ill_conditioned(checker, batch, flat) -> str | None:
    """Why the normalised advantages are not determined at the backend's precision, or None.

    Rounding in the function's GAE (about its dtype's epsilon times the advantages' scale, a few times over)
    is divided by std + eps in the normalisation: when every advantage is (nearly) equal, that quotient is
    rounding noise of order one, and so is the surrogate's gradient the policy step follows.
    """
    cfg = checker.cfg
    if cfg.normalize_advantage != "batch":
        return None
    adv_raw = batch_advantages(batch, cfg)[0]
    eps = float(np.finfo(checker.be.np_dtype).eps)
    scale = float(np.max(np.abs(batch.rewards), initial=0.0) + np.max(np.abs(batch.values), initial=0.0)
                  + np.max(np.abs(batch.next_values), initial=0.0)) / max(1e-12, 1.0 - cfg.gamma * cfg.gae_lambda)
    noise = 4.0 * eps * scale
    std = float(np.std(adv_raw, ddof=cfg.norm_ddof)) if adv_raw.size > cfg.norm_ddof else 0.0
    if noise / (std + cfg.norm_eps) <= 1e-2:
        return None
    return (f"the batch's advantages are nearly equal (std {std:.3g}): their rounding at {checker.be.dtype} "
            f"(about {noise:.2g}) divided by std + norm_eps makes the normalised advantages, and so the policy "
            f"step, rounding noise")


def _policy_outcomes(checker, judge, step, inputs, where) -> Outcome | None:
    """Loss, gradient and params of the policy step; the first Outcome, or None."""
    ref, cfg, s = judge.ref, judge.cfg, checker.s
    if judge.ill is not None:
        for cid in ("update.loss", "update.gradient", TRPO_STEP_ID):
            s.not_run_because(cid, f"on every batch drawn, {judge.ill}")
        return _critic_kept(checker, judge, step["params"], inputs, where)
    if "loss" in step:
        o = checker._cmp("update.loss", "loss", step["loss"], -ref.surrogate, inputs, scale=judge.scale_L,
                         why=f"{where}: the loss of the policy step is the negated surrogate -mean(ratio x A) "
                             f"at the parameters before it (advantages {_adv_words(cfg)})")
        if o is not None:
            return o
    if "grad" in step:
        want = with_actor_vector(judge.params0, -ref.gradient)
        for name in judge.params0.present():
            expected = getattr(want, name) if name.startswith("actor") else np.zeros_like(getattr(want, name))
            o = checker._cmp("update.gradient", f"d loss / d {name}", getattr(step["grad"], name), expected, inputs,
                             why=f"{where}: the gradient of -mean(ratio x A) before the step"
                                 + ("" if name.startswith("actor") else "; the critic's tensors are not part of "
                                                                         "the policy step"))
            if o is not None:
                return o
    after = step["params"]
    s.ran(TRPO_STEP_ID)
    return _critic_kept(checker, judge, after, inputs, where) or \
        _judge_actor(checker, judge, actor_vector(after), inputs, where)


def _critic_kept(checker, judge, after, inputs, where) -> Outcome | None:
    """The policy step leaves the critic exactly as it was."""
    for name in judge.params0.critic_names():
        p0, got = getattr(judge.params0, name), getattr(after, name)
        allowed = 8 * np.finfo(checker.be.np_dtype).eps * (1.0 + np.abs(p0))
        if np.any(np.abs(got - p0) > allowed):
            checker.s.ran(TRPO_STEP_ID)
            return Outcome(TRPO_STEP_ID, f"{where}: the policy step should leave the critic unchanged, actual "
                                         f"params[{name!r}] moved from {p0} to {got}: is the critic updated "
                                         f"before the policy step?", inputs, expected=p0, actual=got)
    return None


def _adv_words(cfg) -> str:
    return ("normalised over the batch, (A - mean) / (std + eps)" if cfg.normalize_advantage == "batch"
            else "as GAE gives them")


def _judge_actor(checker, judge, theta_user, inputs, where) -> Outcome | None:
    """Compare the actor after the policy step with the line search's outcome and say how it differs."""
    ref, cfg = judge.ref, judge.cfg
    eps = np.finfo(checker.be.np_dtype).eps
    theta0 = judge.theta0
    du = theta_user - theta0
    shown = {**inputs, "actor after the step (flat: actor_w row-major, then actor_b)": theta_user,
             "actor before": theta0}
    moved = bool(np.any(np.abs(du) > 8 * eps * (1.0 + np.abs(theta0))))
    k_ref = judge.accepted_index()
    if not judge.determined:
        # The stopping rule does not pin the direction down (a surrogate gradient near zero): judge the step by
        # the line search's own test only.
        if not moved:
            return None
        p = with_actor_vector(judge.params0, theta_user)
        L, _ = batch_surrogate(p, judge.flat, judge.adv)
        kl = batch_mean_kl(p, judge.params0, judge.flat["states"], cfg.kl_direction)
        imp = L - ref.surrogate
        if judge.passes(imp, kl) or judge.borderline(imp, kl):
            return None
        return Outcome(TRPO_STEP_ID, f"{where}: the surrogate's gradient is too small for the conjugate gradient's "
                                     f"stopping rule to fix a direction (|g| = {np.linalg.norm(ref.gradient):.3g}), "
                                     f"but any step taken should pass the line search's test; actual a step with "
                                     f"KL {kl:.6g} (max_kl {cfg.max_kl:g}) and improvement {imp:.6g}", shown)
    if not moved:
        if judge.consistent(None):
            return None
        k = k_ref
        return Outcome(TRPO_STEP_ID,
                       f"{where}: the line search rejected every try and kept the actor, but try {k} "
                       f"(coefficient {judge.coefs[k]:.6g}) should be accepted: its KL {judge.table[k][1]:.6g} < "
                       f"max_kl {cfg.max_kl:g} and its improvement {judge.table[k][0]:.6g} > 0. Tries: "
                       f"{judge.describe_tries()}." + _direction_hint(judge, None),
                       shown, expected=ref.theta, actual=theta_user)
    D = ref.full_step
    Dn2 = float(D @ D)
    if Dn2 == 0.0:
        return Outcome(TRPO_STEP_ID, f"{where}: the surrogate's gradient is zero, so the actor should stay where "
                                     f"it is, actual it moved by {np.linalg.norm(du):.6g}", shown,
                       expected=theta0, actual=theta_user)
    c_user = float(du @ D) / Dn2
    perp = float(np.linalg.norm(du - c_user * D))
    along = abs(c_user) * math.sqrt(Dn2)
    if c_user <= 0 or perp > judge.rel * along + 8 * eps * (1.0 + float(np.linalg.norm(theta0))):
        cos = float(du @ D) / (float(np.linalg.norm(du)) * math.sqrt(Dn2))
        g = ref.gradient
        cos_g = float(du @ g) / (float(np.linalg.norm(du)) * float(np.linalg.norm(g)))
        hint = ""
        if cos_g > 1.0 - 10 * judge.rel ** 2 - 1e-12:
            hint = (" The step is along the plain gradient g (cosine "
                    f"{cos_g:.8f}): the Fisher matrix is missing or zero, e.g. the KL's Hessian taken between the "
                    f"policy and an old policy that shares its graph (not detached), which is identically zero")
        elif cos < 0:
            hint = " The step goes against the natural direction: is the surrogate's sign flipped?"
        return Outcome(TRPO_STEP_ID,
                       f"{where}: the actor should move along the natural direction s = CG((F + damping I), g), "
                       f"actual along another direction: cosine {cos:.8f} with s (tolerance: sine "
                       f"{judge.rel:.3g}), cosine {cos_g:.8f} with the plain gradient g.{hint}",
                       shown, expected=ref.theta, actual=theta_user)
    # Along the reference's direction: which coefficient?
    tol_c = 2.0 * judge.rel
    k_user = next((k for k, c in enumerate(judge.coefs) if abs(c_user - c) <= tol_c * c), None)
    if k_user is not None:
        if judge.consistent(k_user):
            return None
        tries = judge.describe_tries(max(k_user, -1 if k_ref is None else k_ref) + 1)
        extra = ""
        if k_ref is None or k_user < k_ref:
            imp, kl, _ = judge.table[k_user]
            why = (f"its KL {kl:.6g} is not below max_kl {cfg.max_kl:g}" if kl >= cfg.max_kl else
                   f"its improvement {imp:.6g} is not positive")
            what = (f"the line search accepted try {k_user} (coefficient {judge.coefs[k_user]:.6g}), which should be "
                    f"rejected: {why}" + ("; no try should be accepted" if k_ref is None else
                                          f"; try {k_ref} is the first to pass"))
            if kl >= cfg.max_kl and imp > 0:
                extra = (" A line search that tests the improvement only, not the KL "
                         "(https://github.com/joschu/modular_rl/issues/29)?")
        else:
            imp, kl, _ = judge.table[k_ref]
            what = (f"the line search rejected try {k_ref} (coefficient {judge.coefs[k_ref]:.6g}) with KL {kl:.6g} "
                    f"< max_kl {cfg.max_kl:g} and improvement {imp:.6g} > 0, and accepted try {k_user} (coefficient "
                    f"{judge.coefs[k_user]:.6g})")
        return Outcome(TRPO_STEP_ID, f"{where}: {what}. Tries: {tries}.{extra}" + _direction_hint(judge, k_user),
                       shown, expected=ref.theta, actual=theta_user)
    c_ref = judge.coefs[k_ref] if k_ref is not None else 1.0
    ratio = c_user / c_ref
    hint = _length_hint(judge, c_user, tol_c)
    return Outcome(TRPO_STEP_ID,
                   f"{where}: the actor's step along the natural direction s should be "
                   + (f"{c_ref:.6g} x the full step beta s (the coefficient the line search accepts)"
                      if k_ref is not None else "zero (no try should be accepted)")
                   + f", actual {c_user:.6g} x beta s (beta = sqrt(2 max_kl / s^T (F + damping I) s) = "
                   f"{ref.step_size:.6g}): a ratio of {ratio:.6g}." + hint,
                   shown, expected=ref.theta, actual=theta_user)


def _direction_hint(judge, k_user) -> str:
    """Name the declared KL direction as the reason when the other direction explains the user's decision."""
    other = "new_old" if judge.cfg.kl_direction == "old_new" else "old_new"
    words = {"old_new": "KL(pi_old || pi), as the TRPO paper", "new_old": "KL(pi || pi_old), as sb3-contrib"}
    last = len(judge.table) if k_user is None else k_user
    cfg = judge.cfg
    for k in range(last):
        imp, _, kl_o = judge.table[k]
        if kl_o < cfg.max_kl and imp > 0:
            return ""
    if k_user is not None:
        imp, _, kl_o = judge.table[k_user]
        if not (kl_o < cfg.max_kl and imp > 0):
            return ""
    return (f" With the KL in the other direction, {words[other]}, the line search decides as the function did: "
            f"if that is the library's constraint, declare kl_direction={other!r}.")


def _length_hint(judge, c_user, tol_c) -> str:
    """Name a known slip in the step size whose factor explains the user's coefficient, if one does."""
    ref = judge.ref
    s = ref.direction
    sFs = float(s @ ref.fisher @ s)
    beta = ref.step_size
    candidates = [
        (beta, "the step size without its square root, 2 max_kl / s^T A s instead of sqrt(2 max_kl / s^T A s) "
               "(https://github.com/mjacar/pytorch-trpo/issues/20, "
               "https://github.com/ikostrikov/pytorch-trpo/issues/21)"),
        (1.0 / beta, "the conjugate-gradient solution s used as the step, without the scale beta"),
        (math.sqrt(ref.quad / sFs) if sFs > 0 else math.inf,
         "the damping left out of the step size (s^T F s where CG solved with F + damping I)"),
        (1.0 / math.sqrt(2.0), "max_kl where 2 max_kl belongs in the step size"),
        (math.sqrt(2.0), "2 max_kl where max_kl belongs (or the 1/2 of the quadratic model dropped)"),
    ]
    for factor, words in candidates:
        if not math.isfinite(factor) or abs(factor - 1.0) <= tol_c:
            continue
        for k, c in enumerate(judge.coefs):
            if abs(c_user - factor * c) <= tol_c * factor * c:
                at = "" if k == 0 else f" (at line-search try {k})"
                return f" The ratio is {factor:.6g}{at}: {words}?"
    return ""


# -- the critic's steps ---------------------------------------------------------------------------

def _critic_step(checker, step, prev, samples, ret_mb, state, where, inputs):
    """One critic step, teacher-forced from `prev`; the optimiser state after it, or the first Outcome."""
    cfg, be = checker.cfg, checker.be
    terms = critic_loss(prev, samples, ret_mb, cfg)
    if "loss" in step:
        o = checker._cmp("update.loss", "loss", step["loss"], terms.loss, inputs, scale=abs(terms.loss),
                         why=f"{where}: the critic's loss is the {cfg.value_loss} value loss with coefficient 1, "
                             f"mean over the minibatch, at the parameters before the step")
        if o is not None:
            return o
    if "grad" in step:
        for name in prev.present():
            o = checker._cmp("update.gradient", f"d loss / d {name}", getattr(step["grad"], name),
                             getattr(terms.grad, name), inputs,
                             why=f"{where}: the gradient of the critic's loss before clipping"
                                 + ("; the actor's tensors get none" if name.startswith("actor") else ""))
            if o is not None:
                return o
        g_in = step["grad"]
    else:
        g_in = terms.grad
    clipped, norm = clip_gradient(g_in, cfg)
    if "grad_norm" in step:
        o = checker._cmp("update.grad_norm", "gradient norm", step["grad_norm"], norm, inputs,
                         why=f"{where}: the global 2-norm of the critic's gradient, before clipping")
        if o is not None:
            return o
    if "clipped_grad" in step:
        for name in prev.present():
            o = checker._cmp("update.grad_norm", f"clipped d loss / d {name}", getattr(step["clipped_grad"], name),
                             getattr(clipped, name), inputs,
                             why=f"{where}: the gradient after clipping ("
                                 + ("unchanged, max_grad_norm=None" if cfg.max_grad_norm is None else
                                    f"to global norm {cfg.max_grad_norm:g}") + ")")
            if o is not None:
                return o
        g_opt = step["clipped_grad"]
    else:
        g_opt = clipped
    expected, new_state = critic_optimizer_step(prev, g_opt, state, cfg)
    localised = "grad" in step or "clipped_grad" in step
    cid = "update.optimizer_step" if localised else "update.params"
    checker.s.ran(cid)
    after = step["params"]
    for name in prev.present():
        p0, want, got = getattr(prev, name), getattr(expected, name), getattr(after, name)
        delta = want - p0
        allowed = be.tol * float(np.max(np.abs(delta), initial=0.0)) \
            + 8 * np.finfo(be.np_dtype).eps * (1.0 + np.abs(p0))
        err = np.abs(got - want)
        if np.any(err > allowed):
            i = tuple(int(x) for x in np.unravel_index(int(np.argmax(err - allowed)), err.shape)) if err.ndim else ()
            label = f"{name}[{', '.join(map(str, i))}]" if i else name
            if name.startswith("actor"):
                why = ("the critic's steps should leave the actor as the policy step left it (sb3-contrib drops "
                       "the actor's gradients before optimizer.step())")
            else:
                lr = cfg.lr if cfg.critic_lr is None else cfg.critic_lr
                why = (f"the step of {cfg.optimizer} ({cfg.optimizer_convention}), lr={lr:g}"
                       + (f", eps={cfg.eps:g}" if cfg.optimizer != "sgd" else "")
                       + (f", betas={cfg.betas}" if cfg.optimizer == "adam" else "")
                       + (" from the function's own gradient" if localised else
                          " from the reference gradient (the trace has no 'grad': add it to tell a wrong gradient "
                          "from a wrong optimiser step)")
                       + "; the critic's optimiser state counts the critic's steps only")
            return Outcome(cid, f"{where}: {label} after the step should be {want[i] + 0.0:.10g}, actual "
                                f"{got[i] + 0.0:.10g} (step {delta[i] + 0.0:.6g} expected, {got[i] - p0[i] + 0.0:.6g} "
                                f"taken); {why}", inputs, expected=want, actual=got, where=i or None)
    return new_state


# -- the trace ------------------------------------------------------------------------------------

def trpo_trace_outcomes(checker, out, batch, params0, inputs) -> list:
    """The outcomes of one TRPO trace (module docstring): the first divergence, or none.

    Parameters
    ----------
    checker : refpg.conformance.update._Checker
        Its session, config (``algorithm="trpo"``), backend and shape.
    out : dict
        The trace as `refpg.conformance.update` read it ("steps": dicts of NumPy floats and `ACParams`).
    batch : UpdateBatch
    params0 : ACParams
    inputs : dict
        What a counterexample shows.
    """
    cfg, s, M = checker.cfg, checker.s, checker.M
    check_trpo_config(cfg)
    s.declare(TRPO_STEP_ID, tracked=True)
    adv2, ret2 = batch_advantages(batch, cfg)
    scale_adv = float(np.max(np.abs(batch.rewards), initial=0.0) + np.max(np.abs(batch.values), initial=0.0)
                      ) / max(1e-12, 1.0 - cfg.gamma * cfg.gae_lambda * 0.999999)
    for key, cid, ref, why in (
            ("advantages", "update.advantages", adv2,
             f"GAE(gamma={cfg.gamma}, lambda={cfg.gae_lambda}) with terminated steps not bootstrapped and truncated "
             f"ones bootstrapped from next_values, from the values the batch was collected with (before any "
             f"normalisation, and before the critic is fitted)"),
            ("returns", "update.returns", ret2,
             "the value targets are advantages + values (GAE before normalisation)")):
        if key in out:
            o = checker._cmp(cid, key, out[key], ref, inputs, scale=scale_adv, why=why)
            if o is not None:
                return [o]
        else:
            s.not_run_because(cid, f"the trace has no {key!r}", by_design=True)
    steps = out["steps"]
    spe = cfg.steps_per_epoch(M)
    total = 1 + cfg.n_critic_updates * spe
    for key, cid in (("loss", "update.loss"), ("grad", "update.gradient")):
        if steps and not any(key in st_ for st_ in steps):
            s.not_run_because(cid, f"the trace's steps have no {key!r}", by_design=True)
    if cfg.max_grad_norm is None and steps and not any("grad_norm" in st_ for st_ in steps[1:]):
        s.not_run_because("update.grad_norm", "the critic's gradient is not clipped (max_grad_norm=None) and the "
                                              "trace has no 'grad_norm'", by_design=True)
    s.ran("update.step_count")
    if not steps:
        return [Outcome("update.step_count", f"the update should take {total} steps: the policy step, then "
                                             f"{cfg.n_critic_updates} critic epochs of {spe} minibatches; actual none",
                        inputs, expected=total, actual=0)]
    judge = _PolicyJudge(checker, batch, params0)
    first = steps[0]
    where = f"the policy step (step 1 of {total})"
    if "indices" in first:
        s.ran("update.minibatch_order")
        idx = first["indices"]
        if idx.size != M or not np.array_equal(np.sort(idx), np.arange(M)):
            return [Outcome("update.minibatch_order",
                            f"{where}: the policy step should use the whole batch, every sample once, actual "
                            f"{idx.size} indices {idx.tolist()}: is the first step a critic minibatch step (the "
                            f"critic fitted before the policy step)?", {**inputs, "indices": idx})]
    o = _policy_outcomes(checker, judge, first, {**inputs, "step": where}, where)
    if o is not None:
        return [o]
    return _critic_outcomes(checker, steps, judge, inputs, spe, total)


def _critic_outcomes(checker, steps, judge, inputs, spe, total) -> list:
    cfg, s = checker.cfg, checker.s
    critic = steps[1:]
    n_epochs = cfg.n_critic_updates
    if spe == 1:
        s.not_run_because("update.minibatch_order", "one minibatch per critic epoch: the order of the samples "
                                                    "does not change the step", by_design=True)
    order = checker._expected_order(steps)
    recorded = checker._recorded_minibatches(critic, spe, inputs) if critic else None
    if isinstance(recorded, Outcome):
        return [recorded]
    if recorded is not None and spe > 1 and checker.reshuffle:
        perms = [np.concatenate([ix for (e_, _, ix) in recorded if e_ == e]) for e in range(len(recorded) // spe)]
        for e in range(1, len(perms)):
            if np.array_equal(perms[e], perms[e - 1]):
                return [Outcome("update.minibatch_order",
                                f"critic epoch {e} should visit the samples in a fresh random order, actual the same "
                                f"permutation as critic epoch {e - 1} (pass reshuffle=False if that is the design)",
                                {**inputs, "indices of the epoch": perms[e]})]
    if order is not None:
        minibatches = [(e, j, idx) for e in range(n_epochs) for j, idx in enumerate(epoch_minibatches(order[e], cfg))]
        if recorded is not None and checker.order is not None:
            for k, ((e, j, want), (_, _, got)) in enumerate(zip(minibatches, recorded)):
                if not np.array_equal(np.sort(got), np.sort(want)):
                    return [Outcome("update.minibatch_order",
                                    f"{_where(k, e, j, total)}: the trace's indices should be the minibatch of the "
                                    f"order passed, actual other samples", {**inputs, "order": order[e]},
                                    expected=want, actual=got)]
    elif recorded is not None:
        minibatches = recorded
    else:
        if critic or total > 1:
            for cid in ("update.loss", "update.gradient", "update.grad_norm", "update.optimizer_step"):
                s.not_run_because(cid, "the critic's epochs shuffle and neither order= nor the trace's 'indices' say "
                                       "which samples each critic step used")
        if len(steps) != total:
            return [Outcome("update.step_count", f"the update should take {total} steps (the policy step, then "
                                                 f"{n_epochs} critic epochs of {spe} minibatches), actual {len(steps)}",
                            inputs, expected=total, actual=len(steps))]
        return []
    if len(steps) != total:
        return [Outcome("update.step_count", f"the update should take {total} steps (the policy step, then "
                                             f"{n_epochs} critic epochs of {spe} minibatches), actual {len(steps)}",
                        inputs, expected=total, actual=len(steps))]
    prev, state = steps[0]["params"], None
    for k, (e, j, idx) in enumerate(minibatches):
        where = _where(k, e, j, total)
        samples = {key: v[idx] for key, v in judge.flat.items()}
        step_inputs = {**inputs, "step": where, "indices": idx,
                       **{f"before the step: params[{n!r}]": getattr(prev, n) for n in prev.present()}}
        o = _critic_step(checker, critic[k], prev, samples, judge.ret[idx], state, where, step_inputs)
        if isinstance(o, Outcome):
            return [o]
        state = o
        prev = critic[k]["params"]
    return []


def _where(k, e, j, total) -> str:
    return f"critic epoch {e}, minibatch {j} (step {k + 2} of {total})"


def trpo_final_outcomes(checker, final: ACParams, batch, params0, inputs, order) -> list:
    """A function that returns only the final parameters.

    The actor is the policy step's result (the critic's steps leave it alone) and is judged as
    ``update.trpo_step``; the critic is compared with the reference's critic steps (``update.final_params``),
    which needs `order` (None: not judged) when the critic's epochs shuffle.
    """
    cfg, s = checker.cfg, checker.s
    check_trpo_config(cfg)
    s.declare(TRPO_STEP_ID, tracked=True)
    for cid in ("update.advantages", "update.returns", "update.loss", "update.gradient", "update.grad_norm",
                "update.optimizer_step", "update.minibatch_order", "update.step_count", "update.params"):
        checker._skip(cid, "the function returns only the final parameters (a trace of its steps would be "
                           "compared component by component)", by_design=True)
    judge = _PolicyJudge(checker, batch, params0)
    where = "the policy step (read from the final parameters: the critic's steps do not move the actor)"
    if judge.ill is None:
        s.ran(TRPO_STEP_ID)
        o = _judge_actor(checker, judge, actor_vector(final), inputs, where)
        if o is not None:
            return [o]
    else:
        s.not_run_because(TRPO_STEP_ID, f"on every batch drawn, {judge.ill}")
    if order is None:
        checker._skip("update.final_params", "the function returns only the final parameters and the critic's "
                                             "epochs shuffle: pass order= (an (n_critic_updates, M) array of "
                                             "permutations), or return a trace with each step's 'indices'")
        return []
    ref = trpo_actor_critic_update(batch, params0, cfg, order=order)
    n = max(len(ref.steps), 1)
    for name in params0.critic_names():
        o = checker._cmp("update.final_params", f"params[{name!r}] after the update", getattr(final, name),
                         getattr(ref.params, name), inputs, scale=1.0 * n,
                         why=f"only the final parameters were returned, after {len(ref.steps) - 1} critic steps: "
                             f"return a trace of the steps to learn which step and component diverge")
        if o is not None:
            return [o]
    return []

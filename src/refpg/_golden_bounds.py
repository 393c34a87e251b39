"""Forward-error bounds behind every golden field's tolerance.

A golden value is a float64 computation of an exact quantity. Two correct
implementations (or one on two CPUs, BLAS kernels or thread counts) each land
within some forward error B of the exact value, so they agree within 2 B.
Each field's tolerance is therefore ``atol = 2 B`` (rounded up to two
significant digits) with ``rtol = 0``: a normwise test, since a relative test
per entry means nothing for entries that cancel to near zero.

B comes from first-order rounding-error analysis (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., 2002), with u = 2^-53 the unit
roundoff, in three layers:

* **The Bellman systems.** V solves ``M V = r_pi`` and d solves
  ``M^T d = (1 - gamma) rho`` with ``M = I - gamma P_pi``. M is diagonally
  dominant by rows, so ``||M||_inf <= 1 + gamma``, ``||M^-1||_inf <= 1/(1 - gamma)``
  (Neumann series), and ``kappa_B = (1 + gamma)/(1 - gamma)`` bounds the
  condition number of both systems (inf-norm for V, 1-norm for d) without
  computing anything. LU with partial pivoting has growth factor <= 2 on it,
  so forming P_pi and r_pi and solving has normwise backward error at most
  ``c_B u`` with ``c_B = 6 S + 2 A + 4`` (Higham Thm 9.4, 9.9); pi's own
  relative error e_pi (from the logits) perturbs P_pi and r_pi further. So
  about ``eta_B = kappa_B c_B u`` (plus e_pi's share) bounds the relative
  forward error of V and d (Higham Thm 7.2). Q, A, J, the policy gradient and
  the Fisher matrix inherit it through the explicit formulas that build them.
* **The solvers.** The log-linear natural gradient solves ``F x = g`` with
  n <= 64 parameters: its bound is ``||F^+|| (||dF|| ||x|| + ||dg||)`` plus the
  solve's own ``3 n u kappa(F)``. TRPO's direction is conjugate gradient on
  ``(F + lambda I) x = g`` run until its residual test holds; since F is
  positive semidefinite, ``lambda_min(F + lambda I) >= lambda`` and the error
  is at most (residual + perturbation of F and g)/lambda: a CG residual and a
  damping, not a truncated iterate whose digits no conditioning supports.
* **What follows.** beta, the line search's surrogate improvements and KLs,
  theta_new, PPO's iterates (with the Hessian of the clipped surrogate as the
  amplification per SGD step) and the batch quantities (sums and recursions
  of length T, with ``gamma_n = n u`` terms). Discontinuous outputs (TRPO's
  accepted flags, PPO's clipping pattern) are checked to sit further from
  their thresholds than their error bound; a case where they do not is refused
  at generation (`GoldenMarginError`), since no tolerance could make it portable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refpg.errors import RefpgError

U = 2.0 ** -53


class GoldenMarginError(RefpgError):
    """A golden case whose discrete outputs (flags, clip pattern) are not determined by its error bounds."""


def tolerance(bound: float, basis: str) -> dict:
    """``{"atol": 2 B, "rtol": 0, "bound": B, "basis": basis}``, B = `bound` rounded up to two digits."""
    if not (math.isfinite(bound) and bound >= 0.0):
        raise ValueError(f"an error bound should be finite and >= 0, actual {bound!r} ({basis})")
    b = _round_up(bound)
    return {"atol": _round_up(2.0 * b), "rtol": 0.0, "bound": b, "basis": basis}


def _round_up(x: float) -> float:
    if x == 0.0:
        return 0.0
    e = math.floor(math.log10(x)) - 1
    return float(f"{math.ceil(x / 10.0 ** e * (1 - 1e-12))}e{e}")


def _softmax_errors(policy, theta, features, A) -> tuple:
    """(relative error of pi, absolute error of log pi) at theta: 2 e_z + (A+4) u, plus u |log pi|.

    e_z bounds the logits' error: subtracting the max (2 u |z|), after the k-term dot product
    f . theta for log-linear (gamma_k sum |f theta|).
    """
    theta = np.asarray(theta, dtype=np.float64)
    if features is None:
        k, z_mag = 0, _inf(theta)
    else:
        k, z_mag = features.shape[-1], float(np.max(np.abs(features) @ np.abs(theta)))
    logpi = policy.log_probs(theta)
    A = logpi.shape[-1] if A is None else A
    e_z = (k + 2) * U * z_mag
    e_pi = 2.0 * e_z + (A + 4) * U
    return e_pi, e_pi + U * _inf(np.where(np.isfinite(logpi), logpi, 0.0))


def _norm2(x) -> float:
    return float(np.linalg.norm(np.ravel(x)))


def _inf(x) -> float:
    return float(np.max(np.abs(x), initial=0.0))


@dataclass(frozen=True)
class ErrorModel:
    """The first-order error bounds of one case's exact quantities (see the module docstring).

    Every ``e_*`` is an absolute bound on the inf-norm error of that quantity, except ``e_d``
    (1-norm) and ``e_pi`` (relative, entry by entry, which also bounds the absolute error as pi <= 1).
    """

    policy: object
    features: object      # (S, A, k) for log-linear, None for tabular softmax
    n_params: int
    n_sum: int            # length of the longest sum in a Fisher-vector product: S + A + k + 2
    h: float              # 1 / (1 - gamma)
    kappa_B: float
    c_B: float
    eta_B: float
    V_max: float
    A_max: float
    G: float              # max inf-norm of grad log pi(a|s)
    G2: float             # max 2-norm of grad log pi(a|s)
    e_V: float
    e_d: float
    e_J: float
    e_Q: float
    e_A: float
    e_pi: float
    e_logpi: float
    e_g: float
    e_F: float

    @classmethod
    def build(cls, mdp, policy, theta, ev, features=None) -> "ErrorModel":
        S, A, gamma = mdp.n_states, mdp.n_actions, mdp.gamma
        h = 1.0 / (1.0 - gamma)
        kappa_B = (1.0 + gamma) / (1.0 - gamma)
        c_B = 6.0 * S + 2.0 * A + 4.0
        x = kappa_B * c_B * U
        eta_B = x / (1.0 - x)
        if features is None:      # tabular softmax: logits = theta, grad log pi = e_a - pi_s
            k, G, G2 = 0, 1.0, math.sqrt(2.0)
        else:                     # log-linear: logits = f . theta, grad log pi = f_sa - E_pi f_s
            k = features.shape[-1]
            G = 2.0 * _inf(features)
            G2 = 2.0 * float(np.max(np.linalg.norm(features, axis=-1)))
        e_pi, e_logpi = _softmax_errors(policy, theta, features, A)
        r_max, V_max = _inf(mdp.r), _inf(ev.V)
        # V: ||dV|| <= ||M^-1|| (||dM|| ||V|| + ||d r_pi||) / (1 - x) with ||M^-1||_inf <= h; dM holds
        # the LU's backward error and gamma dP_pi, whose rows sum to at most e_pi (pi's relative error).
        e_V = h * (((1.0 + gamma) * c_B * U + gamma * e_pi) * V_max + ((A + 2) * U + e_pi) * r_max) / (1.0 - x)
        # d: ||dd||_1 <= ||M^-T||_1 ||dM^T d||_1 <= h ((1+gamma) c_B u + gamma e_pi) ||d||_1, ||d||_1 = 1.
        e_d = h * ((1.0 + gamma) * c_B * U + gamma * e_pi) / (1.0 - x)
        e_Q = gamma * e_V + (S + 2) * U * (r_max + gamma * V_max)
        e_A = e_Q + e_V + 2.0 * U * (r_max + 2.0 * V_max)
        A_max = _inf(ev.A)
        # grad J = sum_sa w_sa grad log pi(a|s), w = h d pi A: sum |dw| <= h (e_d + A e_pi + 4u) A_max + h e_A.
        sum_dw = h * ((e_d + A * e_pi + 4.0 * U) * A_max + e_A)
        e_g = G * sum_dw + S * A * U * G * h * A_max
        e_F = G * G * (e_d + 3.0 * A * e_pi + (S * A + 4) * U)
        return cls(policy=policy, features=features, n_params=policy.n_params, n_sum=S + A + k + 2, h=h,
                   kappa_B=kappa_B, c_B=c_B, eta_B=eta_B, V_max=V_max, A_max=A_max, G=G, G2=G2, e_V=e_V,
                   e_d=e_d, e_J=e_V + S * U * V_max, e_Q=e_Q, e_A=e_A, e_pi=e_pi, e_logpi=e_logpi, e_g=e_g,
                   e_F=e_F)

    def logpi_error(self, theta) -> float:
        """Bound on the absolute error of log pi_theta, at any theta (the line search's, PPO's, theta_kl)."""
        return _softmax_errors(self.policy, theta, self.features, None)[1]

    # ------------------------------------------------------------ exact fields

    def bellman_basis(self) -> str:
        return (f"kappa_B = (1+gamma)/(1-gamma) = {self.kappa_B:.4g}, c_B = 6S+2A+4 = {self.c_B:g}, "
                f"eta_B = kappa_B c_B u = {self.eta_B:.3g}, e_pi = {self.e_pi:.3g} (pi's relative error)")

    def exact_tolerances(self, natural_gradient_bound: tuple) -> dict:
        b = self.bellman_basis()
        nb, nbasis = natural_gradient_bound
        return {
            "V": tolerance(self.e_V, f"Bellman solve: h (((1+gamma) c_B u + gamma e_pi) ||V|| + "
                                     f"((A+2) u + e_pi) ||r||); {b}"),
            "d": tolerance(self.e_d, f"occupancy solve: h ((1+gamma) c_B u + gamma e_pi) ||d||_1; {b}"),
            "J": tolerance(self.e_J, f"rho . V: error of V + S u ||V||; {b}"),
            "Q": tolerance(self.e_Q, f"r + gamma P V: gamma e_V + (S+2) u (|r| + gamma |V|); {b}"),
            "A": tolerance(self.e_A, f"Q - V: e_Q + e_V; {b}"),
            "pi": tolerance(self.e_pi, "softmax of the logits: 2 e_logits + (A+4) u"),
            "policy_gradient": tolerance(self.e_g, f"h sum_sa d pi A grad log pi: errors of d, A, pi "
                                                   f"through the sum (G = {self.G:.3g}); {b}"),
            "fisher": tolerance(self.e_F, f"sum_s d sum_a pi grad log pi grad log pi^T: G^2 (e_d + "
                                          f"3 A e_pi + (SA+4) u); {b}"),
            "natural_gradient": tolerance(nb, nbasis),
        }

    def natural_gradient_bound(self, F, x, tabular: bool) -> tuple:
        if tabular:
            # Closed form h (A - mean_a A) on the support.
            bound = self.h * (2.0 * self.e_A + (self.A_max + 2) * U * self.A_max)
            return bound, f"closed form h (A - mean_a A): 2 h e_A; {self.bellman_basis()}"
        n = F.shape[0]
        F_pinv = np.linalg.pinv(F)
        inv_norm = float(np.linalg.norm(F_pinv, np.inf))
        kappa_F = float(np.linalg.norm(F, np.inf)) * inv_norm
        x_inf = _inf(x)
        bound = inv_norm * (n * self.e_F * x_inf + self.e_g) + 3.0 * n * U * kappa_F * x_inf
        return bound, (f"least squares F x = g (n = {n}): ||F^+||_inf (n e_F ||x|| + e_g) + 3 n u kappa(F), "
                       f"kappa_inf(F) = {kappa_F:.4g}; {self.bellman_basis()}")


def trpo_tolerances(model: ErrorModel, mdp, policy, theta, F, tr, *, damping: float, cg_rtol: float,
                    max_kl: float) -> dict:
    """Tolerances of the ``trpo.*`` fields; raises GoldenMarginError if a line-search flag is not determined."""
    from refpg.kl import kl_gradient, policy_kl
    from refpg.surrogate import surrogate_gradient

    if not damping > 0.0:
        raise ValueError("golden TRPO needs damping > 0: it is what bounds the CG iterate's error")
    if not tr.cg.converged:
        raise GoldenMarginError(f"golden TRPO's CG should converge to cg_rtol = {cg_rtol}, it stopped after "
                                f"{tr.cg.iterations} iterations at residual {tr.cg.residual_norms[-1]!r}")
    n = model.n_params
    g2, x2 = _norm2(tr.gradient), _norm2(tr.direction)
    Fd = np.linalg.eigvalsh(F).max() + damping
    x_flat = tr.direction.ravel()
    Fdx = F @ x_flat + damping * x_flat
    # ||x - x*||_2 <= ||(F + lambda I)^-1||_2 ||true residual||, and lambda_min(F + lambda I) >= lambda.
    # ||F_hat - F|| from the errors of d and pi (n e_F), plus the product's own rounding (sums of
    # n_sum terms of size G2^2 |v|) and the residual's (n u ||F + lambda I||).
    e_op = n * model.e_F + 4.0 * model.n_sum * U * model.G2 ** 2 + 2.0 * n * U * Fd
    e_x = (cg_rtol * g2 + math.sqrt(n) * model.e_g + e_op * x2 + U * g2) / damping
    q = float(x_flat @ Fdx)
    e_q = 2.0 * _norm2(Fdx) * e_x + Fd * e_x ** 2 + e_op * x2 ** 2
    if not e_q <= 0.5 * q:
        raise GoldenMarginError(f"TRPO's quadratic form {q!r} is not determined by its error bound {e_q!r}")
    beta = tr.beta
    e_beta = beta * e_q / q + 2.0 * U * beta
    e_s = e_beta * x2 + beta * e_x
    cg = (f"CG from 0 on (F + {damping:g} I) x = g until ||g - (F + {damping:g} I) x||_2 <= {cg_rtol:g} ||g||_2: "
          f"||x - x*||_2 <= (residual + ||dg|| + ||dF|| ||x||)/lambda_min, lambda_min >= damping")
    out = {"trpo.direction": tolerance(e_x, cg),
           "trpo.beta": tolerance(e_beta, f"sqrt(2 max_kl / x^T (F + lambda I) x): beta e_q / q; {cg}")}

    pi_old, logpi_old = policy.probs(theta), policy.log_probs(theta)
    e_imp, e_kl = [], []
    for t in tr.line_search:
        th = theta + t.fraction * tr.full_step
        dpi = float(np.max(np.abs(policy.probs(th) - pi_old).sum(axis=1)))
        gL = _norm2(surrogate_gradient(mdp, policy, th, theta_old=theta))
        gK = _norm2(kl_gradient(mdp, policy, th, theta_old=theta))
        kl_s = _inf(policy_kl(pi_old=pi_old, pi_new=policy.probs(th)))
        # The KL's terms pi_old |log pi_old - log pi| exceed the KL where they cancel: round-off scales with them.
        terms = float(np.max(np.sum(pi_old * np.abs(logpi_old - policy.log_probs(th)), axis=1)))
        e_logpi = max(model.e_logpi, model.logpi_error(th))
        ei = (2.0 * gL * t.fraction * e_s + model.h * (model.e_d * model.A_max + model.e_A) * dpi
              + 2.0 * mdp.n_actions * model.e_pi * model.h * model.A_max
              + 2.0 * mdp.n_states * mdp.n_actions * U * model.h * model.A_max)
        ek = (2.0 * gK * t.fraction * e_s + model.e_d * kl_s + 2.0 * e_logpi
              + (mdp.n_states + mdp.n_actions) * U * terms)
        # The flag is improvement > 0 and kl <= max_kl: both must sit outside twice their bound.
        if abs(t.improvement) <= 2.0 * ei or abs(t.kl - max_kl) <= 2.0 * ek:
            raise GoldenMarginError(
                f"TRPO line-search trial at fraction {t.fraction}: improvement {t.improvement!r} (bound {ei:.3g}) "
                f"or kl {t.kl!r} vs max_kl {max_kl} (bound {ek:.3g}) is too close to its threshold")
        e_imp.append(ei)
        e_kl.append(ek)
    ls_basis = ("per trial fraction f: improvement 2 ||grad L(theta_f)|| f e_step + errors of d, A, pi; "
                "kl 2 ||grad KL(theta_f)|| f e_step + e_d KL + 2 e_logpi; flags checked outside 2x bound")
    out["trpo.line_search"] = tolerance(max(e_imp + e_kl, default=0.0), ls_basis)
    acc = [i for i, t in enumerate(tr.line_search) if t.accepted]
    if acc:
        i = acc[0]
        frac = tr.line_search[i].fraction
        out["trpo.kl"] = tolerance(e_kl[i], f"the accepted trial's kl bound; {ls_basis}")
        out["trpo.surrogate_improvement"] = tolerance(e_imp[i], f"the accepted trial's improvement bound; "
                                                               f"{ls_basis}")
        out["trpo.theta_new"] = tolerance(frac * e_s + U * _inf(tr.theta),
                                          "theta_old + f beta x: f (e_beta ||x|| + beta e_x)")
    else:
        for k in ("kl", "surrogate_improvement", "theta_new"):
            out[f"trpo.{k}"] = tolerance(U * _inf(tr.theta) if k == "theta_new" else 0.0,
                                         "no trial accepted: theta_old returned exactly, kl and improvement 0")
    return out


def ppo_tolerances(model: ErrorModel, mdp, policy, theta, ev, pp, *, clip_eps: float, lr: float,
                   tabular: bool) -> dict:
    """Tolerances of ``ppo.theta`` and ``ppo.objective`` (exact mode, full-batch SGD ascent).

    e_{k+1} = (1 + lr H_k) e_k + lr sqrt(n) e_grad with H_k a bound on the Hessian of the clipped
    surrogate at theta_k; the clipping pattern at every theta_k must sit outside twice its bound.
    """
    from refpg.algorithms.ppo import exact_clipped_surrogate_gradient

    n = model.n_params
    S, A = ev.A.shape
    pi_old = policy.probs(theta)
    sum_dw = (model.e_d + A * model.e_pi + 4.0 * U) * model.A_max + model.e_A

    def gradient(th):
        return exact_clipped_surrogate_gradient(mdp, policy, th, theta_old=theta, clip_eps=clip_eps, evaluation_old=ev)

    def ratio(th):
        return np.where(pi_old > 0, policy.probs(th) / np.where(pi_old > 0, pi_old, 1.0), 1.0)

    e = 0.0
    th = np.asarray(theta, dtype=np.float64)
    g, r = gradient(th), ratio(th)
    e_obj = []
    for epoch in pp.history:
        e_grad = model.G * float(np.max(r[ev.support])) * (sum_dw + S * A * U * model.A_max)
        # Active (unclipped) pairs: pi A with A > 0 and r < 1 + eps, or A < 0 and r > 1 - eps.
        e_log_r = model.e_logpi + model.logpi_error(th) + model.G2 * e
        for edge in (1.0 - clip_eps, 1.0 + clip_eps):
            gap = np.abs(r - edge)[ev.support]
            if np.any(gap <= 2.0 * r[ev.support] * 2.0 * e_log_r):
                raise GoldenMarginError(f"PPO ratio within {float(np.min(gap)):.3g} of the clip edge {edge} "
                                        f"at epoch {epoch.epoch}: the clip pattern is not determined")
        weights = 2.0 * model.G2 ** 2 * np.einsum("s,sa,sa->s", ev.d, policy.probs(th), np.abs(ev.A))
        H = float(weights.max() if tabular else weights.sum())
        e = (1.0 + lr * H) * e + lr * math.sqrt(n) * e_grad
        th = th + lr * g
        g, r = gradient(th), ratio(th)
        rho_max = float(np.max(r[ev.support]))
        e_obj.append(2.0 * _norm2(g) * e + rho_max * (sum_dw + S * A * U * model.A_max))
    if not np.allclose(th, pp.theta, rtol=0.0, atol=e + 1e-12):
        raise AssertionError("the bound's replay of PPO's SGD iterates should reproduce ppo_update's theta")
    basis = (f"SGD lr {lr:g}: e_(k+1) = (1 + lr H_k) e_k + lr sqrt(n) e_grad, H_k = 2 G2^2 sum d pi |A| "
             f"(max over states for tabular); clip pattern checked outside 2x bound; {model.bellman_basis()}")
    return {"ppo.theta": tolerance(e + U * _inf(th), basis),
            "ppo.objective": tolerance(max(e_obj, default=0.0), f"||grad|| e_k + errors of d, A; {basis}")}


def batch_tolerances(model: ErrorModel, policy, theta_kl, b, gamma: float, out: dict, clip_eps: float) -> dict:
    """Tolerances of the ``batch.*`` fields (sums and recursions of length T over the stored batch)."""
    from refpg.returns import discounted_returns

    T = b.rewards.shape[0]
    N = b.rewards.size
    r_max = _inf(b.rewards)
    mag_ret = _inf(discounted_returns(np.abs(b.rewards), b.terminated, b.truncated, gamma))
    e_ret = 2.0 * T * U * mag_ret
    mag_gae = T * (r_max + 2.0 * model.V_max)
    e_gae = T * ((1.0 + gamma) * model.e_V) + 5.0 * T * U * mag_gae
    logpi_kl = policy.log_probs(theta_kl)
    x = logpi_kl[b.states, b.actions] - b.log_probs
    e_x = model.logpi_error(theta_kl) + U * _inf(x)
    ex = np.exp(x)
    adv = np.asarray(out["gae"])
    e_grad_logpi = logpi_kl.shape[1] * model.e_pi * model.G
    for edge in (1.0 - clip_eps, 1.0 + clip_eps):
        gap = np.abs(ex - edge)
        if np.any(gap <= 4.0 * ex * e_x):
            raise GoldenMarginError(f"a batch ratio lies within {float(gap.min()):.3g} of the clip edge {edge}")
    ra = ex * np.abs(adv)
    tol = {
        "batch.returns": tolerance(e_ret, "recursion G_t = r_t + gamma G_(t+1): 2 T u max G(|r|)"),
        "batch.gae": tolerance(e_gae, "T (1+gamma) e_V (values = exact V) + 5 T u T (|r| + 2 |V|)"),
        "batch.k1": tolerance(e_x, "-log r: error of log pi_new (e_logpi) + u |log r|"),
        "batch.k2": tolerance(float(np.max(np.abs(x) * e_x + U * x * x)), "(log r)^2/2: |log r| e_logr + u"),
        "batch.k3": tolerance(float(np.max(np.abs(ex - 1.0) * e_x + 4.0 * U * (ex + 1.0 + np.abs(x)))),
                              "(r - 1) - log r: |r - 1| e_logr + 4 u (r + 1 + |log r|)"),
        "batch.ppo_clip_loss": tolerance(
            float(np.max(np.maximum(ex, 1.0 + clip_eps) * e_gae + 2.0 * ra * e_x)) + 2.0 * N * U * _inf(ra),
            "mean of min(r A, clip(r) A): max(r, 1+eps) e_gae + 2 r |A| e_logr + 2 N u max r|A|"),
        "batch.clipped_surrogate_gradient": tolerance(
            model.G * float(np.max(ex * e_gae + 2.0 * ra * e_x)) + _inf(ra) * e_grad_logpi
            + 2.0 * N * U * model.G * _inf(ra),
            "mean of r A grad log pi over unclipped samples: G (r e_gae + 2 r|A| e_logr) + r|A| e_gradlogpi; "
            "clip pattern checked outside 2x bound"),
    }
    if "reinforce_mean" in out:
        tol["batch.reinforce_mean"] = tolerance(
            T * (model.G * e_ret + mag_ret * e_grad_logpi) + 2.0 * T * U * model.G * mag_ret,
            "sum_t gamma^t grad log pi G_t: T (G e_G + max G e_gradlogpi) + 2 T u G max G")
        tol["batch.reinforce_n_episodes"] = {"atol": 0.0, "rtol": 0.0, "bound": 0.0,
                                             "basis": "an integer count: exact"}
    return tol

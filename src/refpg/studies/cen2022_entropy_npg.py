r"""Cen et al. (2022), Theorem 1: entropy-regularised NPG converges linearly, at rate 1 - eta tau.

Entropy-regularised objective ([Cen2022] Section 2), for tau > 0:

.. math::
    V^\pi_\tau(s) = \mathbb E\Big[\sum_t \gamma^t \big(r(s_t,a_t) - \tau\log\pi(a_t|s_t)\big)\Big|s_0=s\Big],
    \qquad Q^\pi_\tau(s,a) = r(s,a) + \gamma\,\mathbb E_{s'\sim P(\cdot|s,a)} V^\pi_\tau(s'),

so :math:`V_\tau = (I-\gamma P_\pi)^{-1}(r_\pi + \tau\mathcal H(\pi(\cdot|s)))`. The optimal
soft values solve :math:`Q^*_\tau = r + \gamma P\,\tau\log\sum_a\exp(Q^*_\tau/\tau)`
(soft value iteration here, to an a-posteriori error of 1e-12) and
:math:`\pi^*_\tau \propto \exp(Q^*_\tau/\tau)`.

Exact entropy-regularised NPG for tabular softmax, in the closed form [Cen2022] give for a general
learning rate (their Eq. 17 in our reading of the arXiv text; the number was not re-checked):

.. math::
    \pi^{(t+1)}(a|s) \propto \pi^{(t)}(a|s)^{1-\frac{\eta\tau}{1-\gamma}}
    \exp\Big(\frac{\eta\, Q^{(t)}_\tau(s,a)}{1-\gamma}\Big),
    \qquad 0 < \eta \le \frac{1-\gamma}{\tau};

eta = (1 - gamma)/tau is soft policy iteration, :math:`\pi^{(t+1)}\propto\exp(Q^{(t)}_\tau/\tau)`.

Theorem 1 of [Cen2022] (linear convergence of exact entropy-regularised NPG): for
0 < eta <= (1 - gamma)/tau and every t >= 0,

.. math::
    \|Q^*_\tau - Q^{(t+1)}_\tau\|_\infty \le C_1\gamma(1-\eta\tau)^t, \qquad
    \|\log\pi^*_\tau - \log\pi^{(t+1)}\|_\infty \le 2C_1\tau^{-1}(1-\eta\tau)^t,

.. math::
    C_1 = \|Q^*_\tau - Q^{(0)}_\tau\|_\infty
          + 2\tau\Big(1-\frac{\eta\tau}{1-\gamma}\Big)\|\log\pi^*_\tau - \log\pi^{(0)}\|_\infty.

The study runs the update from the uniform policy on a Garnet MDP for a grid of
(tau, eta), checks both bounds at every iterate, and measures the contraction
factor actually achieved against the theorem's 1 - eta tau.

References
----------
[Cen2022] S. Cen, C. Cheng, Y. Chen, Y. Wei, Y. Chi, "Fast global convergence of natural
policy gradient methods with entropy regularization", Operations Research 70(4), 2022,
arXiv:2007.06558, Theorem 1 and the update of Section 2.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

GAMMA = 0.9
MAIN_TAU = 0.1
TAUS = (0.01, 0.1, 1.0)
#: eta as a fraction of its largest allowed value (1 - gamma)/tau; 1 is soft policy iteration.
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: Errors below these are round-off of Q* (|Q| ~ 10) and of log pi* (|log pi*| up to ~1/tau):
#: the measured rates are fitted above them; the runs stop when the Q bound reaches FLOOR.
FLOOR = 1e-10
PI_FLOOR = 1e-8
VI_TOL = 1e-12


def study_mdp():
    from refpg.envs import garnet

    return garnet(20, 4, 3, seed=0, gamma=GAMMA)


def soft_evaluation(mdp, pi: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact soft values of pi: (V_tau (S,), Q_tau (S, A)), one LU solve.

    :math:`V_\tau = (I-\gamma P_\pi)^{-1}\sum_a\pi(r - \tau\log\pi)`, :math:`Q_\tau = r + \gamma P V_\tau`.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ent_r = np.where(pi > 0, pi * (mdp.r - tau * np.log(pi)), 0.0).sum(axis=1)
    M = np.eye(mdp.n_states) - mdp.gamma * mdp.policy_transitions(pi)
    V = np.linalg.solve(M, ent_r)
    return V, mdp.action_values(V)


def soft_optimal(mdp, tau: float, *, tol: float = VI_TOL, max_iter: int = 100_000):
    r"""Soft value iteration :math:`Q \leftarrow r + \gamma P\,\tau\,\mathrm{logsumexp}(Q/\tau)`.

    Stops when :math:`\frac{\gamma}{1-\gamma}\|Q_{k+1}-Q_k\|_\infty \le` `tol`, an upper bound on
    :math:`\|Q_{k+1} - Q^*_\tau\|_\infty` (gamma-contraction). Returns (Q*, log pi*, sweeps).
    """
    g = mdp.gamma
    Q = np.zeros((mdp.n_states, mdp.n_actions))
    for k in range(1, max_iter + 1):
        Q_new = mdp.action_values(tau * logsumexp(Q / tau, axis=1))
        step = np.abs(Q_new - Q).max()
        Q = Q_new
        if g / (1 - g) * step <= tol:
            logpi = Q / tau - logsumexp(Q / tau, axis=1, keepdims=True)
            return Q, logpi, k
    raise RuntimeError(f"soft value iteration did not reach {tol:g} in {max_iter} sweeps")


def npg_update(logpi: np.ndarray, Q: np.ndarray, eta: float, tau: float, gamma: float) -> np.ndarray:
    """[Cen2022]'s closed-form entropy-regularised NPG update, in log space: the new log-policy."""
    alpha = eta * tau / (1 - gamma)
    logits = (1 - alpha) * logpi + eta / (1 - gamma) * Q
    return logits - logsumexp(logits, axis=1, keepdims=True)


def theorem1_constant(Q_star, logpi_star, Q0, logpi0, eta, tau, gamma) -> float:
    """C1 of [Cen2022] Theorem 1."""
    return float(np.abs(Q_star - Q0).max()
                 + 2 * tau * (1 - eta * tau / (1 - gamma)) * np.abs(logpi_star - logpi0).max())


def run_npg(mdp, tau: float, eta: float, *, t_max: int, optimum=None) -> dict:
    """Entropy-regularised NPG from the uniform policy.

    Runs until the Q bound C1 gamma (1 - eta tau)^t falls below FLOOR (so the bound is
    checked on every iterate above round-off), at most `t_max` updates. Returns the
    errors of iterates k = 0..T and the Theorem 1 bounds of iterates k = 1..T.
    """
    gamma = mdp.gamma
    Q_star, logpi_star, _ = optimum if optimum is not None else soft_optimal(mdp, tau)
    S, A = mdp.n_states, mdp.n_actions
    logpi = np.full((S, A), -math.log(A))
    _, Q = soft_evaluation(mdp, np.exp(logpi), tau)
    C1 = theorem1_constant(Q_star, logpi_star, Q, logpi, eta, tau, gamma)
    rate = 1 - eta * tau
    n_needed = 1 + math.ceil(math.log(FLOOR / (C1 * gamma)) / math.log(rate)) if rate > 0 else 1
    T = int(min(t_max, max(n_needed, 1)))
    q_err, pi_err = [np.abs(Q_star - Q).max()], [np.abs(logpi_star - logpi).max()]
    for _ in range(T):
        logpi = npg_update(logpi, Q, eta, tau, gamma)
        _, Q = soft_evaluation(mdp, np.exp(logpi), tau)
        q_err.append(np.abs(Q_star - Q).max())
        pi_err.append(np.abs(logpi_star - logpi).max())
    k = np.arange(1, T + 1)
    q_bound = C1 * gamma * rate ** (k - 1)
    pi_bound = 2 * C1 / tau * rate ** (k - 1)
    q_err, pi_err = np.array(q_err), np.array(pi_err)
    return {"tau": tau, "eta": eta, "C1": C1, "rate_bound": rate, "T": T,
            "q_err": q_err, "pi_err": pi_err, "q_bound": q_bound, "pi_bound": pi_bound,
            "q_excess": float((q_err[1:] / q_bound).max()),
            "pi_excess": float((pi_err[1:] / pi_bound).max()),
            **measured_rate(q_err, FLOOR),
            **{f"pi_{k}": v for k, v in measured_rate(pi_err, PI_FLOOR).items()}}


def measured_rate(err: np.ndarray, floor: float) -> dict:
    """Contraction factors of an error sequence (err_0, err_1, ...) over the iterates above `floor`.

    ``rate_mean``: geometric mean (err_K / err_1)^(1/(K-1)) from k = 1 to the last k above `floor`;
    ``rate_tail``: the same over the second half of that window (the asymptotic regime);
    ``rate_worst``: the largest one-step ratio err_{k+1}/err_k in the window.
    """
    above = np.flatnonzero(err >= floor)
    K = int(above[-1]) if above.size else 0
    if K < 2:
        return {"rate_mean": float("nan"), "rate_tail": float("nan"), "rate_worst": float("nan"), "K": K}
    e = err[1:K + 1]
    n = e.size - 1
    mean = (e[-1] / e[0]) ** (1 / n)
    h = n // 2
    tail = (e[-1] / e[h]) ** (1 / (n - h)) if n - h >= 1 else mean
    worst = float((e[1:] / e[:-1]).max())
    return {"rate_mean": float(mean), "rate_tail": float(tail), "rate_worst": worst, "K": K}


def _checks(mdp) -> dict:
    """Cross-checks of the soft evaluation and of the update against refpg."""
    import refpg
    from refpg.algorithms import npg_step

    rng = np.random.default_rng(0)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = rng.normal(size=pol.theta_shape)
    pi = pol.probs(theta)
    # tau = 0: the soft values are refpg's values.
    V0, Q0 = soft_evaluation(mdp, pi, 0.0)
    ev = refpg.evaluate(mdp, pi)
    err_tau0 = max(np.abs(V0 - ev.V).max(), np.abs(Q0 - ev.Q).max())
    # tau > 0: refpg.evaluate on the MDP with reward r - tau log pi gives V_tau and Q_tau - tau log pi.
    tau = MAIN_TAU
    shifted = refpg.TabularMDP(mdp.P, mdp.r - tau * np.log(pi), mdp.rho, mdp.gamma)
    ev_t = refpg.evaluate(shifted, pi)
    V_t, Q_t = soft_evaluation(mdp, pi, tau)
    err_tau = max(np.abs(V_t - ev_t.V).max(), np.abs(Q_t - (ev_t.Q + tau * np.log(pi))).max())
    # tau = 0: the update is the unregularised NPG step pi' ~ pi exp(eta A/(1-gamma)) of refpg.
    eta = 0.7
    new = np.exp(npg_update(np.log(pi), Q0, eta, 0.0, mdp.gamma))
    ref = pol.probs(npg_step(mdp, pol, theta, eta=eta).theta)
    err_npg = np.abs(new - ref).max()
    # soft optimum: pi* evaluated exactly reproduces Q*, and pi* is greedy-soft w.r.t. its own Q.
    Q_star, logpi_star, sweeps = soft_optimal(mdp, tau)
    _, Q_check = soft_evaluation(mdp, np.exp(logpi_star), tau)
    err_opt = np.abs(Q_check - Q_star).max()
    # Soft performance difference: V* - V^pi = (I - gamma P_pi)^{-1} tau KL(pi || pi*) state by state.
    V_pi, _ = soft_evaluation(mdp, pi, tau)
    V_star = tau * logsumexp(Q_star / tau, axis=1)
    kl = (pi * (np.log(pi) - logpi_star)).sum(axis=1)
    pdl = np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * mdp.policy_transitions(pi), tau * kl)
    err_pdl = np.abs((V_star - V_pi) - pdl).max()
    return {"soft_eval_vs_refpg_tau0": float(err_tau0), "soft_eval_vs_refpg_shifted_reward": float(err_tau),
            "update_tau0_vs_refpg_npg_step": float(err_npg), "soft_optimum_residual": float(err_opt),
            "soft_vi_sweeps": sweeps, "soft_performance_difference_residual": float(err_pdl)}


def run(*, quick: bool = False, out_dir="analysis/cen2022_entropy_npg") -> dict:
    out = prepare_out_dir(out_dir)
    mdp = study_mdp()
    gamma = mdp.gamma
    t_max = 400 if quick else 5000
    checks = _checks(mdp)

    runs = {}
    prog = Progress("cen2022_entropy_npg: runs", len(TAUS) * len(FRACTIONS), every=1)
    k = 0
    for tau in TAUS:
        optimum = soft_optimal(mdp, tau)
        for f in FRACTIONS:
            eta = f * (1 - gamma) / tau
            runs[(tau, f)] = run_npg(mdp, tau, eta, t_max=t_max, optimum=optimum)
            k += 1
            prog.update(k)

    worst_q = max(r["q_excess"] for r in runs.values())
    worst_pi = max(r["pi_excess"] for r in runs.values())
    slack = max(r["rate_mean"] - r["rate_bound"] for r in runs.values() if not math.isnan(r["rate_mean"]))
    rows = []
    for (tau, f), r in runs.items():
        rows.append([f"{tau:g}", f"{r['eta']:g}", f"{f:g}" + (" (SPI)" if f == 1 else ""), f"{r['rate_bound']:.4g}",
                     f"{r['rate_mean']:.4g}", f"{r['rate_tail']:.4g}", f"{r['rate_worst']:.4g}",
                     f"{(1 - f) ** 2:.4g}", f"{r['pi_rate_tail']:.4g}", f"{1 - f:.4g}",
                     f"{r['C1']:.3g}", r["T"], r["K"], f"{r['q_excess']:.3g}", f"{r['pi_excess']:.3g}"])

    # Figure 1: error and bound against t at the main tau, zoomed on the iterates above round-off.
    colors = dict(zip(FRACTIONS, ("tab:purple", "tab:blue", "tab:orange", "tab:green")))
    main = {f: runs[(MAIN_TAU, f)] for f in FRACTIONS}
    x_max = 10 * math.ceil(1.15 * max(max(r["K"], r["pi_K"]) for r in main.values()) / 10 + 1)
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(12, 5.2))
    for f, r in main.items():
        lab = f"eta = {r['eta']:g}" + (" (soft PI)" if f == 1 else "")
        t_all = np.arange(r["T"] + 1)
        for ax, err, bound, K in ((ax1, r["q_err"], r["q_bound"], r["K"]),
                                  (ax2, r["pi_err"], r["pi_bound"], r["pi_K"])):
            n = min(K + 2, err.size)
            ax.semilogy(t_all[:n], err[:n], color=colors[f], marker="." if K < 10 else None,
                        label=f"{lab}: measured")
            m = min(x_max, bound.size)
            ax.semilogy(t_all[1:m + 1], bound[:m], color=colors[f], ls="--", label=f"{lab}: Theorem 1 bound")
    ax1.axhline(FLOOR, color="grey", lw=0.8, ls=":")
    ax2.axhline(PI_FLOOR, color="grey", lw=0.8, ls=":")
    ax1.set_ylabel(r"$\|Q^*_\tau - Q^{(t)}_\tau\|_\infty$")
    ax2.set_ylabel(r"$\|\log\pi^*_\tau - \log\pi^{(t)}\|_\infty$")
    for ax, what in ((ax1, "soft Q error"), (ax2, "log-policy error")):
        ax.set_xlabel("iteration t")
        ax.set_xlim(0, x_max)
        ax.set_ylim(1e-13, None)
        ax.set_title(f"{what}, tau = {MAIN_TAU:g}: measured (solid) vs bound (dashed)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    ax1.legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle(f"Entropy-regularised NPG on garnet(20, 4, 3, seed=0), gamma = {gamma:g}, uniform start "
                 f"(measured curves end at the round-off floor, dotted)", fontsize=10)
    save_figure(fig, out / "error_vs_bound.png")

    # Figure 2: measured contraction factors against the theorem's 1 - eta tau, as a function of f.
    fig, ax = new_figure(figsize=(7.5, 5.5))
    fs = np.linspace(0.0, 1.0, 201)
    ax.plot(fs, 1 - fs * (1 - gamma), color="k", ls="--", label=r"Theorem 1: $1-\eta\tau = 1 - f(1-\gamma)$")
    fl = fs[fs < 0.999]
    ax.plot(fl, 1 - fl, color="grey", ls=":", label=r"$1-f = 1-\eta\tau/(1-\gamma)$")
    ax.plot(fl, (1 - fl) ** 2, color="grey", ls="-.", label=r"$(1-f)^2$")
    markers = dict(zip(TAUS, ("o", "s", "^")))
    tau_colors = dict(zip(TAUS, ("tab:red", "tab:blue", "tab:green")))
    for tau in TAUS:
        ax.semilogy(FRACTIONS, [runs[(tau, f)]["rate_tail"] for f in FRACTIONS], marker=markers[tau], ls="none",
                    color=tau_colors[tau], ms=8, label=f"tau = {tau:g}: Q error")
        ax.semilogy(FRACTIONS, [runs[(tau, f)]["pi_rate_tail"] for f in FRACTIONS], marker=markers[tau], ls="none",
                    color=tau_colors[tau], mfc="none", ms=11, label=f"tau = {tau:g}: log-policy error")
    ax.set_xlabel(r"step size as a fraction of its maximum: $f = \eta\tau/(1-\gamma)$  (f = 1: soft PI)")
    ax.set_ylabel("contraction factor per iteration (second half of run)")
    ax.set_ylim(1e-6, 1.5)
    ax.set_title(f"Measured rates vs Theorem 1, garnet(20, 4, 3), gamma = {gamma:g}", fontsize=10)
    ax.legend(fontsize=7.5, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, out / "rates.png")

    spi = main[1.0]
    report = f"""# Cen et al. (2022), Theorem 1: entropy-regularised NPG converges linearly

Exact entropy-regularised NPG ([Cen2022]'s closed-form update for general eta,
pi^(t+1)(a|s) ∝ pi^(t)(a|s)^(1 - eta tau/(1-gamma)) exp(eta Q_tau^(t)(s,a)/(1-gamma)))
on garnet(20, 4, 3, seed=0) with gamma = {gamma:g}, from the uniform policy, for tau in {TAUS} and
eta = f (1-gamma)/tau with f in {FRACTIONS} (f = 1 is soft policy iteration, eta = (1-gamma)/tau).
Soft values: V_tau = (I - gamma P_pi)^(-1) sum_a pi (r - tau log pi), Q_tau = r + gamma P V_tau (one LU
solve per iterate). Optimum: soft value iteration Q <- r + gamma P tau logsumexp(Q/tau), stopped when
gamma/(1-gamma) ||Q_(k+1) - Q_k||_inf <= {VI_TOL:g} ({checks['soft_vi_sweeps']} sweeps at tau = {MAIN_TAU:g});
evaluating pi* = softmax(Q*/tau) exactly reproduces Q* to {checks['soft_optimum_residual']:.1e}.

**Theorem used** ([Cen2022] Theorem 1, linear convergence of exact entropy-regularised NPG; arXiv:2007.06558,
Operations Research 2022). For 0 < eta <= (1-gamma)/tau and all t >= 0:

- ||Q*_tau - Q_tau^(t+1)||_inf <= C1 gamma (1 - eta tau)^t,
- ||log pi*_tau - log pi^(t+1)||_inf <= 2 C1 tau^(-1) (1 - eta tau)^t,
- C1 = ||Q*_tau - Q_tau^(0)||_inf + 2 tau (1 - eta tau/(1-gamma)) ||log pi*_tau - log pi^(0)||_inf.

(Constants as stated in the paper's Theorem 1. The stored copies of the paper reachable from here gave
only its abstract, so the statement above is quoted from the arXiv text as we know it, not re-checked
against the page. With f = 1 the rate is 1 - eta tau = gamma and the log-policy term of C1 vanishes.)

Each run continues until the Q bound falls below {FLOOR:g} (at most {t_max} updates), so both bounds are
checked on every iterate, long after the errors themselves reach round-off. Rates are contraction
factors fitted from t = 1 to the last iterate K with error above the round-off floor ({FLOOR:g} for Q,
{PI_FLOOR:g} for log pi): "mean" = (err_K/err_1)^(1/(K-1)); "2nd half" = the same over the second
half of that window; "worst step" = the largest one-step ratio err_(t+1)/err_t. "max err/bound" is
the largest ratio of error to bound over all T iterates (<= 1: never violated).

{md_table(["tau", "eta", "f", "1 - eta tau", "Q: mean rate", "Q: 2nd half", "Q: worst step", "(1-f)^2",
           "log pi: 2nd half", "1-f", "C1", "T", "K", "Q: max err/bound", "log pi: max err/bound"], rows)}

**Headline.** Theorem 1's bounds are {'never violated' if max(worst_q, worst_pi) <= 1 else 'VIOLATED'}:
over all {len(runs)} runs and all iterates, max error/bound = {worst_q:.3g} for Q and {worst_pi:.3g} for
log pi. The measured contraction factor of the Q error is always below the theoretical 1 - eta tau
(largest mean rate - (1 - eta tau) = {slack:+.3g}): at tau = {MAIN_TAU:g}, eta = {main[0.1]['eta']:g}
contracts at {main[0.1]['rate_tail']:.4f} per step against 1 - eta tau = {main[0.1]['rate_bound']:.4g},
eta = {main[0.5]['eta']:g} at {main[0.5]['rate_tail']:.4f} against {main[0.5]['rate_bound']:.4g}, and soft policy
iteration (eta = (1-gamma)/tau = {spi['eta']:g}, theoretical rate gamma = {gamma:g}) reaches round-off in
{spi['K']} iterations (mean factor {spi['rate_mean']:.1e}), consistent with the local quadratic convergence
the paper proves. The bound is valid but loose: its rate 1 - eta tau = 1 - f(1-gamma) stays within
1 - gamma of 1, while the measured asymptotic rates are 1 - f = 1 - eta tau/(1-gamma) for log pi and
(1-f)^2 for Q, whatever tau (table columns and the second figure). Near the optimum the update
contracts log pi - log pi* by 1 - f per step, and the soft Q error is quadratic in the policy error
(soft performance difference: V*_tau - V^pi_tau = E_(s~d^pi)[tau KL(pi(.|s) || pi*(.|s))]/(1-gamma),
and Q*_tau - Q^pi_tau = gamma P (V*_tau - V^pi_tau); checked here to
{checks['soft_performance_difference_residual']:.1e} at a random policy).

![error vs bound](error_vs_bound.png)

![measured rates](rates.png)

Cross-checks against refpg: the soft evaluation at tau = 0 equals `refpg.evaluate` to
{checks['soft_eval_vs_refpg_tau0']:.1e}; at tau = {MAIN_TAU:g} it equals `refpg.evaluate` on the MDP with
reward r - tau log pi (plus tau log pi on Q) to {checks['soft_eval_vs_refpg_shifted_reward']:.1e}; the update at
tau = 0 is `refpg.algorithms.npg_step` (pi' ∝ pi exp(eta A/(1-gamma))) to
{checks['update_tau0_vs_refpg_npg_step']:.1e}. refpg has no entropy-regularised evaluation or update, so the
study implements both (`soft_evaluation`, `npg_update`).
"""
    (out / "report.md").write_text(report)
    return {
        "bound_never_violated": bool(worst_q <= 1 and worst_pi <= 1),
        "max_q_error_over_bound": worst_q,
        "max_logpi_error_over_bound": worst_pi,
        "max_rate_minus_theory": float(slack),
        "rates": {f"tau={tau:g},eta={r['eta']:g}": {
            "theory": r["rate_bound"], "mean": r["rate_mean"], "tail": r["rate_tail"], "worst_step": r["rate_worst"],
            "logpi_tail": r["pi_rate_tail"], "K": r["K"], "T": r["T"]} for (tau, _), r in runs.items()},
        "soft_pi_rate": spi["rate_mean"],
        "soft_pi_iterations_to_floor": spi["K"],
        "n_runs": len(runs),
        **checks,
    }

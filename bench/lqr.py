"""Exact LQR cost, gradient and natural gradient: refpg.lqr against torch autograd through the same quantities.

    python bench/lqr.py            # (n, m) up to (50, 50), ~1 min
    python bench/lqr.py --quick    # (2, 1), (10, 5), (50, 50): a smoke test, ~10 s

For each (state dim n, action dim m), on `refpg.lqr.random_system(0, n, m)`
(gamma = 0.9, open-loop spectral radius of sqrt(gamma) A = 0.9) with a random
stabilising gain (spectral radius of sqrt(gamma) A_K at most 0.9) and
log_std ~ -0.5, three quantities, each timed on both sides in the same run:

* ``J``: refpg ``lqr.objective(system, policy, theta)``; torch the same
  J = -(tr(P_K S0) + q_K) under ``torch.no_grad``.
* ``grad``: refpg ``lqr.policy_gradient``; torch the forward pass on a float64
  leaf theta, then ``J.backward()``.
* ``natgrad``: refpg ``lqr.natural_gradient``; torch the gradient as above,
  then the discounted second moment Sigma_K and the Fisher solve in its
  Kronecker form, F^-1 g = (Psi G_K Sigma_K^-1 / (1 - gamma), g_log_std / 2)
  (``torch.linalg.solve``; the dense (mn + m)^2 Fisher would be far slower).

torch has no Lyapunov solver, so its P_K and Sigma_K are the discounted
series summed by doubling (X <- X + a X a^T, a <- a^2), stopped by the rule
refpg uses, ||a^(2^k)||_F^2 <= 2^-53; a Kronecker-vectorised solve would cost
O(n^6). Both sides run single-threaded (OPENBLAS/OMP/MKL_NUM_THREADS default to 1
here, and torch.set_num_threads(1)); times are medians over alternating blocks
(refpg, torch, torch, refpg), each block after a short sleep and one discarded
call. The results must agree (rtol 1e-9, printed); the ratio printed is
refpg / torch, target < 1 (refpg faster) for every quantity and size.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TAIL = 2.0 ** -53
AGREE_RTOL = 1e-9


def _case(n, m):
    from refpg import lqr

    system = lqr.random_system(0, n, m, gamma=0.9, radius=0.9)
    rng = np.random.default_rng(1)
    K = rng.standard_normal((m, n)) / np.sqrt(n)
    while system.spectral_radius(K) > 0.9:
        K = 0.5 * K
    policy = lqr.LinearGaussian.for_system(system)
    return system, policy, policy.pack(K, -0.5 + 0.1 * rng.standard_normal(m))


def _torch_side(system, policy):
    import torch

    A, B, Q, R, W, S0 = (torch.tensor(np.array(M)) for M in (system.A, system.B, system.Q, system.R, system.W,
                                                                system.initial_second_moment))
    g, n, m = system.gamma, system.state_dim, system.action_dim
    root = g ** 0.5

    def doubling(a, X, transpose):
        b = a
        while True:
            X = X + (b.T @ X @ b if transpose else b @ X @ b.T)
            b = b @ b
            if float((b * b).sum().detach()) <= TAIL:
                return X

    def J(theta):
        K, log_std = theta[:m * n].reshape(n, m).T, theta[m * n:]
        psi = torch.exp(2.0 * log_std)
        A_K = A - B @ K
        P = doubling(root * A_K, Q + K.T @ R @ K, transpose=True)
        N = (B * psi) @ B.T + W
        q = ((torch.diagonal(R) * psi).sum() + g * (P * N).sum()) / (1.0 - g)
        return -((P * S0).sum() + q), A_K, N, psi

    def value(theta_np):
        with torch.no_grad():
            return float(J(torch.tensor(theta_np))[0])

    def grad(theta_np):
        theta = torch.tensor(theta_np, requires_grad=True)
        J(theta)[0].backward()
        return theta.grad.numpy()

    def natgrad(theta_np):
        theta = torch.tensor(theta_np, requires_grad=True)
        out, A_K, N, psi = J(theta)
        out.backward()
        with torch.no_grad():
            Sigma = doubling(root * A_K, S0 + (g / (1.0 - g)) * N, transpose=False)
            G = theta.grad[:m * n].reshape(n, m).T
            nK = psi[:, None] * torch.linalg.solve(Sigma, G.T).T / (1.0 - g)
            return torch.cat([nK.T.reshape(-1), theta.grad[m * n:] / 2.0]).numpy()

    return value, grad, natgrad


def _time(fns, blocks, budget):
    """Median seconds per call of each fn, over alternating blocks sized to take about `budget` s in all."""
    for fn in fns:
        fn()
    t0 = time.perf_counter()
    for fn in fns:
        fn()
    per_round = time.perf_counter() - t0
    reps = max(3, int(budget / max(per_round, 1e-9) / blocks))
    out = [[] for _ in fns]
    gc.collect()
    gc.disable()
    try:
        for b in range(blocks):
            order = range(len(fns)) if b % 2 == 0 else reversed(range(len(fns)))
            for k in order:
                time.sleep(0.05)
                fns[k]()
                for _ in range(reps):
                    t = time.perf_counter()
                    fns[k]()
                    out[k].append(time.perf_counter() - t)
    finally:
        gc.enable()
    return [statistics.median(ts) for ts in out], reps * blocks


def _us(sec):
    return f"{sec * 1e6:9.1f}"


def _rel(a, b):
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three sizes (smoke test, ~10 s)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per (size, quantity) row")
    args = parser.parse_args()

    import torch

    import refpg
    from refpg import lqr

    torch.set_num_threads(1)
    sizes = [(2, 1), (10, 5), (50, 50)] if args.quick else [(2, 1), (5, 2), (10, 5), (20, 10), (50, 10), (50, 50)]
    budget = args.budget if args.budget is not None else (0.4 if args.quick else 1.5)
    here = os.path.dirname(os.path.abspath(refpg.__file__))
    head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    print(f"refpg at commit {head}; numpy {np.__version__}, torch {torch.__version__} "
          f"(torch threads {torch.get_num_threads()}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']})")
    print("times are medians in microseconds; ratio = refpg / torch (target < 1); "
          f"agree = max relative difference, must be <= {AGREE_RTOL:g}")
    print(f"{'n':>3} {'m':>3} {'params':>6} {'quantity':>8} {'calls':>6} {'refpg us':>9} {'torch us':>9} "
          f"{'ratio':>6} {'agree':>8}  verdict")
    worst = 0.0
    all_agree = True
    for n, m in sizes:
        system, policy, theta = _case(n, m)
        t_value, t_grad, t_nat = _torch_side(system, policy)
        rows = [
            ("J", lambda: lqr.objective(system, policy, theta), lambda: t_value(theta)),
            ("grad", lambda: lqr.policy_gradient(system, policy, theta), lambda: t_grad(theta)),
            ("natgrad", lambda: lqr.natural_gradient(system, policy, theta), lambda: t_nat(theta)),
        ]
        for label, ours, theirs in rows:
            agree = _rel(ours(), theirs())
            (t_ours, t_theirs), calls = _time([ours, theirs], blocks=4, budget=budget)
            ratio = t_ours / t_theirs
            ok = ratio < 1.0 and agree <= AGREE_RTOL
            worst = max(worst, ratio)
            all_agree &= agree <= AGREE_RTOL
            print(f"{n:>3} {m:>3} {policy.n_params:>6} {label:>8} {calls:>6} {_us(t_ours)} {_us(t_theirs)} "
                  f"{ratio:>6.2f} {agree:>8.1e}  {'PASS' if ok else 'MISS'}")
    print(f"largest ratio refpg / torch: {worst:.2f} (target < 1: {'PASS' if worst < 1 else 'MISS'}); "
          f"every result agrees within {AGREE_RTOL:g}: {'yes' if all_agree else 'NO'}")


if __name__ == "__main__":
    main()

"""An independent torch-autograd route to J, its gradient, d and the Fisher matrix.

Shares no code with refpg beyond reading the MDP's arrays: J comes from
`torch.linalg.solve`, derivatives from autograd.
"""

import numpy as np
import torch

import refpg


def _logits(policy, theta):
    if isinstance(policy, refpg.TabularSoftmax):
        return theta
    return torch.tensor(policy.features) @ theta


def log_pi(policy, theta):
    """log softmax of the policy's logits, as a differentiable torch function."""
    return torch.log_softmax(_logits(policy, theta), dim=-1)


def _system(mdp, pi):
    P = torch.tensor(mdp.dense_P())
    r = torch.tensor(mdp.r)
    P_pi = torch.einsum("sat,sa->st", P, pi)
    r_pi = (pi * r).sum(-1)
    live = torch.tensor(~mdp.terminal) if mdp.gamma == 1.0 else torch.ones(mdp.n_states, dtype=torch.bool)
    M = torch.eye(int(live.sum()), dtype=torch.float64) - mdp.gamma * P_pi[live][:, live]
    return M, r_pi[live], torch.tensor(mdp.rho)[live], live


def J(mdp, policy, theta):
    """J(theta) = rho . (I - gamma P_pi)^{-1} r_pi, differentiable in theta."""
    pi = torch.exp(log_pi(policy, theta))
    M, r_pi, rho, _ = _system(mdp, pi)
    return rho @ torch.linalg.solve(M, r_pi)


def gradient(mdp, policy, theta):
    """dJ/dtheta by reverse-mode autograd."""
    t = torch.tensor(np.asarray(theta), dtype=torch.float64, requires_grad=True)
    J(mdp, policy, t).backward()
    return t.grad.numpy()


def occupancy(mdp, policy, theta):
    """Normalised occupancy by a transposed torch solve (non-terminal states for gamma = 1)."""
    with torch.no_grad():
        t = torch.tensor(np.asarray(theta), dtype=torch.float64)
        pi = torch.exp(log_pi(policy, t))
        M, _, rho, live = _system(mdp, pi)
        mu = torch.zeros(mdp.n_states, dtype=torch.float64)
        mu[live] = torch.linalg.solve(M.T, rho)
        return (mu / mu.sum()).numpy()


def fisher_outer_products(mdp, policy, theta):
    """sum_s d(s) sum_a pi(a|s) g g^T with g = autograd grad of log pi(a|s)."""
    t = torch.tensor(np.asarray(theta), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: log_pi(policy, x), t)
    S, A = mdp.n_states, mdp.n_actions
    g = jac.reshape(S * A, -1)
    pi = torch.exp(log_pi(policy, t)).reshape(-1)
    d = torch.tensor(occupancy(mdp, policy, theta))
    w = (d[:, None] * pi.reshape(S, A)).reshape(-1)
    return (g.T @ (w[:, None] * g)).numpy()


def mean_kl_hessian(mdp, policy, theta_old):
    """Hessian in theta of sum_s d_old(s) KL(pi_old(.|s) || pi_theta(.|s)) at theta_old."""
    t_old = torch.tensor(np.asarray(theta_old), dtype=torch.float64)
    logp_old = log_pi(policy, t_old).detach()
    d = torch.tensor(occupancy(mdp, policy, theta_old))

    def mean_kl(x):
        kl = (torch.exp(logp_old) * (logp_old - log_pi(policy, x))).sum(-1)
        return d @ kl

    H = torch.autograd.functional.hessian(mean_kl, t_old)
    n = t_old.numel()
    return H.reshape(n, n).numpy()

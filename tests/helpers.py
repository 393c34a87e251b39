"""Test helpers: tolerances of docs/conventions.md and finite differences."""

import numpy as np

# Bound at import, not looked up per call: the demo's test replaces runner._run_example by example_report
# itself, which must still compute through the real one.
from refpg.conformance.runner import _run_example

IDENTITY_RTOL = 1e-10


def assert_identity(actual, desired, *, scale=None, rtol=IDENTITY_RTOL, err_msg=""):
    """A deterministic identity to 1e-10, relative to the size of the quantities.

    Entries near zero are held to ``rtol * scale``, scale defaulting to the
    largest magnitude among the desired values (at least 1), because an
    identity between sums of O(scale) terms cannot be tighter than that.
    """
    desired = np.asarray(desired, dtype=float)
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(desired), initial=0.0)))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def central_difference(f, x, *, h=1e-3):
    """Fourth-order central difference of a scalar f at array x.

    The five-point stencil (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / (12 h)
    has truncation error O(h^4), so a comparatively large h keeps round-off
    (about eps * |f| / h) far below the rtol 1e-6 of docs/conventions.md.
    """
    x = np.asarray(x, dtype=float)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        grad[idx] = (f(x - 2 * e) - 8 * f(x - e) + 8 * f(x + e) - f(x + 2 * e)) / (12 * h)
    return grad


def uniform(mdp):
    return np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)


def episodic_garnet(n_states=5, n_actions=3, *, seed=0, p_end=0.2, gamma=0.9):
    """`refpg.envs.episodic_garnet`: every policy terminates, so no estimate needs truncating."""
    import refpg

    return refpg.envs.episodic_garnet(n_states, n_actions, 2, seed=seed, p_end=p_end, gamma=gamma)


def high_signal_episodic(n_states=3, n_actions=3, *, p_end=0.5, gamma=0.9, seed=0):
    """`refpg.envs.high_signal`: short episodes with an action-dependent reward, so that
    2e5 episodes resolve a 5% bias of a REINFORCE estimator."""
    import refpg

    return refpg.envs.high_signal(n_states, n_actions, p_end=p_end, gamma=gamma, seed=seed)


def assert_study_outputs(out, headline, figures) -> None:
    """A study's quick run wrote each figure as a real PNG, a report.md that links it and has a
    headline and a table, and returned its headline numbers."""
    for fig in figures:
        data = (out / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, fig
    report = (out / "report.md").read_text()
    assert report.startswith("# ") and "**Headline.**" in report and "|---|" in report
    for fig in figures:
        assert f"({fig})" in report
    assert isinstance(headline, dict) and headline


def ring_arrays(S=4, A=2):
    """Dense (P, r, rho) of a valid MDP in which action a moves s to (s + a) mod S; rho on state 0."""
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            P[s, a, (s + a) % S] = 1.0
    r = np.arange(S * A, dtype=float).reshape(S, A)
    rho = np.zeros(S)
    rho[0] = 1.0
    return P, r, rho


#: Set by conftest.py's session fixture: ``once_per_session(key, compute) -> (directory, value)``.
SHARED: dict = {"once": None}


def example_report(ex):
    """The report of ``refpg.conformance.runner._run_example(ex)`` (the example's own options, the default
    seed), computed once per test session even across pytest-xdist workers and shared by every test file
    that checks the same example at seed 0 (the zoo's tests and each topic's own)."""
    once = SHARED["once"]
    if once is None:  # outside a pytest session
        return _run_example(ex)
    return once(f"example-{ex.name}", lambda _: _run_example(ex))[1]

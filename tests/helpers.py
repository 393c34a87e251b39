"""Test helpers: tolerances of CONVENTIONS.md and finite differences."""

import numpy as np

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
    (about eps * |f| / h) far below the rtol 1e-6 of CONVENTIONS.md.
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

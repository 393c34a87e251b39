r"""Policy parameterizations: tabular softmax and log-linear.

A parameterization is small: the log-probabilities of theta, and the two
products with the Jacobian of :math:`\theta \mapsto \log\pi_\theta` (STYLE.md):

* ``log_prob_jvp(theta, v)``: a tangent in theta to a tangent in log pi,
  :math:`u[s,a] = \nabla_\theta \log\pi_\theta(a|s) \cdot v`;
* ``log_prob_vjp(theta, w)``: weights over (s, a) to a gradient in theta,
  :math:`g = \sum_{s,a} w[s,a]\, \nabla_\theta \log\pi_\theta(a|s)`.

The policy gradient, Fisher-vector products, surrogate, KL and PPO gradients
are all built from these two products, so none of them needs to know which
parameterization it works with.

The same two products at given samples (states s_i and actions a_i) form the
sample-level interface, which continuous policies share
(`refpg.lqr.LinearGaussian` has no table over states to offer):

* ``sample_log_probs(theta, states, actions)``: :math:`\log\pi_\theta(a_i|s_i)`;
* ``sample_log_prob_jvp(theta, v, states, actions)``:
  :math:`\nabla_\theta \log\pi_\theta(a_i|s_i) \cdot v`;
* ``sample_log_prob_vjp(theta, w, states, actions)``:
  :math:`\sum_i w_i \nabla_\theta \log\pi_\theta(a_i|s_i)`, over the whole
  batch or, with ``segments=``, per segment (one gradient per episode).

Code written against these (a score-function gradient over a batch, an
empirical Fisher-vector product, a sample KL gradient) works on tabular,
log-linear and linear-Gaussian policies alike.

Policies are *objects* that hold the structure (sizes, features), while theta
is a plain NumPy array passed alongside: ``policy.probs(theta)``. This keeps
theta a value that algorithms can copy, compare bit for bit and store.
"""

from __future__ import annotations

import numpy as np

from refpg._validation import as_float_array, check_positive_int, entry
from refpg.errors import InvalidInputError, NonFiniteError, ShapeError

__all__ = ["Parameterization", "TabularSoftmax", "LogLinear", "log_softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    r"""Row-wise :math:`\log \mathrm{softmax}(z)_a = z_a - \max z - \log\sum_b e^{z_b - \max z}`.

    Subtracting the row maximum first makes this finite for logits of any
    finite size (tested to +-1e3): no overflow, and log pi stays finite even
    where pi itself underflows to 0.
    """
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _missing(policy, method: str) -> NotImplementedError:
    return NotImplementedError(
        f"{type(policy).__name__} does not define {method}, which a refpg.Parameterization subclass must provide")


class Parameterization:
    """Base class: a differentiable map from theta to a policy pi (S, A)."""

    n_states: int
    n_actions: int

    @property
    def theta_shape(self) -> tuple:
        """Shape of theta."""
        raise _missing(self, "theta_shape")

    @property
    def n_params(self) -> int:
        """Number of scalar parameters."""
        return int(np.prod(self.theta_shape))

    def validate_theta(self, theta, name: str = "theta") -> np.ndarray:
        """Return theta as float64 after checking its shape and finiteness."""
        return as_float_array(theta, name, shape=self.theta_shape)

    def logits(self, theta: np.ndarray) -> np.ndarray:
        """Unnormalised log-probabilities, shape (S, A)."""
        raise _missing(self, "logits")

    def log_probs(self, theta: np.ndarray) -> np.ndarray:
        r""":math:`\log\pi_\theta(a|s)`, shape (S, A), finite everywhere.

        Raises `refpg.errors.ShapeError` for a theta of the wrong shape and
        `refpg.errors.NonFiniteError` for a non-finite theta or logits that
        overflow float64 (never returns NaN).
        """
        theta = np.asarray(theta)
        if theta.shape != self.theta_shape:
            self.validate_theta(theta)  # raises, naming the axis that is wrong
        z = self.logits(theta)
        if not np.isfinite(z).all():
            self.validate_theta(theta)  # a NaN or inf in theta itself is named there
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(z))[0])
            raise NonFiniteError(
                f"{entry('logits', idx)} is {float(z[idx])!r} for a finite theta: the logits overflow "
                "float64 (features @ theta); rescale the features or theta")
        return log_softmax(z)

    def probs(self, theta: np.ndarray) -> np.ndarray:
        r""":math:`\pi_\theta(a|s)`, shape (S, A); rows sum to 1."""
        return np.exp(self.log_probs(theta))

    def log_prob_jvp(self, theta, v, pi=None) -> np.ndarray:
        r""":math:`u[s,a] = \nabla_\theta \log\pi(a|s) \cdot v`, shape (S, A)."""
        raise _missing(self, "log_prob_jvp")

    def log_prob_vjp(self, theta, w, pi=None) -> np.ndarray:
        r""":math:`g = \sum_{s,a} w[s,a] \nabla_\theta \log\pi(a|s)`, shape of theta.

        `w` may carry leading batch axes, (..., S, A); they are kept.
        """
        raise _missing(self, "log_prob_vjp")

    def log_prob_jacobian(self, theta, pi=None) -> np.ndarray:
        r"""Dense Jacobian of log pi, shape (S*A, n_params), row ``s*A + a``."""
        raise _missing(self, "log_prob_jacobian")

    def _probs(self, theta, pi):
        return self.probs(theta) if pi is None else pi

    # -- the sample-level interface, shared with continuous policies -------------------------
    def _samples(self, states, actions):
        """states and actions as int arrays of one shape, every entry a valid index (named if not)."""
        out = []
        for name, arr, n in (("states", states, self.n_states), ("actions", actions, self.n_actions)):
            a = np.asarray(arr)
            if a.dtype == bool or a.dtype.kind not in "iu":
                raise InvalidInputError(f"{name} should be an integer array, actual dtype {a.dtype}")
            bad = (a < 0) | (a >= n)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InvalidInputError(
                    f"{entry(name, idx)} is {int(a[idx])} but the policy has {n} {name}; "
                    f"expected 0 <= {name[:-1]} < {n}")
            out.append(a)
        if out[0].shape != out[1].shape:
            raise ShapeError(f"states and actions should have the same shape, actual {out[0].shape} and "
                             f"{out[1].shape}")
        return out

    def sample_log_probs(self, theta, states, actions) -> np.ndarray:
        r""":math:`\log\pi_\theta(a_i|s_i)` at given samples, shape of `states`.

        Parameters
        ----------
        theta : ndarray of shape ``theta_shape``
        states, actions : array_like of int, one shape
            State and action indices of the samples.
        """
        s, a = self._samples(states, actions)
        return self.log_probs(theta)[s, a]

    def sample_log_prob_jvp(self, theta, v, states, actions) -> np.ndarray:
        r""":math:`\nabla_\theta \log\pi_\theta(a_i|s_i) \cdot v` at given samples, shape of `states`."""
        theta = self.validate_theta(theta)
        v = self.validate_theta(v, "v")
        s, a = self._samples(states, actions)
        return self.log_prob_jvp(theta, v, self.probs(theta))[s, a]

    def sample_log_prob_vjp(self, theta, w, states, actions, *, segments=None, n_segments=None) -> np.ndarray:
        r""":math:`\sum_i w_i \nabla_\theta \log\pi_\theta(a_i|s_i)`, shape ``(*lead, *theta_shape)``.

        `w` has shape ``(*lead, *states.shape)``: the sample axes are summed
        (repeated samples add up), leading axes are kept.

        With ``segments`` (ints of the shape of `states`, in -1..n_segments-1)
        and ``n_segments``, `w` has the shape of `states` and the sum is taken
        per segment instead, shape ``(n_segments, *theta_shape)``: one
        gradient per episode, say, from `refpg.estimators.episode_ids`;
        samples of segment -1 are left out.
        """
        theta = self.validate_theta(theta)
        s, a = self._samples(states, actions)
        w = as_float_array(w, "w")
        if segments is not None or n_segments is not None:
            seg, E = _check_segments(segments, n_segments, s.shape)
            if w.shape != s.shape:
                raise ShapeError(f"w should have the shape {s.shape} of states when segments are given, "
                                 f"actual shape {w.shape}")
            keep = seg >= 0
            W = np.zeros((E, self.n_states, self.n_actions))
            np.add.at(W, (seg[keep], s[keep], a[keep]), w[keep])
            return self.log_prob_vjp(theta, W, self.probs(theta))
        if w.ndim < s.ndim or w.shape[w.ndim - s.ndim:] != s.shape:
            raise ShapeError(f"w should have shape (..., {', '.join(map(str, s.shape))}) to match states, "
                             f"actual shape {w.shape}")
        lead = w.shape[:w.ndim - s.ndim]
        W = np.zeros((int(np.prod(lead)), self.n_states, self.n_actions))
        np.add.at(W, (slice(None), s.ravel(), a.ravel()), w.reshape(W.shape[0], -1))
        return self.log_prob_vjp(theta, W.reshape(lead + W.shape[1:]), self.probs(theta))


def _check_segments(segments, n_segments, shape):
    """(segments as an int array of `shape` in -1..n_segments-1, n_segments), or a named error."""
    if segments is None or n_segments is None:
        raise InvalidInputError("segments and n_segments go together: pass both or neither")
    n = check_positive_int(n_segments, "n_segments", minimum=0)
    seg = np.asarray(segments)
    if seg.dtype == bool or seg.dtype.kind not in "iu":
        raise InvalidInputError(f"segments should be an integer array, actual dtype {seg.dtype}")
    if seg.shape != shape:
        raise ShapeError(f"segments should have the shape {shape} of the samples, actual shape {seg.shape}")
    bad = (seg < -1) | (seg >= n)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(f"{entry('segments', idx)} is {int(seg[idx])}; expected -1 (left out) or "
                                f"0 <= segment < n_segments = {n}")
    return seg, n


class TabularSoftmax(Parameterization):
    r"""Tabular softmax :math:`\pi_\theta(a|s) = e^{\theta_{s,a}} / \sum_b e^{\theta_{s,b}}`.

    theta has shape (S, A) and is the logit table itself.
    :math:`\partial \log\pi(a|s) / \partial\theta_{s,b} = 1[a=b] - \pi(b|s)`
    ([Agarwal2021], Lemma C.1).

    Parameters
    ----------
    n_states, n_actions : int
    """

    def __init__(self, n_states: int, n_actions: int):
        self.n_states = check_positive_int(n_states, "n_states")
        self.n_actions = check_positive_int(n_actions, "n_actions")

    @classmethod
    def for_mdp(cls, mdp) -> "TabularSoftmax":
        """The tabular softmax parameterization sized for `mdp`."""
        return cls(mdp.n_states, mdp.n_actions)

    @property
    def theta_shape(self) -> tuple:
        """``(S, A)``: one logit per state and action."""
        return (self.n_states, self.n_actions)

    def __repr__(self) -> str:
        return f"TabularSoftmax(n_states={self.n_states}, n_actions={self.n_actions})"

    def __eq__(self, other) -> bool:
        return isinstance(other, TabularSoftmax) and self.theta_shape == other.theta_shape

    def __hash__(self) -> int:
        return hash(("TabularSoftmax", self.theta_shape))

    def logits(self, theta):
        return np.asarray(theta, dtype=np.float64)

    def log_prob_jvp(self, theta, v, pi=None):
        pi = self._probs(theta, pi)
        return v - (pi * v).sum(axis=-1, keepdims=True)

    def log_prob_vjp(self, theta, w, pi=None):
        # Leading batch axes of w are kept: (..., S, A) -> (..., S, A).
        pi = self._probs(theta, pi)
        return w - pi * w.sum(axis=-1, keepdims=True)

    def log_prob_jacobian(self, theta, pi=None):
        pi = self._probs(theta, pi)
        S, A = pi.shape
        jac = np.zeros((S, A, S, A))
        s = np.arange(S)
        # Block s: d log pi(a|s) / d theta[s, b] = 1[a = b] - pi(b|s).
        jac[s, :, s, :] = np.eye(A)[None] - pi[:, None, :]
        return jac.reshape(S * A, S * A)


class LogLinear(Parameterization):
    r"""Log-linear policy :math:`\pi_\theta(a|s) \propto \exp(\phi(s,a)^\top\theta)`.

    :math:`\nabla_\theta \log\pi(a|s) = \phi(s,a) - \sum_b \pi(b|s)\phi(s,b)`
    ([Agarwal2021], Section 6.1.1).

    Parameters
    ----------
    features : array_like, shape (S, A, d)
        Feature vectors :math:`\phi(s, a)`; finite.
    """

    def __init__(self, features):
        phi = as_float_array(features, "features", ndim=3)
        if min(phi.shape) == 0:
            raise ShapeError(f"features should have shape (S, A, d) with S, A, d >= 1, actual shape {phi.shape}")
        phi = phi.copy()
        phi.flags.writeable = False
        self.features = phi
        self.n_states, self.n_actions, self.n_features = phi.shape

    @classmethod
    def one_hot(cls, n_states: int, n_actions: int) -> "LogLinear":
        """Indicator features: a log-linear policy equal to tabular softmax."""
        S = check_positive_int(n_states, "n_states")
        A = check_positive_int(n_actions, "n_actions")
        return cls(np.eye(S * A).reshape(S, A, S * A))

    @property
    def theta_shape(self) -> tuple:
        """``(n_features,)``: one weight per feature."""
        return (self.n_features,)

    def __repr__(self) -> str:
        S, A, d = self.features.shape
        return f"LogLinear(features of shape ({S}, {A}, {d}))"

    def logits(self, theta):
        return self.features @ np.asarray(theta, dtype=np.float64)

    def _centred(self, pi):
        # phi(s, a) - E_{b ~ pi(.|s)} phi(s, b): the score function.
        return self.features - np.einsum("sb,sbd->sd", pi, self.features)[:, None, :]

    def log_prob_jvp(self, theta, v, pi=None):
        pi = self._probs(theta, pi)
        u = self.features @ v
        return u - np.einsum("sb,sb->s", pi, u)[:, None]

    def log_prob_vjp(self, theta, w, pi=None):
        # Leading batch axes of w are kept: (..., S, A) -> (..., d).
        pi = self._probs(theta, pi)
        return np.einsum("...sa,sad->...d", w, self._centred(pi))

    def log_prob_jacobian(self, theta, pi=None):
        pi = self._probs(theta, pi)
        return self._centred(pi).reshape(-1, self.n_features)

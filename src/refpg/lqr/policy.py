r"""The linear-Gaussian policy :math:`\pi_\theta(u|x) = N(-K x, \Psi)`, :math:`\Psi = \mathrm{diag}(e^{2\,\mathrm{log\_std}})`.

The standard deviation does not depend on the state (a free ``log_std``
vector, as SB3's and CleanRL's Gaussian policies have). theta is one flat
float64 vector, the column-major vec of K followed by log_std:

.. math::
    \theta = \big(\mathrm{vec}(K), \mathrm{log\_std}\big),\qquad
    \theta[j m + i] = K_{ij},\quad \theta[m n + i] = \mathrm{log\_std}_i

(``K.ravel(order="F")``), the order in which the Fisher matrix is the
Kronecker product :math:`(1-\gamma)\Sigma_K \otimes \Psi^{-1}` (`refpg.lqr.fisher_matrix`).

The policy offers the sample-level half of the parameterisation interface
of `refpg.policies` (every `refpg.Parameterization` has it too): the
log-probabilities of given (state, action) samples and the two products with
the Jacobian of :math:`\theta \mapsto \log\pi_\theta(u_i|x_i)`,

* ``sample_log_prob_jvp(theta, v, states, actions)``: a tangent v in theta to
  :math:`\nabla_\theta\log\pi_\theta(u_i|x_i)\cdot v`, one number per sample;
* ``sample_log_prob_vjp(theta, w, states, actions)``: weights w over the
  samples to :math:`\sum_i w_i \nabla_\theta\log\pi_\theta(u_i|x_i)`, over
  the whole batch or, with ``segments=``, per segment (one gradient per episode).

So a score-function gradient, a Fisher-vector product or a KL gradient
written against these works on it without knowing it is Gaussian. There is no
table of log pi over states: the state space is continuous.
"""

from __future__ import annotations

import numpy as np

from refpg._validation import as_float_array, check_positive_int, entry
from refpg.errors import InvalidInputError, ShapeError
from refpg.policies import _check_segments

__all__ = ["LinearGaussian", "LOG_STD_BOUND"]

#: Largest :math:`|\mathrm{log\_std}_i|` accepted: :math:`\sigma^{\pm 2} \le e^{200}`, so
#: :math:`\Psi`, :math:`\Psi^{-1}` and their products with O(1) costs stay finite in float64.
LOG_STD_BOUND = 100.0

_LOG_2PI = float(np.log(2.0 * np.pi))


class LinearGaussian:
    r"""The linear-Gaussian policy :math:`N(-K x, \mathrm{diag}(e^{2\,\mathrm{log\_std}}))`.

    .. math::
        \log\pi_\theta(u|x) = -\sum_{i=1}^m \Big[\tfrac12 z_i^2 + \mathrm{log\_std}_i
        + \tfrac12\log 2\pi\Big],\qquad z = \Psi^{-1/2}(u + K x)

    (summed over action dimensions, never averaged). Its score is
    :math:`\nabla_K \log\pi = -\Psi^{-1/2} z\, x^\top` and
    :math:`\partial\log\pi/\partial\,\mathrm{log\_std}_i = z_i^2 - 1`.

    Parameters
    ----------
    state_dim, action_dim : int
        n and m, at least 1. theta has shape ``(m * n + m,)``, in the order
        of the module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from refpg.lqr import LinearGaussian
    >>> pol = LinearGaussian(state_dim=2, action_dim=1)
    >>> theta = pol.pack(np.array([[0.5, -0.2]]), np.array([-1.0]))
    >>> theta
    array([ 0.5, -0.2, -1. ])
    >>> K, log_std = pol.unpack(theta)
    >>> K
    array([[ 0.5, -0.2]])

    References
    ----------
    [Fazel2018]; docs/conventions.md, "Linear-quadratic-Gaussian".
    """

    def __init__(self, state_dim: int, action_dim: int):
        self.state_dim = check_positive_int(state_dim, "state_dim")
        self.action_dim = check_positive_int(action_dim, "action_dim")

    @classmethod
    def for_system(cls, system) -> "LinearGaussian":
        """The linear-Gaussian policy sized for a `refpg.lqr.LQRSystem`."""
        return cls(system.state_dim, system.action_dim)

    def __repr__(self) -> str:
        return f"LinearGaussian(state_dim={self.state_dim}, action_dim={self.action_dim})"

    def __eq__(self, other) -> bool:
        return isinstance(other, LinearGaussian) and (self.state_dim, self.action_dim) == (
            other.state_dim, other.action_dim)

    def __hash__(self) -> int:
        return hash(("LinearGaussian", self.state_dim, self.action_dim))

    @property
    def theta_shape(self) -> tuple:
        """``(m * n + m,)``: vec(K) column-major, then log_std."""
        return (self.action_dim * self.state_dim + self.action_dim,)

    @property
    def n_params(self) -> int:
        """Number of scalar parameters, m n + m."""
        return self.theta_shape[0]

    # -- packing -------------------------------------------------------------
    def validate_theta(self, theta, name: str = "theta") -> np.ndarray:
        """Return theta as float64 after checking its shape, finiteness and the log_std range.

        Raises
        ------
        refpg.errors.InvalidInputError
            A theta of the wrong shape, non-finite, or with a log_std entry
            beyond `LOG_STD_BOUND` in magnitude (named as ``theta[k]``).
        """
        theta = as_float_array(theta, name, shape=self.theta_shape)
        mn = self.action_dim * self.state_dim
        _check_log_std_range(theta[mn:], name, offset=mn)
        return theta

    def pack(self, K, log_std) -> np.ndarray:
        """theta from a gain K of shape (m, n) and a log_std of shape (m,).

        Layout only (shapes and finiteness are checked, the log_std range is
        not), so it packs tangents and gradients in theta's order too.
        """
        K = as_float_array(K, "K", shape=(self.action_dim, self.state_dim))
        log_std = as_float_array(log_std, "log_std", shape=(self.action_dim,))
        return np.concatenate([K.ravel(order="F"), log_std])

    def unpack(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """``(K, log_std)`` from a theta-shaped vector, K of shape (m, n) and log_std of shape (m,).

        Layout only, like `pack`: new arrays, for parameters, tangents and gradients alike.
        """
        theta = as_float_array(theta, "theta", shape=self.theta_shape)
        K, log_std = self._split(theta)
        return K.copy(), log_std.copy()

    def _split(self, theta):
        n, m = self.state_dim, self.action_dim
        return theta[:m * n].reshape(n, m).T, theta[m * n:]

    def _vec(self, gK, glog):
        """Pack gradients of shape (..., m, n) and (..., m) into (..., n_params)."""
        lead = gK.shape[:-2]
        return np.concatenate([np.swapaxes(gK, -1, -2).reshape(lead + (-1,)), glog], axis=-1)

    # -- samples -------------------------------------------------------------
    def _samples(self, states, actions):
        n, m = self.state_dim, self.action_dim
        x = as_float_array(states, "states")
        u = as_float_array(actions, "actions")
        if x.ndim < 1 or x.shape[-1] != n:
            raise ShapeError(f"states should have shape (..., {n}), actual shape {x.shape}")
        if u.ndim < 1 or u.shape[-1] != m:
            raise ShapeError(f"actions should have shape (..., {m}), actual shape {u.shape}")
        if x.shape[:-1] != u.shape[:-1]:
            raise ShapeError(f"states and actions should have the same batch shape, actual {x.shape[:-1]} "
                             f"and {u.shape[:-1]} (states {x.shape}, actions {u.shape})")
        return x, u

    def _standardised(self, theta, x, u):
        K, log_std = self._split(theta)
        inv_std = np.exp(-log_std)
        return (u + x @ K.T) * inv_std, inv_std, log_std

    def mean_actions(self, theta, states) -> np.ndarray:
        """The policy mean :math:`-K x` at each state, shape (..., m)."""
        theta = self.validate_theta(theta)
        x = as_float_array(states, "states")
        if x.ndim < 1 or x.shape[-1] != self.state_dim:
            raise ShapeError(f"states should have shape (..., {self.state_dim}), actual shape {x.shape}")
        K, _ = self._split(theta)
        return -(x @ K.T)

    def sample_actions(self, theta, states, rng) -> np.ndarray:
        r"""Draw :math:`u = -K x + \Psi^{1/2}\varepsilon`, :math:`\varepsilon \sim N(0, I)`, one per state.

        Parameters
        ----------
        theta : ndarray of shape ``theta_shape``
        states : array_like of shape (..., n)
        rng : numpy.random.Generator or int
            The source of the noise (an int seeds a new generator).

        Returns
        -------
        ndarray of shape (..., m)
        """
        mean = self.mean_actions(theta, states)
        rng = np.random.default_rng(rng)
        _, log_std = self._split(np.asarray(theta, dtype=np.float64))
        return mean + np.exp(log_std) * rng.standard_normal(mean.shape)

    def entropy(self, theta) -> float:
        r"""Differential entropy :math:`\sum_i \mathrm{log\_std}_i + \tfrac m2 (1 + \log 2\pi)`, the same at every state."""
        _, log_std = self.unpack(theta)
        return float(log_std.sum() + 0.5 * self.action_dim * (1.0 + _LOG_2PI))

    def sample_log_probs(self, theta, states, actions) -> np.ndarray:
        r""":math:`\log\pi_\theta(u_i|x_i)` at each sample, summed over action dimensions.

        Parameters
        ----------
        theta : ndarray of shape ``theta_shape``
        states : array_like of shape (..., n)
        actions : array_like of shape (..., m)
            The same batch shape as `states`.

        Returns
        -------
        ndarray of the batch shape
        """
        theta = self.validate_theta(theta)
        x, u = self._samples(states, actions)
        z, _, log_std = self._standardised(theta, x, u)
        return -0.5 * np.einsum("...i,...i->...", z, z) - log_std.sum() - 0.5 * self.action_dim * _LOG_2PI

    def sample_log_prob_jvp(self, theta, v, states, actions) -> np.ndarray:
        r""":math:`\nabla_\theta\log\pi_\theta(u_i|x_i)\cdot v` at each sample, shape of the batch.

        .. math::
            -\sum_i \frac{z_i}{\sigma_i}(V_K x)_i + \sum_i v_{\mathrm{log\_std},i}(z_i^2 - 1)

        with :math:`(V_K, v_{\mathrm{log\_std}})` the unpacked tangent v.
        """
        theta = self.validate_theta(theta)
        v = as_float_array(v, "v", shape=self.theta_shape)
        x, u = self._samples(states, actions)
        z, inv_std, _ = self._standardised(theta, x, u)
        VK, vlog = self._split(v)
        return -np.einsum("...i,...i->...", z * inv_std, x @ VK.T) + (z * z - 1.0) @ vlog

    def sample_log_prob_vjp(self, theta, w, states, actions, *, segments=None, n_segments=None) -> np.ndarray:
        r""":math:`\sum_i w_i\, \nabla_\theta\log\pi_\theta(u_i|x_i)`, packed like theta.

        `w` has shape ``(*lead, *batch)``: leading axes are kept, the
        batch axes (those of ``states.shape[:-1]``) are summed, so the result
        has shape ``(*lead, n_params)``.

        .. math::
            g_K = -\sum_i w_i\, \Psi^{-1/2} z_i\, x_i^\top,\qquad
            g_{\mathrm{log\_std}} = \sum_i w_i\,(z_i^2 - 1)

        With ``segments`` (ints of the batch shape, in -1..n_segments-1) and
        ``n_segments``, as for `refpg.Parameterization.sample_log_prob_vjp`:
        `w` has the batch shape, the sums are per segment, shape
        ``(n_segments, n_params)``, and segment -1 is left out.
        """
        theta = self.validate_theta(theta)
        x, u = self._samples(states, actions)
        batch = x.shape[:-1]
        w = as_float_array(w, "w")
        z, inv_std, _ = self._standardised(theta, x, u)
        zs = (z * inv_std).reshape(-1, self.action_dim)
        xf = x.reshape(-1, self.state_dim)
        score_log = (z * z - 1.0).reshape(-1, self.action_dim)
        if segments is not None or n_segments is not None:
            seg, E = _check_segments(segments, n_segments, batch)
            if w.shape != batch:
                raise ShapeError(f"w should have the batch shape {batch} of states when segments are given, "
                                 f"actual shape {w.shape}")
            keep = seg.ravel() >= 0
            ids, wk = seg.ravel()[keep], w.ravel()[keep]
            gK = np.zeros((E, self.action_dim, self.state_dim))
            glog = np.zeros((E, self.action_dim))
            np.add.at(gK, ids, -(wk[:, None] * zs[keep])[:, :, None] * xf[keep][:, None, :])
            np.add.at(glog, ids, wk[:, None] * score_log[keep])
            return self._vec(gK, glog)
        if w.shape[w.ndim - len(batch):] != batch or w.ndim < len(batch):
            raise ShapeError(f"w should have shape (..., {', '.join(map(str, batch))}) to match the batch shape "
                             f"{batch} of states, actual shape {w.shape}")
        lead = w.shape[:w.ndim - len(batch)]
        wf = w.reshape(lead + (-1,))
        gK = -np.einsum("...b,bi,bj->...ij", wf, zs, xf)
        return self._vec(gK, wf @ score_log)

    def sample_log_prob_jacobian(self, theta, states, actions) -> np.ndarray:
        r"""Dense :math:`\nabla_\theta\log\pi_\theta(u_i|x_i)`, shape ``(*batch, n_params)``."""
        theta = self.validate_theta(theta)
        x, u = self._samples(states, actions)
        z, inv_std, _ = self._standardised(theta, x, u)
        gK = -(z * inv_std)[..., :, None] * x[..., None, :]
        return self._vec(gK, z * z - 1.0)


def _check_log_std_range(log_std: np.ndarray, name: str, offset: int = 0) -> None:
    bad = np.abs(log_std) > LOG_STD_BOUND
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(
            f"{entry(name, (k + offset,))}{'' if name == 'log_std' and not offset else f' (log_std[{k}])'} is "
            f"{float(log_std[k])!r}; expected |log_std| <= "
            f"{LOG_STD_BOUND:g} (sigma^2 = exp(2 log_std) and its inverse must stay finite in float64 products)")

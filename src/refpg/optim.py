"""Reference optimiser steps: SGD, Adam (AdamW), RMSprop and global gradient-norm clipping.

Each function takes one step exactly as the named library defines it, in
float64, so that a library's update can be compared with the reference step by
step. Parameters and gradients are either one array or a tuple/list of arrays
(several tensors, as a network's parameters); the result has the same form.
States are NamedTuples holding the per-tensor buffers in the same form, and
``state=None`` starts a fresh run.

The step is a descent step (``params - lr * direction``) unless
``maximize=True``, which, as in torch, negates the gradient before anything
else, so the stored moments are those of the negated gradient.

References
----------
[Kingma2015] D. P. Kingma and J. Ba, "Adam: A Method for Stochastic
Optimization", ICLR 2015.
[Loshchilov2019] I. Loshchilov and F. Hutter, "Decoupled Weight Decay
Regularization", ICLR 2019.
[Sutskever2013] I. Sutskever et al., "On the importance of initialization and
momentum in deep learning", ICML 2013.
[Pascanu2013] R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty of
training recurrent neural networks", ICML 2013.
[Tieleman2012] T. Tieleman and G. Hinton, "Lecture 6.5 - rmsprop: Divide the
gradient by a running average of its recent magnitude", COURSERA: Neural
Networks for Machine Learning, 2012.
[Graves2013] A. Graves, "Generating Sequences With Recurrent Neural Networks",
arXiv:1308.0850, 2013 (the centred variant).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import numpy as np

from refpg._validation import as_float_array, check_choice, check_positive_int, check_real, entry
from refpg.errors import InvalidInputError, NonFiniteError, ShapeError

__all__ = ["AdamState", "ClipResult", "RMSpropState", "SGDState", "adam_step", "clip_grad_norm", "rmsprop_step",
           "sgd_step"]

_CONVENTIONS = ("torch", "optax")

#: ``torch.nn.utils.clip_grad_norm_`` adds this to the total norm before dividing.
TORCH_CLIP_EPS = 1e-6

Tensors = Union[np.ndarray, tuple]


class SGDState(NamedTuple):
    """SGD's momentum buffers (pass it back to continue a run).

    Attributes
    ----------
    momentum_buffer : ndarray, tuple of ndarray, or None
        The buffer ``b`` per tensor, in the form of the parameters; ``None``
        before the first step with momentum (torch then sets ``b = g``).
    """

    momentum_buffer: object


class AdamState(NamedTuple):
    """Adam's moments after `t` steps (pass it back to continue a run).

    Attributes
    ----------
    m, v : ndarray or tuple of ndarray
        First and second moment estimates (not bias-corrected), in the form
        of the parameters.
    t : int
        Number of steps taken.
    """

    m: object
    v: object
    t: int


class RMSpropState(NamedTuple):
    r"""RMSprop's buffers after `t` steps (pass it back to continue a run).

    Attributes
    ----------
    square_avg : ndarray or tuple of ndarray
        The running average :math:`v` of the squared gradient, in the form of
        the parameters.
    grad_avg : ndarray, tuple of ndarray, or None
        The running average :math:`\bar g` of the gradient (centred runs
        only; ``None`` otherwise).
    momentum_buffer : ndarray, tuple of ndarray, or None
        The momentum buffer :math:`b` (runs with momentum only; ``None``
        otherwise). With ``convention="torch"`` it accumulates the scaled
        gradient :math:`g/D`; with ``convention="optax"`` it is the negated
        trace of ``optax.trace``, which accumulates :math:`\eta\,g/D`
        (the learning rate inside, as optax scales before the trace).
    t : int
        Number of steps taken.
    """

    square_avg: object
    grad_avg: object
    momentum_buffer: object
    t: int


class ClipResult(NamedTuple):
    """Gradients after global-norm clipping.

    Attributes
    ----------
    grads : ndarray or tuple of ndarray
        The clipped gradients, in the form given.
    total_norm : float
        The global 2-norm of the gradients before clipping.
    """

    grads: object
    total_norm: float


# -- input handling ------------------------------------------------------------------

def _as_tensors(x, name: str):
    """Return (list of float64 arrays, was_single)."""
    if isinstance(x, (tuple, list)):
        if len(x) == 0:
            raise InvalidInputError(f"{name} should hold at least one array, actual an empty {type(x).__name__}")
        arrs = [as_float_array(a, f"{name}[{i}]") for i, a in enumerate(x)]
        return arrs, False
    return [as_float_array(x, name)], True


def _check_like(arrs, ref, name: str, ref_name: str):
    if len(arrs) != len(ref):
        raise ShapeError(f"{name} should hold {len(ref)} arrays (as {ref_name}), actual {len(arrs)}")
    for i, (a, r) in enumerate(zip(arrs, ref)):
        if a.shape != r.shape:
            label = name if len(ref) == 1 else f"{name}[{i}]"
            raise ShapeError(f"{label} should have shape {r.shape} (as {ref_name}), actual {a.shape}")


def _state_tensors(x, name: str, ref, single: bool):
    if single and not isinstance(x, (tuple, list)):
        arrs = [as_float_array(x, name)]
    elif not single and isinstance(x, (tuple, list)):
        arrs = [as_float_array(a, f"{name}[{i}]") for i, a in enumerate(x)]
    else:
        form = "one array" if single else "a tuple of arrays"
        raise InvalidInputError(f"{name} should be {form} (as params), actual {type(x).__name__}")
    _check_like(arrs, ref, name, "params")
    return arrs


def _out(arrs, single: bool):
    return arrs[0] if single else tuple(arrs)


def _params_and_grad(params, grad):
    p, single = _as_tensors(params, "params")
    g, gsingle = _as_tensors(grad, "grad")
    if gsingle != single:
        raise InvalidInputError("grad should have the form of params (one array, or a tuple of arrays), actual "
                                f"{'one array' if gsingle else 'a tuple'} for {'one array' if single else 'a tuple'}")
    _check_like(g, p, "grad", "params")
    return p, g, single


def _check_bool(x, name: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise InvalidInputError(f"{name} should be a bool, actual {x!r}")
    return bool(x)


# -- SGD -----------------------------------------------------------------------------

def sgd_step(params, grad, state: SGDState | None = None, *, lr, momentum=0.0, dampening=0.0,
             nesterov=False, weight_decay=0.0, maximize=False, convention="torch"):
    r"""One SGD step, as torch.optim.SGD or optax.sgd.

    With :math:`g_t` the gradient (negated first if `maximize`) and
    :math:`\lambda` the weight decay, torch.optim.SGD takes

    .. math::

        g_t &\leftarrow g_t + \lambda\,p_{t-1}, \\
        b_t &= g_t \ (t = 1), \qquad
        b_t = \mu\,b_{t-1} + (1 - \tau)\,g_t \ (t > 1), \\
        d_t &= g_t + \mu\,b_t \ \text{(Nesterov)}, \qquad d_t = b_t \ \text{(otherwise)}, \\
        p_t &= p_{t-1} - \eta\,d_t,

    with momentum :math:`\mu`, dampening :math:`\tau` and learning rate
    :math:`\eta`; with :math:`\mu = 0` there is no buffer and
    :math:`d_t = g_t`. Note that the first buffer is :math:`g_1`, not
    :math:`(1-\tau) g_1`.

    optax.sgd keeps a trace :math:`b_t = g_t + \mu b_{t-1}` from
    :math:`b_0 = 0` (``optax.trace``), so the first buffer is :math:`g_1` as
    in torch and the two agree wherever both are defined; optax.sgd has no
    dampening and no weight decay (nor maximize), so ``convention="optax"``
    refuses nonzero `dampening`, `weight_decay` and ``maximize=True``.

    Parameters
    ----------
    params, grad : ndarray or tuple/list of ndarray
        Parameters and the gradient of the loss, of equal form and shapes.
    state : SGDState or None
        The state returned by the previous step; ``None`` for the first.
    lr : float
        Learning rate, >= 0.
    momentum, dampening : float
        :math:`\mu \ge 0` and :math:`\tau \in [0, 1]`.
    nesterov : bool
        Nesterov momentum [Sutskever2013]; needs :math:`\mu > 0` and
        :math:`\tau = 0` (as torch requires).
    weight_decay : float
        L2 coefficient :math:`\lambda \ge 0`, added to the gradient.
    maximize : bool
        Ascend instead of descend (torch's flag).
    convention : {"torch", "optax"}
        Which library's definition (see above).

    Returns
    -------
    params : ndarray or tuple of ndarray
        The parameters after the step, in the form given.
    state : SGDState
        Pass it to the next step.

    Raises
    ------
    InvalidInputError
        A setting outside its range, a form or shape mismatch, a non-finite entry.

    References
    ----------
    [Sutskever2013]; torch.optim.SGD and optax.sgd documentation.
    """
    convention = check_choice(convention, "convention", _CONVENTIONS)
    lr = check_real(lr, "lr", low=0.0)
    momentum = check_real(momentum, "momentum", low=0.0)
    dampening = check_real(dampening, "dampening", low=0.0, high=1.0)
    weight_decay = check_real(weight_decay, "weight_decay", low=0.0)
    nesterov = _check_bool(nesterov, "nesterov")
    maximize = _check_bool(maximize, "maximize")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise InvalidInputError(
            f"nesterov=True needs momentum > 0 and dampening == 0, actual momentum={momentum!r}, "
            f"dampening={dampening!r}")
    if convention == "optax":
        for name, value in (("dampening", dampening), ("weight_decay", weight_decay)):
            if value != 0.0:
                raise InvalidInputError(f"{name} should be 0 with convention='optax' (optax.sgd has none), "
                                        f"actual {value!r}")
        if maximize:
            raise InvalidInputError("maximize should be False with convention='optax' (optax.sgd has no such flag)")
    p, g, single = _params_and_grad(params, grad)
    if state is None:
        state = SGDState(None)
    if not isinstance(state, SGDState):
        raise InvalidInputError(f"state should be an SGDState or None, actual {type(state).__name__}")
    buf = None
    if state.momentum_buffer is not None:
        buf = _state_tensors(state.momentum_buffer, "state.momentum_buffer", p, single)

    new_p, new_buf = [], []
    for i, (pi, gi) in enumerate(zip(p, g)):
        d = -gi if maximize else gi
        if weight_decay != 0.0:
            d = d + weight_decay * pi
        if momentum != 0.0:
            if buf is None:
                b = d.copy()
            elif convention == "optax":
                b = d + momentum * buf[i]
            else:
                b = momentum * buf[i] + (1.0 - dampening) * d
            new_buf.append(b)
            d = d + momentum * b if nesterov else b
        new_p.append(pi - lr * d)
    return _out(new_p, single), SGDState(_out(new_buf, single) if momentum != 0.0 else None)


# -- Adam ----------------------------------------------------------------------------

def adam_step(params, grad, state: AdamState | None = None, *, lr, beta1=0.9, beta2=0.999, eps=1e-8,
              eps_root=0.0, weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
              convention="torch"):
    r"""One Adam (or AdamW) step, as torch.optim.Adam/AdamW or optax.adam/adamw.

    With :math:`g_t` the gradient (negated first if `maximize`),

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\,g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\,g_t^2, \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t), \\
        p_t &= p_{t-1} - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
              \;[\, - \eta\lambda\,p_{t-1} \text{ if decoupled}\,],

    from :math:`m_0 = v_0 = 0` [Kingma2015]. Both libraries add `eps` to the
    square root of the bias-corrected :math:`\hat v_t` (not to :math:`v_t`,
    and not inside the root). `eps_root` is optax's term inside the root;
    torch has none, so ``convention="torch"`` refuses a nonzero `eps_root`.
    torch computes the step as
    :math:`(\eta / (1-\beta_1^t))\, m_t / (\sqrt{v_t} / \sqrt{1-\beta_2^t} + \epsilon)`,
    the same number; this function follows each library's order of
    operations so that the two agree to rounding.

    Weight decay :math:`\lambda`: coupled (torch.optim.Adam's
    ``weight_decay``) adds :math:`\lambda p_{t-1}` to :math:`g_t` before the
    moments; decoupled [Loshchilov2019] (torch.optim.AdamW, optax.adamw)
    subtracts :math:`\eta\lambda p_{t-1}` from the parameters. optax.adam has
    no coupled decay and no maximize, so ``convention="optax"`` refuses them.

    Parameters
    ----------
    params, grad : ndarray or tuple/list of ndarray
        Parameters and the gradient of the loss, of equal form and shapes.
    state : AdamState or None
        The state returned by the previous step; ``None`` for the first.
    lr : float
        Learning rate :math:`\eta \ge 0`.
    beta1, beta2 : float
        Moment decay rates, in [0, 1).
    eps, eps_root : float
        :math:`\epsilon \ge 0` outside the root, :math:`\epsilon_{root} \ge 0`
        inside it (optax only).
    weight_decay : float
        :math:`\lambda \ge 0`.
    decoupled_weight_decay : bool
        AdamW's decoupled decay instead of the L2 term.
    maximize : bool
        Ascend instead of descend (torch's flag).
    convention : {"torch", "optax"}
        Which library's definition (see above).

    Returns
    -------
    params : ndarray or tuple of ndarray
        The parameters after the step, in the form given.
    state : AdamState
        Pass it to the next step.

    Raises
    ------
    InvalidInputError
        A setting outside its range, a form or shape mismatch, a non-finite entry.

    References
    ----------
    [Kingma2015] Algorithm 1; [Loshchilov2019] Algorithm 2; torch.optim.Adam
    and optax.scale_by_adam documentation.
    """
    convention = check_choice(convention, "convention", _CONVENTIONS)
    lr = check_real(lr, "lr", low=0.0)
    beta1 = check_real(beta1, "beta1", low=0.0, high=1.0, high_open=True)
    beta2 = check_real(beta2, "beta2", low=0.0, high=1.0, high_open=True)
    eps = check_real(eps, "eps", low=0.0)
    eps_root = check_real(eps_root, "eps_root", low=0.0)
    weight_decay = check_real(weight_decay, "weight_decay", low=0.0)
    decoupled = _check_bool(decoupled_weight_decay, "decoupled_weight_decay")
    maximize = _check_bool(maximize, "maximize")
    if convention == "torch" and eps_root != 0.0:
        raise InvalidInputError(f"eps_root should be 0 with convention='torch' (torch.optim.Adam has none), "
                                f"actual {eps_root!r}")
    if convention == "optax":
        if maximize:
            raise InvalidInputError("maximize should be False with convention='optax' (optax.adam has no such flag)")
        if weight_decay != 0.0 and not decoupled:
            raise InvalidInputError("weight_decay needs decoupled_weight_decay=True with convention='optax' "
                                    "(optax.adamw's decay; optax.adam has no L2 term)")
    p, g, single = _params_and_grad(params, grad)
    if state is None:
        state = AdamState(_out([np.zeros_like(a) for a in p], single),
                          _out([np.zeros_like(a) for a in p], single), 0)
    if not isinstance(state, AdamState):
        raise InvalidInputError(f"state should be an AdamState or None, actual {type(state).__name__}")
    m = _state_tensors(state.m, "state.m", p, single)
    v = _state_tensors(state.v, "state.v", p, single)
    for i, vi in enumerate(v):
        if (vi < 0).any():
            label = "state.v" if single else f"state.v[{i}]"
            raise InvalidInputError(f"{label} should be >= 0 (a second moment), actual min {vi.min()!r}")
    t = check_positive_int(state.t, "state.t", minimum=0) + 1

    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    new_p, new_m, new_v = [], [], []
    for pi, gi, mi, vi in zip(p, g, m, v):
        d = -gi if maximize else gi
        if weight_decay != 0.0 and not decoupled:
            d = d + weight_decay * pi
        m_t = beta1 * mi + (1.0 - beta1) * d
        v_t = beta2 * vi + (1.0 - beta2) * d * d
        if convention == "torch":
            base = pi * (1.0 - lr * weight_decay) if decoupled else pi
            denom = np.sqrt(v_t) / math.sqrt(bc2) + eps
            p_t = base - (lr / bc1) * m_t / denom
        else:
            u = (m_t / bc1) / (np.sqrt(v_t / bc2 + eps_root) + eps)
            if decoupled:
                u = u + weight_decay * pi
            p_t = pi - lr * u
        if not np.all(np.isfinite(p_t)):
            raise NonFiniteError("the Adam step overflowed to a non-finite parameter; "
                                 "gradients or lr are too large for float64")
        new_p.append(p_t)
        new_m.append(m_t)
        new_v.append(v_t)
    return _out(new_p, single), AdamState(_out(new_m, single), _out(new_v, single), t)


# -- RMSprop -------------------------------------------------------------------------

_RMSPROP_DEFAULT_ALPHA = {"torch": 0.99, "optax": 0.9}
_RMSPROP_DEFAULT_EPS_IN_SQRT = {"torch": False, "optax": True}


def _optional_state(x, name: str, ref, single: bool, wanted: bool, why: str):
    if wanted and x is None:
        raise InvalidInputError(f"{name} should hold arrays (as params) since {why}, actual None; "
                                "pass the state of a run with the same settings, or state=None to start")
    if not wanted and x is not None:
        raise InvalidInputError(f"{name} should be None unless {why}, actual {type(x).__name__}; "
                                "the state comes from a run with other settings")
    return _state_tensors(x, name, ref, single) if wanted else None


def _torch_lerp(start, end, weight: float):
    # torch's lerp switches formula at weight 0.5 so that weight 1 gives `end` exactly;
    # the centred variance v - gbar^2 cancels, so the rounding of gbar matters.
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def rmsprop_step(params, grad, state: RMSpropState | None = None, *, lr, alpha=None, eps=1e-8,
                 weight_decay=0.0, momentum=0.0, centered=False, maximize=False, nesterov=False,
                 initial_scale=0.0, eps_in_sqrt=None, bias_correction=False, convention="torch"):
    r"""One RMSprop step, as torch.optim.RMSprop or optax.rmsprop.

    With :math:`g_t` the gradient (negated first if `maximize`, then plus
    :math:`\lambda p_{t-1}` with weight decay :math:`\lambda`) and decay
    :math:`\alpha` [Tieleman2012],

    .. math::

        v_t &= \alpha\,v_{t-1} + (1 - \alpha)\,g_t^2, \qquad
        \bar g_t = \alpha\,\bar g_{t-1} + (1 - \alpha)\,g_t \ \text{(centred)}, \\
        s_t &= v_t \ \text{(plain)}, \qquad s_t = v_t - \bar g_t^2 \ \text{(centred [Graves2013])}, \\
        D_t &= \sqrt{s_t} + \epsilon \ \text{(eps outside the root)}, \qquad
        D_t = \sqrt{s_t + \epsilon} \ \text{(eps inside)}, \\
        b_t &= \mu\,b_{t-1} + g_t / D_t, \qquad
        p_t = p_{t-1} - \eta\,b_t \ \text{(momentum } \mu > 0\text{)}, \qquad
        p_t = p_{t-1} - \eta\,g_t / D_t \ \text{(otherwise)},

    from :math:`\bar g_0 = b_0 = 0` and :math:`v_0` = `initial_scale`.

    torch.optim.RMSprop puts `eps` outside the root, starts from
    :math:`v_0 = 0` and has no bias correction and no Nesterov momentum.
    optax.rmsprop puts `eps` inside the root by default (``eps_in_sqrt=True``,
    so its default differs from torch's even with equal `eps`), starts from
    :math:`v_0` = `initial_scale` (TF1 used 1), has no weight decay or
    maximize, and scales by :math:`\eta` before its momentum trace
    (``optax.trace``), so its buffer is :math:`b_t = \mu b_{t-1} + \eta g_t / D_t`
    and :math:`p_t = p_{t-1} - b_t`; with Nesterov
    :math:`p_t = p_{t-1} - (\eta g_t / D_t + \mu b_t)`. For a constant
    :math:`\eta` the two momentum forms agree. With `bias_correction`
    (optax only), :math:`v_t` and :math:`\bar g_t` are divided by
    :math:`1 - \alpha^t` before :math:`s_t` is formed. Each convention refuses
    the other library's settings rather than ignore them.

    The centred estimate :math:`s_t` is 0 in exact arithmetic with
    :math:`\alpha = 0`, and at the first step with `bias_correction`
    (:math:`\hat{\bar g}_1 = g_1`, :math:`\hat v_1 = g_1^2`); the step is
    then :math:`\eta g / \epsilon` or :math:`\eta g / \sqrt{\epsilon}`,
    and rounding may make :math:`s_t` negative, where the libraries return
    NaN and this function raises.

    Parameters
    ----------
    params, grad : ndarray or tuple/list of ndarray
        Parameters and the gradient of the loss, of equal form and shapes.
    state : RMSpropState or None
        The state returned by the previous step; ``None`` for the first.
    lr : float
        Learning rate :math:`\eta \ge 0`.
    alpha : float or None
        Decay :math:`\alpha \in [0, 1]` (torch's `alpha`, optax's `decay`);
        ``None`` takes the library's default: 0.99 (torch), 0.9 (optax).
    eps : float
        :math:`\epsilon \ge 0`.
    weight_decay : float
        L2 coefficient :math:`\lambda \ge 0`, added to the gradient (torch only).
    momentum : float
        :math:`\mu \ge 0`; 0 is no momentum (optax's ``momentum=None``).
    centered : bool
        Divide by the root of the variance estimate instead of the second moment.
    maximize : bool
        Ascend instead of descend (torch only).
    nesterov : bool
        Nesterov momentum (optax only); needs :math:`\mu > 0`.
    initial_scale : float
        :math:`v_0 \ge 0` for a fresh state (optax only; torch starts at 0).
    eps_in_sqrt : bool or None
        `eps` inside the root; ``None`` takes the library's default: False
        (torch, which has no other), True (optax).
    bias_correction : bool
        Divide the averages by :math:`1 - \alpha^t` (optax only).
    convention : {"torch", "optax"}
        Which library's definition (see above).

    Returns
    -------
    params : ndarray or tuple of ndarray
        The parameters after the step, in the form given.
    state : RMSpropState
        Pass it to the next step (with the same settings).

    Raises
    ------
    InvalidInputError
        A setting outside its range or foreign to the convention, a form or
        shape mismatch, a negative square average, a state from a run with
        other settings, a non-finite entry.
    NonFiniteError
        The denominator :math:`D_t` is 0 (``eps=0`` with a zero
        :math:`s_t`), or the step overflows.

    References
    ----------
    [Tieleman2012]; [Graves2013] Eq. 38-41 (centred); torch.optim.RMSprop and
    optax.rmsprop documentation.
    """
    convention = check_choice(convention, "convention", _CONVENTIONS)
    lr = check_real(lr, "lr", low=0.0)
    alpha = _RMSPROP_DEFAULT_ALPHA[convention] if alpha is None else check_real(alpha, "alpha", low=0.0, high=1.0)
    eps = check_real(eps, "eps", low=0.0)
    weight_decay = check_real(weight_decay, "weight_decay", low=0.0)
    momentum = check_real(momentum, "momentum", low=0.0)
    initial_scale = check_real(initial_scale, "initial_scale", low=0.0)
    centered = _check_bool(centered, "centered")
    maximize = _check_bool(maximize, "maximize")
    nesterov = _check_bool(nesterov, "nesterov")
    bias_correction = _check_bool(bias_correction, "bias_correction")
    eps_in_sqrt = (_RMSPROP_DEFAULT_EPS_IN_SQRT[convention] if eps_in_sqrt is None
                   else _check_bool(eps_in_sqrt, "eps_in_sqrt"))
    if nesterov and momentum <= 0.0:
        raise InvalidInputError(f"nesterov=True needs momentum > 0, actual momentum={momentum!r}")
    if convention == "torch":
        for name, bad, why in (("nesterov", nesterov, "no Nesterov momentum"),
                               ("eps_in_sqrt", eps_in_sqrt, "eps outside the root only"),
                               ("bias_correction", bias_correction, "no bias correction")):
            if bad:
                raise InvalidInputError(f"{name} should be False with convention='torch' "
                                        f"(torch.optim.RMSprop has {why})")
        if initial_scale != 0.0:
            raise InvalidInputError(f"initial_scale should be 0 with convention='torch' (torch.optim.RMSprop "
                                    f"starts its square average at 0), actual {initial_scale!r}")
    else:
        if weight_decay != 0.0:
            raise InvalidInputError(f"weight_decay should be 0 with convention='optax' (optax.rmsprop has none; "
                                    f"chain optax.add_decayed_weights yourself), actual {weight_decay!r}")
        if maximize:
            raise InvalidInputError("maximize should be False with convention='optax' "
                                    "(optax.rmsprop has no such flag)")
    p, g, single = _params_and_grad(params, grad)
    if state is None:
        zeros = _out([np.zeros_like(a) for a in p], single)
        state = RMSpropState(_out([np.full_like(a, initial_scale) for a in p], single),
                             zeros if centered else None, zeros if momentum != 0.0 else None, 0)
    if not isinstance(state, RMSpropState):
        raise InvalidInputError(f"state should be an RMSpropState or None, actual {type(state).__name__}")
    v = _state_tensors(state.square_avg, "state.square_avg", p, single)
    for i, vi in enumerate(v):
        if (vi < 0).any():
            label = "state.square_avg" if single else f"state.square_avg[{i}]"
            raise InvalidInputError(f"{label} should be >= 0 (an average of squares), actual min {vi.min()!r}")
    gbar = _optional_state(state.grad_avg, "state.grad_avg", p, single, centered, "centered=True")
    buf = _optional_state(state.momentum_buffer, "state.momentum_buffer", p, single, momentum != 0.0,
                          "momentum > 0")
    t = check_positive_int(state.t, "state.t", minimum=0) + 1
    bc = 1.0 - alpha ** t if bias_correction else 1.0

    new_p, new_v, new_gbar, new_buf = [], [], [], []
    for i, (pi, gi) in enumerate(zip(p, g)):
        d = -gi if maximize else gi
        if weight_decay != 0.0:
            d = d + weight_decay * pi
        if convention == "torch":
            v_t = alpha * v[i] + (1.0 - alpha) * (d * d)
            s_t = v_t
            if centered:
                gb_t = _torch_lerp(gbar[i], d, 1.0 - alpha)
                s_t = v_t - gb_t * gb_t
        else:
            v_t = (1.0 - alpha) * (d * d) + alpha * v[i]
            s_t = v_t / bc if bias_correction else v_t
            if centered:
                gb_t = (1.0 - alpha) * d + alpha * gbar[i]
                gb_hat = gb_t / bc if bias_correction else gb_t
                s_t = s_t - gb_hat * gb_hat
        with np.errstate(invalid="ignore"):
            denom = np.sqrt(s_t + eps) if eps_in_sqrt else np.sqrt(s_t) + eps
        bad = ~(denom > 0)
        if bad.any():
            idx = np.unravel_index(int(np.flatnonzero(bad)[0]), pi.shape)
            label = entry("params" if single else f"params[{i}]", idx)
            if s_t[idx] < 0:
                raise NonFiniteError(
                    f"the centred variance estimate v - gbar^2 is {float(s_t[idx])!r} < 0 at {label}, so its "
                    "root is NaN: the state is inconsistent, or rounding made a zero variance negative (it is "
                    "0 in exact arithmetic with alpha = 0, and at the first bias-corrected step)")
            raise NonFiniteError(
                f"the RMSprop denominator is 0 at {label} ({'variance estimate' if centered else 'square average'} "
                f"{float(s_t[idx])!r}, eps={eps!r}): the step would be 0/0; use eps > 0")
        if convention == "torch":
            if momentum != 0.0:
                b = momentum * buf[i] + d / denom
                new_buf.append(b)
                p_t = pi - lr * b
            else:
                p_t = pi - lr * (d / denom)
        else:
            u = lr * (d / denom)
            if momentum != 0.0:
                b = u + momentum * buf[i]
                new_buf.append(b)
                u = u + momentum * b if nesterov else b
            p_t = pi - u
        if not np.all(np.isfinite(p_t)):
            raise NonFiniteError("the RMSprop step overflowed to a non-finite parameter; "
                                 "gradients or lr are too large (or eps too small) for float64")
        new_p.append(p_t)
        new_v.append(v_t)
        if centered:
            new_gbar.append(gb_t)
    return _out(new_p, single), RMSpropState(_out(new_v, single), _out(new_gbar, single) if centered else None,
                                             _out(new_buf, single) if momentum != 0.0 else None, t)


# -- clipping ------------------------------------------------------------------------

def clip_grad_norm(grads, max_norm, *, convention="torch") -> ClipResult:
    r"""Clip gradients by their global 2-norm, as torch or optax does.

    With :math:`N = \sqrt{\sum_k \lVert g_k \rVert_2^2}` over all tensors,
    ``torch.nn.utils.clip_grad_norm_`` scales every tensor by

    .. math::

        c = \min\!\left(1, \frac{\text{max\_norm}}{N + 10^{-6}}\right),

    always (so even below the threshold the gradients are multiplied by
    :math:`c`, which is 1 exactly only when :math:`N + 10^{-6} \le`
    max_norm), while optax.clip_by_global_norm leaves them unchanged when
    :math:`N < \text{max\_norm}` and otherwise replaces each :math:`g_k` by
    :math:`(g_k / N)\,\text{max\_norm}`, with no epsilon [Pascanu2013].

    Parameters
    ----------
    grads : ndarray or tuple/list of ndarray
        The gradients.
    max_norm : float
        The threshold, > 0.
    convention : {"torch", "optax"}
        Which library's definition (see above).

    Returns
    -------
    ClipResult
        The clipped gradients and the norm :math:`N` before clipping (what
        torch's function returns).

    Raises
    ------
    InvalidInputError
        `max_norm` not positive and finite, a non-finite entry.

    References
    ----------
    [Pascanu2013]; ``torch.nn.utils.clip_grad_norm_`` and
    optax.clip_by_global_norm documentation.
    """
    convention = check_choice(convention, "convention", _CONVENTIONS)
    max_norm = check_real(max_norm, "max_norm", low=0.0, low_open=True)
    g, single = _as_tensors(grads, "grads")
    # A scaled sum of squares avoids overflow for large but finite gradients.
    scale = max((float(np.max(np.abs(a))) if a.size else 0.0) for a in g)
    if scale == 0.0:
        total = 0.0
    else:
        total = scale * math.sqrt(math.fsum(float(np.sum((a / scale) ** 2)) for a in g))
    if not math.isfinite(total):
        raise NonFiniteError("grads have a global norm that overflows float64")
    if convention == "torch":
        coef = min(max_norm / (total + TORCH_CLIP_EPS), 1.0)
        out = [a * coef for a in g]
    elif total < max_norm:
        out = [a.copy() for a in g]
    else:
        out = [(a / total) * max_norm for a in g]
    return ClipResult(_out(out, single), total)

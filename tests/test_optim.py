"""refpg.optim against the installed torch and optax: several steps, several tensors, float64, 1e-12."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refpg.errors import InvalidInputError, NonFiniteError, ShapeError
from refpg.optim import AdamState, RMSpropState, SGDState, adam_step, clip_grad_norm, rmsprop_step, sgd_step

RTOL = 1e-12
SHAPES = [(3, 2), (4,), ()]
STEPS = 4


def _problem(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = tuple(rng.normal(size=s) for s in shapes)
    grads = [tuple(rng.normal(size=s) * 10.0 ** rng.uniform(-2, 1) for s in shapes) for _ in range(STEPS)]
    return params, grads


def _torch_run(opt_cls, params, grads, **kw):
    ts = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    opt = opt_cls(ts, **kw)
    history = []
    for gs in grads:
        for t, g in zip(ts, gs):
            t.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append(tuple(t.detach().numpy().copy() for t in ts))
    return history


def _optax_run(make, params, grads):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    history = []
    with jax.enable_x64(True):
        ps = tuple(jnp.asarray(p, dtype=jnp.float64) for p in params)
        opt = make(optax)
        state = opt.init(ps)
        for gs in grads:
            updates, state = opt.update(tuple(jnp.asarray(g, dtype=jnp.float64) for g in gs), state, ps)
            ps = optax.apply_updates(ps, updates)
            history.append(tuple(np.asarray(p, dtype=np.float64) for p in ps))
    return history


def _ref_run(step, params, grads, **kw):
    state, ps, history = None, params, []
    for gs in grads:
        ps, state = step(ps, gs, state, **kw)
        history.append(ps)
    return history


def _assert_runs(actual, desired, *, tensorwise=False):
    """Entrywise to RTOL; `tensorwise` adds atol = RTOL * max|desired| over the tensor.

    The tensorwise test allows for an entry that a step brings near 0 by cancellation (p - lr*d with
    p ~ lr*d), where the libraries' last-bit differences in the step are large relative to the entry.
    """
    for k, (a_step, d_step) in enumerate(zip(actual, desired)):
        for i, (a, d) in enumerate(zip(a_step, d_step)):
            atol = RTOL * float(np.max(np.abs(d), initial=0.0)) if tensorwise else 0.0
            np.testing.assert_allclose(a, d, rtol=RTOL, atol=atol, err_msg=f"step {k + 1}, tensor {i}")


# -- SGD ---------------------------------------------------------------------------------

sgd_settings = st.fixed_dictionaries({
    "lr": st.floats(1e-3, 1.0),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "dampening": st.sampled_from([0.0, 0.3]),
    "nesterov": st.booleans(),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "maximize": st.booleans(),
}).filter(lambda s: not s["nesterov"] or (s["momentum"] > 0 and s["dampening"] == 0))


@settings(max_examples=25, deadline=None)
@given(kw=sgd_settings, seed=st.integers(0, 2**16))
def test_sgd_step_matches_torch_sgd_over_several_steps_and_tensors(kw, seed):
    params, grads = _problem(seed)
    _assert_runs(_ref_run(sgd_step, params, grads, **kw), _torch_run(torch.optim.SGD, params, grads, **kw))


@settings(max_examples=10, deadline=None)
@given(lr=st.floats(1e-3, 1.0), momentum=st.sampled_from([None, 0.5, 0.9]), nesterov=st.booleans(),
       seed=st.integers(0, 2**16))
def test_sgd_step_matches_optax_sgd(lr, momentum, nesterov, seed):
    nesterov = nesterov and momentum is not None
    params, grads = _problem(seed)
    desired = _optax_run(lambda optax: optax.sgd(lr, momentum=momentum, nesterov=nesterov), params, grads)
    actual = _ref_run(sgd_step, params, grads, lr=lr, momentum=momentum or 0.0, nesterov=nesterov,
                      convention="optax")
    _assert_runs(actual, desired)


def test_sgd_first_momentum_buffer_is_the_gradient_not_the_dampened_gradient():
    g = np.array([1.0, -2.0])
    _, s = sgd_step(np.zeros(2), g, None, lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_allclose(s.momentum_buffer, g, rtol=0, atol=0)
    _, s2 = sgd_step(np.zeros(2), g, s, lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_allclose(s2.momentum_buffer, 0.9 * g + 0.5 * g, rtol=RTOL)


def test_sgd_single_array_in_gives_single_array_out():
    p, s = sgd_step(np.ones((2, 2)), np.ones((2, 2)), None, lr=0.5, momentum=0.9)
    assert isinstance(p, np.ndarray) and isinstance(s.momentum_buffer, np.ndarray)
    np.testing.assert_allclose(p, 0.5 * np.ones((2, 2)), rtol=RTOL)


# -- Adam --------------------------------------------------------------------------------

adam_settings = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 0.5),
    "betas": st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.9, 0.99, 0.999])),
    "eps": st.sampled_from([1e-8, 1e-3, 0.1]),
    "weight_decay": st.sampled_from([0.0, 0.05]),
    "maximize": st.booleans(),
})


def _adam_kw(kw):
    out = dict(kw)
    out["beta1"], out["beta2"] = out.pop("betas")
    return out


@settings(max_examples=25, deadline=None)
@given(kw=adam_settings, seed=st.integers(0, 2**16))
def test_adam_step_matches_torch_adam(kw, seed):
    params, grads = _problem(seed)
    _assert_runs(_ref_run(adam_step, params, grads, **_adam_kw(kw)),
                 _torch_run(torch.optim.Adam, params, grads, **kw))


@settings(max_examples=15, deadline=None)
@given(kw=adam_settings, seed=st.integers(0, 2**16))
def test_adam_step_decoupled_matches_torch_adamw(kw, seed):
    params, grads = _problem(seed)
    _assert_runs(_ref_run(adam_step, params, grads, decoupled_weight_decay=True, **_adam_kw(kw)),
                 _torch_run(torch.optim.AdamW, params, grads, **kw))


@settings(max_examples=10, deadline=None)
@given(lr=st.floats(1e-4, 0.5), b1=st.sampled_from([0.0, 0.9]), b2=st.sampled_from([0.99, 0.999]),
       eps=st.sampled_from([1e-8, 0.1]), eps_root=st.sampled_from([0.0, 1e-4]),
       weight_decay=st.sampled_from([0.0, 0.05]), seed=st.integers(0, 2**16))
def test_adam_step_matches_optax_adam_and_adamw(lr, b1, b2, eps, eps_root, weight_decay, seed):
    params, grads = _problem(seed)
    if weight_decay:
        make = lambda optax: optax.adamw(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root,  # noqa: E731
                                         weight_decay=weight_decay)
    else:
        make = lambda optax: optax.adam(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root)  # noqa: E731
    actual = _ref_run(adam_step, params, grads, lr=lr, beta1=b1, beta2=b2, eps=eps, eps_root=eps_root,
                      weight_decay=weight_decay, decoupled_weight_decay=bool(weight_decay), convention="optax")
    _assert_runs(actual, _optax_run(make, params, grads))


def test_eps_root_changes_the_step_where_the_second_moment_is_small():
    # The placement check: with v_hat tiny, eps_root inside the root dominates.
    g = np.array([1e-6])
    a, _ = adam_step(np.zeros(1), g, None, lr=1.0, eps=0.0, eps_root=0.0, convention="optax")
    b, _ = adam_step(np.zeros(1), g, None, lr=1.0, eps=0.0, eps_root=1e-8, convention="optax")
    np.testing.assert_allclose(a, [-1.0], rtol=RTOL)
    np.testing.assert_allclose(b, [-1e-6 / np.sqrt(1e-12 + 1e-8)], rtol=RTOL)


def test_adam_state_continues_a_run():
    params, grads = _problem(3)
    whole = _ref_run(adam_step, params, grads, lr=0.1)
    ps, state = params, None
    for gs in grads[:2]:
        ps, state = adam_step(ps, gs, state, lr=0.1)
    resumed = AdamState(*state)  # a copy, as a user would store and reload it
    for gs in grads[2:]:
        ps, resumed = adam_step(ps, gs, resumed, lr=0.1)
    _assert_runs([ps], [whole[-1]])
    assert resumed.t == STEPS


# -- RMSprop -----------------------------------------------------------------------------

rmsprop_torch_settings = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 0.5),
    "alpha": st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    "eps": st.sampled_from([1e-8, 1e-3, 0.1]),
    "weight_decay": st.sampled_from([0.0, 0.05]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "centered": st.booleans(),
    "maximize": st.booleans(),
}).filter(lambda s: not (s["centered"] and s["alpha"] == 0.0))
# Centred with alpha = 0 is degenerate: v - gbar^2 = g^2 - g^2 is 0 exactly in arithmetic, so the step is
# decided by rounding (torch's fused multiply-add makes it slightly negative, hence NaN).


@settings(max_examples=30, deadline=None)
@given(kw=rmsprop_torch_settings, seed=st.integers(0, 2**16))
def test_rmsprop_step_matches_torch_rmsprop(kw, seed):
    params, grads = _problem(seed)
    _assert_runs(_ref_run(rmsprop_step, params, grads, **kw),
                 _torch_run(torch.optim.RMSprop, params, grads, **kw), tensorwise=True)


@settings(max_examples=30, deadline=None)
@given(lr=st.floats(1e-4, 0.5), decay=st.sampled_from([0.0, 0.5, 0.9, 0.99]), eps=st.sampled_from([1e-8, 1e-3, 0.1]),
       initial_scale=st.sampled_from([0.0, 1.0]), eps_in_sqrt=st.booleans(), centered=st.booleans(),
       momentum=st.sampled_from([None, 0.5, 0.9]), nesterov=st.booleans(), bias_correction=st.booleans(),
       seed=st.integers(0, 2**16))
def test_rmsprop_step_matches_optax_rmsprop(lr, decay, eps, initial_scale, eps_in_sqrt, centered, momentum, nesterov,
                                            bias_correction, seed):
    nesterov = nesterov and momentum is not None
    # The degenerate cases (see rmsprop_step's docstring): a zero variance whose sign rounding decides.
    decay = 0.5 if centered and decay == 0.0 else decay
    eps_in_sqrt = eps_in_sqrt or (centered and bias_correction)
    params, grads = _problem(seed)
    desired = _optax_run(lambda optax: optax.rmsprop(
        lr, decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt, centered=centered,
        momentum=momentum, nesterov=nesterov, bias_correction=bias_correction), params, grads)
    actual = _ref_run(rmsprop_step, params, grads, lr=lr, alpha=decay, eps=eps, initial_scale=initial_scale,
                      eps_in_sqrt=eps_in_sqrt, centered=centered, momentum=momentum or 0.0, nesterov=nesterov,
                      bias_correction=bias_correction, convention="optax")
    _assert_runs(actual, desired, tensorwise=True)


def test_rmsprop_defaults_are_each_librarys_defaults():
    # alpha=None and eps_in_sqrt=None mean torch's (0.99, outside) or optax's (0.9, inside).
    params, grads = _problem(5)
    _assert_runs(_ref_run(rmsprop_step, params, grads, lr=0.01),
                 _torch_run(torch.optim.RMSprop, params, grads, lr=0.01))
    _assert_runs(_ref_run(rmsprop_step, params, grads, lr=0.01, convention="optax"),
                 _optax_run(lambda optax: optax.rmsprop(0.01), params, grads))


def test_rmsprop_eps_placement_decides_the_step_where_the_square_average_is_small():
    # One step from v_0 = 0 with alpha = 0: v_1 = g^2, so the step is g / (|g| + eps) or g / sqrt(g^2 + eps).
    g = np.array([1e-4])
    out, _ = rmsprop_step(np.zeros(1), g, lr=1.0, alpha=0.0, eps=1e-8)
    inn, _ = rmsprop_step(np.zeros(1), g, lr=1.0, alpha=0.0, eps=1e-8, convention="optax")
    np.testing.assert_allclose(out, -g / (1e-4 + 1e-8), rtol=RTOL)
    np.testing.assert_allclose(inn, -g / np.sqrt(1e-8 + 1e-8), rtol=RTOL)
    assert abs(inn[0] - out[0]) > 0.2


def test_rmsprop_initial_scale_is_the_first_square_average():
    g = np.array([2.0, -1.0])
    p, s = rmsprop_step(np.zeros(2), g, lr=0.1, alpha=0.9, eps=0.0, initial_scale=1.0, convention="optax")
    v1 = 0.9 * 1.0 + 0.1 * g ** 2
    np.testing.assert_allclose(s.square_avg, v1, rtol=RTOL)
    np.testing.assert_allclose(p, -0.1 * g / np.sqrt(v1), rtol=RTOL)


def test_rmsprop_state_continues_a_run():
    params, grads = _problem(7)
    kw = dict(lr=0.05, momentum=0.9, centered=True)
    whole = _ref_run(rmsprop_step, params, grads, **kw)
    ps, state = params, None
    for gs in grads[:2]:
        ps, state = rmsprop_step(ps, gs, state, **kw)
    resumed = RMSpropState(*state)
    for gs in grads[2:]:
        ps, resumed = rmsprop_step(ps, gs, resumed, **kw)
    _assert_runs([ps], [whole[-1]])
    assert resumed.t == STEPS


def test_rmsprop_single_array_in_gives_single_array_out():
    p, s = rmsprop_step(np.ones((2, 2)), np.ones((2, 2)), None, lr=0.5, momentum=0.9, centered=True)
    assert all(isinstance(x, np.ndarray) for x in (p, s.square_avg, s.grad_avg, s.momentum_buffer))


# -- clipping ----------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), max_norm=st.floats(1e-2, 100.0))
def test_clip_grad_norm_matches_torch_clip_grad_norm_(seed, max_norm):
    _, grads = _problem(seed)
    gs = grads[0]
    ts = [torch.zeros(np.shape(g), dtype=torch.float64, requires_grad=True) for g in gs]
    for t, g in zip(ts, gs):
        t.grad = torch.tensor(g, dtype=torch.float64)
    total = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    res = clip_grad_norm(gs, max_norm)
    np.testing.assert_allclose(res.total_norm, float(total), rtol=RTOL)
    _assert_runs([res.grads], [[t.grad.numpy() for t in ts]])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), max_norm=st.floats(1e-2, 100.0))
def test_clip_grad_norm_matches_optax_clip_by_global_norm(seed, max_norm):
    _, grads = _problem(seed)
    desired = _optax_run(lambda optax: optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(-1.0)),
                         tuple(np.zeros(np.shape(g)) for g in grads[0]), grads[:1])
    res = clip_grad_norm(grads[0], max_norm, convention="optax")
    _assert_runs([res.grads], desired)


def test_clip_conventions_differ_just_below_the_threshold():
    # torch's 1e-6 shrinks a gradient whose norm is just under max_norm; optax leaves it.
    g = np.array([3.0, 4.0])  # norm 5
    torch_like = clip_grad_norm(g, 5.0 + 1e-7).grads
    optax_like = clip_grad_norm(g, 5.0 + 1e-7, convention="optax").grads
    np.testing.assert_array_equal(optax_like, g)
    assert np.all(np.abs(torch_like) < np.abs(g))
    np.testing.assert_allclose(clip_grad_norm([g, g], 1.0, convention="optax").grads[0], g / np.sqrt(50),
                               rtol=RTOL)


# -- bad inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: sgd_step(np.ones(2), np.ones(2), lr=-0.1), "lr"),
    (lambda: sgd_step(np.ones(2), np.ones(3), lr=0.1), "grad"),
    (lambda: sgd_step((np.ones(2), np.ones(1)), (np.ones(2),), lr=0.1), "grad"),
    (lambda: sgd_step(np.ones(2), (np.ones(2),), lr=0.1), "grad"),
    (lambda: sgd_step(np.ones(2), np.array([1.0, np.nan]), lr=0.1), "grad"),
    (lambda: sgd_step(np.ones(2), np.ones(2), lr=0.1, nesterov=True), "nesterov"),
    (lambda: sgd_step(np.ones(2), np.ones(2), lr=0.1, dampening=1.5), "dampening"),
    (lambda: sgd_step(np.ones(2), np.ones(2), lr=0.1, weight_decay=0.1, convention="optax"), "weight_decay"),
    (lambda: sgd_step(np.ones(2), np.ones(2), lr=0.1, convention="jax"), "convention"),
    (lambda: sgd_step(np.ones(2), np.ones(2), SGDState(np.ones(3)), lr=0.1, momentum=0.5),
     "state.momentum_buffer"),
    (lambda: sgd_step((), (), lr=0.1), "params"),
    (lambda: adam_step(np.ones(2), np.ones(2), lr=0.1, beta1=1.0), "beta1"),
    (lambda: adam_step(np.ones(2), np.ones(2), lr=0.1, beta2=-0.1), "beta2"),
    (lambda: adam_step(np.ones(2), np.ones(2), lr=float("inf")), "lr"),
    (lambda: adam_step(np.ones(2), np.ones(2), lr=0.1, eps_root=1e-8), "eps_root"),
    (lambda: adam_step(np.ones(2), np.ones(2), lr=0.1, maximize=True, convention="optax"), "maximize"),
    (lambda: adam_step(np.ones(2), np.ones(2), lr=0.1, weight_decay=0.1, convention="optax"), "weight_decay"),
    (lambda: adam_step(np.ones(2), np.ones(2), AdamState(np.zeros(2), -np.ones(2), 1), lr=0.1), "state.v"),
    (lambda: adam_step(np.ones(2), np.ones(2), AdamState(np.zeros(3), np.zeros(3), 1), lr=0.1), "state.m"),
    (lambda: adam_step(np.ones(2), np.ones(2), AdamState(np.zeros(2), np.zeros(2), -1), lr=0.1), "state.t"),
    (lambda: adam_step(np.ones(2), np.ones(2), SGDState(None), lr=0.1), "state"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=-0.1), "lr"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, alpha=1.5), "alpha"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, eps=-1e-8), "eps"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, momentum=-0.5), "momentum"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, centered=1), "centered"),
    (lambda: rmsprop_step(np.ones(2), np.ones(3), lr=0.1), "grad"),
    (lambda: rmsprop_step(np.ones(2), np.array([np.inf, 1.0]), lr=0.1), r"grad\[0\]"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, momentum=0.5, nesterov=True), "nesterov"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, eps_in_sqrt=True), "eps_in_sqrt"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, initial_scale=1.0), "initial_scale"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, bias_correction=True), "bias_correction"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, nesterov=True, convention="optax"), "nesterov"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, weight_decay=0.1, convention="optax"), "weight_decay"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, maximize=True, convention="optax"), "maximize"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), lr=0.1, initial_scale=-1.0, convention="optax"), "initial_scale"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), RMSpropState(-np.ones(2), None, None, 1), lr=0.1),
     "state.square_avg"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), RMSpropState(np.ones(3), None, None, 1), lr=0.1),
     "state.square_avg"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), RMSpropState(np.ones(2), None, None, 1), lr=0.1, centered=True),
     "state.grad_avg"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), RMSpropState(np.ones(2), None, np.ones(2), 1), lr=0.1),
     "state.momentum_buffer"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), RMSpropState(np.ones(2), None, None, -2), lr=0.1), "state.t"),
    (lambda: rmsprop_step(np.ones(2), np.ones(2), AdamState(np.ones(2), np.ones(2), 1), lr=0.1), "state"),
    (lambda: clip_grad_norm(np.ones(2), 0.0), "max_norm"),
    (lambda: clip_grad_norm([np.ones(2), np.array([np.inf])], 1.0), r"grads\[1\]"),
])
def test_bad_inputs_are_refused_by_name(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


def test_shape_mismatch_is_a_shape_error_and_overflow_a_nonfinite_error():
    with pytest.raises(ShapeError, match=r"grad\[1\]"):
        adam_step((np.ones(2), np.ones(3)), (np.ones(2), np.ones(2)), lr=0.1)
    with pytest.raises(NonFiniteError):
        clip_grad_norm([np.full(2, 1e308), np.full(2, 1e308)], 1.0)


def test_rmsprop_zero_denominator_is_a_nonfinite_error_naming_the_entry():
    # eps = 0 and a coordinate whose gradient has always been 0: torch would give 0/0 = NaN.
    with pytest.raises(NonFiniteError, match=r"params\[1\]\[0\].*eps=0.0"):
        rmsprop_step((np.ones(2), np.ones(2)), (np.ones(2), np.array([0.0, 1.0])), lr=0.1, eps=0.0)


def test_rmsprop_negative_variance_estimate_is_refused_not_nan():
    # An inconsistent state (gbar^2 > v) makes v - gbar^2 < 0: torch and optax return NaN.
    state = RMSpropState(np.zeros(2), np.ones(2), None, 3)
    with pytest.raises(NonFiniteError, match=r"v - gbar\^2 is .* at params\[0\]"):
        rmsprop_step(np.ones(2), np.array([0.5, 0.5]), state, lr=0.1, centered=True)

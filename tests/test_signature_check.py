"""The signature read before the first call never refuses a function that the kit's call would bind.

Python cannot always see the true call signature: a decorator's generic
``wrapper(*args, **kwargs)`` exposes the wrapped function's parameters through
``__wrapped__`` but may supply an argument itself, a torch module may define
its own ``__call__``, and a forward pre-hook may rewrite the arguments. In
those cases the check warns instead of refusing, or reads the right callable.
"""

from __future__ import annotations

import functools

import pytest

from refpg.conformance import check_gae
from refpg.errors import InvalidInputError
from refpg.returns import gae

FAST = dict(max_examples=10)
CONFIG = {"device": "cpu"}


def _gae_with_config(config, rewards, values, next_values, terminated, truncated, gamma, lam):
    return gae(rewards, values, next_values, terminated, truncated, gamma, lam)


def supplies_config(fn):
    """A decorator that passes one argument of its own, as configuration-injecting decorators do."""
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(CONFIG, *args)
    return wrapper


def test_a_decorator_that_supplies_an_argument_is_checked_with_a_warning_not_refused():
    decorated = supplies_config(_gae_with_config)
    report = check_gae(decorated, **FAST)
    assert report.passed, report
    assert any("8 required positional parameters" in w and "decorator's generic wrapper" in w
               for w in report.warnings), report.warnings


def test_a_pass_through_decorator_with_its_own_named_parameters_is_still_refused():
    def passes(fn):
        @functools.wraps(fn)
        def wrapper(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
            return fn(rewards, values, dones, next_value, next_done, gamma, gae_lambda)
        return wrapper

    @passes
    def cleanrl_named(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
        raise AssertionError("must not be called")

    with pytest.raises(InvalidInputError, match='convention="cleanrl"'):
        check_gae(cleanrl_named, **FAST)


def test_torch_modules_with_their_own_call_or_a_pre_hook_are_not_refused():
    torch = pytest.importorskip("torch")

    class OwnCall(torch.nn.Module):
        def forward(self, config, rewards, values, next_values, terminated, truncated, gamma, lam):
            return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

        def __call__(self, *args):
            return self.forward(CONFIG, *args)

    assert check_gae(OwnCall(), backend="numpy", **FAST).passed

    class Hooked(torch.nn.Module):
        def forward(self, config, rewards, values, next_values, terminated, truncated, gamma, lam):
            return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    hooked = Hooked()
    hooked.register_forward_pre_hook(lambda module, args: (CONFIG, *args))
    assert check_gae(hooked, backend="numpy", **FAST).passed
    # Without the hook the same module is refused before any call: forward takes 8.
    with pytest.raises(InvalidInputError, match="8 required positional parameters"):
        check_gae(Hooked(), backend="numpy", **FAST)


def test_a_torch_no_grad_decorator_passes_the_signature_through():
    """torch.no_grad()'s wrapper takes (*args, **kwargs) but passes them on unchanged: a function of the
    wrong convention behind it is refused before any call, as it would be without the decorator."""
    torch = pytest.importorskip("torch")
    from refpg.conformance import check_gae

    @torch.no_grad()
    def token_gae(token_level_rewards, values, response_mask, gamma, lam):
        return values

    with pytest.raises(InvalidInputError, match='pass convention="rlhf"'):
        check_gae(token_gae)

"""pytest plugin of the conformance kit (registered through the ``pytest11`` entry point).

A project adds conformance tests in a few lines::

    def test_gae_conforms(refpg_check):
        from mypkg.advantages import compute_gae
        refpg_check("gae", compute_gae, convention="sb3")

``refpg_check(kind, fn, **kwargs)`` runs ``refpg.conformance.check_<kind>``
and raises `refpg.errors.ConformanceError` (an ``AssertionError``, so pytest
reports a failed test) whose message is the whole report, counterexamples
included; the plugin's own frames are hidden from the traceback, so the
failure shows the test's line and the report. It returns the `Report` when
the function conforms.

Options: ``--refpg-seed N`` (default 0) and ``--refpg-max-examples N``
(default: the check's own) apply to every check that does not set them.
The plugin imports nothing heavy until a test uses the fixture.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("refpg", "refpg conformance kit")
    group.addoption("--refpg-seed", type=int, default=0, help="seed of every refpg conformance check")
    group.addoption("--refpg-max-examples", type=int, default=None,
                    help="cases per scenario of every refpg conformance check")


@pytest.fixture
def refpg_check(request):
    """``refpg_check(kind, fn, **kwargs) -> Report``: check `fn` and fail the test on any violation."""
    from refpg.conformance import assert_conforms
    from refpg.conformance.runner import check

    seed = request.config.getoption("--refpg-seed")
    max_examples = request.config.getoption("--refpg-max-examples")

    def run(kind, fn, **kwargs):
        __tracebackhide__ = True  # noqa: F841 - read by pytest: the failure shows the report, not this frame
        kwargs.setdefault("seed", seed)
        if max_examples is not None and kind != "reinforce_estimator":
            kwargs.setdefault("max_examples", max_examples)
        report = check(kind, fn, **kwargs)
        assert_conforms(report)
        return report
    return run

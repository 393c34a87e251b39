"""The conformance kit on its bundled zoo (refpg.examples): every correct implementation passes, in its
convention and backend and in float32 too; every broken one is caught by the check id it declares; the
statistical checks raise no false alarm over a few seeds (the 200-seed run is bench/conformance.py); the
`refpg check` demo behaves as declared.

The demo checks its examples with the same call as `test_correct_example_passes` and
`test_broken_example_is_caught_by_its_check_id` (`runner._run_example`, the default seed): the
`example_report` fixture computes each of those reports once per test session, for the demo and the
per-example test alike."""

import importlib.util

import pytest

from refpg import examples
from refpg.conformance import check
from tests import helpers

HAS = {backend: importlib.util.find_spec(backend) is not None for backend in ("torch", "jax")}


def _marks(ex):
    return [pytest.mark.skipif(ex.backend in HAS and not HAS[ex.backend], reason=f"needs {ex.backend}"),
            pytest.mark.skipif(not ex.available, reason=f"needs {', '.join(ex.requires)}")]


def _run(ex, **kwargs):
    return check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kwargs})


@pytest.fixture(scope="session")
def example_report():
    """``example_report(ex)``: the report of ``runner._run_example(ex)``, the demo's own call (the same
    as ``_run(ex)``), computed once per session and shared with the topic test files
    (`tests.helpers.example_report`)."""
    return helpers.example_report


def test_the_zoo_is_large_and_covers_every_kind():
    assert len(examples.BROKEN) >= 25
    kinds = {ex.kind for ex in examples.BROKEN}
    from refpg.conformance import KINDS

    assert kinds == set(KINDS) >= {"gae", "ppo_loss", "value_loss", "kl_estimator", "reinforce_estimator",
                                   "trpo_step", "group_advantages", "llm_loss"}
    assert {ex.kind for ex in examples.CORRECT} == kinds
    assert {ex.convention for ex in examples.CORRECT if ex.kind == "gae"} >= {
        "refpg", "sb3", "cleanrl", "torchrl", "rlax", "value_bootstrap", "purejaxrl"}
    assert {ex.backend for ex in examples.CORRECT} == {"numpy", "torch", "jax"}
    names = [ex.name for ex in examples.CORRECT + examples.BROKEN]
    assert len(names) == len(set(names))
    assert all(ex.description for ex in examples.CORRECT + examples.BROKEN)


@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_marks(ex)) for ex in examples.CORRECT])
def test_correct_example_passes(ex, example_report):
    report = example_report(ex)
    assert report.passed, str(report)


def _float32_params():
    """Every correct example in float32; the first of each (kind, backend) pair runs in the default suite,
    the rest under ``-m slow`` (each is a second full check of an example that already passes in float64,
    and together they took a third of the suite's budget)."""
    seen = set()
    params = []
    for ex in examples.CORRECT:
        key = (ex.kind, ex.backend)
        marks = _marks(ex) + ([] if key not in seen else [pytest.mark.slow])
        seen.add(key)
        params.append(pytest.param(ex, id=ex.name, marks=marks))
    return params


@pytest.mark.parametrize("ex", _float32_params())
def test_correct_example_passes_in_float32(ex):
    statistical = ex.kind in ("kl_estimator", "reinforce_estimator", "llm_loss", "pipeline_gradient")  # fixed sample sizes
    # A whole update is one call per case of a library's train(): a few cases of float32 suffice.
    cases = 10 if ex.kind == "update" else 50
    report = _run(ex, dtype="float32", **({} if statistical else {"max_examples": cases}))
    assert report.passed, str(report)


@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_marks(ex)) for ex in examples.BROKEN])
def test_broken_example_is_caught_by_its_check_id(ex, example_report):
    report = example_report(ex)
    assert ex.expected in report.failed_ids, str(report)
    failure = report.failure(ex.expected)
    # Every failure explains itself: what, expected, actual, and a counterexample (or a traceback).
    assert " should " in failure.message, failure.message
    assert failure.counterexample is not None or failure.traceback is not None


STATISTICAL = [ex for ex in examples.CORRECT
               if ex.kind == "reinforce_estimator" or ex.kind == "kl_estimator" and dict(ex.options).get("unbiased")]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_marks(ex)) for ex in STATISTICAL
                                if ex.backend == "numpy"])
def test_statistical_checks_raise_no_false_alarm_on_other_seeds(ex, seed):
    report = _run(ex, seed=seed)
    assert report.passed, str(report)


def test_refpg_check_demo_behaves_as_declared(capsys, monkeypatch, example_report):
    from refpg.cli import main
    from refpg.conformance import runner

    # Every example of the demo also has its own test above: their reports are computed once.
    monkeypatch.setattr(runner, "_run_example", example_report)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "FAILED" in out and "counterexample:" in out
    assert "behaved as declared" in out and " NO " not in out

"""tools/mutate.py, the mutation tester, on a tiny module in a scratch project (a few seconds)."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = '''\
def clip(x, limit=1):
    """Docstrings and "strings" are not mutated."""
    if x > limit and not x is None:  # a comment
        raise ValueError("too big")
    return (x
            + 1)
'''

GOOD_TEST = '''\
from sample import clip


def test_value():
    assert clip(2, limit=3) == 3
'''

WEAK_TEST = '''\
from sample import clip


def test_runs():
    clip(2, limit=3)
'''


@pytest.fixture(scope="module")
def mutate():
    spec = importlib.util.spec_from_file_location("refpg_tools_mutate", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture
def project(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sample.py").write_text(SAMPLE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_good.py").write_text(GOOD_TEST)
    (tmp_path / "tests" / "test_weak.py").write_text(WEAK_TEST)
    return tmp_path


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_mutants_of_a_small_module_are_the_expected_edits_each_keeping_every_line_number(mutate, project):
    path = project / "src" / "sample.py"
    mutants = mutate.mutants_of(path, root=project)
    got = [(m.id, m.original, m.mutated) for m in mutants]
    assert got == [
        ("sample.py:clip+0:18:1->0", "1", "0"),
        ("sample.py:clip+2:9:Gt->GtE", ">", ">="),
        ("sample.py:clip+2:17:And->Or", "and", "or"),
        ("sample.py:clip+2:21:not->", "not", ""),
        ("sample.py:clip+2:27:Is->IsNot", "is", "is not"),
        ("sample.py:clip+3:8:delete-raise", 'raise ValueError("too big")', "None"),
        ("sample.py:clip+5:12:Add->Sub", "+", "-"),
        ("sample.py:clip+5:14:1->0", "1", "0"),
    ], got
    source = path.read_bytes()
    for m in mutants:
        mutated = m.apply(source)
        compile(mutated, m.id, "exec")
        assert mutated.count(b"\n") == source.count(b"\n"), m.id
    assert [m.id for m in mutate.mutants_of(path, root=project)] == [m.id for m in mutants]  # stable ids


def test_a_mutant_is_killed_by_a_test_of_the_behaviour_survives_one_without_and_the_tree_is_unchanged(mutate, project):
    before = _snapshot(project)
    (mutant,) = [m for m in mutate.mutants_of(project / "src" / "sample.py", root=project) if m.operator == "Add->Sub"]
    fast = ("-p", "no:refpg", "-p", "no:xdist", "-p", "no:hypothesispytest")  # a bare pytest starts in a fraction of a second
    killed = mutate.run_mutant(mutant, [(0.1, "tests/test_good.py::test_value")], root=project,
                               src=project / "src", pytest_args=fast)
    survived = mutate.run_mutant(mutant, [(0.1, "tests/test_weak.py::test_runs")], root=project,
                                 src=project / "src", pytest_args=fast)
    assert (killed.status, killed.killer) == ("killed", "tests/test_good.py::test_value"), killed
    assert survived.status == "survived", survived
    assert _snapshot(project) == before


def test_a_mutant_that_breaks_a_test_module_at_import_is_killed_not_an_error(mutate, project):
    (project / "tests" / "test_import_time.py").write_text(
        "from sample import clip\n\nVALUE = clip(3, limit=3)  # raises under the mutant > -> >=\n\n\n"
        "def test_value():\n    assert VALUE == 4\n")
    (mutant,) = [m for m in mutate.mutants_of(project / "src" / "sample.py", root=project) if m.operator == "Gt->GtE"]
    fast = ("-p", "no:refpg", "-p", "no:xdist", "-p", "no:hypothesispytest")
    r = mutate.run_mutant(mutant, [(0.1, "tests/test_import_time.py::test_value")], root=project,
                          src=project / "src", pytest_args=fast)
    assert (r.status, r.killer) == ("killed", "collecting tests/test_import_time.py"), r


def test_each_mutant_runs_the_passing_tests_that_execute_its_line_and_a_default_those_of_its_function(mutate, project):
    mutants = {m.id: m for m in mutate.mutants_of(project / "src" / "sample.py", root=project)}
    coverage = {
        "t::slow": {"outcome": "passed", "seconds": 2.0, "lines": {"sample.py": [3, 4]}},
        "t::fast": {"outcome": "passed", "seconds": 0.5, "lines": {"sample.py": [3, 5]}},
        "t::failing": {"outcome": "failed", "seconds": 0.1, "lines": {"sample.py": [3, 4, 5]}},
        "t::other": {"outcome": "passed", "seconds": 0.1, "lines": {"other.py": [3, 4, 5]}},
    }
    raise_tests = mutate.tests_for(mutants["sample.py:clip+3:8:delete-raise"], coverage, "src/")
    default_tests = mutate.tests_for(mutants["sample.py:clip+0:18:1->0"], coverage, "src/")
    assert raise_tests == [(2.0, "t::slow")]
    assert default_tests == [(0.5, "t::fast"), (2.0, "t::slow")]  # fastest first
    # A module-level mutant: every test of a file in which some test runs a line of the module, even one that
    # runs none itself (it may only read a constant, imported at collection).
    module_level = dataclasses.replace(mutants["sample.py:clip+0:18:1->0"], scope=())
    coverage["t::reads_a_constant"] = {"outcome": "passed", "seconds": 0.2, "lines": {}}
    coverage["u::elsewhere"] = {"outcome": "passed", "seconds": 0.3, "lines": {}}
    assert mutate.tests_for(module_level, coverage, "src/") == [
        (0.1, "t::other"), (0.2, "t::reads_a_constant"), (0.5, "t::fast"), (2.0, "t::slow")]  # not u::elsewhere
    coverage["tests/test_studies.py::t"] = coverage.pop("t::fast")
    assert mutate.tests_for(mutants["sample.py:clip+0:18:1->0"], coverage, "src/", ["tests/test_studies.py"]) == [
        (2.0, "t::slow")]  # an excluded file is never selected
    assert set(mutate.INTEGRATION) <= {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}


def test_the_score_leaves_out_listed_equivalent_mutants_and_each_needs_a_reason(mutate, tmp_path):
    listed = tmp_path / "equivalent.txt"
    listed.write_text("# comment\nsample.py:clip+5:14:1->0  # x + 0 is never observed here\n")
    assert mutate.load_equivalent(listed) == {"sample.py:clip+5:14:1->0": "x + 0 is never observed here"}
    listed.write_text("sample.py:clip+5:14:1->0\n")
    with pytest.raises(SystemExit, match="needs '# <reason>'"):
        mutate.load_equivalent(listed)
    Result = mutate.Result
    results = [Result("a", "src/sample.py", 1, "op", "x", "y", status, 1, 0.0)
               for status in ("killed", "timeout", "survived", "equivalent")]
    (row,) = mutate.summarise(results)
    assert (row["mutants"], row["killed"], row["timeout"], row["survived"], row["equivalent"]) == (4, 1, 1, 1, 1)
    assert row["score"] == pytest.approx(200 / 3)

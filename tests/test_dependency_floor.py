"""The dependency floor that `.ci/oldest` tests is the one pyproject.toml declares.

`.ci/constraints-oldest.txt` pins every dependency of pyproject.toml (core and
every extra) to exactly its lower bound (``>=``) or its pin (``==``);
`bash .ci/oldest` runs the full suite against those pins. This test keeps the
two files from drifting: a floor raised in one and not the other, a new
dependency without a tested floor, or a stale pin all fail here.
"""

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import tomllib  # Python >= 3.11, as pyproject.toml requires

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / ".ci" / "constraints-oldest.txt"


def declared_requirements(project: dict) -> list[tuple[str, Requirement]]:
    """(where, requirement) for every dependency of [project] and of each extra."""
    out = [("dependencies", Requirement(s)) for s in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out += [(f"optional-dependencies.{extra}", Requirement(s)) for s in reqs]
    return out


def read_pins(text: str) -> dict[str, Version]:
    """``name==version`` lines of a constraints file (comments and blank lines skipped)."""
    pins = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and not req.marker and not req.extras, (
            f"constraints line {n} {line!r}: expected exactly name==version")
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints line {n}: {req.name} is pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def floor_mismatches(project: dict, pins: dict[str, Version]) -> list[str]:
    """Every way pyproject's floors and the constraints file's pins disagree."""
    problems = []
    declared = set()
    for where, req in declared_requirements(project):
        name = canonicalize_name(req.name)
        declared.add(name)
        bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        if len(bounds) != 1:
            problems.append(f"{where}: {req} has no single lower bound (>= or ==) to test")
            continue
        if name not in pins:
            problems.append(f"{where}: {req} has no pin in {CONSTRAINTS.name}")
        elif pins[name] != bounds[0]:
            problems.append(f"{where}: {req} but {CONSTRAINTS.name} pins {name}=={pins[name]}")
    for name in sorted(set(pins) - declared):
        problems.append(f"{CONSTRAINTS.name} pins {name}=={pins[name]}, which pyproject.toml does not declare")
    return problems


@pytest.fixture(scope="module")
def project():
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


@pytest.fixture(scope="module")
def pins():
    return read_pins(CONSTRAINTS.read_text(encoding="utf-8"))


def test_every_lower_bound_is_the_pin_that_the_oldest_run_tests(project, pins):
    assert floor_mismatches(project, pins) == []


def test_the_oldest_run_keeps_the_cpu_torch(pins):
    # torch==2.13.0 in the same pip command keeps pip from replacing the CPU build with a CUDA one.
    assert pins["torch"] == Version("2.13.0")


@pytest.mark.parametrize("change", ["raise_floor", "drop_pin", "extra_pin", "unbounded"])
def test_a_drift_between_the_two_files_is_caught(project, pins, change):
    before = floor_mismatches(project, pins)
    project = {"dependencies": list(project["dependencies"]),
               "optional-dependencies": {k: list(v) for k, v in project["optional-dependencies"].items()}}
    pins = dict(pins)
    first = Requirement(project["dependencies"][0])
    name = canonicalize_name(first.name)
    if change == "raise_floor":
        project["dependencies"][0] = f"{first.name}>={pins[name].major + 1}"
    elif change == "drop_pin":
        del pins[name]
    elif change == "extra_pin":
        pins["not-a-dependency"] = Version("1.0")
    else:
        project["dependencies"][0] = first.name
    # Exactly one new problem, whether or not the real files agree (the test above judges that).
    problems = floor_mismatches(project, pins)
    assert len(problems) == len(before) + 1, problems

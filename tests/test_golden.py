"""The golden files are valid, reproducible, and checked against the current code."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from refpg import golden
from refpg.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "golden"
CASE_FILES = sorted(p for p in GOLDEN.glob("*.json") if p.name != "schema.json")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """Two independent regenerations into fresh directories."""
    pytest.importorskip("torch")
    pytest.importorskip("gymnasium")
    a = tmp_path_factory.mktemp("golden_a")
    b = tmp_path_factory.mktemp("golden_b")
    golden.regenerate(a)
    golden.regenerate(b)
    return a, b


def test_every_registered_case_has_a_committed_file():
    assert sorted(p.stem for p in CASE_FILES) == sorted(golden.CASES)


def test_committed_schema_is_the_current_schema():
    assert json.loads((GOLDEN / "schema.json").read_text()) == golden.schema()


def test_every_file_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((GOLDEN / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in CASE_FILES:
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(json.loads(path.read_text()))]
        assert errors == [], f"{path.name}: {errors[:5]}"


def test_every_output_field_has_a_tolerance():
    for path in CASE_FILES:
        data = json.loads(path.read_text())
        out = data["outputs"]
        fields = set()
        for k, v in out.items():
            if k in ("trpo", "ppo", "batch"):
                fields |= {f"{k}.{kk}" for kk in v}
            else:
                fields.add(k)
        assert fields == set(data["tolerances"]), path.name


def test_independent_checks_are_recorded_for_two_state_and_garnets():
    checked = {}
    for path in CASE_FILES:
        data = json.loads(path.read_text())
        for c in data["metadata"]["independent_checks"]:
            # Another correct float64 route: within the field's tolerance, which is what it is for.
            assert c["max_abs_diff"] <= data["tolerances"][c["field"]]["atol"], (path.name, c)
            checked.setdefault(path.stem, set()).add(c["field"])
    assert checked["two_state_softmax"] == {"V", "d"}
    garnets = [name for name in golden.CASES if name.startswith("garnet")]
    for name in garnets:
        assert checked[name] == {"J", "policy_gradient"}, name


def test_check_passes_on_the_committed_files():
    report = golden.check(GOLDEN)
    assert report.fields, "no fields checked"
    assert report.failures == (), "\n".join(map(str, report.failures))
    assert len({f.case for f in report.fields}) == len(CASE_FILES)


def test_cli_check_exits_zero_on_the_committed_files(capsys):
    assert main(["golden", "check", "--dir", str(GOLDEN)]) == 0
    out = capsys.readouterr().out
    assert "two_state_softmax" in out and "all within tolerance" in out


def test_regenerating_twice_gives_byte_identical_files(regenerated):
    a, b = regenerated
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_regenerated_files_equal_the_committed_ones_within_their_tolerances(regenerated):
    # The claim golden/README.md makes: on any machine, a regeneration has the same inputs bit for
    # bit and outputs within the committed tolerances (bytes may differ in the last digits).
    a, _ = regenerated
    committed = {p.name for p in GOLDEN.glob("*.json")}
    assert committed == {p.name for p in a.iterdir()}
    for path in CASE_FILES:
        old, new = json.loads(path.read_text()), json.loads((a / path.name).read_text())
        # log pi_old is a float computation whose last bits follow the CPU's exp/log kernels: it is
        # compared within its documented bound; every other input bit for bit.
        in_tol = golden.case_outputs(new["inputs"]).input_tolerances
        if in_tol:
            assert golden._drop(new["inputs"], in_tol) == golden._drop(old["inputs"], in_tol), \
                f"{path.name}: regenerated inputs differ"
            for key, tol in in_tol.items():
                row = golden._compare(path.stem, f"<inputs>.{key}", golden._get(new["inputs"], key),
                                      golden._get(old["inputs"], key), tol)
                assert row.passed, row
        else:
            assert new["inputs"] == old["inputs"], f"{path.name}: regenerated inputs differ"
        assert set(new["tolerances"]) == set(old["tolerances"]), path.name
        for field, tol in old["tolerances"].items():
            row = golden._compare(path.stem, field, golden._get(new["outputs"], field),
                                  golden._get(old["outputs"], field), tol)
            assert row.passed, row


def test_round_trip_check_passes_and_rebuilds_every_input():
    report = golden.check(GOLDEN, round_trip=True)
    assert report.failures == (), "\n".join(map(str, report.failures))
    assert {f.case for f in report.fields if f.field == "<inputs>"} == {p.stem for p in CASE_FILES}


def test_round_trip_catches_a_changed_input(tmp_path):
    d = tmp_path / "golden"
    shutil.copytree(GOLDEN, d)
    path = d / "chain5_softmax.json"
    data = json.loads(path.read_text())
    data["inputs"]["batch"]["actions"][0][0] ^= 1
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    failed = {(f.case, f.field) for f in golden.check(d, round_trip=True).failures}
    assert ("chain5_softmax", "<inputs>") in failed


def test_every_tolerance_is_twice_its_documented_error_bound():
    for path in CASE_FILES:
        for field, tol in json.loads(path.read_text())["tolerances"].items():
            assert tol["rtol"] == 0.0, (path.name, field)
            assert tol["basis"], (path.name, field)
            # B stored rounded up to two significant digits, atol = 2 B rounded up the same way.
            assert 2.0 * tol["bound"] <= tol["atol"] <= 2.2 * tol["bound"], (path.name, field)


def test_tolerances_are_far_below_the_fields_scale():
    # A tolerance derived from the error analysis must still catch a real error (a wrong sign,
    # constant or term moves a field by far more): below 1e-4 of every field's magnitude, where
    # PPO's objective, a cancellation (sum_s d sum_a pi A starts at exactly 0), is measured
    # against its terms' scale max|A|.
    for path in CASE_FILES:
        data = json.loads(path.read_text())
        A_max = float(np.abs(np.array(data["outputs"]["A"])).max())
        for field, tol in data["tolerances"].items():
            values = [v for v in golden._leaves(golden._get(data["outputs"], field), [])
                      if not isinstance(v, bool)]
            scale = max(abs(float(v)) for v in values)
            if field == "ppo.objective":
                scale = A_max
            assert tol["atol"] <= 1e-4 * scale or scale == 0.0, (path.name, field, tol["atol"], scale)


def test_trpo_direction_is_a_converged_damped_cg_solve_recorded_as_such():
    for path in CASE_FILES:
        data = json.loads(path.read_text())
        settings = data["inputs"]["settings"]
        (cg,) = [s for s in data["metadata"]["solvers"] if s["field"] == "trpo.direction"]
        assert cg["converged"] and cg["relative_residual"] <= settings["trpo_cg_rtol"], path.name
        assert 1 <= cg["iterations"] <= settings["trpo_cg_iters"], path.name
        assert str(settings["trpo_damping"]) in cg["method"] or f"{settings['trpo_damping']:g}" in cg["method"]
        if "fisher" not in data["outputs"]:
            continue
        # A route that shares no code with refpg's CG: a dense solve of the damped system from
        # the file's own Fisher matrix and gradient lands within the direction's tolerance.
        F = np.array(data["outputs"]["fisher"])
        g = np.ravel(data["outputs"]["policy_gradient"])
        x = np.linalg.solve(F + settings["trpo_damping"] * np.eye(len(g)), g)
        np.testing.assert_allclose(np.ravel(data["outputs"]["trpo"]["direction"]), x, rtol=0,
                                   atol=data["tolerances"]["trpo.direction"]["atol"], err_msg=path.name)


def _perturbed_copy(tmp_path, case, edit):
    d = tmp_path / "golden"
    shutil.copytree(GOLDEN, d)
    path = d / f"{case}.json"
    data = json.loads(path.read_text())
    edit(data["outputs"])
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return d


def test_check_catches_an_output_perturbed_by_1e_6(tmp_path, capsys):
    def edit(out):
        out["V"][1] += 1e-6
    d = _perturbed_copy(tmp_path, "garnet_5_3_2_softmax", edit)
    report = golden.check(d)
    failed = {(f.case, f.field) for f in report.failures}
    assert failed == {("garnet_5_3_2_softmax", "V")}
    bad = report.failures[0]
    np.testing.assert_allclose(bad.max_abs_error, 1e-6, rtol=1e-6)
    assert main(["golden", "check", "--dir", str(d)]) != 0
    assert "FAIL" in capsys.readouterr().out


def test_check_catches_a_flipped_line_search_flag(tmp_path):
    def edit(out):
        out["trpo"]["line_search"][0]["accepted"] = not out["trpo"]["line_search"][0]["accepted"]
    d = _perturbed_copy(tmp_path, "chain5_softmax", edit)
    failed = {(f.case, f.field) for f in golden.check(d).failures}
    assert failed == {("chain5_softmax", "trpo.line_search")}


def test_check_catches_a_perturbed_input(tmp_path):
    # Inputs are what check rebuilds from: a changed theta must show up in the outputs.
    d = tmp_path / "golden"
    shutil.copytree(GOLDEN, d)
    path = d / "bandit_softmax.json"
    data = json.loads(path.read_text())
    data["inputs"]["theta"][0][0] += 1e-6
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    failed = {f.field for f in golden.check(d).failures}
    assert {"V", "J", "pi"} <= failed


def test_readme_reader_runs_without_refpg_and_matches_the_file(monkeypatch, capsys):
    text = (GOLDEN / "README.md").read_text()
    blocks = re.findall(r"```python reader\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert "refpg" not in code
    monkeypatch.chdir(ROOT)
    ns = {}
    exec(compile(code, "golden/README.md reader", "exec"), ns)
    case = json.loads((GOLDEN / "garnet_5_3_2_loglinear.json").read_text())
    np.testing.assert_allclose(ns["V"], case["outputs"]["V"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ns["J"], case["outputs"]["J"], rtol=1e-12, atol=1e-12)


def test_tolerances_still_tell_a_wrong_trpo_setting_apart():
    # The old recording (undamped CG stopped at 10 iterations) and a damping of 0.01 instead of 0.1
    # are real differences a user's TRPO could have: each must fall outside the direction's tolerance.
    from refpg.algorithms import trpo_step

    data = json.loads((GOLDEN / "cliff_walking_softmax.json").read_text())
    inp, cfg = data["inputs"], data["inputs"]["settings"]
    mdp = golden._mdp_from_inputs(inp)
    pol = golden._policy("tabular_softmax", mdp.n_states, mdp.n_actions)
    stored = np.ravel(data["outputs"]["trpo"]["direction"])
    atol = data["tolerances"]["trpo.direction"]["atol"]
    for kwargs in ({"cg_iters": 10, "damping": 0.0}, {"cg_iters": cfg["trpo_cg_iters"], "damping": 0.01}):
        tr = trpo_step(mdp, pol, np.array(inp["theta"]), max_kl=cfg["trpo_max_kl"], cg_rtol=cfg["trpo_cg_rtol"],
                       **kwargs)
        assert np.abs(np.ravel(tr.direction) - stored).max() > 1e3 * atol, kwargs

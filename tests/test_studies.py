"""The issue-7 studies (refpg.studies): quick mode runs, writes its figures and report, and
reproduces its headline number."""

import pytest

from refpg.cli import main
from refpg.errors import InvalidInputError
from refpg.studies import STUDIES, run_study
from refpg.studies import kl_estimators as kl_study
from tests.helpers import assert_study_outputs

FIGURES = {
    "mei2020_bandit": ("suboptimality.png", "bad_start_probabilities.png"),
    "kl_estimators": ("gaussian.png", "categorical.png"),
    "npg_bound": ("gap_vs_bound.png",),
}


@pytest.mark.parametrize("name", sorted(FIGURES))  # the newer studies have their own test files
def test_study_writes_figures_and_report(name, outputs):
    assert_study_outputs(*outputs(name), FIGURES[name])


def test_mei2020_bad_start_plateaus_for_more_than_7000_iterations(outputs):
    # Mei et al. 2020, Fig. 1: "more than 7000 iterations". Measured: pi(a*) > 1/2 first at t = 7525.
    _, h = outputs("mei2020_bandit")
    assert h["bad_start_escape_iteration"] is not None
    assert 7000 < h["bad_start_escape_iteration"] < 8000
    assert h["bad_start_escape_iteration"] == pytest.approx(7525, abs=5)
    assert h["bad_start_subopt_below_0.05"] >= h["bad_start_escape_iteration"]
    assert h["good_start_escape_iteration"] < 100
    assert h["npg_bad_start_escape_iteration"] < 100       # NPG has no plateau
    assert h["gradient_check_max_abs_error"] < 1e-12      # closed form == refpg.policy_gradient


def test_kl_estimators_reproduce_schulmans_table(outputs):
    _, h = outputs("kl_estimators")
    assert h["all_match_printed"]
    for mu, row in kl_study.PRINTED.items():
        for name, (bias_txt, sd_txt) in row.items():
            entry = h["table"][f"{name}@mu={mu:g}"]
            # k2's bias at mu = 0.1 is exactly 0.0025, printed 0.002 (Schulman's Monte Carlo): one unit.
            assert abs(entry["bias_over_kl"] - float(bias_txt)) <= kl_study.printed_unit(bias_txt) * (1 + 1e-9)
            assert abs(entry["stdev_over_kl"] - float(sd_txt)) <= kl_study.printed_unit(sd_txt) / 2 * (1 + 1e-9)
    assert h["quad_vs_closed_max_error"] < 1e-9           # quadrature agrees with the closed forms
    assert h["monte_carlo_max_z"] < 5                     # seeded Monte Carlo within 5 standard errors
    assert h["categorical_k1_k3_max_abs_bias_over_kl"] < 1e-9


def test_kl_closed_forms_by_hand():
    cf = kl_study.gaussian_closed_form(1.0)
    assert cf["k2"] == pytest.approx((0.25, 3 ** 0.5))
    assert cf["k3"][1] == pytest.approx(2 * (2.718281828459045 - 2) ** 0.5)


def test_npg_bound_never_violated(outputs):
    _, h = outputs("npg_bound")
    assert h["n_runs"] >= 12
    assert h["max_gap_minus_bound"] <= 0
    assert h["bound_never_violated"]
    assert h["min_gap"] > -1e-10                          # V^T never exceeds V* beyond rounding


def test_unknown_study_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="study should be one of"):
        run_study("nope", out_dir=tmp_path)


def test_cli_study_list(capsys):
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    for name in STUDIES:
        assert name in out


def test_cli_study_runs_quick(tmp_path, capsys):
    assert main(["study", "npg_bound", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bound_never_violated: True" in out
    assert (tmp_path / "report.md").exists() and (tmp_path / "gap_vs_bound.png").exists()


def test_cli_study_without_name_fails(capsys):
    assert main(["study"]) == 2
    assert main(["study", "nope"]) == 2


def test_analysis_readme_links_every_figure_and_every_link_resolves():
    import re
    from pathlib import Path

    analysis = Path(__file__).resolve().parents[1] / "analysis"
    text = (analysis / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)          # markdown links and images, not #anchors
    local = [t for t in targets if "://" not in t]
    assert local
    for target in local:
        assert (analysis / target).exists(), f"README links a missing file: {target}"
    images = set(re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", text))
    pngs = {p.relative_to(analysis).as_posix() for p in analysis.glob("*/*.png")}
    assert pngs, "no figures under analysis/*/"
    assert pngs <= images, f"figures not embedded in analysis/README.md: {sorted(pngs - images)}"
    for name in STUDIES:
        assert f"refpg study {name}" in text and f"({name}/report.md)" in text, name

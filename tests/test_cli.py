"""The refpg command line answers a user's mistake with one line and exit status 2, never a traceback."""

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import refpg
from refpg import envs
from refpg.cli import build_parser, main
from refpg.conformance import runner
from refpg.errors import InvalidInputError

FAST_KL = """
import numpy as np
from refpg.conformance import register

@register("kl_estimator", unbiased=False)
def k3(logp_new, logp_old):
    log_r = logp_new - logp_old
    return np.exp(log_r) - 1 - log_r
"""


def error_line(capsys, argv) -> str:
    """Run refpg in process; require exit 2 and exactly one stderr line 'refpg: error: ...'."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refpg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def no_check(monkeypatch):
    """Fail the test if a check actually starts: validation must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("runner.check was called before the arguments were validated")
    monkeypatch.setattr(runner, "check", refuse)


def _refpg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "refpg.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


# -- 1. options, values, keys ----------------------------------------------------------------------

def test_an_option_the_kind_does_not_take_is_refused_before_the_check_runs(capsys, no_check):
    # The issue's example: gae has no normalize option (it used to be a TypeError traceback).
    line = error_line(capsys, ["check", "nosuchmodule:compute_gae", "--kind", "gae", "--option", "normalize=batch"])
    assert "--option normalize: unknown option for --kind gae" in line
    assert "its options: returns" in line and "refpg check --help" in line


def test_a_misspelt_option_key_gets_did_you_mean(capsys, no_check):
    line = error_line(capsys, ["check", "m:f", "--kind", "kl_estimator", "--option", "unbaised=false"])
    assert "did you mean 'unbiased'?" in line and "unbiased, non_negative, alpha" in line


@pytest.mark.parametrize("kind, option, words", [
    ("gae", "returns=maybe", "--option returns should be true or false, actual 'maybe'"),
    ("ppo_loss", "normalize=btach", "--option normalize should be one of none, batch, actual 'btach'; "
                                    "did you mean 'batch'?"),
    ("ppo_loss", "ddof=one", "--option ddof should be an integer, actual 'one'"),
    ("ppo_loss", "eps=inf", "--option eps should be a finite number, actual 'inf'"),
    ("reinforce_estimator", "objective=gama_free", "did you mean 'gamma_free'?"),
])
def test_a_bad_option_value_is_one_line(capsys, no_check, kind, option, words):
    assert words in error_line(capsys, ["check", "m:f", "--kind", kind, "--option", option])


def test_an_option_with_a_flag_of_its_own_points_at_the_flag(capsys, no_check):
    line = error_line(capsys, ["check", "m:f", "--kind", "gae", "--option", "convention=sb3"])
    assert line.endswith("--option convention: give it as --convention")
    assert "KEY=VALUE" in error_line(capsys, ["check", "m:f", "--kind", "gae", "--option", "returns"])
    assert "given twice" in error_line(capsys, ["check", "m:f", "--kind", "gae", "--option", "returns=1",
                                                "--option", "returns=0"])


def test_option_values_are_parsed_by_type_and_reach_the_check(tmp_path, monkeypatch, capsys):
    write(tmp_path, "fns.py", "def f(*args):\n    return 0\n")
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(runner, "check", lambda kind, fn, **kw: seen.update(kw) or _passing(kind))
    assert main(["check", "fns.py:f", "--kind", "kl_estimator", "--option", "unbiased=False",
                 "--option", "alpha=1e-3", "--convention", "sb3", "--max-examples", "7"]) == 0
    assert seen["unbiased"] is False and seen["alpha"] == 1e-3 and isinstance(seen["alpha"], float)
    assert seen["convention"] == "sb3" and seen["max_examples"] == 7 and seen["backend"] == "auto"


def _passing(kind):
    from refpg.conformance import Report

    return Report(kind=kind, function="f", convention="refpg", backend="numpy", dtype="float64", checks=("x",))


def test_a_convention_the_kind_does_not_have_is_refused(capsys, no_check):
    line = error_line(capsys, ["check", "m:f", "--kind", "value_loss", "--convention", "torchrl"])
    assert "--convention should be one of refpg, cleanrl, sb3 for --kind value_loss, actual 'torchrl'" in line


@pytest.mark.parametrize("argv, words", [
    (["check", "m:f", "--kind", "gea"], "invalid choice: 'gea'"),
    (["check", "m:f", "--kind", "gae", "--seeed", "3"], "unrecognized arguments: --seeed 3; did you mean '--seed'?"),
    (["exatc"], "invalid choice: 'exatc'"),
    (["exact", "--theta", "randon"], "invalid choice: 'randon'"),
    (["check", "m:f", "--kind", "gae", "--backend", "torc"], "invalid choice: 'torc'"),
])
def test_argparse_errors_are_one_line_with_did_you_mean(capsys, argv, words):
    line = error_line(capsys, argv)
    assert words in line and "--help" in line
    if "invalid choice" in words:
        assert "did you mean" in line and "choose from" in line


def test_check_help_lists_every_kinds_options_and_conventions(capsys):
    assert main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    for kind in runner.KINDS:
        block = out[out.index(f"\n  {kind}\n"):]
        for name, opt in runner.options_of(kind).items():
            if name not in ("convention", "backend", "dtype", "seed", "max_examples"):
                assert f"\n    {name}: " in block, (kind, name)
    flat = " ".join(out.split())
    assert "(none|batch, default" in flat and "(discounted|undiscounted|gamma_free, default" in flat
    assert re.search(r"trpo_step\s+refpg, closure\n", out)


def test_options_of_agrees_with_each_check_function():
    import inspect

    for kind, fn in runner.CHECKS.items():
        params = inspect.signature(fn).parameters
        named = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY}
        assert named <= set(runner.options_of(kind)), kind
        # The convention table is the one the check itself enforces.
        with pytest.raises(InvalidInputError) as info:
            fn(lambda *a: 0, convention="nope")
        listed = re.search(r"convention should be one of \((.*?)\)", str(info.value)).group(1)
        assert sorted(re.findall(r"'(\w+)'", listed)) == sorted(runner.CONVENTIONS[kind]), kind
    # ppo_loss and value_loss take further options through **options: the same ones as listed.
    ppo_extra = {"normalize", "ddof", "eps", "dual_clip", "eps_low", "eps_high", "clip_fraction", "count_eps"}
    for kind, extra in (("ppo_loss", ppo_extra), ("value_loss", {"style", "coef"})):
        with pytest.raises(InvalidInputError) as info:
            runner.CHECKS[kind](lambda *a: 0, nonsense=1)
        assert set(re.findall(r"'(\w+)'", str(info.value).split("actual")[0])) == extra
        assert extra <= set(runner.options_of(kind))


# -- 2. register -----------------------------------------------------------------------------------

def test_register_refuses_a_misspelt_key_at_registration():
    before = len(runner._REGISTRY)
    with pytest.raises(InvalidInputError) as info:
        runner.register("gae", conventon="cleanrl")
    message = str(info.value)
    assert "register('gae', conventon='cleanrl'): unknown option 'conventon'" in message
    assert "did you mean 'convention'?" in message
    assert "convention, backend, dtype, max_examples, seed, returns" in message
    assert len(runner._REGISTRY) == before


@pytest.mark.parametrize("call, words", [
    (lambda: runner.register("gea"), "kind should be one of gae, ppo_loss"),
    (lambda: runner.register("gae", convention="cleanrll"), "did you mean 'cleanrl'?"),
    (lambda: runner.register("value_loss", convention="torchrl"), "for kind 'value_loss', actual 'torchrl'"),
    (lambda: runner.register("kl_estimator", unbiased="no"), "unbiased should be True or False, actual 'no'"),
    (lambda: runner.register("gae", max_examples=2.5), "max_examples should be an integer, actual 2.5"),
    (lambda: runner.register("reinforce_estimator", max_examples=10), "unknown option 'max_examples'"),
])
def test_register_refuses_bad_values_and_kinds(call, words):
    with pytest.raises(InvalidInputError, match=re.escape(words)):
        call()


def test_a_file_with_a_misspelt_register_key_is_one_line_naming_file_and_line(tmp_path, monkeypatch, capsys):
    write(tmp_path, "adapters.py", """\
        from refpg.conformance import register

        @register("gae", conventon="cleanrl")
        def my_gae(*args):
            return 0
    """)
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, ["check", "adapters.py"])
    assert line.startswith("refpg: error: adapters.py: line 3: register('gae', conventon='cleanrl'): "
                           "unknown option 'conventon'; did you mean 'convention'?")


# -- 3. a user's module that does not import -------------------------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_import_error_in_a_file_names_the_file_line_and_type(project, capsys):
    write(project, "myppo_a.py", "import numpy as np\n\nimport foo_not_installed\n")
    line = error_line(capsys, ["check", "myppo_a.py"])
    assert line == ("refpg: error: cannot import myppo_a.py: line 3: ModuleNotFoundError: "
                    "No module named 'foo_not_installed'")
    line = error_line(capsys, ["check", "myppo_a:compute_gae", "--kind", "gae"])
    assert line == ("refpg: error: cannot import myppo_a (myppo_a.py): line 3: ModuleNotFoundError: "
                    "No module named 'foo_not_installed'")


def test_a_syntax_error_names_the_file_and_line(project, capsys):
    write(project, "myppo_b.py", "x = 1\ndef f(:\n    pass\n")
    assert error_line(capsys, ["check", "myppo_b.py"]) == \
        "refpg: error: cannot import myppo_b.py: line 2: SyntaxError: invalid syntax"
    # In a module the target imports: both places.
    write(project, "myppo_c.py", "import helper_c\n")
    write(project, "helper_c.py", "y = (\n")
    line = error_line(capsys, ["check", "myppo_c:f", "--kind", "gae"])
    assert line.startswith("refpg: error: cannot import myppo_c (myppo_c.py): line 1: SyntaxError: ")
    assert line.endswith("(raised in helper_c.py, line 1)")


def test_any_exception_or_exit_at_import_is_one_line(project, capsys):
    write(project, "myppo_d.py", "def g():\n    return 1 / 0\n\nX = g()\n")
    assert error_line(capsys, ["check", "myppo_d.py:g", "--kind", "gae"]) == \
        "refpg: error: cannot import myppo_d.py: line 2: ZeroDivisionError: division by zero"
    write(project, "myppo_e.py", "import sys\nsys.exit(3)\n")
    line = error_line(capsys, ["check", "myppo_e.py"])
    assert "myppo_e.py: line 2: SystemExit(3)" in line and "__name__ == '__main__'" in line


def test_a_directory_shadowing_the_module_is_named(project, capsys):
    write(project, "myppo_f.py", "def compute_gae(*args):\n    return 0\n")
    write(project, "myppo_f/__init__.py", "")
    line = error_line(capsys, ["check", "myppo_f:compute_gae", "--kind", "gae"])
    assert "module 'myppo_f' (the package directory myppo_f/) has no attribute 'compute_gae'" in line
    assert "the directory myppo_f/ shadows myppo_f.py" in line and "myppo_f.py:FUNCTION" in line
    (project / "results_g").mkdir()
    line = error_line(capsys, ["check", "results_g:compute_gae", "--kind", "gae"])
    assert "(the directory results_g/, a namespace package without __init__.py)" in line


def test_a_missing_attribute_lists_similar_names(project, capsys):
    write(project, "myppo_h.py", "def compute_gae(*args):\n    return 0\n\ndef compute_returns():\n    pass\n")
    line = error_line(capsys, ["check", "myppo_h:compute_gea", "--kind", "gae"])
    assert line == ("refpg: error: module 'myppo_h' (myppo_h.py) has no attribute 'compute_gea'; "
                    "similar names: compute_gae, compute_returns")
    line = error_line(capsys, ["check", "myppo_h.py:zzz", "--kind", "gae"])
    assert "myppo_h.py has no attribute 'zzz'; its names: compute_gae, compute_returns" in line


def test_a_module_that_is_not_there(project, capsys):
    line = error_line(capsys, ["check", "no_such_module_i:f", "--kind", "gae"])
    assert "cannot import no_such_module_i: no module named 'no_such_module_i'" in line
    assert "target file missing_j.py does not exist" in error_line(capsys, ["check", "missing_j.py"])


def test_subprocess_import_failures_show_no_traceback(tmp_path):
    write(tmp_path, "myppo.py", "import numpy as np\n\nimport foo\n")
    res = _refpg("check", "myppo.py", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr == "refpg: error: cannot import myppo.py: line 3: ModuleNotFoundError: No module named 'foo'\n"
    write(tmp_path, "reg.py", "from refpg.conformance import register\n\n@register('gae', conventon='cleanrl')\n"
                              "def f(*a):\n    return 0\n")
    res = _refpg("check", "reg.py", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1
    assert "did you mean 'convention'?" in res.stderr


def test_subprocess_the_issues_example_shows_no_traceback(tmp_path):
    write(tmp_path, "myppo.py", "def compute_gae(*args):\n    return 0\n")
    res = _refpg("check", "myppo:compute_gae", "--kind", "gae", "--option", "normalize=batch", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("refpg: error: --option normalize: unknown option for --kind gae")
    assert len(res.stderr.splitlines()) == 1


# -- 4. --version and help -------------------------------------------------------------------------

def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"refpg {importlib.metadata.version('refpg')}"


def _parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_of_every_command_has_help_text():
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            assert action.help, (parser.prog, action.dest)


def test_no_help_shows_rest_markup(capsys):
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        assert "``" not in text and not re.search(r"`\w", text), parser.prog
    assert main(["--help"]) == 0
    assert "`" not in capsys.readouterr().out


# -- 5. refpg exact --help -------------------------------------------------------------------------

def test_exact_help_lists_the_environments_and_what_seed_seeds(capsys):
    assert main(["exact", "--help"]) == 0
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    for name in envs.BUILTIN:
        assert name in out
    assert "seeds the random theta of --theta random and the generation of garnet" in out
    assert "tuple (mdp, policy, theta)" in out


def test_exact_garnet_is_generated_with_seed(capsys):
    outputs = []
    for seed in ("0", "1", "2"):
        assert main(["exact", "garnet", "--seed", seed, "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[1]["J"] != outputs[2]["J"] and outputs[0]["J"] != outputs[1]["J"]
    assert main(["exact", "garnet", "--json"]) == 0  # the default seed is BUILTIN's garnet
    assert json.loads(capsys.readouterr().out)["J"] == outputs[0]["J"]
    assert outputs[0]["J"] == refpg.evaluate(envs.BUILTIN["garnet"](), np.full((20, 4), 0.25)).J


# -- 6. labels -------------------------------------------------------------------------------------

def test_a_files_functions_are_labelled_file_colon_name(tmp_path, monkeypatch, capsys):
    write(tmp_path, "adapters.py", FAST_KL)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "adapters.py", "--max-examples", "10"]) == 0
    out = capsys.readouterr().out
    assert "refpg conformance: kl_estimator adapters.py:k3 (" in out and "refpg_user_" not in out
    assert main(["check", "adapters.py:k3", "--kind", "kl_estimator", "--max-examples", "10"]) == 0
    assert "kl_estimator adapters.py:k3 (" in capsys.readouterr().out


def test_flags_that_a_registering_file_ignores_are_refused(tmp_path, monkeypatch, capsys, no_check):
    write(tmp_path, "adapters.py", FAST_KL)
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, ["check", "adapters.py", "--kind", "gae"])
    assert "--kind apply to MODULE:FUNCTION or FILE.py:FUNCTION" in line and "@register" in line


# -- 7. study --quick ------------------------------------------------------------------------------

def test_study_quick_writes_to_a_fresh_temporary_directory(monkeypatch, capsys, tmp_path):
    from refpg import studies

    calls = []
    monkeypatch.setattr(studies, "run_study", lambda name, quick, out_dir: calls.append((quick, out_dir)) or {})
    assert main(["study", "npg_bound", "--quick"]) == 0
    quick, out = calls[-1]
    assert quick and "analysis" not in Path(out).parts and Path(out).is_dir() and not any(Path(out).iterdir())
    assert f"figures and report.md in {out}" in capsys.readouterr().out
    Path(out).rmdir()
    assert main(["study", "npg_bound", "--quick", "--out", str(tmp_path)]) == 0
    assert calls[-1] == (True, str(tmp_path))
    assert main(["study", "npg_bound"]) == 0
    assert calls[-1] == (False, "analysis/npg_bound")


def test_analysis_readme_no_longer_says_quick_overwrites():
    text = (Path(__file__).resolve().parents[1] / "analysis" / "README.md").read_text()
    assert "--quick` without `--out` overwrites" not in text and "fresh temporary directory" in text


@pytest.mark.parametrize("argv, words", [
    (["study", "seed_stroy"], "study should be one of mei2020_bandit"),
    (["study"], "give a study NAME"),
    (["study", "seed_story", "--list"], "not both"),
])
def test_study_mistakes(capsys, argv, words):
    line = error_line(capsys, argv)
    assert words in line
    if argv[1:2] == ["seed_stroy"]:
        assert line.endswith("did you mean 'seed_story'?")


# -- 8. golden outside the repository --------------------------------------------------------------

def test_golden_check_with_no_golden_directory_says_to_pass_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(refpg, "__file__", str(tmp_path / "site" / "refpg" / "__init__.py"))
    line = error_line(capsys, ["golden", "check"])
    assert "no golden directory found" in line and "--dir PATH/TO/refpg/golden" in line
    assert "holds no case files" in error_line(capsys, ["golden", "check", "--dir", str(tmp_path)])
    assert "is not a directory" in error_line(capsys, ["golden", "check", "--dir", str(tmp_path / "nope")])


def test_golden_regenerate_writes_only_where_it_is_told(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # refpg's own checkout is found for check, never for regenerate
    line = error_line(capsys, ["golden", "regenerate"])
    assert "no golden directory found (no ./golden)" in line and "--dir" in line
    assert not (tmp_path / "golden").exists()


# -- 9. JSON, and your own MDP ---------------------------------------------------------------------

def test_check_json_has_every_check_verdict_counterexample_and_timing(tmp_path, monkeypatch, capsys):
    write(tmp_path, "kls.py", """\
        def k1(logp_new, logp_old):
            return logp_old - logp_new
    """)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "kls.py:k1", "--kind", "kl_estimator", "--option", "non_negative=true",
                 "--option", "unbiased=false", "--max-examples", "10", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] == 0 and data["total"] == 1
    (report,) = data["reports"]
    assert report["function"] == "kls.py:k1" and report["verdict"] == "failed"
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses["kl_estimator.non_negative"] == "failed" and statuses["kl_estimator.raised"] == "passed"
    (failure,) = [f for f in report["failures"] if f["check_id"] == "kl_estimator.non_negative"]
    assert {"logp_new", "logp_old"} <= set(failure["counterexample"]["inputs"])
    assert report["timings"]["calls"] > 0 and report["timings"]["seconds"] > 0


def test_json_needs_a_target(capsys):
    assert "--json needs a TARGET" in error_line(capsys, ["check", "--json"])
    assert "--kind, --json need a TARGET" in error_line(capsys, ["check", "--kind", "gae", "--json"])


def test_exact_json(capsys):
    assert main(["exact", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "frozen_lake(4x4, slippery=True)" and data["n_states"] == 16
    assert abs(data["J"] - 0.0123561373) < 1e-10 and abs(data["J_star"] - 0.5420259320) < 1e-10
    assert len(data["states"]["V"]) == 16 and len(data["policy_gradient"]) == 16
    assert set(data["npg_step"]) == {"eta", "J_after", "improvement", "kl_mean", "kl_max"}


BUILDERS = """
import numpy as np
import refpg

def mdp():
    return refpg.envs.chain(4)

def triple():
    m = refpg.envs.chain(4)
    policy = refpg.TabularSoftmax.for_mdp(m)
    return m, policy, np.ones(policy.theta_shape)

def wrong_type():
    return [1, 2]

def wrong_theta():
    m = refpg.envs.chain(4)
    return m, refpg.TabularSoftmax.for_mdp(m), np.ones(3)

def boom():
    raise RuntimeError("no MDP today")

def needs(n):
    return refpg.envs.chain(n)

NOT_A_FUNCTION = 3
"""


def test_exact_on_your_own_builder(tmp_path, monkeypatch, capsys):
    write(tmp_path, "builders_k.py", BUILDERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["exact", "builders_k:mdp", "--theta", "random", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "chain(4)" in out and "seed 3" in out and "J(pi)" in out
    assert main(["exact", "builders_k.py:triple", "--json", "--gamma", "0.5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["theta"] == [[1.0, 1.0]] * 4 and data["gamma"] == 0.5
    assert "returned its own policy" in error_line(capsys, ["exact", "builders_k:triple", "--theta", "random"])


@pytest.mark.parametrize("name, words", [
    ("wrong_type", "builders_l:wrong_type should return a refpg.TabularMDP or a tuple (mdp, policy, theta), "
                   "actual list"),
    ("wrong_theta", "theta should have shape (4, 2) (the policy's theta_shape), actual (3,)"),
    ("boom", "builders_l:boom raised RuntimeError: no MDP today (raised in builders_l.py, line 21)"),
    ("needs", "builders_l:needs should take no arguments"),
    ("NOT_A_FUNCTION", "builders_l:NOT_A_FUNCTION should name a function (a callable), actual int 3"),
    ("mpd", "has no attribute 'mpd'; similar names: mdp"),
])
def test_exact_builder_mistakes(tmp_path, monkeypatch, capsys, name, words):
    write(tmp_path, "builders_l.py", BUILDERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "builders_l", raising=False)  # this test's file, not a cached one
    assert words in error_line(capsys, ["exact", f"builders_l:{name}"])


# -- 10. other mistakes ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["exact", "--gamma", "1.5"], "argument --gamma: should be in [0, 1]"),
    (["exact", "--gamma", "nan"], "argument --gamma: should be a finite number, actual 'nan'"),
    (["exact", "--gamma", "abc"], "argument --gamma: should be a number, actual 'abc'"),
    (["exact", "--eta", "inf"], "argument --eta: should be a finite number"),
    (["exact", "--max-rows", "0"], "argument --max-rows: should be >= 1, actual 0"),
    (["exact", "--seed", "-1"], "argument --seed: should be >= 0, actual -1"),
    (["exact", "frozen_lak"], "actual 'frozen_lak'; did you mean 'frozen_lake'?"),
    (["check", "m:f", "--kind", "gae", "--max-examples", "0"], "argument --max-examples: should be >= 1"),
    (["check", "m:f", "--kind", "reinforce_estimator", "--max-examples", "5"],
     "--max-examples does not apply to --kind reinforce_estimator"),
    (["check", "m:f"], "m:f needs --kind, one of gae, ppo_loss"),
    (["check", "--all-examples", "m:f", "--kind", "gae"], "--all-examples is for the demo"),
    (["golden"], "the following arguments are required: ACTION"),
])
def test_other_mistakes_are_one_line(capsys, no_check, argv, words):
    assert words in error_line(capsys, argv)


def test_a_target_that_is_not_callable_or_not_a_target(project, capsys):
    write(project, "consts_m.py", "X = [1, 2]\n")
    assert "consts_m:X should name a function (a callable), actual list [1, 2]" in \
        error_line(capsys, ["check", "consts_m:X", "--kind", "gae"])
    line = error_line(capsys, ["check", "consts_m", "--kind", "gae"])
    assert "did you mean consts_m.py (a file) or consts_m:FUNCTION?" in line


def test_gamma_one_on_a_continuing_mdp_is_one_line(capsys):
    line = error_line(capsys, ["exact", "chain", "--gamma", "1"])
    assert "gamma" in line


def test_max_rows_one_shows_one_state(capsys):
    assert main(["exact", "two_state", "--max-rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "(1 of 2 states not shown" in out


def test_golden_check_elsewhere_reads_the_installed_checkouts_files(tmp_path, monkeypatch):
    from refpg.cli import _golden_dir

    root = Path(__file__).resolve().parents[1]
    if Path(refpg.__file__).resolve().parents[2] != root:
        pytest.skip("refpg is not installed from this checkout (pip install -e .)")
    monkeypatch.chdir(tmp_path)
    found = _golden_dir(None, installed=True)
    assert found.resolve() == (root / "golden").resolve()


# -- findings of the newcomer trial ----------------------------------------------------------------

MULTI = FAST_KL + """

@register("kl_estimator", unbiased=False)
def one_arg(a):
    return a

@register("kl_estimator", unbiased=False)
def k3_again(logp_new, logp_old):
    log_r = logp_new - logp_old
    return np.exp(log_r) - 1 - log_r
"""


def test_a_refused_function_of_a_file_is_named_and_the_others_are_still_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "multi.py", MULTI)
    assert main(["check", "multi.py"]) == 2
    out, err = capsys.readouterr()
    assert "refpg: error: multi.py:one_arg: the function (a) cannot be called" in err, err
    assert "Traceback" not in err
    assert "multi.py:k3 " in out and "multi.py:k3_again " in out
    assert "refpg check: 2 of 3 passed, 1 refused" in out


def test_a_refused_function_is_in_the_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "multi.py", MULTI)
    assert main(["check", "multi.py", "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert (data["passed"], data["refused"], data["total"]) == (2, 1, 3)
    by_name = {r["function"]: r for r in data["reports"]}
    assert by_name["multi.py:one_arg"]["verdict"] == "refused"
    assert "cannot be called" in by_name["multi.py:one_arg"]["message"]
    assert by_name["multi.py:k3_again"]["verdict"] == "passed"


def test_check_help_gives_the_exit_statuses(capsys):
    assert main(["check", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 when every function passes; 1 when a check failed; 2 when a function was refused" in out


@pytest.mark.parametrize("argv, words", [
    (["study", "kl_estimators", "--quick", "--out", "{file}"], "output directory {file}: {file} is a file, not a directory"),
    (["study", "kl_estimators", "--quick", "--out", "{file}/sub"], "its parent {file} is a file, not a directory"),
    (["study", "kl_estimators", "--quick", "--out", "{long}"], "output directory {long}: cannot be created (File name too long)"),
    (["golden", "regenerate", "--dir", "{file}"], "golden directory {file}: {file} is a file, not a directory"),
    (["golden", "regenerate", "--dir", "{long}"], "golden directory {long}: cannot be created (File name too long)"),
])
def test_an_output_directory_that_cannot_be_made_is_one_line_naming_it(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "existing.py", "x = 1\n")
    names = dict(file="existing.py", long="n" * 300)  # a name no file system takes: mkdir fails, even as root
    line = error_line(capsys, [a.format(**names) for a in argv])
    assert words.format(**names) in line, line


def test_a_module_getattr_that_raises_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path, "lazy_getattr_mod.py", """
        def __getattr__(name):
            raise RuntimeError("lazy import failed for " + name)
    """)
    line = error_line(capsys, ["check", "lazy_getattr_mod:x", "--kind", "gae"])
    assert "looking up 'x' raised RuntimeError: lazy import failed for x" in line, line


@pytest.mark.parametrize("body, words", [
    ("register('gae')(3)", "regnotfn.py: line 3: register('gae') should decorate a function (a callable), actual int 3"),
    ("class Foo:\n    pass\nregister('gae')(Foo())",
     "regnotfn.py: line 5: register('gae') should decorate a function (a callable), actual Foo <regnotfn.Foo object"),
    ("@register\ndef g(x):\n    return x",
     "regnotfn.py: line 3: @register needs the kind in parentheses: write @register(\"gae\", ...)"),
])
def test_registering_a_non_function_names_the_file_and_line(tmp_path, monkeypatch, capsys, body, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "regnotfn.py").write_text("from refpg.conformance import register\n\n" + body + "\n")
    line = error_line(capsys, ["check", "regnotfn.py"])
    assert words in line, line
    assert "refpg_user_" not in line


@pytest.mark.parametrize("target", ["objs.py:np", "objs_mod:np"])
def test_a_module_that_is_not_a_function_is_named_without_its_path(tmp_path, monkeypatch, capsys, target):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("objs.py", "objs_mod.py"):
        write(tmp_path, name, "import numpy as np\n")
    line = error_line(capsys, ["check", target, "--kind", "gae"])
    assert line.endswith(f"{target} should name a function (a callable), actual module numpy"), line


def test_a_user_object_in_a_message_shows_its_file_not_an_internal_module_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "objs.py", "class Foo:\n    pass\nfoo = Foo()\n")
    line = error_line(capsys, ["check", "objs.py:foo", "--kind", "gae"])
    assert "actual Foo <objs.Foo object at" in line and "refpg_user_" not in line, line


def test_check_help_gives_every_option_a_meaning(capsys):
    assert main(["check", "--help"]) == 0
    text = capsys.readouterr().out
    out = " ".join(text.split())
    for kind in runner.KINDS:
        # each kind's block: from its indented heading to the next heading at that indent
        block = re.search(rf"^  {kind}\n(.*?)(?=^  \S|\Z)", text, re.M | re.S)
        assert block, f"--help has no block of options for {kind}"
        section = " " + " ".join(block.group(1).split())
        for name in runner.options_of(kind):
            if name in runner.FLAG_OPTIONS:
                continue
            m = re.search(rf" {name}: (.*?) \(", section)
            assert m and len(m.group(1).split()) >= 3, f"{kind} --option {name} has no meaning in --help"
    assert "ddof: delta degrees of freedom of that std" in out
    assert "min_cosine: least cosine between TARGET's step and the oracle's direction" in out


def test_study_progress_uses_carriage_returns_only_on_a_terminal():
    import io

    from refpg.studies._common import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, tty = io.StringIO(), Terminal()
    for stream in (log, tty):
        progress = Progress("kl_estimators: cases", 8, stream=stream)
        for k in range(1, 9):
            progress.update(k)
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == [f"kl_estimators: cases: {k}/8" for k in (2, 4, 6, 8)]
    assert tty.getvalue().startswith("\rkl_estimators: cases: 1/8\r") and tty.getvalue().endswith("8/8\n")


def test_study_progress_in_a_file_has_no_carriage_returns(tmp_path):
    # Bytes, not text: universal newlines would turn a "\r" into "\n".
    out = subprocess.run([sys.executable, "-m", "refpg.cli", "study", "kl_estimators", "--quick", "--out",
                          str(tmp_path / "o")], capture_output=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert b"\r" not in out.stderr and b"kl_estimators: Gaussian cases: 2/2\n" in out.stderr


def test_a_refused_single_target_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "one.py", "def one_arg(a):\n    return a\n")
    line = error_line(capsys, ["check", "one.py:one_arg", "--kind", "kl_estimator"])
    assert line.startswith("refpg: error: one.py:one_arg: the function (a) cannot be called"), line


def test_none_turns_off_the_options_that_have_an_off():
    assert runner.parse_option("ppo_loss", "dual_clip", "None") is None
    assert runner.parse_option("ppo_loss", "dual_clip", "3") == 3.0
    assert runner.parse_option("ppo_loss", "eps_high", "none") is None
    assert runner.check_options("ppo_loss", {"dual_clip": None}, where="register('ppo_loss')") == {"dual_clip": None}
    with pytest.raises(InvalidInputError, match="--option ddof should be an integer, actual 'none'"):
        runner.parse_option("ppo_loss", "ddof", "none")

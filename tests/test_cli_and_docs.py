"""The console command and the README stay true."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from refpg.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_refpg_exact_default_prints_the_exact_table(capsys):
    assert main(["exact"]) == 0
    out = capsys.readouterr().out
    assert "frozen_lake(4x4, slippery=True)" in out
    # J of the uniform policy and J* on slippery FrozenLake 4x4, gamma = 0.99.
    assert "J(pi) = rho . V" in out and "+0.0123561373" in out
    assert "J* (policy iteration)" in out and "+0.5420259320" in out
    assert "natural gradient" in out


def test_refpg_without_a_command_runs_the_main_job(monkeypatch):
    from refpg.conformance import runner

    calls = []
    monkeypatch.setattr(runner, "demo", lambda **kw: calls.append(kw) or 0)
    assert main([]) == 0
    assert calls == [{"everything": False}]


@pytest.mark.parametrize("env", ["two_state", "bandit", "chain", "gridworld", "garnet"])
def test_refpg_exact_on_builtins(env, capsys):
    assert main(["exact", env, "--theta", "random"]) == 0
    assert "J(pi)" in capsys.readouterr().out


def test_refpg_exact_unknown_env_is_a_clear_error(capsys):
    assert main(["exact", "nonsense"]) == 2
    assert "ENV should be one of" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "refpg.cli", "exact", "two_state"],
                         capture_output=True, text=True, check=True).stdout
    assert "two_state" in out


def test_readme_quickstart_has_exactly_two_commands():
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quickstart\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    lines = [l for b in re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
             for l in b.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert lines == ['pip install -e . && refpg check',
                     'pip install -e ".[test]" && pip install --no-deps verl==0.9.1 && python -m pytest -n auto']


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, "README example", "exec"), {})

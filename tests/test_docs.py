"""The API reference (docs/) builds without a single warning and documents every public name.

The build is Sphinx's own command line with warnings as errors and nitpicky
references, ``python -m sphinx -W --keep-going -n``, once per test session
(shared by the xdist workers) into a temporary directory. A name in the
``__all__`` of any public module (no component of its dotted name starts with
``_``) must then have an entry in the built inventory, ``objects.inv``: under
that module, or, for a name re-exported from another module, at its home, as
the same Python object. So a new public function without a page, or a
docstring with a broken reference, fails here.

Needs the ``docs`` extra (in ``test``); skipped, saying so, where Sphinx is
not installed.
"""

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

import refpg

for _module in ("sphinx", "numpydoc", "myst_parser"):
    pytest.importorskip(_module, reason=f"{_module} is not installed: the docs need pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def sphinx_build(srcdir: Path, outdir: Path) -> subprocess.CompletedProcess:
    """``python -m sphinx -W --keep-going -n -q`` of `srcdir` into `outdir`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(outdir / ".doctrees"), str(srcdir), str(outdir)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def built(once_per_session):
    """(html directory, (return code, everything Sphinx printed)) of the real docs."""
    def build(directory):
        result = sphinx_build(DOCS, directory / "html")
        return result.returncode, result.stdout + result.stderr
    directory, value = once_per_session("sphinx-docs", build)
    return directory / "html", value


def public_modules() -> list[str]:
    """Every importable module of refpg whose dotted name has no component starting with ``_``."""
    names = ["refpg"]
    for info in pkgutil.walk_packages(refpg.__path__, "refpg."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def inventory(path: Path) -> set[str]:
    """Every Python-domain name in a Sphinx ``objects.inv`` (version 2: four header lines, then zlib)."""
    lines = path.read_bytes().split(b"\n", 4)
    assert lines[0] == b"# Sphinx inventory version 2", lines[0]
    names = set()
    for line in zlib.decompress(lines[4]).decode("utf-8").splitlines():
        match = re.match(r"(?x) (.+?) \s+ (\w+):(\w+) \s+ -?\d+ \s", line)
        if match and match.group(2) == "py":
            names.add(match.group(1))
    return names


def resolve(fullname: str):
    """The object a dotted name denotes (the longest importable module prefix, then attributes), or `resolve`."""
    parts = fullname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, resolve)  # `resolve` itself: no such object
        return obj
    return resolve


def undocumented(modname: str, documented: set[str]) -> list[str]:
    """The names of ``modname.__all__`` that have no entry in `documented`, as the same object."""
    module = importlib.import_module(modname)
    by_last = {}
    for fullname in documented:
        by_last.setdefault(fullname.rsplit(".", 1)[-1], []).append(fullname)
    missing = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if f"{modname}.{name}" in documented or (inspect.ismodule(obj) and obj.__name__ in documented):
            continue
        if not any(resolve(candidate) is obj for candidate in by_last.get(name, ())):
            missing.append(f"{modname}.{name}")
    return missing


def test_the_docs_build_with_no_warning(built):
    _, (returncode, output) = built
    assert returncode == 0 and not re.search(r"WARNING|ERROR", output), (
        f"sphinx -W --keep-going -n exited {returncode}:\n{output}")


def test_every_public_module_has_its_entry_in_the_reference(built):
    html, _ = built
    documented = inventory(html / "objects.inv")
    assert [name for name in public_modules() if name not in documented] == []


def test_every_public_name_is_in_the_reference(built):
    html, _ = built
    documented = inventory(html / "objects.inv")
    missing = [name for module in public_modules() for name in undocumented(module, documented)]
    assert missing == [], "public names with no entry in the API reference (see docs/api/)"


def test_the_check_sees_a_missing_name():
    documented = {"refpg.gradient", "refpg.gradient.policy_gradient"}
    assert undocumented("refpg.gradient", documented) == ["refpg.gradient.objective"]
    # A re-export counts when its home has the entry, as the same object.
    assert "refpg.evaluate" not in undocumented("refpg", {"refpg.evaluation.evaluate"})
    assert "refpg.evaluate" in undocumented("refpg", {"refpg.gradient.evaluate"})


def test_a_broken_reference_in_a_docstring_fails_the_build(tmp_path):
    # The docs' own configuration, on one page that documents a module with one good and one broken reference.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "refpg_docs_probe.py").write_text(textwrap.dedent('''
        """Probe."""

        def probe():
            """Uses `refpg.evaluate` and :func:`refpg.gradient.policy_gradient`, then `refpg.no_such_name`."""
    '''))
    (tmp_path / "src" / "conf.py").write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path / "src")!r})
        __file__ = {str(DOCS / "conf.py")!r}
        exec(compile(open(__file__).read(), __file__, "exec"))
        exclude_patterns = ["_build"]
    '''))
    (tmp_path / "src" / "index.rst").write_text(textwrap.dedent("""
        Probe
        =====

        .. refpg-module:: refpg.gradient

        .. refpg-module:: refpg.evaluation

        .. automodule:: refpg_docs_probe
           :members:
    """))
    result = sphinx_build(tmp_path / "src", tmp_path / "html")
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if "WARNING" in line and "refpg_docs_probe" in line]
    assert result.returncode != 0
    assert len(warnings) == 1 and "refpg.no_such_name" in warnings[0], warnings

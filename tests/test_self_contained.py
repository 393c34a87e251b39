"""The project is self-contained: no tracked file points outside the repository.

A clone is all a user has. A path on the author's machine (``/work/...``,
``/home/...``), a relative path that climbs out of the repository
(``../shared/...``), or a Markdown link to a file that is not in the clone
would send them nowhere. System interfaces that exist on every Linux machine
(``/proc``, ``/dev``, ``/usr/bin/env``, ...) are not such paths.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Absolute paths that name the operating system, not somebody's machine.
SYSTEM_PREFIXES = ("/proc/", "/sys/", "/dev/", "/usr/", "/bin/", "/etc/")

# An absolute POSIX path of at least two components, not part of a URL
# ("https://host/a/b") or of a longer relative path ("src/refpg/x").
ABSOLUTE = re.compile(r"(?<![\w.:/~-])(/[A-Za-z_][\w.-]*(?:/[\w.-]+)+)")
HOME = re.compile(r"(?<![\w/])(~/[\w.-]+(?:/[\w.-]+)*)")
WINDOWS = re.compile(r"\b[A-Za-z]:\\(?:Users|Documents and Settings)\\")
# A relative path that starts by climbing: "../x" or "../../x".
CLIMBING = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


#: This file spells out the paths it must catch; it is the only file left out of the scan.
SELF = Path(__file__).resolve()


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.resolve() == SELF:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (PNG figures)
        files.append(path)
    return files


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def outside_paths(path: Path, text: str) -> list[str]:
    """Every mention in `text` of a path outside the repository, as 'file:line: path (why)'."""
    rel = path.relative_to(ROOT)
    found = []
    for m in ABSOLUTE.finditer(text):
        if not m.group(1).startswith(SYSTEM_PREFIXES):
            found.append(f"{rel}:{_line(text, m.start())}: {m.group(1)} (absolute path)")
    for m in HOME.finditer(text):
        found.append(f"{rel}:{_line(text, m.start())}: {m.group(1)} (home directory)")
    for m in WINDOWS.finditer(text):
        found.append(f"{rel}:{_line(text, m.start())}: {m.group(0)} (Windows user directory)")
    for m in CLIMBING.finditer(text):
        target = (path.parent / m.group(1)).resolve()
        if not target.is_relative_to(ROOT):
            found.append(f"{rel}:{_line(text, m.start())}: {m.group(1)} (leaves the repository)")
    return found


def broken_links(path: Path, text: str) -> list[str]:
    """Markdown links to files that are not in the checkout."""
    rel = path.relative_to(ROOT)
    found = []
    for m in MARKDOWN_LINK.finditer(text):
        target = m.group(1).split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # in-page anchor, or a URL (https:, mailto:)
        resolved = (path.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            found.append(f"{rel}:{_line(text, m.start())}: link to {m.group(1)} (no such file in the repository)")
    return found


def test_no_tracked_file_names_a_path_outside_the_repository():
    problems = []
    for path in tracked_text_files():
        problems += outside_paths(path, path.read_text(encoding="utf-8", errors="replace"))
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


def test_every_markdown_link_resolves_inside_the_repository():
    problems = []
    for path in tracked_text_files():
        if path.suffix == ".md":
            problems += broken_links(path, path.read_text(encoding="utf-8"))
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_contract_is_in_the_project():
    """docs/conventions.md exists and no file refers to the contract under another name."""
    assert (ROOT / "docs" / "conventions.md").is_file()
    stale = [f"{p.relative_to(ROOT)}:{_line(t, m.start())}"
             for p in tracked_text_files()
             for t in [p.read_text(encoding="utf-8", errors="replace")]
             for m in re.finditer(r"(?<![\w/])CONVENTIONS\.md", t)]
    assert not stale, "mentions of CONVENTIONS.md, which is not in the project: " + ", ".join(stale)


@pytest.mark.parametrize("text, expected", [
    ("see /work/shared/CONVENTIONS.md", "/work/shared/CONVENTIONS.md (absolute path)"),
    ("cd /home/alice/refpg && run", "/home/alice/refpg (absolute path)"),
    ("[contract](../shared/CONVENTIONS.md)", "../shared/CONVENTIONS.md (leaves the repository)"),
    ("open ~/projects/refpg/x.py", "~/projects/refpg/x.py (home directory)"),
    (r"C:\Users\bob\refpg", r"C:\Users\ (Windows user directory)"),
])
def test_the_scanner_catches_outside_paths(text, expected):
    """The scanner is not vacuous: each kind of outside path is reported (file at the repo root)."""
    found = outside_paths(ROOT / "README.md", text)
    assert any(f.endswith(expected) for f in found), found


@pytest.mark.parametrize("text", [
    "#!/usr/bin/env bash", "read /proc/cpuinfo", "see https://github.com/a/b/c", "src/refpg/mdp.py",
    "[conventions](docs/conventions.md)", "`../docs/conventions.md` from analysis/",
])
def test_the_scanner_accepts_paths_inside_the_repository(text):
    path = ROOT / ("analysis/README.md" if "../docs" in text else "README.md")
    assert outside_paths(path, text) == []


def test_the_link_checker_catches_a_missing_file():
    found = broken_links(ROOT / "README.md", "[x](docs/no_such_page.md) [y](https://example.org/z) [z](#anchor)")
    assert len(found) == 1 and "docs/no_such_page.md" in found[0]

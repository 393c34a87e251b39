"""Mutation testing of refpg's exact core: does some test fail for every small change to the code?

Usage (from the repository root; see tools/README.md)::

    python tools/mutate.py                        # the exact core, every mutant
    python tools/mutate.py --file src/refpg/kl.py --jobs 2
    python tools/mutate.py --file src/refpg/kl.py --list
    python tools/mutate.py --show 'kl.py:policy_kl+40:11:Lt->LtE'

Each mutant is one small edit of one source file, made on the syntax tree's
positions in the source text (so comments, layout and every other line number
stay as they were). It is run against only the tests that execute its line, as
recorded once per test by tools/refpg_mutation_trace.py, fastest test first,
stopping at the first failure. The mutated file lives in a temporary copy of
src/ put first on PYTHONPATH: the working tree is never written, even if the
run is interrupted.

Mutant ids are ``<file>:<function>+<line offset from its def>:<column>:<operator>``
(``<module>+<line>`` outside functions), so an id survives edits elsewhere in
the file. tools/equivalent_mutants.txt lists the ids of equivalent mutants, one
per line with ``# reason``; the score leaves them out.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parent
CORE = [f"src/refpg/{name}.py" for name in (
    "evaluation", "gradient", "fisher", "surrogate", "kl", "bounds", "returns",
    "kl_estimators", "policies", "mdp")]
#: Test files neither traced nor selected by default: they reach the core only
#: through the studies, the kit's worked examples, the docs build, subprocesses
#: (whose lines the tracer cannot see) or other libraries, and they cost most
#: of a survivor's run time. Leaving them out can only lower the score.
INTEGRATION = [f"tests/{name}.py" for name in (
    "test_conformance_examples", "test_studies", "test_studies_story_ppo", "test_studies_cen_gradients",
    "test_docs", "test_golden_portability", "test_cli", "test_cli_and_docs", "test_examples",
    "test_real_libraries", "test_mutation_tool", "test_self_contained", "test_dependency_floor")]
EQUIVALENT = TOOLS / "equivalent_mutants.txt"
OUT = ROOT / ".mutation"
NO_MUTATE = "pragma: no mutate"

_BINOP_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
}
_BINOP_TEXT = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
    ast.Mod: "%", ast.Pow: "**",
}
_CMP_SWAP = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_CMP_TEXT = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}
_COMMENT = re.compile(rb"#[^\n]*")


@dataclass
class Mutant:
    id: str
    file: str  # relative to the repository root
    line: int
    col: int
    operator: str
    original: str
    mutated: str
    start: int  # byte offsets of the replaced text
    end: int
    replacement: bytes = field(repr=False)
    scope: tuple = ()  # (first, last) body lines of the enclosing function, or () at module level

    def apply(self, source: bytes) -> bytes:
        return source[:self.start] + self.replacement + source[self.end:]


def _same_lines(old: bytes, new: bytes) -> bytes:
    """`new` padded inside parentheses to as many newlines as `old`, so later lines keep their numbers."""
    missing = old.count(b"\n") - new.count(b"\n")
    return b"(" + new + b"\n" * missing + b")" if missing > 0 else new


class _Collector(ast.NodeVisitor):
    def __init__(self, relfile: str, source: bytes):
        self.relfile, self.source = relfile, source
        self.line_starts = [0]
        for line in source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.lines = source.decode().splitlines()
        self.scopes = []  # (qualname, def line, (first, last) body lines or ())
        self.mutants = []
        self.skip_depth = 0

    def offset(self, line, col):
        return self.line_starts[line - 1] + col

    def position(self, offset):
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1]

    def text(self, start, end):
        return self.source[start:end].decode()

    def add(self, operator, start, end, new: bytes):
        line, col = self.position(start)
        if NO_MUTATE in self.lines[line - 1]:
            return
        if self.scopes:
            name, def_line, body = self.scopes[-1]
            anchor = f"{name}{line - def_line:+d}"
        else:
            anchor, body = f"<module>+{line}", ()
        old = self.source[start:end]
        self.mutants.append(Mutant(
            id=f"{Path(self.relfile).name}:{anchor}:{col}:{operator}", file=self.relfile,
            line=line, col=col, operator=operator, original=" ".join(old.decode().split()),
            mutated=" ".join(new.decode().split()), start=start, end=end,
            replacement=_same_lines(old, new), scope=body))

    def node_span(self, node):
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def token_between(self, left, right):
        """Byte span of the operator between two nodes: the text left once parentheses and comments go."""
        a, b = self.node_span(left)[1], self.node_span(right)[0]
        segment = _COMMENT.sub(lambda m: b" " * len(m.group()), self.source[a:b])
        stripped = bytes(c if chr(c) not in "()\\ \t\r\n" else 32 for c in segment)
        first = len(stripped) - len(stripped.lstrip())
        last = len(stripped.rstrip())
        return a + first, a + last

    # --- scopes and what not to mutate
    def visit_FunctionDef(self, node):
        # Decorators and defaults are anchored to the function too: their effect is seen through its calls.
        qualname = ".".join([s[0] for s in self.scopes] + [node.name])
        body = (node.body[0].lineno, node.end_lineno)
        self.scopes.append((qualname, node.lineno, body))
        for item in node.decorator_list:
            self.visit(item)
        self.visit(node.args)  # defaults; visit_arg skips the annotations, and the return annotation is not visited
        for item in node.body:
            self.visit(item)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        for item in node.decorator_list + node.bases + node.keywords:
            self.visit(item)
        qualname = ".".join([s[0] for s in self.scopes] + [node.name])
        self.scopes.append((qualname, node.lineno, ()))
        for item in node.body:
            self.visit(item)
        self.scopes.pop()

    def visit_arg(self, node):
        pass  # annotations

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node):
        pass  # f-string positions are unreliable before Python 3.12; messages are tested as text

    def visit_Assign(self, node):
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self.generic_visit(node)

    # --- operators
    def visit_BinOp(self, node):
        swap = _BINOP_SWAP.get(type(node.op))
        if swap is not None:
            a, b = self.token_between(node.left, node.right)
            self.add(f"{type(node.op).__name__}->{swap.__name__}", a, b, _BINOP_TEXT[swap].encode())
        for side in (node.left, node.right):
            if isinstance(side, ast.Name) and side.id == "gamma":
                a, b = self.node_span(side)
                self.add("gamma->1-gamma", a, b, b"(1 - gamma)")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        swap = _BINOP_SWAP.get(type(node.op))
        if swap is not None:
            a, b = self.token_between(node.target, node.value)
            self.add(f"{type(node.op).__name__}->{swap.__name__}", a, b, (_BINOP_TEXT[swap] + "=").encode())
        self.generic_visit(node)

    def visit_Compare(self, node):
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            swap = _CMP_SWAP[type(op)]
            a, b = self.token_between(left, right)
            self.add(f"{type(op).__name__}->{swap.__name__}", a, b, _CMP_TEXT[swap].encode())
            left = right
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        new = b"or" if isinstance(node.op, ast.And) else b"and"
        name = "And->Or" if isinstance(node.op, ast.And) else "Or->And"
        spans = [self.token_between(x, y) for x, y in zip(node.values, node.values[1:])]
        start, end = spans[0][0], spans[-1][1]
        text = bytearray(self.source[start:end])
        for a, b in reversed(spans):
            text[a - start:b - start] = new
        self.add(name, start, end, bytes(text))
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            a = self.node_span(node)[0]
            self.add("not->", a, a + 3, b"")
        self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            new = repr(not value)
            operator = f"{value}->{not value}"
        elif isinstance(value, int):
            new = {0: "1", 1: "0"}.get(value, repr(value + 1))
            operator = f"{value}->{new}"
        elif isinstance(value, float):
            new = {0.0: "1.0", 1.0: "2.0"}.get(value, repr(value + 1))
            operator = f"{value!r}->{new}"
        else:
            return
        a, b = self.node_span(node)
        self.add(operator, a, b, new.encode())

    def visit_Name(self, node):
        if node.id in ("any", "all"):
            other = "all" if node.id == "any" else "any"
            a, b = self.node_span(node)
            self.add(f"{node.id}->{other}", a, b, other.encode())

    def visit_Attribute(self, node):
        self.visit(node.value)
        if node.attr in ("any", "all"):
            other = "all" if node.attr == "any" else "any"
            b = self.node_span(node)[1]
            self.add(f".{node.attr}->.{other}", b - len(node.attr), b, other.encode())

    # --- statements
    def visit_Raise(self, node):
        a, b = self.node_span(node)
        self.add("delete-raise", a, b, b"None")
        self.generic_visit(node)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call):
            a, b = self.node_span(node)
            self.add("delete-call", a, b, b"None")
        self.generic_visit(node)


def mutants_of(path: Path, root: Path = ROOT) -> list[Mutant]:
    """Every mutant of one file, in source order; `root` is what the mutant's file is relative to."""
    source = path.read_bytes()
    relfile = path.resolve().relative_to(root.resolve()).as_posix()
    collector = _Collector(relfile, source)
    collector.visit(ast.parse(source))
    seen, out = set(), []
    for m in sorted(collector.mutants, key=lambda m: (m.start, m.end, m.operator)):
        if m.id in seen:  # two edits at one position with one operator name cannot happen; keep ids unique anyway
            continue
        seen.add(m.id)
        out.append(m)
    return out


# --- per-test line coverage -------------------------------------------------

def _fingerprint(package: Path, tests: list[str], exclude: list[str]) -> str:
    h = hashlib.sha256(" ".join(tests).encode() + b" -" + " ".join(exclude).encode())
    for base in [package] + [ROOT / t for t in tests] + [TOOLS / "refpg_mutation_trace.py"]:
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode() + f.read_bytes())
    return h.hexdigest()


def collect_coverage(package: Path, tests: list[str], jobs: int, out: Path, reuse: bool,
                     exclude: list[str] = ()) -> dict:
    """{nodeid: record} from one traced run of `tests` without `exclude`, cached in out/coverage.json by a
    fingerprint of the code."""
    cache = out / "coverage.json"
    exclude = list(exclude)
    key = _fingerprint(package, tests, exclude)
    if cache.exists():
        data = json.loads(cache.read_text())
        if data["key"] == key or reuse:
            if data["key"] != key:
                print("mutate: reusing coverage of an older version of src/ or tests/ (--reuse-coverage)")
            return data["tests"]
    print(f"mutate: recording which lines each test runs ({' '.join(tests)}, {jobs} jobs); once per change to src/ or tests/")
    with tempfile.TemporaryDirectory(prefix="refpg-trace-") as tmp:
        env = dict(os.environ, REFPG_MUTATION_TRACE_ROOT=str(package.resolve()), REFPG_MUTATION_TRACE_OUT=tmp,
                   PYTHONPATH=os.pathsep.join([str(TOOLS)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                   PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "refpg_mutation_trace", *tests,
               *[f"--ignore={path}" for path in exclude]]
        if jobs > 1:
            cmd += ["-n", str(jobs)]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        records = {}
        for f in Path(tmp).glob("*.json"):
            records.update(json.loads(f.read_text()))
    print(f"mutate: {len(records)} tests traced in {time.perf_counter() - start:.0f} s")
    out.mkdir(exist_ok=True)
    cache.write_text(json.dumps({"key": key, "tests": records}))
    return records


def tests_for(mutant: Mutant, coverage: dict, package_rel: str, exclude: list[str] = ()) -> list[tuple[float, str]]:
    """(seconds, nodeid) of the passing tests that run the mutant's line, fastest first, none from `exclude`.

    Code that runs at import (class bodies, a def's defaults and decorators)
    is reached by every test that runs any line of the function, since its
    effect is what they see. A module-level line (a constant, say) is reached
    by every test of every test file in which some test runs a line of the
    module: a test may read the constant alone (``from m import LIMIT``), and
    the import happens at collection, where no test is traced.
    """
    rel = Path(mutant.file).relative_to(package_rel).as_posix() if mutant.file.startswith(package_rel) else mutant.file
    skipped = tuple(path.rstrip("/") + suffix for path in exclude for suffix in ("::", "/"))
    passing = {nodeid: record for nodeid, record in coverage.items()
               if record["outcome"] == "passed" and not nodeid.startswith(skipped)}
    if not mutant.scope:
        files = {nodeid.split("::")[0] for nodeid, record in passing.items() if record["lines"].get(rel)}
        return sorted((record["seconds"], nodeid) for nodeid, record in passing.items()
                      if nodeid.split("::")[0] in files)
    selected = []
    for nodeid, record in passing.items():
        lines = record["lines"].get(rel)
        if not lines:
            continue
        if mutant.scope[0] <= mutant.line <= mutant.scope[1]:
            hit = mutant.line in lines
        else:
            hit = any(mutant.scope[0] <= line <= mutant.scope[1] for line in lines)
        if hit:
            selected.append((record["seconds"], nodeid))
    return sorted(selected)


# --- running mutants --------------------------------------------------------

@dataclass
class Result:
    id: str
    file: str
    line: int
    operator: str
    original: str
    mutated: str
    status: str  # killed, survived, timeout, uncovered, equivalent, error
    tests: int
    seconds: float
    killer: str = ""


_RUNNING = set()  # the pytest processes under way, killed on Ctrl-C


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def run_mutant(mutant: Mutant, tests: list[tuple[float, str]], *, root: Path = ROOT, src: Path = ROOT / "src",
               factor: float = 10.0, pytest_args=()) -> Result:
    """Run `tests` (fastest first, stop at the first failure) against a copy of `src` holding the mutant.

    The copy is put first on PYTHONPATH and pytest runs in `root`; nothing under `root` is written.
    """
    def result(status, seconds=0.0, killer=""):
        return Result(mutant.id, mutant.file, mutant.line, mutant.operator, mutant.original, mutant.mutated,
                      status, len(tests), round(seconds, 2), killer)

    if not tests:
        return result("uncovered")
    source = (root / mutant.file).read_bytes()
    mutated = mutant.apply(source)
    try:
        compile(mutated, mutant.file, "exec")
    except SyntaxError as e:
        return result("error", killer=f"mutant does not compile: {e}")
    timeout = 30 + factor * sum(s for s, _ in tests)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refpg-mutant-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        (copy / Path(mutant.file).relative_to(src.relative_to(root))).write_bytes(mutated)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                   PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               "-o", "addopts=", *pytest_args, *[t for _, t in tests]]
        # A session of its own, so that a timeout or Ctrl-C kills the tests' own subprocesses too.
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        _RUNNING.add(proc)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return result("timeout", time.perf_counter() - start)
        finally:
            _RUNNING.discard(proc)
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return result("survived", seconds)
    if proc.returncode in (1, 2, 3):
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", stdout, re.M)
        return result("killed", seconds, failed[0] if failed else f"pytest exit {proc.returncode}")
    if proc.returncode < 0:
        # Killed by a signal we did not send (our timeout returned above): the kernel's OOM killer, when a
        # mutant makes a loop grow without end. The tests did not pass.
        return result("killed", seconds, f"tests died of signal {-proc.returncode}")
    if proc.returncode == 4 and ("found no collectors" in stdout or "ERROR: not found:" in stdout):
        # A test module failed to import under the mutant (its module-level code builds an MDP or a
        # policy), so pytest could not even collect the selected tests: they passed unmutated. pytest 8
        # says "found no collectors"; pytest 7 "not found: ... in any of [<Module tests/x.py>]".
        module = (re.search(r"^ERROR (?:collecting )?(\S+\.py)", stdout, re.M)
                  or re.search(r"<Module (\S+\.py)>", stdout))
        return result("killed", seconds, f"collecting {module.group(1) if module else 'a test module'}")
    return result("error", seconds, f"pytest exit {proc.returncode}: {stdout[-300:]}")


def check_copy_is_imported(src: Path, package: str) -> None:
    """Refuse to run if a copy of `src` first on PYTHONPATH would not be what the tests import."""
    with tempfile.TemporaryDirectory(prefix="refpg-mutant-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        out = subprocess.run([sys.executable, "-c", f"import {package}; print({package}.__file__)"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        if not out.stdout.strip().startswith(str(copy)):
            raise SystemExit(f"mutate: {package} should import from the copy {copy}, actual {out.stdout or out.stderr}")


def load_equivalent(path: Path) -> dict[str, str]:
    """{id: reason} from lines ``<id>  # <reason>``; a line without a reason is an error."""
    out = {}
    if not path.exists():
        return out
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        mutant_id, sep, reason = line.partition("#")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{number}: an equivalent mutant needs '# <reason>', actual {line!r}")
        out[mutant_id.strip()] = reason.strip()
    return out


def summarise(results: list[Result]) -> list[dict]:
    rows = {}
    for r in results:
        row = rows.setdefault(r.file, dict(file=Path(r.file).name, mutants=0, killed=0, timeout=0, survived=0,
                                           uncovered=0, equivalent=0, error=0))
        row["mutants"] += 1
        row[r.status] += 1
    total = dict(file="total", **{k: sum(row[k] for row in rows.values()) for k in
                                   ("mutants", "killed", "timeout", "survived", "uncovered", "equivalent", "error")})
    table = list(rows.values()) + ([total] if len(rows) > 1 else [])
    for row in table:
        scored = row["mutants"] - row["equivalent"]
        row["score"] = 100.0 * (row["killed"] + row["timeout"]) / scored if scored else 100.0
    return table


def markdown(table: list[dict], results: list[Result], seconds: float, pending: int = 0) -> str:
    cols = ("file", "mutants", "killed", "timeout", "survived", "uncovered", "equivalent", "error", "score")
    lines = ["# Mutation report", "", f"Command: `python tools/mutate.py {' '.join(sys.argv[1:])}`  ",
             f"Run time: {seconds:.0f} s for {len(results)} mutants."
             + (f" **Partial: {pending} mutants still to run** (the table counts only those done)." if pending else ""),
             "",
             "Score = (killed + timeout) / (mutants - equivalent). Uncovered = no passing test runs the line.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        lines.append("| " + " | ".join(f"{row[c]:.1f}%" if c == "score" else str(row[c]) for c in cols) + " |")
    lines += ["", "## Survivors", ""]
    for r in results:
        if r.status in ("survived", "uncovered", "error"):
            note = {"survived": f"{r.tests} tests", "uncovered": "no test runs this line", "error": r.killer}[r.status]
            lines.append(f"- `{r.file}:{r.line}` `{r.id}`: `{r.original}` -> `{r.mutated}` ({r.status}; {note})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", action="append", help="a source file to mutate (repeatable); default: the exact core")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once (default: one per core)")
    parser.add_argument("--max-mutants", type=int, help="run only this many mutants, spread evenly over the list")
    parser.add_argument("--tests", nargs="+", default=["tests"], help="the tests to trace and select from (default: tests)")
    parser.add_argument("--exclude", nargs="*", default=INTEGRATION, metavar="PATH",
                        help="test files (or directories) neither traced nor selected (default: the integration "
                             "tests listed in INTEGRATION; --exclude with no path keeps every test)")
    parser.add_argument("--timeout-factor", type=float, default=10.0,
                        help="a mutant times out after 30 s + this many times its tests' traced run time")
    parser.add_argument("--reuse-coverage", action="store_true",
                        help="use .mutation/coverage.json even if src/ or tests/ changed since it was recorded")
    parser.add_argument("--survivors", action="store_true",
                        help="rerun only the mutants the last report (in --out) does not show killed; keep its kills")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutant ids")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--show", metavar="ID", help="print the diff of one mutant and exit")
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT, help="the equivalent-mutant list")
    parser.add_argument("--out", type=Path, default=OUT, help="where coverage and reports go (default: .mutation/)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that temporary copies are removed and running tests killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    files = [Path(f) if Path(f).is_absolute() else ROOT / f for f in (args.file or CORE)]
    mutants = [m for f in files for m in mutants_of(f)]
    if args.show:
        for m in mutants:
            if m.id == args.show:
                source = (ROOT / m.file).read_bytes()
                import difflib
                sys.stdout.writelines(difflib.unified_diff(
                    source.decode().splitlines(True), m.apply(source).decode().splitlines(True), m.file, m.file + " (mutant)"))
                return 0
        raise SystemExit(f"no mutant {args.show!r} in {', '.join(str(f) for f in files)}")
    if args.only:
        mutants = [m for m in mutants if m.id in set(args.only)]
    if args.max_mutants and len(mutants) > args.max_mutants:
        step = len(mutants) / args.max_mutants
        mutants = [mutants[int(i * step)] for i in range(args.max_mutants)]
    if args.list:
        for m in mutants:
            print(f"{m.file}:{m.line}  {m.id}  {m.original!r} -> {m.mutated!r}")
        print(f"{len(mutants)} mutants")
        return 0

    equivalent = load_equivalent(args.equivalent)
    src = ROOT / "src"
    package = src / "refpg"
    check_copy_is_imported(src, package.name)
    start = time.perf_counter()
    coverage = collect_coverage(package, args.tests, args.jobs, args.out, args.reuse_coverage, args.exclude)
    package_rel = package.relative_to(ROOT).as_posix() + "/"
    results = []
    todo = []
    known = {}
    if args.survivors and (args.out / "report.json").exists():
        known = {r["id"]: Result(**r) for r in json.loads((args.out / "report.json").read_text())["results"]
                 if r["status"] in ("killed", "timeout")}
    for m in mutants:
        if m.id in known:
            results.append(Result(**dict(asdict(known[m.id]), line=m.line)))
        elif m.id in equivalent:
            results.append(Result(m.id, m.file, m.line, m.operator, m.original, m.mutated, "equivalent", 0, 0.0,
                                  equivalent[m.id]))
        else:
            todo.append((m, tests_for(m, coverage, package_rel, args.exclude)))
    print(f"mutate: {len(mutants)} mutants, {len(todo)} to run ({len(results)} listed equivalent or known killed), "
          f"{args.jobs} at a time")
    mutant_start = time.perf_counter()
    order = {m.id: i for i, m in enumerate(mutants)}
    args.out.mkdir(exist_ok=True)

    stale = stale_equivalents(equivalent, files)  # parses every file: once, not after every mutant

    def write_report(done: int) -> str:
        # Rewritten after every mutant, so an interrupted run keeps its verdicts: --survivors resumes it.
        mutant_seconds = time.perf_counter() - mutant_start
        ordered = sorted(results, key=lambda r: order[r.id])
        table = summarise(ordered)
        report = markdown(table, ordered, time.perf_counter() - start, pending=len(todo) - done)
        (args.out / "report.md").write_text(report)
        (args.out / "report.json").write_text(json.dumps(
            {"table": table, "results": [asdict(r) for r in ordered], "pending": len(todo) - done,
             "seconds_per_mutant": mutant_seconds * args.jobs / max(1, done),
             "stale_equivalents": stale}, indent=1))
        return report

    pool = concurrent.futures.ThreadPoolExecutor(max(1, args.jobs))
    try:
        futures = [pool.submit(run_mutant, m, tests, src=src, factor=args.timeout_factor) for m, tests in todo]
        for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
            r = future.result()
            results.append(r)
            print(f"[{i}/{len(todo)}] {r.status:9} {r.seconds:6.1f}s {r.tests:4} tests  {r.id}  "
                  f"{r.original!r} -> {r.mutated!r}", flush=True)
            write_report(i)
    except BaseException:  # Ctrl-C, or SIGTERM turned into SystemExit below
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(_RUNNING):
            _kill(proc)
        raise
    pool.shutdown()
    mutant_seconds = time.perf_counter() - mutant_start
    report = write_report(len(todo))
    print(report.split("## Survivors")[0])
    print(f"mutate: {mutant_seconds:.0f} s for {len(todo)} mutants on {args.jobs} jobs "
          f"({mutant_seconds * args.jobs / max(1, len(todo)):.1f} s per mutant per job); "
          f"survivors in {args.out / 'report.md'}")
    return 0


def stale_equivalents(equivalent: dict, files: list[Path]) -> list[str]:
    """Listed ids of the mutated files that no longer name a mutant (the code they described changed)."""
    names = {f.name for f in files}
    ids = {m.id for f in files for m in mutants_of(f)}
    return sorted(i for i in equivalent if i.split(":")[0] in names and i not in ids)


if __name__ == "__main__":
    sys.exit(main())

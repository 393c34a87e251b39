"""pytest plugin for tools/mutate.py: which lines of the traced package each test executes.

Loaded with ``-p refpg_mutation_trace`` (tools/ on PYTHONPATH); inert unless
REFPG_MUTATION_TRACE_ROOT (the package directory to trace) and
REFPG_MUTATION_TRACE_OUT (a directory for the results) are set. Each process
(the controller and every pytest-xdist worker) writes ``<worker>.json``:
``{nodeid: {"outcome": "passed" | "failed" | "skipped", "seconds": float,
"lines": {path relative to the root: [line, ...]}}}``.

A plain ``sys.settrace`` tracer rather than coverage.py, so that the tool needs
no dependency beyond pytest: the global trace function is called once per
Python call and returns a line tracer only for frames of code under the root,
which keeps the slowdown to about the cost of one callback per call. Lines run
in subprocesses a test starts are not seen.
"""

import json
import os
import sys
import threading
import time

import pytest

_ROOT = os.environ.get("REFPG_MUTATION_TRACE_ROOT")
_OUT = os.environ.get("REFPG_MUTATION_TRACE_OUT")
_traced_file = {}  # co_filename -> path relative to _ROOT, or None
_lines = None  # set of (relative path, line) for the running test
_records = {}
_outcomes = {}


def _relative(filename):
    rel = _traced_file.get(filename, 0)
    if rel == 0:
        path = os.path.realpath(filename)
        rel = os.path.relpath(path, _ROOT) if path.startswith(_ROOT + os.sep) else None
        _traced_file[filename] = rel
    return rel


def _make_local(rel):
    add = _lines.add

    def local(frame, event, arg):
        if event == "line":
            add((rel, frame.f_lineno))
        return local
    return local


def _global(frame, event, arg):
    if _lines is None:
        return None
    rel = _relative(frame.f_code.co_filename)
    if rel is None:
        return None
    return _make_local(rel)


def _enabled():
    return bool(_ROOT and _OUT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _lines
    if not _enabled():
        yield
        return
    _lines = set()
    start = time.perf_counter()
    sys.settrace(_global)
    threading.settrace(_global)
    try:
        yield
    finally:
        sys.settrace(None)
        threading.settrace(None)
        lines = {}
        for rel, line in _lines:
            lines.setdefault(rel, []).append(line)
        _records[item.nodeid] = {
            "outcome": _outcomes.get(item.nodeid, "passed"),
            "seconds": time.perf_counter() - start,
            "lines": {rel: sorted(v) for rel, v in lines.items()},
        }
        _lines = None


def pytest_runtest_logreport(report):
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and _outcomes.get(report.nodeid) != "failed":
        _outcomes[report.nodeid] = "skipped"


def pytest_sessionfinish(session):
    if not _enabled():
        return
    for nodeid, outcome in _outcomes.items():
        if nodeid in _records:
            _records[nodeid]["outcome"] = outcome
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.makedirs(_OUT, exist_ok=True)
    with open(os.path.join(_OUT, f"{worker}.json"), "w") as f:
        json.dump(_records, f)

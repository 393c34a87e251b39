"""Hypothesis profiles for refpg's tests; choose one with HYPOTHESIS_PROFILE.

* ``ci`` (default): derandomized, so every run draws the same examples from a
  seed fixed by each test's source. A property test then never flakes, and a
  failure in CI reproduces locally bit for bit; ``print_blob`` prints the
  ``@reproduce_failure`` line all the same.
* ``thorough``: 1000 fresh random examples per test, for nightly runs and
  before a release.
* ``dev``: 20 examples, for a quick loop while editing.
"""

import os
import pickle

# One OpenMP/BLAS thread per test process, as .ci/run sets: pytest-xdist already runs one worker per
# core. Left to itself torch starts one intra-op thread per core in every worker, whose spinning
# threads then fight over the cores: on 2 cores, two processes running the reinforce_torch check at
# once take 23 s each with torch's default of 2 threads, 3.6 s with 1 thread. Set before any test
# imports torch; a value the caller exported wins.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

pytest_plugins = ["pytester"]  # test_conformance runs the pytest plugin in a scratch project

settings.register_profile(
    "ci",
    derandomize=True,  # fixed seed per test: no flakes, and no example database needed
    max_examples=50,
    deadline=None,  # timings on shared CI runners are noise, not signal
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=1000, deadline=None, derandomize=False)
settings.register_profile("dev", max_examples=20)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def once_per_session(tmp_path_factory):
    """``once_per_session(key, compute) -> (directory, value)``: ``value = compute(directory)`` run once
    per test session, even across pytest-xdist workers.

    The first worker to ask for `key` computes it (into `directory`, where it may write files) under
    a file lock while any other worker asking for the same key waits, then pickles the value; the
    others load that pickle. Each worker also keeps the value it got, as a session fixture would.
    For computations that are deterministic (fixed seeds), such as a study's quick run or a
    conformance report: sharing them changes what is computed only in how often. Without
    ``fcntl`` (Windows) every worker computes its own copy, as before.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no file locks: one copy per worker
        fcntl = None
    root = tmp_path_factory.getbasetemp()
    if fcntl is not None and os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's directory, shared by its workers
    root = root / "once-per-session"
    root.mkdir(exist_ok=True)
    memo = {}

    def get(key, compute):
        if key not in memo:
            directory, done = root / key, root / f"{key}.pickle"
            with open(root / f"{key}.lock", "w") as lock:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                if done.exists():
                    value = pickle.loads(done.read_bytes())
                else:
                    directory.mkdir(exist_ok=True)
                    value = compute(directory)
                    done.write_bytes(pickle.dumps(value))
            memo[key] = (directory, value)
        return memo[key]
    return get


@pytest.fixture(scope="session", autouse=True)
def _shared_example_reports(once_per_session):
    """Lets tests.helpers.example_report share seed-0 reports of bundled examples across test files."""
    from tests import helpers

    helpers.SHARED["once"] = once_per_session
    yield
    helpers.SHARED["once"] = None


@pytest.fixture(scope="session")
def outputs(once_per_session):
    """``outputs(name) -> (out_dir, headline)``: each study run once in quick mode per session."""
    from refpg.studies import run_study

    def get(name):
        return once_per_session(f"study-{name}", lambda out: run_study(name, quick=True, out_dir=out))
    return get

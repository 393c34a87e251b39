"""The golden files hold on every OpenBLAS kernel this CPU can run, at 1 and 2 BLAS threads.

Each case runs in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_NUM_THREADS set (OpenBLAS reads
them once, at load), and checks that the kernel asked for is the one loaded (threadpoolctl), that
``refpg golden check`` and its round trip (inputs rebuilt as ``regenerate`` would) pass, and that
the spread between kernels sits well below every tolerance: at most a quarter of it.

``python tests/test_golden_portability.py`` prints the sweep as a table (kernel x threads, largest
error / tolerance per field), the one golden/README.md reports.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "golden"

# OpenBLAS kernel -> the CPU flags (/proc/cpuinfo names) it executes. These are distinct x86-64
# kernel sets of the DYNAMIC_ARCH builds numpy and scipy ship. A build may load a kernel under
# another name (OpenBLAS 0.3.27 reports Katmai as Prescott; 0.3.30 loads Haswell's kernels for
# Zen): ALIASES lists the names a forced kernel may report.
KERNELS = {
    "Katmai": {"sse", "sse2"},
    "Nehalem": {"sse4_2"},
    "Sandybridge": {"avx"},
    "Haswell": {"avx2", "fma"},
    "SkylakeX": {"avx512f", "avx512bw", "avx512vl"},
}
ALIASES = {"Katmai": {"katmai", "prescott"}, "Nehalem": {"nehalem"}, "Sandybridge": {"sandybridge"},
           "Haswell": {"haswell"}, "SkylakeX": {"skylakex"}}
THREADS = (1, 2)
# The largest share of a tolerance a kernel change may use: the bounds are worst cases, so
# the real spread sits far below them; 4x headroom shows it does.
MAX_USED = 0.25

_SCRIPT = r"""
import json, sys
from threadpoolctl import threadpool_info
from refpg import golden
from refpg.cli import main
d = sys.argv[1]
blas = [(i["architecture"], i["num_threads"], i["filepath"]) for i in threadpool_info()
        if i["internal_api"] == "openblas"]
rows = {f"{f.case}:{f.field}": f.used if f.passed else float("inf")
        for f in golden.check(d, round_trip=True).fields}
cli = main(["golden", "check", "--dir", d])
print("\n@@" + json.dumps({"blas": blas, "used": rows, "cli": cli}))
"""


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def sweep(kernel: str, threads: int) -> dict:
    """Run the golden check and round trip under one kernel and thread count; return its record."""
    env = dict(os.environ, OPENBLAS_CORETYPE=kernel, OPENBLAS_NUM_THREADS=str(threads))
    env.pop("OPENBLAS_L2_SIZE", None)  # tuned for the native kernel, not the forced one
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(GOLDEN)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.rsplit("\n@@", 1)[1])


def _skip_reason(kernel: str):
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"OpenBLAS x86 kernels need an x86-64 CPU, this is {platform.machine()}"
    flags = _cpu_flags()
    if not flags:
        return "no /proc/cpuinfo to tell which kernels this CPU can execute"
    missing = KERNELS[kernel] - flags
    if missing:
        return f"this CPU cannot execute the {kernel} kernel (no {', '.join(sorted(missing))})"
    return None


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_golden_check_and_round_trip_pass_under_every_kernel(kernel, threads):
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("gymnasium")  # the CliffWalking case's inputs are rebuilt from it
    reason = _skip_reason(kernel)
    if reason:
        pytest.skip(reason)
    rec = sweep(kernel, threads)
    assert rec["blas"], "no OpenBLAS loaded: the sweep would test nothing"
    for arch, n, path in rec["blas"]:
        assert arch.lower() in ALIASES[kernel], f"{path} runs {arch}, not the {kernel} asked for"
        assert n == threads, f"{path} runs {n} threads, not {threads}"
    assert rec["cli"] == 0
    worst = max(rec["used"].items(), key=lambda kv: kv[1])
    assert worst[1] <= MAX_USED, f"{worst[0]} uses {worst[1]:.3g} of its tolerance under {kernel} x {threads}"


def test_sweep_really_changes_the_kernel():
    # What makes the sweep mean something: forcing two kernels loads two different kernel sets,
    # as OpenBLAS itself reports them (threadpoolctl), in every OpenBLAS library loaded.
    pytest.importorskip("threadpoolctl")
    if _skip_reason("Haswell"):
        pytest.skip(_skip_reason("Haswell"))
    old, new = (sweep(k, 1)["blas"] for k in ("Nehalem", "Haswell"))
    assert {a.lower() for a, _, _ in old} == {"nehalem"}
    assert {a.lower() for a, _, _ in new} == {"haswell"}


if __name__ == "__main__":
    table = {}
    for k in KERNELS:
        for t in THREADS:
            if _skip_reason(k):
                print(f"{k}: skipped ({_skip_reason(k)})", file=sys.stderr)
                break
            table[f"{k} x {t}"] = sweep(k, t)["used"]
    fields = sorted({key.split(":", 1)[1] for rec in table.values() for key in rec})
    cols = list(table)
    print("| field | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for field in fields:
        vals = [max(v for key, v in table[c].items() if key.split(":", 1)[1] == field) for c in cols]
        print(f"| {field} | " + " | ".join(f"{v:.1e}" for v in vals) + " |")

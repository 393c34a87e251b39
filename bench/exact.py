#!/usr/bin/env python
r"""Timing ratios of refpg's exact quantities against baselines measured in the same run.

    python bench/exact.py            # full: Garnet S in {100, 1000, 3000}, 300x300 gridworld
    python bench/exact.py --quick    # smoke test: S in {100, 300}, 50x50 gridworld, a few seconds
    python bench/exact.py --profile  # also print a cProfile breakdown of each refpg call

Every number is a ratio against a baseline timed in this same process, on the
same matrix, in alternating blocks with the refpg call, so the verdicts do not
depend on the speed of the machine. Nothing here asserts; the script prints PASS/MISS
against each target and always exits 0 (CI can run ``--quick`` as a smoke test).

(a) exact bundle vs one LU
    bundle   = ev = refpg.evaluate(mdp, pi); refpg.policy_gradient(..., evaluation=ev);
               refpg.natural_gradient(..., evaluation=ev)
    baseline = scipy.linalg.lu_factor(M) with default arguments, M = I - gamma P_pi (S x S, dense)
    target   : bundle / baseline <= 1.5
(b) exact policy gradient vs torch autograd
    refpg    = pi = pol.probs(theta); ev = refpg.evaluate(mdp, pi); refpg.policy_gradient(..., evaluation=ev)
    baseline = theta float64 leaf -> softmax -> einsum P_pi -> torch.linalg.solve -> J = rho @ V -> J.backward()
    target   : torch / refpg >= 5 (refpg at least 5x faster); gradients must agree to rtol 1e-9
floor (printed with (a) and (b)): the numerical kernels no LU-based exact gradient can skip
    floor    = P_pi (numpy matmul) -> M = I - gamma P_pi in place -> LAPACK dgetrf -> two dgetrs
               (V and the transposed solve for d) -> Q = r + gamma P V (dgemv); no validation,
               no policy, no Python entry point. floor / lu_factor is the lowest ratio (a) could
               reach; torch / floor is the highest speedup (b) could reach with one LU.
(c) sparse gridworld vs one sparse LU
    refpg    = pi = pol.probs(theta); ev = refpg.evaluate(mdp, pi); refpg.policy_gradient(..., evaluation=ev)
    baseline = scipy.sparse.linalg.splu(M) with default arguments, M = I - gamma P_pi in CSC
    target   : refpg / baseline <= 1.5; peak RSS of a fresh process doing build + evaluate + gradient < 2 GB

Timing method: two untimed warm-up calls of each side (they also size N), then
N timed calls of each side with time.perf_counter, garbage collector disabled,
in 4 alternating blocks (refpg, baseline, baseline, refpg; 2 in --quick). Each
block opens with a 0.15 s sleep (--quick: 0.1 s) and one discarded call, so no
side is timed while the other library's BLAS/OpenMP threads are still spinning
(see time_blocks). N is chosen so a row takes about --budget seconds (clamped
to [--min-repeat, --max-repeat]). Ratios are ratios of MEDIANS; minima are
printed too. Each row also prints the CPU share other processes took while it
ran (flagged "(busy)" above 10%: re-run those on a quiet machine).

Peak memory of (c) is measured in a fresh child process (started before torch
is imported here) from its own /proc/self/status VmHWM (peak RSS of that
process image; ru_maxrss is printed too but on Linux it also counts the parent's
RSS at fork time, because the peak survives exec).
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import scipy
import scipy.linalg as sla
from scipy.linalg import lapack
from scipy.linalg.blas import dgemv
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import refpg

GARNET_ACTIONS = 8
GARNET_BRANCHING = 5
SEED = 0
THETA_SEED = 1
TARGET_BUNDLE = 1.5     # (a) bundle / lu_factor <= 1.5
TARGET_TORCH = 5.0      # (b) torch / refpg >= 5
TARGET_GRID = 1.5       # (c) refpg / splu <= 1.5
TARGET_RSS_MB = 2048.0  # (c) peak RSS < 2 GB
GRAD_RTOL = 1e-9
# Absolute floor of the agreement check, relative to max|g|: entries 1e-6 below the
# largest one carry round-off of order eps * max|g| from the cancellation Q - V.
GRAD_ATOL_REL = 1e-12


# --------------------------------------------------------------------------- environment
def blas_threads() -> dict:
    """Thread counts of the OpenBLAS libraries loaded in this process (numpy's and scipy's).

    numpy and scipy wheels each bundle their own OpenBLAS; both are queried
    through ctypes (no threadpoolctl dependency). Keys: 'numpy', 'scipy'.
    """
    found = {}
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_", "openblas_get_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                owner = "numpy" if "numpy" in path else "scipy" if "scipy" in path else os.path.basename(path)
                found[owner] = int(fn())
                break
    return found


class OtherLoad:
    """CPU time used by OTHER processes while a measurement runs (Linux /proc/stat).

    busy CPU time of the whole machine minus this process's (and its children's)
    own CPU time, as a percentage of wall time x cores. BLAS/OpenMP worker threads
    spin-wait, so even a little competition for 2 cores makes timings erratic
    (stalls of 100 ms were observed); rows measured while other processes used
    more than BUSY_PCT % are flagged "(busy)".
    """

    BUSY_PCT = 10.0

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def percent(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        other = (busy - self.busy0) - (self._own() - self.own0)
        return max(0.0, 100.0 * other / (wall * (os.cpu_count() or 1)))

    def busy(self) -> bool:
        p = self.percent()
        return p is not None and p > self.BUSY_PCT

    def tag(self) -> str:
        p = self.percent()
        if p is None:
            return "   n/a"
        return f"{p:5.1f}%" + (" (busy)" if p > self.BUSY_PCT else "")


def source_version() -> str:
    """The git commit of the refpg source being measured, and whether src/ has local edits."""
    here = os.path.dirname(os.path.abspath(refpg.__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"refpg from {here} (git unavailable)"
    if not head:
        return f"refpg from {here} (not a git checkout)"
    return f"refpg from {here} at commit {head}" + (" + uncommitted edits in src/refpg" if dirty else "")


def numpy_thread_count() -> tuple[int, str]:
    threads = blas_threads()
    if "numpy" in threads:
        return threads["numpy"], "numpy's OpenBLAS (queried via ctypes)"
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), f"${var}"
    return os.cpu_count() or 1, "os.cpu_count() (BLAS not queryable; assumed)"


# --------------------------------------------------------------------------- timing
def choose_repeats(fns, budget: float, nmin: int, nmax: int) -> int:
    """Call each function twice (warm-up), then pick N so N rounds take about `budget` seconds."""
    per_round = 0.0
    for fn in fns:
        fn()  # warm-up (untimed for the result; also pays first-call costs)
        t0 = time.perf_counter()
        fn()
        per_round += time.perf_counter() - t0
    return int(min(nmax, max(nmin, budget / max(per_round, 1e-9))))


def time_blocks(fns, n: int, blocks: int, settle: float) -> list[list[float]]:
    """Time each fn n times, in `blocks` alternating blocks (A-block, B-block, B-block, A-block, ...).

    Each block starts with a `settle`-second sleep and one discarded call, so no
    side is timed while the other one's thread pools are still busy: numpy and
    scipy each bundle their own OpenBLAS, and torch uses MKL + OpenMP; idle
    OpenBLAS workers keep spinning for up to ~2^28 cycles (~0.1 s) after a call
    and steal the cores from another library (measured: a scipy lu_factor right
    after a numpy gemv costs ~4 ms more at S=300 on 2 cores). Timing A right
    after B would charge A for B's spinning threads. Within a block a side only
    competes with its own threads, as it would in a program that uses only it,
    so refpg's own numpy <-> scipy switching IS charged to refpg.
    Alternating blocks spread slow drift (thermal, other load) over both sides.

    The garbage collector is collected once and then disabled for the whole loop
    (as timeit does); a gc.collect() per round would cost ~90 ms once torch is imported.
    """
    out = [[] for _ in fns]
    blocks = max(1, min(blocks, n))
    sizes = [n // blocks + (1 if b < n % blocks else 0) for b in range(blocks)]
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for b, m in enumerate(sizes):
            order = list(range(len(fns)))
            if b % 2:
                order.reverse()
            for k in order:
                time.sleep(settle)  # let the other side's worker threads go to sleep
                fns[k]()  # discarded
                for _ in range(m):
                    t0 = time.perf_counter()
                    fns[k]()
                    out[k].append(time.perf_counter() - t0)
    finally:
        if gc_was:
            gc.enable()
    return out


def fmt_t(sec: float) -> str:
    if sec < 1e-3:
        return f"{sec * 1e6:8.1f} us"
    if sec < 1.0:
        return f"{sec * 1e3:8.2f} ms"
    return f"{sec:8.3f} s "


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# (label, file suffix, function names) of the refpg internals worth watching; indentation
# shows nesting. Python functions match a name exactly; builtins (file '~' in cProfile)
# match a substring of their description.
PROFILE_TARGETS = [
    ("refpg.evaluate", "evaluation.py", ("evaluate",)),
    ("  check_probability_rows (validate pi)", "_validation.py", ("check_probability_rows",)),
    ("  policy_evaluation", "evaluation.py", ("policy_evaluation",)),
    ("    mdp.policy_transitions  [P_pi]", "mdp.py", ("policy_transitions",)),
    ("    mdp.policy_rewards", "mdp.py", ("policy_rewards",)),
    ("    mdp.reachable_states  [support of d]", "mdp.py", ("reachable_states",)),
    ("      ndarray.nonzero  [dense P_pi -> CSR]", "~", ("'nonzero' of 'numpy.ndarray'",)),
    ("      _reachable_from  [block_array + BFS]", "mdp.py", ("_reachable_from",)),
    ("        scipy.sparse.block_array", "_construct.py", ("block_array",)),
    ("        csgraph.breadth_first_order", "~", ("breadth_first_order",)),
    ("    sparse P_pi[rows][:, cols]  [live / terminal]", "_index.py", ("__getitem__",)),
    ("    solve_pair", "evaluation.py", ("solve_pair", "_solve_pair")),
    ("      scipy.linalg.lu_factor", "_decomp_lu.py", ("lu_factor",)),
    ("      scipy.linalg.lu_solve", "_decomp_lu.py", ("lu_solve",)),
    ("      scipy.sparse.linalg.splu", "linsolve.py", ("splu",)),
    ("      SuperLU.solve", "~", ("'solve' of 'SuperLU'",)),
    ("    mdp.action_values  [Q = r + gamma P V]", "mdp.py", ("action_values",)),
    ("refpg.policy_gradient", "gradient.py", ("policy_gradient",)),
    ("refpg.natural_gradient", "fisher.py", ("natural_gradient",)),
    ("  prepare  [validate theta, probs, array_equal]", "evaluation.py", ("prepare",)),
    ("    policy.probs", "policies.py", ("probs",)),
    ("  gradient_from_evaluation", "gradient.py", ("gradient_from_evaluation",)),
]


def profile_call(label: str, fn, rounds: int, top: int = 8) -> None:
    """Print where `fn` spends its time: the refpg internals above, then the top functions by own time.

    cumtime per call of each internal (summed over every place it is called from;
    for functions called from several places the split by caller is shown).
    cProfile adds a per-Python-call overhead, so Python-heavy parts look slower
    than they are; the un-profiled median is printed for comparison.
    """
    fn()
    t = []
    for _ in range(max(3, min(rounds, 50))):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(rounds):
        fn()
    pr.disable()
    st = pstats.Stats(pr)
    stats = st.stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    me = [v for k, v in stats.items() if k[2] == fn.__name__ and k[0].endswith("exact.py")]
    total = me[0][3] / rounds if me else float("nan")
    print(f"\n--- cProfile: {label}: {rounds} calls; un-profiled median {fmt_t(statistics.median(t)).strip()},"
          f" profiled {fmt_t(total).strip()} per call ---")
    print(f"    {'refpg call (nesting by indentation)':<50} {'calls/it':>8} {'cum/it':>11} {'% of it':>8}")

    def short(key):
        return key[2] if key[0] == "~" else f"{os.path.basename(key[0])}:{key[2]}"

    for name, fsuffix, names in PROFILE_TARGETS:
        keys = [k for k in stats if k[0].endswith(fsuffix)
                and (any(n in k[2] for n in names) if fsuffix == "~" else k[2] in names)]
        if not keys:
            continue
        nc = sum(stats[k][1] for k in keys) / rounds
        ct = sum(stats[k][3] for k in keys) / rounds
        print(f"    {name:<50} {nc:>8.1f} {fmt_t(ct):>11} {100 * ct / total:>7.1f}%")
        callers = {}
        for k in keys:
            for ck, cv in stats[k][4].items():
                callers[short(ck)] = callers.get(short(ck), 0.0) + cv[3] / rounds
        if len(callers) > 1:
            parts = ", ".join(f"{c} {fmt_t(v).strip()}" for c, v in sorted(callers.items(), key=lambda x: -x[1]))
            print(f"    {'':<50} {'':>8}   by caller: {parts}")
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    lines = buf.getvalue().splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip().startswith("ncalls")), 0)
    print(f"    top {top} by own time (totals over the {rounds} calls):")
    print("\n".join("    " + l for l in lines[start:] if l.strip()))


# --------------------------------------------------------------------------- problems
def garnet_problem(S: int):
    t0 = time.perf_counter()
    mdp = refpg.envs.garnet(S, GARNET_ACTIONS, GARNET_BRANCHING, seed=SEED)
    build = time.perf_counter() - t0
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.random.default_rng(THETA_SEED).normal(size=pol.theta_shape)
    pi = pol.probs(theta)
    return mdp, pol, theta, pi, build


def dense_M(mdp, pi) -> np.ndarray:
    return np.eye(mdp.n_states) - mdp.gamma * mdp.policy_transitions(pi)


def kernel_floor(mdp, pi):
    """The numerical work of an exact gradient, with nothing else: see 'floor' in the docstring.

    Reads the MDP's arrays directly (dense, no terminal states, as Garnet is) and
    calls the same kernels refpg calls, so floor / lu_factor bounds what any
    amount of Python-overhead trimming in refpg could achieve.
    """
    S, A = mdp.n_states, mdp.n_actions
    P, rows, r, rho, gamma = mdp.P, mdp.P.reshape(S * A, S).T, mdp.r, mdp.rho, mdp.gamma
    r_pi = np.einsum("sa,sa->s", pi, r)

    def floor():
        M = np.matmul(pi[:, None, :], P)[:, 0, :]
        M *= -gamma
        M.flat[:: S + 1] += 1.0
        lu, piv, _ = lapack.dgetrf(M.T, overwrite_a=1)
        V = lapack.dgetrs(lu, piv, r_pi, trans=1)[0]
        lapack.dgetrs(lu, piv, rho, trans=0)
        dgemv(gamma, rows, V, trans=1)

    return floor


# --------------------------------------------------------------------------- (a)
def bench_bundle(sizes, args, results):
    print("\n(a) exact bundle  vs  one scipy.linalg.lu_factor(M), M = I - gamma P_pi (dense S x S)")
    print(f"    Garnet(S, A={GARNET_ACTIONS}, branching={GARNET_BRANCHING}, seed={SEED}), dense P, gamma=0.95;"
          f" theta ~ N(0,1) seed {THETA_SEED}; TabularSoftmax")
    print("    bundle = evaluate + policy_gradient(evaluation=ev) + natural_gradient(evaluation=ev)")
    print("    baseline = lu_factor(M) with default arguments (overwrite_a=False, check_finite=True);"
          " M built outside the timing")
    print("    floor = the kernels alone (P_pi, dgetrf, two dgetrs, Q; see the module docstring):"
          " floor / lu is the best ratio any refpg could reach")
    hdr = (f"    {'S':>5} {'N':>5} {'build':>11} {'bundle med':>12} {'lu med':>12} {'floor med':>12}"
           f" {'bundle min':>12} {'lu min':>12} {'ratio':>7} {'target':>8}  verdict {'floor/lu':>9}  other-CPU")
    print(hdr)
    for S in sizes:
        mdp, pol, theta, pi, build = garnet_problem(S)
        M = dense_M(mdp, pi)

        def bundle():
            ev = refpg.evaluate(mdp, pi)
            refpg.policy_gradient(mdp, pol, theta, evaluation=ev)
            refpg.natural_gradient(mdp, pol, theta, evaluation=ev)

        def lu():
            sla.lu_factor(M)

        floor = kernel_floor(mdp, pi)
        load = OtherLoad()
        n = choose_repeats([bundle, lu, floor], args.budget, args.min_repeat, args.max_repeat)
        tb, tl, tf = time_blocks([bundle, lu, floor], n, args.blocks, args.settle)
        mb, ml, mf = statistics.median(tb), statistics.median(tl), statistics.median(tf)
        ratio = mb / ml
        ok = ratio <= TARGET_BUNDLE
        print(f"    {S:>5} {n:>5} {fmt_t(build):>11} {fmt_t(mb):>12} {fmt_t(ml):>12} {fmt_t(mf):>12}"
              f" {fmt_t(min(tb)):>12} {fmt_t(min(tl)):>12} {ratio:>6.2f}x {'<= 1.5x':>8}  {verdict(ok)}   "
              f" {mf / ml:>8.2f}x  {load.tag()}")
        results.append((f"(a) bundle / lu_factor, Garnet S={S}", f"{ratio:.2f}x", "<= 1.5x", ok, load.busy()))
        results.append((f"(a) floor / lu_factor, Garnet S={S} (info: best reachable)", f"{mf / ml:.2f}x", "-",
                        None))
        if args.profile:
            profile_call(f"(a) bundle, Garnet S={S}", bundle, rounds=max(3, min(n, 200)))


# --------------------------------------------------------------------------- (b)
def bench_torch(sizes, args, results, n_threads):
    print("\n(b) exact policy gradient: refpg  vs  torch autograd (float64)")
    try:
        import torch
    except ImportError as exc:  # torch is an optional extra
        print(f"    SKIPPED: torch not importable ({exc})")
        results.append(("(b) torch / refpg", "skipped", ">= 5x", None))
        return
    torch.set_num_threads(n_threads)
    print(f"    torch {torch.__version__}, torch.set_num_threads({n_threads}) "
          f"(torch.get_num_threads() = {torch.get_num_threads()})")
    print("    refpg = pi = pol.probs(theta); ev = evaluate(mdp, pi); policy_gradient(mdp, pol, theta, evaluation=ev)")
    print("    torch = theta leaf (requires_grad) -> softmax -> P_pi = einsum('sa,sat->st') -> r_pi ->"
          " V = linalg.solve(I - gamma P_pi, r_pi) -> J = rho @ V -> J.backward()")
    print("            (P, r, rho, I as float64 tensors built outside the timing)")
    print(f"    agreement ('agree'): np.allclose(g_refpg, g_torch, rtol={GRAD_RTOL:g},"
          f" atol={GRAD_ATOL_REL:g} * max|g_torch|) over all S*A entries;")
    print("      normwise = max|g_refpg - g_torch| / max|g_torch|; elemwise = max_i |diff_i| / |g_torch_i|;"
          f" strict = #entries with |diff_i| > {GRAD_RTOL:g} |g_torch_i| (atol = 0)")
    print("    ceiling = torch / floor (the kernels alone, as in (a)): the largest speedup any refpg"
          " using one LU could show")
    print(f"    {'S':>5} {'N':>5} {'refpg med':>12} {'torch med':>12} {'floor med':>12} {'refpg min':>12}"
          f" {'torch min':>12} {'speedup':>8} {'target':>7}  verdict {'ceiling':>8}  {'normwise':>9} {'elemwise':>9}"
          f" {'strict':>7}  agree other-CPU")
    for S in sizes:
        mdp, pol, theta, pi, _ = garnet_problem(S)
        gamma = mdp.gamma
        # Writeable float64 copies (mdp arrays are read-only), shared with torch without a second copy.
        P_t = torch.from_numpy(np.array(mdp.P, dtype=np.float64))       # (S, A, S)
        r_t = torch.from_numpy(np.array(mdp.r, dtype=np.float64))       # (S, A)
        rho_t = torch.from_numpy(np.array(mdp.rho, dtype=np.float64))   # (S,)
        I_t = torch.eye(S, dtype=torch.float64)

        def ours():
            p = pol.probs(theta)
            ev = refpg.evaluate(mdp, p)
            return refpg.policy_gradient(mdp, pol, theta, evaluation=ev)

        def autograd():
            th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
            p = torch.softmax(th, dim=1)
            P_pi = torch.einsum("sa,sat->st", p, P_t)
            r_pi = (p * r_t).sum(dim=1)
            V = torch.linalg.solve(I_t - gamma * P_pi, r_pi)
            J = rho_t @ V
            J.backward()
            return th.grad

        g_ref = ours()
        g_tor = autograd().numpy()
        diff = np.abs(g_ref - g_tor)
        scale = np.max(np.abs(g_tor))
        normwise = float(np.max(diff) / scale)
        nz = np.abs(g_tor) > 0
        elemwise = float(np.max(diff[nz] / np.abs(g_tor)[nz]))
        strict_fail = int(np.sum(diff > GRAD_RTOL * np.abs(g_tor)))
        agree = bool(np.allclose(g_ref, g_tor, rtol=GRAD_RTOL, atol=GRAD_ATOL_REL * scale))

        floor = kernel_floor(mdp, pi)
        load = OtherLoad()
        n = choose_repeats([ours, autograd, floor], args.budget, args.min_repeat, args.max_repeat)
        tr, tt, tf = time_blocks([ours, autograd, floor], n, args.blocks, args.settle)
        mr, mt, mf = statistics.median(tr), statistics.median(tt), statistics.median(tf)
        speed = mt / mr
        ok = speed >= TARGET_TORCH
        print(f"    {S:>5} {n:>5} {fmt_t(mr):>12} {fmt_t(mt):>12} {fmt_t(mf):>12} {fmt_t(min(tr)):>12}"
              f" {fmt_t(min(tt)):>12} {speed:>7.2f}x {'>= 5x':>7}  {verdict(ok):<7} {mt / mf:>7.2f}x "
              f" {normwise:>9.1e} {elemwise:>9.1e} {strict_fail:>7d}  {'yes' if agree else 'NO ':<5} {load.tag()}")
        results.append((f"(b) torch / refpg, Garnet S={S}", f"{speed:.2f}x", ">= 5x", ok, load.busy()))
        results.append((f"(b) torch / floor, Garnet S={S} (info: best reachable)", f"{mt / mf:.2f}x", "-", None))
        results.append((f"(b) gradients agree (rtol {GRAD_RTOL:g}), Garnet S={S}", f"{elemwise:.1e}",
                        "allclose", agree))
        if args.profile:
            profile_call(f"(b) refpg evaluate + policy_gradient, Garnet S={S}", ours, rounds=max(3, min(n, 200)))


# --------------------------------------------------------------------------- (c)
def _peak_rss_mb() -> dict:
    """Peak RSS of this process: VmHWM from /proc (Linux) and ru_maxrss, in MB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"ru_maxrss": r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0, "VmHWM": None}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    out["VmHWM"] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def grid_child(H: int, W: int) -> None:
    """Run in a fresh interpreter: build, evaluate, gradient; print peak RSS (MB) as JSON."""
    out = {"after_import": _peak_rss_mb()}
    mdp = refpg.envs.gridworld(H, W, slip=0.1)
    out["after_build"] = _peak_rss_mb()
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.random.default_rng(THETA_SEED).normal(size=pol.theta_shape)
    pi = pol.probs(theta)
    ev = refpg.evaluate(mdp, pi)
    refpg.policy_gradient(mdp, pol, theta, evaluation=ev)
    out["after_exact"] = _peak_rss_mb()
    print(json.dumps(out))


def grid_memory(H: int, W: int) -> dict:
    """Peak RSS of a fresh process running (c) once; {'error': ...} if it failed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_grid-child", str(H), str(W)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["rusage_children"] = r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0
    return out


def _mb(d: dict) -> float:
    return d["VmHWM"] if d["VmHWM"] is not None else d["ru_maxrss"]


def bench_grid(H: int, W: int, args, results, mem: dict | None):
    print(f"\n(c) sparse gridworld({H}, {W}, slip=0.1): exact J + policy gradient  vs  one"
          " scipy.sparse.linalg.splu(M), M = I - gamma P_pi in CSC")
    t0 = time.perf_counter()
    mdp = refpg.envs.gridworld(H, W, slip=0.1)
    build = time.perf_counter() - t0
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    theta = np.random.default_rng(THETA_SEED).normal(size=pol.theta_shape)
    pi = pol.probs(theta)
    S = mdp.n_states
    print(f"    S = {S} states, A = {mdp.n_actions}, gamma = {mdp.gamma}, sparse P = {mdp.is_sparse}, "
          f"nnz(P) = {mdp.P.nnz}; theta ~ N(0,1) seed {THETA_SEED}")
    print(f"    build time of the gridworld (not part of the ratio): {fmt_t(build).strip()}")
    M = (sp.identity(S, format="csc") - mdp.gamma * mdp.policy_transitions(pi)).tocsc()
    print(f"    baseline = splu(M) with default arguments (permc_spec='COLAMD'); M built outside the timing,"
          f" nnz(M) = {M.nnz}")

    def ours():
        p = pol.probs(theta)
        ev = refpg.evaluate(mdp, p)
        return refpg.policy_gradient(mdp, pol, theta, evaluation=ev)

    def lu():
        spla.splu(M)

    load = OtherLoad()
    n = choose_repeats([ours, lu], args.budget, args.min_repeat, args.max_repeat)
    to, tl = time_blocks([ours, lu], n, args.blocks, args.settle)
    mo, ml = statistics.median(to), statistics.median(tl)
    ratio = mo / ml
    ok = ratio <= TARGET_GRID
    print(f"    {'S':>6} {'N':>4} {'refpg med':>12} {'splu med':>12} {'refpg min':>12} {'splu min':>12}"
          f" {'ratio':>7} {'target':>8}  verdict  other-CPU")
    print(f"    {S:>6} {n:>4} {fmt_t(mo):>12} {fmt_t(ml):>12} {fmt_t(min(to)):>12} {fmt_t(min(tl)):>12}"
          f" {ratio:>6.2f}x {'<= 1.5x':>8}  {verdict(ok)}    {load.tag()}")
    results.append((f"(c) refpg / splu, gridworld {H}x{W}", f"{ratio:.2f}x", "<= 1.5x", ok, load.busy()))
    results.append((f"(c) build time, gridworld {H}x{W} (info)", fmt_t(build).strip(), "-", None))
    if mem is None:
        pass
    elif "error" in mem:
        print("    memory child FAILED:\n" + mem["error"])
        results.append((f"(c) peak RSS, gridworld {H}x{W}", "failed", "< 2048 MB", False))
    else:
        peak = _mb(mem["after_exact"])
        okm = peak < TARGET_RSS_MB
        src_name = "VmHWM" if mem["after_exact"]["VmHWM"] is not None else "ru_maxrss"
        print(f"    peak RSS of a fresh child process running build + evaluate + policy_gradient once"
              f" ({src_name}; includes the interpreter and the numpy/scipy/refpg imports):")
        print(f"      after imports {_mb(mem['after_import']):.0f} MB, after build {_mb(mem['after_build']):.0f} MB,"
              f" after evaluate + policy_gradient {peak:.0f} MB   -> target < {TARGET_RSS_MB:.0f} MB: {verdict(okm)}")
        print(f"      (cross-checks: child's ru_maxrss {mem['after_exact']['ru_maxrss']:.0f} MB, parent's"
              f" RUSAGE_CHILDREN ru_maxrss {mem['rusage_children']:.0f} MB; both also count this parent's"
              " RSS at fork time, since ru_maxrss survives exec)")
        results.append((f"(c) peak RSS, gridworld {H}x{W}", f"{peak:.0f} MB", "< 2048 MB", okm))
    if args.profile:
        profile_call(f"(c) refpg evaluate + policy_gradient, gridworld {H}x{W}", ours, rounds=max(3, min(n, 20)))
        profile_call(f"(c) baseline splu, gridworld {H}x{W}", lu, rounds=max(3, min(n, 20)), top=6)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="S in {100, 300} and a 50x50 gridworld (smoke test)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile breakdown of every refpg call")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per row (default 3, quick 0.25)")
    ap.add_argument("--min-repeat", type=int, default=None, help="minimum N (default 7, quick 5)")
    ap.add_argument("--max-repeat", type=int, default=300, help="maximum N (default 300)")
    ap.add_argument("--blocks", type=int, default=None, help="alternating timing blocks per side (default 4, quick 2)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds of sleep before each block (default 0.15, quick 0.1)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child process of (c)")
    ap.add_argument("--_grid-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._grid_child:
        grid_child(*args._grid_child)
        return 0

    if args.budget is None:
        args.budget = 0.25 if args.quick else 3.0
    if args.blocks is None:
        args.blocks = 2 if args.quick else 4
    if args.settle is None:
        args.settle = 0.1 if args.quick else 0.15
    if args.min_repeat is None:
        args.min_repeat = 5 if args.quick else 7
    sizes = [100, 300] if args.quick else [100, 1000, 3000]
    grid = (50, 50) if args.quick else (300, 300)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    t_start = time.perf_counter()
    n_threads, how = numpy_thread_count()
    print(f"refpg {refpg.__version__} exact benchmark ({'quick' if args.quick else 'full'} mode)")
    print(source_version())
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"os.cpu_count() = {os.cpu_count()}")
    print(f"BLAS threads: {blas_threads() or 'unknown'}; numpy uses {n_threads} thread(s) [{how}]")
    print(f"method: 2 warm-up calls each, then N timed calls each (N for ~{args.budget:g} s per row, "
          f"clamped to [{args.min_repeat}, {args.max_repeat}]) in {args.blocks} alternating blocks,"
          f" each opened by a {args.settle:g} s sleep + a discarded call;")
    print("        time.perf_counter, gc off while timing; ratio = median / median (minima shown too)")

    print("other-CPU = CPU time used by OTHER processes during a row, % of wall x cores (/proc/stat minus"
          f" our own); rows above {OtherLoad.BUSY_PCT:g}% are flagged (busy) and their timings are unreliable")
    whole = OtherLoad()

    results = []
    # The memory child runs first, while this process is small (no torch, no big MDP yet).
    mem = grid_memory(*grid) if "c" not in skip and not args.no_memory else None
    # (b) last: once torch is imported its OpenMP pool lives in this process, and
    # (a)/(c) should not share the 2 cores with it.
    if "a" not in skip:
        bench_bundle(sizes, args, results)
    if "c" not in skip:
        bench_grid(*grid, args, results, mem)
    if "b" not in skip:
        bench_torch(sizes, args, results, n_threads)
    order = {"(a)": 0, "(b)": 1, "(c)": 2}
    results.sort(key=lambda r: order.get(r[0][:3], 3))

    print("\n" + "=" * 78)
    print("SUMMARY" + (" (quick mode: smoke test sizes, not the real targets' sizes)" if args.quick else ""))
    w = max(len(r[0]) for r in results) if results else 10
    for name, value, target, ok, *busy in results:
        v = "info" if ok is None else verdict(ok)
        flag = "  (busy: other processes competed, re-run)" if busy and busy[0] else ""
        print(f"  {name:<{w}}  {value:>10}  target {target:<9}  {v}{flag}")
    print(f"  other processes used {whole.tag()} of the machine's CPU during this run")
    misses = sum(1 for r in results if r[3] is False)
    print(f"  {misses} MISS, {sum(1 for r in results if r[3] is True)} PASS; "
          f"total wall time {time.perf_counter() - t_start:.1f} s")
    print("=" * 78)
    return 0


if __name__ == "__main__":
    sys.exit(main())

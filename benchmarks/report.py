"""One result line per side-by-side case, readable by people and by run_all.py.

Every benchmark prints its own details; for each case it also calls `result`, which
prints a `RESULT {...}` JSON line that benchmarks/run_all.py gathers into RESULTS.md.
"""
import json
import subprocess
import sys


def result(case: str, ours: float, peer_name: str, peer: float | None, unit: str,
           higher_is_better: bool = True) -> None:
    """`ratio` is always "how many times better we are" (>1 means ahead of the peer)."""
    if peer is None or peer == 0 or ours == 0:
        ratio = None
    else:
        ratio = ours / peer if higher_is_better else peer / ours
    row = {"case": case, "ours": ours, "peer_name": peer_name, "peer": peer, "unit": unit,
           "higher_is_better": higher_is_better, "ratio": ratio}
    print("RESULT " + json.dumps(row, sort_keys=True), flush=True)


def measure(cmd) -> tuple:
    """Run cmd in a child; return (seconds, peak RSS in MiB of that child, exit code)."""
    wrapper = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
               "rc=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL).returncode;"
               "print(json.dumps([time.perf_counter()-t,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024,rc]))")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True).stdout
    return tuple(json.loads(out))

"""One result line per side-by-side case, readable by people and by run_all.py.

Every benchmark prints its own details; for each case it also calls `result`, which
prints a `RESULT {...}` JSON line that benchmarks/run_all.py gathers into RESULTS.md.
"""
import json


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

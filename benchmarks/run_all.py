"""Run every side-by-side benchmark and write benchmarks/RESULTS.md.

Each bench_*.py runs in its own process (so one's memory does not count against
another's); the `RESULT` lines they print become one table: our figure, the peer's,
the ratio (>1 means convkit is ahead), and the machine. A peer that is not installed
is reported as missing, never skipped silently.
Without --only it also copies RESULTS.md into the README's performance section.
Run: python benchmarks/run_all.py [--only NAME ...]
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ["tokenizers", "tiktoken", "sentencepiece", "transformers", "llama_cpp"]
# still runnable by hand, but not run here: another benchmark measures the same cases
REDUNDANT = {"bench_kquants.py": "covered by bench_quant.py"}
README_START, README_END = "<!-- RESULTS.md -->", "<!-- /RESULTS.md -->"


def machine() -> str:
    """The CPU with the vector features our paths and the peers' can use (from /proc/cpuinfo)."""
    from convkit.sysinfo import cpu_info

    cpu = cpu_info()
    features = " ".join(name for name, has in (cpu["features"] or {}).items() if has) or "features unknown"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu['model'] or 'unknown CPU'} ({features}), {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
            f"Python {platform.python_version()}")


def run(script: Path, timeout: int) -> tuple[list[dict], str, float]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=timeout, cwd=HERE.parent)
        output, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        output, status = (exc.stdout or b"").decode(errors="replace"), f"timed out after {timeout} s"
    rows = [json.loads(line[7:]) for line in output.splitlines() if line.startswith("RESULT ")]
    return rows, status, time.perf_counter() - t0


def fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only bench_<NAME>.py")
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]

    missing = [p for p in PEERS if importlib.util.find_spec(p) is None]
    lines = ["# Benchmark results", "", f"Machine: {machine()}.", ""]
    lines += [f"Peers missing (their cases show no peer figure): {', '.join(missing)}.", ""] if missing else []
    lines += ["Ratio: how many times better convkit is (above 1: ahead of the peer).", "",
              "| benchmark | case | convkit | peer | peer figure | unit | ratio |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    statuses = [f"- `{name}`: skipped, {why}" for name, why in REDUNDANT.items()
                if any(s.name == name for s in scripts)]
    scripts = [s for s in scripts if s.name not in REDUNDANT]
    for script in scripts:
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        rows, status, seconds = run(script, args.timeout)
        statuses.append(f"- `{script.name}`: {status}, {seconds:.0f} s, {len(rows)} cases")
        for r in rows:
            lines.append(f"| {script.stem.removeprefix('bench_')} | {r['case']} | {fmt(r['ours'])} | "
                         f"{r['peer_name']} | {fmt(r['peer'])} | {r['unit']} | {fmt(r['ratio'])} |")
    lines += ["", "Runs:", *statuses, ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    if not args.only:
        update_readme("\n".join(lines[2:]).strip())


def update_readme(results: str) -> None:
    """The README's performance section is RESULTS.md (machine line, table, runs)."""
    readme = HERE.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        print(f"README.md has no {README_START} ... {README_END} section; not updated", file=sys.stderr)
        return
    readme.write_text(text[:start + len(README_START)] + "\n" + results + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    main()

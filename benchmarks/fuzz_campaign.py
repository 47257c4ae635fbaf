"""A longer fuzz campaign than CI's: many seeds of every mutation class, with a summary.

    python benchmarks/fuzz_campaign.py --runs 2000               # seeds spread over all classes
    python benchmarks/fuzz_campaign.py --class gguf_offsets --seed 17   # replay one run
    python benchmarks/fuzz_campaign.py --runs 500 --start 10000 --no-perplexity --exclude config_ --json

Each run applies one seeded mutation (tests/fuzzing.py) to the sample model, a GGUF made
from it, its tokenizer or a vocab.txt, and runs the commands that read that input in this
process, with the checks of tests/test_fuzz.py. Failures print one line each (class, seed,
command, what went wrong) so that a case can be replayed, minimized and added to
tests/test_bad_inputs_corpus.py. Exit status: 1 if any run failed.
"""
import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzzing  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="mutations in all (spread over the classes)")
    parser.add_argument("--start", type=int, default=1000, help="first seed (CI uses 0..9)")
    parser.add_argument("--class", dest="classes", action="append", choices=sorted(fuzzing.CLASSES),
                        help="only this class (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PREFIX",
                        help="leave out classes whose name starts with PREFIX (repeatable), e.g. config_")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the slowest command")
    parser.add_argument("--json", action="store_true", help="one JSON summary on stdout")
    args = parser.parse_args(argv)

    classes = [c for c in args.classes or sorted(fuzzing.CLASSES) if not c.startswith(tuple(args.exclude))]
    if args.seed is not None:
        plan = [(cls, args.seed) for cls in classes]
    else:
        plan = [(classes[i % len(classes)], args.start + i // len(classes)) for i in range(args.runs)]
    commands = ["inspect", "quantize", "encode"] if args.no_perplexity else None
    counts, exits, failures = Counter(), Counter(), []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convkit-fuzz-") as tmp:
        inputs = fuzzing.Inputs(Path(tmp))
        for n, (cls, seed) in enumerate(plan):
            rundir = Path(tmp) / f"run{n}"
            for outcome in fuzzing.run_mutation(inputs, cls, seed, rundir, commands):
                counts[cls] += 1
                exits[str(outcome.code) if outcome.code in (0, 2) else "other"] += 1
                if outcome.problems:
                    line = (f"FAIL {cls} --seed {seed} {outcome.command} ({outcome.note}): exit {outcome.code!r}: "
                            f"{'; '.join(outcome.problems)}")
                    failures.append(line)
                    if not args.json:
                        print(line[:600], flush=True)
            _remove(rundir)
    seconds = time.perf_counter() - started
    summary = {"mutations": len(plan), "command_runs": sum(counts.values()), "exit_codes": dict(exits),
               "failures": len(failures), "seconds": round(seconds, 1), "per_class": dict(sorted(counts.items()))}
    if args.json:
        print(json.dumps({**summary, "failed": failures}, indent=1))
    else:
        print(f"{summary['mutations']} mutations, {summary['command_runs']} command runs in {seconds:.0f} s: "
              f"exit codes {dict(exits)}, {len(failures)} failures")
    return 1 if failures else 0


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Fuzzing every input kind: bad input never crashes and never yields a wrong file.

Each class of mutation (tests/fuzzing.py) runs on a few seeds through the commands that
read that input, in this process (the sample model is small, a run takes milliseconds
to a second). What each run must satisfy is in fuzzing.run_mutation; a failure lists the
class, seed, command and what went wrong, enough to replay it with
`python benchmarks/fuzz_campaign.py --class CLASS --seed SEED`.
"""
import subprocess
import sys

import pytest

import fuzzing

# seeds per class in CI: a few hundred runs in all; benchmarks/fuzz_campaign.py runs more
SEEDS = 10
PERPLEXITY_SEEDS = 1  # the slowest command: once per class


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fuzzing.Inputs(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("cls", fuzzing.CLASSES)
def test_mutations(inputs, tmp_path, cls):
    failures = []
    for seed in range(SEEDS):
        commands = None if seed < PERPLEXITY_SEEDS else ["inspect", "quantize", "encode"]
        for outcome in fuzzing.run_mutation(inputs, cls, seed, tmp_path / f"run{seed}", commands,
                                            max_seconds=fuzzing.MAX_RUN_SECONDS):
            if outcome.problems:
                failures.append(f"{cls} seed {seed} {outcome.command} ({outcome.note}): exit {outcome.code!r}: "
                                f"{'; '.join(outcome.problems)} | {outcome.stderr[:200]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("cls,seed", [("gguf_offsets", 0), ("st_header_length", 0), ("tokenizer_values", 1),
                                      ("gguf_not_utf8", 0), ("vocab_txt", 0)])
def test_real_exit_code(inputs, tmp_path, cls, seed):
    """The same runs as a user sees them: a separate process, its exit status and stderr."""
    import random

    mutation = fuzzing.CLASSES[cls](random.Random(f"{cls}:{seed}"), inputs)
    paths = fuzzing.materialize(inputs, mutation, tmp_path / "run")
    out = tmp_path / "out" / "out.gguf"
    out.parent.mkdir()
    command = "encode" if cls == "vocab_txt" else "quantize"
    args = fuzzing.command_args(command, mutation, paths, out, inputs.text)
    proc = subprocess.run([sys.executable, "-m", "convkit", *args], capture_output=True, text=True,
                          cwd=fuzzing.ROOT, timeout=300)
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.startswith("convkit: error:") and proc.stderr.count("\n") == 1, proc.stderr
        assert not list(out.parent.iterdir())

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

# Classes that still fail here because config.json is not yet read through a typed schema
# with per-field ranges (the converter and runtime read it with plain dict lookups).
CONFIG_READER_IN_PROGRESS = {
    "config_layers": "num_hidden_layers of the wrong type raises TypeError/ValueError in arch/base.py; "
                     "1e300 or 2**63 loops building the tensor name map",
    "config_heads": "num_key_value_heads=NaN raises ValueError in arch/llama.py",
    "config_sizes": "intermediate_size, vocab_size or max_position_embeddings of the wrong type raise in "
                    "arch/llama.py",
    "config_floats": "rope_theta={} raises TypeError; rms_norm_eps or rope_theta out of range (negative, 0, NaN, "
                     "'4', true) give a GGUF that convkit itself rejects",
    "config_rope_scaling": "rope_scaling {'type': 'linear'} without factor raises KeyError in arch/llama.py",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fuzzing.Inputs(tmp_path_factory.mktemp("fuzz"))


def _params():
    for cls in fuzzing.CLASSES:
        marks = []
        if cls in CONFIG_READER_IN_PROGRESS:
            marks.append(pytest.mark.xfail(strict=True, reason="config reader in progress: "
                                                               + CONFIG_READER_IN_PROGRESS[cls]))
        yield pytest.param(cls, marks=marks, id=cls)


@pytest.mark.parametrize("cls", list(_params()))
def test_mutations(inputs, tmp_path, cls):
    pending = cls in CONFIG_READER_IN_PROGRESS  # expected to fail: stop at the first failure, cap runaways
    failures = []
    for seed in range(SEEDS):
        commands = None if seed < PERPLEXITY_SEEDS else ["inspect", "quantize", "encode"]
        for outcome in fuzzing.run_mutation(inputs, cls, seed, tmp_path / f"run{seed}", commands,
                                            max_seconds=5 if pending else fuzzing.MAX_RUN_SECONDS):
            if outcome.problems:
                failures.append(f"{cls} seed {seed} {outcome.command} ({outcome.note}): exit {outcome.code!r}: "
                                f"{'; '.join(outcome.problems)} | {outcome.stderr[:200]}")
        if failures and pending:
            break
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

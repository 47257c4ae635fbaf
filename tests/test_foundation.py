"""The CLI's error convention and the atomic-output helper."""
import subprocess
import sys

import pytest

from convkit.atomic import atomic_open
from convkit.errors import ConvkitError


def run_cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "convkit", *args], capture_output=True,
                          text=True, input=input)


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    with atomic_open(target) as f:
        f.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_open_refuses_to_overwrite_an_input(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("keep")
    with pytest.raises(ConvkitError, match="one of the inputs"):
        with atomic_open(src, inputs=[src]) as f:
            f.write("lost")
    assert src.read_text() == "keep"


def test_cli_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "tokenize" in result.stdout


def test_cli_unknown_command_exits_2():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_atomic_output_gets_the_usual_file_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "out.txt") as f:
            f.write("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


def test_readme_performance_section_is_benchmarks_results():
    """benchmarks/run_all.py writes RESULTS.md and copies it into the README; the two agree."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    results = (root / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").split("\n", 2)[2].strip()
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- RESULTS.md -->", 1)[1].split("<!-- /RESULTS.md -->", 1)[0].strip()
    assert "| benchmark | case | convkit | peer |" in section
    assert section == results


def test_readme_test_command_is_what_ci_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ci = (root / ".ci" / "run").read_text()
    readme = (root / "README.md").read_text()
    command = ci.strip().splitlines()[-1]
    assert command == "python -m pytest -q"
    assert f"&& {command}\n```" in readme

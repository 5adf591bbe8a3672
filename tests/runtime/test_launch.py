"""`netc train --nproc N`: ranks hand their last words to the launcher, which says each
once and exits 2 for a user's mistake, 1 for anything else."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from netc.runtime import launch


def test_a_user_error_in_every_rank_is_said_once_with_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "netc",
            "train",
            str(tmp_path / "nowhere.yaml"),
            "--data",
            "digits",
            "--out",
            str(tmp_path / "run"),
            "--nproc",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("nowhere.yaml") == 1, result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert not (tmp_path / "run").exists()


def _failed(*exitcodes):
    failures = {
        rank: SimpleNamespace(exitcode=code, local_rank=rank) for rank, code in enumerate(exitcodes)
    }
    return SimpleNamespace(failures=failures)


def _said(folder, rank, code, text):
    (folder / f"rank{rank}.json").write_text(json.dumps({"code": code, "text": text}))


def test_the_launcher_says_each_message_once_and_picks_the_exit_status(tmp_path, capsys):
    for rank in (1, 0, 10):
        _said(tmp_path, rank, 2, "error: bad spec")
    assert launch._report(_failed(2, 2), tmp_path) == 2
    assert capsys.readouterr().err == "error: bad spec\n"
    _said(tmp_path, 1, 1, "internal error: boom")
    assert launch._report(_failed(2, 1), tmp_path) == 1
    assert capsys.readouterr().err == "error: bad spec\ninternal error: boom\n"


def test_a_rank_that_died_silently_is_named(tmp_path, capsys):
    assert launch._report(_failed(-9), tmp_path) == 1
    assert "training process 0 ended with signal 9" in capsys.readouterr().err

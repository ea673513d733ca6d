"""Run folders held by one process at a time: the lock, what training does
when it meets a held folder, and the lock ending with its process (the
`holder` fixture, another process holding a folder: conftest.py)."""

from __future__ import annotations

import signal
import sys

import pytest

from semiseg_helpers.cli import main as cli
from semiseg_helpers.runs import RUN_IN_USE_EXIT, RunDir, RunInUse

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked")


def test_a_held_run_folder_refuses_a_second_holder_until_its_process_ends(holder, tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.in_use                      # no folder yet: nobody holds it
    proc = holder(run.path)
    assert run.in_use
    with pytest.raises(RunInUse, match="another process is training this run") as exc:
        with run.lock(wait_s=0.2):
            pass
    assert str(run.path) in str(exc.value)

    proc.send_signal(signal.SIGKILL)           # killed, not closed cleanly: the lock goes too
    proc.wait()
    assert not run.in_use
    with run.lock(wait_s=0):
        assert not any(run.path.iterdir())     # a lock on the folder itself: no lock file


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        assert run.in_use                     # a look from another open of the folder
        with pytest.raises(RunInUse):
            with RunDir(run.path).lock(wait_s=0):
                pass
    assert not run.in_use


def test_training_into_a_held_folder_stops_before_writing_anything(
        holder, synthetic_prepared, tmp_path, capsys):
    out = tmp_path / "run"
    holder(out)
    rc = cli(["train", "--data", str(synthetic_prepared), "--out", str(out), "--quiet",
              "--label-fraction", "0.2", "--profile", "smoke", "steps=2"])
    assert rc == RUN_IN_USE_EXIT
    assert "another process is training this run" in capsys.readouterr().err
    assert list(out.iterdir()) == []           # no config, log or checkpoint beside the other's

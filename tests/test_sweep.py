"""Sweeps: grid points, run folder names, skip/retry/error bookkeeping with a fake
job, thread and GPU assignment, and two tiny real runs side by side."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path

import pytest

from semiseg_helpers.cli import main
from semiseg_helpers.config import parse_overrides
from semiseg_helpers.runs import RUN_IN_USE_EXIT
from semiseg_helpers.sweep import (
    collect,
    cpu_cores,
    expand_grid,
    plan,
    run_dir_of,
    run_name,
    sweep,
    train_job,
    value_text,
)

SAFE_NAME = re.compile(r"[A-Za-z0-9._~%=,-]+")

# --------------------------------------------------------------------------- #
# Grids and names


def test_expand_grid_is_the_product_then_the_extra_points():
    points = expand_grid({"method": ["a", "b"], "seed": [0, 1]},
                         extra=[{"method": "c", "label_fraction": 1.0},
                                {"seed": 1, "method": "b"}])  # already in the product
    assert points == [{"method": "a", "seed": 0}, {"method": "a", "seed": 1},
                      {"method": "b", "seed": 0}, {"method": "b", "seed": 1},
                      {"method": "c", "label_fraction": 1.0}]


@pytest.mark.parametrize("bad", [0, "fpn", [], {"a": 1}])
def test_expand_grid_names_the_bad_axis(bad):
    with pytest.raises(ValueError, match=r"grid\['seed'\]"):
        expand_grid({"method": ["fpn"], "seed": bad})


def test_run_name_is_readable_and_independent_of_key_order():
    point = {"semi.num_anchors": 64, "seed": 0, "label_fraction": 0.05, "method": "semisegdefect"}
    name = "method=semisegdefect,label_fraction=0.05,seed=0,semi.num_anchors=64"
    assert run_name(point) == name
    assert run_name(dict(reversed(list(point.items())))) == name
    assert run_dir_of("runs", point) == Path("runs") / name


def test_run_names_are_unique_and_filesystem_safe():
    points = expand_grid({"label_fraction": [0.1, 0.10000001, 1.0, 1], "x": ["1", 1, "a/b c", ""],
                          "optim.lr": [1e-5, 1e-4], "flag": [True, None, [1, 2]]})
    names = [run_name(p) for p in points]
    assert len(set(names)) == len(points) == 4 * 4 * 2 * 3
    assert all(SAFE_NAME.fullmatch(n) for n in names)
    assert run_name({"x": "a/b c"}) == "x=a%2Fb%20c"
    assert run_name({"optim.lr": 1e-5, "model.aspp_rates": [1, 2]}) == \
        "model.aspp_rates=%5B1%2C%202%5D,optim.lr=1.0e-05"


def test_long_names_keep_a_readable_start_and_stay_distinct():
    a = {f"semi.key_{i}": 0.25 for i in range(20)}
    b = {**a, "semi.key_19": 0.5}
    assert len(run_name(a)) == 200 and run_name(a).startswith("semi.key_0=0.25,")
    assert run_name(a) != run_name(b)


@pytest.mark.parametrize("value", [0.05, 1e-05, 1.0, 2.5e20, 3, -1, True, False, None, "fpn",
                                   "1", "true", "null", "a: b", "", [6, 12, 18], [0.5, "x"],
                                   ["a,b", "]"],
                                   {"semi.num_anchors": 64, "steps": 2}])
def test_value_text_reads_back_as_the_same_value(value):
    assert parse_overrides([f"k={value_text(value)}"])["k"] == value


def test_train_job_command(tmp_path):
    point = {"method": "fpn", "label_fraction": 0.05, "seed": 1, "semi.num_anchors": 64}
    argv = train_job(tmp_path / "data", "smoke", {"steps": 2, "seed": 9})(point, tmp_path / "r")
    assert argv[:3] == [sys.executable, "-m", "semiseg_helpers.cli"]
    args = argv[3:]
    assert args[:6] == ["train", "--data", str((tmp_path / "data").resolve()), "--out",
                        str(tmp_path / "r"), "--quiet"]
    assert args[6:] == ["--method", "fpn", "--label-fraction", "0.05", "--seed", "1",
                        "--profile", "smoke", "steps=2", "semi.num_anchors=64"]


def test_threads_split_the_cores_on_cpu_only(tmp_path):
    points = expand_grid({"method": ["fpn", "deeplabv3plus"]})
    job = train_job(tmp_path / "data", "smoke")
    threads = max(1, cpu_cores() // 2)
    cpu, _ = plan(points, tmp_path, job, jobs=2, gpus=[])
    assert [j.command[-1] for j in cpu] == [f"threads={threads}"] * 2
    assert cpu[0].env == {"OMP_NUM_THREADS": str(threads)}
    gpu, _ = plan(points, tmp_path, job, jobs=2, gpus=["0"])
    assert not any("threads=" in a for j in gpu for a in j.command)
    pinned, _ = plan(expand_grid({"method": ["fpn"], "threads": [1]}), tmp_path, job, jobs=2,
                     gpus=[])
    assert pinned[0].command[-1] == "threads=1" and pinned[0].env == {"OMP_NUM_THREADS": "1"}


def test_plan_checks_run_folders_against_the_config_asked(tmp_path):
    from semiseg_helpers.config import make_config
    from semiseg_helpers.methods import resolve_method_config

    points = expand_grid({"method": ["fpn", "semisegdefect"], "label_fraction": [0.5],
                          "seed": [0]})
    job = train_job(tmp_path / "data", "smoke", {"steps": 2})
    assert job.config(points[0]) == resolve_method_config(make_config(
        "smoke", {"steps": 2}, method="fpn", label_fraction=0.5, seed=0))
    finished, partial = (run_dir_of(tmp_path, p) for p in points)
    for run_dir, point in ((finished, points[0]), (partial, points[1])):
        run_dir.mkdir()
        (run_dir / "config.json").write_text(job.config(point).to_json())
    (finished / "summary.json").write_text("{}")
    todo, skipped = plan(points, tmp_path, job, jobs=2, gpus=[])   # threads may differ
    assert skipped == [finished.resolve()] and [j.run_dir for j in todo] == [partial.resolve()]

    # the same folders asked with another budget: stop before anything runs, naming them
    other = train_job(tmp_path / "data", "smoke", {"steps": 3})
    with pytest.raises(ValueError, match="2 point folder") as info:
        plan(points, tmp_path, other, gpus=[])
    message = str(info.value)
    assert f"{finished.resolve()}: holds a finished run" in message
    assert f"{partial.resolve()}: holds an unfinished run" in message
    assert message.count("steps: 2 there, 3 asked") == 2


# --------------------------------------------------------------------------- #
# Running, with a fake job: writes a summary, or fails while a marker file exists

FAKE = r"""
import json, os, sys
point, run_dir, marker = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
print("gpu", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
with open(os.path.join(run_dir, "ran.txt"), "a") as f:
    f.write("ran\n")
if point["method"] == "bad" and os.path.exists(marker):
    print("boom: bad point", flush=True)
    sys.exit(3)
if point["method"] != "silent":
    summary = {"method": point["method"], "label_fraction": point["label_fraction"],
               "seed": point["seed"], "val": None,
               "test": {"miou": 0.5, "iou": {"crack": 0.25, "spalling": 0.75}}}
    open(os.path.join(run_dir, "summary.json"), "w").write(json.dumps(summary))
"""


def fake_job(marker: Path):
    return lambda point, run_dir: [sys.executable, "-c", FAKE, json.dumps(point), str(run_dir),
                                   str(marker)]


def test_skips_finished_retries_failed_and_writes_error_txt(tmp_path):
    root, marker = tmp_path / "runs", tmp_path / "fail-now"
    marker.touch()
    points = expand_grid({"method": ["good", "bad"], "label_fraction": [0.5], "seed": [0]},
                         extra=[{"method": "silent", "label_fraction": 0.5, "seed": 0}])
    good, bad, silent = (run_dir_of(root, p).resolve() for p in points)

    first = sweep(points, root, fake_job(marker), gpus=[], progress=False)
    assert (first.done, first.skipped, sorted(first.failed)) == ([good], [], sorted([bad, silent]))
    error = (bad / "error.txt").read_text()
    assert "return code 3" in error and "boom: bad point" in error and "ran.txt" in error
    assert "exited 0 but left no summary.json" in (silent / "error.txt").read_text()
    assert "boom: bad point" in (bad / "train.log").read_text()
    assert json.loads((bad / "point.json").read_text()) == points[1]

    marker.unlink()
    second = sweep(points, root, fake_job(marker), gpus=[], progress=False)
    assert (second.done, second.skipped, second.failed) == ([bad], [good], [silent])
    assert not (bad / "error.txt").exists()
    assert (good / "ran.txt").read_text() == "ran\n"          # finished: not run again
    assert (bad / "ran.txt").read_text() == "ran\nran\n"       # failed: retried
    log = (bad / "train.log").read_text()
    assert log.count("started") == 2 and "exited 3" in log and "exited 0" in log

    table = collect(root)
    assert sorted(table["method"]) == ["bad", "good"]
    assert list(table["test_miou"]) == [0.5, 0.5]
    assert list(table["test_iou_spalling"]) == [0.75, 0.75]
    assert list(collect(root, points[:1])["method"]) == ["good"]


def test_a_command_that_cannot_start_is_a_failed_point(tmp_path):
    points = expand_grid({"method": ["a"]})
    report = sweep(points, tmp_path, lambda p, d: [str(tmp_path / "no-such-program")],
                   gpus=[], progress=False)
    error = (report.failed[0] / "error.txt").read_text()
    assert "return code 127" in error and "cannot start the command" in error


def test_several_gpus_pin_one_job_each(tmp_path):
    points = expand_grid({"method": ["a", "b"], "label_fraction": [0.5], "seed": [0]})
    report = sweep(points, tmp_path, fake_job(tmp_path / "none"), jobs=2, gpus=["3", "5"],
                   progress=False)
    assert len(report.done) == 2
    seen = sorted(re.search(r"^gpu (\S+)$", (d / "train.log").read_text(), re.M).group(1)
                  for d in report.done)
    assert seen == ["3", "5"]


def test_collect_adds_the_grid_parameters_it_lacks(tmp_path):
    points = expand_grid({"method": ["good"], "label_fraction": [0.5], "seed": [0],
                          "semi.num_anchors": [64, 256]})
    sweep(points, tmp_path, fake_job(tmp_path / "none"), jobs=2, gpus=[], progress=False)
    table = collect(tmp_path).sort_values("semi.num_anchors")
    assert list(table["semi.num_anchors"]) == [64, 256]
    assert list(table["method"]) == ["good", "good"]


# --------------------------------------------------------------------------- #
# Real `semiseg train` subprocesses on a tiny dataset

TINY = ["steps=2", "eval_every=2", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from semiseg_helpers.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("sweep") / "data"
    return prepare_dataset("synthetic", out, label_fractions=[0.5], progress=False,
                           synthetic_options={"n_labeled": 24, "size": 64})


def _log_times(log: str) -> tuple[datetime, datetime]:
    stamps = re.findall(r"^=== (\S+ \S+) (?:started|exited)", log, re.M)
    start, end = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return start, end


def test_unknown_method_fails_its_point_with_the_cli_error(tiny_data, tmp_path):
    points = [{"method": "nosuchmethod", "label_fraction": 0.5, "seed": 0}]
    job = train_job(tiny_data, "smoke", parse_overrides(TINY))
    report = sweep(points, tmp_path, job, gpus=[], progress=False)
    (failed,) = report.failed
    error = (failed / "error.txt").read_text()
    assert "return code 2" in error and "unknown method 'nosuchmethod'" in error
    assert "--method nosuchmethod" in error


def test_two_jobs_run_side_by_side(tiny_data, tmp_path):
    points = expand_grid({"method": ["fpn", "semisegdefect"], "label_fraction": [0.5],
                          "seed": [0]})
    job = train_job(tiny_data, "smoke", parse_overrides(TINY))
    report = sweep(points, tmp_path, job, jobs=2, gpus=[], progress=False)
    assert len(report.done) == 2 and not report.failed
    (a_start, a_end), (b_start, b_end) = (_log_times((d / "train.log").read_text())
                                          for d in report.done)
    assert b_start < a_end and a_start < b_end
    for d in report.done:
        assert json.loads((d / "config.json").read_text())["threads"] == max(1, cpu_cores() // 2)
    table = collect(tmp_path)
    assert sorted(table["method"]) == ["fpn", "semisegdefect"]
    assert table["steps"].tolist() == [2, 2] and table["test_miou"].between(0, 1).all()


# --------------------------------------------------------------------------- #
# The command line


def test_cli_dry_run_prints_every_point(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("semi.num_anchors: [32, 64]\n")
    rc = main(["sweep", "--data", str(tmp_path), "--root", str(tmp_path / "runs"),
               "--methods", "semisegdefect", "--fractions", "0.05", "--seeds", "0", "1",
               "--profile", "smoke", "--grid", str(grid), "--dry-run",
               "--extra", "method=deeplabv3plus,label_fraction=1.0", "steps=2"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[-1] == "5 to run, 0 finished before"
    assert "method=semisegdefect,label_fraction=0.05,seed=1,semi.num_anchors=64" in lines[3]
    assert lines[4].split("--out ")[1].startswith(str(tmp_path / "runs/method=deeplabv3plus,"
                                                                  "label_fraction=1.0 "))
    assert all("steps=2" in line for line in lines[:5])


def test_cli_refuses_an_axis_given_twice(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("seed: [0, 1]\n")
    rc = main(["sweep", "--data", str(tmp_path), "--root", str(tmp_path), "--seeds", "3",
               "--grid", str(grid), "--dry-run"])
    assert rc == 2 and "seed is given both by --seeds" in capsys.readouterr().err


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupting_a_sweep_stops_its_jobs(tmp_path, signame):
    """Ctrl-C, or SIGTERM (``kill``, a session's end), stops the sweep and
    terminates its running jobs: none trains on as an orphan."""
    import os
    import signal
    import threading
    import time

    def sleeper(point, run_dir):
        started = Path(run_dir) / "started"
        return [sys.executable, "-c",
                f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"]

    points = expand_grid({"method": ["a", "b", "c"]})
    interrupted = []

    def interrupt_once_both_run():  # Ctrl-C, however slowly the machine starts them
        deadline = time.time() + 120
        while len(list(tmp_path.glob("*/started"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        interrupted.append(time.time())
        os.kill(os.getpid(), getattr(signal, signame))

    # Python only turns SIGINT into KeyboardInterrupt where it was not ignored at
    # start-up, and a shell's background jobs start with it ignored: set it here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    term_before = signal.getsignal(signal.SIGTERM)
    try:
        threading.Thread(target=interrupt_once_both_run, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            sweep(points, tmp_path, sleeper, jobs=2, gpus=[], progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) is term_before   # the sweep's handler is gone
    assert time.time() - interrupted[0] < 30               # not the sleepers' 60 s
    errors = sorted(p.parent.name for p in tmp_path.glob("*/error.txt"))
    assert errors == ["method=a", "method=b"]          # terminated; "c" never started
    assert "return code -15" in (tmp_path / "method=a" / "error.txt").read_text()


# --------------------------------------------------------------------------- #
# Notebook jobs


def test_notebook_job_passes_declared_parameters_and_the_rest_as_overrides(tmp_path):
    from semiseg_helpers.notebooks import NOTEBOOK_DIR
    from semiseg_helpers.sweep import notebook_job

    job = notebook_job(NOTEBOOK_DIR / "01_train_semisegdefect.py", tmp_path / "data", "smoke",
                       {"steps": 2})
    argv = job({"method": "fpn", "label_fraction": 0.5, "semi.num_anchors": 64}, tmp_path / "r")
    assert argv[3:7] == ["notebook", str(NOTEBOOK_DIR / "01_train_semisegdefect.py"),
                         "--executed", str(tmp_path / "r" / "notebook.ipynb")]
    params = dict(zip(argv[8::3], argv[9::3]))
    assert params == {"profile": "smoke", "data_dir": str((tmp_path / "data").resolve()),
                      "output_dir": str(tmp_path / "r"), "run_dir": str(tmp_path / "r"),
                      "method": "fpn", "label_fraction": "0.5",
                      "overrides": '{"steps": 2, "semi.num_anchors": 64}'}
    no_overrides = notebook_job(NOTEBOOK_DIR / "00_data_preparation.py", tmp_path, "smoke")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['semi.num_anchors'\]"):
        no_overrides({"semi.num_anchors": 64}, tmp_path / "r")


@pytest.mark.slow
def test_notebook_points_keep_the_executed_notebook_beside_the_run(tiny_data, tmp_path):
    from semiseg_helpers.notebooks import NOTEBOOK_DIR
    from semiseg_helpers.sweep import notebook_job

    job = notebook_job(NOTEBOOK_DIR / "01_train_semisegdefect.py", tiny_data, "smoke",
                       parse_overrides(TINY))
    points = [{"method": "fpn", "label_fraction": 0.5, "seed": 0}]
    (done,) = sweep(points, tmp_path, job, gpus=[], progress=False).done
    assert (done / "notebook.ipynb").is_file() and (done / "figure7.png").is_file()
    assert json.loads((done / "record.json").read_text())["run_dir"] == str(done)
    assert list(collect(tmp_path)["method"]) == ["fpn"]


# --------------------------------------------------------------------------- #
# A cluster through submitit (its LocalExecutor stands in for SLURM)


def test_a_cluster_sweep_submits_only_the_unfinished_points(tiny_data, tmp_path):
    import submitit

    from semiseg_helpers.runs import RunDir
    from semiseg_helpers.sweep import LOG

    job = train_job(tiny_data, "smoke", parse_overrides([*TINY, "threads=1"]))
    points = expand_grid({"method": ["supervised"], "label_fraction": [0.5], "seed": [0, 1]})
    finished, todo = (run_dir_of(tmp_path / "runs", p).resolve() for p in points)
    finished.mkdir(parents=True)        # seed 0 finished before (of this very configuration)
    RunDir(finished).config.write_text(json.dumps(job.config(points[0]).to_dict()))
    RunDir(finished).summary.write_text(json.dumps({"method": "supervised", "seed": 0}))

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs" / "%j")

    def jobs():  # the job folders, by job id
        return [p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit()]

    report = sweep(points, tmp_path / "runs", job, executor=executor, poll_s=0.2,
                   progress=False)
    assert (report.skipped, report.done, report.failed) == ([finished], [todo], [])
    assert len(jobs()) == 1                                          # one job submitted
    summary = RunDir(todo).read_summary()
    assert (summary["seed"], summary["steps"]) == (1, 2)
    assert "exited 0" in (todo / LOG).read_text() and not (finished / LOG).exists()

    # the configuration check comes before anything is submitted
    other = train_job(tiny_data, "smoke", parse_overrides([*TINY, "optim.lr=0.01"]))
    with pytest.raises(ValueError, match=r"2 point folder\(s\) hold runs of other settings"):
        sweep(points, tmp_path / "runs", other, executor=executor, progress=False)
    assert len(jobs()) == 1


def test_cli_slurm_options_and_one_point_on_several_gpus(tmp_path, capsys):
    from semiseg_helpers.sweep import cluster_executor

    rc = main(["sweep", "--data", str(tmp_path), "--root", str(tmp_path / "runs"),
               "--methods", "fpn", "--profile", "smoke", "--dry-run",
               "--slurm", "partition=gpu,timeout_min=600,gpus_per_node=2", "steps=2"])
    (line, last) = capsys.readouterr().out.splitlines()
    assert rc == 0 and last == "1 to run, 0 finished before"
    assert " -m torch.distributed.run --standalone --nproc-per-node 2 -m semiseg_helpers.cli " \
        "train " in line
    executor = cluster_executor(tmp_path, {"cluster": "local", "partition": "gpu",
                                           "timeout_min": 5})
    assert type(executor).__name__ == "AutoExecutor"
    with pytest.raises(ValueError, match="no_such_option"):
        cluster_executor(tmp_path, {"cluster": "local", "no_such_option": 1})
    with pytest.raises(ValueError, match="nodes=2: a point is one task on one node"):
        cluster_executor(tmp_path, {"nodes": 2})


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked")
def test_two_sweeps_over_one_root_share_its_points(holder, tmp_path):
    """A point another process is training is left to it, one finished
    meanwhile is skipped, and a job that loses the race for a folder (exit
    RUN_IN_USE_EXIT) is busy, not failed: nothing of this sweep's is written
    into those folders."""
    root, marker = tmp_path / "runs", tmp_path / "no-marker"
    points = expand_grid({"method": ["held", "good", "later", "raced"], "label_fraction": [0.5],
                          "seed": [0]})
    held, good, later, raced = (run_dir_of(root, p).resolve() for p in points)
    holder(held)

    def job(point, run_dir):
        if point["method"] == "good":        # as if a second sweep finished `later` now
            later.mkdir(parents=True)
            (later / "summary.json").write_text("{}")
        if point["method"] == "raced":
            return [sys.executable, "-c", f"import sys; sys.exit({RUN_IN_USE_EXIT})"]
        return fake_job(marker)(point, run_dir)

    report = sweep(points, root, job, gpus=[], progress=False)
    assert (report.done, report.skipped, report.busy, report.failed) == (
        [good], [later], [held, raced], [])
    assert list(held.iterdir()) == []
    assert [p.name for p in later.iterdir()] == ["summary.json"]
    assert not (raced / "error.txt").exists()
    assert "2 trained by another process" in str(report)

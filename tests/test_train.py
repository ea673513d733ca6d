"""The training loop end to end: resume equality, run folders, threads, the CLI
(whether the smoke profile's run learns: test_smoke_run.py)."""

import json

import pytest
import torch

from semiseg_helpers.cli import main as cli
from semiseg_helpers.config import make_config
from semiseg_helpers.data.prepare import dataset_fingerprint, load_manifest
from semiseg_helpers.methods import METHODS
from semiseg_helpers.precision import hardware_label
from semiseg_helpers.runs import RunDir, collect_summaries
from semiseg_helpers.train import poly_lambda, train


def _tiny(**overrides):
    """The smoke profile cut to a handful of steps (for loop mechanics)."""
    return make_config("smoke", {"steps": 6, "eval_every": 3, "checkpoint_every": 2,
                                 **overrides}, method="semisegdefect", label_fraction=0.2)


def test_poly_schedule():
    f = poly_lambda(100, 0.95)
    assert f(0) == 1.0 and f(100) == 0.0
    assert f(50) == pytest.approx(0.5 ** 0.95)


def _state(run_dir):
    return torch.load(RunDir(run_dir).last, weights_only=False)["method"]


def test_a_run_takes_no_more_threads_than_the_cores_it_may_use(
        synthetic_prepared, tmp_path, monkeypatch):
    import semiseg_helpers.train as training

    before = torch.get_num_threads()
    monkeypatch.setattr(training, "cpu_cores", lambda: 1)     # as under `taskset -c 0`
    try:
        summary = train(_tiny(threads=3, steps=2, eval_every=2), synthetic_prepared,
                        tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(before)
    assert summary["threads"] == 1
    assert json.loads(RunDir(tmp_path / "run").config.read_text())["threads"] == 3


@pytest.mark.parametrize("method", sorted(METHODS))
def test_interrupted_run_resumes_to_the_same_result(method, synthetic_prepared, tmp_path):
    # dropout (UniMatch's feature perturbation, the smp decoders) draws from the
    # global RNG: nothing else (e.g. making the batch iterators) may draw from it
    config = _tiny(method=method, threads=1)
    straight = train(config, synthetic_prepared, tmp_path / "straight", progress=False)
    assert train(config, synthetic_prepared, tmp_path / "resumed", progress=False,
                 stop_after=4) is None
    assert not RunDir(tmp_path / "resumed").finished
    resumed = train(config, synthetic_prepared, tmp_path / "resumed", progress=False)
    for key in ("val", "test", "best_step"):
        assert resumed[key] == straight[key]
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def log(run):
        return [{k: v for k, v in m.items() if k != "seconds"}
                for m in RunDir(tmp_path / run).read_metrics()]
    assert log("resumed") == log("straight")


def test_a_run_folder_is_what_its_config_says(synthetic_prepared, tmp_path):
    config = _tiny(steps=2, eval_every=2, threads=1)
    first = train(config, synthetic_prepared, tmp_path / "r", progress=False)
    assert train(config, synthetic_prepared, tmp_path / "r", progress=False) == first
    # where and how fast it runs is not part of the run
    assert train(_tiny(steps=2, eval_every=2, threads=2, device="cpu", **{"data.workers": 1}),
                 synthetic_prepared, tmp_path / "r", progress=False) == first
    # a finished run asked with other parameters: an error naming them, not its old numbers
    with pytest.raises(ValueError, match=r"holds a finished run with another configuration "
                                         r"\(1 key\(s\) differ: optim\.lr: 0\.001 there, "
                                         r"0\.002 asked\)"):
        train(_tiny(steps=2, eval_every=2, **{"optim.lr": 0.002}), synthetic_prepared,
              tmp_path / "r", progress=False)

    # a field added since the run was recorded takes its default there
    run = RunDir(tmp_path / "r")
    recorded = run.read_config()
    del recorded["semi"]["temperature"]             # the smoke profile keeps the default
    run.config.write_text(json.dumps(recorded))
    assert train(config, synthetic_prepared, run.path, progress=False) == first
    del recorded["semi"]["num_anchors"]             # the smoke profile's 32, not the default
    run.config.write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"semi\.num_anchors: 256 there, 32 asked"):
        train(config, synthetic_prepared, run.path, progress=False)
    run.config.write_text(config.to_json())

    # an unfinished run likewise, and it resumes on another machine or thread count
    run.summary.unlink()
    with pytest.raises(ValueError, match=r"holds an unfinished run .*steps: 2 there, 3 asked"):
        train(_tiny(steps=3, eval_every=2), synthetic_prepared, run.path, progress=False)
    resumed = train(_tiny(steps=2, eval_every=2, threads=2, device="cpu"), synthetic_prepared,
                    run.path, progress=False)
    assert resumed["best_step"] == first["best_step"]


def test_supervised_needs_no_unlabelled_data(synthetic_prepared, tmp_path):
    config = make_config("smoke", {"steps": 2, "eval_every": 2}, method="supervised",
                         label_fraction=0.1)
    summary = train(config, synthetic_prepared, tmp_path / "sup", progress=False)
    assert summary["method"] == "supervised" and summary["n_labelled"] == 5
    assert summary["dataset_fingerprint"] == dataset_fingerprint(load_manifest(synthetic_prepared))
    table = collect_summaries(tmp_path)
    assert list(table["method"]) == ["supervised"]
    assert {"test_miou", "test_iou_crack", "val_miou", "run"} <= set(table.columns)
    assert list(table["precision"]) == [summary["precision"]]   # Table 9 times by them
    assert table["hardware"].iloc[0] == hardware_label(summary["hardware"]) != ""


def test_cli_train_evaluate_predict(synthetic_prepared, tmp_path, capsys):
    run = tmp_path / "cli-run"
    assert cli(["train", "--data", str(synthetic_prepared), "--method", "supervised",
                "--label-fraction", "0.2", "--profile", "smoke", "--out", str(run), "--quiet",
                "steps=2", "eval_every=2"]) == 0
    assert "test MIoU" in capsys.readouterr().out
    assert cli(["evaluate", "--run", str(run), "--data", str(synthetic_prepared),
                "--split", "val", "--json", str(tmp_path / "s.json")]) == 0
    assert "val (7 images) MIoU" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["split"] == "val"
    assert cli(["train", "--data", str(synthetic_prepared), "--out", str(tmp_path / "x"),
                "--profile", "smoke", "semi.bogus=1"]) == 2
    assert "semi.bogus" in capsys.readouterr().err
    assert cli(["predict", "--run", str(run), "--images", str(tmp_path / "none"),
                "--out", str(tmp_path / "p")]) == 2


def test_cli_overrides_may_follow_options(synthetic_prepared, tmp_path, capsys):
    run = tmp_path / "mixed"
    assert cli(["train", "--data", str(synthetic_prepared), "steps=2", "--method", "supervised",
                "--label-fraction", "0.2",
                "--profile", "smoke", "--out", str(run), "--quiet", "eval_every=2",
                "optim.lr=0.002"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["steps"], config["eval_every"], config["optim"]["lr"]) == (2, 2, 0.002)
    with pytest.raises(SystemExit):
        cli(["train", "--data", str(synthetic_prepared), "--out", str(run), "--bogus"])


def test_a_run_folder_without_checkpoint_starts_its_log_afresh(synthetic_prepared, tmp_path):
    config = _tiny(steps=2, eval_every=2)
    run = RunDir(tmp_path / "r")
    run.create()
    run.config.write_text(config.to_json())
    run.log({"step": 7, "loss": 1.0})  # left by a run whose checkpoints were not kept
    train(config, synthetic_prepared, run.path, progress=False)
    assert [m["step"] for m in run.read_metrics()][0] == 1

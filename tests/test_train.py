"""The training loop end to end: learning, resume equality, run folders, CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg_helpers.cli import main as cli
from semiseg_helpers.config import make_config
from semiseg_helpers.data.prepare import dataset_fingerprint, load_manifest
from semiseg_helpers.methods import METHODS
from semiseg_helpers.precision import hardware_label
from semiseg_helpers.predict import evaluate_run, load_run_model, predict_folder
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


# The smoke profile's budget is the one `make demo` trains with: its 600 steps
# reach every class (120, its budget before the fast path, reached only
# spalling: val MIoU 0.08-0.13, crack and rebar 0).


@pytest.fixture(scope="module")
def smoke_run(synthetic_prepared, tmp_path_factory):
    """Semi-SegDefect at the smoke profile as it is (the CI smoke run: about a
    minute on 2 cores), trained once: long enough to learn every synthetic class."""
    out = tmp_path_factory.mktemp("runs") / "semi"
    config = make_config("smoke", method="semisegdefect", label_fraction=0.5)
    summary = train(config, synthetic_prepared, out, progress=False)
    return out, summary


def chance_miou(scores: dict, classes) -> float:
    """Expected MIoU of guessing each pixel's class at random with the true
    class shares p_c: IoU_c = p_c**2 / (2 p_c - p_c**2) = p_c / (2 - p_c)."""
    cm = np.asarray(scores["confusion"], dtype=float)
    share = cm.sum(1) / cm.sum()
    names = ["background", "crack", "spalling", "rebar"]
    return float(np.mean([share[names.index(c)] / (2 - share[names.index(c)]) for c in classes]))


@pytest.mark.slow
def test_smoke_run_learns_well_above_chance(smoke_run, synthetic_prepared):
    out, summary = smoke_run
    chance = chance_miou(summary["val"], summary["classes"])
    assert chance < 0.02
    # Measured at 600 steps (2 threads, bf16 fast path), seeds 0 / 1: val MIoU
    # 0.389 / 0.364 (crack 0.134 / 0.107, spalling 0.636 / 0.608, rebar 0.397 /
    # 0.376), test MIoU 0.478 / 0.481. Chance is ~0.013: the bars are 20x it and
    # ask every class to be learnt, with a margin for the 7 validation images.
    assert summary["val"]["miou"] > 0.25
    assert summary["test"]["miou"] > 0.3
    assert summary["val"]["iou"]["spalling"] > 0.4
    assert all(v > 0.05 for v in summary["val"]["iou"].values()), summary["val"]["iou"]
    assert set(summary) >= {"method", "label_fraction", "seed", "best_step", "val", "test",
                            "precision", "hardware"}
    assert summary["hardware"]["torch"] == torch.__version__      # what its seconds ran on
    metrics = RunDir(out).read_metrics()
    w_u = [m["w_u"] for m in metrics if "w_u" in m]
    assert w_u[-1] > w_u[0]  # the teacher grows confident
    assert all(m["anchors"] > 0 for m in metrics if "anchors" in m)
    assert len([m for m in metrics if "val_miou" in m]) == 4
    # the run folder holds everything a figure needs, and the checkpoints
    run = RunDir(out)
    assert run.best.is_file() and run.last.is_file()
    assert json.loads(run.config.read_text())["method"] == "semisegdefect"


def _state(run_dir):
    return torch.load(RunDir(run_dir).last, weights_only=False)["method"]


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


def test_evaluate_and_predict_a_trained_run(smoke_run, synthetic_prepared, tmp_path):
    out, summary = smoke_run
    scores = evaluate_run(out, synthetic_prepared, "test", device="cpu")
    assert scores["miou"] == pytest.approx(summary["test"]["miou"], abs=1e-9)
    model, _ = load_run_model(out, "cpu")
    assert not model.training

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)).save(photos / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photos / "small.png")
    written = predict_folder(out, photos, tmp_path / "pred", device="cpu", progress=False).masks
    assert [p.name for p in written] == ["big.png", "small.png"]
    mask = np.asarray(Image.open(written[0]))
    assert mask.shape == (150, 230) and mask.max() <= 3
    assert (tmp_path / "pred" / "big_overlay.jpg").is_file()
    assert set(json.loads((tmp_path / "pred" / "predictions.json").read_text())) == \
        {"big.jpg", "small.png"}


def test_exported_half_precision_weights_serve_a_run_without_checkpoints(
        smoke_run, synthetic_prepared, tmp_path, capsys):
    """A model of record commits config, summary and model.safetensors only: evaluate
    and predict must work from those, scoring as the run did (fp16 rounding aside)."""
    import shutil

    out, summary = smoke_run
    clone = tmp_path / "clone"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_run_model(clone, "cpu")
    assert cli(["export", "--run", str(out)]) == 0
    weights = RunDir(out).weights
    assert "MiB" in capsys.readouterr().out and weights.stat().st_size < 20 * 2 ** 20
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(weights)).values()} <= {torch.float16, torch.int64}
    shutil.copy(weights, clone / weights.name)
    scores = evaluate_run(clone, synthetic_prepared, "test", device="cpu")
    assert scores["miou"] == pytest.approx(summary["test"]["miou"], abs=0.01)
    model, _ = load_run_model(clone, "cpu")
    reference, _ = load_run_model(out, "cpu")
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x, return_rep=False).logits,
                                   reference(x, return_rep=False).logits, atol=0.05, rtol=0.05)


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

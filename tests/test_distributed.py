"""Data-parallel training (torchrun, gloo on the CPU): batch shares, gradient
averaging, one run folder written by rank 0, resume, and the SLURM sweep path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semiseg_helpers import distributed
from semiseg_helpers.augment import weak_view
from semiseg_helpers.config import make_config, parse_overrides
from semiseg_helpers.data.dataset import StreamBatchSampler
from semiseg_helpers.runs import RunDir, config_differences
from semiseg_helpers.train import Trainer, train

TESTS = Path(__file__).resolve().parent
TINY = ["steps=4", "eval_every=2", "checkpoint_every=2", "threads=1", "data.crop_size=64",
        "device=cpu", "precision=fp32"]
"""Four steps of the smoke profile at 64 px, one thread per process; fp32,
since bf16 autocast would round differently in a batch of 2 than of 4."""


# --------------------------------------------------------------------------- #
# The pieces, in one process


def test_stream_shares_make_up_the_single_process_batches():
    def batches(share, start=0, n=7):
        it = iter(StreamBatchSampler(10, 4, seed=3, start_batch=start, share=share))
        return [next(it) for _ in range(n)]

    whole = batches((0, 1))
    halves = [batches((k, 2)) for k in range(2)]
    assert [a + b for a, b in zip(*halves)] == whole
    assert batches((1, 2), start=5, n=2) == halves[1][5:7]      # resumable per share
    with pytest.raises(ValueError, match="divisible"):
        StreamBatchSampler(10, 4, seed=3, share=(0, 3))


def test_weak_view_shares_are_the_whole_batch_view():
    images = torch.rand(4, 3, 40, 48)
    labels = torch.randint(0, 4, (4, 40, 48))
    kwargs = dict(crop_size=32, scale_range=(0.5, 1.5))

    def view(rows, share):
        return weak_view(images[rows], labels[rows], share=share,
                         generator=torch.Generator().manual_seed(7), **kwargs)

    whole = view(slice(0, 4), (0, 1))
    parts = [view(slice(2 * k, 2 * k + 2), (k, 2)) for k in range(2)]
    assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)


def test_a_batch_the_processes_cannot_share_equally_is_an_error():
    config = make_config("smoke", {"data.batch_size": 6, "data.unlabelled_batch_size": 4})
    distributed.check_batch_sizes(config, 2, uses_unlabelled=True)
    with pytest.raises(ValueError, match=r"data\.batch_size=6 is not divisible by the 4 "):
        distributed.check_batch_sizes(config, 4, uses_unlabelled=False)
    with pytest.raises(ValueError, match=r"data\.unlabelled_batch_size=4 .* 3 processes"):
        distributed.check_batch_sizes(make_config("smoke", {"data.batch_size": 6}), 3,
                                      uses_unlabelled=True)


def test_sync_bn_is_part_of_a_runs_identity_and_needs_gpus():
    recorded = make_config("smoke").to_dict()
    del recorded["sync_bn"]                 # a run recorded before the key existed
    assert config_differences(recorded, make_config("smoke")) == {}
    assert config_differences(recorded, make_config("smoke", {"sync_bn": True})) == \
        {"sync_bn": (False, True)}
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert distributed.convert_sync_batchnorm(net, distributed.Context()) is net
    with pytest.raises(ValueError, match="sync_bn=true needs GPUs"):
        distributed.convert_sync_batchnorm(net, distributed.Context(0, 2))


# --------------------------------------------------------------------------- #
# Two processes under torchrun


def _torchrun(script: list[str], args: list[str], progress: bool = False):
    """``torchrun --standalone --nproc-per-node 2`` of ``script`` (``-m module`` or a
    file) with ``train ARGS``; returns the completed process (output captured)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *script, "train", *args]
    if not progress:
        command.append("--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _train_args(data: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--method", method, "--profile", "smoke",
            "--label-fraction", "0.2", *TINY, *extra]


def _config(method: str):
    return make_config("smoke", parse_overrides(TINY), method=method, label_fraction=0.2)


def _weights(run: Path) -> dict:
    return torch.load(RunDir(run).last, weights_only=False)["method"]


def _log(run: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in RunDir(run).read_metrics()]


def _wrote_one_run(run: Path) -> None:
    """What rank 0 alone writes, once: no stray file, no log line twice."""
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == ["checkpoints/best.pt", "checkpoints/last.pt", "config.json",
                     "metrics.jsonl", "summary.json"]
    lines = [(m["step"], "val_miou" in m) for m in RunDir(run).read_metrics()]
    assert len(lines) == len(set(lines)) == 3      # the loss at step 1, val at 2 and 4
    assert json.loads(RunDir(run).summary.read_text())["processes"] == 2


def test_two_processes_train_as_one_up_to_batchnorm(synthetic_prepared, tmp_path,
                                                    monkeypatch):
    """Networks without BatchNorm (the one thing computed per process by design):
    two processes and one train the same model. Same images, same weak views,
    averaged gradients: what differs is the order of floating-point sums.
    Measured: the two runs' weights differ by 1.3e-6 of the distance the
    training moved them (4 AdamW steps), the logged losses agree to 1e-7;
    held to 1e-4 and 1e-5 (other CPUs, other summation orders)."""
    from tests.ddp_no_batchnorm import patch

    _torchrun([str(TESTS / "ddp_no_batchnorm.py")],
              _train_args(synthetic_prepared, tmp_path / "two", "supervised"))
    _wrote_one_run(tmp_path / "two")

    patch(monkeypatch.setattr)
    config = _config("supervised")
    init = Trainer(config, synthetic_prepared, tmp_path / "unused", progress=False)
    init = {k: v.clone() for k, v in init.method.state_dict().items()}
    one = train(config, synthetic_prepared, tmp_path / "one", progress=False)
    two = json.loads(RunDir(tmp_path / "two").summary.read_text())

    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    moved = math.sqrt(sum((a[k] - init[k]).double().pow(2).sum() for k in a))
    apart = math.sqrt(sum((a[k] - b[k]).double().pow(2).sum() for k in a))
    assert moved > 0 and apart / moved < 1e-4, (apart, moved)
    for x, y in zip(_log(tmp_path / "one"), _log(tmp_path / "two"), strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k
    assert two["best_step"] == one["best_step"]
    assert two["test"]["miou"] == pytest.approx(one["test"]["miou"], abs=1e-6)


@pytest.mark.slow
def test_torchrun_semisegdefect_resumes_and_matches_one_process(synthetic_prepared, tmp_path):
    """The real networks (BatchNorm per process) and the mean teacher, through
    ``torchrun -m semiseg_helpers.cli``: one run folder, one progress bar,
    the ranks' models bit-identical at every checkpoint (the run stops
    otherwise), and a run stopped after 2 steps and restarted with two
    processes ends exactly where a straight two-process run does."""
    straight = tmp_path / "straight"
    done = _torchrun(["-m", "semiseg_helpers.cli"],
                     _train_args(synthetic_prepared, straight, "semisegdefect"), progress=True)
    _wrote_one_run(straight)
    assert done.stderr.count("semisegdefect 0.2:   0%") == 1       # rank 0's bar only
    assert done.stdout.count("test MIoU") == 1                       # rank 0 speaks

    resumed = tmp_path / "resumed"
    args = _train_args(synthetic_prepared, resumed, "semisegdefect")
    _torchrun(["-m", "semiseg_helpers.cli"], [*args, "--stop-after", "2"])
    assert not RunDir(resumed).finished
    assert torch.load(RunDir(resumed).last, weights_only=False)["step"] == 2
    _torchrun(["-m", "semiseg_helpers.cli"], args)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log(resumed) == _log(straight)

    # against one process: the teacher (eval mode, no batch statistics) sees the
    # same images and weak views at step 1, so its confidence agrees to the
    # rounding of a mean of two means; the student's loss differs by BatchNorm
    # over 2 images per process instead of 4 (measured 1 %; held to 10 %)
    one = tmp_path / "one"
    train(_config("semisegdefect"), synthetic_prepared, one, progress=False)
    first_one, first_two = _log(one)[0], _log(straight)[0]
    assert first_two["pseudo_conf"] == pytest.approx(first_one["pseudo_conf"], rel=1e-6)
    assert first_two["loss"] == pytest.approx(first_one["loss"], rel=0.1)

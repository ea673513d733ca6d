"""ONNX export: the graph runs in onnxruntime at any batch and size and
computes what PyTorch does; the command line writes it whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semiseg_helpers.classes import CLASS_NAMES, NUM_CLASSES
from semiseg_helpers.cli import main as cli
from semiseg_helpers.export import (INPUT_NAME, LOGIT_ATOL, OUTPUT_NAME, PIXEL_AGREEMENT_MIN,
                                    Agreement, check_onnx_export, compare_forwards,
                                    export_onnx, export_run_onnx, onnx_logits_fn, onnx_session)
from semiseg_helpers.methods import build_method
from semiseg_helpers.predict import load_run_model
from semiseg_helpers.runs import RunDir
from tests.methods import tiny_config, tiny_dataset


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch on one thread here (a shared 2-core machine slows a multi-threaded
    one down many times over), and as before for the tests after these, which
    ``semiseg export --threads`` would otherwise change for the process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights_only_run(tmp_path_factory) -> Path:
    """A run folder as a fresh clone has it: config.json and fp16
    model.safetensors, no checkpoints. Random weights (batch-norm statistics
    randomised too, so that no layer is the identity; a classifier strong
    enough to predict several classes) of a TF EfficientNet-Lite0 network,
    whose strided convolutions pad by the input's parity."""
    from safetensors.torch import save_file

    config = tiny_config("semisegdefect", **{"model.encoder": "tf_efficientnet_lite0"})
    torch.manual_seed(0)
    model = build_method(config, NUM_CLASSES).inference_model()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():   # logits large enough to vary the class from pixel to pixel
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.zero_()
    run = RunDir(tmp_path_factory.mktemp("export") / "run")
    run.path.mkdir()
    run.config.write_text(json.dumps(config.to_dict()))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}, str(run.weights))
    return run.path


@pytest.fixture(scope="module")
def exported(weights_only_run, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The run's network in PyTorch and its ONNX export."""
    path = export_run_onnx(weights_only_run, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    model, _ = load_run_model(weights_only_run, "cpu")
    return model, path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("export_data") / "data")


def torch_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, return_rep=False).logits


def test_export_declares_dynamic_axes_and_its_classes(exported):
    _, path = exported
    session = onnx_session(path, threads=1)
    (image,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.type, image.shape) == (
        INPUT_NAME, "tensor(float)", ["batch", 3, "height", "width"])
    assert (logits.name, logits.shape) == (OUTPUT_NAME, ["batch", NUM_CLASSES, "height", "width"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == list(CLASS_NAMES)
    assert meta["window"] == "64" and meta["encoder"] == "tf_efficientnet_lite0"
    assert meta["size_multiple"] == "1"


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 64, 64), (2, 37, 53), (1, 97, 66),
                                   (4, 33, 31)])
def test_onnxruntime_agrees_with_pytorch_at_any_batch_and_size(exported, shape):
    """Sizes other than the trace's (64 px, batch 2), odd ones included: the
    TF "same" padding of the strided convolutions (one pixel after an even
    side, one on each side of an odd one) must follow the input, not the trace."""
    model, path = exported
    batch, h, w = shape
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    expected = torch_logits(model, x)
    got = onnx_logits_fn(onnx_session(path, threads=1))(x)
    assert got.shape == (batch, NUM_CLASSES, h, w)
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)
    agreement = Agreement()
    agreement.update(expected, got)
    assert agreement.pixel_agreement >= PIXEL_AGREEMENT_MIN
    # the comparison is not vacuous: the network predicts several classes
    assert len(torch.unique(expected.argmax(1))) > 1


def test_export_traces_a_model_in_training_mode_as_inference_and_leaves_it_so(
        weights_only_run, tmp_path):
    model, _ = load_run_model(weights_only_run, "cpu")
    model.train()
    path = export_onnx(model, tmp_path / "m.onnx", sample_size=64)
    assert model.training and all(m.training for m in model.modules())
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    got = onnx_logits_fn(onnx_session(path, threads=1))(x)
    torch.testing.assert_close(got, torch_logits(model.eval(), x), atol=LOGIT_ATOL, rtol=0)


def test_an_smp_baseline_exports_with_its_size_multiple(tmp_path):
    from semiseg_helpers.models import create_model

    torch.manual_seed(0)
    model = create_model("fpn", "tf_efficientnet_lite0", decoder_channels=64).eval()
    path = export_onnx(model, tmp_path / "fpn.onnx", sample_size=64)
    session = onnx_session(path, threads=1)
    assert session.get_modelmeta().custom_metadata_map["size_multiple"] == "32"
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(onnx_logits_fn(session)(x), torch_logits(model, x),
                               atol=LOGIT_ATOL, rtol=0)


def test_agreement_counts_pixels_and_logit_differences():
    reference = torch.zeros(1, 2, 2, 3)
    reference[:, 0] = 1.0                                 # class 0 everywhere
    candidate = reference.clone()
    candidate[0, 1, 0, 0] = 1.5                           # one pixel flips to class 1
    candidate[0, 0, 1, 2] = 1.25                          # one logit moves, same class
    a = Agreement()
    a.update(reference, candidate)
    assert (a.pixels, a.agreeing) == (6, 5)
    assert a.pixel_agreement == pytest.approx(5 / 6)
    assert a.max_abs == pytest.approx(1.5)
    assert a.mean_abs == pytest.approx((1.5 + 0.25) / 12)
    assert not a.within()
    a = Agreement()
    a.update(reference, reference + 1e-4)
    assert a.within() and a.pixel_agreement == 1.0
    assert not Agreement().within()
    with pytest.raises(ValueError, match="shape"):
        a.update(reference, reference[..., :2])


def _oracle(x: torch.Tensor) -> torch.Tensor:
    """Logits reading the class off the red channel (class * 60 / 255)."""
    labels = (x[:, 0] * 255 / 60).round().long()
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()


def _top_row_background(x: torch.Tensor) -> torch.Tensor:
    logits = _oracle(x)
    logits[:, 0, 0] += 2.0                              # background wins the first row
    return logits


def test_compare_forwards_scores_each_and_measures_agreement():
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    masks[0, 0, 2:5, 1:7] = 1
    masks[1, 0, 0:6, 0:3] = 2
    batches = [{"image": (masks * 60).expand(-1, 3, -1, -1).contiguous()[k:k + 1],
                "mask": masks[k:k + 1, 0]} for k in range(2)]
    scores, agreements = compare_forwards({"oracle": _oracle, "top": _top_row_background},
                                          "oracle", batches, 8, ["crack", "spalling"])
    assert set(agreements) == {"top"}
    assert scores["oracle"]["miou"] == 1.0
    # the first row of image 1 holds 3 spalling pixels, now background: 15 of 18 found
    assert scores["top"]["iou"] == {"crack": 1.0, "spalling": pytest.approx(15 / 18)}
    top = agreements["top"]
    assert (top.pixels, top.pixels - top.agreeing) == (128, 3)
    assert top.max_abs == pytest.approx(2.0)
    assert top.mean_abs == pytest.approx(2.0 * 16 / (128 * NUM_CLASSES))
    with pytest.raises(ValueError, match="reference"):
        compare_forwards({"a": _oracle}, "b", batches, 8, ["crack"])


def test_check_on_a_prepared_split_agrees_and_scores_alike(weights_only_run, exported,
                                                           tiny_data):
    _, path = exported
    result = check_onnx_export(weights_only_run, path, tiny_data, "test", threads=1)
    assert result["passed"] and result["n_images"] > 0 and result["window"] == 64
    onnx_scores = result["forwards"]["onnxruntime_fp32"]
    reference = result["forwards"]["pytorch_fp32"]
    agreement = onnx_scores["agreement"]
    assert agreement["pixels"] == result["n_images"] * 64 * 64
    assert agreement["pixel_agreement"] >= PIXEL_AGREEMENT_MIN
    assert 0 < agreement["max_abs_logit_diff"] <= LOGIT_ATOL
    assert onnx_scores["miou"] == pytest.approx(reference["miou"], abs=1e-3)
    json.dumps(result)                                    # ready for --json


def test_cli_writes_the_onnx_file_and_the_check(weights_only_run, tiny_data, tmp_path,
                                                capsys):
    out, numbers = tmp_path / "out" / "model.onnx", tmp_path / "check.json"
    assert cli(["export", "--run", str(weights_only_run), "--onnx", str(out), "--threads", "1",
                "--check-data", str(tiny_data), "--json", str(numbers)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "within tolerance" in printed
    assert json.loads(numbers.read_text())["passed"] is True
    x = torch.rand(1, 3, 45, 70)
    assert onnx_logits_fn(onnx_session(out, 1))(x).shape == (1, NUM_CLASSES, 45, 70)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]   # no temporary left


def test_cli_refuses_a_run_without_weights(weights_only_run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((weights_only_run / "config.json").read_text())
    out = tmp_path / "model.onnx"
    assert cli(["export", "--run", str(bare), "--onnx", str(out)]) == 2
    message = capsys.readouterr().err
    assert "semiseg export: error" in message
    assert str(bare) in message and "best.pt" in message and "model.safetensors" in message
    assert not out.exists()
    assert cli(["export", "--run", str(tmp_path / "nothing"), "--onnx", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_cli_options_of_the_check_need_onnx(weights_only_run, tmp_path, capsys):
    assert cli(["export", "--run", str(weights_only_run), "--check-data", str(tmp_path)]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert cli(["export", "--run", str(weights_only_run), "--onnx", str(tmp_path / "m.onnx"),
                "--json", str(tmp_path / "x.json")]) == 2
    assert "--check-data" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def _fail_midway(model, args, f, **kwargs):
    Path(f).write_bytes(b"half an ONNX file")
    raise RuntimeError("exporter crashed")


def _write_garbage(model, args, f, **kwargs):
    Path(f).write_bytes(b"not an ONNX model at all")


@pytest.mark.parametrize("exporter", [_fail_midway, _write_garbage])
def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(weights_only_run, tmp_path,
                                                              monkeypatch, exporter):
    model, _ = load_run_model(weights_only_run, "cpu")
    monkeypatch.setattr(torch.onnx, "export", exporter)
    fresh, old = tmp_path / "fresh.onnx", tmp_path / "old.onnx"
    old.write_bytes(b"previous export")
    for path in (fresh, old):
        with pytest.raises(Exception):
            export_onnx(model, path, sample_size=64)
    assert not fresh.exists() and old.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]


def test_export_refuses_a_folder_as_its_file(weights_only_run, tmp_path):
    model, _ = load_run_model(weights_only_run, "cpu")
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(model, tmp_path, sample_size=64)


def test_onnx_session_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        onnx_session(tmp_path / "missing.onnx")
    assert np.isnan(Agreement().pixel_agreement)

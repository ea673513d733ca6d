"""ONNX export of a run's inference network, and a check that onnxruntime
computes what PyTorch does.

The exported graph is for users who segment photos on a CPU without PyTorch:

* input ``image``: float32 RGB in [0, 1], ``(batch, 3, height, width)``, any
  batch, height and width (the network normalises internally, as in PyTorch;
  the smp baselines want heights and widths a multiple of their output
  stride, the ``size_multiple`` metadata, as in PyTorch);
* output ``logits``: float32 ``(batch, classes, height, width)``; the class of
  a pixel is the argmax over axis 1, its name the entry of the ``classes``
  metadata (a JSON list) at that index.

It is exported in fp32 whatever precision the run computed in (bf16
autocast is a PyTorch execution mode, not something in the weights), for
onnxruntime's fp32 CPU kernels.

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(...,
dynamo=False)``). The newer ``torch.export``-based exporter (the default since
PyTorch 2.9) gives an equivalent graph here (both within 1e-5 of PyTorch on
random images, the same onnxruntime latency) but needs ``onnxscript`` as well
and exported 10-30 times slower on a 2-core CPU (52 s against 5 s for the
model of record), too slow for tests; both work offline. The tracer records
shapes as graph operations where the code computes them from tensor sizes,
which timm's ``pad_same`` does when traced, so the parity-dependent padding
of the TF EfficientNets' strided convolutions stays right at every size; the
tests check odd sizes against PyTorch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from semiseg_helpers.classes import CLASS_NAMES, NUM_CLASSES
from semiseg_helpers.evaluate import (confusion_matrix, defect_classes, eval_window, logits_fn,
                                      run_logits_fn, sliding_window_logits, summarise)

if TYPE_CHECKING:
    import onnxruntime

Forward = Callable[[Tensor], Tensor]
"""``(B, 3, H, W)`` float in [0, 1] -> float32 logits ``(B, C, H, W)``."""

ONNX_OPSET = 17
"""The ONNX opset exported (onnxruntime has run it since 1.11)."""

INPUT_NAME, OUTPUT_NAME = "image", "logits"

PIXEL_AGREEMENT_MIN = 0.999
"""The share of pixels whose class (argmax) onnxruntime and PyTorch fp32
must agree on."""

LOGIT_ATOL = 1e-3
"""The largest absolute difference allowed between onnxruntime's and PyTorch
fp32's logits at any pixel. Both compute in fp32 and differ only in the order
of summation (batch norm folded into the convolutions, other kernels): the
Semi-SegDefect model of record differs by 4e-5 at most over the PEER Hub test
split (README, *ONNX export*)."""


class LogitsOnly(nn.Module):
    """A segmentation network of the package reduced to ``x -> logits``: no
    representation head and a plain tensor instead of a :class:`SegOutput`,
    which is what an exported graph returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, return_rep=False).logits


def export_onnx(model: nn.Module, path: str | Path, sample_size: int = 224,
                metadata: Mapping[str, str] | None = None, opset: int = ONNX_OPSET) -> Path:
    """Write ``model``'s inference graph (fp32, on the CPU) to ``path`` as ONNX
    with dynamic batch, height and width, and return ``path``.

    ``model`` is a network of the package (it returns a :class:`SegOutput`),
    traced in eval mode on random images of ``sample_size`` pixels; it is
    left in the mode it was in.
    ``metadata`` is stored in the model's ``metadata_props`` beside
    ``classes`` (a JSON list of the class names, by logit index, for a
    network of the package's :data:`~semiseg_helpers.classes.NUM_CLASSES`). The file
    is checked by ``onnx.checker`` and appears whole or not at all: written
    to a temporary name in the same folder and renamed.

    Raises:
        ValueError: ``path`` is a folder.
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the ONNX file to write, e.g. "
                         f"{path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    network = _cpu_fp32_copy(model)
    modes = {m: m.training for m in network.modules()}
    sample = torch.rand(2, 3, sample_size, sample_size, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    num_classes = int(model.num_classes)
    props = {**({"classes": json.dumps(list(CLASS_NAMES))} if num_classes == len(CLASS_NAMES)
                else {}),
             "input": f"{INPUT_NAME}: float32 RGB in [0, 1], (batch, 3, height, width)",
             "output": f"{OUTPUT_NAME}: float32 (batch, classes, height, width); "
                       "class = argmax over axis 1",
             "size_multiple": str(size_multiple(model)),
             **(metadata or {})}

    def write(target: Path) -> None:
        wrapped = LogitsOnly(network).eval()
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter's deprecation notices (see the module docstring)
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*legacy TorchScript-based ONNX export")
            # group norm's input check (a size of 1 raises), constant in the trace
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                    module=r"torch\.nn\.functional")
            torch.onnx.export(wrapped, (sample,), str(target), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                              opset_version=opset, do_constant_folding=True)
        proto = onnx.load(str(target))
        # the tracer leaves the class axis symbolic (it comes out of a Resize)
        proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = num_classes
        onnx.helper.set_model_props(proto, props)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(target))

    try:
        _write_atomically(path, write)
    finally:
        for module, training in modes.items():
            module.train(training)
    return path


def size_multiple(model: nn.Module) -> int:
    """What input heights and widths must be multiples of: 1 for the
    Semi-SegDefect network (any size), the output stride for the smp
    baselines, which refuse other sizes in PyTorch and fail on them in
    onnxruntime (pad, as :func:`sliding_window_logits` does to 32)."""
    from semiseg_helpers.models import SmpSegmentationModel

    return int(model.output_stride) if isinstance(model, SmpSegmentationModel) else 1


def _cpu_fp32_copy(model: nn.Module) -> nn.Module:
    """``model`` itself if it already lives in fp32 on the CPU, else a copy that does."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
           for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``; on any failure ``tmp``
    is removed and ``path`` left as it was."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_run_onnx(run_dir: str | Path, path: str | Path) -> Path:
    """Export a run's inference network (its best weights, from
    ``checkpoints/best.pt`` or ``model.safetensors``) to ``path``; see
    :func:`export_onnx`. The metadata also names the run and its
    sliding-window size (``window``: the input size the run is evaluated at).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder, or has no weights.
    """
    from semiseg_helpers.predict import load_run_model

    model, config = load_run_model(run_dir, "cpu")
    window = eval_window(config)
    return export_onnx(model, path, sample_size=window,
                       metadata={"run": str(run_dir), "method": config.method,
                                 "encoder": config.model.encoder, "window": str(window)})


def onnx_session(path: str | Path, threads: int | None = None) -> "onnxruntime.InferenceSession":
    """An onnxruntime CPU session of the model at ``path``, computing on
    ``threads`` threads (``None``: onnxruntime's default, one per core)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits_fn(session: "onnxruntime.InferenceSession") -> Forward:
    """The :data:`Forward` of an exported model (:func:`sliding_window_logits`'s
    ``forward``): tensors in, tensors out, on the CPU."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def forward(x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run([output_name], {input_name: array})[0])
    return forward


@dataclass
class Agreement:
    """How closely one forward's logits follow a reference's, accumulated
    over images: argmax agreement and absolute logit differences."""

    pixels: int = 0
    agreeing: int = 0
    max_abs: float = 0.0
    abs_sum: float = 0.0
    values: int = 0

    def update(self, reference: Tensor, candidate: Tensor) -> None:
        """Add one batch of ``(B, C, H, W)`` logits of each."""
        if reference.shape != candidate.shape:
            raise ValueError(f"logits of shape {tuple(candidate.shape)} against the "
                             f"reference's {tuple(reference.shape)}")
        diff = (candidate.double() - reference.double()).abs()
        self.pixels += reference[:, 0].numel()
        self.agreeing += int((reference.argmax(1) == candidate.argmax(1)).sum())
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.abs_sum += float(diff.sum())
        self.values += diff.numel()

    @property
    def pixel_agreement(self) -> float:
        """Share of pixels of the same class (argmax) in both."""
        return self.agreeing / self.pixels if self.pixels else float("nan")

    @property
    def mean_abs(self) -> float:
        return self.abs_sum / self.values if self.values else float("nan")

    def within(self, pixel_agreement_min: float = PIXEL_AGREEMENT_MIN,
               logit_atol: float = LOGIT_ATOL) -> bool:
        """Whether both tolerances hold (False before any update)."""
        return (self.pixels > 0 and self.pixel_agreement >= pixel_agreement_min
                and self.max_abs <= logit_atol)

    def to_dict(self) -> dict:
        return {"pixel_agreement": self.pixel_agreement, "pixels": self.pixels,
                "disagreeing_pixels": self.pixels - self.agreeing,
                "max_abs_logit_diff": self.max_abs, "mean_abs_logit_diff": self.mean_abs}


def compare_forwards(forwards: Mapping[str, Forward], reference: str, batches: Iterable[dict],
                     window: int, classes: Sequence[str], num_classes: int = NUM_CLASSES
                     ) -> tuple[dict[str, dict], dict[str, Agreement]]:
    """Run each of ``forwards`` on every batch (``{"image": uint8, "mask":
    uint8}``, sliding windows of ``window`` as :func:`~semiseg_helpers.evaluate.evaluate`
    does) and return per name its scores (``miou`` and ``iou`` of
    :func:`summarise` over ``classes``), and per name but ``reference`` its
    :class:`Agreement` with the forward named ``reference``.
    """
    if reference not in forwards:
        raise ValueError(f"reference {reference!r} is not one of {list(forwards)}")
    matrices = {name: torch.zeros(num_classes, num_classes, dtype=torch.int64)
                for name in forwards}
    agreements = {name: Agreement() for name in forwards if name != reference}
    for batch in batches:
        images = batch["image"].float().div_(255)
        logits = {name: sliding_window_logits(f, images, window, num_classes)
                  for name, f in forwards.items()}
        for name, out in logits.items():
            matrices[name] += confusion_matrix(out.argmax(1), batch["mask"], num_classes)
            if name in agreements:
                agreements[name].update(logits[reference], out)
    scores = {}
    for name, cm in matrices.items():
        summary = summarise(cm, classes)
        scores[name] = {"miou": summary["miou"], "iou": summary["iou"]}
    return scores, agreements


def check_onnx_export(run_dir: str | Path, onnx_path: str | Path, data_dir: str | Path,
                      split: str = "test", threads: int | None = None) -> dict:
    """Compare the exported model at ``onnx_path`` (onnxruntime, CPU) with the
    run's network in PyTorch fp32 on every labelled image of a prepared
    dataset's ``split``, at the run's sliding-window size.

    ``threads``: what both compute on (``None``: each library's default).
    Also compares PyTorch at the run's own precision (bf16 autocast where the
    CPU has it), which the run's recorded scores used, when it is not fp32:
    a yardstick for the size of the export's differences.

    Returns a JSON-ready dict: the tolerances, ``passed`` (onnxruntime within
    both), and per forward (``forwards``) its MIoU / IoU and, but for the
    reference, its agreement with PyTorch fp32.

    Raises:
        FileNotFoundError: no run, weights, ONNX file or prepared dataset.
        ValueError: the split has no labelled image.
    """
    from semiseg_helpers.data.dataset import ManifestDataset, eval_loader
    from semiseg_helpers.data.prepare import load_manifest, select_samples
    from semiseg_helpers.precision import autocast_dtype, precision_name
    from semiseg_helpers.predict import load_run_model

    model, config = load_run_model(run_dir, "cpu")
    manifest = load_manifest(data_dir)
    samples = select_samples(manifest, split)
    if not samples:
        raise ValueError(f"{data_dir}: split {split!r} has no labelled sample")
    session = onnx_session(onnx_path, threads)
    forwards: dict[str, Forward] = {"pytorch_fp32": logits_fn(model),
                                    "onnxruntime_fp32": onnx_logits_fn(session)}
    cpu = torch.device("cpu")
    run_precision = precision_name(autocast_dtype(config.precision, cpu))
    if run_precision != "fp32":
        forwards[f"pytorch_{run_precision}"] = run_logits_fn(model, config, cpu)
    window = eval_window(config)
    with _torch_threads(threads):
        scores, agreements = compare_forwards(
            forwards, "pytorch_fp32", eval_loader(ManifestDataset(manifest["root"], samples)),
            window, defect_classes(manifest))
    for name, agreement in agreements.items():
        scores[name]["agreement"] = agreement.to_dict()
    return {"run": str(run_dir), "onnx": str(onnx_path), "data": str(data_dir), "split": split,
            "n_images": len(samples), "window": window,
            "threads": threads,
            "tolerance": {"pixel_agreement_min": PIXEL_AGREEMENT_MIN,
                          "max_abs_logit_diff": LOGIT_ATOL},
            "passed": agreements["onnxruntime_fp32"].within(),
            "reference": "pytorch_fp32", "forwards": scores}


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch computes on ``threads`` threads inside (``None``: as it was)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe_check(result: dict) -> str:
    """A few lines summarising :func:`check_onnx_export`'s result."""
    lines = [f"{result['split']} split, {result['n_images']} images, window {result['window']}:"]
    for name, scores in result["forwards"].items():
        line = f"  {name:<18} MIoU {scores['miou']:.4f}"
        if "agreement" in scores:
            a = scores["agreement"]
            line += (f"  pixels agreeing with pytorch_fp32 {100 * a['pixel_agreement']:.6f} %"
                     f" ({a['disagreeing_pixels']} of {a['pixels']} differ)"
                     f"  |dlogit| max {a['max_abs_logit_diff']:.2e}"
                     f" mean {a['mean_abs_logit_diff']:.2e}")
        lines.append(line)
    tol = result["tolerance"]
    lines.append(f"  onnxruntime {'within' if result['passed'] else 'OUTSIDE'} tolerance "
                 f"(agreement >= {100 * tol['pixel_agreement_min']:g} %, "
                 f"|dlogit| <= {tol['max_abs_logit_diff']:g})")
    return "\n".join(lines)


__all__ = ["Agreement", "Forward", "INPUT_NAME", "LOGIT_ATOL", "LogitsOnly", "ONNX_OPSET",
           "OUTPUT_NAME", "PIXEL_AGREEMENT_MIN", "check_onnx_export", "compare_forwards",
           "describe_check", "export_onnx", "export_run_onnx", "onnx_logits_fn",
           "onnx_session", "size_multiple"]

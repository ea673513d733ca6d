"""One entry point for every segmentation network the experiments train.

``create_model`` builds the Semi-SegDefect network or one of the paper's
fully supervised baselines (segmentation-models-pytorch's DeepLabV3Plus and
FPN on a ``tu-<encoder>`` timm encoder). All take float images in [0, 1],
normalise internally and return a :class:`SegOutput`, so the training loop,
evaluation and Grad-CAM treat them alike.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor, nn

from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.models.deeplab import SegOutput, SemiSegDefect
from semiseg_helpers.models.encoders import (
    InputNormalization,
    LoadReport,
    PretrainedSpec,
    load_pretrained,
    pyramid_out_indices,
    resolve_normalization,
)

ARCHITECTURES: tuple[str, ...] = ("semisegdefect", "deeplabv3plus", "fpn")


class SmpSegmentationModel(nn.Module):
    """An smp model behind the package's model interface.

    Built with ``encoder_weights=None``; pretrained weights go into the timm
    features model inside smp's ``tu-`` encoder through the same loader as
    :class:`~semiseg_helpers.models.encoders.TimmEncoder`, so a baseline and
    Semi-SegDefect start from identical encoder weights.

    Attributes:
        net: the smp model (``net.encoder.model`` is the timm features model).
        normalize, num_classes, output_stride, load_report; ``rep_dim`` is
        ``None``: these baselines have no representation head.
    """

    rep_dim = None

    def __init__(self, smp_class: Callable[..., nn.Module], encoder: str, num_classes: int,
                 pretrained: PretrainedSpec = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **smp_kwargs: Any) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        default_mean, default_std = resolve_normalization(encoder, pretrained)
        self.normalize = InputNormalization(default_mean if mean is None else mean,
                                            default_std if std is None else std)
        self.net = smp_class(encoder_name=f"tu-{encoder}", encoder_weights=None,
                             classes=num_classes, **smp_kwargs)
        self.num_classes = num_classes
        self.output_stride = self.net.encoder.output_stride
        self.load_report: LoadReport | None = load_pretrained(self.net.encoder.model, encoder,
                                                              pretrained)

    def forward(self, x: Tensor, perturb: bool = False, return_features: bool = False,
                return_rep: bool = True) -> SegOutput:
        """``(B, 3, H, W)`` in [0, 1] -> :class:`SegOutput` with ``rep=None``.

        ``return_rep`` is accepted for a uniform call signature; ``perturb``
        and ``return_features`` need the Semi-SegDefect network.
        """
        if perturb or return_features:
            raise ValueError("feature perturbation and returned features need "
                             "arch='semisegdefect'")
        return SegOutput(logits=self.net(self.normalize(x)))


def _smp_class(name: str) -> Callable[..., nn.Module]:
    import segmentation_models_pytorch as smp

    return {"deeplabv3plus": smp.DeepLabV3Plus, "fpn": smp.FPN}[name]


def create_model(arch: str = "semisegdefect", encoder: str = "convnext_tiny",
                 num_classes: int = NUM_CLASSES, pretrained: PretrainedSpec = None,
                 **kwargs: Any) -> nn.Module:
    """Build a segmentation network by name.

    Args:
        arch: ``"semisegdefect"`` (:class:`SemiSegDefect`), ``"deeplabv3plus"``
            or ``"fpn"`` (smp baselines).
        encoder: timm model name, e.g. ``"convnext_large"`` (the paper's),
            ``"convnext_tiny"``, ``"tf_efficientnet_lite0"``.
        num_classes: output classes.
        pretrained: ``None``, a local state dict path, ``"timm"`` or
            ``"efficientnet-lite0-package"``.
        **kwargs: options of :class:`SemiSegDefect` (``rep_dim``,
            ``rep_source``, ``aspp_rates`` ...) or of the smp class
            (``decoder_atrous_rates``, ``encoder_output_stride`` ...), plus
            ``mean``/``std`` for either.

    Raises:
        ValueError: unknown ``arch`` or ``encoder``.
    """
    key = arch.lower().replace("-", "").replace("_", "")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid: {list(ARCHITECTURES)}")
    if key == "semisegdefect":
        return SemiSegDefect(encoder, num_classes=num_classes, pretrained=pretrained, **kwargs)
    pyramid_out_indices(encoder)  # a clear ValueError for unknown names, before smp's
    return SmpSegmentationModel(_smp_class(key), encoder, num_classes, pretrained, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers excluded), optionally trainable only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ARCHITECTURES", "SmpSegmentationModel", "count_parameters", "create_model"]

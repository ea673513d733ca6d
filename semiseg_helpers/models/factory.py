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
from semiseg_helpers.models.depthwise import use_fast_depthwise
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


def smp_arguments(arch: str, decoder_channels: int | None = None,
                  aspp_rates: Sequence[int] | None = None,
                  output_stride: int | None = None) -> dict[str, Any]:
    """The package's decoder options in smp's words, for ``arch``.

    * DeepLabv3+: ``decoder_channels``, ``decoder_atrous_rates``,
      ``encoder_output_stride`` (smp allows 8 or 16). Its ASPP stays
      depth-wise separable, as DeepLabv3+'s authors build it.
    * FPN: the pyramid is ``decoder_channels`` wide and the segmentation
      branch half as wide (smp's 256/128 ratio). FPN has no ASPP and always
      uses the whole pyramid, down to 1/32.

    Raises:
        ValueError: an option ``arch`` does not have, or a value smp does not support.
    """
    given = {"decoder_channels": decoder_channels, "aspp_rates": aspp_rates,
             "output_stride": output_stride}
    if arch == "deeplabv3plus":
        if output_stride is not None and output_stride not in (8, 16):
            raise ValueError(f"smp's DeepLabV3Plus supports output_stride 8 or 16, "
                             f"got {output_stride}")
        mapped = {"decoder_channels": decoder_channels,
                  "decoder_atrous_rates": None if aspp_rates is None else tuple(aspp_rates),
                  "encoder_output_stride": output_stride}
    elif arch == "fpn":
        extra = [k for k in ("aspp_rates", "output_stride") if given[k] is not None]
        if extra:
            raise ValueError(f"the FPN baseline has no {', '.join(extra)}")
        if decoder_channels is not None and decoder_channels % 64:
            raise ValueError(f"the FPN baseline needs decoder_channels a multiple of 64 (its "
                             f"segmentation branch, half as wide, uses GroupNorm with 32 "
                             f"groups); got {decoder_channels}")
        mapped = {} if decoder_channels is None else {
            "decoder_pyramid_channels": decoder_channels,
            "decoder_segmentation_channels": max(decoder_channels // 2, 1)}
    else:
        raise ValueError(f"{arch!r} is not an smp architecture")
    return {k: v for k, v in mapped.items() if v is not None}


def create_model(arch: str = "semisegdefect", encoder: str = "convnext_tiny",
                 num_classes: int = NUM_CLASSES, pretrained: PretrainedSpec = None,
                 decoder_channels: int | None = None, aspp_rates: Sequence[int] | None = None,
                 output_stride: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a segmentation network by name.

    Args:
        arch: ``"semisegdefect"`` (:class:`SemiSegDefect`), ``"deeplabv3plus"``
            or ``"fpn"`` (smp baselines).
        encoder: timm model name, e.g. ``"convnext_large"`` (the paper's),
            ``"convnext_tiny"``, ``"tf_efficientnet_lite0"``.
        num_classes: output classes.
        pretrained: ``None``, a local state dict path, ``"timm"`` or
            ``"efficientnet-lite0-package"``.
        decoder_channels, aspp_rates, output_stride: the decoder options the
            architectures share, mapped onto smp's arguments for the
            baselines (:func:`smp_arguments`); ``None``: the architecture's
            default.
        **kwargs: further options of :class:`SemiSegDefect` (``rep_dim``,
            ``rep_source`` ...) or of the smp class, plus ``mean``/``std``.

    Raises:
        ValueError: unknown ``arch`` or ``encoder``, or an option the
            architecture does not have.
    """
    key = arch.lower().replace("-", "").replace("_", "")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid: {list(ARCHITECTURES)}")
    if key == "semisegdefect":
        shared = {"decoder_channels": decoder_channels, "aspp_rates": aspp_rates,
                  "output_stride": output_stride}
        model = SemiSegDefect(encoder, num_classes=num_classes, pretrained=pretrained,
                              **{k: v for k, v in shared.items() if v is not None}, **kwargs)
        use_fast_depthwise(model)
        return model
    for option in ("rep_dim", "rep_source"):
        if kwargs.get(option) is not None:
            raise ValueError(f"{option} needs arch='semisegdefect'; the {arch} baseline has "
                             "no representation head")
        kwargs.pop(option, None)
    pyramid_out_indices(encoder)  # a clear ValueError for unknown names, before smp's
    model = SmpSegmentationModel(_smp_class(key), encoder, num_classes, pretrained,
                                 **smp_arguments(key, decoder_channels, aspp_rates,
                                                 output_stride), **kwargs)
    use_fast_depthwise(model)
    return model


def decoder_parameters(model: nn.Module) -> int:
    """Parameter elements outside the encoder (and its input normalisation):
    decoder, heads and classifier."""
    encoder = model.net.encoder if isinstance(model, SmpSegmentationModel) else model.encoder
    inside = {id(p) for p in encoder.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in inside)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers excluded), optionally trainable only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ARCHITECTURES", "SmpSegmentationModel", "count_parameters", "create_model",
           "decoder_parameters", "smp_arguments"]

"""The Semi-SegDefect network: ConvNeXt encoder, DeepLabv3+ decoder, and a
representation head for the pixel contrastive loss.

::

    x in [0, 1] ──encoder──> f1 (1/4) ─────────── 1x1 conv → 48 ch ──┐
                             f4 (1/16) ─ ASPP → 256 ch ─ up 4x ──────┴─ concat (304 ch, 1/4)
                                                                           │
                   ┌───────────────────────────────────────────────────────┤
          3x3 conv → classifier → up to input      3x3 conv → BN → ReLU → 1x1 conv
                   = logits (B, C, H, W)              = rep (B, 256, H/4, W/4)

The student and the mean teacher share this architecture. Every convolution
of the decoder except the two final 1x1 projections is conv + BN + ReLU.

Output stride: the paper up-samples the ASPP output 4x to meet the 1/4
features, so ASPP runs at 1/16 — DeepLabv3+'s output stride 16, where the
encoder's last stage is dilated instead of strided (timm's
``output_stride``). ``output_stride=32`` keeps the plain encoder (ASPP at
1/32, up-sampled 8x); 8 dilates the last two stages.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.models.encoders import PretrainedSpec, TimmEncoder

RepSource = Literal["decoder", "encoder", None]
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
REP_SOURCES: tuple[str, ...] = ("decoder", "encoder")


class SegOutput(NamedTuple):
    """What every segmentation model of the package returns.

    Attributes:
        logits: ``(B, num_classes, H, W)`` at input resolution.
        rep: per-pixel embeddings ``(B, rep_dim, H/4, W/4)`` for the
            contrastive loss; ``None`` for models without one.
        features: the encoder pyramid (strides 4/8/16/32), only on request.
        logits_fp: logits from dropout-perturbed encoder features
            (``forward(x, perturb=True)``, UniMatch's feature perturbation).
    """

    logits: Tensor
    rep: Tensor | None = None
    features: list[Tensor] | None = None
    logits_fp: Tensor | None = None


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1,
                 dilation: int = 1) -> nn.Sequential:
    """Conv (no bias: BN follows) + BN + ReLU, padded to keep the size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches, fused by 1x1 conv.

    Branches: a 1x1 conv, one 3x3 conv per dilation rate, and image pooling
    (global average, 1x1 conv, broadcast back). A rate wider than the map
    puts the dilated taps into the zero padding, so that branch sees little
    more than its centre pixel: DeepLab's 6/12/18 are made for the 32x32 map
    of a 512 px input at output stride 16; :func:`atrous_rates` scales them
    to other map sizes.

    The pooling branch's BatchNorm normalises one value per image and channel:
    in training mode it needs a batch of at least 2.
    """

    def __init__(self, in_channels: int, out_channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        if len(rates) == 0 or min(rates) < 1:
            raise ValueError(f"aspp_rates must be positive dilations, got {tuple(rates)}")
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, out_channels, 1)]
            + [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                        conv_bn_relu(in_channels, out_channels, 1))
        self.project = conv_bn_relu(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # Bilinear up-sampling of a 1x1 map is a broadcast; expand is exact and free.
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest level joined with the compressed 1/4 level.

    The ASPP output is resized to the 1/4 map's size: up-sampled 4x at output
    stride 16 (the paper's geometry), 8x at 32.

    ``forward`` returns the concatenation (``concat_channels``, the input of
    both classifier and representation head) and the fused 3x3 conv output.
    """

    def __init__(self, low_channels: int, high_channels: int, channels: int = 256,
                 low_level_channels: int = 48, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels, channels, rates)
        self.low_proj = conv_bn_relu(low_channels, low_level_channels, 1)
        self.concat_channels = channels + low_level_channels
        self.fuse = conv_bn_relu(self.concat_channels, channels, 3)

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.low_proj(low)
        context = F.interpolate(self.aspp(high), size=skip.shape[-2:], mode="bilinear",
                                align_corners=False)
        concat = torch.cat([context, skip], dim=1)
        return concat, self.fuse(concat)


DEEPLAB_RATES: tuple[int, ...] = (6, 12, 18)
"""DeepLab's atrous rates, for the 32x32 map of a 512 px crop at output stride 16."""


def atrous_rates(crop_size: int, output_stride: int = 16,
                 reference: Sequence[int] = DEEPLAB_RATES) -> tuple[int, ...]:
    """DeepLab's rates scaled to the ASPP map of ``crop_size`` at ``output_stride``.

    The rates grow in proportion to the map's side (``crop_size /
    output_stride`` against DeepLab's 32), so each branch covers the same
    share of the map as at 512 px: 6/12/18 on 32x32, 2/4/6 on the 10x10 map
    of a 160 px crop, 1/2/3 on 6x6 (96 px). Rounded, at least 1 and strictly
    increasing, so no two branches collapse into one.
    """
    if crop_size < 1 or output_stride < 1:
        raise ValueError(f"crop_size and output_stride must be positive, got {crop_size}, "
                         f"{output_stride}")
    scale = crop_size / output_stride / 32
    rates: list[int] = []
    for r in reference:
        rates.append(max(round(r * scale), rates[-1] + 1 if rates else 1))
    return tuple(rates)


def representation_head(in_channels: int, rep_dim: int = 256) -> nn.Sequential:
    """ReCo's decoder representation network: 3x3 conv, BN, ReLU, 1x1 conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, rep_dim, 1),
    )


class SemiSegDefect(nn.Module):
    """ConvNeXt + DeepLabv3+ segmentation network with a representation head.

    Args:
        encoder: a timm model name or a built :class:`TimmEncoder`. The paper
            uses ConvNeXt with the 192-channel stem, ``"convnext_large"``.
        num_classes: output classes (default: the package's class schema).
        pretrained: encoder weights when ``encoder`` is a name (see
            :mod:`semiseg_helpers.models.encoders`).
        rep_dim: embedding size of the representation head.
        rep_source: ``"decoder"`` (the paper's representation network),
            ``"encoder"`` (Table 7's alternative): the last encoder level
            (the most semantic one) bilinearly resized to the 1/4 grid, so
            the contrastive loss sees the same pixels either way; ``rep_dim``
            is then the encoder's last channel count and no head is built —
            or ``None``: no representation at all (a network trained without
            the contrastive loss; ``rep`` is then ``None``).
        aspp_rates: ASPP dilations (DeepLab's 6/12/18, for 512 px inputs at
            output stride 16; :func:`atrous_rates` fits them to other sizes).
        output_stride: 16 (the paper: the encoder's last stage dilated), 32
            (the plain encoder) or 8; the encoder must support dilation
            through timm's ``output_stride``.
        decoder_channels: width of ASPP and the fused decoder map.
        low_level_channels: channels the 1/4 features are compressed to.
        fp_dropout: channel dropout rate of ``forward(perturb=True)``.
        mean, std, **encoder_kwargs: passed to :class:`TimmEncoder`.

    In training mode the batch must hold at least 2 images: ASPP's image
    pooling branch applies BatchNorm to one value per image and channel.
    """

    def __init__(self, encoder: str | TimmEncoder = "convnext_tiny",
                 num_classes: int = NUM_CLASSES, pretrained: PretrainedSpec = None,
                 rep_dim: int = 256, rep_source: RepSource = "decoder",
                 aspp_rates: Sequence[int] = (6, 12, 18), decoder_channels: int = 256,
                 low_level_channels: int = 48, fp_dropout: float = 0.5,
                 output_stride: int = 16,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **encoder_kwargs: Any) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if rep_source is not None and rep_source not in REP_SOURCES:
            raise ValueError(f"rep_source must be one of {REP_SOURCES}, got {rep_source!r}")
        if not 0.0 <= fp_dropout < 1.0:
            raise ValueError(f"fp_dropout must be in [0, 1), got {fp_dropout}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if isinstance(encoder, str):
            if output_stride != 32:
                encoder_kwargs["output_stride"] = output_stride
            encoder = TimmEncoder(encoder, pretrained=pretrained, mean=mean, std=std,
                                  **encoder_kwargs)
        elif (pretrained not in (None, "none") or encoder_kwargs
              or mean is not None or std is not None):
            raise ValueError("pretrained/encoder options apply only when encoder is a name")
        if encoder.reductions[-1] != output_stride:
            raise ValueError(f"the encoder's deepest level is at stride {encoder.reductions[-1]}, "
                             f"not the output_stride {output_stride} asked")
        self.encoder = encoder
        low_channels, high_channels = encoder.out_channels[0], encoder.out_channels[-1]
        self.decoder = DeepLabV3PlusDecoder(low_channels, high_channels, decoder_channels,
                                            low_level_channels, aspp_rates)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.representation = (representation_head(self.decoder.concat_channels, rep_dim)
                                if rep_source == "decoder" else None)
        self.num_classes = num_classes
        self.rep_source = rep_source
        self.rep_dim = {"decoder": rep_dim, "encoder": high_channels}.get(rep_source)
        self.output_stride = encoder.reductions[-1]
        self.fp_dropout = fp_dropout

    def forward(self, x: Tensor, perturb: bool = False, return_features: bool = False,
                return_rep: bool = True) -> SegOutput:
        """Segment ``x`` ``(B, 3, H, W)``, float in [0, 1].

        With ``perturb=True`` the encoder runs once; its two decoder inputs
        are doubled along the batch, the second copy through channel dropout
        (``Dropout2d(fp_dropout)``, applied even in eval mode since it was
        asked for), and the decoder runs once on both: ``logits`` are the
        clean predictions, ``logits_fp`` the perturbed ones. ``rep`` always
        comes from the clean features. ``return_rep=False`` skips the
        representation head (e.g. for a teacher that only labels pixels).
        """
        features = self.encoder(x)
        low, high = features[0], features[-1]
        if perturb:
            low = torch.cat([low, F.dropout2d(low, self.fp_dropout, training=True)])
            high = torch.cat([high, F.dropout2d(high, self.fp_dropout, training=True)])
        concat, fused = self.decoder(low, high)
        logits = F.interpolate(self.classifier(fused), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        logits_fp = None
        if perturb:
            logits, logits_fp = logits.chunk(2)
        rep = None
        if return_rep and self.rep_source is not None:
            rep = self._representation(concat[: x.shape[0]], features)
        return SegOutput(logits=logits, rep=rep,
                         features=features if return_features else None, logits_fp=logits_fp)

    def _representation(self, concat: Tensor, features: list[Tensor]) -> Tensor:
        """Embeddings on the 1/4 grid, from the decoder head or the encoder."""
        if self.representation is not None:
            return self.representation(concat)
        return F.interpolate(features[-1], size=features[0].shape[-2:], mode="bilinear",
                             align_corners=False)


__all__ = ["ASPP", "DEEPLAB_RATES", "DeepLabV3PlusDecoder", "OUTPUT_STRIDES", "REP_SOURCES",
           "RepSource", "SegOutput", "SemiSegDefect", "atrous_rates", "conv_bn_relu",
           "representation_head"]

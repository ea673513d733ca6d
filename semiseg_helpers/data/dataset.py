"""Torch datasets over a prepared manifest, and resumable infinite batches.

Workers only decode PNGs into ``uint8`` tensors; every augmentation runs
later, batched on the training device (:mod:`semiseg_helpers.augment`).
Samples of different sizes are padded to the batch's largest (image 0, mask
``IGNORE_INDEX``), which the augmentations treat as outside the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from semiseg_helpers.classes import IGNORE_INDEX


class ManifestDataset(Dataset):
    """Samples of a prepared dataset as ``{"image": uint8 (3,H,W), "mask": uint8 (H,W),
    "index": int, "source": int}``.

    ``mask`` is all-``IGNORE_INDEX`` for unlabelled samples, so labelled and
    unlabelled batches share one collate function. ``source`` numbers the
    photos the samples were cut from, in order of first appearance: tiles of
    one photo share it (a sample without ``source_image`` is its own photo).
    """

    def __init__(self, root: str | Path, samples: Sequence[dict]):
        self.root = Path(root)
        self.samples = list(samples)
        ranks: dict[str, int] = {}
        self.sources = [ranks.setdefault(s.get("source_image") or s["image"], len(ranks))
                        for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        with Image.open(self.root / s["image"]) as im:
            image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        if s["mask"] is None:
            mask = torch.full(image.shape[1:], IGNORE_INDEX, dtype=torch.uint8)
        else:
            with Image.open(self.root / s["mask"]) as im:
                mask = torch.from_numpy(np.array(im))
        return {"image": image, "mask": mask, "index": i, "source": self.sources[i]}


def pad_collate(batch: list[dict]) -> dict:
    """Stack samples, padding each to the largest height and width in the batch."""
    h = max(b["image"].shape[1] for b in batch)
    w = max(b["image"].shape[2] for b in batch)
    images = torch.zeros(len(batch), 3, h, w, dtype=torch.uint8)
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.uint8)
    for k, b in enumerate(batch):
        _, bh, bw = b["image"].shape
        images[k, :, :bh, :bw] = b["image"]
        masks[k, :bh, :bw] = b["mask"]
    return {"image": images, "mask": masks,
            "index": torch.tensor([b["index"] for b in batch]),
            "source": torch.tensor([b["source"] for b in batch]),
            "size": torch.tensor([b["image"].shape[1:] for b in batch])}


class StreamBatchSampler:
    """An endless stream of batches, exactly reproducible from any step.

    The stream is the concatenation of seeded per-epoch permutations of the
    dataset; batch ``k`` is items ``k*B ... (k+1)*B - 1`` of it. Starting at
    ``start_batch`` gives the same batches a run from zero would have seen
    there, which is what makes an interrupted run resume to the same result.
    Works for datasets smaller than the batch (items then repeat in a batch
    across epoch boundaries).

    ``share=(k, n)`` yields only the ``k``-th of ``n`` equal slices of each
    batch (one rank's part of a data-parallel batch): the ``n`` shares of
    step ``s`` together are exactly batch ``s`` of the whole stream.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_batch: int = 0,
                 share: tuple[int, int] = (0, 1)):
        if n <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        part, parts = share
        if not 0 <= part < parts or batch_size % parts:
            raise ValueError(f"share {share}: needs 0 <= k < n and a batch size ({batch_size}) "
                             "divisible by n")
        self.n, self.batch_size, self.seed, self.start_batch = n, batch_size, seed, start_batch
        per = batch_size // parts
        self.rows = slice(part * per, (part + 1) * per)

    def _epoch(self, e: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_batch * self.batch_size
        epoch, offset = divmod(position, self.n)
        perm = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    perm = self._epoch(epoch)
                take = min(self.batch_size - len(batch), self.n - offset)
                batch += perm[offset:offset + take].tolist()
                offset += take
            yield batch[self.rows]


def stream_loader(dataset: Dataset, batch_size: int, seed: int, start_batch: int = 0,
                  workers: int = 0, share: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """An endless iterator of padded batches starting at ``start_batch``
    (of ``batch_size``, or this rank's ``share`` of it: :class:`StreamBatchSampler`).

    The loader draws its workers' base seed from a generator of its own,
    seeded by ``seed`` and ``start_batch``: making the iterator never touches
    the global torch RNG, which dropout in the networks draws from, so a run
    resumed from a checkpoint continues the same random sequence.
    """
    sampler = StreamBatchSampler(len(dataset), batch_size, seed, start_batch, share)
    generator = torch.Generator().manual_seed(seed * 100_003 + start_batch)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=pad_collate,
                        num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None, generator=generator)
    return iter(loader)


def eval_loader(dataset: Dataset, workers: int = 0) -> DataLoader:
    """One pass over ``dataset``, one image at a time (sizes may differ)."""
    return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=pad_collate,
                      num_workers=workers)

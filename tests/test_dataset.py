"""Batches from a prepared dataset: padding collate and the resumable stream."""

import itertools

import torch

from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.data.dataset import ManifestDataset, StreamBatchSampler, pad_collate
from semiseg_helpers.data.prepare import load_manifest, select_samples


def test_stream_resumes_exactly_and_covers_each_epoch():
    full = list(itertools.islice(iter(StreamBatchSampler(10, 4, seed=3)), 12))
    resumed = list(itertools.islice(iter(StreamBatchSampler(10, 4, seed=3, start_batch=7)), 5))
    assert resumed == full[7:]
    flat = [i for b in full for i in b]
    for epoch in range(4):  # 48 items = 4 epochs of 10, then 8 more
        assert sorted(flat[10 * epoch:10 * epoch + 10]) == list(range(10))
    assert full != list(itertools.islice(iter(StreamBatchSampler(10, 4, seed=4)), 12))


def test_stream_smaller_than_batch():
    batch = next(iter(StreamBatchSampler(3, 8, seed=0)))
    assert len(batch) == 8 and set(batch) == {0, 1, 2}


def test_pad_collate_pads_images_with_zero_and_masks_with_ignore():
    a = {"image": torch.full((3, 4, 5), 7, dtype=torch.uint8),
         "mask": torch.ones(4, 5, dtype=torch.uint8), "index": 0, "source": 0}
    b = {"image": torch.full((3, 6, 3), 9, dtype=torch.uint8),
         "mask": torch.zeros(6, 3, dtype=torch.uint8), "index": 1, "source": 0}
    out = pad_collate([a, b])
    assert out["image"].shape == (2, 3, 6, 5)
    assert (out["image"][0, :, 4:] == 0).all() and (out["mask"][0, 4:] == IGNORE_INDEX).all()
    assert (out["mask"][1, :, 3:] == IGNORE_INDEX).all() and (out["mask"][1, :, :3] == 0).all()
    assert out["size"].tolist() == [[4, 5], [6, 3]]
    assert out["index"].tolist() == [0, 1] and out["source"].tolist() == [0, 0]


def test_tiles_of_one_photo_share_their_source_rank(tmp_path):
    samples = [{"image": f"images/{n}.png", "mask": None, "source_image": src}
               for n, src in (("a0", "A.jpg"), ("b0", "B.jpg"), ("a1", "A.jpg"), ("c0", None))]
    assert ManifestDataset(tmp_path, samples).sources == [0, 1, 0, 2]


def test_manifest_dataset_reads_prepared_samples(synthetic_prepared):
    m = load_manifest(synthetic_prepared)
    samples = select_samples(m, "val")
    item = ManifestDataset(m["root"], samples)[0]
    assert item["image"].shape == (3, 96, 96) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (96, 96) and int(item["mask"].max()) <= 3

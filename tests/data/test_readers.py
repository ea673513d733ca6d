"""Readers: the real layouts in ../shared/data and small made-up files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from semiseg_helpers.classes import IGNORE_INDEX, class_index
from semiseg_helpers.data.readers import (
    BinaryMaskReader,
    ColourMaskReader,
    DataError,
    FolderReader,
    VocPaletteReader,
    open_source,
    read_class_file,
    write_class_file,
)
from tests.conftest import random_image, shared_dataset, write_rgb

CRACK, SPALL, REBAR = (class_index(c) for c in ("crack", "spalling", "rebar"))


# --------------------------------------------------------------------------- #
# Real data


@pytest.mark.realdata
def test_peerhub_palette_masks_hold_crack_and_spalling():
    reader = open_source("peerhub", shared_dataset("peerhub_crack_spalling"))
    samples = reader.samples()
    assert len(samples) == 2192
    assert reader.classes == ("background", "crack", "spalling")
    image, mask = reader.load(next(s for s in samples if s.name == "2022_1"))
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    assert mask.shape == (224, 224)
    raw = np.asarray(Image.open(samples[0].mask.parent / "2022_1.png"))
    # palette index 1 is crack and 2 spalling in the source: mapped one-to-one here
    np.testing.assert_array_equal(mask == CRACK, raw == 1)
    np.testing.assert_array_equal(mask == SPALL, raw == 2)
    assert (mask == CRACK).any() and (mask == SPALL).any()


@pytest.mark.realdata
def test_mdmcs_colours_map_to_rebar_and_corrosion_to_ignore():
    root = shared_dataset("mdmcs_mini")
    reader = open_source("mdmcs", root)
    samples = reader.samples()
    assert len(samples) == 36
    found = {c: False for c in ("crack", "spalling", "rebar", "ignore")}
    for s in samples[:36]:
        _, mask = reader.load(s)
        rgb = np.asarray(Image.open(s.mask).convert("RGB"))
        corrosion = (rgb == (0, 255, 255)).all(axis=2)
        assert (mask[corrosion] == IGNORE_INDEX).all()
        assert (mask[(rgb == (0, 255, 0)).all(axis=2)] == REBAR).all()
        found["rebar"] |= bool((mask == REBAR).any())
        found["crack"] |= bool((mask == CRACK).any())
        found["spalling"] |= bool((mask == SPALL).any())
        found["ignore"] |= bool(corrosion.any())
    assert all(found.values()), found


@pytest.mark.realdata
def test_mdmcs_corrosion_can_be_counted_as_background():
    table = dict(ColourMaskReader.DEFAULT_TABLE)
    table[(0, 255, 255)] = "background"
    reader = ColourMaskReader(shared_dataset("mdmcs_mini"), class_table=table)
    _, mask = reader.load(reader.samples()[0])
    assert IGNORE_INDEX not in mask


@pytest.mark.realdata
def test_deepcrack_threshold_and_source_split():
    reader = open_source("deepcrack", shared_dataset("deepcrack"))
    samples = reader.samples()
    assert {s.source_split for s in samples} == {"train", "test"}
    assert sum(s.source_split == "train" for s in samples) == 300
    image, mask = reader.load(samples[0])
    grey = np.asarray(Image.open(samples[0].mask).convert("L"))
    np.testing.assert_array_equal(mask == CRACK, grey > 127)
    assert set(np.unique(mask)) <= {0, CRACK}
    assert 0 < (mask == CRACK).mean() < 0.2


# --------------------------------------------------------------------------- #
# Made-up files


def test_voc_palette_reader(tmp_path):
    rng = np.random.default_rng(1)
    write_rgb(tmp_path / "JPEGImages" / "a.jpg", random_image(rng, 10, 12))
    mask = np.zeros((10, 12), np.uint8)
    mask[2, :] = 1
    mask[5:8, 5:8] = 2
    mask[0, 0] = 255  # VOC void border
    m = Image.fromarray(mask, mode="P")
    m.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    (tmp_path / "SegmentationClassPNG").mkdir()
    m.save(tmp_path / "SegmentationClassPNG" / "a.png")
    reader = VocPaletteReader(tmp_path)
    _, out = reader.load(reader.samples()[0])
    assert out[2, 3] == CRACK and out[6, 6] == SPALL and out[0, 0] == IGNORE_INDEX


def test_folder_reader_reads_labelled_and_unlabelled(folder_source):
    reader = FolderReader(folder_source)
    samples = reader.samples()
    assert sum(s.mask is not None for s in samples) == 12
    assert sum(s.mask is None for s in samples) == 2
    image, mask = reader.load(samples[0])
    assert mask[6, 0] == CRACK and mask[25, 15] == SPALL
    assert reader.load(samples[-1])[1] is None


def test_folder_reader_colour_class_file(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[1, :] = (255, 0, 0)
    rgb[4, :] = (9, 9, 9)
    write_rgb(tmp_path / "images" / "x.png", rgb)
    write_rgb(tmp_path / "masks" / "x.png", rgb)
    write_class_file(tmp_path / "classes.txt", {(0, 0, 0): "background", (255, 0, 0): "crack",
                                                (9, 9, 9): "ignore"})
    reader = FolderReader(tmp_path)
    _, mask = reader.load(reader.samples()[0])
    assert (mask[1] == CRACK).all() and (mask[4] == IGNORE_INDEX).all() and mask[0, 0] == 0


def test_class_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "classes.txt"
    write_class_file(path, {0: "background", 7: "crack", 255: "ignore"})
    assert read_class_file(path) == ({0: "background", 7: "crack", 255: "ignore"}, False)
    path.write_text("0 background\n1 corrosion\n")
    with pytest.raises(DataError, match="corrosion"):
        FolderReader(tmp_path)
    path.write_text("0 background\n255,0,0 crack\n")
    with pytest.raises(DataError, match="mixes"):
        read_class_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(DataError, match="empty"):
        read_class_file(path)


def test_binary_reader_on_noisy_grey(tmp_path):
    rng = np.random.default_rng(2)
    grey = np.where(np.arange(20)[None, :].repeat(8, 0) % 5 == 0, 250, 5).astype(np.int16)
    grey = np.clip(grey + rng.integers(-4, 5, grey.shape), 0, 255).astype(np.uint8)
    write_rgb(tmp_path / "train_img" / "p.jpg", random_image(rng, 8, 20))
    write_rgb(tmp_path / "train_lab" / "p.png", np.repeat(grey[..., None], 3, axis=2))
    reader = BinaryMaskReader(tmp_path, threshold=127)
    _, mask = reader.load(reader.samples()[0])
    np.testing.assert_array_equal(mask == CRACK, grey > 127)


# --------------------------------------------------------------------------- #
# Bad input: each error names the file and what is wrong


def test_corrupt_image_is_named(folder_source):
    bad = folder_source / "images" / "img03.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    reader = FolderReader(folder_source)
    sample = next(s for s in reader.samples() if s.name == "img03")
    with pytest.raises(DataError, match="img03.jpg"):
        reader.load(sample)


def test_not_an_image_is_named(folder_source):
    (folder_source / "images" / "img04.jpg").write_text("not a jpeg")
    reader = FolderReader(folder_source)
    with pytest.raises(DataError, match="img04.jpg: cannot read image"):
        reader.load(next(s for s in reader.samples() if s.name == "img04"))


def test_missing_mask_is_named(folder_source):
    (folder_source / "masks" / "img07.png").unlink()
    with pytest.raises(DataError, match=r"img07\.jpg: no mask"):
        FolderReader(folder_source).samples()


def test_mask_of_other_size_is_named(folder_source):
    Image.fromarray(np.zeros((39, 48), np.uint8), mode="L").save(
        folder_source / "masks" / "img02.png")
    reader = FolderReader(folder_source)
    with pytest.raises(DataError, match=r"img02\.png: mask is 48x39 but its image"):
        reader.load(next(s for s in reader.samples() if s.name == "img02"))


def test_unknown_mask_value_names_file_and_values(folder_source):
    mask = np.zeros((40, 48), np.uint8)
    mask[0, :5] = 9
    Image.fromarray(mask, mode="L").save(folder_source / "masks" / "img01.png")
    reader = FolderReader(folder_source)
    with pytest.raises(DataError, match=r"img01\.png: mask values not in the class table .*9 \(5 px\)"):
        reader.load(next(s for s in reader.samples() if s.name == "img01"))


def test_unknown_colour_names_file_and_colour(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    write_rgb(tmp_path / "images" / "c.jpg", rgb)
    write_rgb(tmp_path / "masks" / "c.png", rgb)
    reader = ColourMaskReader(tmp_path)
    with pytest.raises(DataError, match=r"c\.png: mask colours not in the colour table: \(1, 2, 3\) \(1 px\)"):
        reader.load(reader.samples()[0])
    assert ColourMaskReader(tmp_path, tolerance=3).load(reader.samples()[0])[1].max() == 0


def test_missing_folders_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="source folder not found"):
        open_source("peerhub", tmp_path / "nope")
    with pytest.raises(DataError, match="JPEGImages"):
        open_source("peerhub", tmp_path).samples()
    with pytest.raises(DataError, match="unknown dataset 'pascal'"):
        open_source("pascal", tmp_path)


# --------------------------------------------------------------------------- #
# Photos as users have them (what ``semiseg predict`` reads)


def test_16_bit_and_float_images_are_scaled_not_clamped(tmp_path):
    from semiseg_helpers.data.readers import load_image, to_rgb8

    ramp = (np.arange(256 * 4, dtype=np.uint32).reshape(16, 64) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")          # mode I;16
    rgb = load_image(tmp_path / "deep.png")
    assert rgb.shape == (16, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 257).astype(np.uint8))
    assert 0 < (rgb == 255).mean() < 0.01                       # PIL's convert: 99 % white
    as_float = Image.fromarray((ramp / 65535).astype(np.float32))  # mode F, 0..1
    np.testing.assert_array_equal(to_rgb8(as_float)[..., 1], rgb[..., 1])
    with pytest.raises(DataError, match="bad.tif.*0..1"):
        to_rgb8(Image.fromarray(np.full((4, 4), 7.5, np.float32)), "bad.tif")


def test_exif_orientation_only_on_request(tmp_path):
    from semiseg_helpers.data.readers import load_image

    stored = np.zeros((10, 30, 3), np.uint8)
    stored[:, :5] = 255                                          # bright left edge
    exif = Image.Exif()
    exif[0x0112] = 8                                             # "rotate 90 ccw to view"
    Image.fromarray(stored).save(tmp_path / "p.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), stored)
    upright = load_image(tmp_path / "p.png", exif_orientation=True)
    np.testing.assert_array_equal(upright, np.rot90(stored))     # bright edge at the bottom


def test_image_files_skip_hidden_and_other_files(tmp_path):
    from semiseg_helpers.data.readers import image_files

    for name in ("b.JPG", "a.png", "._a.png", ".DS_Store", "notes.txt", "c.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.JPG", "c.tiff"]
    assert image_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]  # asked for by name
    with pytest.raises(DataError, match="no images"):
        image_files(tmp_path / "dir.png")
    with pytest.raises(DataError, match="no such file"):
        image_files(tmp_path / "missing")


def test_class_mask_by_name_or_schema(tmp_path):
    from semiseg_helpers.data.readers import load_class_mask

    Image.fromarray(np.array([[0, 1, 3, 255]], np.uint8), mode="L").save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_class_mask(tmp_path / "m.png"), [[0, 1, 3, 255]])
    (tmp_path / "classes.txt").write_text("0 background\n1 spalling\n3 crack\n255 ignore\n")
    np.testing.assert_array_equal(load_class_mask(tmp_path / "m.png", tmp_path / "classes.txt"),
                                  [[0, 2, 1, 255]])
    Image.fromarray(np.array([[0, 7]], np.uint8), mode="L").save(tmp_path / "bad.png")
    with pytest.raises(DataError, match="bad.png.*7"):
        load_class_mask(tmp_path / "bad.png")

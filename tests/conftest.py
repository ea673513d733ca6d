"""Shared fixtures: where the third-party datasets are, and tiny made-up sources."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import semiseg_helpers  # noqa: F401  (torchvision fix before timm/smp imports)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SEMISEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path of a third-party dataset in ../shared/data; skip the test if absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not available (set SEMISEG_SHARED_DATA)")
    return path


def write_rgb(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder_source(tmp_path) -> Path:
    """A generic-layout source: 12 labelled 40x48 images (3 classes), 2 unlabelled."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    (root / "masks").mkdir(parents=True)
    for i in range(12):
        mask = np.zeros((40, 48), np.uint8)
        mask[5:8, :] = 1 if i % 2 == 0 else 0          # a thin "crack" in half of them
        mask[20:30, 10:20] = 2 if i % 3 == 0 else 0    # "spalling" in a third
        if i == 5:
            mask[22:26, 12:16] = 3                     # one rebar image
        write_rgb(root / "images" / f"img{i:02d}.jpg", random_image(rng, 40, 48))
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i:02d}.png")
    for i in range(2):
        write_rgb(root / "unlabeled" / f"u{i}.png", random_image(rng, 40, 48))
    (root / "classes.txt").write_text("0 background\n1 crack\n2 spalling\n3 rebar\n")
    return root


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic dataset shared by the training tests (72 images, 96 px)."""
    from semiseg_helpers.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("synthetic") / "prepared"
    return prepare_dataset("synthetic", out, crop_size=512, label_fractions=[0.1, 0.2, 0.5],
                           progress=False, synthetic_options={"n_labeled": 72, "size": 96})


@pytest.fixture
def holder():
    """``hold(folder) -> Popen``: another process takes the run folder's lock
    (:meth:`~semiseg_helpers.runs.RunDir.lock`) and keeps it until killed (at
    the test's end, if not before)."""
    started = []

    def hold(folder):
        code = textwrap.dedent(f"""
            import time
            from semiseg_helpers.runs import RunDir
            with RunDir({str(folder)!r}).lock():
                print("held", flush=True)
                time.sleep(600)
            """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- #
# Test workers: `make test` runs `pytest -n <cores> --dist loadfile`.
#
# Each worker is pinned to its share of the cores, and everything it starts
# (training subprocesses, notebook kernels, torchrun) inherits the pin, so the
# workers compute side by side instead of OpenMP thread pools spinning against
# each other on the same cores (training caps its threads at the cores it may
# use). A test file is one unit of work, so its module fixtures are built once;
# the longest files start first, so that the workers finish together.

LONGEST_FIRST = (  # seconds each took in a serial fresh-clone CI run on 2 cores
    "tests/test_smoke_run.py",    # 200-230: the smoke profile's 600 training steps
    "tests/test_ablations.py",    # 130-170: notebooks 02 to 08
    "tests/test_comparison.py",   # 80-160: notebook 09 over 14 runs
    "tests/test_distributed.py",  # 65: torchrun
)


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")          # gw0, gw1, ...
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    if len(cores) >= workers:
        mine = cores[int(worker.removeprefix("gw"))::workers]
        os.sched_setaffinity(0, mine)
        os.environ["OMP_NUM_THREADS"] = str(len(mine))
        import torch

        torch.set_num_threads(len(mine))


def pytest_collection_modifyitems(config, items):
    if "PYTEST_XDIST_WORKER" not in os.environ:     # one process: the usual order
        return
    first = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.relative_to(REPO).as_posix(), len(first)))

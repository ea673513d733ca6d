"""The notebooks executed through papermill with small parameters, reading
back what they recorded (the same path `make demo` takes)."""

import json

import pandas as pd
import pytest

from semiseg_helpers.notebooks import (
    NOTEBOOK_DIR,
    list_notebooks,
    notebook_parameters,
    run_notebook,
)

pytestmark = pytest.mark.slow


def test_every_notebook_takes_the_chain_parameters():
    notebooks = list_notebooks()
    assert [p.stem[:2] for p in notebooks][:2] == ["00", "01"]
    for nb in notebooks:
        params = notebook_parameters(nb)
        assert {"profile", "output_dir", "data_dir"} <= set(params), nb.name


def test_the_demo_leaves_the_ablation_notebooks_out_unless_asked(tmp_path, monkeypatch):
    from semiseg_helpers import notebooks

    ran = []
    monkeypatch.setattr(notebooks, "run_notebook", lambda nb, *a, **k: ran.append(nb.stem[:2]))
    every = [p.stem[:2] for p in list_notebooks()]
    ablations = [p.stem[:2] for p in list_notebooks() if notebooks.is_ablation(p)]
    assert ablations == ["02", "03", "04", "05", "06", "07", "08"]
    notebooks.run_all(tmp_path, progress=False)
    assert ran == [n for n in every if n not in ablations]
    ran.clear()
    notebooks.run_all(tmp_path, progress=False, ablations=True)
    assert ran == every
    ran.clear()
    notebooks.run_all(tmp_path, progress=False, only=["03", "09"])
    assert ran == ["03", "09"]


def test_unknown_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no parameter"):
        run_notebook(NOTEBOOK_DIR / "00_data_preparation.py", tmp_path / "x.ipynb",
                     {"dataset_name": "peerhub"})


@pytest.fixture(scope="module")
def prepared_by_notebook(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb")
    params = {"profile": "smoke", "synthetic_images": 48, "synthetic_size": 96,
              "label_fractions": [0.1, 0.5], "data_dir": str(out / "data"),
              "output_dir": str(out / "00")}
    run_notebook(NOTEBOOK_DIR / "00_data_preparation.py", out / "00" / "00.ipynb", params,
                 progress=False)
    return out


def test_data_preparation_notebook(prepared_by_notebook):
    out = prepared_by_notebook / "00"
    record = json.loads((out / "record.json").read_text())
    assert record["n_samples"] == 48
    assert sum(record["counts"].values()) == 48
    table = pd.read_csv(out / "table1.csv")
    assert list(table["split"]) == ["train", "val", "test", "total"]
    assert table.loc[table["split"] == "total", "images"].item() == 48
    assert table.loc[table["split"] == "total", "crack images"].item() > 0
    assert (out / "table1.md").read_text().startswith("| split |")
    for fig in ("figure4.png", "figure5.png"):
        assert (out / fig).stat().st_size > 10_000
    assert (out / "00.ipynb").is_file()


def test_training_notebook(prepared_by_notebook):
    base = prepared_by_notebook
    params = {"profile": "smoke", "data_dir": str(base / "data"), "label_fraction": 0.5,
              "overrides": {"steps": 4, "eval_every": 2, "checkpoint_every": 2},
              "output_dir": str(base / "01")}
    run_notebook(NOTEBOOK_DIR / "01_train_semisegdefect.py", base / "01" / "01.ipynb", params,
                 progress=False)
    record = json.loads((base / "01" / "record.json").read_text())
    assert record["method"] == "semisegdefect" and record["steps"] == 4
    assert record["best_step"] in (2, 4) and 0 <= record["val_miou"] <= 1
    for fig in ("figure6.png", "figure7.png", "training_curves.png"):
        assert (base / "01" / fig).is_file()
    scores = pd.read_csv(base / "01" / "test_iou.csv")
    assert list(scores["split"]) == ["val", "test"]


def test_notebooks_work_from_the_repository_root_when_opened_in_jupyterlab(tmp_path,
                                                                          monkeypatch):
    from semiseg_helpers.notebooks import work_from_repository_root

    monkeypatch.chdir(NOTEBOOK_DIR)          # where JupyterLab starts a notebook's kernel
    assert work_from_repository_root() == NOTEBOOK_DIR.parent.resolve()
    monkeypatch.chdir(tmp_path)              # papermill / the command line: left alone
    assert work_from_repository_root() == tmp_path.resolve()
    for notebook in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py")):
        assert "work_from_repository_root()" in notebook.read_text(), notebook.name

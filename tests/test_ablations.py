"""Ablations (Tables 2-8): grid files with explicit cases, the paper's claims
checked against hand-made runs, reuse of finished runs by configuration, the
contrastive-cost benchmark, and every ablation notebook end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from semiseg_helpers import ablations
from semiseg_helpers.ablations import (
    Claim,
    ablation_table,
    check_claims,
    direction_sentence,
    display_table,
    effects_table,
    load_ablation,
)
from semiseg_helpers.cli import main
from semiseg_helpers.data.prepare import dataset_fingerprint, load_manifest
from semiseg_helpers.runs import RunDir
from semiseg_helpers.sweep import (
    _copy_run,
    expand_grid,
    load_grid,
    plan,
    reuse_finished,
    run_dir_of,
    train_job,
)

REPO = Path(__file__).resolve().parent.parent
GRIDS = REPO / "grids"
TARGETS = REPO.parent / "shared" / "docs" / "TARGETS.md"
CLASSES = ("crack", "spalling", "rebar")

# --------------------------------------------------------------------------- #
# Grid files


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_grid_file_crosses_its_axes_with_its_cases(tmp_path):
    path = write(tmp_path, """
semi.temperature: [0.1, 0.5]
cases:
  - {label: small, semi.num_anchors: 32, semi.num_negatives: 64}
  - {semi.num_anchors: 256, semi.num_negatives: 512}
paper: {table: 6, note: anything}
""")
    grid = load_grid(path)
    assert grid.axes == {"semi.temperature": [0.1, 0.5]}
    assert grid.labels == ("small", None) and grid.paper == {"table": 6, "note": "anything"}
    assert grid.points() == [
        {"semi.temperature": 0.1, "semi.num_anchors": 32, "semi.num_negatives": 64},
        {"semi.temperature": 0.1, "semi.num_anchors": 256, "semi.num_negatives": 512},
        {"semi.temperature": 0.5, "semi.num_anchors": 32, "semi.num_negatives": 64},
        {"semi.temperature": 0.5, "semi.num_anchors": 256, "semi.num_negatives": 512}]
    quoted = load_grid(write(tmp_path, 'model.encoder: ["1", 1.0e-3]\n', "quoted.yaml"))
    assert quoted.axes == {"model.encoder": ["1", 0.001]}   # a quoted number is a string
    plain = load_grid(write(tmp_path, "semi.num_anchors: [32, 64]\n", "plain.yaml"))
    assert plain.cases is None and plain.points() == [{"semi.num_anchors": 32},
                                                      {"semi.num_anchors": 64}]


@pytest.mark.parametrize("text, where", [
    ("- 1\n", "expected a mapping"),
    ("x: [1\n", "not valid YAML"),
    ("optim.lr: 0.1\n", "optim.lr: expected a non-empty list"),
    ("optim.lr: []\n", "optim.lr: expected a non-empty list"),
    ("optim.lr: [0.1, 1e-3]\n", r"optim\.lr\[1\]: '1e-3' was read as a string"),
    ("cases: {a: 1}\n", "cases: expected a non-empty list"),
    ("cases: []\n", "cases: expected a non-empty list"),
    ("cases: [3]\n", r"cases\[0\]: expected a mapping"),
    ("cases: [{a: 1}, {a: 1}]\n", r"cases\[1\]: the same settings as cases\[0\]"),
    ("x: [1]\ncases: [{x: 2}]\n", r"cases\[0\]\.x: also an axis"),
    ("cases: [{a: 1, label: ''}]\n", r"cases\[0\]\.label: expected a non-empty string"),
    ("cases: [{label: A, a: 1}, {label: A, a: 2}]\n", r"cases\[1\]\.label: 'A' names cases\[0\]"),
    ("cases: [{a: 1.0e-3}, {a: 1e-4}]\n", r"cases\[1\]\.a: '1e-4' was read as a string"),
    ("x: [1]\npaper: [1]\n", "paper: expected a mapping"),
])
def test_a_bad_grid_file_is_refused_naming_the_file_and_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=where) as info:
        load_grid(path)
    assert str(path) in str(info.value)


def test_expand_grid_refuses_a_case_that_sets_an_axis():
    assert expand_grid({"a": [1, 2]}, cases=[{"b": 0}]) == [{"a": 1, "b": 0}, {"a": 2, "b": 0}]
    with pytest.raises(ValueError, match=r"cases\[1\] sets \['a'\]"):
        expand_grid({"a": [1]}, cases=[{"b": 0}, {"a": 3}])
    with pytest.raises(ValueError, match="non-empty list"):
        expand_grid({"a": [1]}, cases=[])


def test_cli_sweeps_the_cases_of_a_grid_file_and_names_a_bad_one(tmp_path, capsys):
    args = ["sweep", "--data", str(tmp_path), "--root", str(tmp_path / "runs"), "--profile",
            "smoke", "--seeds", "0", "1", "--dry-run"]
    assert main([*args, "--grid", str(GRIDS / "table8_losses.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "8 to run, 0 finished before"
    assert "--out " + str(tmp_path / "runs" / (
        "method=semisegdefect,label_fraction=0.05,seed=1,semi.supervised_loss=false")) in lines[5]
    bad = write(tmp_path, "cases: [{a: 1}, {a: 1}]\n", "bad.yaml")
    assert main([*args, "--grid", str(bad)]) == 2
    assert f"{bad}: cases[1]: the same settings" in capsys.readouterr().err
    fraction = write(tmp_path, "cases: [{label_fraction: 0.1}, {label_fraction: 0.2}]\n", "f.yaml")
    assert main([*args, "--grid", str(fraction)]) == 0     # a case may set what a flag sets
    assert capsys.readouterr().out.splitlines()[-1] == "4 to run, 0 finished before"
    assert main([*args, "--grid", str(fraction), "--fractions", "0.5"]) == 2
    assert "label_fraction is given both by --fractions" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# The ablation grid files of the repository

SETTINGS = {"table2": 4, "table3": 6, "table4": 2, "table5": 4, "table6": 4, "table7": 2,
            "table8": 4}


@pytest.mark.parametrize("path", sorted(GRIDS.glob("table*.yaml")), ids=lambda p: p.stem)
def test_each_table_trains_its_settings_and_the_default_among_them(path, tmp_path, capsys):
    """The same run folders as `semiseg sweep --grid`; configurations that
    resolve (no unknown key); and exactly one setting is the default
    configuration at the cpu profile, which Table 9's runs are reused for."""
    ablation = load_ablation(path)
    assert len(ablation.settings) == SETTINGS[ablation.name] and ablation.claims
    points = ablation.points([0, 1], 0.05)
    assert main(["sweep", "--data", str(tmp_path), "--root", str(tmp_path), "--profile", "cpu",
                 "--seeds", "0", "1", "--grid", str(path), "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()[:-1]
    assert [c.split("--out ")[1].split(" ")[0] for c in commands] == [
        str(run_dir_of(tmp_path, p)) for p in points]
    job = train_job(tmp_path, "cpu")
    default = job.config({"method": "semisegdefect", "label_fraction": 0.05, "seed": 0})
    same = [ablation.label_of(p) for p in points[:len(ablation.settings)]
            if job.config(p) == default]
    assert len(same) == 1, (ablation.name, same)
    if TARGETS.is_file():   # the statement is TARGETS.md's, word for word
        row = next(line for line in TARGETS.read_text().splitlines()
                   if line.startswith(f"| {ablation.table} |"))
        assert ablation.states in row


def test_the_unimatch_optimiser_diagnostic_changes_only_the_optimiser(tmp_path, capsys):
    """grids/unimatch_optimiser.yaml: its first case is Table 9's configuration
    (so those runs are reused), its second differs from it in ``optim`` alone."""
    grid = GRIDS / "unimatch_optimiser.yaml"
    assert main(["sweep", "--data", str(tmp_path), "--root", str(tmp_path), "--profile", "cpu",
                 "--methods", "unimatch", "supervised", "--grid", str(grid), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "4 to run, 0 finished before"
    job = train_job(tmp_path, "cpu")
    for method in ("unimatch", "supervised"):
        point = {"method": method, "label_fraction": 0.05, "seed": 0}
        shared, own = (job.config({**point, **case}) for case in load_grid(grid).cases)
        assert shared == job.config(point)
        assert own != shared and replace(own, optim=shared.optim) == shared
        assert (own.optim.name, own.optim.head_lr_scale) == ("sgd", 10.0)


def test_tables_6_and_8_are_explicit_cases_not_products():
    anchors = load_ablation(GRIDS / "table6_anchors.yaml")
    assert [(s.values["semi.num_anchors"], s.values["semi.num_negatives"])
            for s in anchors.settings] == [(32, 64), (64, 128), (128, 256), (256, 512)]
    losses = load_ablation(GRIDS / "table8_losses.yaml")
    assert losses.labels == ["all three", "without supervised", "without unsupervised",
                             "without contrastive"]
    assert losses.settings[2].values == {"semi.unsupervised_loss": False}
    sampling = load_ablation(GRIDS / "table5_sampling.yaml")
    assert sampling.labels[1] == "active_query=false, active_key=true"


PAPER = """
paper:
  table: 9
  title: t
  states: s
  expect:
    - {CLAIM}
"""


@pytest.mark.parametrize("grid, claim, where", [
    ("x: [1, 2]\n", "best: {x: 3}", r"paper\.expect\[0\]\.best: \{'x': 3\} picks 0 settings"),
    ("x: [1, 2]\ny: [1, 2]\n", "best: {x: 1}", r"paper\.expect\[0\]\.best: .* picks 2 settings"),
    ("x: [1, 2]\n", "best: x=9", r"paper\.expect\[0\]\.best: 'x=9' is not a setting"),
    ("x: [1, 2]\n", "{best: x=1, worst: x=2}", r"paper\.expect\[0\]: give exactly one"),
    ("x: [1, 2]\n", "higher: x=1", r"paper\.expect\[0\]: a 'higher' claim needs 'than'"),
    ("x: [1, 2]\n", "{higher: x=1, than: x=1}", r"paper\.expect\[0\]: 'x=1' cannot beat itself"),
    ("x: [1, 2]\n", "{best: x=1, than: x=2}", r"paper\.expect\[0\]: unknown key\(s\) \['than'\]"),
    ("x: [1, 2]\n", "{best: x=1, stated: {IoU: 1.0}}", r"stated: unknown metric 'IoU'"),
    ("x: [1, 2]\n", "{best: x=1, stated: {crack: big}}", r"stated\.crack: expected a number"),
    ("seed: [1, 2]\n", "best: seed=1", r"sets \['seed'\], which the notebook"),
    ("cases: [{a: 1}, {b: 1}]\n", "best: a=2", r"paper\.expect\[0\]\.best: 'a=2' is not"),
])
def test_a_bad_ablation_file_is_refused_naming_the_file_and_key(tmp_path, grid, claim, where):
    path = write(tmp_path, grid + PAPER.replace("{CLAIM}", claim))
    with pytest.raises(ValueError, match=where) as info:
        load_ablation(path)
    assert str(path) in str(info.value)


def test_an_ablation_file_needs_its_paper_entry(tmp_path):
    with pytest.raises(ValueError, match="no 'paper' entry"):
        load_ablation(write(tmp_path, "x: [1, 2]\n"))
    with pytest.raises(ValueError, match=r"paper\.states: expected a non-empty text"):
        load_ablation(write(tmp_path, "x: [1, 2]\npaper: {table: 2, title: t}\n"))
    with pytest.raises(ValueError, match=r"paper: unknown key\(s\) \['claims'\]"):
        load_ablation(write(tmp_path, "x: [1]\npaper: {table: 2, title: t, states: s, "
                                      "claims: []}\n"))


def test_select_keeps_the_named_settings_and_all_claims():
    ablation = load_ablation(GRIDS / "table2_lr.yaml")
    chosen = ablation.select(["lr=0.001", "lr=0.1"])
    assert chosen.labels == ["lr=0.1", "lr=0.001"] and chosen.claims == ablation.claims
    assert ablation.select(None) is ablation
    with pytest.raises(ValueError, match=r"no setting\(s\) \['lr=1'\]; its settings are"):
        ablation.select(["lr=1"])


# --------------------------------------------------------------------------- #
# Tables and the paper's direction, from hand-made runs


def runs(rows) -> pd.DataFrame:
    """collect_runs' table: IoU as fractions, one row per (setting, seed)."""
    return pd.DataFrame([{"setting": s, "seed": seed, "test_miou": m, "test_iou_crack": c,
                          "test_iou_spalling": sp, "test_iou_rebar": r, "run": f"runs/{s}-{seed}"}
                         for s, seed, m, c, sp, r in rows])


LR = ["lr=0.1", "lr=0.01", "lr=0.001", "lr=0.0001"]


def lr_table(best: str = "lr=0.001") -> pd.DataFrame:
    miou = {"lr=0.1": 0.10, "lr=0.01": 0.50, best: 0.60, "lr=0.0001": 0.40}
    if best != "lr=0.001":
        miou["lr=0.001"] = 0.55
    rows = [(s, 0, miou[s], miou[s], miou[s], miou[s]) for s in LR[:3]]
    return ablation_table(runs(rows + [("lr=0.001", 1, miou["lr=0.001"] - 0.02, 0.5, 0.5, 0.5)]),
                          LR, CLASSES)


def test_ablation_table_means_and_sample_std_in_percent_keeps_settings_not_run():
    table = lr_table()
    assert list(table["setting"]) == LR and list(table["n_seeds"]) == [1, 1, 2, 0]
    row = table.set_index("setting").loc["lr=0.001"]
    assert row["miou_mean"] == pytest.approx(59.0)
    assert row["miou_std"] == pytest.approx(math.sqrt(2) * 1.0)          # ddof = 1
    assert row["crack_mean"] == pytest.approx(55.0)
    assert math.isnan(table.loc[0, "miou_std"]) and math.isnan(table.loc[3, "miou_mean"])
    shown = display_table(table)
    assert list(shown.columns) == ["setting", "crack", "spalling", "rebar", "MIoU", "seeds"]
    assert shown.loc[2, "MIoU"] == "59.00 ± 1.41" and shown.loc[0, "MIoU"] == "10.00"
    assert shown.loc[3, "MIoU"] == "not run"


def test_ablation_table_refuses_duplicates_and_unknown_settings():
    twice = runs([("a", 0, 0.5, 0.5, 0.5, 0.5), ("a", 0, 0.6, 0.6, 0.6, 0.6)])
    with pytest.raises(ValueError, match="several runs share a setting and seed"):
        ablation_table(twice, ["a"], CLASSES)
    with pytest.raises(ValueError, match=r"setting\(s\) \['a'\], which are not among \['b'\]"):
        ablation_table(twice.iloc[:1], ["b"], CLASSES)
    with pytest.raises(ValueError, match="test_miou"):
        ablation_table(twice.drop(columns="test_miou"), ["a"], CLASSES)


def test_the_direction_sentence_when_it_reproduces():
    ablation = load_ablation(GRIDS / "table2_lr.yaml")
    table = lr_table()
    checks = check_claims(table, ablation.claims)
    assert [c.holds for c in checks] == [True, True]
    assert direction_sentence(checks, table) == (
        "The paper's direction reproduces: lr=0.001 is best of the 3 settings finished "
        "(59.00 % MIoU, 9.00 points above lr=0.01); lr=0.1 is worst of the 3 settings "
        "finished (10.00 % MIoU, 40.00 points below lr=0.01); test means over 1–2 seeds.")
    effects = effects_table(table, checks).set_index(["claim", "metric"])
    best = effects.loc[("lr=0.001 is best", "MIoU")]
    assert (best["quantity"], best["paper"], best["holds"]) == ("value (%)", 69.63, "yes")
    assert best["measured"] == pytest.approx(59.0)


def test_the_direction_sentence_when_it_does_not_reproduce_or_only_in_part():
    ablation = load_ablation(GRIDS / "table2_lr.yaml")
    table = lr_table(best="lr=0.01")
    checks = check_claims(table, ablation.claims)
    assert [c.holds for c in checks] == [False, True]
    sentence = direction_sentence(checks, table)
    assert sentence.startswith("The paper's direction reproduces only in part (1 of 2 checked "
                               "claims): lr=0.001 is not best of the 3 settings finished "
                               "(54.00 % MIoU; lr=0.01 has 60.00 %);")
    flat = lr_table().assign(miou_mean=50.0)               # equal means reproduce nothing
    checks = check_claims(flat, ablation.claims)
    assert [c.holds for c in checks] == [False, False]
    assert direction_sentence(checks, flat).startswith(
        "The paper's direction does not reproduce: lr=0.001 is not best of the 3 settings "
        "finished (50.00 % MIoU; lr=0.1 has 50.00 %, within the seeds' std of 1.41);")


def test_claims_about_settings_not_run_cannot_be_checked():
    ablation = load_ablation(GRIDS / "table8_losses.yaml")
    table = ablation_table(runs([("all three", 0, 0.5, 0.4, 0.5, 0.6),
                                 ("all three", 1, 0.5, 0.4, 0.5, 0.6),
                                 ("without supervised", 0, 0.3, 0.2, 0.4, 0.3),
                                 ("without supervised", 1, 0.3, 0.2, 0.4, 0.3)]),
                           ablation.labels, CLASSES)
    checks = check_claims(table, ablation.claims)
    assert [c.holds for c in checks] == [True, None, None]
    sentence = direction_sentence(checks, table)
    assert sentence == ("The paper's direction reproduces in the 1 of 3 claims that can be "
                        "checked: all three beats without supervised (50.00 % against 30.00 % "
                        "MIoU); whether all three beats without unsupervised cannot be checked "
                        "(without unsupervised not finished); whether all three beats without "
                        "contrastive cannot be checked (without contrastive not finished); "
                        "test means over 2 seeds.")
    effects = effects_table(table, checks)
    sup = effects[effects["claim"] == "all three beats without supervised"].set_index("metric")
    assert list(sup.index) == ["MIoU", "crack", "spalling", "rebar"]
    assert sup.loc["crack", "paper"] == 5.84 and sup.loc["crack", "measured"] == pytest.approx(20.0)
    assert list(sup["holds"]) == ["yes", "yes", "yes", "yes"]
    unsup = effects[effects["claim"] == "all three beats without unsupervised"]
    assert unsup["paper"].tolist() == [2.68] and unsup["holds"].tolist() == ["not checked"]
    assert direction_sentence([], table) == "The grid file states no direction to check."


def test_a_difference_within_the_seeds_spread_is_said():
    table = ablation_table(runs([("a", 0, 0.50, 0, 0, 0), ("a", 1, 0.60, 0, 0, 0),
                                 ("b", 0, 0.52, 0, 0, 0), ("b", 1, 0.54, 0, 0, 0)]),
                           ["a", "b"], CLASSES)
    (check,) = check_claims(table, [Claim("higher", "a", "b")])
    assert check.holds and check.margin == pytest.approx(2.0)
    assert check.clause == "a beats b (55.00 % against 53.00 % MIoU, within the seeds' std of 7.07)"


def test_miou_figure_has_a_point_per_setting_and_marks_the_papers_best():
    ablation = load_ablation(GRIDS / "table2_lr.yaml")
    table = lr_table()
    fig = ablations.miou_figure(table, ablation, runs([("lr=0.1", 0, 0.1, 0, 0, 0)]))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [*LR[:3], "lr=0.0001\n(not run)"]
    labels = ax.get_legend_handles_labels()[1]
    assert {"mean ± std over seeds", "each seed", "paper: best", "paper: worst"} <= set(labels)


# --------------------------------------------------------------------------- #
# Reusing finished runs by configuration


def finished_run(folder: Path, config, dataset: Path, miou: float = 0.5,
                 fingerprint: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config.to_json())
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    fingerprinted = {} if fingerprint is None else {"dataset_fingerprint": fingerprint}
    (folder / "summary.json").write_text(json.dumps({
        "method": config.method, "label_fraction": config.label_fraction, "seed": config.seed,
        "steps": config.steps, "dataset": str(dataset.resolve()), **fingerprinted,
        "test": {"miou": miou, "iou": {"crack": miou}}, "val": {"miou": miou, "iou": {}}}))
    (folder / "checkpoints").mkdir()
    return folder


def test_finished_runs_of_the_same_configuration_are_copied_not_retrained(tmp_path):
    from dataclasses import replace

    data = tmp_path / "data"
    data.mkdir()
    job = train_job(data, "smoke", {"steps": 2})
    default = {"method": "semisegdefect", "label_fraction": 0.5, "seed": 0}
    points = [{**default, "semi.contrastive_weight": w} for w in (0.2, 0.5, 1.0)]
    source = tmp_path / "table9"
    # the default configuration under Table 9's name for it, with other threads
    finished_run(source / "method=semisegdefect,label_fraction=0.5,seed=0",
                 replace(job.config(default), threads=1), data)
    # the 0.5 point, but trained for 3 steps; the 1.0 point, but on other data
    finished_run(source / "a", job.config({**points[1], "steps": 3}), data)
    finished_run(source / "b", job.config(points[2]), tmp_path / "other-data")
    root = tmp_path / "ablation"
    said = []
    assert reuse_finished(points, root, job, [source], dry_run=True, say=said.append) == [
        (source / "method=semisegdefect,label_fraction=0.5,seed=0", run_dir_of(root, points[0]))]
    assert not root.exists() and said[0].startswith("would reuse ")

    pairs = reuse_finished(points, root, job, [source], say=said.append)
    target = run_dir_of(root, points[0])
    assert [t for _, t in pairs] == [target] and said[-1].startswith(f"reused {source}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "metrics.jsonl",
                                                        "point.json", "reused.json",
                                                        "summary.json"]
    assert json.loads((target / "point.json").read_text()) == points[0]
    origin = json.loads((target / "reused.json").read_text())["from"]
    assert not Path(origin).is_absolute()                  # true in any clone
    assert (target / origin).resolve() == (
        source / "method=semisegdefect,label_fraction=0.5,seed=0").resolve()
    assert not list(root.glob(".*"))                        # no temporary folder left
    todo, skipped = plan(points, root, job, gpus=[])        # the sweep sees it finished
    assert skipped == [target.resolve()] and len(todo) == 2
    # a point whose folder exists is the sweep's to resume or check, never overwritten
    (target / "summary.json").write_text("{}")
    assert reuse_finished(points, root, job, [source], say=None) == []
    assert (target / "summary.json").read_text() == "{}"
    # another sweep made the folder while this one copied: the first stands
    _copy_run(RunDir(source / "a"), target, points[0])
    assert (target / "summary.json").read_text() == "{}" and not list(root.glob(".*"))
    with pytest.raises(FileNotFoundError, match="no such folder of runs"):
        reuse_finished(points, root, job, [tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="needs a job that can tell"):
        reuse_finished(points, root, lambda point, run_dir: [], [source])


def test_runs_are_reused_by_their_datas_fingerprint_wherever_the_data_lies(
        tmp_path, synthetic_prepared):
    """A grid continued on another machine or checkout path still finds its
    finished runs: the summary's fingerprint of the data decides, not the path."""
    moved = tmp_path / "elsewhere" / "prepared"
    shutil.copytree(synthetic_prepared, moved)
    fingerprint = dataset_fingerprint(load_manifest(synthetic_prepared))
    assert dataset_fingerprint(load_manifest(moved)) == fingerprint
    resplit = load_manifest(synthetic_prepared)         # the same images, split otherwise
    resplit["samples"][0]["split"] = "test" if resplit["samples"][0]["split"] != "test" else "val"
    assert dataset_fingerprint(resplit) != fingerprint

    job = train_job(moved, "smoke", {"steps": 2})
    point = {"method": "semisegdefect", "label_fraction": 0.5, "seed": 0}
    source = tmp_path / "records"
    # first in the search: at the very folder, but recorded on other data
    finished_run(source / "a", job.config(point), moved, fingerprint="0" * 16)
    # then: the same data, recorded where it lay on the machine that trained it
    trained = finished_run(source / "b", job.config(point), tmp_path / "gone",
                           fingerprint=fingerprint)
    target = run_dir_of(tmp_path / "grid", point)
    assert reuse_finished([point], tmp_path / "grid", job, [source], dry_run=True,
                          say=None) == [(trained, target)]
    # a summary without a fingerprint (an older run) is matched by its folder
    shutil.rmtree(source)
    finished_run(source / "old", job.config(point), tmp_path / "gone")
    assert reuse_finished([point], tmp_path / "grid", job, [source], say=None) == []
    finished_run(source / "older", job.config(point), moved)
    assert reuse_finished([point], tmp_path / "grid", job, [source], say=None) == [
        (source / "older", target)]


def test_collect_runs_names_each_run_by_its_setting(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ablation = load_ablation(GRIDS / "table4_unsup_weight.yaml")
    points = ablation.points([0, 1], 0.5)
    job = train_job(data, "smoke")
    for point, miou in zip(points[:3], (0.4, 0.2, 0.5)):
        folder = finished_run(run_dir_of(tmp_path / "runs", point), job.config(point), data, miou)
        (folder / "point.json").write_text(json.dumps(point))
    found = ablations.collect_runs(tmp_path / "runs", ablation, points)
    assert sorted(zip(found["setting"], found["seed"])) == [
        ("confidence fraction", 0), ("confidence fraction", 1), ("constant 1", 0)]
    table = ablation_table(found, ablation.labels, ["crack"])
    assert list(table["miou_mean"]) == pytest.approx([45.0, 20.0])
    assert ablations.collect_runs(tmp_path / "none", ablation, points).empty


def test_sibling_runs_are_the_other_notebooks_run_folders(tmp_path):
    for name in ("02_ablation_lr", "03_x", "09_comparison"):
        (tmp_path / name / "runs" / "smoke").mkdir(parents=True)
    (tmp_path / "04_y" / "runs" / "cpu").mkdir(parents=True)
    assert ablations.sibling_runs(tmp_path / "02_ablation_lr", "smoke") == [
        (tmp_path / n / "runs" / "smoke").resolve() for n in ("03_x", "09_comparison")]
    assert ablations.runs_folder(None, tmp_path / "02", "cpu") == tmp_path / "02" / "runs" / "cpu"


# --------------------------------------------------------------------------- #
# The contrastive loss's cost (Table 6), a tiny invocation


@pytest.fixture(scope="module")
def contrastive_cost(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cost") / "contrastive_cost.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "contrastive_cost.py"),
                    "--profile", "smoke", "--threads", "1", "--warmup", "1", "--repeat", "1",
                    "--json", str(out)], check=True, capture_output=True, timeout=300)
    return out


def test_contrastive_cost_benchmark_measures_each_table6_setting(contrastive_cost):
    result = json.loads(contrastive_cost.read_text())
    assert result["rep_shape"] == [8, 64, 24, 24]              # smoke: 4 + 4 images, 96 px, 64-d
    rows = result["settings"]
    assert [(r["num_anchors"], r["num_negatives"]) for r in rows] == [(32, 64), (64, 128),
                                                                      (128, 256), (256, 512)]
    assert all(r["ms"] > 0 for r in rows)
    assert rows[0]["anchors_drawn"] < rows[-1]["anchors_drawn"]
    if result["peak_is_exact"]:
        assert rows[-1]["peak_mib"] > rows[0]["peak_mib"] > 0
    table = ablations.contrastive_cost_table(contrastive_cost)
    assert list(table["setting"]) == ["32/64", "64/128", "128/256", "256/512"]
    assert ablations.contrastive_cost_table(contrastive_cost.parent / "none.json") is None


# --------------------------------------------------------------------------- #
# Every ablation notebook end to end, on a tiny dataset with two settings each

NOTEBOOKS = {  # notebook: (the default setting, another one)
    "02_ablation_lr": ["lr=0.001", "lr=0.1"],
    "03_ablation_contrastive_weight": ["contrastive_weight=0.2", "contrastive_weight=1.0"],
    "04_ablation_unsup_weight": ["confidence fraction", "constant 1"],
    "05_ablation_sampling": ["active_query=true, active_key=true",
                             "active_query=false, active_key=false"],
    "06_ablation_anchors": ["32/64", "256/512"],   # smoke's default: 32 anchors, 64 negatives
    "07_ablation_rep_source": ["representation network", "encoder features"],
    "08_ablation_losses": ["all three", "without supervised"],
}


def test_the_ablation_notebooks_are_02_to_08():
    from semiseg_helpers.notebooks import list_notebooks, notebook_parameters

    found = [p.stem for p in list_notebooks() if "ablation" in p.stem]
    assert found == list(NOTEBOOKS)
    for stem in found:
        params = notebook_parameters(REPO / "notebooks" / f"{stem}.py")
        assert {"profile", "data_dir", "label_fraction", "seeds", "grid", "runs_dir",
                "reuse_roots", "overrides", "jobs", "run", "output_dir"} <= set(params)
        assert params["label_fraction"] == 0.05
        assert load_ablation(REPO / params["grid"]).name == f"table{stem[1]}"


@pytest.mark.slow
def test_every_ablation_notebook(tmp_path, contrastive_cost):
    """The default setting trains once (in 02) and is reused by every later
    notebook; each writes its table, the paper beside ours, a plot, a record."""
    from semiseg_helpers.data.prepare import prepare_dataset
    from semiseg_helpers.notebooks import NOTEBOOK_DIR, run_notebook

    data = prepare_dataset("synthetic", tmp_path / "data", label_fractions=[0.5],
                           progress=False, synthetic_options={"n_labeled": 24, "size": 64})
    for stem, settings in NOTEBOOKS.items():
        out = tmp_path / stem
        params = {"profile": "smoke", "data_dir": str(data), "label_fraction": 0.5,
                  "seeds": [0], "settings": settings, "output_dir": str(out), "jobs": 1,
                  "overrides": {"steps": 2, "eval_every": 2, "checkpoint_every": 2,
                                "threads": 1}}   # two threads on a busy pair of cores crawl
        if stem.startswith("06"):
            params["contrastive_cost"] = str(contrastive_cost)
        run_notebook(NOTEBOOK_DIR / f"{stem}.py", out / f"{stem}.ipynb", params, progress=False)
        record = json.loads((out / "record.json").read_text())
        name = f"table{stem[1]}"
        assert record["table"] == name and record["failed"] == [], stem
        assert record["finished_settings"] == record["settings"], stem
        assert record["step_budgets"] == [2] and record["n_runs"] == 2
        assert len(record["reused"]) == (0 if stem.startswith("02") else 1), stem
        assert record["direction"].startswith("The paper's direction")
        table = pd.read_csv(out / f"{name}.csv")
        assert list(table["n_seeds"]) == [1, 1] and table["miou_mean"].between(0, 100).all()
        assert (out / f"{name}_display.md").read_text().startswith("| setting | crack |")
        paper = pd.read_csv(out / f"{name}_paper.csv")
        assert len(paper) >= len(record["claims"]) and set(paper["metric"]) >= {"MIoU"}
        assert (out / f"{name}_miou.png").stat().st_size > 5_000
    assert pd.read_csv(tmp_path / "06_ablation_anchors" / "table6_cost.csv").shape[0] == 4
    reused = RunDir(next((tmp_path / "03_ablation_contrastive_weight" / "runs" / "smoke")
                         .glob("*contrastive_weight=0.2")))
    origin = json.loads((reused.path / "reused.json").read_text())["from"]
    assert (reused.path / origin).resolve().is_relative_to(
        (tmp_path / "02_ablation_lr").resolve())

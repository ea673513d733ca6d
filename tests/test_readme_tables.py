"""The README's result blocks say what the committed records and figures say."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from semiseg_helpers import comparison, readme_tables
from semiseg_helpers.figures import markdown_table
from semiseg_helpers.readme_tables import BLOCKS, REPO, render
from semiseg_helpers.sweep import collect


def test_readme_blocks_are_what_the_records_and_figures_make():
    readme = (REPO / "README.md").read_text()
    assert render(readme) == readme, ("README.md's generated blocks are stale: run "
                                      "python -m semiseg_helpers.readme_tables")
    assert readme_tables.main(["--check"]) == 0


@pytest.mark.parametrize("runs, drawn", [
    (readme_tables.TABLE9_FULL_ROOT, "figures"),
    (readme_tables.TABLE9_ROOT, readme_tables.TABLE9_ROOT / "figures")])
def test_table9_tables_are_what_their_runs_of_record_make(runs, drawn):
    root = REPO / runs
    summaries = collect(root)
    classes = json.loads(next(root.glob("*/summary.json")).read_text())["classes"]
    table = comparison.table9(summaries, classes)
    figures = REPO / drawn
    pd.testing.assert_frame_equal(table, pd.read_csv(figures / "table9.csv"), check_dtype=False)
    assert (figures / "table9.md").read_text() == markdown_table(table)
    display = comparison.table9_display(table)
    assert (figures / "table9_display.md").read_text() == markdown_table(display)
    shown = pd.read_csv(figures / "table9_display.csv", dtype=str, keep_default_na=False)
    assert shown.to_dict("list") == display.astype(str).to_dict("list")


def test_render_fills_every_block_and_refuses_unknown_or_missing_ones(tmp_path):
    text = "".join(f"intro\n<!-- BEGIN {name} -->\nstale\n<!-- END {name} -->\n"
                   for name in BLOCKS)
    out = render(text)
    assert "stale" not in out and out.count("intro\n<!-- BEGIN ") == len(BLOCKS)
    assert render(out) == out
    with pytest.raises(ValueError, match="'nope' has no generator"):
        render(text + "<!-- BEGIN nope -->\n<!-- END nope -->\n")
    with pytest.raises(ValueError, match=r"lacks the block\(s\) \['table9'\]"):
        render(text.replace("BEGIN table9 -->", "BEGIN x -->", 1).replace(
            "<!-- BEGIN x -->\nstale\n<!-- END table9 -->\n", ""))

    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert readme_tables.main(["--readme", str(readme), "--check"]) == 1
    assert readme_tables.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == out
    assert readme_tables.main(["--readme", str(readme), "--check"]) == 0


def test_generated_prose_never_starts_a_line_as_a_markdown_list():
    text = ("a " * 30 + "2. b 3. c + d - e " + "f " * 40).strip()
    for line in readme_tables._paragraph(text, 60).splitlines():
        assert not readme_tables._BLOCK_START.match(line), line


def test_the_5pct_prose_reads_the_metrics_log():
    text = BLOCKS["record-5pct-dynamics"](REPO)
    log = [json.loads(line) for line in
           (REPO / readme_tables.SEMI_5 / "metrics.jsonl").read_text().splitlines()]
    w_u = {m["step"]: m["w_u"] for m in log if "w_u" in m}
    anchors = [m["anchors"] for m in log if "anchors" in m]
    flat = " ".join(text.split())
    assert f"{w_u[150]:.2f} at step 150, {w_u[450]:.2f} at step 450" in flat
    assert f"fewest {min(anchors)}" in flat


def test_figures_networks_is_what_the_configurations_build():
    """The README's decoder table is made from the same configurations runs record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_sizes",
                                                  REPO / "benchmarks" / "model_sizes.py")
    model_sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_sizes)
    table = model_sizes.main(["--profiles", "smoke", "cpu", "gpu", "paper"])
    assert (REPO / "figures" / "benchmarks" / "networks.md").read_text() == table + "\n"


def test_the_optimiser_comparison_pairs_each_method_with_itself(tmp_path):
    """Four runs of one seed give the table and the sentence: each method's
    change of optimiser against its own shared-AdamW run."""
    import shutil

    table9 = REPO / readme_tables.TABLE9_FULL_ROOT
    folder = tmp_path / readme_tables.UNIMATCH_OPTIMISER
    assert BLOCKS["unimatch-optimiser"](tmp_path).startswith("No run")
    for method in ("unimatch", "supervised"):
        source = table9 / f"method={method},label_fraction=0.05,seed=0"
        for name in ("adamw", "sgd"):
            run = folder / f"{method}-{name}"
            shutil.copytree(source, run, ignore=shutil.ignore_patterns("checkpoints"))
            config = json.loads((run / "config.json").read_text())
            config["optim"]["name"] = name
            (run / "config.json").write_text(json.dumps(config))
            if name == "sgd":   # as if SGD had scored two points more
                summary = json.loads((run / "summary.json").read_text())
                summary["test"]["miou"] += 0.02
                (run / "summary.json").write_text(json.dumps(summary))
    text = BLOCKS["unimatch-optimiser"](tmp_path)
    assert text.count("| UniMatch | ") == 2 and "| UniMatch's SGD | 0 |" in text
    flat = " ".join(text.split())
    assert "UniMatch's own SGD moves its test MIoU by +2.00 points" in flat
    assert "the supervised control's by +2.00" in flat
    def miou_of(run):
        return 100 * json.loads((folder / run / "summary.json").read_text())["test"]["miou"]

    gap = miou_of("unimatch-adamw") - miou_of("supervised-adamw")
    assert f"{readme_tables._signed(gap, 2)} points with AdamW and " in flat

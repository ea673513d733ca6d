"""Execute the jupytext notebooks through papermill.

The notebooks under ``notebooks/`` are jupytext percent ``.py`` files (the
reviewed source). papermill only reads ``.ipynb``, so :func:`run_notebook`
converts in memory, sets the ``python3`` kernel, injects parameters after the
cell tagged ``parameters`` and writes the executed ``.ipynb``.

Every notebook takes at least the parameters ``profile``, ``output_dir``
(where its figures and tables go) and ``data_dir`` (the prepared dataset:
``00_data_preparation`` writes it, the others read it), so :func:`run_all`
chains them without knowing what each one does: a new numbered notebook
joins ``make demo`` by existing.
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path
from typing import Any, Mapping

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def load_notebook(source: str | Path):
    """Read a jupytext ``.py`` (or an ``.ipynb``) as a notebook with the python3 kernel."""
    import jupytext

    nb = jupytext.read(str(source))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def notebook_parameters(source: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell."""
    nb = load_notebook(source)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            params = {}
            for node in ast.parse(cell.source).body:
                if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)):
                    raise ValueError(f"{source}: the parameters cell may only assign "
                                     f"literals to names (line {node.lineno})")
                try:
                    params[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    raise ValueError(f"{source}: parameter {node.targets[0].id!r} is not a "
                                     f"literal (line {node.lineno})") from None
            return params
    raise ValueError(f"{source}: no cell tagged 'parameters'")


def run_notebook(source: str | Path, output: str | Path,
                 parameters: Mapping[str, Any] | None = None, *,
                 cwd: str | Path | None = None, progress: bool = True,
                 log_output: bool = False, timeout: int | None = None) -> Path:
    """Execute ``source`` with ``parameters`` and write the executed ``output`` ``.ipynb``.

    Parameters the notebook does not declare are an error (papermill only
    warns, and a misspelt parameter would silently run the defaults). Runs
    in ``cwd`` (default: the repository root, so relative paths in the
    parameters mean the same from the command line and from tests).
    """
    import papermill

    declared = notebook_parameters(source)
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise ValueError(f"{Path(source).name} has no parameter(s) {unknown}; "
                         f"it takes {sorted(declared)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    env_key = "MPLBACKEND"
    previous = os.environ.get(env_key)
    os.environ[env_key] = "Agg"  # the kernel inherits it: no display needed
    try:
        papermill.execute_notebook(
            load_notebook(source), str(output), parameters=dict(parameters or {}),
            kernel_name="python3", language="python", progress_bar=progress,
            log_output=log_output, cwd=str(cwd or NOTEBOOK_DIR.parent),
            execution_timeout=timeout)
    finally:
        if previous is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = previous
    return output


def work_from_repository_root() -> Path:
    """Make the repository root the working directory when a notebook's kernel
    started in ``notebooks/`` (as JupyterLab starts it), so that the relative
    paths of the ``parameters`` cell mean what they mean under papermill and
    on the command line; elsewhere leave the working directory alone.
    Returns the working directory."""
    if Path.cwd().resolve() == NOTEBOOK_DIR.resolve():
        os.chdir(NOTEBOOK_DIR.parent)
    return Path.cwd()


def list_notebooks(folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.py``) in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.py"))


def is_ablation(notebook: str | Path) -> bool:
    """Whether ``notebook`` is one of the ablation notebooks (``NN_ablation_*``,
    Tables 2-8): each trains a grid of settings, so the demo leaves them out
    unless asked (:func:`run_all`)."""
    return Path(notebook).stem[3:].startswith("ablation")


def run_all(out: str | Path, profile: str = "smoke", folder: str | Path = NOTEBOOK_DIR,
            only: list[str] | None = None, progress: bool = True,
            ablations: bool = False) -> list[dict]:
    """Run the numbered notebooks in order into ``out/<name>/``.

    The ablation notebooks (:func:`is_ablation`) run only with ``ablations``
    or when ``only`` names them: at the ``smoke`` profile they add about
    twenty training runs to the demo's handful. The prepared dataset lives in
    ``out/data`` and is shared by the chain. Returns one record per notebook
    with its wall-clock time.
    """
    out = Path(out)
    records = []
    for nb in list_notebooks(folder):
        if only and not any(nb.stem.startswith(o) for o in only):
            continue
        if not (ablations or only) and is_ablation(nb):
            continue
        params = {"profile": profile, "output_dir": str(out / nb.stem),
                  "data_dir": str(out / "data")}
        started = time.time()
        print(f"[semiseg] {nb.name} -> {out / nb.stem}", flush=True)
        run_notebook(nb, out / nb.stem / f"{nb.stem}.ipynb", params, progress=progress)
        records.append({"notebook": nb.name, "seconds": round(time.time() - started, 1)})
        print(f"[semiseg] {nb.name} done in {records[-1]['seconds']} s", flush=True)
    return records

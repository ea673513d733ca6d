"""JupyterLab, the users' front end.

A headless JupyterLab (the one `make lab` starts, on a free localhost port with
a token, its configuration and runtime files in a temporary folder) opens
every ``notebooks/*.py`` through its contents API as a notebook with its
``parameters`` cell, saves it back byte for byte, and opens ``.py`` files as
notebooks by default; then notebook 12 runs in a real JupyterLab in Debian's
headless Chromium, where moving the image slider redraws the picture.
"""

from __future__ import annotations

import ast
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from semiseg_helpers.notebooks import NOTEBOOK_DIR, list_notebooks, notebook_parameters

REPO = NOTEBOOK_DIR.parent
NOTEBOOKS = list_notebooks()
JUPYTEXT_VIEWER = "Jupytext Notebook"


# --------------------------------------------------------------------------- #
# A JupyterLab server for the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log: Path

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call with the token; the decoded JSON answer (None if empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 30) -> int:
        """Shut the server down through its API; its exit code."""
        if self.process.poll() is None:
            self.request("POST", "/api/shutdown")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"JupyterLab did not stop within {timeout} s:\n"
                                     f"{self.log_tail()}") from None
        return self.process.returncode


@contextmanager
def running_lab(root: Path, home: Path, *, startup: float = 90) -> Iterator[Lab]:
    """JupyterLab serving ``root``, configured and logging under ``home``
    (none of the user's own Jupyter settings are read or written). Nothing is
    fetched from outside: no news, no update check, no extension manager."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data"),
           "IPYTHONDIR": str(home / "ipython")}
    token, port = secrets.token_hex(16), free_port()
    log = home / "lab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=out,
                                   stderr=subprocess.STDOUT)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, process, log)
    try:
        deadline = time.monotonic() + startup
        while True:
            if process.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {process.returncode}:\n"
                                     f"{lab.log_tail()}")
            try:
                lab.request("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"JupyterLab did not answer within {startup} s:\n"
                                         f"{lab.log_tail()}") from None
                time.sleep(0.25)
        yield lab
    finally:
        if process.poll() is None:
            try:
                lab.stop()
            finally:
                if process.poll() is None:
                    process.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """A server over a copy of the notebooks and the repository's jupytext.toml."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    shutil.copytree(NOTEBOOK_DIR, root / "notebooks",
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    shutil.copy(REPO / "jupytext.toml", root / "jupytext.toml")
    with running_lab(root, base / "home") as server:
        yield server
        assert server.stop() == 0, server.log_tail()


# --------------------------------------------------------------------------- #
# The contents API and the settings


def test_there_are_notebooks_to_open():
    assert len(NOTEBOOKS) >= 4 and any(p.name == "12_inspect_masks.py" for p in NOTEBOOKS)


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_each_notebook_opens_as_a_notebook_with_its_parameters_cell(lab, name):
    model = lab.request("GET", f"/api/contents/notebooks/{name}?type=notebook&content=1")
    assert model["type"] == "notebook" and model["format"] == "json"
    notebook = model["content"]
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert notebook["metadata"]["jupytext"]["text_representation"]["format_name"] == "percent"
    tagged = [c for c in notebook["cells"]
              if c["cell_type"] == "code" and "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters'"
    # the cell JupyterLab shows is the one papermill injects after: same names, same order
    shown = [target.id for node in ast.parse(tagged[0]["source"]).body
             for target in node.targets]
    assert shown == list(notebook_parameters(NOTEBOOK_DIR / name))
    assert {"profile", "data_dir", "output_dir"} <= set(shown)


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_a_notebook_saved_from_lab_is_the_same_py_file(lab, name):
    path = f"/api/contents/notebooks/{name}"
    model = lab.request("GET", f"{path}?type=notebook&content=1")
    saved = lab.request("PUT", path, {"type": "notebook", "format": "json",
                                      "content": model["content"]})
    assert saved["type"] == "notebook" and saved["name"] == name
    assert (lab.root / "notebooks" / name).read_bytes() == (NOTEBOOK_DIR / name).read_bytes()


def test_python_files_open_as_notebooks_by_default(lab):
    settings = lab.request("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    default = settings["schema"]["properties"]["defaultViewers"]["default"]
    assert default.get("python") == JUPYTEXT_VIEWER, (
        "the JupyterLab settings override is not installed: run `make install`")
    req = urllib.request.Request(f"{lab.url}/lab", headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(req, timeout=30) as page:
        html = page.read().decode()
    assert "jupyterlab-jupytext" in html          # jupytext's JupyterLab extension is loaded


# --------------------------------------------------------------------------- #
# Notebook 12 in a real JupyterLab, in headless Chromium


def notebook_with_parameters(source: Path, target: Path, values: dict[str, Any]) -> None:
    """``source`` with a cell setting ``values`` after its parameters cell, as
    papermill injects them."""
    import jupytext
    import nbformat

    nb = jupytext.read(str(source))
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        "\n".join(f"{k} = {v!r}" for k, v in values.items()),
        metadata={"tags": ["injected-parameters"]}))
    target.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, str(target), fmt="py:percent")


def chromium_driver():
    """Selenium over Debian's chromium and chromium-driver (``make browser``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("this test needs Debian's chromium and chromium-driver: run `make browser`")
    options = Options()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


RUN_STATE = """
const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
const errors = [];
let pending = 0;
for (let i = 0; i < cells.length; i++) {
  const cell = cells.get(i);
  if (cell.type !== 'code') continue;
  if (cell.executionCount === null) pending++;
  for (let j = 0; j < cell.outputs.length; j++) {
    const output = cell.outputs.get(j).toJSON();
    if (output.output_type === 'error') errors.push(output.ename + ': ' + output.evalue);
  }
}
return (pending === 0 || errors.length) ? {errors: errors} : null;
"""
"""Once every code cell has run, or one failed: the errors (a script for the page)."""


def picture(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))


@pytest.fixture(scope="module")
def tiny_run(synthetic_prepared, tmp_path_factory):
    """As in test_inspector: two steps of the tiny network, in fp32 (faster on a CPU)."""
    from semiseg_helpers.train import train
    from tests.methods import tiny_config

    out = tmp_path_factory.mktemp("lab_run") / "run"
    train(tiny_config("semisegdefect", steps=2, eval_every=2, checkpoint_every=2,
                      precision="fp32"), synthetic_prepared, out, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(240)
def test_inspector_notebook_runs_in_jupyterlab_and_its_slider_redraws(
        tiny_run, synthetic_prepared, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from semiseg_helpers.inspector import PreparedSplit

    root = tmp_path / "root"
    notebook_with_parameters(NOTEBOOK_DIR / "12_inspect_masks.py",
                             root / "inspect" / "12_inspect_masks.py",
                             {"data_dir": str(synthetic_prepared), "run_dir": str(tiny_run),
                              "output_dir": str(tmp_path / "out"), "device": "cpu"})
    names = PreparedSplit(synthetic_prepared, "test")
    started = time.perf_counter()
    with running_lab(root, tmp_path / "home") as lab:
        driver = chromium_driver()
        try:
            wait = WebDriverWait(driver, 120, poll_frequency=0.25)
            # the .py opens with its default viewer: the notebook, not the text editor
            driver.get(f"{lab.url}/lab/tree/inspect/12_inspect_masks.py?token={lab.token}")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"))
            wait.until(lambda d: d.execute_script(
                "const w = window.jupyterapp.shell.currentWidget;"
                "return w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle';"))
            driver.execute_script(
                "window.jupyterapp.commands.execute('notebook:run-all-cells');")
            progress = wait.until(lambda d: d.execute_script(RUN_STATE))
            assert not progress["errors"], "\n".join(progress["errors"])
            image = driver.find_element(By.CSS_SELECTOR,
                                        ".semiseg-inspector img.semiseg-inspector-picture")
            wait.until(lambda d: image.get_attribute("src").startswith("blob:")
                       and image.size["width"] > 100)
            before_src, before = image.get_attribute("src"), picture(image)
            select = driver.find_element(By.CSS_SELECTOR, ".semiseg-inspector select")

            # a user moves the image slider one step with the keyboard
            handle = driver.find_element(By.CSS_SELECTOR,
                                         ".semiseg-inspector .widget-slider .noUi-handle")
            handle.click()
            handle.send_keys(Keys.ARROW_RIGHT)
            wait.until(lambda d: image.get_attribute("src") != before_src)
            wait.until(lambda d: select.find_element(By.CSS_SELECTOR, "option:checked")
                       .text.startswith(f"{names.name(1)} · IoU"))
            after = picture(image)
            assert before.shape == after.shape
            assert np.abs(before.astype(int) - after.astype(int)).sum(-1).astype(bool).mean() > 0.05
        finally:
            driver.quit()
        assert lab.stop() == 0, lab.log_tail()
    print(f"JupyterLab + Chromium end to end: {time.perf_counter() - started:.1f} s")

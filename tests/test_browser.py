"""The course in a real browser: JupyterLab (headless, local, with a token) driven by the system Chromium.

Opens notebook 00 and notebook 02 (ipywidgets controls and tqdm bars; run with SMOKE=True) in a temporary copy,
runs all cells, checks there is no error output, that the widgets and progress bars render and that moving a
control changes its output; then opens build/report.html and checks every notebook has a row. Screenshots go to
build/browser-*.png. Uses Debian's `chromium` + `chromium-driver` (nothing is downloaded; selenium-manager never
runs because the driver path is given). Run it with `pytest -m browser`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from utils import report
from utils.course import course_notebooks
from utils.results import REPO_ROOT, build_dir

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("COURSE_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = ("the browser tier needs Chromium and its driver: on Debian/Ubuntu `sudo apt-get install chromium "
                "chromium-driver` (or set COURSE_CHROMIUM / COURSE_CHROMEDRIVER to their paths)")
WIDGET_NOTEBOOK = "02_attention_and_kv_cache.ipynb"   # interact() with sliders + a dropdown, and tqdm bars
RUN_TIMEOUT_S = 600   # notebook 02 with SMOKE=True takes 1-2 min alone; room for a busy machine


def _require_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    pytest.importorskip("selenium", reason="selenium is not installed: `make setup` installs it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_notebook(name: str, folder: Path, smoke: bool) -> None:
    """A copy without outputs (so nothing old can pass for a fresh result); SMOKE=True set in its parameters."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if smoke and "parameters" in cell.metadata.get("tags", []):
                assert "SMOKE = False" in cell.source
                cell.source = cell.source.replace("SMOKE = False", "SMOKE = True", 1)
    nbformat.write(nb, str(folder / name))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free 127.0.0.1 port with a random token, serving a temporary course folder."""
    _require_browser()
    root = tmp_path_factory.mktemp("browser-course")
    (root / "notebooks").mkdir()
    _copy_notebook("00_welcome_and_setup.ipynb", root / "notebooks", smoke=False)
    _copy_notebook(WIDGET_NOTEBOOK, root / "notebooks", smoke=True)
    port, token = _free_port(), uuid.uuid4().hex
    home = tmp_path_factory.mktemp("jupyter-home")
    # Render every cell (no windowing), so off-screen widgets are in the page; no news or update pop-ups.
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(home / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                json.load(r)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("jupyter lab did not start:\n" + (home / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
    yield {"base": base, "token": token, "root": root}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium through the system chromedriver (given explicitly: selenium-manager never runs)."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _screenshot(driver, name: str) -> Path:
    path = build_dir() / f"browser-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"could not write {path}"
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    return path


_NOTEBOOK_STATE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.sessionContext || !w.sessionContext.session || !w.sessionContext.session.kernel)
  return null;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
return {kernel: w.sessionContext.session.kernel.status, path: w.context.path, n: cells.length,
        done: cells.filter(c => c.model.executionCount !== null).length,
        errors: cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                     .map(o => o.ename + ': ' + o.evalue))};
"""


def _open_and_run_all(driver, lab, name: str) -> dict:
    """Open a notebook in JupyterLab, run all cells, wait until every code cell ran (or one failed)."""
    from selenium.webdriver.support.ui import WebDriverWait

    # A fresh workspace per notebook: the page holds only this notebook (restoring the previous one beside it left
    # JupyterLab's notebook tracker pointing at the old notebook, so "run all" re-ran notebook 00 instead).
    workspace = f"browser-{uuid.uuid4().hex[:8]}"
    driver.get(f"{lab['base']}/lab/workspaces/{workspace}/tree/notebooks/{name}?token={lab['token']}")
    state = WebDriverWait(driver, 120, poll_frequency=0.5).until(
        lambda d: (s := d.execute_script(_NOTEBOOK_STATE)) and s["kernel"] == "idle" and s)
    assert state["path"].endswith(name), f"JupyterLab shows {state['path']}, not {name}"
    assert state["n"] > 0 and state["done"] == 0
    # Address the notebook by its widget id, never "whichever notebook the tracker thinks is current".
    driver.execute_script("""const w = window.jupyterapp.shell.currentWidget;
        window.jupyterapp.commands.execute('notebook:run-all-cells', {widgetId: w.id});""")
    try:
        WebDriverWait(driver, 60, poll_frequency=0.5).until(
            lambda d: (s := d.execute_script(_NOTEBOOK_STATE)) and (s["done"] > 0 or s["kernel"] == "busy"))
    except Exception:
        pytest.fail(f"'run all' did not start in {name} within 60 s: {driver.execute_script(_NOTEBOOK_STATE)}")
    state = WebDriverWait(driver, RUN_TIMEOUT_S, poll_frequency=1).until(
        lambda d: (s := d.execute_script(_NOTEBOOK_STATE)) and (s["errors"] or (
            s["done"] == s["n"] and s["kernel"] == "idle")) and s)
    return state


def test_notebook_00_runs_in_jupyterlab(lab, browser):
    state = _open_and_run_all(browser, lab, "00_welcome_and_setup.ipynb")
    assert state["errors"] == [], state["errors"]
    assert state["done"] == state["n"]
    outputs = browser.find_elements("css selector", ".jp-OutputArea-output")
    assert outputs and any("SmolLM2" in o.text for o in outputs)
    _screenshot(browser, "00_welcome_and_setup")


def test_widgets_and_progress_bars_render_and_respond(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    state = _open_and_run_all(browser, lab, WIDGET_NOTEBOOK)
    assert state["errors"] == [], state["errors"]
    assert state["done"] == state["n"]
    bars = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-hprogress, .widget-progress"))
    assert any(b.is_displayed() for b in bars), "no tqdm progress bar is visible"
    bar_text = " ".join(b.find_element(By.XPATH, "..").text for b in bars)
    assert "contexts" in bar_text or "variants" in bar_text, bar_text
    sliders = browser.find_elements(By.CSS_SELECTOR, ".widget-hslider")
    assert len(sliders) >= 8, f"expected the cache-size widget's sliders, found {len(sliders)}"
    box = sliders[0].find_element(By.XPATH, "ancestor::div[contains(@class, 'widget-interact')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    output = box.find_element(By.CSS_SELECTOR, ".widget-output")
    WebDriverWait(browser, 30).until(lambda d: output.text.startswith("MHA:"))
    before = output.text
    Select(box.find_element(By.CSS_SELECTOR, ".widget-dropdown select")).select_by_visible_text("MLA")
    WebDriverWait(browser, 30).until(lambda d: output.text.startswith("MLA:"))
    assert output.text != before
    _screenshot(browser, "02_widget_after_choosing_MLA")
    _screenshot_progress(browser, bars)


def _screenshot_progress(driver, bars):
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", bars[0])
    _screenshot(driver, "02_progress_bars")


def _report_page() -> Path:
    """build/report.html when it covers every notebook (from `make course` or `make test`), else one written from
    the stored outputs into build/browser-report/."""
    expected = {f"{p.parent.name}/{p.name}" for p in course_notebooks()}
    page = build_dir() / "report.json"
    if page.is_file():
        rows = {r["notebook"] for r in json.loads(page.read_text()).get("runs", [])}
        if expected <= rows:
            return build_dir() / "report.html"
    folder = build_dir() / "browser-report"
    shutil.rmtree(folder, ignore_errors=True)
    old = os.environ.get("COURSE_BUILD_DIR")
    os.environ["COURSE_BUILD_DIR"] = str(folder)
    try:
        report.write_report(report.runs_from_stored(course_notebooks()),
                            title="Doing More With Less — course report (stored outputs, not run here)")
    finally:
        if old is None:
            del os.environ["COURSE_BUILD_DIR"]
        else:
            os.environ["COURSE_BUILD_DIR"] = old
    return folder / "report.html"


def test_report_shows_every_notebook(browser):
    from selenium.webdriver.common.by import By

    page = _report_page()
    browser.get(page.resolve().as_uri())
    first_cells = [row.find_elements(By.TAG_NAME, "td") for row in browser.find_elements(By.CSS_SELECTOR, "table tr")]
    shown = {cells[0].text for cells in first_cells if cells}
    missing = {f"{p.parent.name}/{p.name}" for p in course_notebooks()} - shown
    assert not missing, f"{page} has no row for {sorted(missing)}"
    assert browser.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']"), "no key plot is shown"
    _screenshot(browser, "report")

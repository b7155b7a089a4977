"""The notebooks as a user sees them: JupyterLab in headless Chromium, driven by Playwright.

For every notebook (fast setting): open it, Run All Cells, and check that every
cell ran, no cell shows a traceback, and every panel rendered as a widget (not
its text fallback). For notebooks 01 and 03: move a slider, press Run, and check
that the plot changed and the progress bar reached its end. Screenshots go to
build/test-artifacts/browser/. Needs Debian's chromium (`make test` installs it as
root); without it the test is skipped loudly, except under CI, where it fails.
"""

import os
import pathlib
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from fedlab import reproduce

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = reproduce.ROOT / "build" / "test-artifacts" / "browser"
VISIBLE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
INTERACT = {"01": "local_epochs", "03": "noise_multiplier"}  # notebook prefix -> slider to move

if not os.path.exists(CHROMIUM):
    message = f"BROWSER TEST NOT RUN: {CHROMIUM} is missing (apt-get install chromium, as root)"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, notebook_cache):
    """JupyterLab on a loopback port with a fresh token, serving fast-parameterised copies of the notebooks.

    They use the session's notebook cache: this is each notebook's first run against it, and
    tests/test_notebooks.py makes the second (a re-run after a kernel restart, warm cache).
    """
    import papermill

    root = tmp_path_factory.mktemp("lab")
    out = tmp_path_factory.mktemp("outputs")
    for path in reproduce.notebooks():
        papermill.execute_notebook(str(path), str(root / path.name), prepare_only=True, kernel_name="python3",
                                   parameters={"fast": True, "figures_dir": str(out / "figures"),
                                               "results_dir": str(out / "results" / path.stem),
                                               "cache_dir": str(notebook_cache)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / ".jupyter"), JUPYTER_RUNTIME_DIR=str(root / ".runtime"))
    log = open(out / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.news_url=None"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(out / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        pytest.fail("JupyterLab did not answer within 120 s")
    yield url, token, out / "results"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def _accept_kernel_dialog(page):
    """JupyterLab sometimes asks which kernel to start; the notebook's own (python3) is preselected."""
    dialog = page.locator(".jp-Dialog button", has_text="Select")
    try:
        dialog.wait_for(state="visible", timeout=5_000)
    except Exception:  # noqa: BLE001 - no dialog this time
        return
    dialog.click()


def _run_all(page, timeout_ms=600_000):
    _accept_kernel_dialog(page)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000, state="attached")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # Done when no cell is queued or running ([*]) and the kernel is idle; a failing cell
    # aborts the queue, which leaves later prompts empty for the caller to report.
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll(
                '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
            const idle = document.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']");
            return idle && prompts.some(t => /\d/.test(t)) && !prompts.some(t => t.includes('*'));
        }""", timeout=timeout_ms, polling=1000)


def _panel_image(page) -> str:
    return page.locator(".widget-image").last.get_attribute("src") or ""


@pytest.mark.parametrize("path", reproduce.notebooks(), ids=lambda p: p.stem)
def test_notebook_in_jupyterlab(path, lab, browser, notebook_runs):
    url, token, results = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # a fresh workspace per notebook, so earlier notebooks are not reopened beside it
        page.goto(f"{url}/lab/workspaces/{path.stem}/tree/{path.name}?reset&token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        _run_all(page)
        prompts = page.eval_on_selector_all(f"{VISIBLE} .jp-CodeCell .jp-InputPrompt",
                                            "els => els.map(e => e.textContent)")
        assert prompts and all(p.strip("[]: ").isdigit() for p in prompts), f"cells that did not run: {prompts}"
        tracebacks = page.locator(".jp-OutputArea-output:has-text('Traceback')").count()
        assert tracebacks == 0, "a cell shows a traceback"
        assert page.locator(".jupyter-widgets").count() > 0, "no widget rendered"
        for fallback in ("HBox(children", "VBox(children", "Loading widget"):
            assert page.locator(f".jp-OutputArea-output:has-text('{fallback}')").count() == 0, fallback
        page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"))

        field = INTERACT.get(path.name[:2])
        if field:
            panel_slider = page.locator(".widget-slider", has_text=field).last
            panel_slider.scroll_into_view_if_needed()
            before = _panel_image(page)
            status = page.locator(".widget-html").filter(has_text="after").last
            status_before = status.inner_text()
            panel_slider.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            page.locator(".jupyter-widgets button", has_text="Run").last.click()
            # finished: the status line shows a new result (not the cached one, not "running")
            page.wait_for_function(
                """([el, before]) => el.innerText !== before && el.innerText.includes('after')""",
                arg=[status.element_handle(), status_before], timeout=300_000, polling=500)
            width = page.locator(".widget-hprogress .progress-bar").last.evaluate("e => e.style.width")
            assert width == "100%", f"progress bar at {width}"
            assert _panel_image(page) != before, "the plot did not redraw"
            assert "result cache" not in status.inner_text(), "the moved slider did not change the settings"
            page.screenshot(path=str(ARTIFACTS / f"{path.stem}-after-run.png"))
        notebook_runs[path.name] = results / path.stem
    except Exception:
        try:
            page.screenshot(path=str(ARTIFACTS / f"{path.stem}-failure.png"), timeout=10_000)
        except Exception:  # noqa: BLE001 - the original failure matters more than its picture
            pass
        raise
    finally:
        page.close()
        _shutdown_kernels(url, token)


def _shutdown_kernels(url, token):
    """Each notebook's kernel (and its TFF worker) stops before the next notebook starts."""
    import json

    sessions = json.load(urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10))
    for session in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30)

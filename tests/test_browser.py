"""What a learner sees: JupyterLab in a real browser (Debian's Chromium driven by Playwright) runs the widgets lesson,
a slider is moved with the keyboard, and the figure it drives must change; the method panel trains one short epoch.

Screenshots are left in `$SSLCOURSE_SCREENSHOTS` (default: `_screenshots/` at the repository root, git-ignored):
`lesson-before.png`, `lesson-after.png` and `method-panel.png`, so a CI run leaves what the learner saw. Skipped, with the reason, where Chromium or
Playwright is missing (CI installs both: see `.ci/run`)."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.processes import free_port

CHROMIUM = '/usr/bin/chromium'
NOTEBOOK = Path(__file__).resolve().parent.parent / 'nbs' / '09_widgets.ipynb'
pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='needs Debian chromium: apt-get install chromium')]
sync_api = pytest.importorskip('playwright.sync_api', reason='needs playwright: pip install playwright')


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "JupyterLab on 127.0.0.1 over a copy of the lesson (running it must not write outputs into the repository)."
    folder = tmp_path_factory.mktemp('lab')
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    port = free_port()
    settings = folder.parent / 'lab-settings'   # a fresh user: no "fetch news?" toast over the page
    (settings / '@jupyterlab' / 'apputils-extension').mkdir(parents=True)
    (settings / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings').write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    environment = dict(os.environ, IN_TEST='1', OMP_NUM_THREADS='1', JUPYTERLAB_SETTINGS_DIR=str(settings))
    server = subprocess.Popen(
        [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--allow-root', f'--port={port}', '--ip=127.0.0.1',
         f'--ServerApp.root_dir={folder}', '--IdentityProvider.token=', '--ServerApp.password=',
         '--LabApp.expose_app_in_browser=True', '--ServerApp.disable_check_xsrf=True'],
        env=environment, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    for _ in range(120):
        try: urllib.request.urlopen(f'{url}/api/status', timeout=1); break
        except OSError: time.sleep(0.5)
    else:
        server.kill(); pytest.fail(f'JupyterLab did not start:\n{server.stdout.read().decode()[-3000:]}')
    yield url, folder
    server.terminate()
    try: server.wait(10)
    except subprocess.TimeoutExpired: server.kill()


@pytest.fixture(scope='module')
def screenshots(tmp_path_factory):
    folder = Path(os.environ.get('SSLCOURSE_SCREENSHOTS') or NOTEBOOK.parent.parent / '_screenshots')
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope='module')
def page(lab):
    url, _ = lab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                                            '--disable-component-update', '--no-first-run'])
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto(f'{url}/lab/tree/{NOTEBOOK.name}')
        page.wait_for_function('window.jupyterapp && window.jupyterapp.shell.currentWidget '
                               '&& window.jupyterapp.shell.currentWidget.sessionContext '
                               '&& window.jupyterapp.shell.currentWidget.sessionContext.session '
                               '&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel', timeout=120_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        yield page
        browser.close()


def _wait_until_idle(page):
    page.wait_for_function("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=240_000)
    page.wait_for_timeout(500)  # let the last redraw reach the page


def _figure(page, widget) -> str:
    "The source of the figure image the widget's output shows (a data: URL that changes with the picture)."
    image = widget.locator('.jp-OutputArea-output img').first
    image.wait_for(timeout=120_000)
    return image.get_attribute('src')


def test_moving_a_slider_redraws_the_figure(page, screenshots):
    explorer = page.locator('.widget-hbox').filter(has=page.locator('.widget-slider')).first
    explorer.wait_for(timeout=180_000)
    _wait_until_idle(page)
    before = _figure(page, explorer)
    explorer.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / 'lesson-before.png'))
    handle = explorer.locator('.widget-slider .noUi-handle').first
    handle.focus()
    for _ in range(3): page.keyboard.press('ArrowRight')
    page.wait_for_function('([element, old]) => { const img = element.querySelector(".jp-OutputArea-output img");'
                           ' return img && img.getAttribute("src") !== old; }',
                           arg=[explorer.element_handle(), before], timeout=60_000)
    _wait_until_idle(page)   # the three key presses queue three redraws: show the last one
    page.screenshot(path=str(screenshots / 'lesson-after.png'))
    assert _figure(page, explorer) != before


def test_the_method_panel_trains_one_epoch(page, screenshots):
    panel = page.locator('.sslcourse-method-panel').first
    panel.wait_for(timeout=180_000)
    panel.scroll_into_view_if_needed()
    rows_before = panel.locator('.sslcourse-results tr').count()
    panel.locator('button', has_text='train').first.click()
    page.wait_for_function('([element, count]) => element.querySelectorAll(".sslcourse-results tr").length > count',
                           arg=[panel.element_handle(), rows_before], timeout=240_000)
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / 'method-panel.png'))
    text = panel.locator('.sslcourse-results').inner_text()
    assert 'simclr' in text.lower()

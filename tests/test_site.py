"""The course website: nbdev's processing of the notebooks, and the offline site that `.ci/site` builds from it.

- nbdev-proc-nbs (the first step of nbdev-docs) runs, in every notebook that exports code, each cell that contains an
  import. A cell that also uses names from earlier cells then fails, and one that also computes re-runs (at the test
  budget) and replaces its stored outputs on the website. So such cells hold imports only, and nbdev-proc-nbs must
  pass on the repository.
- The browser check serves `_site/` on 127.0.0.1 and opens every lesson's page in Debian's Chromium: no missing
  figure, maths typeset by the local MathJax, no broken link or anchor between pages, nothing loaded from another
  host, no script error. It needs `bash .ci/site` first and is skipped, with the reason, where `_site/`, Chromium or
  Playwright is missing.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
SITE = ROOT / '_site'
CHROMIUM = '/usr/bin/chromium'
NOTEBOOKS = sorted(p.name for p in NBS.glob('*.ipynb'))
_EXPORTS = {'export', 'exports', 'exporti', 'exec_doc'}


def _cells(path: Path) -> list[dict]: return json.loads(path.read_text())['cells']


def _source(cell) -> str: return ''.join(cell['source'])


def _page(notebook: str) -> str:
    "The page nbdev gives a notebook: `06a_distributed.ipynb` -> `distributed.html`."
    from nbdev.config import nbpath2html
    return nbpath2html(notebook).name


# ----------------------------------------------------------------------------------------------- nbdev's processing
def test_nbdev_runs_only_import_cells():
    "Cells that nbdev's docs processing executes, besides exported ones, hold imports and nothing else."
    from nbdev.process import NBProcessor
    from nbdev.processors import _do_eval  # nbdev's own rule for the cells that exec_show_docs runs
    offending = []
    for name in NOTEBOOKS:
        cells = NBProcessor(NBS / name, procs=[]).nb.cells
        code = [c for c in cells if c.cell_type == 'code']
        if not any((c.directives_ or {}).keys() & _EXPORTS or 'show_doc(' in c.source for c in code): continue
        for cell in code:
            if (cell.directives_ or {}).keys() & _EXPORTS or not _do_eval(cell): continue
            rest = [t for t in ast.parse(cell.source).body if not isinstance(t, (ast.Import, ast.ImportFrom))]
            if rest: offending.append(f'{name} cell {cell.get("id")}: {cell.source.strip().splitlines()[0][:70]}')
    if offending: pytest.fail('nbdev-proc-nbs runs every cell that contains an import in a notebook that exports '
                              'code; move the imports of these cells into a cell of their own:\n' + '\n'.join(offending))


def test_nbdev_proc_nbs(tmp_path):
    "nbdev-proc-nbs passes on a copy of the repository (so that it writes nothing here)."
    for name in ('pyproject.toml', 'README.md'): shutil.copy(ROOT / name, tmp_path / name)
    ignore = shutil.ignore_patterns('_quarto.yml', 'nbdev.yml', 'sidebar.yml', '.ipynb_checkpoints', '__pycache__')
    shutil.copytree(NBS, tmp_path / 'nbs', ignore=ignore)
    shutil.copytree(ROOT / 'sslcourse', tmp_path / 'sslcourse', ignore=ignore)
    (tmp_path / 'data').symlink_to(ROOT / 'data')
    # Without Quarto, nbdev-proc-nbs tries to install it (sudo and a download); processing never calls it.
    stub = tmp_path / 'bin' / 'quarto'
    stub.parent.mkdir(); stub.write_text('#!/bin/sh\nexit 0\n'); stub.chmod(0o755)
    environment = dict(os.environ, PATH=f'{stub.parent}{os.pathsep}{os.environ["PATH"]}', OMP_NUM_THREADS='1')
    command = [str(Path(sys.executable).parent / 'nbdev-proc-nbs'), '--n-workers', '2']
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=1200)
    if result.returncode:
        output = result.stdout + result.stderr
        first = output.rfind('Exception: Error')  # nbdev names the notebook, the cell and the error
        pytest.fail('nbdev-proc-nbs failed:\n' + (output[first:first + 2000] if first >= 0 else output[-4000:]))
    assert sorted(p.name for p in (tmp_path / '_proc').glob('*.ipynb')) == NOTEBOOKS


# ----------------------------------------------------------------------------------------------- the website
class _Ids(HTMLParser):
    def __init__(self):
        super().__init__(); self.ids = set()
    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k in ('id', 'name') and v)


@pytest.fixture(scope='module')
def site():
    "`_site/` served on 127.0.0.1 by python -m http.server."
    if not (SITE / 'index.html').exists(): pytest.skip('no _site/: build the website first with `bash .ci/site`')
    port = free_port()
    server = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory', str(SITE)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}/'
    for _ in range(100):
        try: urllib.request.urlopen(url, timeout=1); break
        except OSError: time.sleep(0.1)
    yield url
    server.terminate(); server.wait(10)


@pytest.fixture(scope='module')
def browser(site):
    if not Path(CHROMIUM).exists(): pytest.skip('needs Debian chromium: apt-get install chromium')
    sync_api = pytest.importorskip('playwright.sync_api', reason='needs playwright: pip install playwright')
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'])
        context = chromium.new_context(viewport={'width': 1280, 'height': 900})
        outside = []  # every request to another host is refused and recorded: the site must work offline
        def route(handle):
            if urlsplit(handle.request.url).hostname == '127.0.0.1': handle.continue_()
            else: outside.append(handle.request.url); handle.abort()
        context.route('**/*', route)
        yield context, outside
        chromium.close()


_targets = {}
def _ids_of(url: str):
    "The ids on the page at `url` (None when it does not load), fetched once per page."
    if url not in _targets:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                parser = _Ids(); parser.feed(response.read().decode('utf-8', 'replace')); _targets[url] = parser.ids
        except urllib.error.URLError: _targets[url] = None
    return _targets[url]


_RAW_MATHS = re.compile(r'\\\(|\\\[|\$\$|\$[^$\n]*[\\^_{][^$\n]*\$')
_TEXT = '''() => {
  const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'MJX-CONTAINER', 'TEXTAREA', 'KBD']);
  const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    let e = n.parentElement, hidden = false;
    for (; e; e = e.parentElement) if (skip.has(e.tagName)) { hidden = true; break; }
    if (!hidden) parts.push(n.textContent);
  }
  return parts.join(' ');
}'''


def _expected(notebook: str) -> dict:
    "What the page must show: the notebook's stored figures, whether its prose has maths, whether it uses widgets."
    cells = _cells(NBS / notebook)
    def shown(cell):
        flags = ''.join(line for line in _source(cell).splitlines(keepends=True) if line.startswith('#|'))
        return not re.search(r'#\|\s*(hide|include:\s*false|output:\s*false)', flags)
    figures = sum(1 for c in cells if c['cell_type'] == 'code' and shown(c) for o in c.get('outputs', [])
                  if {'image/png', 'image/jpeg', 'image/svg+xml'} & set(o.get('data', {})))
    prose = ' '.join(re.sub(r'`[^`]*`', '', _source(c)) for c in cells if c['cell_type'] == 'markdown')
    code = ' '.join(_source(c) for c in cells if c['cell_type'] == 'code')
    return dict(figures=figures, maths=bool(re.search(r'\$[^$\n]*[\\^_{][^$\n]*\$', prose)),
                widgets=bool(re.search(r'\bsslcourse\.widgets\b|\bipywidgets\b', code)))


@pytest.mark.parametrize('notebook', NOTEBOOKS)
def test_lesson_page(notebook, site, browser):
    context, outside = browser
    url = site + _page(notebook)
    page = context.new_page()
    problems, failed = [], []
    page.on('pageerror', lambda error: problems.append(f'script error: {error}'))
    page.on('response', lambda r: r.status >= 400 and failed.append(f'{r.status} {r.url}'))
    try:
        response = page.goto(url, wait_until='load')
        assert response is not None and response.ok, f'{notebook}: {url} does not load (run `bash .ci/site`?)'
        expected = _expected(notebook)
        # figures: every stored image output is on the page, and every image on the page has loaded
        images = page.evaluate('() => [...document.images].map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth > 0])')
        problems += [f'image does not load: {src}' for src, ok in images if not ok]
        shown = page.locator('div.cell_output img').count()
        if shown < expected['figures']: problems.append(f'{shown} figures on the page, {expected["figures"]} in the notebook')
        # maths: MathJax (local) has typeset it all; no TeX is left as text
        typeset = page.evaluate('() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : false')
        if expected['maths'] and not (typeset and page.locator('mjx-container').count()):
            problems.append('the notebook has maths, but MathJax typeset none')
        if (raw := _RAW_MATHS.search(page.evaluate(_TEXT))): problems.append(f'maths left as text: {raw.group(0)!r}')
        if expected['widgets'] and 'JupyterLab' not in page.inner_text('main'):
            problems.append('the lesson uses widgets, but the page does not say to open it in JupyterLab')
        # links: every link to a page of the site loads, and its anchor exists there
        for href in set(page.evaluate('() => [...document.querySelectorAll("a[href]")].map(a => a.href)')):
            if urlsplit(href).hostname != '127.0.0.1': continue
            target, anchor = urldefrag(href)
            ids = _ids_of(target)
            if ids is None: problems.append(f'broken link: {href}')
            elif anchor and anchor not in ids: problems.append(f'broken anchor: {href}')
        problems += [f'failed request: {f}' for f in failed]
        problems += [f'request to another host: {u}' for u in outside]; outside.clear()
    finally:
        page.close()
    assert not problems, f'{notebook} ({url}):\n' + '\n'.join(problems)


def test_site_home_and_api(site, browser):
    "The landing page comes from index.ipynb and leads to every lesson; the API reference covers every module."
    home = urllib.request.urlopen(site).read().decode()
    title = next(line[2:].strip() for c in _cells(NBS / 'index.ipynb') if c['cell_type'] == 'markdown'
                 for line in _source(c).splitlines() if line.startswith('# '))
    assert re.search(rf'<h1>\s*{re.escape(title)}', home), f'the landing page is not index.ipynb ({title!r})'
    missing = [n for n in NOTEBOOKS if n != 'index.ipynb' and f'href="{_page(n)}"' not in home]
    assert not missing, f'lessons missing from the navigation: {missing}'
    api = urllib.request.urlopen(site + 'api.html').read().decode()
    from sslcourse._modidx import d
    assert [m for m in d['syms'] if m not in api] == []

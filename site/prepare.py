"""Turn nbdev's processed notebooks (`_proc/`) into the sources of the offline course website (Sphinx + MyST-NB).

`python site/prepare.py [PROC] [SRC]` (defaults `_proc` and `_site_src`) writes one notebook per page, named as nbdev
names its pages (`01_data.ipynb` -> `data`), plus `api.md` and the navigation. It translates what only Quarto
understands: the YAML front matter, `#|` directives (`echo: false`, `output: false`, `include: false`), `show_doc`'s
markdown with Pandoc attributes and Quarto's heading ids, and links to the published site, which become links
between the local pages (an anchor that no page defines falls back to its class, then to the page). Widgets need a
kernel: their outputs become a note that says to open the lesson in JupyterLab, under the still PNG that
`sslcourse.widgets.FigureBox` adds to its output. Run by `.ci/site`.
"""
from __future__ import annotations
import copy, html, importlib, json, re, shutil, sys
from pathlib import Path

import yaml
from docutils.nodes import make_id
from nbdev.config import get_config

WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json'
PARTS = [('0', 'Part 0: the library spine'), ('1', 'Part 1: supervised learning and transfer'),
         ('2', 'Part 2: pretext tasks'), ('3', 'Part 3: contrastive learning'), ('4', 'Part 4: non-contrastive learning'),
         ('5', 'Part 5: evaluation and beyond')]
_directive = re.compile(r'^#\|\s*([\w-]+)\s*(?::\s*(.*?))?\s*$')
_uses_widgets = re.compile(r'\bsslcourse\.widgets\b|\bipywidgets\b|\binteract(ive)?\(')


def quarto_id(text: str) -> str:
    "The id Pandoc/Quarto gives a heading (nbdev's doc links point at these): lowercase, only alnum, `_`, `-`, `.`."
    text = re.sub(r'[^\w\s.-]', '', text.strip().lower())
    return re.sub(r'\s+', '-', text)


def source(cell) -> str: return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def output_text(value) -> str: return ''.join(value) if isinstance(value, list) else value


def directives(cell) -> tuple[dict, str]:
    "Split a code cell into its `#|` directives and the code that remains."
    found, lines = {}, source(cell).splitlines()
    while lines and (m := _directive.match(lines[0])):
        found[m.group(1)] = (m.group(2) or 'true').strip().strip('"\'').lower()
        lines.pop(0)
    return found, '\n'.join(lines)


def md_cell(text: str) -> dict: return dict(cell_type='markdown', metadata={}, source=text)


class Site:
    def __init__(self, proc: Path, dest: Path):
        cfg = get_config()
        self.proc, self.dest = proc, dest
        self.published = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/').replace('//', '/').replace(':/', '://')
        self.nbs = Path(cfg.nbs_path)
        self.pages = {}     # page name -> dict(nb, title, description, notebook)
        self.anchors = {}   # page name -> ids that links may point at

    # ---------------------------------------------------------------- reading
    def read(self):
        for path in sorted(self.proc.glob('*.ipynb')):
            nb = json.loads(path.read_text())
            first = nb['cells'][0] if nb['cells'] else None
            front = {}
            if first is not None and first['cell_type'] == 'raw' and source(first).lstrip().startswith('---'):
                front = yaml.safe_load(source(first).strip().strip('-')) or {}
                nb['cells'] = nb['cells'][1:]
            name = Path(front.get('output-file', path.stem + '.html')).stem
            self.pages[name] = dict(nb=nb, title=str(front.get('title', name)), description=front.get('description', ''),
                                    notebook=path.name)
            self.anchors[name] = {quarto_id(h) for c in nb['cells'] for h in self._showdoc_names(c)}
        if 'index' not in self.pages: sys.exit(f'no index.ipynb among the processed notebooks in {self.proc}')

    @staticmethod
    def _showdoc_names(cell):
        if cell['cell_type'] != 'code' or not (cell.get('has_sd') or 'show_doc(' in source(cell)): return []
        texts = [output_text(o.get('data', {}).get('text/markdown', '')) for o in cell.get('outputs', [])]
        return [m.group(1) for t in texts for m in re.finditer(r'^#{2,4} (.+?)\s*$', t, re.MULTILINE)]

    # ---------------------------------------------------------------- links
    def link(self, url: str) -> str:
        "A link to the published site -> the local page (and anchor, when that page defines it)."
        if not url.startswith(self.published): return url
        page, _, anchor = url[len(self.published):].partition('#')
        name = Path(page or 'index.html').stem
        if name not in self.pages: return url
        target = f'{name}.html'
        for candidate in (anchor, anchor.split('.')[0]):
            if candidate and candidate in self.anchors[name]: return f'{target}#{candidate}'
        return target

    def links(self, text: str) -> str:
        text = re.sub(r'\]\((https?://[^)\s]+)\)', lambda m: f']({self.link(m.group(1))})', text)
        return re.sub(r'href="(https?://[^"]+)"', lambda m: f'href="{self.link(m.group(1))}"', text)

    # ---------------------------------------------------------------- cells
    def show_doc(self, cell) -> list[dict]:
        "show_doc's markdown as page content: a Quarto-compatible anchor, the heading, a small source link, the rest."
        cells = []
        for out in cell.get('outputs', []):
            text = output_text(out.get('data', {}).get('text/markdown', ''))
            if not text: continue
            link = ''
            m = re.search(r'^\[source\]\(([^)]+)\)\{[^}]*\}\s*$', text, re.MULTILINE)
            if m:
                link = f'<a class="nbdev-source" href="{html.escape(m.group(1))}" target="_blank" rel="noopener">source</a>'
                text = text[:m.start()] + text[m.end():]
            text = re.sub(r'^---\s*\n', '', text.lstrip())
            text = re.sub(r'\{(?:target|style)=[^}\n]*\}', '', text)  # any other Pandoc attribute
            def heading(h):
                level, name = h.group(1), h.group(2)
                ident = quarto_id(name)
                anchor = '' if make_id(name) == ident else f'<span id="{ident}"></span>\n\n'
                return f'{anchor}{level} {name}\n\n{link}'
            text = re.sub(r'^(#{2,4}) (.+?)\s*$', heading, text, count=1, flags=re.MULTILINE)
            cells.append(md_cell(self.links(text.strip())))
        return cells

    def code(self, cell, notebook: str) -> list[dict]:
        found, code = directives(cell)
        if found.get('include') == 'false': return []
        if cell.get('has_sd') or (found.get('output') == 'asis' and 'show_doc(' in code): return self.show_doc(cell)
        cell = copy.deepcopy(cell)
        cell['source'] = code
        cell.pop('has_sd', None)
        cell['metadata'] = {k: v for k, v in cell.get('metadata', {}).items() if k == 'tags'}
        tags = cell['metadata'].setdefault('tags', [])
        if found.get('echo') == 'false' or not code.strip(): tags.append('remove-input')
        if found.get('output') == 'false': tags.append('remove-output')
        outputs, widget, still = [], False, False
        for out in cell.get('outputs', []):
            data = out.get('data', {})
            if WIDGET_VIEW in data:
                widget = True
                if 'image/png' not in data: continue  # nothing a page without a kernel can show
                out = dict(out, data={'image/png': data['image/png']}, metadata={})  # figure_widget's still
                still = True
            for mime in ('text/markdown', 'text/html'):
                if mime in data: data[mime] = self.links(output_text(data[mime]))
            outputs.append(out)
        cell['outputs'] = outputs
        result = [cell] if outputs or 'remove-input' not in tags else []
        if widget:
            what = ('Above: a still of the interactive widget, as the lesson\'s run left it. Its controls move'
                    if still else 'An interactive widget appears here')
            result.append(md_cell(f':::{{note}}\n{what} when the lesson runs in JupyterLab: '
                                  f'open `nbs/{notebook}` there to use it.\n:::'))
        return result

    def page(self, name: str) -> dict:
        info = self.pages[name]
        nb = copy.deepcopy(info['nb'])
        head = f"# {info['title']}\n"
        if info['description']: head += f"\n> {info['description']}\n"
        original = self.nbs / info['notebook']  # exported cells are blanked in _proc: look at the notebook itself
        originals = json.loads(original.read_text())['cells'] if original.exists() else nb['cells']
        code_text = '\n'.join(source(c) for c in originals if c['cell_type'] == 'code')
        if name != 'index' and _uses_widgets.search(code_text):
            head += (f'\n:::{{admonition}} Interactive widgets\n:class: tip\nThis lesson has ipywidgets sliders and panels. '
                     f'They need a running Python kernel, so this page shows the code and the saved figures only: '
                     f'open `nbs/{info["notebook"]}` in JupyterLab to use them.\n:::\n')
        cells = [md_cell(head)]
        for cell in nb['cells']:
            if cell['cell_type'] == 'markdown':
                text = source(cell)
                if text.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
                cells.append(md_cell(self.links(text)))
            elif cell['cell_type'] == 'code': cells.extend(self.code(cell, info['notebook']))
        for c in cells: c.pop('id', None); c.pop('attachments', None)
        for c in cells:
            if c['cell_type'] == 'code': c.setdefault('execution_count', None)
        nb['cells'] = cells
        nb['metadata'] = {k: v for k, v in nb.get('metadata', {}).items() if k in ('kernelspec', 'language_info')}
        nb['nbformat'], nb['nbformat_minor'] = 4, 4
        return nb

    # ---------------------------------------------------------------- navigation and API
    def toctree(self) -> str:
        lessons = sorted((p for p in self.pages if p != 'index'), key=lambda p: self.pages[p]['notebook'])
        blocks = []
        for digit, caption in PARTS:
            names = [p for p in lessons if self.pages[p]['notebook'][0] == digit]
            if names: blocks.append(f':::{{toctree}}\n:caption: {caption}\n:hidden:\n\n' + '\n'.join(names) + '\n:::')
        others = [p for p in lessons if self.pages[p]['notebook'][0] not in dict(PARTS)]
        blocks.append(':::{toctree}\n:caption: Reference\n:hidden:\n\n' + '\n'.join(others + ['api']) + '\n:::')
        return '\n\n'.join(blocks)

    def api(self) -> str:
        "Every public name of the package, by module, with its one-line summary and a link to where it is documented."
        from sslcourse._modidx import d
        import sslcourse
        lines = ['# API reference', '', 'Every public name of the `sslcourse` package, by layer and module, from the '
                 'foundation up (the layers are explained in [package](package.html)). Each links to its '
                 'documentation in the lesson that builds it; `import sslcourse.<module>` gives the same objects.', '']
        layers = list(sslcourse.PACKAGE_LAYERS.items())[::-1]  # foundation first
        def layer(module):
            return max((len(p), i) for i, (_, prefixes) in enumerate(layers) for p in prefixes
                       if module == p or (p != 'sslcourse' and module.startswith(p + '.')))[1]
        current = None
        for module, syms in sorted(d['syms'].items(), key=lambda item: (layer(item[0]), item[0])):
            public = {k: v for k, v in syms.items() if not any(part.startswith('_') for part in k[len(module) + 1:].split('.'))}
            if not public: continue
            if layer(module) != current:
                current = layer(module)
                lines += [f'## {layers[current][0].capitalize()}', '']
            try: mod = importlib.import_module(module)
            except Exception: mod = None
            page = Path(next(iter(public.values()))[0].partition('#')[0]).stem
            title = self.pages.get(page, {}).get('title', page)
            lines += [f'### {module}', '', f'Built in [{title}]({page}.html).' if page in self.pages else '', '',
                      '| name | summary |', '|---|---|']
            for full, (url, _) in sorted(public.items()):
                short = full[len(module) + 1:]
                obj = mod
                for part in short.split('.'): obj = getattr(obj, part, None)
                doc = ((getattr(obj, '__doc__', None) or '').strip().splitlines() or [''])[0] if obj is not None else ''
                if type(obj).__doc__ == getattr(obj, '__doc__', None) and not callable(obj): doc = ''
                doc = doc.replace('|', '\\|')
                target = self.link(self.published + url) if page in self.pages else ''
                label = f'[`{short}`]({target})' if target else f'`{short}`'
                lines.append(f'| {label} | {doc} |')
            lines.append('')
        return '\n'.join(lines)

    def write(self):
        if self.dest.exists(): shutil.rmtree(self.dest)
        self.dest.mkdir(parents=True)
        for name in self.pages:
            nb = self.page(name)
            if name == 'index': nb['cells'].append(md_cell(self.toctree()))
            (self.dest / f'{name}.ipynb').write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        (self.dest / 'api.md').write_text(self.api())


if __name__ == '__main__':
    proc = Path(sys.argv[1] if len(sys.argv) > 1 else '_proc')
    dest = Path(sys.argv[2] if len(sys.argv) > 2 else '_site_src')
    site = Site(proc, dest)
    site.read()
    site.write()
    print(f'{len(site.pages)} pages from {proc} -> {dest}')

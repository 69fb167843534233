"""README.md from nbs/index.ipynb's markdown cells (nbdev-readme needs Quarto, which is not installable offline).
Run from the repository root: `python .ci/readme.py` writes README.md; `--check` exits 1 when it is out of date."""
import json, sys
from pathlib import Path

nb = json.loads(Path('nbs/index.ipynb').read_text())
text = '\n\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown') + '\n'
text += '\n<!-- Written from nbs/index.ipynb by .ci/readme.py; edit the notebook, not this file. -->\n'
if '--check' in sys.argv:
    if Path('README.md').read_text() != text: sys.exit('README.md is out of date: run python .ci/readme.py')
else:
    Path('README.md').write_text(text)

# Sphinx configuration of the offline course website. `.ci/site` builds it: `sphinx-build -c site _site_src _site`.
# Everything the pages load is in the site itself: MathJax 3 from npm is copied to _static/mathjax, the theme's fonts
# and icons ship with it, and no page asks a CDN for anything (the browser check in tests/test_site.py fails if one does).
from pathlib import Path

project = 'sslcourse'
author = 'sslcourse developers'
copyright = 'sslcourse developers; Fashion-MNIST © Zalando SE (MIT)'
extensions = ['myst_nb']
root_doc = 'index'
exclude_patterns = ['_build', '**.ipynb_checkpoints']

# notebooks: shown with their stored outputs, never executed
nb_execution_mode = 'off'
nb_merge_streams = True
nb_ipywidgets_js = {}  # no widget manager from a CDN: widget outputs are replaced by a note (site/prepare.py)
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'deflist']
myst_all_links_external = True  # prepare.py has already made links between pages relative (`data.html#get_data`)
myst_dmath_double_inline = True
suppress_warnings = ['myst.header', 'myst.xref_missing', 'mystnb.unknown_mime_type', 'misc.highlighting_failure',
                     'toc.not_included']

# maths: a local MathJax 3 (relative paths are relative to _static)
mathjax_path = 'mathjax/tex-chtml.js'
mathjax3_config = {'options': {'enableMenu': False}}

html_theme = 'sphinx_book_theme'
html_title = 'sslcourse: transfer and self-supervised learning'
HERE = Path(__file__).resolve().parent
html_static_path = [str(HERE / 'static'), str(HERE.parent / '_site_src' / '_static')]  # the latter: MathJax, copied by .ci/site
html_css_files = ['site.css']
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    'show_toc_level': 2,
    'home_page_in_toc': True,
    'use_download_button': False,
    'use_fullscreen_button': False,
    'navigation_with_keys': False,
}

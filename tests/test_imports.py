"""Importing a method, or listing them, stays light: no fastai, no matplotlib, no lesson experiment (each costs seconds
and none is needed to build or run a method's forward pass)."""
import json
import subprocess
import sys

EXPERIMENTS = ['supervised', 'pretrained', 'transfer', 'layer_transfer', 'inspection', 'compare', 'embeddings',
               'semisupervised', 'multitask', 'fewshot', 'adaptation', 'taskonomy', 'motion', 'widgets', 'viz']
HEAVY = ['fastai', 'matplotlib', 'sslcourse.learner'] + [f'sslcourse.{name}' for name in EXPERIMENTS]


def _loaded_after(code: str, heavy: list = HEAVY) -> list:
    "The modules of `heavy` loaded by running `code` in a fresh interpreter."
    probe = f"{code}\nimport sys, json; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_method_loads_neither_fastai_nor_matplotlib_nor_an_experiment():
    assert _loaded_after('from sslcourse.method import list_methods, get_method\nnames = list_methods()\n'
                         'assert len(names) >= 22\n[get_method(name) for name in names]') == []


def test_sslcourse_list_stays_light():
    "The experiments' modules define their commands' flags, so the parser imports them; fastai and matplotlib it does not."
    assert _loaded_after('import contextlib, io\nfrom sslcourse.cli import main\n'
                         'with contextlib.redirect_stdout(io.StringIO()): assert main(["list"]) == 0',
                         ['fastai', 'matplotlib', 'sslcourse.learner']) == []


def test_the_learner_still_offers_the_method_api():
    "Scripts that import the method API from the learner keep working."
    from sslcourse import learner, method
    for name in ('Method', 'register_method', 'get_method', 'list_methods', 'Queue', 'MemoryBank', 'ema_update_',
                 'cosine_momentum', 'embed_all', 'TrainingDiverged'):
        assert hasattr(learner, name), name
    assert learner.Method is method.Method and learner.METHODS is method.METHODS

"""Importing a method, or listing them, stays light: no fastai, no matplotlib, no lesson experiment (each costs seconds
and none is needed to build or run a method's forward pass)."""
import json
import subprocess
import sys

import pkgutil
import sslcourse.experiments

EXPERIMENTS = [info.name for info in pkgutil.iter_modules(sslcourse.experiments.__path__, 'sslcourse.experiments.')]
HEAVY = ['fastai', 'matplotlib', 'sslcourse.train.learner', 'sslcourse.widgets', 'sslcourse.viz'] + EXPERIMENTS


def _loaded_after(code: str, heavy: list = HEAVY) -> list:
    "The modules of `heavy` loaded by running `code` in a fresh interpreter."
    probe = f"{code}\nimport sys, json; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_method_loads_neither_fastai_nor_matplotlib_nor_an_experiment():
    assert _loaded_after('from sslcourse.train.method import list_methods, get_method\nnames = list_methods()\n'
                         'assert len(names) >= 22\n[get_method(name) for name in names]') == []


def test_sslcourse_list_stays_light():
    "The experiments' modules define their commands' flags, so the parser imports them; fastai and matplotlib it does not."
    assert _loaded_after('import contextlib, io\nfrom sslcourse.cli import main\n'
                         'with contextlib.redirect_stdout(io.StringIO()): assert main(["list"]) == 0',
                         ['fastai', 'matplotlib', 'sslcourse.train.learner']) == []


def test_the_public_names_load_only_when_asked_for():
    "`import sslcourse` loads nothing heavy; `from sslcourse import ...` gives the same objects as their modules."
    assert _loaded_after('import sslcourse', ['torch', 'fastai', 'matplotlib']) == []
    assert _loaded_after('from sslcourse import get_data, get_method, list_methods\nassert len(list_methods()) >= 22') == []
    import sslcourse, sslcourse.data, sslcourse.train.learner
    assert sslcourse.get_data is sslcourse.data.get_data and sslcourse.ssl_learner is sslcourse.train.learner.ssl_learner
    assert set(sslcourse.PUBLIC) <= set(dir(sslcourse))
    import pytest
    with pytest.raises(AttributeError): sslcourse.no_such_name


def test_the_learner_still_offers_the_method_api():
    "Scripts that import the method API from the learner keep working."
    from sslcourse.train import learner
    from sslcourse.train import method
    for name in ('Method', 'register_method', 'get_method', 'list_methods', 'Queue', 'MemoryBank', 'ema_update_',
                 'cosine_momentum', 'embed_all', 'TrainingDiverged'):
        assert hasattr(learner, name), name
    assert learner.Method is method.Method and learner.METHODS is method.METHODS

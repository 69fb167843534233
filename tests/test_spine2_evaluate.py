"""Spine 2, evaluation side: the linear probe's standardisation, `embed` on another device, the command line's
interrupt messages and exit statuses, and one home each for the classifier `Learner`, accuracy and JSON records.

New names are imported inside the tests that use them, so that each test fails on its own on older code."""
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import sslcourse
import sslcourse.cli as cli
import sslcourse.evaluate as evaluate
from sslcourse.data import Split, get_data

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py
PACKAGE = Path(sslcourse.__file__).parent


def sources(exclude=()):
    "{module file name: text} for every exported module of the package but `exclude`."
    return {str(path.relative_to(PACKAGE)): path.read_text() for path in sorted(PACKAGE.rglob('*.py'))
            if path.name not in ('_modidx.py', *exclude)}


# --- 1. evaluate defects -------------------------------------------------------------------------------------------

def test_linear_probe_does_not_blow_up_a_feature_constant_in_training():
    "scikit-learn's rule: a zero standard deviation becomes a scale of 1, not 1e-6."
    informative = torch.randn(200, 1, generator=torch.Generator().manual_seed(0))
    train = torch.cat([informative, torch.zeros(200, 1)], 1)  # feature 1: black in every training image
    test = torch.cat([torch.tensor([[-2.], [-1.], [1.], [2.]]), torch.ones(4, 1)], 1)  # ... and not at test time
    accuracy = evaluate.linear_probe(train, (train[:, 0] > 0).long(), test, (test[:, 0] > 0).long())
    assert accuracy == 1.0


def test_standardise_keeps_a_scale_of_one_for_constant_features():
    from sslcourse.evaluate import standardise
    train = torch.tensor([[1., 5.], [3., 5.], [5., 5.]])
    scaled_train, scaled_test = standardise(train, torch.tensor([[3., 7.]]))
    assert torch.allclose(scaled_train[:, 0], torch.tensor([-1., 0., 1.]))  # std 2 (unbiased): scaled
    assert torch.equal(scaled_train[:, 1], torch.zeros(3)) and scaled_test[0, 1] == 2.0  # constant: only centred


def test_embed_runs_on_the_device_asked_for_and_leaves_the_encoder_where_it_was():
    from sslcourse.models import create_encoder
    data = get_data(limit=5)
    encoder = create_encoder('convnet', 1)
    # 'meta' is a second device on every machine: a CPU encoder fed meta inputs fails unless embed moves a copy
    features = evaluate.embed(encoder, data.test.images[:4], data, device='meta')
    assert features.device.type == 'meta' and features.shape == (4, encoder.num_features)
    assert {p.device.type for p in encoder.parameters()} == {'cpu'}
    assert evaluate.embed(encoder, data.test.images[:4], data).device.type == 'cpu'  # no device: where it lives


# --- 2. command-line exit statuses ---------------------------------------------------------------------------------

@pytest.fixture
def small_data(monkeypatch, tmp_path):
    "A 30-image-per-class dataset for the commands that train, and an empty working folder."
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, 'get_data', lambda name='fashion_mnist_small', root=None, download=False, **kw:
                        get_data(name, root=root, download=download, limit=30))


def interrupt(*args, **kwargs): raise KeyboardInterrupt


# command line, the function to stop with Ctrl-C, and whether the message may tell the user to --resume
INTERRUPTED = [
    (['pretrain', 'simclr', '--epochs', 1, '--bs', 32, '--device', 'cpu'], 'sslcourse.train.learner.fit_ssl', True),
    (['bench', 'simclr', '--epochs', 2, '--bs', 32, '--device', 'cpu'], 'sslcourse.train.learner.fit_ssl', False),
    (['finetune', '--device', 'cpu'], 'sslcourse.experiments.finetune.finetune_pretrained', False),
    (['transfer', '--device', 'cpu'], 'sslcourse.experiments.layer_transfer.layer_transfer_experiment', False),
    (['list'], 'sslcourse.cli.list_all', False),
]


@pytest.mark.parametrize('argv, stopped, resumable', INTERRUPTED, ids=[argv[0] for argv, _, _ in INTERRUPTED])
def test_ctrl_c_says_what_this_command_can_do(argv, stopped, resumable, small_data, monkeypatch, capsys):
    monkeypatch.setattr(stopped, interrupt)
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 130 and err.count('\n') == 1 and err.startswith('sslcourse: interrupted'), err
    assert ('--resume' in err) == resumable, err  # only pretrain has --resume


def test_a_diverged_run_exits_3_with_one_line(small_data, monkeypatch, capsys):
    from sslcourse.train.learner import TrainingDiverged
    def diverge(*args, **kwargs): raise TrainingDiverged('the loss became NaN or infinite in epoch 1, so training stopped')
    monkeypatch.setattr('sslcourse.train.learner.fit_ssl', diverge)
    code = cli.main(['pretrain', 'simclr', '--epochs', '1', '--bs', '32', '--device', 'cpu'])
    err = capsys.readouterr().err
    assert code == 3, (code, err)
    assert err.count('\n') == 1 and 'NaN' in err and 'Traceback' not in err, err


@pytest.mark.parametrize('command', [[], ['pretrain'], ['finetune']])
def test_help_documents_every_exit_status(command, capsys):
    with pytest.raises(SystemExit) as exit: cli.main([*command, '--help'])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    epilog = out[out.index('exit status:'):]
    for status, words in ((0, 'success'), (1, 'bug'), (2, 'bad input'), (3, 'diverged'), (130, 'Ctrl-C')):
        assert re.search(rf'^\s+{status}\s+.*{words}', epilog, re.MULTILINE), (status, epilog)


# --- 3. one home for each idea -------------------------------------------------------------------------------------

def test_write_json_writes_indented_json_and_creates_folders(tmp_path):
    from sslcourse.core import write_json
    path = write_json(tmp_path / 'a' / 'b' / 'record.json', {'knn_acc': 0.5, 'arms': {'1': [0.1]}})
    assert path.read_text() == json.dumps({'knn_acc': 0.5, 'arms': {'1': [0.1]}}, indent=1) + '\n'
    assert [p.name for p in path.parent.iterdir()] == ['record.json']  # no temporary file left behind


def test_write_json_is_atomic(tmp_path, monkeypatch):
    "A failure at any point leaves the old record whole, and no temporary file."
    import sslcourse.core as core
    path = core.write_json(tmp_path / 'record.json', {'version': 1})
    with pytest.raises(TypeError): core.write_json(path, {'model': nn.Linear(1, 1)})  # not serialisable
    def fail(*args): raise OSError('disk full')
    monkeypatch.setattr(core.os, 'replace', fail)  # the new text is written, but never renamed over the old file
    with pytest.raises(OSError): core.write_json(path, {'version': 2})
    assert json.loads(path.read_text()) == {'version': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['record.json']


def test_only_core_writes_json_files():
    writers = {name for name, text in sources(exclude=('core.py',)).items()
               if re.search(r'json\.dump\(|write_text\(\s*json\.dumps|open\([^)]*["\']w', text)}
    assert not writers, f'write JSON records with sslcourse.core.write_json, not by hand: {sorted(writers)}'
    texts = sources()
    for name in ('cli.py', 'experiments/supervised.py', 'experiments/finetune.py', 'experiments/layer_transfer.py'):
        assert 'write_json(' in texts[name], name


def test_only_evaluate_builds_a_classifier_learner():
    "`learner.ssl_learner` builds the SSL Learner; every supervised one comes from `evaluate.classifier_learner`."
    builders = {name for name, text in sources(exclude=('learner.py',)).items() if re.search(r'\bLearner\(', text)}
    assert builders == {'evaluate.py'}, builders
    texts = sources()
    for name in ('experiments/supervised.py', 'experiments/finetune.py'): assert 'classifier_learner(' in texts[name], name


def test_accuracy_is_counted_in_one_place():
    "No hand-written `argmax(1) == labels` loops outside `evaluate.accuracy` (and kNN, which counts votes)."
    texts = sources()
    for name in ('experiments/supervised.py', 'experiments/finetune.py', 'experiments/layer_transfer.py', 'cli.py'):
        assert 'argmax(1) ==' not in texts[name], name
    counting = {name for name, function in inspect.getmembers(evaluate, inspect.isfunction)
                if function.__module__ == evaluate.__name__ and 'argmax(1) ==' in inspect.getsource(function)}
    assert counting == {'accuracy', 'knn_accuracy'}, counting


def test_accuracy_over_batches_with_a_transform_restores_the_mode():
    from sslcourse.evaluate import accuracy
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Dropout(0.5))
    with torch.no_grad(): model[0].weight.copy_(torch.eye(2))  # predicts the larger coordinate
    inputs, labels = torch.tensor([[1., 0.], [0., 1.], [1., 0.], [0., 1.]]), torch.tensor([0, 1, 1, 1])
    assert accuracy(model, [(inputs[:2], labels[:2]), (inputs[2:], labels[2:])]) == 0.75  # eval: dropout off
    assert accuracy(model, [(inputs, labels)], transform=lambda x: x.flip(1)) == 0.25
    assert model.training  # put back in the mode it was in


def test_classifier_learner_trains_through_the_transform_and_never_validates():
    from sslcourse.evaluate import classifier_learner
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = (labels.view(-1, 1, 1, 1) * 200 + torch.randint(0, 50, (64, 1, 4, 4), generator=generator)).to(torch.uint8)
    seen = []
    def transform(batch): seen.append(batch.dtype); return batch.float().flatten(1) / 255
    torch.manual_seed(0)  # the weights and the batch order: unseeded, they followed whatever ran before in the worker
    model = nn.Linear(16, 2)
    learn = classifier_learner(model, Split(images, labels), transform, bs=16, device='cpu', weight_decay=0.01)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 0.1)
    assert seen == [torch.uint8] * 12  # 3 epochs × 4 training batches; no validation batch went through
    assert evaluate.accuracy(model, [(images, labels)], transform) == 1.0

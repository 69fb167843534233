"""`sslcourse.train.encoders`: a run's encoder back from its checkpoint (bit for bit), bad checkpoints as one-line
`UsageError`s, encoders saved under timm's and torchvision's names, and `sslcourse evaluate` end to end.
One tiny SimCLR run (5 images per class, 1 epoch) is shared by the whole file."""
import argparse
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from sslcourse.core import UsageError
from sslcourse.train.encoders import (add_evaluate_arguments, load_encoder, load_method, portable_state_dict,
                                read_checkpoint, run_evaluate, save_encoder, torchvision_resnet)
from sslcourse.models import convnet, create_encoder


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Tiny workloads on a shared 2-core machine: a second torch thread only spin-waits."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "(learner, checkpoint path) of one tiny SimCLR run."
    from sslcourse.data import get_data
    from sslcourse.train.learner import ssl_learner, fit_ssl
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp('simclr') / 'checkpoint.pth'
    learn = ssl_learner('simclr', get_data('fashion_mnist_small', limit=5), bs=32, device='cpu', checkpoint=checkpoint,
                        knn_every=None, probe=False, progress='none')
    fit_ssl(learn, 1)
    return learn, checkpoint


def images(learn, count=8):
    return learn.data.normalize(learn.data.test.images[:count])


def one_line_error(call, *args) -> str:
    with pytest.raises(UsageError) as error: call(*args)
    message = str(error.value)
    assert message and '\n' not in message, message
    return message


# loading

def test_load_encoder_gives_the_trained_encoder_bit_for_bit(run):
    learn, checkpoint = run
    random_state = torch.get_rng_state()
    encoder = load_encoder(checkpoint)
    assert torch.equal(torch.get_rng_state(), random_state)  # rebuilding drew no numbers from the caller's stream
    assert isinstance(encoder, nn.Module) and not encoder.training
    assert {p.device.type for p in encoder.parameters()} == {'cpu'}
    x = images(learn)
    # the learner trains in channels_last and the loaded encoder comes in the default layout: in one layout, bit for bit
    trained = copy.deepcopy(learn.method.encoder).eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad(): assert torch.equal(encoder(x), trained(x))


def test_load_method_restores_every_weight_and_accepts_the_run_folder(run):
    learn, checkpoint = run
    method = load_method(checkpoint.parent)
    trained = learn.method.state_dict()
    assert type(method) is type(learn.method) and set(method.state_dict()) == set(trained)
    for name, tensor in method.state_dict().items(): assert torch.equal(tensor, trained[name]), name


def test_checkpoint_reads_with_weights_only(run):
    "The lead's checkpoints keep random states as tensors: a plain safe load works, without our numpy allowance."
    _, checkpoint = run
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    assert state['meta']['method'] == 'simclr' and read_checkpoint(checkpoint)['epoch'] == 1


class NotWeights:
    "A pickled object: what a safe load must refuse to build."


@pytest.mark.parametrize('case, fragments', [
    ('missing', ['no checkpoint at', 'checkpoint.pth']),
    ('folder without checkpoint', ['folder without checkpoint.pth']),
    ('text', ['cannot read', 'not a torch file']),
    ('truncated', ['cannot read', 'truncated']),
    ('empty', ['cannot read']),
    ('object', ['NotWeights', 'weights_only']),
    ('plain state dict', ["no 'method' weights"]),
    ('no meta', ["no 'meta' entry", 'Method instance', "load_state_dict(state['method'])"]),
    ('unknown method', ["method 'no_such_method'", 'simclr']),
    ('other architecture', ['does not fit simclr with resnet18']),
    ('unknown option', ['options that this sslcourse does not take', 'no_such_option']),
    ('incomplete meta', ["'meta' entry lacks arch"]),
])
def test_bad_checkpoints_are_one_line(run, tmp_path, case, fragments):
    learn, checkpoint = run
    path = tmp_path / 'checkpoint.pth'
    state = torch.load(checkpoint, weights_only=True)
    if case == 'folder without checkpoint': path = tmp_path
    elif case == 'text': path.write_text('not a checkpoint at all')
    elif case == 'truncated': path.write_bytes(checkpoint.read_bytes()[:2000])
    elif case == 'empty': path.write_bytes(b'')
    elif case == 'object': torch.save(dict(state, meta=NotWeights()), path)
    elif case == 'plain state dict': torch.save(learn.method.encoder.state_dict(), path)
    elif case == 'no meta': torch.save(dict(state, meta=None), path)
    elif case == 'unknown method': torch.save(dict(state, meta=dict(state['meta'], method='no_such_method')), path)
    elif case == 'other architecture': torch.save(dict(state, meta=dict(state['meta'], arch='resnet18')), path)
    elif case == 'unknown option': torch.save(dict(state, meta=dict(state['meta'], options=dict(no_such_option=1))), path)
    elif case == 'incomplete meta':
        torch.save(dict(state, meta={k: v for k, v in state['meta'].items() if k != 'arch'}), path)
    message = one_line_error(load_encoder, path)
    for fragment in fragments: assert fragment in message, message


# saving

def test_resnets_load_strictly_into_torchvision_with_the_cifar_stem(tmp_path):
    encoder = create_encoder('resnet18', 1).eval()
    assert save_encoder(encoder, tmp_path / 'resnet.pth') == 'torchvision'
    net = torchvision_resnet(18, in_channels=1).eval()
    net.load_state_dict(torch.load(tmp_path / 'resnet.pth', weights_only=True))  # strict
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(net(x), encoder(x))  # pooling differs only in rounding


def test_bottleneck_resnets_get_torchvision_names_too():
    "ResNet-50's Bottleneck blocks: names and shapes checked against torchvision's, built on the meta device (cheap)."
    state, layout = portable_state_dict(create_encoder('resnet50', 3))
    with torch.device('meta'): reference = torchvision_resnet(50, 3).state_dict()
    assert layout == 'torchvision' and {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}


def test_unmodified_torchvision_resnet_needs_the_3x3_stem_and_lacks_only_fc(tmp_path):
    import torchvision
    save_encoder(create_encoder('resnet18', 3), tmp_path / 'resnet.pth')
    state = torch.load(tmp_path / 'resnet.pth', weights_only=True)
    net = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(RuntimeError, match='size mismatch for conv1.weight'): net.load_state_dict(state, strict=False)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    result = net.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight'] and result.unexpected_keys == []


def test_timm_encoders_load_strictly_into_timm(tmp_path):
    import timm
    encoder = create_encoder('timm:test_efficientnet', 1).eval()
    assert save_encoder(encoder, tmp_path / 'timm.pth') == 'timm'
    model = timm.create_model('test_efficientnet', pretrained=False, num_classes=0, in_chans=1).eval()
    model.load_state_dict(torch.load(tmp_path / 'timm.pth', weights_only=True))  # strict
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(): assert torch.equal(model(x), encoder(x))


def test_convnet_round_trip_keeps_the_course_names(run, tmp_path):
    learn, checkpoint = run
    encoder = load_encoder(checkpoint)
    assert save_encoder(encoder, tmp_path / 'convnet.pth') == 'sslcourse'
    copy = convnet(in_channels=1).eval()
    copy.load_state_dict(torch.load(tmp_path / 'convnet.pth', weights_only=True))
    x = images(learn)
    with torch.no_grad(): assert torch.equal(copy(x), encoder(x))


def test_an_encoder_a_method_changed_keeps_the_course_names():
    "CPC v2's layer norms are not torchvision's batch norms: saved under the course's names, not forced into torchvision's."
    from sslcourse.methods.contrastive.cpc import layer_norm_
    encoder = layer_norm_(create_encoder('resnet18', 3))
    state, layout = portable_state_dict(encoder)
    assert layout == 'sslcourse' and set(state) == set(encoder.state_dict())


def test_save_encoder_rejects_an_unknown_layout(tmp_path):
    assert 'auto or sslcourse' in one_line_error(save_encoder, convnet(1), tmp_path / 'x.pth', 'onnx')


# sslcourse evaluate

def parse(*argv) -> argparse.Namespace:
    return add_evaluate_arguments(argparse.ArgumentParser(prog='sslcourse evaluate')).parse_args([str(a) for a in argv])


def test_evaluate_prints_the_table_and_writes_the_record(run, tmp_path, capsys, monkeypatch):
    import sslcourse.core
    monkeypatch.setattr(sslcourse.core, 'IN_TEST', True)  # fine-tuning's budget: 20 steps, not 150
    _, checkpoint = run
    path = tmp_path / 'out' / 'evaluate.json'
    record = run_evaluate(parse(checkpoint, '--limit', 5, '--device', 'cpu', '--label-fraction', 0.2, '--json', path))
    assert json.loads(path.read_text()) == record
    for key in ('checkpoint', 'method', 'arch', 'data', 'knn_acc', 'linear_acc', 'baselines', 'finetune_by_fraction',
                'device'):
        assert key in record, key
    assert (record['method'], record['arch'], record['data'], record['device']) == ('simclr', 'convnet', 'fashion_mnist_small', 'cpu')
    accuracies = [record['knn_acc'], record['linear_acc'], *record['finetune_by_fraction'].values(),
                  *(value for row in record['baselines'].values() for value in row.values())]
    assert all(0 <= accuracy <= 1 for accuracy in accuracies), record
    assert set(record['baselines']) == {'random init', 'raw pixels'} and list(record['finetune_by_fraction']) == ['0.2']
    out = capsys.readouterr().out
    assert 'representation' in out and 'raw pixels' in out and 'fine-tuned on 20% of the labels' in out


@pytest.fixture
def no_evaluation(monkeypatch):
    "Bad input must fail before any image is embedded."
    import sslcourse.evaluate
    def forbidden(*args, **kwargs): raise AssertionError('evaluation started on bad input')
    monkeypatch.setattr(sslcourse.evaluate, 'compare_with_baselines', forbidden)
    monkeypatch.setattr(sslcourse.evaluate, 'finetune', forbidden)


@pytest.mark.parametrize('argv, fragments', [
    (['--data', 'mnist'], ["unknown dataset 'mnist'", 'fashion_mnist_small']),
    (['--label-fraction', 0], ['--label-fraction', '(0, 1]']),
    (['--label-fraction', 0.1, 1.5], ['--label-fraction', '1.5']),
    (['--limit', 0], ['--limit']),
    (['--device', 'tpu'], ["unknown device 'tpu'"]),
])
def test_evaluate_rejects_bad_flags_before_work(run, no_evaluation, argv, fragments):
    _, checkpoint = run
    message = one_line_error(run_evaluate, parse(checkpoint, *argv))
    for fragment in fragments: assert fragment in message, message


def test_evaluate_rejects_a_missing_checkpoint(tmp_path, no_evaluation):
    assert 'no checkpoint at' in one_line_error(run_evaluate, parse(tmp_path / 'nowhere.pth'))


def test_evaluate_refuses_colour_images_for_a_grey_encoder(run, tmp_path, no_evaluation):
    from tests.fixtures import write_cifar
    _, checkpoint = run
    write_cifar(tmp_path, 'cifar10', n_train=20, n_test=10)
    message = one_line_error(run_evaluate, parse(checkpoint, '--data', 'cifar10', '--data-dir', tmp_path))
    assert '1-channel' in message and 'cifar10 has 3' in message and 'fashion_mnist_small' in message


# the command line


def sslcourse(*argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sslcourse', 'evaluate', *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_command_line_bad_checkpoint_is_exit_status_2_and_one_line(tmp_path):
    (tmp_path / 'broken.pth').write_bytes(b'\x00' * 64)
    result = sslcourse(tmp_path / 'broken.pth')
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'cannot read' in lines[0] and result.stdout == '', result.stderr


def test_command_line_evaluates(run, tmp_path):
    _, checkpoint = run
    result = sslcourse(checkpoint, '--limit', 5, '--device', 'cpu', '--json', tmp_path / 'evaluate.json')
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / 'evaluate.json').read_text())
    assert record['method'] == 'simclr' and 0 <= record['knn_acc'] <= 1 and 'raw pixels' in result.stdout

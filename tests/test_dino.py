"""DINO (lesson 47): the teacher gets no gradient and follows the EMA rule, the centre follows its EMA rule, the teacher
sees only the global crops, the loss is `dino_loss` on the method's own logits, and impossible options exit 2."""
import pytest
import torch

import sslcourse.cli as cli
import sslcourse.losses as losses
from sslcourse.core import UsageError, seed_everything
from sslcourse.train.learner import get_method
from sslcourse.models import create_encoder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

MEAN, STD = (0.286,), (0.353,)


def make(**options):
    seed_everything(0)
    return get_method('dino')(create_encoder('convnet', 1), 28, MEAN, STD, **{'outputs': 64, **options})


def images(count=8, seed=0):
    return torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def step(method, batch, optimizer, progress=0.0):
    "One training step as the learner runs it: views, forward, loss, backward, hooks, optimiser step."
    optimizer.zero_grad()
    outputs = method(*method.make_views(batch))
    loss = method.loss(outputs)
    loss.backward()
    method.before_optimizer_step(progress)
    optimizer.step()
    method.on_step(progress)
    return outputs, loss


def test_loss_is_dino_loss_on_its_own_logits():
    method = make(local_views=2)
    outputs = method(*method.make_views(images()))
    assert [s.shape for s in outputs['student']] == [(8, 64)] * 4 and [t.shape for t in outputs['teacher']] == [(8, 64)] * 2
    with torch.no_grad(): method.center.normal_()  # a non-zero centre must enter the loss
    expected = losses.dino_loss(outputs['student'], outputs['teacher'], method.center, 0.1, 0.04)
    torch.testing.assert_close(method.loss(outputs), expected)


def test_teacher_sees_only_the_global_crops():
    method = make(local_views=3)
    seen = []
    method.teacher[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    views = method.make_views(images())
    assert len(views) == 5 and views[2].shape[-1] < views[0].shape[-1]
    method(*views)
    assert seen == [(16, 1, 28, 28)]  # the two global crops, once, and never a local crop
    with torch.no_grad(): expected = method.teacher[1](method.teacher[0](torch.cat(views[:2])))
    torch.testing.assert_close(torch.cat(method(*views)['teacher']), expected)


def test_teacher_has_no_gradient_and_follows_the_ema_rule():
    method = make(momentum=0.9)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    teacher_before = [p.detach().clone() for p in method.teacher.parameters()]
    outputs, _ = step(method, images(), optimizer, progress=0.25)
    assert not any(t.requires_grad for t in outputs['teacher'])
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    momentum = 1 - (1 - 0.9) * (torch.cos(torch.tensor(torch.pi * 0.25)) + 1) / 2  # cosine schedule at 25%
    assert method.momentum == pytest.approx(float(momentum))
    student = list(method.encoder.parameters()) + list(method.projector.parameters())
    for before, after, online in zip(teacher_before, method.teacher.parameters(), student):
        torch.testing.assert_close(after, method.momentum * before + (1 - method.momentum) * online.detach())
    assert not all(torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))


def test_center_follows_its_ema_rule():
    method = make(center_momentum=0.8)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
    centers = [method.center.clone()]
    for seed in range(3):
        outputs, _ = step(method, images(seed=seed), optimizer)
        batch_mean = torch.cat(outputs['teacher']).mean(0)  # both global crops of the batch
        torch.testing.assert_close(method.center, 0.8 * centers[-1] + 0.2 * batch_mean)
        centers.append(method.center.clone())
    off = make(centering=False)
    step(off, images(), torch.optim.SGD(off.parameters(), lr=0.0))
    assert torch.equal(off.center, torch.zeros(64))


def test_teacher_temperature_warmup_and_frozen_last_layer():
    method = make(warmup_teacher_temperature=0.02, teacher_temperature=0.06, warmup_fraction=0.5, freeze_epochs=1)
    assert method.teacher_temperature == 0.02
    optimizer = torch.optim.AdamW(method.parameters(), lr=0.01)
    last = method.projector.last_layer.detach().clone()
    step(method, images(), optimizer, progress=0.25)
    assert method.teacher_temperature == pytest.approx(0.04)
    torch.testing.assert_close(method.projector.last_layer, last)  # frozen in epoch 0
    method.epoch = 1
    step(method, images(), optimizer, progress=0.75)
    assert method.teacher_temperature == pytest.approx(0.06)
    assert not torch.allclose(method.projector.last_layer, last)


def test_head_outputs_are_cosines():
    method = make()
    logits = method.projector(torch.randn(16, method.encoder.num_features))
    assert logits.shape == (16, 64) and float(logits.detach().abs().max()) <= 1 + 1e-5


@pytest.mark.parametrize('options, fragment', [
    (dict(student_temperature=0.0), 'student_temperature'), (dict(teacher_temperature=-0.1), 'teacher_temperature'),
    (dict(momentum=1.0), 'momentum'), (dict(center_momentum=-0.1), 'center_momentum'), (dict(outputs=1), 'outputs'),
    (dict(local_views=-1), 'local_views'), (dict(global_scale=(0.4, 1.5)), 'global_scale'),
    (dict(local_scale=(0.0, 0.4)), 'local_scale')])
def test_impossible_options_raise_one_line(options, fragment):
    with pytest.raises(UsageError, match=fragment) as error: make(**options)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('option, fragment', [('teacher_temperature=0', 'teacher_temperature'), ('momentum=1', 'momentum'),
                                              ('center_momentum=1.5', 'center_momentum'), ('outputs=1', 'outputs'),
                                              ('local_scale=(0.1,1.2)', 'local_scale'), ('local_views=-2', 'local_views')])
def test_cli_bad_options_exit_2(tmp_path, capsys, option, fragment):
    status = cli.main(['pretrain', 'dino', '--limit', '20', '--epochs', '1', '--bs', '64', '--device', 'cpu', '-o', option,
                       '--out', str(tmp_path / 'run')])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and fragment in lines[0] and 'Traceback' not in err, err

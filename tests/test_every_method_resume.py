"""A resumed run equals an uninterrupted one, bit for bit on the CPU, for every registered method; and resuming a run
whose epochs are all done trains nothing and still reports what the run measured.

Each method trains 2 epochs of 2 steps on 40 images, with the online probe and the kNN and collapse monitors on. The
interrupted run stops (Ctrl-C) after the first epoch's checkpoint; a new learner, built as a new process would build
it, resumes from that checkpoint. Compared: every tensor of the method (including the state that methods keep outside
parameters: queues, banks, prototypes, cluster assignments, counters kept as extra state), the optimiser state, the
online probe and its optimiser, and the monitors' histories.
"""
import pytest
import torch
from fastai.callback.core import Callback

from sslcourse.core import seed_everything
from sslcourse.train.learner import Checkpoint, fit_ssl, list_methods, ssl_learner
from tests.test_resume import _assert_same
from tests.tiny_methods import TINY, tiny_data

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


class Interrupt(Callback):
    "Ctrl-C at the end of the first epoch, once the checkpoint of that epoch is written."
    order = Checkpoint.order + 10
    def after_epoch(self):
        if self.epoch == 0: raise KeyboardInterrupt


def _learner(name, path, cbs=None):
    seed_everything(0)
    return ssl_learner(name, tiny_data(name), bs=16, device='cpu', checkpoint=path, knn_every=1, progress='none',
                       seed=0, cbs=cbs, **TINY.get(name, {}))


def _record(learn) -> dict:
    return dict(method=learn.method.state_dict(), optimizer=learn.opt.state_dict(),
                probe=learn.online_probe.probe.state_dict(), probe_optimizer=learn.online_probe.probe_optimizer.state_dict(),
                knn=learn.knn_monitor.history, collapse=learn.collapse_monitor.history, rows=learn.history_file.rows)


@pytest.mark.parametrize('name', list_methods())
def test_resumed_run_equals_the_uninterrupted_run(name, tmp_path):
    uninterrupted = fit_ssl(_learner(name, tmp_path / 'full' / 'checkpoint.pth'), 2)
    path = tmp_path / 'interrupted' / 'checkpoint.pth'
    with pytest.raises(KeyboardInterrupt): fit_ssl(_learner(name, path, cbs=[Interrupt()]), 2)
    assert torch.load(path, weights_only=True)['epoch'] == 1
    resumed = fit_ssl(_learner(name, path), 2, resume=path)
    assert [r['epoch'] for r in resumed.throughput.history] == [1, 2]
    full, again = _record(uninterrupted), _record(resumed)
    rows = lambda record: [{k: v for k, v in row.items() if k not in ('seconds', 'img_per_s')} for row in record['rows']]
    assert rows(full) == rows(again) and [row['epoch'] for row in again['rows']] == [1, 2]
    for record in (full, again): record.pop('rows')
    _assert_same(full, again, name)

    # resuming the finished run: nothing trains, and the record keeps its timings and histories
    finished = fit_ssl(_learner(name, tmp_path / 'full' / 'checkpoint.pth'), 2, resume=tmp_path / 'full' / 'checkpoint.pth')
    assert [r['epoch'] for r in finished.throughput.history] == [1, 2] and finished.throughput.summary()['img_per_s'] > 0
    assert finished.knn_monitor.history == uninterrupted.knn_monitor.history
    _assert_same(uninterrupted.method.state_dict(), finished.method.state_dict(), f'{name} finished')

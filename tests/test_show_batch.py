"`learn.show_batch()` on an SSL learner draws each image beside the views its method makes (it used to raise AttributeError)."
import matplotlib
matplotlib.use('Agg')
import pytest
import torch

from sslcourse.train.learner import ssl_learner
from tests.tiny_methods import TINY, tiny_data


@pytest.mark.parametrize('name, views', [('simclr', 2), ('swav', 6), ('jigsaw', 1), ('rotnet', 4)])
def test_show_batch_draws_images_beside_their_views(name, views):
    learn = ssl_learner(name, tiny_data(name), bs=16, device='cpu', knn_every=None, probe=False, progress='none',
                        **TINY.get(name, {}))
    state = torch.get_rng_state()
    figure = learn.show_batch(n=2)
    assert torch.equal(torch.get_rng_state(), state), 'drawing views for a figure must not move the training stream'
    assert len(figure.axes) == 2 * (views + 1)
    assert figure.axes[0].get_title() == 'image' and figure.axes[1].get_title() == 'view 1'

"Shared pytest fixtures."
import contextlib

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny workloads: one intra-op thread. On a 2-core machine that is also running something else, torch's and
    OpenMP's second thread makes these steps 10x slower (spin-waiting for a busy core) without changing results."""
    try: from threadpoolctl import threadpool_limits  # installed with scikit-learn (t-SNE)
    except ImportError: threadpool_limits = lambda n: contextlib.nullcontext()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1): yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def images():
    "A few real Fashion-MNIST images (uint8, 1×28×28): their content is not symmetric, so a wrong label shows."
    from sslcourse.data import get_data
    return get_data().train.images[:16]

"""Shared by the Part 2 tests: a method built on the kit's ConvNet (the `images` fixture is in conftest.py)."""
import torch

from sslcourse.train.learner import get_method
from sslcourse.models import create_encoder

MEAN, STD = (0.2878,), (0.3541,)  # fashion_mnist_small's statistics


def build(name, size=28, channels=1, mean=MEAN, std=STD, **options):
    "The registered method `name` on a fresh, seeded ConvNet."
    torch.manual_seed(0)
    return get_method(name)(create_encoder('convnet', channels), size=size, mean=mean, std=std, **options)

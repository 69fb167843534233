"""An nbdev course and experiment kit for transfer learning and self-supervised learning in vision, on fastai."""

__version__ = "0.1.0"

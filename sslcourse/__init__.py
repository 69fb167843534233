"""An nbdev course and experiment kit for transfer learning and self-supervised learning in vision, on fastai.

Modules:

- `sslcourse.compare`: `sslcourse compare`: every registered method trained for the same seconds on the same data, encoder and seed, then read the same ways (kNN, linear probe, fine-tuning on 1% and 10% of the labels), beside the two baselines, with its speed, memory and collapse statistics: one table and one figure.
- `sslcourse.embeddings`: The same test images through five representations (raw pixels, a random ConvNet, a supervised one, a pretext-task one and a contrastive one), drawn with t-SNE and UMAP and queried for nearest neighbours: what each representation calls "similar", seen and measured.
- `sslcourse.pretrained`: EfficientNet-Lite0's ImageNet checkpoint from a PyPI wheel, loaded into timm by structure with every shape checked, and proved genuine on two photographs. The first half of lesson 2; `11b_finetune` builds on it.
- `sslcourse.supervised`: Train a classifier from scratch with 10 to 1,000 labels per class, with and without the first remedies (augmentation and regularisation), and measure how accuracy falls as labels get scarce.
- `sslcourse.transfer`: Four ways to reuse ImageNet weights (a linear probe, the last K blocks, full fine-tuning with discriminative learning rates, and training from scratch), and the "similar or different data × little or lots of data" table, measured."""

__version__ = "0.1.0"

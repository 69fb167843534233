"""One point of a SimCLR recipe study on the validation split: pretrain on 9,000 of `fashion_mnist_small`'s training
images (`with_validation(0.1, seed=0)`), then score the encoder with kNN and the linear probe on the other 1,000. The
test split plays no part, so a recipe chosen here can be reported on it honestly. Appends one JSON line to `--out`.

    python benchmarks/recipe.py --name tau0.1 --epochs 8 --bs 256 --lr 2e-3 -o temperature=0.1 --seed 0 \\
        --out benchmarks/recipe-DATE/results.jsonl

The study of 2026-12-07 ran its settings two at a time with one torch thread each (`xargs -P 2 -L 1`), so its
`seconds` compare only within that study.
"""
import argparse, datetime, json, time
from pathlib import Path

import torch

from sslcourse.cli import parse_method_options
from sslcourse.core import seed_everything
from sslcourse.data import get_data
from sslcourse.evaluate import evaluate_encoder
from sslcourse.experiments.benchmark import machine
from sslcourse.train.learner import fit_ssl, ssl_learner
from sslcourse.train.method import get_method

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--name', required=True, help='a label for this setting')
parser.add_argument('--method', default='simclr')
parser.add_argument('--epochs', type=int, default=8)
parser.add_argument('--bs', type=int, default=256)
parser.add_argument('--lr', type=float, default=None)
parser.add_argument('-o', '--option', action='append', default=[], help='a method option, NAME=VALUE')
parser.add_argument('--seed', type=int, default=0)
parser.add_argument('--threads', type=int, default=1, help='torch threads (1: two settings can run at once on 2 cores)')
parser.add_argument('--out', required=True, help='JSON-lines file to append the result to')
args = parser.parse_args()

torch.set_num_threads(args.threads)
options = parse_method_options(get_method(args.method), args.option)
data = get_data('fashion_mnist_small').with_validation(0.1, seed=0)
seed_everything(args.seed)
learn = ssl_learner(args.method, data, bs=args.bs, device='cpu', knn_every=None, probe=False, progress='none',
                    seed=args.seed, **options)
started = time.perf_counter(); fit_ssl(learn, args.epochs, args.lr); seconds = time.perf_counter() - started
scores = evaluate_encoder(learn.method.encoder, data, 'cpu', learn.method.views[0].size)
result = dict(name=args.name, method=args.method, epochs=args.epochs, bs=args.bs, lr=args.lr or learn.lr,
              options=options, seed=args.seed, seconds=round(seconds, 1), precision=learn.precision,
              validation_knn=scores['knn'], validation_linear=scores['linear'],
              date=datetime.date.today().isoformat(), device=f'CPU: {machine("cpu")}')
print(json.dumps(result))
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
with open(args.out, 'a') as file: file.write(json.dumps(result) + '\n')

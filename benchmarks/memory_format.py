"""channels_last against the default (contiguous) memory format for SimCLR training on the CPU, interleaved in one
process: each setting trains 3 epochs of the default recipe from the same seed (no monitors), three times, and the
first epoch is skipped as warm-up. Writes a JSON record with the machine, the date and the command.

    python benchmarks/memory_format.py --out benchmarks/cpu-DATE-memory-format.json
"""
import argparse, datetime, json, statistics, sys, time
from pathlib import Path

import torch

from sslcourse.data import get_data
from sslcourse.experiments.benchmark import machine
from sslcourse.train.learner import fit_ssl, ssl_learner

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--method', default='simclr')
parser.add_argument('--precision', default=None, help='bf16 or fp32 (default: what the learner picks on this CPU)')
parser.add_argument('--repeats', type=int, default=3)
parser.add_argument('--out', default=None, help='where to write the JSON record')
args = parser.parse_args()

data = get_data('fashion_mnist_small')
img_per_s, precision = {'contiguous': [], 'channels_last': []}, None
for repeat in range(args.repeats):
    for layout in img_per_s:
        learn = ssl_learner(args.method, data, device='cpu', progress='none', seed=0, knn_every=None, probe=False,
                            channels_last=layout == 'channels_last', precision=args.precision)
        fit_ssl(learn, 3)
        img_per_s[layout].append(learn.throughput.summary(skip_first=True)['img_per_s'])
        precision = learn.precision
        print(f'repeat {repeat}: {layout}: {img_per_s[layout][-1]:.0f} img/s ({precision})', flush=True)

medians = {layout: round(statistics.median(values), 1) for layout, values in img_per_s.items()}
record = dict(date=datetime.date.today().isoformat(), device=f'CPU: {machine("cpu")}', precision=precision,
              command='python ' + ' '.join(sys.argv), method=args.method,
              img_per_s={layout: [round(v, 1) for v in values] for layout, values in img_per_s.items()},
              median_img_per_s=medians, speedup=round(medians['channels_last'] / medians['contiguous'], 2))
print(json.dumps(record, indent=1))
if args.out: Path(args.out).write_text(json.dumps(record, indent=1) + '\n')

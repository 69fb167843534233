"""Does bf16 autocast cost accuracy? `sslcourse pretrain NAME` in fp32 and in bf16, one method per family, over seeds.

The two precisions run interleaved (fp32 then bf16 for each method and seed), so that both see the same machine at
about the same moment: CPUs differ by up to 2x between days, so only ratios measured in one command mean anything.
Each run's JSON record is kept in `--out`; a record already there is not run again, and a run that was interrupted
resumes from its checkpoint (in `runs/precision/`).

    python benchmarks/precision.py                                   # simclr byol vicreg swav, seeds 0 1 2
    python benchmarks/precision.py --methods simclr --seeds 0 --out /tmp/precision
"""
import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sslcourse.experiments.benchmark import machine


def run(method: str, precision: str, seed: int, out: Path, extra: list[str]) -> dict:
    "One `sslcourse pretrain` run (skipped when its record exists); its record, with the end-to-end seconds added."
    record_path = out / f'{method}-{precision}-seed{seed}.json'
    if record_path.exists(): return json.loads(record_path.read_text())
    run_folder = Path('runs') / 'precision' / record_path.stem  # checkpoints and figures stay out of the repository
    command = [sys.executable, '-m', 'sslcourse', 'pretrain', method, '--device', 'cpu', '--precision', precision,
               '--seed', str(seed), '--out', str(run_folder), '--json', str(record_path), *extra]
    if (run_folder / 'checkpoint.pth').exists(): command.append('--resume')  # an interrupted run goes on
    print(' '.join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    record = json.loads(record_path.read_text())
    record['end_to_end_seconds'] = round(time.perf_counter() - started, 1)
    record_path.write_text(json.dumps(record, indent=1))
    return record


def summary(records: list[dict]) -> dict:
    "Mean and standard deviation (over seeds) of kNN and linear accuracy, training seconds and img/s."
    def spread(key, scale=1.0):
        values = [r[key] * scale for r in records]
        return round(statistics.mean(values), 2), round(statistics.stdev(values), 2) if len(values) > 1 else 0.0
    return dict(seeds=len(records), knn=spread('knn_acc', 100), linear=spread('linear_acc', 100),
                seconds=spread('seconds'), img_per_s=spread('img_per_s'), end_to_end=spread('end_to_end_seconds'))


def table(results: dict) -> str:
    "Markdown: one row per method and precision."
    rows = ['| method | precision | seeds | kNN % (mean ± sd) | linear % (mean ± sd) | training s | img/s | end to end s |',
            '|---|---|---|---|---|---|---|---|']
    for method, by_precision in results.items():
        for precision, s in by_precision.items():
            rows.append(f"| {method} | {precision} | {s['seeds']} | {s['knn'][0]:.1f} ± {s['knn'][1]:.1f} | "
                        f"{s['linear'][0]:.1f} ± {s['linear'][1]:.1f} | {s['seconds'][0]:.0f} | {s['img_per_s'][0]:.0f} | "
                        f"{s['end_to_end'][0]:.0f} |")
    return '\n'.join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--methods', nargs='+', default=['simclr', 'byol', 'vicreg', 'swav'])
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--out', default=f'benchmarks/precision-{datetime.date.today()}')
    parser.add_argument('extra', nargs=argparse.REMAINDER, help='after --: more `sslcourse pretrain` arguments')
    args = parser.parse_args()
    extra = [a for a in args.extra if a != '--']
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    records = {(m, p, s): run(m, p, s, out, extra) for m in args.methods for s in args.seeds for p in ('fp32', 'bf16')}
    results = {m: {p: summary([records[m, p, s] for s in args.seeds]) for p in ('fp32', 'bf16')} for m in args.methods}
    text = table(results)
    print(text)
    (out / 'summary.json').write_text(json.dumps(dict(
        date=str(datetime.date.today()), cpu=machine('cpu'), threads=torch.get_num_threads(), torch=torch.__version__,
        native_bf16=bool(torch.cpu._is_avx512_bf16_supported()), command=' '.join(['python', *sys.argv]),
        results=results), indent=1))
    (out / 'table.md').write_text(text + '\n')


if __name__ == '__main__': main()

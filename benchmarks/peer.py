"""sslcourse against a peer, in one command: training images per second of `sslcourse bench simclr` beside lightly's
documented SimCLR recipe on the same ConvNet, batch and data, on the same CPU at about the same moment.

The peer is built from lightly's own blocks (`lightly.loss.NTXentLoss`, `lightly.models.modules.heads.SimCLRProjectionHead`,
`lightly.transforms.SimCLRTransform`) with the settings of lightly's CIFAR-10 benchmark: projection 512 -> 128,
colour jitter 0.5, no blur, SGD (momentum 0.9, weight decay 5e-4, lr 0.06 x batch / 128), augmentation in 2
DataLoader workers. Adapted only: 28 px, 1 channel, the data's mean and standard deviation, and sslcourse's ConvNet
as the backbone (the same module `sslcourse bench` trains). Both skip their first epoch's worth of steps (worker start-up,
first allocations) when counting images per second.

lightly is an optional extra, never a dependency of sslcourse: `pip install lightly==1.6.0` (or `pip install -e ".[peer]"`).

    python benchmarks/peer.py                                  # SimCLR, 60 s of peer training, 3 epochs of sslcourse
    python benchmarks/peer.py --seconds 120 --precision fp32 --out benchmarks/peer-fp32.json
"""
import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sslcourse.experiments.benchmark import machine


def peer_simclr(seconds: float, bs: int, workers: int, threads: int) -> dict:
    "Train lightly's SimCLR recipe for `seconds`; img/s over the steps after the first epoch."
    try:
        import lightly
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError:
        sys.exit('benchmarks/peer.py: the peer needs lightly; pip install lightly==1.6.0')
    from PIL import Image
    from sslcourse.data import get_data
    from sslcourse.models import create_encoder
    torch.set_num_threads(threads); torch.manual_seed(0)
    data = get_data('fashion_mnist_small')
    images = data.train.images[:, 0].numpy()  # (N, 28, 28) uint8
    transform = SimCLRTransform(input_size=28, cj_strength=0.5, gaussian_blur=0.0,
                                normalize=dict(mean=list(data.mean), std=list(data.std)))

    class Views(torch.utils.data.Dataset):
        def __len__(self): return len(images)
        def __getitem__(self, i): return transform(Image.fromarray(images[i]))  # [view 1, view 2]

    backbone = create_encoder('convnet', 1)
    head, criterion = SimCLRProjectionHead(backbone.num_features, 512, 128), NTXentLoss()
    parameters = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.06 * bs / 128, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(Views(), batch_size=bs, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    warm_up, steps, started, counted_from = len(loader), 0, time.perf_counter(), None
    while time.perf_counter() - started < seconds:
        for first, second in loader:
            if time.perf_counter() - started >= seconds: break
            loss = criterion(head(backbone(first)), head(backbone(second)))
            optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
            steps += 1
            if steps == warm_up: counted_from = time.perf_counter()
    finished = time.perf_counter()
    if counted_from is None: sys.exit(f'benchmarks/peer.py: {seconds} s did not cover one epoch; give more --seconds')
    return dict(lightly=lightly.__version__, steps=steps, seconds=round(finished - started, 1),
                img_per_s=round((steps - warm_up) * bs / (finished - counted_from), 1),
                img_per_s_with_first_epoch=round(steps * bs / (finished - started), 1), final_loss=round(loss.item(), 4))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=60, help="the peer's training time")
    parser.add_argument('--epochs', type=int, default=3, help="sslcourse bench's epochs (the first is warm-up)")
    parser.add_argument('--bs', type=int, default=256)
    parser.add_argument('--workers', type=int, default=2, help="the peer's DataLoader workers")
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--precision', default=None, help="sslcourse's --precision (default: its own choice)")
    parser.add_argument('--out', default=None, help='write the record here (JSON)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        record_path = Path(folder) / 'bench.json'
        command = [sys.executable, '-m', 'sslcourse', 'bench', 'simclr', '--device', 'cpu', '--bs', str(args.bs),
                   '--epochs', str(args.epochs), '--json', str(record_path)]
        if args.precision: command += ['--precision', args.precision]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        ours = json.loads(record_path.read_text())
    peer = peer_simclr(args.seconds, args.bs, args.workers, args.threads)
    record = dict(date=str(datetime.date.today()), cpu=machine('cpu'), threads=args.threads, torch=torch.__version__,
                  command=' '.join(['python', *sys.argv]), sslcourse=ours, peer=peer,
                  ratio=round(ours['img_per_s'] / peer['img_per_s'], 2))
    print(f"sslcourse {ours['img_per_s']:.0f} img/s ({ours['precision']}), lightly {peer['img_per_s']:.0f} img/s: "
          f"{record['ratio']:.2f}x")
    if args.out: Path(args.out).write_text(json.dumps(record, indent=1) + '\n')


if __name__ == '__main__': main()

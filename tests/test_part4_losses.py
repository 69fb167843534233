"""Part 4's losses against naive loops written from the papers' equations (float64), Sinkhorn's marginals, and
Sinkhorn's codes with 2 gloo processes against 1 process on the concatenated batch."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sslcourse.losses import barlow_twins_loss, dino_loss, sinkhorn, swav_loss, vicreg_loss
from tests.processes import run_processes

pytestmark = pytest.mark.usefixtures('one_thread')


def barlow_twins_reference(z1, z2, lambd):
    "Zbontar et al. 2021, eq. 1, one entry of the cross-correlation at a time."
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    def standardised(z, j):
        column = z[:, j]; mean = sum(column) / n
        return (column - mean) / math.sqrt(sum((x - mean) ** 2 for x in column) / n + 1e-5)
    a = [standardised(z1, j) for j in range(d)]; b = [standardised(z2, j) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = float(sum(a[i][k] * b[j][k] for k in range(n))) / n
            total += (1 - c) ** 2 if i == j else lambd * c ** 2
    return total


def vicreg_reference(z1, z2, lam, mu, nu):
    "Bardes et al. 2022, eqs. 1–6, entry by entry."
    z1, z2 = z1.double().tolist(), z2.double().tolist()
    n, d = len(z1), len(z1[0])
    invariance = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    def mean(z, j): return sum(z[b][j] for b in range(n)) / n
    def variance(z):
        return sum(max(0.0, 1 - math.sqrt(sum((z[b][j] - mean(z, j)) ** 2 for b in range(n)) / (n - 1) + 1e-4))
                   for j in range(d)) / d
    def covariance(z):
        means = [mean(z, j) for j in range(d)]
        return sum((sum((z[b][i] - means[i]) * (z[b][j] - means[j]) for b in range(n)) / (n - 1)) ** 2
                   for i in range(d) for j in range(d) if i != j) / d
    return lam * invariance + mu * (variance(z1) + variance(z2)) / 2 + nu * (covariance(z1) + covariance(z2))


def sinkhorn_reference(scores, epsilon, iterations):
    "Alternate scaling, element by element: the columns (prototypes) to 1/K, then the rows (images) to 1/B."
    b, k = scores.shape
    q = [[math.exp(x / epsilon) for x in row] for row in scores.double().tolist()]
    total = sum(map(sum, q)); q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            column = sum(q[i][j] for i in range(b))
            for i in range(b): q[i][j] /= column * k
        for i in range(b):
            row = sum(q[i]); q[i] = [x / (row * b) for x in q[i]]
    return torch.tensor(q, dtype=torch.float64) * b


def log_softmax_reference(row, temperature):
    logits = [x / temperature for x in row]
    top = max(logits)
    normaliser = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - normaliser for x in logits]


def swav_reference(global_scores, local_scores, temperature, epsilon, iterations):
    "Caron et al. 2020, eqs. 1–2 with multi-crop: every other crop predicts each global crop's codes."
    crops = global_scores + local_scores
    total = 0.0
    for i, scores in enumerate(global_scores):
        codes = sinkhorn_reference(scores, epsilon, iterations).tolist()
        pairs = 0.0
        for j, other in enumerate(crops):
            if j == i: continue
            for b, row in enumerate(other.double().tolist()):
                log_p = log_softmax_reference(row, temperature)
                pairs += -sum(c * l for c, l in zip(codes[b], log_p)) / len(other)
        total += pairs / (len(crops) - 1)
    return total / len(global_scores)


def dino_reference(student_logits, teacher_logits, center, student_temperature, teacher_temperature):
    "Caron et al. 2021, eq. 1: teacher on each global crop, student on every other crop, pair by pair."
    total, pairs = 0.0, 0
    for t, teacher in enumerate(teacher_logits):
        for s, student in enumerate(student_logits):
            if s == t: continue
            loss = 0.0
            for b in range(len(teacher)):
                centred = [x - c for x, c in zip(teacher[b].double().tolist(), center.double().tolist())]
                p_t = [math.exp(x) for x in log_softmax_reference(centred, teacher_temperature)]
                log_p_s = log_softmax_reference(student[b].double().tolist(), student_temperature)
                loss += -sum(p * l for p, l in zip(p_t, log_p_s))
            total += loss / len(teacher); pairs += 1
    return total / pairs


def _prototype_scores(batch, prototypes, dim=16, generator=None):
    unit = lambda x: F.normalize(x, dim=1)
    return unit(torch.randn(batch, dim, generator=generator)) @ unit(torch.randn(prototypes, dim, generator=generator)).T


@pytest.mark.parametrize('lambd', [5e-3, 0.1])
def test_barlow_twins_equals_loop(lambd):
    z1, z2 = torch.randn(20, 7), torch.randn(20, 7) * 3 + 1
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(barlow_twins_reference(z1, z2, lambd), rel=1e-4)


def test_barlow_twins_is_zero_only_for_decorrelated_identical_views():
    z = torch.linalg.qr(torch.randn(64, 8))[0] * 8   # orthogonal columns: C is the identity after standardising
    z = z - z.mean(0)
    assert barlow_twins_loss(z, z).item() < 1e-3
    assert barlow_twins_loss(z, -z).item() > 10     # anti-correlated views: the diagonal is −1


@pytest.mark.parametrize('weights', [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_vicreg_equals_loop(weights):
    z1, z2 = torch.randn(12, 5) * 0.6, torch.randn(12, 5) * 1.4   # one branch under the variance hinge, one above
    expected = vicreg_reference(z1, z2, *weights)
    assert vicreg_loss(z1, z2, *weights).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize('iterations', [1, 3, 7])
def test_sinkhorn_equals_loop(iterations):
    scores = _prototype_scores(30, 6)
    assert torch.allclose(sinkhorn(scores, 0.05, iterations).double(), sinkhorn_reference(scores, 0.05, iterations),
                          atol=1e-5)


def test_sinkhorn_marginals():
    scores = _prototype_scores(64, 16)
    codes = sinkhorn(scores, iterations=3)
    assert torch.allclose(codes.sum(1), torch.ones(64), atol=1e-5)          # every image's code is a distribution
    balanced = sinkhorn(scores, iterations=100)
    assert (balanced.sum(0) - 64 / 16).abs().max() < 1e-3                    # each prototype holds B/K
    assert (codes.sum(0) - 4).abs().max() > (balanced.sum(0) - 4).abs().max()  # 3 iterations are only roughly balanced


def test_sinkhorn_has_no_gradient_and_survives_large_scores():
    scores = (_prototype_scores(16, 4) * 50).requires_grad_()   # exp(50/0.05) overflows without the shift
    codes = sinkhorn(scores)
    assert not codes.requires_grad and torch.isfinite(codes).all()


def test_swav_equals_loop():
    global_scores = [_prototype_scores(24, 6) for _ in range(2)]
    local_scores = [_prototype_scores(24, 6) for _ in range(3)]
    expected = swav_reference(global_scores, local_scores, 0.1, 0.05, 3)
    assert swav_loss(global_scores, local_scores).item() == pytest.approx(expected, rel=1e-4)
    # no small crops: the two global crops predict each other, the symmetric loss of eq. 1
    expected = swav_reference(global_scores, [], 0.1, 0.05, 3)
    assert swav_loss(global_scores, []).item() == pytest.approx(expected, rel=1e-4)


def test_swav_queue_adds_rows_to_sinkhorn_only():
    global_scores = [_prototype_scores(8, 6) for _ in range(2)]
    queue = [_prototype_scores(40, 6) for _ in range(2)]
    with_queue = swav_loss(global_scores, [], queue_scores=queue)
    # by hand: codes from Sinkhorn on [batch; queue], only the batch's rows kept
    codes = [sinkhorn(torch.cat([s, q]))[:8] for s, q in zip(global_scores, queue)]
    expected = sum(-(codes[i] * F.log_softmax(global_scores[1 - i] / 0.1, 1)).sum(1).mean() for i in range(2)) / 2
    assert with_queue.item() == pytest.approx(expected.item(), rel=1e-5)
    assert with_queue.item() != pytest.approx(swav_loss(global_scores, []).item(), rel=1e-3)


def test_swav_gradient_flows_into_predictions_only():
    global_scores = [_prototype_scores(16, 4).requires_grad_() for _ in range(2)]
    swav_loss(global_scores, []).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in global_scores)


def test_dino_equals_loop():
    teacher = [torch.randn(10, 7) for _ in range(2)]
    student = [torch.randn(10, 7) for _ in range(4)]          # the 2 global crops, then 2 local crops
    center = torch.randn(7) * 0.1
    for temperatures in [(0.1, 0.04), (0.2, 0.07)]:
        expected = dino_reference(student, teacher, center, *temperatures)
        assert dino_loss(student, teacher, center, *temperatures).item() == pytest.approx(expected, rel=1e-4)


def test_dino_teacher_gets_no_gradient():
    teacher = [torch.randn(6, 5, requires_grad=True) for _ in range(2)]
    student = [torch.randn(6, 5, requires_grad=True) for _ in range(3)]
    dino_loss(student, teacher, torch.zeros(5)).backward()
    assert all(t.grad is None for t in teacher) and all(s.grad is not None for s in student)


WORLD_SIZE, PER_PROCESS, PROTOTYPES = 2, 12, 5


def _sinkhorn_worker(rank: int, folder: str, init_method: str):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        scores = _prototype_scores(WORLD_SIZE * PER_PROCESS, PROTOTYPES, generator=torch.Generator().manual_seed(0))
        mine = scores[rank * PER_PROCESS:(rank + 1) * PER_PROCESS]
        torch.save(sinkhorn(mine, 0.05, 3), f'{folder}/codes{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_sinkhorn_two_processes_equal_one(tmp_path):
    run_processes(_sinkhorn_worker, WORLD_SIZE, tmp_path, args=((tmp_path / 'rendezvous').as_uri(),), timeout=120)
    codes = torch.cat([torch.load(tmp_path / f'codes{r}.pt') for r in range(WORLD_SIZE)])
    scores = _prototype_scores(WORLD_SIZE * PER_PROCESS, PROTOTYPES, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(codes, sinkhorn(scores, 0.05, 3), atol=1e-6)
    # and not the codes of each half on its own: the all-reduce matters
    halves = torch.cat([sinkhorn(scores[:PER_PROCESS]), sinkhorn(scores[PER_PROCESS:])])
    assert not torch.allclose(codes, halves, atol=1e-4)

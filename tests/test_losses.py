"""The losses of `sslcourse.losses` against naive per-row Python loops written from the papers' equations.

The package casts its inputs to float32 (so bf16/fp16 activations are summed in float32); the references below
run in float64, so the tolerances are those of float32 arithmetic.
"""
import math

import pytest
import torch

from sslcourse.losses import byol_loss, info_nce, nt_xent

ATOL, RTOL = 1e-5, 1e-4


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Chen et al. 2020, eq. 1: for each of the 2N anchors, −log of the positive's share among the 2N − 1 others."""
    z = [_unit(row) for row in torch.cat([z1, z2])]
    n = len(z1)
    total = z1.new_zeros(())
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = torch.exp(torch.dot(z[i], z[positive]) / temperature)
        denominator = z1.new_zeros(())
        for k in range(2 * n):
            if k != i:
                denominator = denominator + torch.exp(torch.dot(z[i], z[k]) / temperature)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


def info_nce_reference(query, key, negatives, temperature):
    """van den Oord et al. 2018, eq. 4: −log of the positive key's share among it and the K negatives."""
    total = query.new_zeros(())
    for q, k in zip(query, key):
        q, k = _unit(q), _unit(k)
        numerator = torch.exp(torch.dot(q, k) / temperature)
        denominator = numerator
        for negative in negatives:
            denominator = denominator + torch.exp(torch.dot(q, _unit(negative)) / temperature)
        total = total - torch.log(numerator / denominator)
    return total / len(query)


def byol_reference(p, z):
    """Grill et al. 2020, eq. 2: 2 − 2·cos(p_i, z_i), averaged over the rows."""
    total = p.new_zeros(())
    for a, b in zip(p, z):
        total = total + 2 - 2 * _cos(a, b)
    return total / len(p)


NT_XENT_CASES = [(1, 4, 0.5), (2, 3, 0.1), (5, 8, 0.2), (8, 16, 0.07), (16, 32, 1.0), (7, 5, 2.0)]


@pytest.mark.parametrize('n, d, temperature', NT_XENT_CASES)
def test_nt_xent_matches_loop(n, d, temperature):
    generator = torch.Generator().manual_seed(n * 100 + d)
    z1 = torch.randn(n, d, dtype=torch.float64, generator=generator) * 3
    z2 = torch.randn(n, d, dtype=torch.float64, generator=generator) * 3
    expected = nt_xent_reference(z1, z2, temperature)
    actual = nt_xent(z1, z2, temperature)
    assert actual.shape == ()
    torch.testing.assert_close(actual.double(), expected, atol=ATOL, rtol=RTOL)


def test_nt_xent_default_temperature_is_half():
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(2, 6, 10, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(nt_xent(z1, z2).double(), nt_xent_reference(z1, z2, 0.5), atol=ATOL, rtol=RTOL)


def test_nt_xent_single_pair_is_zero():
    "N = 1: each anchor's only candidate is its positive, so the loss is exactly −log 1 = 0, not NaN."
    z1, z2 = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    loss = nt_xent(z1, z2, 0.2)
    assert torch.isfinite(loss)
    assert abs(loss.item()) < 1e-6
    assert abs(nt_xent_reference(z1, z2, 0.2).item()) < 1e-12


def test_nt_xent_perfect_alignment_lower_bound():
    "Identical views, orthogonal images: the loss is log(1 + (2N − 2)·e^0 / e^(1/τ))."
    n, temperature = 4, 0.1
    z = torch.eye(n, 8, dtype=torch.float64)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / temperature))
    assert nt_xent(z, z.clone(), temperature).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_is_symmetric_and_scale_invariant():
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(2, 6, 5, dtype=torch.float64, generator=generator)
    loss = nt_xent(z1, z2, 0.3)
    torch.testing.assert_close(nt_xent(z2, z1, 0.3), loss, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(nt_xent(7 * z1, 0.01 * z2, 0.3), loss, atol=ATOL, rtol=RTOL)
    # the pairing matters: shuffling the rows of one view changes the loss
    assert not torch.allclose(nt_xent(z1, z2.roll(1, 0), 0.3), loss, atol=1e-3)


@pytest.mark.parametrize('n, d, temperature', [(1, 3, 0.5), (3, 4, 0.2), (6, 8, 0.07), (9, 5, 1.5)])
def test_nt_xent_gradients_match_loop(n, d, temperature):
    generator = torch.Generator().manual_seed(7 * n + d)
    base1 = torch.randn(n, d, dtype=torch.float64, generator=generator)
    base2 = torch.randn(n, d, dtype=torch.float64, generator=generator)
    a1, a2 = base1.clone().requires_grad_(), base2.clone().requires_grad_()
    b1, b2 = base1.clone().requires_grad_(), base2.clone().requires_grad_()
    nt_xent(a1, a2, temperature).backward()
    nt_xent_reference(b1, b2, temperature).backward()
    assert a1.grad.dtype == torch.float64  # the cast inside is differentiable: grads come back in the input's dtype
    torch.testing.assert_close(a1.grad, b1.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(a2.grad, b2.grad, atol=ATOL, rtol=RTOL)
    if n > 1: assert a1.grad.abs().max() > 1e-4  # a non-trivial gradient was compared


@pytest.mark.parametrize('n, k, d, temperature', [(1, 1, 3, 0.2), (4, 7, 8, 0.2), (6, 20, 16, 0.07), (3, 5, 4, 1.0)])
def test_info_nce_matches_loop(n, k, d, temperature):
    generator = torch.Generator().manual_seed(n * 1000 + k * 10 + d)
    query = torch.randn(n, d, dtype=torch.float64, generator=generator) * 2
    key = torch.randn(n, d, dtype=torch.float64, generator=generator) * 0.5
    negatives = torch.randn(k, d, dtype=torch.float64, generator=generator) * 4
    expected = info_nce_reference(query, key, negatives, temperature)
    torch.testing.assert_close(info_nce(query, key, negatives, temperature).double(), expected, atol=ATOL, rtol=RTOL)


def test_info_nce_gradients_match_loop():
    generator = torch.Generator().manual_seed(11)
    tensors = [torch.randn(shape, dtype=torch.float64, generator=generator) for shape in ((5, 6), (5, 6), (9, 6))]
    ours = [t.clone().requires_grad_() for t in tensors]
    theirs = [t.clone().requires_grad_() for t in tensors]
    info_nce(*ours, temperature=0.3).backward()
    info_nce_reference(*theirs, temperature=0.3).backward()
    for a, b in zip(ours, theirs): torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=RTOL)


def test_info_nce_default_temperature():
    generator = torch.Generator().manual_seed(5)
    query, key = torch.randn(2, 3, 4, dtype=torch.float64, generator=generator)
    negatives = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(info_nce(query, key, negatives).double(),
                               info_nce_reference(query, key, negatives, 0.2), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('n, d', [(1, 2), (4, 8), (17, 3), (32, 64)])
def test_byol_loss_matches_loop(n, d):
    generator = torch.Generator().manual_seed(n + 31 * d)
    p = torch.randn(n, d, dtype=torch.float64, generator=generator)
    z = torch.randn(n, d, dtype=torch.float64, generator=generator) * 10
    torch.testing.assert_close(byol_loss(p, z).double(), byol_reference(p, z), atol=ATOL, rtol=RTOL)


def test_byol_loss_extremes_and_gradients():
    p = torch.randn(5, 7, dtype=torch.float64)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)    # aligned: 2 − 2·1
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)       # opposite: 2 − 2·(−1)
    z = torch.randn(5, 7, dtype=torch.float64)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    byol_loss(a, z).backward(); byol_reference(b, z).backward()
    torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=RTOL)

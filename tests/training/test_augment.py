"""The paper's augmentation: PCA statistics against numpy, jitter changes colour not shape."""

import numpy as np
import torch

from model.preprocess import Preset
from training.augment import augment_batch, centre_batch, pca_lighting, pca_stats


def test_pca_stats_match_numpy_eigendecomposition() -> None:
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.2, 0.1], [0.2, 0.5, 0.05], [0.1, 0.05, 0.3]])
    pixels = rng.normal(size=(5000, 3)) @ mix
    eigval, eigvec = pca_stats(torch.from_numpy(pixels))
    ref_val, ref_vec = np.linalg.eigh(np.cov(pixels.T))
    order = ref_val.argsort()[::-1]
    np.testing.assert_allclose(eigval.numpy(), ref_val[order], rtol=1e-5)
    for i in range(3):  # eigenvectors up to sign
        assert abs(abs(float(eigvec[:, i] @ torch.from_numpy(ref_vec[:, order[i]]).float())) - 1) < 1e-4


def test_pca_lighting_changes_colour_not_shape() -> None:
    x = torch.rand(4, 3, 16, 16)
    eigval, eigvec = torch.tensor([0.2, 0.02, 0.005]), torch.linalg.qr(torch.randn(3, 3))[0]
    y = pca_lighting(x, eigval, eigvec, std=0.1, generator=torch.Generator().manual_seed(0))
    shift = y - x
    assert not torch.allclose(y, x)
    # the same RGB offset at every pixel of an image: spatial structure untouched
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    # the offset lies in the span of eigvec scaled by the eigenvalues
    offsets = shift[:, :, 0, 0]
    alphas = offsets @ eigvec / eigval
    assert alphas.abs().max() < 1.0  # alpha ~ N(0, 0.1)


def test_augment_batch_crops_flips_and_normalises() -> None:
    preset = Preset(crop_size=4, resize_size=6, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    batch = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6).repeat(64, 1, 1, 1)
    out = augment_batch(batch, preset, pca_std=0.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 4, 4)
    patches = {tuple(o[0].flatten().mul(255).round().int().tolist()) for o in out}
    assert len(patches) > 4  # several offsets and flips occurred
    for p in patches:  # each is a 4x4 window of the original, maybe mirrored
        rows = np.array(p).reshape(4, 4)
        assert all(abs(int(r[1]) - int(r[0])) == 1 for r in rows)
    centre = centre_batch(batch[:1], preset)[0, 0].mul(255).round().int()
    assert centre[0].tolist() == [7, 8, 9, 10]


def _mirrored(out: torch.Tensor) -> torch.Tensor:
    """Which patches of an arange image came out mirrored (values fall along each row)."""
    rows = out[:, 0].mul(255).round()
    return rows[:, 0, 1] < rows[:, 0, 0]


def test_flips_mirror_about_half_of_the_patches_and_none_when_off() -> None:
    preset = Preset(crop_size=4, resize_size=6, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    batch = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6).repeat(2000, 1, 1, 1)
    on = _mirrored(augment_batch(batch, preset, pca_std=0.0, generator=torch.Generator().manual_seed(0)))
    off = _mirrored(augment_batch(batch, preset, pca_std=0.0, flip=False, generator=torch.Generator().manual_seed(0)))
    assert 0.45 < float(on.float().mean()) < 0.55  # each reflection with probability 1/2
    assert not off.any()


def test_pca_jitter_draws_alpha_with_std_0_1_along_the_eigenvectors() -> None:
    """Section 4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, a_i ~ N(0, 0.1), one draw per image."""
    torch.manual_seed(0)
    eigvec = torch.linalg.qr(torch.randn(3, 3))[0]  # orthonormal columns, not symmetric: p_i, not rows
    eigval = torch.tensor([0.2, 0.05, 0.01])
    x = torch.rand(4000, 3, 2, 2)
    y = pca_lighting(x, eigval, eigvec, std=0.1, generator=torch.Generator().manual_seed(1))
    shift = (y - x)[:, :, 0, 0]  # (B, 3)
    # the exact shift: the same draws, weighted by the eigenvalues, along the eigenvector columns
    alpha = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    torch.testing.assert_close(shift, (alpha * eigval) @ eigvec.T, rtol=1e-5, atol=1e-6)
    # and its statistics: recovered alphas have standard deviation 0.1 (a factor of 2 either way fails)
    recovered = shift @ eigvec / eigval
    assert torch.allclose(recovered.std(0), torch.full((3,), 0.1), atol=0.006), recovered.std(0)
    assert torch.allclose(recovered.mean(0), torch.zeros(3), atol=0.006)

"""The reference likelihoods (`hf_ddpm_ncsn.likelihood.histogram_baselines`) against probabilities written down by
hand, normalisation, limits of the smoothing and the maximum-likelihood ordering of the models."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from hf_ddpm_ncsn.data import digits_arrays
from hf_ddpm_ncsn.likelihood import HistogramBaselines, histogram_baselines


def _images(rows: list[list[int]], shape: tuple[int, int, int] = (1, 1, 2)) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.uint8).view(len(rows), *shape)


def test_a_two_pixel_case_gives_the_probabilities_written_by_hand():
    # two training images of 1x1x2 pixels: (0, 255) and (0, 0); alpha = 0.5, so each denominator is N + 128
    train = _images([[0, 255], [0, 0]])
    held_out = _images([[0, 255], [7, 7], [255, 0]])
    result = histogram_baselines(train, held_out, smoothing=0.5)

    # per pixel: position 0 saw 0 twice; position 1 saw 255 once and 0 once (denominator 2 + 128 = 130)
    per_pixel = [
        -math.log2((2.5 / 130) * (1.5 / 130)) / 2,
        -math.log2((0.5 / 130) * (0.5 / 130)) / 2,  # 7 was never seen at either position
        -math.log2((0.5 / 130) * (1.5 / 130)) / 2,
    ]
    # shared: the four training pixels are 0, 255, 0, 0 (denominator 4 + 128 = 132); position plays no part,
    # so (0, 255) and (255, 0) get the same probability
    shared = [
        -math.log2((3.5 / 132) * (1.5 / 132)) / 2,
        -math.log2((0.5 / 132) * (0.5 / 132)) / 2,
        -math.log2((1.5 / 132) * (3.5 / 132)) / 2,
    ]
    torch.testing.assert_close(result.per_pixel, torch.tensor(per_pixel, dtype=torch.float64), rtol=1e-13, atol=0)
    torch.testing.assert_close(result.shared, torch.tensor(shared, dtype=torch.float64), rtol=1e-13, atol=0)
    # levels used: 0 and 255 in training, 7 only in the held-out images
    assert result.num_levels == 3 and result.smoothing == 0.5
    assert result.uniform.tolist() == [math.log2(3)] * 3
    assert isinstance(result, HistogramBaselines)
    assert all(t.dtype == torch.float64 and t.shape == (3,) for t in (result.per_pixel, result.shared, result.uniform))


def test_a_dataset_with_known_counts_at_every_position_and_channel():
    # 2 channels of 2x3: position d holds value 10 d in exactly k_d of the N images and 200 in the others,
    # shuffled independently per position. N > 1024, so the training images are counted in several chunks.
    num_train, dim, alpha = 2100, 12, 0.01
    k = [100 * (d + 1) for d in range(dim)]
    generator = torch.Generator().manual_seed(0)
    columns = []
    for d in range(dim):
        column = torch.full((num_train,), 200, dtype=torch.uint8)
        column[: k[d]] = 10 * d
        columns.append(column[torch.randperm(num_train, generator=generator)])
    train = torch.stack(columns, dim=1).view(num_train, 2, 2, 3)
    held_out = torch.stack(
        [
            torch.tensor([10 * d for d in range(dim)], dtype=torch.uint8),  # the "rare" value everywhere
            torch.full((dim,), 200, dtype=torch.uint8),
            torch.tensor([10 * ((d + 1) % dim) for d in range(dim)], dtype=torch.uint8),  # values moved one place
        ]
    ).view(3, 2, 2, 3)
    result = histogram_baselines(train, held_out, smoothing=alpha)

    denominator = num_train + 256 * alpha
    expected = [
        -sum(math.log2((k[d] + alpha) / denominator) for d in range(dim)) / dim,
        -sum(math.log2((num_train - k[d] + alpha) / denominator) for d in range(dim)) / dim,
        # value 10 (d + 1) never occurs at position d (and 0 at the last position is not 200 either)
        -math.log2(alpha / denominator),
    ]
    torch.testing.assert_close(result.per_pixel, torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=0)

    total = num_train * dim
    shared_counts = {10 * d: k[d] for d in range(dim)} | {200: total - sum(k)}
    shared = [-sum(math.log2((shared_counts[v] + alpha) / (total + 256 * alpha)) for v in image) / dim
              for image in held_out.flatten(1).tolist()]  # fmt: skip
    torch.testing.assert_close(result.shared, torch.tensor(shared, dtype=torch.float64), rtol=1e-13, atol=0)
    assert result.num_levels == dim + 1  # 0, 10, ..., 110 and 200


def test_add_one_smoothing_is_laplaces_rule():
    generator = torch.Generator().manual_seed(1)
    train = torch.randint(0, 4, (9, 1, 2, 2), generator=generator, dtype=torch.uint8) * 60
    held_out = torch.randint(0, 5, (6, 1, 2, 2), generator=generator, dtype=torch.uint8) * 60
    result = histogram_baselines(train, held_out, smoothing=1)

    columns = train.flatten(1).T.tolist()
    counts = [Counter(column) for column in columns]  # per position
    everything = Counter(v for column in columns for v in column)
    for i, image in enumerate(held_out.flatten(1).tolist()):
        per_pixel = -sum(math.log2((counts[d][v] + 1) / (9 + 256)) for d, v in enumerate(image)) / 4
        shared = -sum(math.log2((everything[v] + 1) / (36 + 256)) for v in image) / 4
        assert result.per_pixel[i].item() == pytest.approx(per_pixel, rel=1e-13)
        assert result.shared[i].item() == pytest.approx(shared, rel=1e-13)
    assert result.smoothing == 1.0


@pytest.mark.parametrize("smoothing", [0.01, 0.3, 1.0])
def test_each_model_is_a_probability_distribution_over_all_images(smoothing):
    # every 1x1x2 image once: the probabilities 2^(-D bits/dim) of each model sum to 1 (the 256^2 images)
    train = torch.randint(0, 3, (7, 1, 1, 2), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    every_image = torch.tensor(list(itertools.product(range(256), repeat=2)), dtype=torch.uint8).view(-1, 1, 1, 2)
    result = histogram_baselines(train, every_image, smoothing=smoothing)
    for bits_per_dim in (result.per_pixel, result.shared, result.uniform):
        assert torch.exp2(-2 * bits_per_dim).sum().item() == pytest.approx(1.0, rel=1e-12)
    assert result.num_levels == 256 and result.uniform.eq(8.0).all()


def test_heavy_smoothing_tends_to_8_bits_per_dim():
    # alpha -> infinity swamps the counts: both histograms become uniform over the 256 values
    train = torch.randint(0, 256, (50, 3, 2, 2), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    held_out = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    result = histogram_baselines(train, held_out, smoothing=1e9)
    torch.testing.assert_close(result.per_pixel, torch.full((4,), 8.0, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(result.shared, torch.full((4,), 8.0, dtype=torch.float64), rtol=0, atol=1e-6)


def test_the_uniform_model_counts_the_levels_of_both_splits():
    train = _images([[0, 128], [128, 128]])
    result = histogram_baselines(train, _images([[0, 0]]))
    assert result.num_levels == 2 and result.uniform.item() == 1.0
    result = histogram_baselines(train, _images([[0, 255]]))  # 255 occurs only in the held-out image
    assert result.num_levels == 3 and result.uniform.item() == math.log2(3)


def test_the_digits_use_17_levels():
    train, held_out = (torch.from_numpy(digits_arrays(split)[0])[:, None] for split in ("train", "test"))
    result = histogram_baselines(train, held_out)
    assert result.num_levels == 17 and result.uniform.eq(math.log2(17)).all()
    # the digits' pixels depend on their position (the borders are almost always 0): the per-pixel model wins
    assert result.per_pixel.mean() < result.shared.mean() < result.uniform.mean()


def test_maximum_likelihood_ordering_on_the_training_split():
    # position-dependent statistics: the left column is mostly dark, the right column mostly bright. On the images
    # it was fitted on, the per-pixel model (a richer family) is at least as good as the shared histogram, which is
    # at least as good as the uniform model over the levels used (the empirical distribution is the ML estimate)
    generator = np.random.default_rng(4)
    left = generator.choice([0, 64, 255], size=(300, 4, 1), p=[0.8, 0.15, 0.05])
    right = generator.choice([0, 64, 255], size=(300, 4, 1), p=[0.05, 0.15, 0.8])
    train = torch.from_numpy(np.concatenate([left, right], axis=2).astype(np.uint8))[:, None]
    result = histogram_baselines(train, train, smoothing=0.01)
    per_pixel, shared, uniform = (x.mean().item() for x in (result.per_pixel, result.shared, result.uniform))
    assert per_pixel < shared - 0.3 and shared < uniform
    # the model is fitted on the training images alone: the held-out argument does not change it
    alone = histogram_baselines(train, train[:5], smoothing=0.01)
    torch.testing.assert_close(alone.per_pixel, result.per_pixel[:5], rtol=0, atol=0)


def test_results_do_not_depend_on_the_order_of_the_images():
    generator = torch.Generator().manual_seed(5)
    train = torch.randint(0, 256, (40, 3, 2, 2), generator=generator, dtype=torch.uint8)
    held_out = torch.randint(0, 256, (10, 3, 2, 2), generator=generator, dtype=torch.uint8)
    result = histogram_baselines(train, held_out)
    train_order, held_out_order = torch.randperm(40, generator=generator), torch.randperm(10, generator=generator)
    shuffled = histogram_baselines(train[train_order], held_out[held_out_order])
    for name in ("per_pixel", "shared", "uniform"):
        torch.testing.assert_close(getattr(shuffled, name), getattr(result, name)[held_out_order], rtol=1e-15, atol=0)
    one_by_one = torch.cat([histogram_baselines(train, image[None]).per_pixel for image in held_out])
    torch.testing.assert_close(one_by_one, result.per_pixel, rtol=1e-15, atol=0)


_GOOD = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("train", "held_out", "smoothing", "message"),
    [
        (_GOOD.float(), _GOOD, 0.01, r"train_images must be a uint8 tensor .*torch.float32"),
        (_GOOD, _GOOD.long(), 0.01, r"held_out_images must be a uint8 tensor .*torch.int64"),
        (_GOOD.numpy(), _GOOD, 0.01, r"train_images must be a uint8 tensor .*ndarray"),
        (_GOOD[:, 0], _GOOD, 0.01, r"train_images must be a uint8 tensor of shape \(B, C, H, W\)"),
        (_GOOD[:0], _GOOD, 0.01, r"train_images must hold at least one image"),
        (_GOOD, _GOOD[:0], 0.01, r"held_out_images must hold at least one image"),
        (_GOOD, torch.zeros(2, 1, 2, 3, dtype=torch.uint8), 0.01, r"same \(C, H, W\), got \(1, 2, 2\) and \(1, 2, 3"),
        (_GOOD, torch.zeros(2, 3, 2, 2, dtype=torch.uint8), 0.01, r"same \(C, H, W\)"),
        (_GOOD, _GOOD, 0, "smoothing must be a finite number"),
        (_GOOD, _GOOD, -1.0, "smoothing must be a finite number"),
        (_GOOD, _GOOD, math.nan, "smoothing must be a finite number"),
        (_GOOD, _GOOD, math.inf, "smoothing must be a finite number"),
        (_GOOD, _GOOD, True, "smoothing must be a finite number"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(train, held_out, smoothing, message):
    with pytest.raises(ValueError, match=message):
        histogram_baselines(train, held_out, smoothing=smoothing)

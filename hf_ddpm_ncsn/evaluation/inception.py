"""FID and KID with Inception, only from a local feature-extractor file: no installed package ships the weights,
and the evaluation never downloads them."""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .sample_quality import feature_distances, resize_images

INCEPTION_MISSING = (
    "FID needs Inception weights that no installed package ships offline; pass --inception_weights PATH "
    "(a TorchScript feature extractor) to compute it."
)
INCEPTION_SIZE = 299


def load_inception_extractor(inception_weights: str | os.PathLike) -> torch.nn.Module:
    """A local Inception feature extractor: TorchScript (`torch.jit.save`) or a `torch.export` archive (`.pt2`).

    The module must map float images in [0, 255] of shape (N, 3, 299, 299) to pool features (N, 2048), e.g. an
    export of the `pt_inception-2015-12-05` network. NVIDIA's StyleGAN2-ADA `inception-2015-12-05.pt` works as
    it is: `return_features=True` is passed when the module's forward accepts it.

    Args:
        inception_weights (`str` or `os.PathLike`): path of the file.

    Raises:
        `FileNotFoundError`: no such file.
    """
    path = Path(inception_weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"inception_weights={str(inception_weights)!r} does not exist: pass the path of a local TorchScript "
            "feature extractor (float images in [0, 255], (N, 3, 299, 299) -> (N, 2048))"
        )
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        # TorchScript is deprecated in torch 2.x, but it is the format the Inception ports are published in
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


@torch.no_grad()
def inception_features(extractor: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Pool features of uint8 images: grey repeated to 3 channels, bilinear resize to 299, values in [0, 255].

    Args:
        extractor (`torch.nn.Module`): see `load_inception_extractor`.
        images (`torch.Tensor`): uint8 (N, C, H, W).
        batch_size (`int`, defaults to 64): images per extractor call.
    """
    return_features = "return_features" in _forward_argument_names(extractor)
    features = []
    for batch in images.split(batch_size):
        inputs = batch.float().expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch.float()
        # float32 bilinear weights can overshoot 255 by an ulp; the extractor's contract is [0, 255]
        inputs = resize_images(inputs, INCEPTION_SIZE).clamp(0, 255)
        outputs = extractor(inputs, return_features=True) if return_features else extractor(inputs)
        features.append(outputs.reshape(len(batch), -1).double().cpu().numpy())
    return np.concatenate(features)


def _forward_argument_names(module: torch.nn.Module) -> list[str]:
    schema = getattr(module.forward, "schema", None)  # TorchScript methods describe themselves by a schema
    if schema is not None:
        return [argument.name for argument in schema.arguments]
    return list(inspect.signature(module.forward).parameters)


def inception_metrics(
    extractor: torch.nn.Module,
    samples: torch.Tensor,
    reference: torch.Tensor,
    baseline: torch.Tensor,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """FID and KID with a local Inception extractor, each beside its real-vs-real baseline.

    Args:
        extractor (`torch.nn.Module`): see `load_inception_extractor`.
        samples, reference, baseline (`torch.Tensor`): uint8 images, as for `sample_quality`.
        kid_subsets (`int`, defaults to 100): subsets of the kernel distance.
        kid_subset_size (`int`, defaults to 1000): subset size of the kernel distance.
        seed (`int`, defaults to 0): seed of the kernel distance's subsets.
        batch_size (`int`, defaults to 64): images per extractor call.
    """
    distances = feature_distances(
        inception_features(extractor, samples, batch_size),
        inception_features(extractor, reference, batch_size),
        inception_features(extractor, baseline, batch_size),
        kid_subsets,
        kid_subset_size,
        seed,
    )
    return {name.replace("frechet_distance", "fid"): value for name, value in distances.items()}

"""Interactive inference with the promptable SAM-3D network: one crop, many clicks, one encoder pass.

As published, a prediction is one forward pass over a cubic crop (the model's ``crop_size``, 128 voxels
at 1 mm) around the click: no sliding window, no test-time augmentation, fp32, softmax channel 1 as the
object probability. The image encoder is by far the heavy part (a ViT-B over 512 upsampled slices), and
it does not depend on the clicks, so its result is kept per crop: further clicks in the same crop run
only the prompt encoder and the mask decoder.

Preprocessing (resampling to the card's spacing, HU clip, z-score, channel repeat) and placing the
crop in the volume are the caller's job; this module works in crop voxels.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from tsfm_backend.models.sam3d import CropEmbedding, Sam3D

LOG = logging.getLogger(__name__)

# Upsampled slices patch-embedded at once, in units of the network's num_slice (8 x 16 = 128 for ViT-B):
# about 0.4 GB of activations, instead of 1.6 GB for all 512 slices of a 128^3 crop.
SLICE_CHUNK_MERGES = 8
# Attention windows processed together on a CPU (a GPU takes them all): bounds the logits tensor.
CPU_WINDOW_CHUNK = 16


@dataclass
class _CachedCrop:
    crop: torch.Tensor
    embedding: CropEmbedding


class Sam3DPredictor:
    """Foreground probability of a crop given clicks, with the crop's image embedding cached.

    Args:
        network: a ``Sam3D`` (eval mode is set here).
        device: where to run; the network is moved there.
        cache_size: how many crops keep their embedding (least recently used ones are dropped).
        slice_chunk: upsampled slices embedded at once (multiple of the network's ``num_slice``);
            None picks ``8 * num_slice``.
        window_chunk: attention windows per batch; None takes all on a GPU, 16 on a CPU.
    """

    def __init__(
        self,
        network: Sam3D,
        device: str | torch.device = "cpu",
        cache_size: int = 2,
        slice_chunk: int | None = None,
        window_chunk: int | None = None,
    ) -> None:
        if not isinstance(network, Sam3D):
            raise TypeError(f"Sam3DPredictor needs a sam3d network, got {type(network).__name__}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        encoder = network.image_encoder
        self.crop_size = network.crop_size
        self.in_channels = encoder.patch_embed.proj.in_channels
        self.slice_chunk = slice_chunk if slice_chunk is not None else SLICE_CHUNK_MERGES * encoder.num_slice
        if self.device.type == "cpu":
            window_chunk = CPU_WINDOW_CHUNK if window_chunk is None else window_chunk
            LOG.info(
                "3DSAM-adapter runs on the CPU: each new crop's image embedding takes a long time "
                "(minutes for ViT-B); further clicks in the same crop reuse it"
            )
        self.window_chunk = window_chunk
        self.cache_size = cache_size
        self._cache: OrderedDict[Hashable, _CachedCrop] = OrderedDict()

    def _check_inputs(self, crop: torch.Tensor, points_kji: torch.Tensor, outside_ok: bool = False) -> None:
        expected = (1, self.in_channels, self.crop_size, self.crop_size, self.crop_size)
        if tuple(crop.shape) != expected:
            raise ValueError(f"crop must have shape {expected}, got {tuple(crop.shape)}")
        if not crop.is_floating_point():
            raise ValueError(f"crop must be a normalised float tensor, got {crop.dtype}")
        if points_kji.ndim != 2 or points_kji.shape[1] != 3 or points_kji.shape[0] < 1:
            raise ValueError(f"points_kji must be (N>=1, 3) crop voxels, got shape {tuple(points_kji.shape)}")
        if points_kji.is_floating_point():
            raise ValueError(f"points_kji must be integer voxel indices, got {points_kji.dtype}")
        outside = (points_kji < 0) | (points_kji >= self.crop_size)
        if not outside_ok and bool(outside.any()):
            bad = points_kji[outside.any(dim=1)][0].tolist()
            raise ValueError(f"click {bad} lies outside the {self.crop_size}^3 crop")

    @torch.no_grad()
    def embedding(self, crop: torch.Tensor, crop_key: Hashable | None = None) -> CropEmbedding:
        """The crop's image embedding: from the cache when ``crop_key`` holds this very crop, else computed.

        A key whose cached crop differs from ``crop`` (the region moved) is recomputed and replaced.
        """
        crop = crop.to(self.device, torch.float32)
        if crop_key is not None and crop_key in self._cache:
            cached = self._cache[crop_key]
            if torch.equal(cached.crop, crop):
                self._cache.move_to_end(crop_key)
                return cached.embedding
            del self._cache[crop_key]
        embedding = self.network.encode(crop, slice_chunk=self.slice_chunk, window_chunk=self.window_chunk)
        if crop_key is not None:
            self._cache[crop_key] = _CachedCrop(crop, embedding)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embedding

    @torch.no_grad()
    def predict(
        self, crop: torch.Tensor, points_kji: torch.Tensor, crop_key: Hashable | None = None,
        outside_ok: bool = False,
    ) -> torch.Tensor:
        """Object probability on the crop grid.

        Args:
            crop: (1, in_channels, S, S, S) float, normalised as the card says, axes (A0, A1, A2) =
                (K, J, I) with A0 the slice axis; S = the network's ``crop_size``.
            points_kji: (N, 3) integer click voxels (k, j, i) inside the crop. The published model
                treats all clicks alike (no negative clicks).
            crop_key: any hashable naming this crop (e.g. its origin in the volume); clicks with the
                same key and the same crop reuse the image embedding. None disables caching.
            outside_ok: accept clicks outside the crop, as the authors' ``test.py`` does when the clicks
                span more than the crop (the prompt encoder then samples zeros for them).
        Returns:
            (S, S, S) float32 probability in [0, 1] on the CPU, axes (A0, A1, A2).
        """
        self._check_inputs(crop, points_kji, outside_ok)
        embedding = self.embedding(crop, crop_key)
        points = points_kji.to(self.device).long().unsqueeze(0)
        logits = self.network.decode(embedding, points)
        return torch.softmax(logits.float(), dim=1)[0, 1].cpu()

    def is_cached(self, crop_key: Hashable) -> bool:
        """Whether ``crop_key`` currently holds an embedding."""
        return crop_key in self._cache

    def clear(self) -> None:
        """Drop every cached embedding (frees device memory)."""
        self._cache.clear()

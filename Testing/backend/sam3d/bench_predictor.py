"""Latency of SAM-3D clicks: a later click in a cached crop against the published one-pass pipeline.

Random weights (timing does not depend on their values). Prints, for the chosen preset and device:
the image embedding (first click), a later click through the cached path (prompt encoder + the prompted
decoder level), the published decoder on the same features (all four levels and the whole classifier,
what an uncached click pays on top of the encoder), and their ratios.

    .venv/bin/python Testing/backend/sam3d/bench_predictor.py --preset vit_b --device cpu --skip-encoder
    .venv/bin/python Testing/backend/sam3d/bench_predictor.py --preset vit_b --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tsfm_backend.models.sam3d import PRESETS, CropEmbedding, Sam3D
from tsfm_backend.models.sam3d.model import PROMPTED_LEVEL


def _timed(function, device: torch.device, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-encoder", action="store_true", help="time the clicks on random features only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = Sam3D(**PRESETS[args.preset]).to(device).eval()
    size = network.crop_size
    grid = network.image_encoder.grid
    width = network.prompt_encoder.positional_encoding_gaussian_matrix.shape[1] * 2
    crop = torch.randn(1, 3, size, size, size, device=device)
    points = torch.tensor([[[size // 2, size // 2, size // 2]]], device=device)

    with torch.no_grad():
        if args.skip_encoder:
            features = [torch.randn(1, width, grid, grid, grid, device=device) for _ in range(4)]
            image_small = torch.randn(1, 1, size // 2, size // 2, size // 2, device=device)
            encode_s = float("nan")
        else:
            chunk = 8 * network.image_encoder.num_slice
            window_chunk = 16 if device.type == "cpu" else None
            encode_s, features = _timed(
                lambda: network.image_encoder(crop, slice_chunk=chunk, window_chunk=window_chunk), device, 1
            )
            image_small = torch.nn.functional.interpolate(
                crop[:, :1].permute(0, 1, 3, 4, 2), size=(size // 2,) * 3, mode="trilinear"
            )
        partial = network.mask_decoder.static_partial(features, PROMPTED_LEVEL, image_small)
        embedding = CropEmbedding(features[PROMPTED_LEVEL], partial)
        cached_s, _ = _timed(lambda: network.decode(embedding, points), device, args.repeats)

        def published_decoder():
            prompted = network.prompt_encoder(features[PROMPTED_LEVEL], points, size)
            return network.mask_decoder([*features[:PROMPTED_LEVEL], prompted], image_small, size)

        published_s, _ = _timed(published_decoder, device, args.repeats)

    print(f"preset {args.preset}, crop {size}^3, device {device}, threads {args.threads}")
    print(f"image embedding (first click)          {encode_s:8.3f} s")
    print(f"later click, cached crop               {cached_s:8.3f} s")
    print(
        f"published decoder + prompt, per click  {published_s:8.3f} s   ratio {published_s / cached_s:5.2f}x"
    )
    if not args.skip_encoder:
        uncached = encode_s + published_s
        print(f"uncached click (encoder + decoder)     {uncached:8.3f} s   ratio {uncached / cached_s:5.1f}x")


if __name__ == "__main__":
    main()

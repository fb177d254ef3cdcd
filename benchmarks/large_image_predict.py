"""Streaming whole-image prediction at scale: peak memory and windows per second from a 2k^2 to
a 16k^2 image.

For every side length a one-channel tiled TIFF is generated tile by tile (never held whole),
then a fresh process predicts it window by window with a dual-input DA-RefineNet (random
weights: the cost does not depend on them), every window with its context crop cut from the
whole image (:func:`nasseg.inference.large.predict_large_image`), and writes the label map as a
tiled TIFF. The process's peak resident memory (``ru_maxrss``) and the windows per second are
recorded; a flat peak across sizes is the point (the accumulator is one window high, so only
the image's width enters it).

    python benchmarks/large_image_predict.py --sizes 2048 4096 8192 16384 --out bench/large
    python benchmarks/large_image_predict.py --quick          # 2048 and 4096

Writes ``OUT/large_image_predict.json`` and ``.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from report import save_report

TILE = 256


def _tiles(side: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range((-(-side // TILE)) ** 2):
        yield rng.integers(60, 200, (TILE, TILE), dtype=np.uint8)


def make_image(path: Path, side: int) -> None:
    """A ``side x side`` uint8 tiled TIFF of noise, written tile by tile."""
    import tifffile

    tifffile.imwrite(path, _tiles(side, side), shape=(side, side), dtype=np.uint8,
                     tile=(TILE, TILE))


def measure(image: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Predict ``image`` in this process; its peak RSS and throughput."""
    import torch

    from nasseg.data.multires import open_large_image
    from nasseg.inference.large import predict_large_image, write_label_bands
    from nasseg.inference.sliding_window import network_predict_fn, window_starts
    from nasseg.space import create_space

    torch.manual_seed(0)
    space = create_space("da_refinenet", knobs={"context_factor": args.context},
                         in_channels=1, num_classes=4, features=args.features, max_blocks=1)
    net = space.freeze(space.paper_sample("attention")).eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with open_large_image(image) as img:
        width, height = img.size
        bands = predict_large_image(network_predict_fn(net), img, (args.patch, args.patch), 4,
                                    net.data_view(), overlap=args.overlap,
                                    batch_size=args.batch_size)
        written = write_label_bands(bands, width, height, out, 4, fmt="tiff")
    seconds = time.perf_counter() - start
    windows = len(window_starts(height, args.patch, args.overlap)) * \
        len(window_starts(width, args.patch, args.overlap))
    return {"side": width, "windows": windows, "seconds": round(seconds, 1),
            "windows_per_s": round(windows / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_predict_mb": round(before, 1), "reader": type(img).__name__,
            "output": written.name, "output_mb": round(written.stat().st_size / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--out", type=Path, default=Path("bench/large"))
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--context", type=int, default=5)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2048 and 4096 only")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: measure one image
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.out, args)))
        return
    if args.quick:
        args.sizes = [2048, 4096]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in args.sizes:
        image = args.out / f"image_{side}.tif"
        make_image(image, side)
        child = [sys.executable, __file__, "--one", str(image), "--out",
                 str(args.out / f"labels_{side}"), "--patch", str(args.patch), "--context",
                 str(args.context), "--overlap", str(args.overlap), "--batch-size",
                 str(args.batch_size), "--features", str(args.features)]
        done = subprocess.run(child, check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
        image.unlink()
    lines = ["| image | windows | seconds | windows/s | peak RSS (MB) | label file |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['side']}² | {r['windows']} | {r['seconds']} | {r['windows_per_s']} | "
              f"{r['peak_rss_mb']} | {r['output']} ({r['output_mb']} MB) |" for r in rows]
    save_report(args.out, "large_image_predict", args, rows, "\n".join(lines))


if __name__ == "__main__":
    main()

"""`amr-fast bench data`: samples/s of our training stream vs a folder of PNG files read by PIL, same run.

For each case (32x32 greyscale, 64x64 RGB) the same N images are written twice: as our shards (the encoding
`make_shards` picks, raw; plus PNG shards for 64x64 RGB) and as one PNG file per image. Both are read with the same
number of worker processes and batch size: ours through `train_loader`, the baseline through a plain
`torch.utils.data.DataLoader` (shuffle, PIL decode, default collate). Each reader first delivers a few batches
(workers started, files in the page cache), then is timed over the next `--batches` batches. The images are
smooth random fields plus noise (deterministic), so PNG compresses them about as well as real photographs.
Figures are ratios measured side by side; other processes on the machine add noise.

The same shards are also read over HTTP in the same run (`python -m http.server` on 127.0.0.1, started and stopped
by the bench; `--data http://...` in the trainers): the "http" rows give what streaming through WebDataset's
opener (curl) costs next to local files, without a network's bandwidth limit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from amr_fast.data.loader import train_loader
from amr_fast.data.sources import arrays_source
from amr_fast.data.write import write_source


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="also write the results as JSON to this file")
    parser.add_argument("--num-images", type=int, default=8192, help="images per case")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of both readers")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of both readers")
    parser.add_argument("--batches", type=int, default=60, help="batches timed per reader (after warm-up)")
    parser.add_argument("--warmup", type=int, default=4, help="batches read before timing starts")
    parser.add_argument(
        "--trainer-rate",
        type=float,
        default=1000.0,
        help="images/s the trainer consumes on this CPU (the target is 10x this)",
    )
    parser.add_argument("--workdir", default=None, help="where to write the images (default: a temp dir)")


def synthetic_images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, C, size, size]: bilinear-upsampled 8x8 random fields plus +-8 pixel noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, 8, 8, channels), dtype=np.uint8)
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(low[i, :, :, 0] if channels == 1 else low[i]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.int16).reshape(size, size, channels)
        arr = arr + rng.integers(-8, 9, arr.shape, dtype=np.int16)
        out[i] = np.clip(arr, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out


class PngFolder(Dataset):
    """The baseline: one PNG file per image, decoded by PIL in __getitem__, label from a list."""

    def __init__(self, paths: list[Path], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as im:
            arr = np.array(im)  # a writable copy
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr)), self.labels[i]


def _rate(batches, warmup: int, timed: int) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(timed):
        batch = next(it)
        n += len(batch["x"] if isinstance(batch, dict) else batch[0])
    return n / (time.perf_counter() - start)


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """`python -m http.server` serving `root` on 127.0.0.1 (a free port) for the duration; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # up to 10 s for the server to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"`{' '.join(cmd)}` exited with status {proc.returncode}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _cycle(loader: DataLoader):
    while True:
        yield from loader


def run_case(work: Path, channels: int, size: int, args: argparse.Namespace) -> list[dict]:
    x = synthetic_images(args.num_images, channels, size)
    y = np.arange(args.num_images, dtype=np.int64) % 10
    png_dir = work / f"png-{channels}x{size}"
    png_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(x):
        paths.append(png_dir / f"{i:06d}.png")
        Image.fromarray(img[0] if channels == 1 else img.transpose(1, 2, 0)).save(paths[-1])
    baseline = DataLoader(
        PngFolder(paths, y.tolist()), batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )
    png_rate = _rate(_cycle(baseline), args.warmup, args.batches)
    source = arrays_source(f"bench-{channels}x{size}", {"train": (x, y)}, [str(c) for c in range(10)])
    encodings = ["auto"] if size <= 32 else ["auto", "png"]
    rows = []
    for enc in encodings:
        root = write_source(source, work / f"shards-{channels}x{size}-{enc}", encoding=enc, shard_size=1024)
        chosen = json.loads((root / "index.json").read_text())["encoding"]
        with http_server(root) as url:
            for where, data in (("local", root), ("http", url)):
                stream = train_loader(data, args.batch_size, workers=args.workers)
                ours = _rate(stream, args.warmup, args.batches)
                del stream  # stop its workers before the next reader starts
                rows.append(
                    {
                        "case": f"{size}x{size}x{channels}",
                        "encoding": chosen,
                        "from": where,
                        "ours_samples_per_s": round(ours),
                        "png_folder_samples_per_s": round(png_rate),
                        "ratio_vs_png": round(ours / png_rate, 2),
                        "ratio_vs_trainer": round(ours / args.trainer_rate, 1),
                    }
                )
    return rows


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("no_proxy", "127.0.0.1")  # the HTTP rows talk to this machine only
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = [row for c, s in [(1, 32), (3, 64)] for row in run_case(Path(tmp), c, s, args)]
    head = (
        f"{'case':<10} {'shards':>6} {'from':>5} {'ours img/s':>11} {'PNG img/s':>10} {'vs PNG':>7} {'vs trainer':>10}"
    )
    print(f"data stream, {args.workers} workers, batch {args.batch_size}, {args.num_images} images per case")
    print(head)
    for r in rows:
        print(
            f"{r['case']:<10} {r['encoding']:>6} {r['from']:>5} {r['ours_samples_per_s']:>11} "
            f"{r['png_folder_samples_per_s']:>10} "
            f"{r['ratio_vs_png']:>6}x {r['ratio_vs_trainer']:>9}x"
        )
    if args.out:
        result = {
            "bench": "data",
            "workers": args.workers,
            "batch_size": args.batch_size,
            "rows": rows,
            "trainer_rate": args.trainer_rate,
        }
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0

"""`amr-fast shard SOURCE --src PATH --out DIR`: convert a dataset's published files into WebDataset shards.

Examples:
    amr-fast shard fashion-mnist --src /usr/share/datasets/fashion-mnist --out data/fashion-mnist
    amr-fast shard fashion-mnist --src /usr/share/datasets/fashion-mnist --out data/fashion-mnist-32 --size 32
    amr-fast shard svhn --src ~/svhn --out data/svhn-1k --subset 1000 --seed 0      # the paper's SVHN ablation
    amr-fast shard dsprites-procedural --out data/dsprites                          # no download needed
Sources and their expected files: README, section "Data"; splits and encodings: amr_fast/data/sources.py.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import time
import zipfile
import zlib
from pathlib import Path

from amr_fast.data.index import INDEX_NAME, load_index
from amr_fast.data.sources import SOURCES
from amr_fast.data.write import make_shards


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=list(SOURCES), help="which dataset's published files to convert")
    parser.add_argument(
        "--src",
        default=None,
        help="folder (or file) holding the published files; none for dsprites-procedural and spiral",
    )
    parser.add_argument("--out", required=True, help="dataset directory to write (shards + index.json)")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize images to SIZE x SIZE (e.g. 32 for the "
        "AMR 32x32 models on MNIST-like data); default: the source's size, 64 for CelebA/Zappos",
    )
    parser.add_argument(
        "--subset",
        type=int,
        default=None,
        help="keep a class-balanced random subset of train with "
        "this many samples (e.g. SVHN 1000 / 5000 / 10000 / 20000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the train write order")
    parser.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples per split (quick tries)")
    parser.add_argument(
        "--encoding",
        choices=["auto", "raw", "png", "jpeg"],
        default="auto",
        help="image encoding: auto = raw uint8 up to 64x64x3, PNG above; jpeg is lossy (smaller files)",
    )
    parser.add_argument("--crop", type=int, default=None, help="celeba: centre-crop side before resizing (148)")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        out = make_shards(
            args.source,
            args.src,
            args.out,
            size=args.size,
            subset=args.subset,
            seed=args.seed,
            shard_size=args.shard_size,
            limit=args.limit,
            encoding=args.encoding,
            crop=args.crop,
        )
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        # A source file cut short or damaged (the IDX reader names its file itself; these come from the others).
        index = Path(args.out).expanduser() / INDEX_NAME
        state = f"the dataset at {args.out} is unchanged" if index.is_file() else f"{args.out} holds no dataset"
        raise ValueError(
            f"a source file under {args.src} is truncated or damaged ({type(err).__name__}: {err}); {state}: "
            "re-download the source files"
        ) from None
    index = load_index(out)
    shape = (
        f"dim {index['dim']}"
        if index.get("dim")
        else f"{index['channels']}x{index['image_size']}x{index['image_size']}"
    )
    counts = ", ".join(
        f"{split} {info['num_samples']} ({len(info['shards'])} shards)" for split, info in index["splits"].items()
    )
    print(f"{index['name']}: {shape}, {index['encoding']}, {counts} -> {out} in {time.perf_counter() - start:.1f} s")
    return 0

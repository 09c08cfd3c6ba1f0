"""Optional TensorBoard logging (`--tensorboard`): the same scalars as stats.jsonl and the samples PNG grids.

The trainer builds one `TensorBoardLogger(run_dir)` on rank 0 and calls `scalars(row, kimg)` once per status
tick and `image(tag, img, kimg)` whenever it writes `samples-<kimg>.png`. Steps are images seen (kimg * 1000), so
curves of runs with different batch sizes line up. TensorBoard is an extra (`pip install "amr_fast[tensorboard]"`);
without it the constructor raises ValueError with that fix.
"""

from __future__ import annotations

import math
import os

import numpy as np


class TensorBoardLogger:
    """A thin SummaryWriter wrapper writing event files into `<run_dir>/tensorboard/`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError(
                "--tensorboard needs the tensorboard package, which is not installed: "
                'pip install "amr_fast[tensorboard]" (or pip install tensorboard), or drop --tensorboard'
            ) from err
        self.writer = SummaryWriter(log_dir=os.path.join(os.fspath(run_dir), "tensorboard"))

    def scalars(self, row: dict, kimg: float) -> None:
        """Every finite number of a stats row (bools and strings are skipped), at step = images seen."""
        step = int(round(kimg * 1000))
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def image(self, tag: str, img: np.ndarray, kimg: float) -> None:
        """A uint8 [H, W, C] grid (C = 1 or 3, as amr_fast.eval.grids returns)."""
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        self.writer.add_image(tag, img, global_step=int(round(kimg * 1000)), dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

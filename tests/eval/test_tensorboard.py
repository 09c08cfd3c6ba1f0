"""TensorBoard glue: a clear error without the package; scalars and images reach the writer with image steps."""

import sys
import types

import numpy as np
import pytest

from amr_fast.eval.tensorboard import TensorBoardLogger


def test_missing_tensorboard_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ValueError, match=r"pip install .*tensorboard"):
        TensorBoardLogger(tmp_path)


def test_scalars_and_images_go_to_the_writer(monkeypatch, tmp_path):
    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, name, value, global_step):
            calls.append(("scalar", name, value, global_step))

        def add_image(self, tag, img, global_step, dataformats):
            calls.append(("image", tag, img.shape, global_step, dataformats))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    tb = TensorBoardLogger(tmp_path)
    tb.scalars({"loss/ae": 0.5, "kimg": 2.0, "note": "x", "bad": float("nan"), "flag": True}, kimg=2.5)
    tb.image("samples", np.zeros((10, 12, 1), np.uint8), kimg=4)
    tb.close()
    assert calls[0] == ("dir", str(tmp_path / "tensorboard"))
    assert ("scalar", "loss/ae", 0.5, 2500) in calls and ("scalar", "kimg", 2.0, 2500) in calls
    assert len([c for c in calls if c[0] == "scalar"]) == 2
    assert ("image", "samples", (10, 12, 3), 4000, "HWC") in calls and calls[-1] == ("close",)

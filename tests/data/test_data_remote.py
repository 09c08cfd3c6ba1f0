"""Data from elsewhere and damaged data: shards served over HTTP (a server thread on 127.0.0.1) and through
`pipe:cat .../{}`, a server that drops a shard mid-stream, one fetch per shard per round, random bytes that cost
only the samples they hit, and one clear line for each kind of bad input."""

from __future__ import annotations

import functools
import shutil
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from amr_fast import cli, stats, train
from amr_fast.config import TrainConfig
from amr_fast.data import eval_loader, load_index, make_shards, remote, train_loader
from amr_fast.data.loader import _TrainStream
from amr_fast.data.sources import arrays_source
from amr_fast.data.write import write_source


class _Handler(SimpleHTTPRequestHandler):
    """Serves a directory; counts GETs per file; sends only half of the files named in `drop`, then hangs up."""

    def __init__(self, *args, counts: Counter, drop: set[str], **kwargs) -> None:
        self.counts, self.drop = counts, drop
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.counts[name] += 1
        if name not in self.drop:
            return super().do_GET()
        body = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True  # the connection closes with half the promised bytes

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve(root: Path, drop: tuple[str, ...] = ()):
    """(base URL, GET counts) of an HTTP server on 127.0.0.1 serving `root` from a thread."""
    counts: Counter = Counter()
    handler = functools.partial(_Handler, directory=str(root), counts=counts, drop=set(drop))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", counts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch, tmp_path):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("AMR_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(remote, "RETRY_DELAY", 0.01)


@pytest.fixture(scope="module")
def dsprites16(tmp_path_factory) -> Path:
    """Procedural dSprites at 16x16: 128 training images in 4 shards of 32, 128 validation images."""
    return make_shards("dsprites-procedural", None, tmp_path_factory.mktemp("ds16"), size=16, limit=128,
                       shard_size=32)  # fmt: skip


def tiny(data: str, **kw) -> TrainConfig:
    base = dict(data=data, arch="amr32", img_size=16, channels=1, width=4, code_channels=2, num_classes=3,
                method="amr", mixer="mixup", k=2, batch=8, lr=1e-3, total_kimg=0.016, tick_kimg=0.008,
                snapshot_kimg=1, state_kimg=1, probe_kimg=1, workers=0, seed=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base).validate()


def test_train_two_iterations_from_an_http_url(dsprites16, tmp_path):
    with serve(dsprites16) as (url, counts):
        stats.reset()
        summary = train.training_loop(tiny(url), tmp_path / "run", log=None)
    assert summary["kimg"] == 0.016 and counts["index.json"] >= 1
    rows = stats.read_jsonl(tmp_path / "run" / "stats.jsonl")
    assert rows[-1]["data/seen"] >= 16 and rows[-1]["data/skipped"] == 0
    assert "data/skipped" in (tmp_path / "run" / "log.txt").read_text()  # in the status line


def test_pipe_cat_reads_what_the_local_reader_reads(dsprites16):
    local = [b for b in eval_loader(dsprites16, "train", 16)]
    piped = [b for b in eval_loader(f"pipe:cat {dsprites16}/{{}}", "train", 16)]
    assert [b["index"].tolist() for b in piped] == [b["index"].tolist() for b in local]
    assert all(np.array_equal(p["x"], q["x"]) for p, q in zip(piped, local))


def test_a_server_that_drops_a_shard_mid_stream_is_survived(dsprites16, tmp_path):
    dropped = load_index(dsprites16)["splits"]["train"]["shards"][1]
    with serve(dsprites16, drop=(dropped,)) as (url, counts), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats.reset()
        cfg = tiny(url, total_kimg=0.128, tick_kimg=0.128, max_skipped=0.5, skip_window=1000)  # one whole round
        summary = train.training_loop(cfg, tmp_path / "run", log=None)
    assert summary["kimg"] == 0.128  # the run finished
    row = stats.read_jsonl(tmp_path / "run" / "stats.jsonl")[-1]
    assert 0 < row["data/skipped"] < 32 and row["data/seen"] >= 128  # half a shard lost, counted, topped up
    named = [str(w.message) for w in caught if url + dropped in str(w.message)]
    assert named and "tried 4 times" in named[0]  # the URL in the warning; bounded retries
    assert counts[dropped] % (remote.RETRIES + 1) == 0 and counts[dropped] <= 4 * (
        remote.RETRIES + 1
    )  # per part + top-up


@pytest.mark.parametrize("shards, world", [(3, 2), (1, 2)])
def test_no_shard_is_fetched_more_than_once_per_round(tmp_path, shards, world):
    """Every rank reads the whole global stream, and the machine downloads each shard once per round: its parts
    (and the ranks) share one downloaded copy."""
    x = np.zeros((24 * shards, 1, 8, 8), np.uint8)
    root = write_source(arrays_source("t", {"train": (x, np.arange(len(x)) % 4)}, list("abcd")), tmp_path / "d",
                        shard_size=24)  # fmt: skip
    with serve(root) as (url, counts):
        index = load_index(url)
        per_round = _TrainStream(index, "train", 4, None, 0, 0, 0, 64).batches_per_round
        for rank in range(world):
            stream = train_loader(url, 4, rank=rank, world_size=world, workers=0)
            for _ in range(per_round):
                next(stream)
    assert counts and max(n for name, n in counts.items() if name.endswith(".tar")) == 1


def _fm_like(tmp_path: Path, n: int = 500, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8), rng.integers(0, classes, n)
    source = arrays_source("fm-like", {"train": (x, y)}, [str(c) for c in range(classes)])
    return write_source(source, tmp_path / "fm", shard_size=n)


@pytest.mark.parametrize("where", ["anywhere", "pixels"])
def test_random_bytes_in_a_few_samples_cost_those_samples_only(tmp_path, where):
    root = _fm_like(tmp_path)
    path = root / load_index(root)["splits"]["train"]["shards"][0]
    data = bytearray(path.read_bytes())
    stride = 512 + 1024 + 512 + 512  # raw header + 32x32 pixels + cls header + label block
    rng = np.random.default_rng(1)
    hit = sorted(rng.choice(500, size=5, replace=False).tolist())
    lost = {int(data[s * stride : s * stride + 8]) for s in hit}  # the keys of the samples at those positions
    for s in hit:  # 8 random bytes in the sample's headers and pixels (not in the padding, which holds nothing)
        lo, hi = (512, 1536) if where == "pixels" else (0, 2048)
        for off in rng.choice(np.arange(lo, hi), size=8, replace=False):
            data[s * stride + off] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    got, seen = {}, {}
    with pytest.warns(UserWarning):
        for b in eval_loader(root, "train", 64, stats=seen, max_skipped=0.5):
            got.update(zip(b["index"].tolist(), b["x"]))
    assert seen == {"seen": 495, "skipped": 5} and set(range(500)) - set(got) == lost


def test_a_label_outside_num_classes_is_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(40) % 10
    y[7] = 37  # one corrupt label
    source = arrays_source("t", {"train": (rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), y)}, list("abcdefghij"))
    root = write_source(source, tmp_path / "d", shard_size=40)
    seen = {}
    with pytest.warns(UserWarning, match="labels outside 0..9 .*label 37"):
        ys = [v for b in eval_loader(root, "train", 8, stats=seen, max_skipped=0.5) for v in b["y"].tolist()]
    assert seen == {"seen": 39, "skipped": 1} and max(ys) == 9


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("amr-fast")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_each_bad_input_is_one_clear_line(dsprites16, tmp_path, capsys, idx_dir):
    shard = dsprites16 / load_index(dsprites16)["splits"]["train"]["shards"][0]
    run = ["train", "--preset", "dsprites-mixup", "--outdir", str(tmp_path / "run")]
    _one_line_error(capsys, run + [f"data={shard}"], str(shard), "is a shard", str(dsprites16))
    cut = tmp_path / "cut"
    shutil.copytree(dsprites16, cut)
    text = (cut / "index.json").read_text()
    (cut / "index.json").write_text(text[: len(text) // 2])
    _one_line_error(capsys, run + [f"data={cut}"], str(cut / "index.json"), "not valid JSON", "cut short")
    with serve(dsprites16) as (url, _):
        _one_line_error(capsys, run + [f"data={url}{shard.name}"], "names a shard")
        _one_line_error(capsys, run + [f"data={url}nowhere"], f"{url}nowhere/index.json")
    _one_line_error(capsys, run + ["data=pipe:cat /nowhere"], "needs {}")
    labels = _fm_like(tmp_path, n=24, classes=12)  # 32x32x1 like Fashion-MNIST, but 12 classes
    fm = ["train", "--preset", "fashion-mnist-mixup", "--outdir", str(tmp_path / "run-fm"), f"data={labels}"]
    _one_line_error(capsys, fm, "has 12 classes", "num_classes=10", "num_classes=12")
    _one_line_error(capsys, run + ["max_skipped=2"], "max_skipped must be a fraction")

    src, _ = idx_dir
    out = tmp_path / "fm-out"
    assert cli.main(["shard", "fashion-mnist", "--src", str(src), "--out", str(out)]) == 0
    before = (out / "index.json").read_bytes()
    gz = src / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-200])  # a half-downloaded file
    capsys.readouterr()
    _one_line_error(capsys, ["shard", "fashion-mnist", "--src", str(src), "--out", str(out)], str(gz), "truncated",
                    "nothing was written")  # fmt: skip
    assert (out / "index.json").read_bytes() == before  # the old dataset stays as it was

"""`amr-fast explore`: the server's endpoints in-process, its one-line errors, and one end-to-end test in a real
headless browser (Debian's `chromium`; skipped, saying why, where it is not installed)."""

import io
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from amr_fast import checkpoint, cli
from amr_fast import data as amr_data
from amr_fast.config import TrainConfig
from amr_fast.eval import explore
from amr_fast.models import build_networks
from amr_fast.overrides import to_json

S = 16  # amr32 at its smallest working size: a 4 x 4 code grid


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    root = amr_data.make_shards("dsprites-procedural", None, tmp / "data", size=S, limit=40, shard_size=20)
    cfg = TrainConfig(arch="amr32", img_size=S, channels=1, width=8, code_channels=3, mixer="cutmix").validate()
    torch.manual_seed(0)
    nets = build_networks(cfg)
    snap = tmp / "snapshot.safetensors"
    checkpoint.save_snapshot(snap, nets, json.loads(to_json(cfg)), kimg=1.0)
    return snap, root


@pytest.fixture(scope="module")
def server(setup):
    snap, root = setup
    ex = explore.Explorer(snap, root, limit=10, impl="torch")
    srv = explore.make_server(ex, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield ex, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def get(url, data=None):
    """(status, content type, body) without raising on 4xx."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def png(body: bytes) -> np.ndarray:
    if body.startswith(b"data:image/png;base64,"):
        import base64

        body = base64.b64decode(body.split(b",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(body))).astype(int)


def mix(base, query):
    status, _, body = get(f"{base}/api/mix?{query}")
    assert status == 200, body
    r = json.loads(body)
    return png(r["mix"].encode()), png(r["pixel"].encode()), r["ms"]


def test_page_info_data_and_slots(server):
    ex, base = server
    status, ctype, body = get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and b"amr-fast explore" in body
    info = json.loads(get(base + "/api/info")[2])
    assert info["code_shape"] == [3, 4, 4] and info["grid"] == [4, 4] and info["data"] == 10
    assert png(get(base + "/api/data/3.png")[2]).shape == (S, S)
    assert get(base + "/api/slot/1?data=3")[0] == 200
    assert (png(get(base + "/api/slot/1.png")[2]) == ex.images[3][0].numpy()).all()
    assert png(get(base + "/api/slot/1/rec.png")[2]).shape == (S, S)


def test_mix_weights_move_the_mix_and_corners_are_reconstructions(server):
    ex, base = server
    get(base + "/api/slot/0?data=0")
    get(base + "/api/slot/1?data=1")
    a, pa, ms = mix(base, "k=2&mode=weights&w=1,0")
    b, pb, _ = mix(base, "k=2&mode=weights&w=0.3,0.7")
    assert ms >= 0 and not (a == b).all() and not (pa == pb).all()
    assert np.abs(a - png(get(base + "/api/slot/0/rec.png")[2])).max() <= 1  # w = (1, 0) decodes h_0
    assert np.abs(pa - ex.images[0][0].numpy()).max() <= 1  # the pixel blend at (1, 0) is image 0
    c, _, _ = mix(base, "k=3&mode=weights&w=1,1,1")  # unnormalised weights are normalised
    assert c.shape == (S, S)


def test_mix_masks_channels_and_boxes(server):
    ex, base = server
    get(base + "/api/slot/0?data=4")
    get(base + "/api/slot/1?data=5")
    zero, _, _ = mix(base, "k=2&mode=channels&src=0,0,0")
    one, _, _ = mix(base, "k=2&mode=channels&src=0,1,0")
    assert not (zero == one).all()
    box = np.zeros((4, 4), int)
    box[1:3, 2:4] = 1  # positions (rows 1-2, cols 2-3) from source 1
    _, pix, _ = mix(base, "k=2&mode=positions&src=" + ",".join(map(str, box.flatten())))
    up = np.kron(box, np.ones((S // 4, S // 4), int)).astype(bool)  # the box in pixels
    x0, x1 = ex.images[4][0].numpy(), ex.images[5][0].numpy()
    assert (pix[up] == x1[up]).all() and (pix[~up] == x0[~up]).all()


def test_strip_and_upload(server, tmp_path):
    ex, base = server
    status, ctype, body = get(base + "/api/strip.png?k=3&mode=weights&w=0.2,0.3,0.5")
    assert status == 200 and ctype == "image/png"
    assert png(body).shape[0] == 4 * (2 + 2 * (S + 2))  # two rows of tiles, 4x upscaled
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 4), np.uint8), "RGBA")
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert get(base + "/api/slot/2", buf.getvalue())[0] == 200
    assert png(get(base + "/api/slot/2.png")[2]).shape == (S, S)  # fitted like `amr-fast mix`


@pytest.mark.parametrize(
    ("path", "data", "code", "message"),
    [
        ("/api/slot/0", b"this is not an image", 400, "not an image"),
        ("/api/mix?k=4", None, 400, "k must be 2 or 3"),
        ("/api/mix?k=2&w=1,-1", None, 400, "w must be 2 weights"),
        ("/api/mix?k=2&mode=positions&src=0,1", None, 400, "16 positions"),
        ("/api/mix?k=2&mode=channels&src=0,5,0", None, 400, "source in 0..1"),
        ("/api/mix?k=2&mode=nope", None, 400, "mode must be one of"),
        ("/api/slot/7?data=0", None, 400, "slot must be 0..2"),
        ("/api/slot/0?data=99", None, 400, "does not exist"),
        ("/nowhere", None, 404, "no such page"),
    ],
)
def test_bad_input_is_a_one_line_json_error(server, path, data, code, message):
    _, base = server
    status, ctype, body = get(base + path, data)
    assert status == code and ctype == "application/json"
    err = json.loads(body)["error"]
    assert message in err and "\n" not in err and "Traceback" not in err


def test_cli_errors_port_in_use_and_unknown_architecture(setup, server, tmp_path, capsys):
    snap, _ = setup
    _, base = server
    port = base.rsplit(":", 1)[1]
    assert cli.main(["explore", str(snap), "--port", port]) == 2
    err = capsys.readouterr().err
    assert "is in use" in err and err.count("\n") == 1 and "Traceback" not in err
    state, meta = checkpoint.load_snapshot(snap)
    bad = dict(meta["config"], arch="resnet9000")
    from safetensors.torch import save_file

    tensors = {f"{m}.{n}": t for m, sd in state.items() for n, t in sd.items()}
    save_file(tensors, tmp_path / "bad.safetensors", metadata={**{k: str(v) for k, v in meta.items()},
              "config": json.dumps(bad), "kimg": "1.0"})  # fmt: skip
    assert cli.main(["explore", str(tmp_path / "bad.safetensors"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "arch must be one of" in err and err.count("\n") == 1


def test_bench_reports_every_mode(setup, capsys):
    snap, _ = setup
    assert cli.main(["explore", str(snap), "--bench", "3"]) == 0
    out = capsys.readouterr().out
    assert all(mode in out for mode in explore.MODES) and "round trip median" in out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--virtual-time-budget=15000", "--window-size=1000,780"]  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install chromium`)")
def test_browser_drag_moves_the_weight_point_and_the_mix_changes(server, tmp_path):
    """The page replays a drag of the weight point (the URL hash) through its own pointer handlers; every move
    fetches a new mix. The DOM it leaves says which weights and mix images it saw; then a screenshot."""
    _, base = server
    url = f"{base}/#k=3&drag=0.5,0.15:0.3,0.75:0.85,0.8"
    r = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert "TESTLOG " in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    log = json.loads(r.stdout.split("TESTLOG ", 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    ws = [tuple(f["w"]) for f in log["frames"]]
    assert len(set(ws)) == 3 and max(ws[0]) == ws[0][0] and max(ws[2]) == ws[2][2]  # near A, then near C
    assert log["changed"] and len({f["mix_tail"] for f in log["frames"]}) == 3
    shot = tmp_path / "explore.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and Image.open(shot).size == (1000, 780)

"""`amr-fast explore SNAPSHOT [--data DIR] [--host 127.0.0.1] [--port 8765]`: a live mix explorer in the browser.

Researchers judge mixing autoencoders (AMR, Beckham et al., NeurIPS 2019) by looking at mixes; this serves a small
page (`explore.html`, plain JS, no framework) over the standard library's `http.server`, bound to 127.0.0.1 unless
`--host` says otherwise. Pick two or three images (thumbnails of a shard directory given with `--data`, or uploads
of any size and format PIL reads, fitted to the model like `amr-fast mix`), see their reconstructions, and

- drag a point in a segment (k = 2) or a triangle (k = 3): mixup weights on the simplex, `dec(sum_j w_j h_j)`;
- click code channels to take them from another source (Bernoulli mixup's per-channel masks), or
- drag boxes on the code grid (CutMix of the code, section 5 of the paper; per-position masks);

and the decoded mix updates live (decoded on the server, PNG back; the page shows the server's time and the
round trip), next to the pixel-space counterpart (the blend at the same weights, or the same box in pixels). A
button saves the current strip (sources, reconstructions, mix, pixel mix) as a PNG.

Endpoints (all GET, but uploads): `/` the page; `/api/info` the model (JSON); `/api/data/<i>.png` a dataset
image; `/api/slot/<j>.png`, `/api/slot/<j>/rec.png` a source and its reconstruction; `/api/slot/<j>?data=<i>`
(GET) or a POST of image bytes to `/api/slot/<j>` sets source j; `/api/mix?k=&mode=&w=&src=` the decoded and
pixel mixes as JSON data URLs with the decode time; `/api/strip.png?...` the strip to save. Bad input gets a 400
with a one-line JSON error, which the page shows; nothing prints a traceback.

Example:
    amr-fast explore runs/fm-cutmix/snapshot-000030.016.safetensors --data data/fashion-mnist-32
    amr-fast explore SNAPSHOT --bench 200    # per-update latency (round trips through a local server), then exit
"""

from __future__ import annotations

import argparse
import base64
import errno
import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from amr_fast import mixing
from amr_fast.checkpoint import load_networks
from amr_fast.data import eval_loader, load_index
from amr_fast.eval import grids
from amr_fast.eval.mix import fit_image

PAGE = Path(__file__).with_name("explore.html")
MAX_SOURCES = 3  # the page draws a segment (k = 2) or a triangle (k = 3)
MAX_UPLOAD = 32 << 20  # bytes
MODES = ("weights", "channels", "positions")


def png_bytes(img: np.ndarray | torch.Tensor, scale: int = 1) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) or an image [C, H, W] in [-1, 1] -> PNG bytes, nearest-upscaled `scale`x."""
    if isinstance(img, torch.Tensor):
        img = grids.to_uint8(img).numpy().transpose(1, 2, 0)
    if scale > 1:
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)  # speed over size: these are tiny
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def load_dataset(root: str | Path, limit: int) -> tuple[torch.Tensor, list[str]]:
    """The first `limit` images of a shard directory's valid split (else test, else train): uint8 [N, C, H, W]
    and a caption per image (its class name when the index has them)."""
    index = load_index(root)
    split = next((s for s in ("valid", "test", "train") if s in index["splits"]), None)
    if split is None:
        raise ValueError(f"{root} has no valid/test/train split; pass a directory made by `amr-fast shard`")
    names = index.get("class_names") or []
    xs, captions = [], []
    for batch in eval_loader(root, split, min(limit, 256)):
        n = min(limit - sum(len(x) for x in xs), len(batch["x"]))
        xs.append(batch["x"][:n])
        for y in batch.get("y", torch.full((n,), -1))[:n].tolist():
            captions.append(names[y] if 0 <= y < len(names) else (str(y) if y >= 0 else ""))
        if sum(len(x) for x in xs) >= limit:
            break
    if not xs:
        raise ValueError(f"the {split} split of {root} is empty")
    return torch.cat(xs), captions


def _placeholder(i: int, size: int, channels: int) -> torch.Tensor:
    """A simple shape to mix when no --data is given: a disc, a square, a bar."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    shape = [(xx**2 + yy**2) < 0.4, (xx.abs() < 0.5) & (yy.abs() < 0.5), (xx.abs() < 0.2) & (yy.abs() < 0.8)][i % 3]
    return (shape.float() * 255).to(torch.uint8).expand(channels, size, size).contiguous()


class Explorer:
    """The model side of the explorer (no HTTP): sources, their codes and reconstructions, and mixes of them."""

    def __init__(self, snapshot: str | Path, data: str | Path | None = None, limit: int = 64, impl: str = "auto"):
        nets, cfg = load_networks(snapshot)
        if cfg.arch == "mlp" or cfg.channels not in (1, 3):
            raise ValueError(
                f"this snapshot is not an image model (arch={cfg.arch}, channels={cfg.channels}); explore needs an "
                "amr32 or dsprites64 snapshot with 1 or 3 channels"
            )
        self.cfg, self.impl = cfg, impl
        self.ae = grids.autoencoder(nets["ae"]).eval()
        self.snapshot = str(snapshot)
        with torch.no_grad():
            self.code_shape = tuple(self.ae.encode(torch.zeros(1, cfg.channels, cfg.img_size, cfg.img_size)).shape[1:])
        self.grid = mixing.code_grid(self.code_shape)
        self.images, self.captions = (
            load_dataset(data, limit) if data else (torch.zeros(0, cfg.channels, cfg.img_size, cfg.img_size), [])
        )
        self.lock = threading.Lock()  # one model call at a time (the server is threaded)
        self.sources: list[torch.Tensor] = []  # uint8 [C, H, W] each
        self.codes: list[torch.Tensor] = []  # [1, *code]
        self.recs: list[torch.Tensor] = []  # [C, H, W] in [-1, 1]
        for j in range(MAX_SOURCES):
            x = self.images[j] if j < len(self.images) else _placeholder(j, cfg.img_size, cfg.channels)
            self.sources.append(x)
            self.codes.append(torch.empty(0))
            self.recs.append(torch.empty(0))
            self._encode(j)

    # -------------------------------------------------------------------------------------------------------------
    def info(self) -> dict:
        return {
            "snapshot": self.snapshot,
            "arch": self.cfg.arch,
            "mixer": self.cfg.mixer,
            "k": self.cfg.k,
            "img_size": self.cfg.img_size,
            "channels": self.cfg.channels,
            "code_shape": list(self.code_shape),
            "grid": list(self.grid),
            "data": len(self.images),
            "captions": self.captions,
            "max_sources": MAX_SOURCES,
        }

    def _slot(self, j: int) -> int:
        if not 0 <= j < MAX_SOURCES:
            raise ValueError(f"source slot must be 0..{MAX_SOURCES - 1}; got {j}")
        return j

    def _encode(self, j: int) -> None:
        with self.lock, torch.no_grad():
            x = grids.to_unit(self.sources[j][None])
            self.codes[j] = self.ae.encode(x)
            self.recs[j] = grids.decode(self.ae, self.codes[j], self.cfg)[0]

    def set_from_data(self, j: int, i: int) -> None:
        if not 0 <= i < len(self.images):
            hint = "start explore with --data DIR" if not len(self.images) else f"0..{len(self.images) - 1}"
            raise ValueError(f"dataset image {i} does not exist ({hint})")
        self.sources[self._slot(j)] = self.images[i]
        self._encode(j)

    def set_from_bytes(self, j: int, raw: bytes) -> None:
        """An uploaded file of any size and format PIL reads, fitted like `amr-fast mix`."""
        self._slot(j)
        try:
            with Image.open(io.BytesIO(raw)) as img:
                x = fit_image(img, self.cfg.img_size, self.cfg.channels)
        except UnidentifiedImageError:
            raise ValueError("the upload is not an image (unrecognised format); use PNG, JPEG, GIF, BMP, ...") from None
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"the upload is not an image PIL can read ({err}); use PNG, JPEG, GIF, BMP, ...") from None
        self.sources[j] = x
        self._encode(j)

    # -------------------------------------------------------------------------------------------------------------
    def parse_mix(self, query: dict[str, str]) -> tuple[int, str, torch.Tensor]:
        """Query -> (k, mode, weights): mode "weights": w [K] on the simplex; "channels" / "positions": the source of
        each code channel [C] / grid position [prod(grid)] (ints in 0..k-1)."""
        try:
            k = int(query.get("k", "2"))
        except ValueError:
            raise ValueError(f"k must be 2 or 3; got {query.get('k')!r}") from None
        if k not in (2, 3):
            raise ValueError(f"k must be 2 or 3; got {k}")
        mode = query.get("mode", "weights")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode == "weights":
            w = _floats(query.get("w", ",".join(["1"] * k)), "w")
            if len(w) != k or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"w must be {k} weights >= 0 with a positive sum, e.g. w=0.3,0.7; got {w.tolist()}")
            return k, mode, w / w.sum()
        n = self.code_shape[0] if mode == "channels" else int(np.prod(self.grid))
        src = _ints(query.get("src", ",".join(["0"] * n)), "src")
        if len(src) != n or (src < 0).any() or (src >= k).any():
            what = f"{n} code channels" if mode == "channels" else f"the {n} positions of the code grid {self.grid}"
            raise ValueError(f"src must give a source in 0..{k - 1} for each of {what}; got {len(src)} values")
        return k, mode, src

    def mix(self, k: int, mode: str, arg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(decoded mix [C, H, W], its pixel-space counterpart [C, H, W], decode milliseconds)."""
        xs = [grids.to_unit(self.sources[j][None]) for j in range(k)]
        t0 = time.perf_counter()
        with self.lock, torch.no_grad():
            hs = self.codes[:k]
            if mode == "weights":
                w = arg[None].float()  # [1, K]
                h_mix = grids.mix_sources(hs, w, self.impl)
            else:
                onehot = torch.nn.functional.one_hot(arg, k).float().T[None]  # [1, K, n]
                if mode == "channels":
                    h_mix = grids.mask_sources(hs, onehot, self.impl)  # per channel
                else:
                    masks = onehot.view(1, k, *self.grid)
                    h_mix = grids.mask_sources(hs, mixing.position_mask(masks, hs[0]), self.impl)
                w = onehot.mean(dim=2)  # each source's share, for the pixel blend
            x_mix = grids.decode(self.ae, h_mix, self.cfg)[0]
        ms = (time.perf_counter() - t0) * 1000
        if mode == "positions" and len(self.grid) == 2:  # the same boxes in pixels
            up = torch.nn.functional.interpolate(masks, size=xs[0].shape[2:], mode="nearest")  # [1, K, H, W]
            x_pix = grids.mask_sources(xs, up[:, :, None], "torch")[0]
        else:
            x_pix = grids.mix_sources(xs, w, "torch")[0]
        return x_mix, x_pix, ms

    def strip(self, k: int, mode: str, arg: torch.Tensor) -> np.ndarray:
        """uint8 [H, W, C]: a row of the k sources, the decoded mix and the pixel mix; under the sources their
        reconstructions."""
        x_mix, x_pix, _ = self.mix(k, mode, arg)
        blank = torch.ones_like(x_mix)
        top = [grids.to_unit(self.sources[j]) for j in range(k)] + [x_mix, x_pix]
        bottom = [self.recs[j] for j in range(k)] + [blank, blank]
        return grids.tile(torch.stack([torch.stack(top), torch.stack(bottom)]))


def _floats(text: str, name: str) -> torch.Tensor:
    try:
        return torch.tensor([float(v) for v in text.split(",") if v.strip()], dtype=torch.float64)
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers; got {text[:40]!r}") from None


def _ints(text: str, name: str) -> torch.Tensor:
    try:
        return torch.tensor([int(v) for v in text.split(",") if v.strip()], dtype=torch.long)
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers; got {text[:40]!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# HTTP.


class Handler(BaseHTTPRequestHandler):
    server_version = "amr-fast-explore"
    explorer: Explorer  # set on the subclass made by `make_server`
    quiet = False

    def log_message(self, format: str, *args) -> None:  # one short line per request, no tracebacks anywhere
        if not self.quiet:
            sys.stderr.write(f"explore: {self.command} {self.path[:80]} {args[1] if len(args) > 1 else ''}\n")

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: dict, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _guard(self, fn) -> None:
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
        except ValueError as err:
            self._json({"error": str(err)}, 400)
        except Exception as err:  # never a traceback: one line to the page and the terminal
            sys.stderr.write(f"explore: error: {type(err).__name__}: {err}\n")
            self._json({"error": f"internal error: {type(err).__name__}: {err}"}, 500)

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        q = {key: values[-1] for key, values in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        ex = self.explorer
        if not parts or parts == ["index.html"]:
            return self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        if parts == ["api", "info"]:
            return self._json(ex.info())
        if len(parts) == 3 and parts[:2] == ["api", "data"] and parts[2].endswith(".png"):
            i = _index(parts[2][:-4], "dataset image")
            if not 0 <= i < len(ex.images):
                raise ValueError(f"dataset image {i} does not exist")
            return self._send(200, png_bytes(grids.to_unit(ex.images[i])), "image/png")
        if len(parts) >= 3 and parts[:2] == ["api", "slot"]:
            if parts[2].endswith(".png"):
                j = ex._slot(_index(parts[2][:-4], "slot"))
                return self._send(200, png_bytes(grids.to_unit(ex.sources[j])), "image/png")
            j = _index(parts[2], "slot")
            if parts[3:] == ["rec.png"]:
                return self._send(200, png_bytes(ex.recs[ex._slot(j)]), "image/png")
            if "data" in q:
                ex.set_from_data(j, _index(q["data"], "data"))
                return self._json({"ok": True})
        if parts == ["api", "mix"]:
            x_mix, x_pix, ms = ex.mix(*ex.parse_mix(q))
            return self._json({"mix": data_url(png_bytes(x_mix)), "pixel": data_url(png_bytes(x_pix)), "ms": ms})
        if parts == ["api", "strip.png"]:
            img = ex.strip(*ex.parse_mix(q))
            disp = {"Content-Disposition": 'attachment; filename="amr-mix-strip.png"'}
            return self._send(200, png_bytes(img, scale=4), "image/png", disp)
        self._json({"error": f"no such page {url.path}"}, 404)

    def _post(self) -> None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if len(parts) != 3 or parts[:2] != ["api", "slot"]:
            return self._json({"error": f"POST an image to /api/slot/<0..{MAX_SOURCES - 1}>"}, 404)
        n = int(self.headers.get("Content-Length") or 0)
        if n <= 0 or n > MAX_UPLOAD:
            raise ValueError(f"the upload must be 1 byte to {MAX_UPLOAD >> 20} MiB; got {n} bytes")
        raw = self.rfile.read(n)
        self.explorer.set_from_bytes(_index(parts[2], "slot"), raw)
        self._json({"ok": True})


def _index(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer; got {text[:20]!r}") from None


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, quiet: bool = False):
    """A ThreadingHTTPServer serving `explorer` (port 0: any free port, see `server.server_address`). A port in
    use raises ValueError with the fix."""
    handler = type("ExploreHandler", (Handler,), {"explorer": explorer, "quiet": quiet})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use; pass --port N (another port) or --port 0") from None
        raise ValueError(f"cannot listen on {host}:{port} ({err.strerror or err}); check --host/--port") from None
    server.daemon_threads = True
    return server


def bench(explorer: Explorer, n: int = 100) -> dict[str, dict[str, float]]:
    """Per-update latency as the page sees it: n `/api/mix` round trips per mode through a real local HTTP server
    (weights along the segment, channels and boxes that change every time) -> {mode: {median_ms, p95_ms,
    decode_ms}}: the round trip (request, decode, two PNGs, JSON) and the server's decode alone (medians)."""
    server = make_server(explorer, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/api/mix?k=2&mode="
    C, cells = explorer.code_shape[0], int(np.prod(explorer.grid))
    queries = {
        "weights": lambda i: f"weights&w={(i % (n + 1)) / n:.4f},{1 - (i % (n + 1)) / n:.4f}",
        "channels": lambda i: "channels&src=" + ",".join(str((i >> c) & 1) for c in range(C)),
        "positions": lambda i: "positions&src=" + ",".join(str(int(c <= i % cells)) for c in range(cells)),
    }
    out = {}
    try:
        for mode, q in queries.items():
            rtt, dec = [], []
            for i in range(n + 3):
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(base + q(i), timeout=30) as r:
                        ms = json.loads(r.read())["ms"]
                except urllib.error.HTTPError as err:
                    raise ValueError(f"bench: the server answered {err.code}: {err.read()[:200]!r}") from None
                if i >= 3:  # warm-up
                    rtt.append((time.perf_counter() - t0) * 1000)
                    dec.append(ms)
            out[mode] = {
                "median_ms": float(np.median(rtt)),
                "p95_ms": float(np.percentile(rtt, 95)),
                "decode_ms": float(np.median(dec)),
            }
    finally:
        server.shutdown()
        server.server_close()
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "snapshot",
        metavar="RUN_OR_SNAPSHOT",
        help="a run directory of `amr-fast train` (its newest snapshot) or a "
        "snapshot-<kimg>.safetensors (an image model)",
    )
    parser.add_argument("--data", default=None, help="a shard directory (`amr-fast shard`): its images to pick from")
    parser.add_argument("--limit", type=int, default=64, help="how many images of --data to offer")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    parser.add_argument("--impl", default="auto", choices=("auto", "ref", "torch"), help="mixing kernel impl")
    parser.add_argument(
        "--bench", type=int, default=0, metavar="N", help="measure N updates per mode (round trip), print, exit"
    )


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 0..65535; got {args.port}")
    explorer = Explorer(args.snapshot, args.data, limit=args.limit, impl=args.impl)
    if args.bench:
        print(f"per-update latency, {args.bench} updates per mode, threads={torch.get_num_threads()}:")
        for mode, r in bench(explorer, args.bench).items():
            print(f"  {mode:<10} round trip median {r['median_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms  "
                  f"(decode {r['decode_ms']:5.1f} ms)")  # fmt: skip
        return 0
    server = make_server(explorer, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"amr-fast explore: {args.snapshot} ({explorer.cfg.arch}, code {list(explorer.code_shape)})")
    print(f"open http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("amr-fast explore: stopped")
    finally:
        server.server_close()
    return 0

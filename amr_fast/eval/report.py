"""`amr-fast report RUN... [--out results.md] [--plot curves.png] [--spiral spiral.png]`: results tables and plots.

The table has the format of the AMR paper's tables 1-4 (Beckham et al., NeurIPS 2019): rows method / mix / k,
columns datasets, cells mean ± std over seeds (runs that differ only in their seed) of the best validation
accuracy of the online linear probe, in %; for runs evaluated with `amr-fast eval`, extra columns give the
offline probe's test accuracy and (dSprites) the FactorVAE / beta-VAE disentanglement scores. Learning curves
(probe validation accuracy and reconstruction loss against images seen) are drawn with matplotlib (Agg), and
`--spiral` draws the spiral toy of the supplement (figure 12): decoded random mixes (orange) over the data (blue),
one panel per run of the `spiral-*` presets (their beta values). Runs of `amr-fast classify` get their own table
(`classify_table`: rows mode, columns dataset x test / FGSM error, the Manifold Mixup paper's tables).

Examples:
    amr-fast report runs/fm-* --out results.md --plot curves.png
    amr-fast report runs/spiral-beta0 runs/spiral-beta1 --spiral docs/spiral.png
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from amr_fast.checkpoint import latest_snapshot, load_networks, read_json
from amr_fast.data.procedural import spiral
from amr_fast.eval.grids import save_png, spiral_mixes, spiral_plot
from amr_fast.stats import read_jsonl

# stats.jsonl names of the online probe's validation accuracy (first one present wins) and of the recon loss.
PROBE_KEYS = ("probe/valid_acc", "probe/val_acc", "valid/acc", "eval/valid_acc", "probe/acc_valid")
RECON_KEYS = ("loss/recon", "loss/rec")
TRAIN_PROBE_KEYS = ("probe/acc",)  # the online probe's accuracy on its training batches, every tick
METHOD_ORDER = ("AE+GAN", "AMR", "ACAI", "beta-VAE")
MIX_ORDER = ("-", "mixup", "bernoulli", "class")


@dataclass
class RunRecord:
    """One run directory: its config (dict from config.json), stats rows, and the last line of each
    metric-<name>.jsonl written by `amr-fast eval`."""

    path: Path
    cfg: dict
    rows: list[dict]
    metrics: dict[str, dict] = field(default_factory=dict)
    variant: str = ""  # set by `annotate_variants`: the config fields telling this run from same-row runs

    @property
    def dataset(self) -> str:
        """The dataset's name in its index.json when the data directory is at hand, else the directory's name
        (builtin datasets: the name after "builtin:")."""
        data = str(self.cfg.get("data", "")) or "?"
        if data.startswith("builtin:"):
            return data.split(":", 1)[1]
        try:
            return str(json.loads((Path(data) / "index.json").read_text())["name"])
        except (OSError, ValueError, KeyError):
            return Path(data).name

    @property
    def base_label(self) -> tuple[str, str, str]:
        """(method, mix, k) as the paper's rows: AE+GAN has no mix; AMR mixup k = 2, Bernoulli k = 3, ..."""
        method, mixer = self.cfg.get("method", "amr"), self.cfg.get("mixer", "none")
        name = {"amr": "AE+GAN" if mixer == "none" else "AMR", "acai": "ACAI", "betavae": "beta-VAE"}.get(
            method, method
        )
        if mixer == "none":
            return name, "-", "-"
        return name, mixer, str(self.cfg.get("k", 2))

    @property
    def label(self) -> tuple[str, str, str]:
        """`base_label`, the method carrying the run's variant (e.g. "AMR (beta=1.0)") when it has one."""
        name, mix, k = self.base_label
        return (f"{name} ({self.variant})" if self.variant else name), mix, k


# Config fields that never make two runs different rows: the seed (averaged over) and pure logistics.
NOT_VARIANT = {"seed", "data", "workers", "compile", "channels_last", "impl", "precision", "tick_kimg"}
NOT_VARIANT |= {"snapshot_kimg", "state_kimg", "max_nonfinite", "batch_gpu"}


def annotate_variants(runs: list[RunRecord]) -> None:
    """Runs of one dataset and one (method, mix, k) that differ in other config fields (e.g. beta, total_kimg)
    are different rows, not seeds: give each the differing fields as its `variant`."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset, r.base_label)].append(r)
    for group in groups.values():
        keys = sorted({k for r in group for k in r.cfg} - NOT_VARIANT)
        differ = [k for k in keys if len({json.dumps(r.cfg.get(k)) for r in group}) > 1]
        for r in group:
            r.variant = ", ".join(f"{k}={r.cfg.get(k)}" for k in differ)


def load_run(path: str | Path) -> RunRecord:
    """A run directory made by `amr-fast train` (config.json, stats.jsonl, metric-*.jsonl)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); pass directories of `amr-fast train`")
    cfg = read_json(path / "config.json")
    cfg = cfg.get("config", cfg) if isinstance(cfg, dict) else cfg
    rows = read_jsonl(path / "stats.jsonl") if (path / "stats.jsonl").is_file() else []
    metrics = {}
    for m in sorted(path.glob("metric-*.jsonl")):
        lines = read_jsonl(m)
        if lines:
            metrics[m.stem[len("metric-") :]] = lines[-1]
    return RunRecord(path, cfg, rows, metrics)


def find_key(rows: list[dict], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if any(key in r for r in rows):
            return key
    return None


def best_valid(run: RunRecord) -> float | None:
    """Best online-probe validation accuracy of the run (a fraction), None if it never reported one."""
    key = find_key(run.rows, PROBE_KEYS)
    vals = [r[key] for r in run.rows if key and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return max(vals) if vals else None


def metric_value(run: RunRecord, name: str) -> float | None:
    """The headline number of metric-<name>.jsonl (probe: test accuracy; factorvae/betavae: score; recon: l1)."""
    line = run.metrics.get(name)
    if line is None:
        return None
    for key in ("test_acc", "score", "l1"):
        if key in line:
            return float(line[key])
    return None


def _fmt(values: list[float], scale: float, digits: int, n_all: int) -> str:
    if not values:
        return "–"
    v = np.asarray(values, dtype=np.float64) * scale
    cell = f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"  # population std over seeds, as numpy's default
    return cell if len(v) == n_all else f"{cell} [{len(v)}]"


def _row_key(label: tuple[str, str, str]) -> tuple:
    method, mix, k = label
    method = method.split(" (")[0]  # without the variant
    return (
        METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER),
        MIX_ORDER.index(mix) if mix in MIX_ORDER else len(MIX_ORDER),
        int(k) if k.isdigit() else 0,
        label,
    )


# (column suffix, how to read a run, scale to the printed unit, decimals, what the legend says of the column)
COLUMNS = (
    ("", best_valid, 100.0, 2, "Dataset columns: best validation accuracy of the online linear probe (%)"),
    (" offline probe", lambda r: metric_value(r, "probe"), 100.0, 2,
     "'offline probe': test accuracy (%) of a linear classifier fitted on frozen train codes"),
    (" FactorVAE", lambda r: metric_value(r, "factorvae"), 1.0, 2, "FactorVAE metric: score in [0, 1]"),
    (" beta-VAE metric", lambda r: metric_value(r, "betavae"), 1.0, 2, "beta-VAE metric: score in [0, 1]"),
    (" recon L1", lambda r: metric_value(r, "recon"), 1.0, 3,
     "recon L1: mean |x_rec - x| on the test split, pixels in [-1, 1]"),
)  # fmt: skip


def results_table(runs: list[RunRecord]) -> str:
    """The markdown table (see module docstring) followed by one line saying what the cells are."""
    if not runs:
        raise ValueError("no runs given; pass run directories of `amr-fast train`")
    annotate_variants(runs)
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    columns: list[tuple[str, float, int]] = []
    legend: dict[str, str] = {}  # the legend of each kind of column the table has, in COLUMNS' order
    for ds in datasets:
        for suffix, read, scale, digits, what in COLUMNS:
            got = False
            for r in runs:
                if r.dataset != ds:
                    continue
                v = read(r)
                if v is not None:
                    cells[r.label][ds + suffix].append(v)
                    got = True
            if got or suffix == "":
                columns.append((ds + suffix, scale, digits))
                legend[suffix] = what
    seeds = defaultdict(set)
    for r in runs:
        seeds[(r.label, r.dataset)].add(r.cfg.get("seed", 0))
    n_all = max(len(v) for v in seeds.values())
    head = ["method", "mix", "k"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for label in sorted(cells.keys() | {r.label for r in runs}, key=_row_key):
        row = list(label) + [_fmt(cells[label].get(c, []), scale, digits, n_all) for c, scale, digits in columns]
        lines.append("| " + " | ".join(row) + " |")
    legend_text = "; ".join(legend[suffix] for suffix, *_ in COLUMNS if suffix in legend)
    seeds_text = f"{n_all} seed{'s' if n_all > 1 else ''}"
    note = f"Cells: mean ± std over {seeds_text} ([n] = fewer seeds in that cell). {legend_text}."
    return "\n".join(lines) + "\n\n" + note + "\n"


# ---------------------------------------------------------------------------------------------------------------
# The Manifold Mixup classifiers' table (`amr-fast classify` runs; Verma et al., ICML 2019, tables 1-3).

MODE_ORDER = {m: i for i, m in enumerate(("erm", "cutout", "mixup", "manifold"))}


def _mode_label(cfg: dict) -> str:
    mode = cfg.get("mode", "?")
    if mode == "mixup":
        return f"input mixup (alpha={cfg.get('alpha'):g})"
    if mode == "manifold":
        layers = ",".join(str(k) for k in cfg.get("mix_layers", ()))
        return f"Manifold Mixup (alpha={cfg.get('alpha'):g}, layers {layers})"
    if mode == "cutout":
        return f"cutout ({cfg.get('cutout_size')} px)"
    return "ERM (no mixup)"


# What an FGSM eps means under each `fgsm_units` (configs written before the field ran "pixel").
FGSM_UNITS_TEXT = {
    "pixel": "eps in [0, 1] pixel units",
    "normalised": "eps on the standardised input (pixel - mean) / std, unclipped, as the public attack",
}


def classify_table(runs: list) -> str:
    """Markdown table of classifier runs (`RunRecord` objects of `amr-fast classify` run dirs):
    rows = mode, columns = dataset x (test error, FGSM error at each eps), cells = mean ± std over seeds of the
    last evaluation of each run (%), followed by one line saying what the cells are."""

    def last(run, key: str) -> float | None:  # "best:<key>": the lowest over the run's evaluations
        vals = [
            r[key.removeprefix("best:")] for r in run.rows if isinstance(r.get(key.removeprefix("best:")), (int, float))
        ]
        return (min(vals) if key.startswith("best:") else vals[-1]) if vals else None

    def kimg(run) -> str:
        return f"{run.rows[-1]['kimg']:g}" if run.rows else "0"

    def units(run) -> str:
        return run.cfg.get("fgsm_units", "pixel")

    all_units = sorted({units(r) for r in runs})
    groups: dict[tuple, list] = {}
    for run in runs:
        arch = f"{run.cfg.get('arch')} width {run.cfg.get('width', 1):g}"
        arch += f", FGSM {units(run)}" if len(all_units) > 1 else ""  # never averaged together
        key = (MODE_ORDER.get(run.cfg.get("mode"), 9), _mode_label(run.cfg), arch, kimg(run))
        groups.setdefault(key, []).append(run)
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    fgsm_keys = sorted({k for r in runs for row in r.rows for k in row if "fgsm_error" in k})
    metrics = ["eval/test_error", "best:eval/test_error"] + fgsm_keys
    names = {"eval/test_error": "test error", "best:eval/test_error": "best test error"}
    names |= {m: f"FGSM eps={m.split('@')[1]} error" for m in fgsm_keys}
    columns = [(ds, m) for ds in datasets for m in metrics]
    n_all = max(len(g) for g in groups.values())
    head = ["mode", "arch", "kimg"] + [f"{ds} {names[m]}" for ds, m in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for (_, label, arch, k), group in sorted(groups.items()):
        cells = []
        for ds, m in columns:
            vals = [v for r in group if r.dataset == ds and (v := last(r, m)) is not None]
            cells.append(_fmt(vals, scale=1.0, digits=2, n_all=n_all))
        lines.append("| " + " | ".join([label, str(arch), k] + cells) + " |")
    meaning = "; ".join(f"{u}: {FGSM_UNITS_TEXT[u]}" if len(all_units) > 1 else FGSM_UNITS_TEXT[u] for u in all_units)
    note = (
        f"\nCells: classification error (%) on the test split, clean and under white-box FGSM ({meaning}), at the end "
        f"of training; best test error: the lowest over the run's evaluations (the figure the "
        f"Manifold Mixup code reports); mean ± std over seeds (n = {n_all}; [n] when fewer).\n"
    )
    return "\n".join(lines) + "\n" + note


def _curves(
    runs: list[RunRecord], keys: tuple[str, ...], scale: float
) -> dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (dataset, label): kimg grid common to every seed, mean and std of the key over seeds."""
    annotate_variants(runs)
    groups: dict[tuple, list[dict[float, float]]] = defaultdict(list)
    for r in runs:
        key = find_key(r.rows, keys)
        if key is None:
            continue
        series = {
            round(float(row["kimg"]), 3): float(row[key]) * scale for row in r.rows if key in row and "kimg" in row
        }
        if series:
            groups[(r.dataset, r.label)].append(series)
    out = {}
    for g, series in groups.items():
        common = sorted(set.intersection(*[set(s) for s in series]))
        if common:
            vals = np.array([[s[k] for k in common] for s in series])
            out[g] = (np.array(common), vals.mean(axis=0), vals.std(axis=0))
    return out


def plot_curves(runs: list[RunRecord], path: str | Path) -> None:
    """Learning curves: one column per dataset; rows: the online probe's validation accuracy (%), its accuracy on
    its training batches (%) and the reconstruction loss, each line the mean over seeds with a ±std band; a row
    is left out when no curve in it has two points. Written as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for ylabel, keys, scale in (
        ("online probe valid acc (%)", PROBE_KEYS, 100.0),
        ("online probe train-batch acc (%)", TRAIN_PROBE_KEYS, 100.0),
        ("reconstruction loss", RECON_KEYS, 1.0),
    ):
        curves = _curves(runs, keys, scale)
        if any(len(kimg) >= 2 for kimg, _, _ in curves.values()):
            panels.append((ylabel, curves))
    if not panels:
        raise ValueError("no learning curve has two points yet: the runs' stats.jsonl are too short to plot")
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    fig, axes = plt.subplots(
        len(panels), len(datasets), figsize=(4.5 * len(datasets), 3.2 * len(panels)), squeeze=False
    )
    for i, (ylabel, curves) in enumerate(panels):
        for j, ds in enumerate(datasets):
            ax = axes[i][j]
            for (d, label), (kimg, mean, std) in sorted(curves.items(), key=lambda kv: _row_key(kv[0][1])):
                if d != ds:
                    continue
                name = label[0] if label[1] == "-" else f"{label[0]} {label[1]} k={label[2]}"
                ax.plot(kimg, mean, label=name, lw=1.3, marker="o", ms=2.5)
                ax.fill_between(kimg, mean - std, mean + std, alpha=0.2)
            ax.set_title(ds, fontsize=10)
            ax.set_xlabel("kimg")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def spiral_figure(runs: list[RunRecord], n: int = 1000, seed: int = 0) -> np.ndarray:
    """The supplement's figure 12: for each spiral run (arch mlp), decoded random mixes of n spiral points over
    the points themselves, titled by the run's beta."""
    panels = []
    for r in sorted(runs, key=lambda r: float(r.cfg.get("beta", 0.0))):
        if r.cfg.get("arch") != "mlp":
            raise ValueError(
                f"--spiral draws spiral runs (arch=mlp, presets spiral-*); {r.path} has arch={r.cfg.get('arch')}"
            )
        nets, cfg = load_networks(latest_snapshot(r.path))
        points = torch.as_tensor(spiral(n, seed)[0], dtype=torch.float32).reshape(n, -1)
        x = (
            points.reshape(n, cfg.channels, cfg.img_size, cfg.img_size)
            if cfg.channels * cfg.img_size**2 == points.shape[1]
            else points
        )
        _, x_mix = spiral_mixes(nets["ae"], x, cfg, torch.Generator().manual_seed(seed))
        panels.append((f"{r.path.name}: beta={cfg.beta:g}, {cfg.mixer} k={cfg.k}", points, x_mix))
    return spiral_plot(panels)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories of `amr-fast train` (seeds are grouped)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--plot", default=None, help="write learning curves (PNG) to this file")
    parser.add_argument(
        "--spiral", default=None, help="write the spiral toy figure (PNG) of spiral-* runs to this file"
    )


def main(args: argparse.Namespace) -> int:
    runs = [load_run(p) for p in args.runs]
    classifiers = [r for r in runs if "mode" in r.cfg]  # `amr-fast classify` runs: their own table
    runs = [r for r in runs if "mode" not in r.cfg]
    if args.spiral:
        save_png(args.spiral, spiral_figure(runs))
        print(f"wrote {args.spiral}")
    table = results_table(runs) if runs or not classifiers else ""
    if classifiers:
        table += classify_table(classifiers)
    print(table, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
        print(f"wrote {args.out}")
    if args.plot and runs:
        plot_curves(runs, args.plot)
        print(f"wrote {args.plot}")
    return 0

"""`amr-fast report` on hand-written run directories: the exact table, seed grouping, curves PNG."""

import dataclasses
import json

import numpy as np
from PIL import Image

from amr_fast import cli
from amr_fast.eval import report
from amr_fast.presets import CLASSIFY_PRESETS

KEY = report.PROBE_KEYS[0]


def make_run(root, name, data, mixer, k, seed, accs, method="amr", metrics=None):
    d = root / name
    d.mkdir()
    cfg = {"data": data, "method": method, "mixer": mixer, "k": k, "seed": seed}
    (d / "config.json").write_text(json.dumps(cfg))
    with open(d / "stats.jsonl", "w") as f:
        for i, a in enumerate(accs):
            f.write(json.dumps({"kimg": float(i + 1), "loss/recon": 1.0 / (i + 1)}) + "\n")
            f.write(json.dumps({"kimg": float(i + 1) + 0.5, KEY: a}) + "\n")
        f.write('{"kimg": 99, "' + KEY + '": 1.0')  # a crash mid-line: ignored
    for name, line in (metrics or {}).items():
        (d / f"metric-{name}.jsonl").write_text(json.dumps({"score": 0.0}) + "\n" + json.dumps(line) + "\n")
    return d


def fixture_runs(tmp_path):
    fm = "/data/fashion-mnist-32"
    return [
        make_run(tmp_path, "a0", fm, "none", 2, 0, [0.70, 0.80, 0.75]),
        make_run(tmp_path, "a1", fm, "none", 2, 1, [0.82, 0.60]),
        make_run(tmp_path, "m0", fm, "mixup", 2, 0, [0.85], metrics={"probe": {"test_acc": 0.9}}),
        make_run(tmp_path, "m1", fm, "mixup", 2, 1, [0.80, 0.87], metrics={"probe": {"test_acc": 0.8}}),
        make_run(tmp_path, "k3", fm, "mixup", 3, 0, [0.5], metrics={"recon": {"l1": 0.1234, "mse": 0.1}}),
        make_run(
            tmp_path,
            "d0",
            "builtin:dsprites-procedural",
            "bernoulli",
            3,
            0,
            [0.3],
            metrics={"factorvae": {"score": 0.7}},
        ),
    ]


HEADER = (
    "| method | mix | k | fashion-mnist-32 | fashion-mnist-32 offline probe | fashion-mnist-32 recon L1 "
    "| dsprites-procedural | dsprites-procedural FactorVAE |\n"
)
EXPECTED = (
    HEADER
    + """\
|---|---|---|---:|---:|---:|---:|---:|
| AE+GAN | - | - | 81.00 ± 1.00 | – | – | – | – |
| AMR | mixup | 2 | 86.00 ± 1.00 | 85.00 ± 5.00 | – | – | – |
| AMR | mixup | 3 | 50.00 ± 0.00 [1] | – | 0.123 ± 0.000 [1] | – | – |
| AMR | bernoulli | 3 | – | – | – | 30.00 ± 0.00 [1] | 0.70 ± 0.00 [1] |
"""
)


def test_report_table_is_exact(tmp_path):
    runs = [report.load_run(p) for p in fixture_runs(tmp_path)]
    table = report.results_table(runs)
    assert table.startswith(EXPECTED)
    assert "mean ± std over 2 seeds" in table


def test_report_cli_writes_table_and_curves(tmp_path, capsys):
    dirs = fixture_runs(tmp_path)
    out, png = tmp_path / "res" / "results.md", tmp_path / "curves.png"
    assert cli.main(["report", *map(str, dirs), "--out", str(out), "--plot", str(png)]) == 0
    assert out.read_text().startswith(EXPECTED) and EXPECTED in capsys.readouterr().out
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 600  # 2 rows (probe, recon) x 2 datasets
    assert (img.std(axis=(0, 1)) > 10).all()  # not a blank canvas


def test_curves_average_seeds_on_common_kimg(tmp_path):
    runs = [report.load_run(p) for p in fixture_runs(tmp_path)]
    curves = report._curves(runs, report.PROBE_KEYS, 100.0)
    kimg, mean, std = curves[("fashion-mnist-32", ("AE+GAN", "-", "-"))]
    assert kimg.tolist() == [1.5, 2.5] and np.allclose(mean, [76, 70]) and np.allclose(std, [6, 10])


def test_report_on_a_non_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_spiral_figure_draws_data_and_mixes(tmp_path):
    import torch

    from amr_fast import checkpoint
    from amr_fast.models import build_networks
    from amr_fast.overrides import to_json
    from amr_fast.presets import resolve

    dirs = []
    for beta in ("0", "1"):
        cfg = resolve("spiral-mixup", {"beta": beta, "width": "16"})
        d = tmp_path / f"spiral-beta{beta}"
        d.mkdir()
        (d / "config.json").write_text(to_json(cfg))
        torch.manual_seed(0)
        checkpoint.save_snapshot(
            d / "snapshot-0000001.000.safetensors", build_networks(cfg), json.loads(to_json(cfg)), 1
        )
        dirs.append(str(d))
    png = tmp_path / "spiral.png"
    assert cli.main(["report", *dirs, "--spiral", str(png)]) == 0
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[1] > 1.6 * img.shape[0]  # two panels side by side
    blue = (abs(img[..., 0] - 31) < 30) & (abs(img[..., 1] - 119) < 30) & (img[..., 2] > 150)  # tab:blue
    orange = (img[..., 0] > 220) & (abs(img[..., 1] - 127) < 30) & (img[..., 2] < 60)  # tab:orange
    half = img.shape[1] // 2
    for part in (slice(0, half), slice(half, None)):
        assert blue[:, part].sum() > 50 and orange[:, part].sum() > 10  # (the legend is in the first panel only)


def test_classify_table_over_seeds(tmp_path):
    runs = []
    for mode, errors in [("erm", (10.0, 12.0)), ("manifold", (8.0, 9.0))]:
        for seed, err in enumerate(errors):
            d = tmp_path / f"{mode}-{seed}"
            d.mkdir()
            cfg = dataclasses.replace(CLASSIFY_PRESETS[f"fashion-mnist-{mode}"], data="/x/fm32", seed=seed)
            (d / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
            rows = [{"kimg": 16.0, "eval/test_error": 50.0}, {"kimg": 32.0, "eval/test_error": err - 1}]
            rows += [{"kimg": 64.0, "eval/test_error": err}]  # the best evaluation (err - 1) is not the last
            rows[-1]["eval/fgsm_error@0.03"] = 2 * err
            (d / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs.append(report.load_run(d))
    lines = report.classify_table(runs).splitlines()
    assert "test error" in lines[0] and "FGSM eps=0.03 error" in lines[0]
    erm = next(line for line in lines if line.startswith("| ERM"))
    manifold = next(line for line in lines if line.startswith("| Manifold Mixup (alpha=2, layers 0,1,2)"))
    assert "best test error" in lines[0]
    # the last evaluation of each run, the best one (the public code's figure), FGSM; over 2 seeds
    assert erm.endswith("| 64 | 11.00 ± 1.00 | 10.00 ± 1.00 | 22.00 ± 2.00 |")
    assert manifold.endswith("| 64 | 8.50 ± 0.50 | 7.50 ± 0.50 | 17.00 ± 1.00 |")
    assert "(eps in [0, 1] pixel units)" in lines[-1]  # the Fashion-MNIST presets' fgsm_units
    assert cli.main(["report", *[str(r.path) for r in runs], "--out", str(tmp_path / "table.md")]) == 0
    assert (tmp_path / "table.md").read_text() == report.classify_table(runs)  # `amr-fast report` shows it
    # runs attacked in other units are never averaged together, and the note says what each eps means
    cfg = json.loads((runs[0].path / "config.json").read_text())
    (runs[0].path / "config.json").write_text(json.dumps({**cfg, "fgsm_units": "normalised"}))
    lines = report.classify_table([report.load_run(r.path) for r in runs]).splitlines()
    erm_normalised = next(line for line in lines if line.startswith("| ERM") and "FGSM normalised" in line)
    assert erm_normalised.endswith("| 10.00 ± 0.00 [1] | 9.00 ± 0.00 [1] | 20.00 ± 0.00 [1] |")  # seed 0 alone
    assert "normalised: eps on the standardised input" in lines[-1] and "pixel: eps in [0, 1]" in lines[-1]

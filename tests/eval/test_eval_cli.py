"""`amr-fast eval` end to end on a tiny procedural dSprites set and a tiny saved snapshot: every metric writes
its JSON line, the reconstruction error matches a direct computation, `report` reads the lines back."""

import json

import pytest
import torch

from amr_fast import checkpoint, cli
from amr_fast import data as amr_data
from amr_fast.config import TrainConfig
from amr_fast.eval import report
from amr_fast.models import build_networks
from amr_fast.overrides import to_json


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    root = amr_data.make_shards("dsprites-procedural", None, tmp / "data", size=64, limit=120, shard_size=60)
    cfg = TrainConfig(
        data=str(root), arch="dsprites64", img_size=64, channels=1, width=8, code_dim=6, num_classes=3, mixer="none"
    ).validate()
    torch.manual_seed(0)
    nets = build_networks(cfg)
    run = tmp / "run"
    run.mkdir()
    (run / "config.json").write_text(to_json(cfg))
    (run / "stats.jsonl").write_text(json.dumps({"kimg": 1.0, "probe/valid_acc": 0.5}) + "\n")
    extra = {"probe": {"best_valid_acc": 0.55, "test_acc_at_best": 0.52}}
    checkpoint.save_snapshot(run / "snapshot-0000001.000.safetensors", nets, json.loads(to_json(cfg)), 1.0, extra)
    return run


def test_eval_writes_every_metric_and_report_reads_them(run_dir, capsys):
    args = [
        "eval",
        str(run_dir),
        "--metrics",
        "probe,recon,factorvae,factorvae-amr-public,betavae",
        "--votes",
        "6",
        "--vote-batch",
        "8",
        "--device",
        "cpu",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for name in ("probe", "recon", "factorvae", "factorvae-amr-public", "betavae"):
        line = report.read_jsonl(run_dir / f"metric-{name}.jsonl")[-1]
        assert line["metric"] == name and line["kimg"] == 1.0 and name in out
    probe = report.read_jsonl(run_dir / "metric-probe.jsonl")[-1]
    assert probe["online_best_valid_acc"] == 0.55 and probe["split"] == "valid" and probe["n_train"] == 120
    assert 0 <= probe["test_acc"] <= 1 and "55.00%" in out
    fv = report.read_jsonl(run_dir / "metric-factorvae.jsonl")[-1]
    assert fv["num_factors"] == 5 and fv["n_eval"] == 6 and fv["batch_size"] == 8 and 0 <= fv["score"] <= 1
    assert fv["protocol"] == "kim-mnih"
    pub = report.read_jsonl(run_dir / "metric-factorvae-amr-public.jsonl")[-1]
    assert pub["protocol"] == "amr-public" and pub["n_train"] == 5 and pub["batch_size"] == 8  # 6 // 5 per factor
    assert len(pub["votes"]) == 5 and 0 <= pub["score"] <= 0.8

    # recon: the same mean |x_rec - x| computed directly
    nets, cfg = checkpoint.load_networks(next(run_dir.glob("snapshot-*.safetensors")))
    errs = []
    with torch.no_grad():
        for b in amr_data.eval_loader(cfg.data, "valid", 64):
            x = b["x"].float() / 127.5 - 1
            errs.append((nets["ae"].decode(nets["ae"].encode(x)).clamp(-1, 1) - x).abs().flatten())
    assert abs(report.read_jsonl(run_dir / "metric-recon.jsonl")[-1]["l1"] - float(torch.cat(errs).mean())) < 1e-5

    table = report.results_table([report.load_run(run_dir)])
    assert "dsprites-procedural offline probe" in table and "dsprites-procedural FactorVAE" in table
    assert "| AE+GAN | - | - | 50.00 ± 0.00 |" in table


def test_eval_rejects_unknown_metric_and_missing_factors(run_dir, capsys):
    assert cli.main(["eval", str(run_dir), "--metrics", "fid"]) == 2
    assert "unknown metric 'fid'" in capsys.readouterr().err
    assert cli.main(["eval", str(run_dir / "nope.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err

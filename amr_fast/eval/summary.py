"""The end of an `amr-fast train` run: the trained autoencoder's final figures (reconstruction error, FactorVAE
scores, offline probes of the labels) and the summary lines every run prints and keeps in log.txt.
"""

from __future__ import annotations

from pathlib import Path

from amr_fast import data as amr_data
from amr_fast.eval.disentangle import FACTORVAE_PROTOCOLS, factorvae, factorvae_counts
from amr_fast.eval.metrics import encode_codes, factor_sampler, make_encode, recon_error
from amr_fast.eval.probe import code_probes
from amr_fast.progress import fmt_time


def final_figures(ae, cfg, root: Path, device, splits: dict) -> dict:
    """The figures of the trained autoencoder the summary shows: the reconstruction error on (at most 5000 images
    of) the valid split; on dSprites with factors, the FactorVAE scores and the shape probes."""
    out = {}
    if cfg.arch != "mlp" and "valid" in splits:
        out["recon"] = recon_error(ae, cfg, root, "valid", device, limit=5000)
    if cfg.arch == "dsprites64" and amr_data.load_index(root).get("factor_names"):
        out["factorvae"] = factorvae_scores(ae, cfg, root, device)
        out["shape_probes"] = shape_probes(ae, cfg, root, device)
    ae.train()
    return out


def summary_lines(summary: dict) -> list[str]:
    """Where a run's outputs are and its final figures (printed at the end of every run and kept in log.txt)."""
    probe = summary["probe"]
    lines = [
        f"run directory:   {summary['run_dir']}",
        f"last snapshot:   {summary['snapshot'] or 'none yet (snapshot_kimg)'}",
        f"last samples:    {summary['samples'] or 'none yet (snapshot_kimg)'}",
    ]
    if probe["best_valid_acc"] is not None:
        test = "n/a (no test split)" if probe["test_acc_at_best"] is None else f"{probe['test_acc_at_best']:.4f}"
        lines.append(
            f"online probe:    best valid acc {probe['best_valid_acc']:.4f} at {probe['best_kimg']:.3f} kimg, last "
            f"{probe['last_valid_acc']:.4f}; test acc at the best {test}"
        )
    if summary.get("recon"):
        r = summary["recon"]
        lines.append(
            f"recon error:     mean |x_rec - x| {r['l1']:.4f}, MSE {r['mse']:.4f} "
            f"({r['n']} {r['split']} images, pixels in [-1, 1])"
        )
    for protocol, f in (summary.get("factorvae") or {}).items():
        what = {
            "kim-mnih": f"Kim & Mnih, all 5 dSprites factors, {f['n_train']}+{f['n_eval']} votes of "
            f"{f['batch_size']}; chance 0.2",
            "amr-public": f"the AMR authors' procedure: train accuracy on {f['n_train']} votes of {f['batch_size']}, "
            "posY uncredited; max 0.8",
        }[protocol]
        lines.append(f"FactorVAE score: {f['score']:.3f} {protocol} ({what})")
    if summary.get("shape_probes"):
        p = summary["shape_probes"]
        lines.append(
            f"shape probes:    linear {p['linear']:.3f}, MLP {p['mlp']:.3f} (offline, on the final code: "
            f"{p['n_train']} train -> {p['n_test']} valid codes; chance {1 / p['num_classes']:.2f})"
        )
    if summary.get("img_per_s"):
        lines.append(
            f"training time:   {fmt_time(summary['time'])} for {summary['kimg']:g} kimg, "
            f"{summary['img_per_s']:.0f} img/s (probes and snapshots included)"
        )
    if summary["stopped"]:
        lines.append("stopped early by a signal: re-run the same command to resume")
    return lines


def shape_probes(ae, cfg, root: Path, device) -> dict:
    """Offline probes of the final code for the labels (dSprites: shape), linear and one-hidden-layer MLP: how much
    of the shape the code holds, and how much of it a linear read-out (the paper's probe) can use."""
    encode = make_encode(ae, device)
    h_tr, y_tr = encode_codes(encode, root, "train", 10_000)
    h_va, y_va = encode_codes(encode, root, "valid", 5_000)
    ae.train()
    return {**code_probes(h_tr, y_tr, h_va, y_va, cfg.num_classes), "num_classes": cfg.num_classes}


def factorvae_scores(ae, cfg, root: Path, device) -> dict:
    """The FactorVAE score of the trained encoder under both protocols (kim-mnih, amr-public), each with its
    published vote counts unless cfg.factorvae_votes / factorvae_vote_batch shorten them; procedural dSprites are
    rendered afresh, a sharded dSprites is sampled from its train split (`amr-fast eval` does the same)."""
    sampler = factor_sampler(amr_data.load_index(root), cfg, pool=50_000)
    encode, out = make_encode(ae, device), {}
    for protocol in FACTORVAE_PROTOCOLS:
        kw = factorvae_counts(protocol, cfg.factorvae_votes, cfg.factorvae_vote_batch)
        score = factorvae(encode, sampler, protocol, seed=0, **kw).as_dict()
        out[protocol] = {k: score[k] for k in ("score", "train_accuracy", "n_train", "n_eval", "batch_size")}
    ae.train()
    return out

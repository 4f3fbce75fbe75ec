"""Does re-estimating batch-norm statistics on each inducer condition (AdaBN) lower the fraction error?

    python benchmarks/bn_adaptation.py --reuse URI [--seeds 0,1,2,3,4]
                                       [--out benchmarks/results/bn_adaptation.json]

``URI`` is the tracking store a ``benchmarks/fate_estimates.py`` invocation left its runs in. The
inducer conditions are imaged with more defocus, a lower NA and a noisier camera than the cultures
the model learned from; AdaBN (Li et al. 2016) re-estimates the batch norms' running statistics on
the target domain's images, with no labels. For each seed's demo model and each independent
condition: the network as trained (``none``), with only its first batch norm's statistics
re-estimated on that condition's crops (``first``: intensity, contrast and noise, before any
fate-specific feature), and with every batch norm's (``all``). The run's saved calibration, OOD
detector and correction are used unchanged; the figures are the corrected fraction error (mean and
worst over conditions x fates), the counted one and the accuracy on the conditions' cells.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from nscfate.evaluation import evaluate as ev
from nscfate.evaluation.checkpoint import checkpoint_estimator, rebuild
from nscfate.tracking.fetch import fetch_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fate_estimates import reuse_parser, seed_run, write_reuse_report  # noqa: E402  (a sibling script)

VARIANTS = ("none", "first", "all")


@torch.no_grad()
def adapted(net: nn.Module, loader, variant: str) -> nn.Module:
    """A copy of ``net`` whose (first or every) batch norm's statistics are those of ``loader``'s crops."""
    net = copy.deepcopy(net).eval()
    if variant == "none":
        return net
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms[:1] if variant == "first" else norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    for batch in loader:
        net(batch["image"])
    return net.eval()


def analyse(uri: str, run_id: str, seed: int) -> dict:
    """The three variants' figures on one run."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, _ = fetch_run(uri, run_id, Path(tmp))
        rebuilt = rebuild(checkpoint)
    estimator = checkpoint_estimator(rebuilt.ckpt, rebuilt.net, rebuilt.datamodule)
    data = rebuilt.datamodule
    parts = [p for p in data.parts if p.startswith(ev.INDEP)]
    out = {"seed": seed, "run_id": run_id}
    for variant in VARIANTS:
        tables = []
        for part in parts:
            net = adapted(rebuilt.net, data.loader(part, workers=0), variant)
            outputs = ev.infer(ev.inference_copy(net), data.loader(part, workers=0))
            tables.append(ev.cell_table(outputs, estimator))
        cells = ev.attach_cells(pd.concat(tables, ignore_index=True), data.store.index, data.split)
        metrics = ev.fraction_metrics(ev.fate_fractions(cells, estimator))
        out[variant] = {
            "frac_mae": round(metrics[ev.FRAC_MAE], 4),
            "frac_max_err": round(metrics[ev.FRAC_MAX_ERR], 4),
            "frac_mae_raw": round(metrics[ev.FRAC_MAE_RAW], 4),
            "acc": round(float((cells["predicted"] == cells["label"]).mean()), 4),
        }
        print(f"seed {seed} {variant}: {json.dumps(out[variant])}", flush=True)
    return out


def main() -> None:
    parser = reuse_parser(__doc__, "bn_adaptation.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = [analyse(args.reuse, seed_run(args.reuse, seed).info.run_id, seed) for seed in seeds]
    summary = {
        v: {
            k: round(float(np.mean([r[v][k] for r in results])), 4)
            for k in ("frac_mae", "frac_max_err", "frac_mae_raw", "acc")
        }
        for v in VARIANTS
    }
    write_reuse_report("bn_adaptation.py", args, "summary_mean_over_seeds", summary, results)


if __name__ == "__main__":
    main()

"""Where does a trained model's fate-fraction error come from: the inducers' microscope or the model?

    python benchmarks/fate_error_sources.py --checkpoint outputs/train/.../checkpoints/best-*.ckpt
                                            [--out benchmarks/results/fate_error_sources.json]

The checkpoint is a run on the built-in synthetic data (e.g. ``nscfate-train
experiment=cpu_baseline``). Its model and its saved calibration are evaluated twice: on the data it
was trained with, and on the same cells regenerated with ``data.synthetic.inducer_shift=0`` (the
inducer conditions imaged like control: same morphology, no extra defocus, NA loss or camera noise).
If the error stays, the microscope shift is not what limits it. Each line: accuracy on the test
split and on the inducer conditions, the fraction error (estimated and counted), and the latent
oracle's fraction error on the same split (its posteriors through the same correction: the floor).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from nscfate.data.datamodule import CellDataModule
from nscfate.data.splits import INDEP
from nscfate.evaluation.checkpoint import evaluate_checkpoint, load_checkpoint
from nscfate.evaluation.evaluate import oracle_scores


def figures(checkpoint: Path, shift: float, data_dir: Path) -> dict:
    """Evaluate ``checkpoint`` on its synthetic data generated with ``inducer_shift=shift``."""
    cfg = OmegaConf.create(load_checkpoint(checkpoint)["nscfate_config"])
    data = cfg.data
    if not data.get("synthetic"):
        sys.exit(f"{checkpoint}: not a run on the built-in synthetic data")
    data.synthetic.inducer_shift = shift
    data.path = str(data_dir / f"shift{shift:g}")
    evaluation, _ = evaluate_checkpoint(checkpoint, data=data)
    m, cells = evaluation.metrics, evaluation.cells
    indep = cells[cells["split"].str.startswith(INDEP)]
    datamodule = CellDataModule(
        **{k: v for k, v in OmegaConf.to_container(data).items() if k[0] != "_"}
    )
    datamodule.setup("test")
    oracle = oracle_scores(datamodule)
    return {
        "inducer_shift": shift,
        "test_acc": round(m["test/acc"], 4),
        "indep_acc": round(float((indep["predicted"] == indep["label"]).mean()), 4),
        "frac_mae": round(m["indep/frac_mae"], 4),
        "frac_max_err": round(m["indep/frac_max_err"], 4),
        "frac_mae_raw": round(m["indep/frac_mae_raw"], 4),
        "oracle_frac_mae": round(oracle["frac_mae"], 4),
        "oracle_frac_max_err": round(oracle["frac_max_err"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/fate_error_sources.json")
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shift in (1.0, 0.0):
            r = figures(args.checkpoint, shift, Path(tmp))
            results.append(r)
            print(
                f"inducer_shift={shift:g}: accuracy test {r['test_acc']:.3f}, inducers "
                f"{r['indep_acc']:.3f} | fraction error {r['frac_mae']:.3f} (worst "
                f"{r['frac_max_err']:.3f}, counted {r['frac_mae_raw']:.3f}) | oracle "
                f"{r['oracle_frac_mae']:.3f} (worst {r['oracle_frac_max_err']:.3f})",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(sys.argv), "checkpoint": str(args.checkpoint), "runs": results}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

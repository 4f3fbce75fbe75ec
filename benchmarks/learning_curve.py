"""Where does the gap to the latent oracle come from? A learning curve on the demo's recipe.

    python benchmarks/learning_curve.py [--cells-per-group 120,360,1200,3600] [--epochs 20,20,10,5]
                                        [--variant augmentation=strong] [--seeds 0]
                                        [--out benchmarks/results/learning_curve.json]

Each point is one real ``nscfate-train experiment=cpu_baseline`` process on the built-in synthetic
data with ``data.synthetic.cells_per_group=N`` (N cells per class and day in control, so about
8.4 N training cells; the held-out inducer conditions grow with it) and ``trainer.max_epochs=E``.
``--variant`` adds Hydra overrides (several joined with ``&``) to every point, e.g. a model or an
augmentation policy. The script prints, per point: training cells, test macro-F1, accuracy by day
and its ratio to the latent oracle's on the same test cells, the fate-fraction error of the
held-out conditions (``indep/frac_mae`` and ``frac_max_err``, ``frac_mae_raw`` for counting),
``test/ece`` and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_recipe import run, write  # noqa: E402  (a sibling script, not a package)


def point(cells_per_group: int, epochs: int, variant: str, seed: int, tmp: Path) -> dict:
    """Train one point of the curve and add the per-day ratio to the oracle."""
    overrides = f"data.synthetic.cells_per_group={cells_per_group}&trainer.max_epochs={epochs}"
    overrides += f"&{variant}" if variant else ""
    result = run("demo", overrides, tmp, f"k{cells_per_group}-e{epochs}-s{seed}", seed)
    result["oracle_ratio_by_day"] = {
        day: round(acc / result["oracle_by_day"][day], 3)
        for day, acc in result["acc_by_day"].items()
        if result["oracle_by_day"].get(day)
    }
    return result | {"cells_per_group": cells_per_group, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells-per-group", default="120,360,1200,3600")
    parser.add_argument("--epochs", default="20,20,10,5", help="one per size, or one for all")
    parser.add_argument("--variant", default="", help="extra Hydra overrides joined with &")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learning_curve.json"))
    args = parser.parse_args()
    sizes = [int(n) for n in args.cells_per_group.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    if len(epochs) == 1:
        epochs *= len(sizes)
    if len(epochs) != len(sizes):
        sys.exit(f"--epochs: {len(epochs)} values for {len(sizes)} sizes; give one or one per size")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for size, epoch in zip(sizes, epochs, strict=True):
                r = point(size, epoch, args.variant, seed, Path(tmp))
                results.append(r)
                print(
                    f"k={size:5d} train {r['train_cells']} cells, {epoch:2d} epochs, seed {seed}: "
                    f"macro-F1 {r['test_f1_macro']:.3f}  / oracle by day "
                    f"{r['oracle_ratio_by_day']}  frac_mae {r.get('indep_frac_mae', float('nan')):.3f} "
                    f"(counted {r.get('indep_frac_mae_raw', float('nan')):.3f}, worst "
                    f"{r.get('indep_frac_max_err', float('nan')):.3f})  "
                    f"ECE {r.get('test_ece', float('nan')):.3f}  {r['wall_seconds']:.0f} s",
                    flush=True,
                )
                write(args.out, results)  # after every point: an interrupted curve keeps its points
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

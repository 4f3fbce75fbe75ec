"""How hard the default synthetic dataset is, and how real (and curable) its confound is.

    python benchmarks/synth_difficulty.py [--cells-per-group 100] [--seed 0]

Prints, for the default settings, the latent oracle's accuracy per day (logistic regression on the
lat_* columns, 5-fold CV grouped by batch), then the mean-intensity probe (a classifier on each crop's
mean intensity alone) on raw and on per-image-normalised crops, with the confound off, at its
default and fully on. Ends with one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from nscfate.data.oracle import mean_intensity_accuracy, oracle_accuracy_by_day  # noqa: E402
from nscfate.data.synthetic import SynthSettings, generate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells-per-group", type=int, default=SynthSettings.cells_per_group)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out: dict = {"cells_per_group": args.cells_per_group, "seed": args.seed}

    settings = SynthSettings(seed=args.seed, cells_per_group=args.cells_per_group)
    _, index = generate(settings)
    oracle = oracle_accuracy_by_day(index, seed=args.seed)
    out["oracle_accuracy_by_day"] = {f"{d:g}": round(a, 3) for d, a in oracle.items()}
    print(
        "oracle accuracy by day (default settings): "
        + ", ".join(f"day {d:g}: {a:.3f}" for d, a in oracle.items())
    )

    out["mean_intensity_probe"] = {}
    for confound in (0.0, 0.5, 1.0):
        s = SynthSettings(seed=args.seed, cells_per_group=args.cells_per_group, confound=confound)
        images, idx = generate(s)
        raw = mean_intensity_accuracy(images, idx, s.white_level(), normalize=False, seed=args.seed)
        norm = mean_intensity_accuracy(images, idx, s.white_level(), normalize=True, seed=args.seed)
        out["mean_intensity_probe"][f"confound={confound:g}"] = {
            "raw": round(raw, 3),
            "per_image": round(norm, 3),
        }
        print(
            f"mean-intensity probe, confound={confound:g}: raw {raw:.3f}, after per-image normalisation "
            f"{norm:.3f} (chance 0.333)"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

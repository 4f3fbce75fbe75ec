"""Speed of the synthetic generator on ONE core: cells/s of ``generate`` (and optionally the CLI).

    python benchmarks/synth_speed.py                       # 64x64, 2,800 cells, best of 3
    python benchmarks/synth_speed.py --cells-per-group 400 --cli

Thread pools are limited to one thread (and the process pinned to one CPU where the OS allows)
before numpy/scipy/cv2 are imported, so the figure is per core. Prints one line per measurement
and a final JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

#: Generation must sustain at least this many cells/s on one core (acceptance threshold).
TARGET_CELLS_PER_S = 2000


def _pin_one_core() -> int | None:
    """Pin this process to a single CPU (Linux); returns it, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def bench_generate(cells_per_group: int, size: int, bit_depth: int, repeats: int) -> dict:
    """Time ``generate`` ``repeats`` times after one warm-up; returns cells/s figures."""
    import cv2

    cv2.setNumThreads(1)
    from nscfate.data.synthetic import GENERATOR_VERSION, SynthSettings, generate

    settings = SynthSettings(cells_per_group=cells_per_group, size=size, bit_depth=bit_depth)
    generate(SynthSettings(cells_per_group=2, size=size, bit_depth=bit_depth))  # warm-up
    rates, n = [], 0
    for k in range(repeats):
        start = time.perf_counter()
        images, _ = generate(settings)
        seconds = time.perf_counter() - start
        n = len(images)
        rates.append(n / seconds)
        print(
            f"generate run {k + 1}: {n} cells {size}x{size} in {seconds:.3f} s = {rates[-1]:,.0f} cells/s"
        )
    return {
        "generator_version": GENERATOR_VERSION,
        "cells": n,
        "size": size,
        "bit_depth": bit_depth,
        "cells_per_s_best": round(max(rates)),
        "cells_per_s_median": round(statistics.median(rates)),
    }


def bench_cli(cells_per_group: int, cpu: int | None) -> dict:
    """Wall time of ``nscfate-data synth`` end to end, process start-up and store writing included."""
    exe = shutil.which("nscfate-data", path=str(Path(sys.executable).parent)) or "nscfate-data"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth"
        cmd = [
            exe,
            "synth",
            "--out",
            str(out),
            "--cells-per-group",
            str(cells_per_group),
            "--quiet",
        ]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    try:
        cells = int(json.loads(done.stdout)["n_cells"])
    except (ValueError, KeyError) as err:
        raise SystemExit(
            f"could not read n_cells from the CLI output ({err}):\n{done.stdout}"
        ) from err
    rate = cells / seconds
    print(
        f"nscfate-data synth: {cells} cells in {seconds:.2f} s (with start-up) = {rate:,.0f} cells/s"
    )
    return {"cli_cells": cells, "cli_seconds": round(seconds, 3), "cli_cells_per_s": round(rate)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when generation is below TARGET_CELLS_PER_S."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells-per-group", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bit-depth", type=int, default=8, choices=(8, 16))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time `nscfate-data synth`")
    args = parser.parse_args(argv)
    cpu = _pin_one_core()
    result = {"cpu": cpu} | bench_generate(
        args.cells_per_group, args.size, args.bit_depth, args.repeats
    )
    if args.cli:
        result |= bench_cli(args.cells_per_group, cpu)
    print(json.dumps(result))
    return 0 if result["cells_per_s_best"] >= TARGET_CELLS_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())

"""``nscfate-data``: make, ingest, look at and describe dataset stores.

    nscfate-data synth   --out DIR [--seed N] [--size 64] [--cells-per-group K] [--confound X]
    nscfate-data ingest  SRC --out DIR [--format folder|csv|ideas] [--size 64|45x30] [--skip-bad]
    nscfate-data preview DIR --out sheet.png
    nscfate-data info    DIR
    nscfate-data verify  DIR
    nscfate-data split   DIR [--val 0.15] [--test 0.15] [--seed 0] [--holdout NT3,CNTF]
    nscfate-data oracle  DIR

``info``, ``split`` and ``oracle`` print one JSON object on stdout; ``synth`` and ``ingest`` print the
new store's ``info`` there and a human summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nscfate.cli.entry import console_script
from nscfate.cli.errors import friendly_errors
from nscfate.data.schema import CONTROL, LATENT_PREFIX
from nscfate.errors import NscfateError

PROG = "nscfate-data"


def _info(store) -> dict:
    from nscfate.data.store import describe

    meta = store.meta
    keep = ("white_level", "provenance", "digest")
    return (
        describe(store.images, store.index) | {k: meta[k] for k in keep} | {"path": str(store.path)}
    )


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_synth(args: argparse.Namespace) -> None:
    from nscfate.data.synthetic_cache import generate_synthetic_store

    settings = {
        "seed": args.seed,
        "size": args.size,
        "cells_per_group": args.cells_per_group,
        "confound": args.confound,
        "bit_depth": args.bit_depth,
        "batches_per_group": args.batches_per_group,
        "control_batches_per_group": args.control_batches_per_group,
        "control_cells_per_group": args.control_cells_per_group,
    }
    if args.days:
        settings["days"] = _floats(args.days, "--days")
    settings = {k: v for k, v in settings.items() if v is not None}
    out = Path(args.out)
    store = generate_synthetic_store(
        settings, out, progress=not args.quiet, overwrite=args.overwrite
    )
    print(
        f"wrote {len(store)} synthetic cells to {out} (digest {store.digest[:12]})", file=sys.stderr
    )
    _print_json(_info(store))


def cmd_ingest(args: argparse.Namespace) -> None:
    from nscfate.data.imageio import parse_size
    from nscfate.data.ingest import ingest

    store, report = ingest(
        args.src,
        args.out,
        fmt=args.format,
        size=parse_size(args.size),
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.quiet,
        channel=args.channel,
        condition=args.condition,
    )
    for path, why in report.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    skipped = f", skipped {len(report.skipped)} unreadable file(s)" if args.skip_bad else ""
    print(
        f"ingested {report.n_cells} cells from {args.src} into {args.out}{skipped}", file=sys.stderr
    )
    _print_json(_info(store) | {"skipped": len(report.skipped)})


def cmd_preview(args: argparse.Namespace) -> None:
    from nscfate.data.preview import contact_sheet
    from nscfate.data.store import open_store

    out = contact_sheet(open_store(args.dir), args.out, per_cell=args.per_cell, seed=args.seed)
    print(f"wrote {out}", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> None:
    from nscfate.data.store import open_store

    _print_json(_info(open_store(args.dir)))


def cmd_verify(args: argparse.Namespace) -> None:
    from nscfate.data.store import verify_store

    store = verify_store(args.dir)
    print(f"{store.path}: ok, {len(store)} cells, digest {store.digest[:16]}", file=sys.stderr)


def cmd_split(args: argparse.Namespace) -> None:
    from nscfate.data.splits import SplitSpec, make_split, split_counts, split_digest
    from nscfate.data.store import open_store

    store = open_store(args.dir)
    holdout = tuple(c for c in (args.holdout or "").split(",") if c)
    group_by = None if args.group_by in ("", "none", "null") else args.group_by
    spec = SplitSpec(
        val=args.val, test=args.test, seed=args.seed, group_by=group_by, holdout_conditions=holdout
    )
    split = make_split(store.index, spec)
    _print_json(
        {"digest": split_digest(store.index, split), "counts": split_counts(store.index, split)}
    )


def cmd_oracle(args: argparse.Namespace) -> None:
    from nscfate.data.oracle import oracle_accuracy_by_day
    from nscfate.data.store import open_store

    store = open_store(args.dir)
    if not any(c.startswith(LATENT_PREFIX) for c in store.index.columns):
        raise NscfateError(
            f"{args.dir} has no latent columns (lat_*): the oracle needs a synthetic store"
        )
    acc = oracle_accuracy_by_day(store.index, seed=args.seed)
    _print_json({"oracle_accuracy_by_day": {f"{d:g}": round(a, 4) for d, a in acc.items()}})


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NscfateError(
            f"{flag} {text!r}: expected comma-separated numbers, e.g. 1,3,5,7"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nscfate-data`` (one sub-command per verb)."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Make, ingest, look at and describe dataset stores."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate the synthetic bright-field dataset")
    s.add_argument("--out", required=True, help="new store directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64, help="crop size in pixels (square)")
    s.add_argument(
        "--cells-per-group",
        type=int,
        default=None,
        help="cells per (condition, class, day) in control, per (condition, day) for inducers",
    )
    s.add_argument(
        "--confound",
        type=float,
        default=None,
        help="0..1: how strongly batch brightness follows class in the training condition",
    )
    s.add_argument("--days", default=None, help="comma-separated culture days, e.g. 1,3,5,7")
    s.add_argument("--batches-per-group", type=int, default=None)
    s.add_argument(
        "--control-batches-per-group",
        type=int,
        default=None,
        help="control cultures per fate and day, if not --batches-per-group (inducer cells unchanged)",
    )
    s.add_argument(
        "--control-cells-per-group",
        type=int,
        default=None,
        help="control cells per fate and day, if not --cells-per-group (inducer cells unchanged)",
    )
    s.add_argument("--bit-depth", type=int, choices=(8, 16), default=None)
    s.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    i = sub.add_parser("ingest", help="ingest a folder tree, CSV manifest or IDEAS export")
    i.add_argument("src", help="source folder or manifest.csv")
    i.add_argument("--out", required=True, help="new store directory")
    i.add_argument(
        "--format",
        choices=("folder", "csv", "ideas"),
        default=None,
        help="source layout (default: detected)",
    )
    i.add_argument(
        "--size", default=None, help="store crop size, N or HxW (default: the largest crop)"
    )
    i.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report them")
    i.add_argument("--channel", type=int, default=1, help="IDEAS channel to read (bright field: 1)")
    i.add_argument("--condition", default=CONTROL, help="condition of an IDEAS export's cells")
    i.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_ingest)

    v = sub.add_parser("preview", help="contact sheet of a store, classes x days")
    v.add_argument("dir")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--per-cell", type=int, default=4, help="crops per class and day")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_preview)

    n = sub.add_parser("info", help="describe a store as JSON")
    n.add_argument("dir")
    n.set_defaults(func=cmd_info)

    c = sub.add_parser("verify", help="recompute a store's digest; a mismatch exits non-zero")
    c.add_argument("dir")
    c.set_defaults(func=cmd_verify)

    t = sub.add_parser("split", help="show the train/val/test split a seed gives, with its digest")
    t.add_argument("dir")
    t.add_argument("--val", type=float, default=0.15)
    t.add_argument("--test", type=float, default=0.15)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--group-by", default="batch", help="grouping column, or none")
    t.add_argument(
        "--holdout", default="", help="comma-separated conditions held out as independent tests"
    )
    t.set_defaults(func=cmd_split)

    o = sub.add_parser(
        "oracle", help="per-day accuracy of a classifier on a synthetic store's latents"
    )
    o.add_argument("dir")
    o.add_argument("--seed", type=int, default=0)
    o.set_defaults(func=cmd_oracle)
    return p


@friendly_errors(PROG)
def main(argv: list[str] | None = None) -> None:
    """Entry point of ``nscfate-data``."""
    args = build_parser().parse_args(argv)
    args.func(args)


#: The console script (pyproject's entry point): main, then no interpreter teardown.
entry = console_script(main)


if __name__ == "__main__":
    entry()

"""Three code-structure figures for "A house a newcomer can live in": hops per CLI, longest module,
places that define a metric name.

    python benchmarks/code_map.py [--label after] [--checkout PATH]
                                  [--out benchmarks/results/code_map.json]

1. Hops per CLI, measured at run time. Every console script of ``[project.scripts]`` (those that
   exist at the measured commit) runs its ``main`` in one worker process (this script with
   ``--worker``) on a tiny input, in this order: ``nscfate-data synth``, a one-epoch
   ``nscfate-train`` (tracking to a SQLite store in a temporary folder, ``paths.root_dir`` there
   too, so nothing reaches the checkout's mlruns/ or data/), then ``nscfate-eval``,
   ``nscfate-promote``, ``nscfate-predict`` and ``nscfate-report`` on that run. A ``sys.setprofile``
   hook waits for the first entry into the function that marks the CLI's real work (``WORK``:
   mostly a third-party function, so that renamed nscfate functions do not matter) and records the
   nscfate frames on the stack at that moment. The chain is those frames' modules, from the CLI
   module's ``main`` down, without the ``friendly_errors`` wrapper (``nscfate.cli.errors``: a
   pass-through every CLI shares), consecutive frames of one module collapsed; hops = module
   changes along it (chain length - 1). The raw frames (module:function) are kept in the record.
2. Longest module: the ``.py`` files under ``nscfate/`` by line count, the five longest.
3. Places that define a metric name: the modules under ``nscfate/`` whose source matches
   ``METRIC_NAME`` (a quoted metric-name literal or an f-string building one).

``--checkout`` measures another checkout (e.g. a ``git worktree`` of an older commit): the worker
runs with that checkout first on ``PYTHONPATH`` and ``NSCFATE_ROOT`` set to it, so the editable
install of this repository does not shadow it. ``--label`` names the record entry (``before``,
``after``); the entry holds the commit, the figures and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from tiny import TINY_DATA  # noqa: E402  (a sibling module, not a package)

REPO = HERE.parents[1]

#: A metric-name literal: a quoted token (no whitespace inside, optional string prefix such as f)
#: that is either ``<split>/<name>`` with split one of train, val, test, oracle, indep (``"val/loss"``,
#: ``"test/f1_macro"``, the bare prefix ``"test/"``, ``f"indep/{k}"``), or an f-string whose
#: placeholder stands for the split or prefix: ``{x}/`` then a name containing a metric word (acc,
#: f1, loss, auroc, ece, frac, ood), or ``{x}`` then a name starting with one: ``f"{split}/loss"``,
#: ``f"{base}/true_frac_{fate}"``, ``f"{prefix}f1_macro"``. Artifact paths (``"plots/..."``,
#: ``"cam/..."``), URLs (``f"{base}/postgres"``) and file names (``f"{stem}_fractions.csv"``) do not.
#: Docstrings and comments are not told apart: a quoted metric name in one counts too.
METRIC_NAME = re.compile(
    r"""(?<![\w"'])[rRbBfF]{0,2}(?P<q>["'])
    (?:
        (?:train|val|test|oracle|indep)/[^"'\s]*
      | \{[^{}"'\s]+\}(?:/\w*?)?(?:acc|f1|loss|auroc|ece|frac|ood)[^"'\s]*
    )
    (?P=q)""",
    re.VERBOSE,
)

#: Per console script: (function names, module pattern) of the function whose first entry marks
#: the CLI's real work. The nscfate frames on the stack when it is entered form the chain.
WORK: dict[str, tuple[frozenset[str], str]] = {
    # the synthetic generator, entered from the synth sub-command
    "nscfate-data": (frozenset({"generate"}), r"nscfate\.data\.synthetic"),
    # Lightning's Trainer.fit: its caller is the nscfate function that trains
    "nscfate-train": (
        frozenset({"fit"}),
        r"(lightning\.pytorch|pytorch_lightning)\.trainer\.trainer",
    ),
    # the headline test metric (macro-F1), computed where the test metrics are
    "nscfate-eval": (frozenset({"multiclass_f1_score"}), r"torchmetrics\..*"),
    # MLflow's model registry: the new version (or an alias set on it)
    "nscfate-promote": (
        frozenset({"register_model", "create_model_version", "set_registered_model_alias"}),
        r"mlflow\..*",
    ),
    # the first forward pass of a torch module: the model run on the crops
    "nscfate-predict": (
        frozenset({"_wrapped_call_impl", "_call_impl"}),
        r"torch\.nn\.modules\.module",
    ),
    # the HTML page assembled from the report's sections
    "nscfate-report": (frozenset({"page"}), r"nscfate\.report\.html"),
}
#: The order the CLIs run in (train makes the run the later ones use).
ORDER = list(WORK)
#: Hydra config of each Hydra CLI (the tiny overrides are kept only where the key exists).
CONFIG = {
    "nscfate-train": "train",
    "nscfate-eval": "eval",
    "nscfate-promote": "promote",
    "nscfate-predict": "predict",
    "nscfate-report": "report",
}
#: A one-epoch run on a tiny synthetic store.
TINY_TRAIN = [*TINY_DATA, "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
#: The module of friendly_errors' pass-through wrapper, left out of the chains.
WRAPPER = "nscfate.cli.errors"


# ---------------------------------------------------------------- static figures (source only)


def module_lines(checkout: Path) -> list[tuple[str, int]]:
    """Every ``.py`` file under ``nscfate/`` with its line count, longest first."""
    files = sorted((checkout / "nscfate").rglob("*.py"))
    counted = [(str(f.relative_to(checkout)), len(f.read_text().splitlines())) for f in files]
    return sorted(counted, key=lambda item: (-item[1], item[0]))


def metric_places(checkout: Path) -> dict[str, list[str]]:
    """The modules under ``nscfate/`` that contain a ``METRIC_NAME`` literal, with the literals."""
    places = {}
    for f in sorted((checkout / "nscfate").rglob("*.py")):
        found = [m.group(0) for m in METRIC_NAME.finditer(f.read_text())]
        if found:
            places[str(f.relative_to(checkout))] = sorted(set(found))
    return places


# ---------------------------------------------------------------- hops (worker process)


class Probe:
    """A profile hook: at the first entry into a matching function, keep the nscfate frames of the
    stack (outermost first, as (module, function)) and stop profiling."""

    def __init__(self, names: frozenset[str], module: str) -> None:
        self.names, self.module = names, re.compile(module)
        self.frames: list[tuple[str, str]] | None = None
        self.work = ""

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in self.names:
            module = frame.f_globals.get("__name__", "")
            if self.module.fullmatch(module):
                self.work = f"{module}:{frame.f_code.co_qualname}"
                self.frames = nscfate_frames(frame)
                sys.setprofile(None)


def nscfate_frames(frame: FrameType | None) -> list[tuple[str, str]]:
    """The (module, qualified function) of every nscfate frame from ``frame`` up, outermost first."""
    frames = []
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] == "nscfate":
            frames.append((module, frame.f_code.co_qualname))
        frame = frame.f_back
    return frames[::-1]


def chain_of(frames: list[tuple[str, str]], cli_module: str) -> list[str]:
    """Modules from the CLI module's first frame down, wrapper left out, consecutive repeats
    collapsed."""
    modules = [m for m, _ in frames if m != WRAPPER]
    if cli_module in modules:
        modules = modules[modules.index(cli_module) :]
    return [m for i, m in enumerate(modules) if i == 0 or m != modules[i - 1]]


def entry_points(checkout: Path) -> dict[str, str]:
    """The console scripts of the checkout's pyproject.toml that this script measures."""
    scripts = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: scripts[name] for name in ORDER if name in scripts}


def existing(config: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """The overrides whose key exists in the checkout's ``config`` (kept, dropped)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nscfate.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config)
    missing = object()
    kept, dropped = [], []
    for o in overrides:
        key = o.split("=", 1)[0]
        found = OmegaConf.select(cfg, key, default=missing, throw_on_resolution_failure=False)
        (dropped if found is missing else kept).append(o)
    return kept, dropped


def cli_args(script: str, tmp: Path, run_id: str | None) -> tuple[list[str], list[str]]:
    """The command line of ``script`` on the tiny inputs (the run ``run_id`` for the late ones),
    and the optional overrides dropped because the checkout's config lacks their key."""
    if script == "nscfate-data":
        return ["synth", "--out", str(tmp / "synth"), "--cells-per-group", "4", "--quiet"], []
    common = [f"paths.root_dir={tmp}", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]
    optional: list[str] = []
    if script == "nscfate-train":
        common.append("tracking.experiment=code_map")
        optional = TINY_TRAIN
    elif script == "nscfate-predict":
        common += [f"model={run_id}", f"input={tmp / 'synth'}", f"output={tmp / 'predictions.csv'}"]
    else:
        common += [f"run_id={run_id}", "tracking.experiment=code_map"]
    if script == "nscfate-report":
        common.append(f"output={tmp / 'report.html'}")
        optional = ["report.n_boot=20", "report.log=false"]
    kept, dropped = existing(CONFIG[script], optional) if optional else ([], [])
    return common + kept, dropped


def run_cli(script: str, entry: str, argv: list[str], log: Path) -> dict:
    """Run ``entry``'s function in this process with ``argv``, the profile hook armed."""
    from hydra.core.global_hydra import GlobalHydra

    module, function = entry.split(":")
    main: Callable[[], Any] = getattr(importlib.import_module(module), function)
    probe = Probe(*WORK[script])
    saved, sys.argv = sys.argv, [script, *argv]
    code = 0
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        sys.setprofile(probe)
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            sys.setprofile(None)
            sys.argv = saved
            GlobalHydra.instance().clear()
    result: dict[str, Any] = {"argv": argv, "exit_code": code, "trigger": WORK[script][1]}
    if probe.frames is None:
        return result | {
            "error": "work function never entered",
            "log_tail": log.read_text()[-1500:],
        }
    chain = chain_of(probe.frames, module)
    return result | {
        "chain": chain,
        "hops": len(chain) - 1,
        "work": probe.work,
        "frames": [f"{m}:{f}" for m, f in probe.frames],
    }


def tiny_run_id(tmp: Path) -> str | None:
    """The id of the run the tiny ``nscfate-train`` made."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("code_map")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return runs[0].info.run_id if runs else None


def worker(checkout: Path, tmp: Path, out: Path) -> None:
    """Run every CLI of ``checkout`` once, in order; write the hops figures as JSON to ``out``."""
    import torch

    import nscfate

    if not Path(nscfate.__file__).resolve().is_relative_to(checkout):
        sys.exit(f"nscfate imported from {nscfate.__file__}, not from {checkout}")
    torch.set_num_threads(1)
    for heavy in ("lightning", "mlflow", "torchmetrics", "pandas", "hydra"):
        importlib.import_module(heavy)  # imported before the hook is armed: not profiled
    results: dict[str, Any] = {}
    run_id = None
    for script, entry in entry_points(checkout).items():
        if script not in ("nscfate-data", "nscfate-train") and run_id is None:
            results[script] = {"error": "no tiny run to use (nscfate-train failed)"}
            continue
        argv, dropped = cli_args(script, tmp, run_id)
        results[script] = run_cli(script, entry, argv, tmp / f"{script}.log")
        results[script]["dropped_overrides"] = dropped
        if script == "nscfate-train":
            run_id = tiny_run_id(tmp)
        print(f"{script}: {results[script].get('chain', results[script].get('error'))}", flush=True)
    out.write_text(json.dumps(results, indent=2))


def measure_hops(checkout: Path) -> dict:
    """The worker process on ``checkout`` in a temporary folder; its figures."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "NSCFATE_ROOT": str(checkout),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    with tempfile.TemporaryDirectory(prefix="code_map-") as tmp:
        out = Path(tmp) / "hops.json"
        cmd = [sys.executable, str(HERE), "--worker", "--checkout", str(checkout)]
        cmd += ["--worker-tmp", tmp, "--worker-out", str(out)]
        proc = subprocess.run(cmd, cwd=tmp, env=env, text=True, stderr=subprocess.PIPE)
        if proc.returncode != 0 or not out.exists():
            sys.exit(f"worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------- record and tables


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def short(module: str) -> str:
    return module.removeprefix("nscfate.")


def print_tables(entry: dict) -> None:
    """The three figures as plain-text tables."""
    print(f"\n{entry['label']} @ {entry['commit']}\n{'CLI':<17} {'hops':>4}  chain")
    for script, r in entry["hops"].items():
        chain = " -> ".join(map(short, r["chain"])) if "chain" in r else f"({r['error']})"
        print(f"{script:<17} {r.get('hops', '-'):>4}  {chain}")
    print("\nlongest modules (lines):")
    for m in entry["longest_modules"]:
        print(f"  {m['lines']:>5}  {m['path']}")
    places = entry["metric_name_places"]
    print(f"\nmodules defining a metric name: {places['count']}")
    for path, literals in places["modules"].items():
        print(f"  {path}: {' '.join(literals)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--checkout", type=Path, default=REPO, help="another nscfate checkout")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results/code_map.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-tmp", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    if args.worker:
        worker(checkout, args.worker_tmp, args.worker_out)
        return
    lines = module_lines(checkout)
    places = metric_places(checkout)
    command = ["python benchmarks/code_map.py", f"--label {args.label}"]
    if checkout != REPO:
        command.append(f"--checkout {args.checkout}")
    entry = {
        "label": args.label,
        "commit": git(checkout, "rev-parse", "--short", "HEAD"),
        "uncommitted_changes_in_nscfate_or_conf": bool(
            git(checkout, "status", "--porcelain", "--", "nscfate", "conf", "pyproject.toml")
        ),
        "command": " ".join(command),
        "hops": measure_hops(checkout),
        "longest_module": {"path": lines[0][0], "lines": lines[0][1]},
        "longest_modules": [{"path": p, "lines": n} for p, n in lines[:5]],
        "n_modules": len(lines),
        "metric_name_places": {
            "count": len(places),
            "regex": METRIC_NAME.pattern,
            "modules": places,
        },
    }
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record[args.label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print_tables(entry)


if __name__ == "__main__":
    main()

"""Layers import downward only (README, Architecture): a package never imports one above it."""

from __future__ import annotations

import ast

from .conftest import REPO

#: Lowest first. The top-level helpers (errors, files, redact, paths) sit below every layer.
LAYERS = [
    "augment",
    "data",
    "models",
    "estimation",
    "evaluation",
    "training",
    "tracking",
    "search",
    "report",
    "cli",
]


def imported_layers(path) -> set[str]:
    """The nscfate layers a module imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nscfate" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_layers_import_downward_only():
    upward = []
    for layer in LAYERS:
        for path in sorted((REPO / "nscfate" / layer).rglob("*.py")):
            for other in imported_layers(path):
                if LAYERS.index(other) > LAYERS.index(layer):
                    upward.append(f"{path.relative_to(REPO)} imports nscfate.{other}")
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from nscfate.tracking.run import tracked_train\n")
    assert imported_layers(module) == {"tracking"}

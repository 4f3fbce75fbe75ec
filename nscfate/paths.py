"""Where the repository is, as an OmegaConf resolver (``${nscfate.repo:}``) for conf/paths."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

#: The checkout nscfate is installed from (editable install): holds conf/, mlruns/, data/.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def require_checkout(prog: str) -> None:
    """Exit with one line when ``conf/`` is not beside the package: nscfate runs from its checkout
    (an editable install), and a wheel installed elsewhere would not find its configs."""
    if not (CONF_DIR / "train.yaml").is_file():
        sys.exit(
            f"{prog}: error: nscfate's configs are not at {CONF_DIR}: install nscfate from its "
            "checkout with `pip install -e /path/to/nscfate` (what `make venv` does), not as a wheel"
        )


def register_resolvers() -> None:
    """Make ``${nscfate.repo:}`` available to configs (idempotent)."""
    if not OmegaConf.has_resolver("nscfate.repo"):
        OmegaConf.register_new_resolver("nscfate.repo", lambda: str(REPO_ROOT))


register_resolvers()

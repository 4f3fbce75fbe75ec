"""Where the repository is, as an OmegaConf resolver (``${nscfate.repo:}``) for conf/paths."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

#: The checkout nscfate is installed from (editable install): holds conf/, mlruns/, data/.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def register_resolvers() -> None:
    """Make ``${nscfate.repo:}`` available to configs (idempotent)."""
    if not OmegaConf.has_resolver("nscfate.repo"):
        OmegaConf.register_new_resolver("nscfate.repo", lambda: str(REPO_ROOT))


register_resolvers()

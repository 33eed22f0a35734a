"""Where wmq keeps its files: one place, resolved relative to the repository checkout.

The package is installed editable from the repository, so the data/ and figures/ folders sit next to it.
``WMQ_HOME`` overrides the root (e.g. to keep a separate results cache).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(os.environ.get("WMQ_HOME", Path(__file__).resolve().parent.parent))
DATA_DIR = REPO_ROOT / "data"
CHECKPOINTS_DIR = DATA_DIR / "checkpoints"
RESULTS_DIR = DATA_DIR / "results"
DATASETS_DIR = DATA_DIR / "datasets"
FIGURES_DIR = REPO_ROOT / "figures"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

"""The Hydra configs of lp-train (the YAML files in this folder and its config groups).

pyproject.toml ships this folder inside the package as ``lp_train.conf``, so an editable checkout and an installed
wheel find the configs the same way: ``from lp_train.conf import CONF_DIR`` (an absolute path, as a string).
"""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent)

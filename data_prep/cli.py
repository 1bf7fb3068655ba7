"""``lp-prep`` / ``python -m data_prep``: the curation command line (Hydra, ``conf/data_prep.yaml``).

Curation of LivePortrait's training data (Guo et al. 2024, Sec. 4.1). Examples::

    lp-prep inputs.paths=[/data/raw/vox2] output.dir=/data/curated workers=8          # run (resumable)
    lp-prep inputs.manifest=/data/manifest.csv output.dir=/data/curated task.count=64  # one task of an array
    lp-prep mode=merge output.dir=/data/curated                                       # index.json + report/
    lp-prep recipe voxceleb2 --txt vox2_dev_txt/txt --videos dev/mp4 --out vox2.csv   # manifest from metadata
    lp-prep check-splits vox2.csv th1kh.csv                                           # identity leak check

``run`` / ``merge`` below are plain functions for tests and scripts; ``main`` only parses and calls.
"""

from __future__ import annotations

import json
import logging
import sys

import hydra
from lp_train.conf import CONF_DIR
from omegaconf import DictConfig

from data_prep.recipes.cli import check_splits_main, recipe_main
from data_prep.report import merge
from data_prep.run import run
from lp_train.cli_errors import report_user_errors, run_cli

log = logging.getLogger(__name__)


def execute(cfg: DictConfig) -> dict:
    """Dispatch on ``cfg.mode``: ``run`` curates (this task's slice), ``merge``/``stats`` indexes and reports."""
    if cfg.mode == "run":
        return run(cfg)
    if cfg.mode in ("merge", "stats"):
        return merge(cfg)["summary"]
    raise ValueError(f"mode must be run, merge or stats; got {cfg.mode!r}")


@hydra.main(config_path=CONF_DIR, config_name="data_prep", version_base="1.3")
@report_user_errors("lp-prep")
def hydra_main(cfg: DictConfig) -> None:
    result = execute(cfg)
    shown = {k: v for k, v in result.items() if k not in ("skipped", "by_dataset")}
    print(json.dumps(shown, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    """Console script ``lp-prep``: ``recipe NAME ...``, ``check-splits MANIFEST ...``, or Hydra overrides; user errors
    -> one line, exit 2 (``--debug`` for the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["recipe"], ["check-splits"]):
        sys.exit((recipe_main if argv[0] == "recipe" else check_splits_main)(argv[1:]))
    run_cli("lp-prep", hydra_main, argv)


if __name__ == "__main__":
    main()

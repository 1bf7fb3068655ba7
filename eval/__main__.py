"""``python -m lp_eval`` = ``lp-eval``."""

from lp_eval.cli import main

main()

"""Evaluation protocols, CLI and reports (installed as the package ``lp_eval``)."""

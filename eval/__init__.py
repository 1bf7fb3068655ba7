"""Evaluation protocols, CLI and reports of lp-train (LivePortrait Sec. 4.2), installed as the package ``lp_eval``.

- ``registry``: named protocols (``@register_protocol``); ``protocols``: ``self_reenactment`` / ``cross_reenactment``;
- ``inputs``: video / image folders and curation shards -> LivePortrait face crops;
- ``reenact``: checkpoint -> batched animation (official relative motion, optional stitching);
- ``suite``: the configured metrics (``lp_train.metrics``) with shared face / identity feature extraction;
- ``store``: resumable per-video CSV, gathered across DDP ranks;
- ``report`` / ``compare``: summary JSON, paper-layout Markdown, grids, mp4s, metric-*.jsonl, wandb tables;
- ``cli``: ``lp-eval`` (Hydra, ``conf/eval.yaml``) and ``lp-eval compare``.
"""

"""``lp-prep recipe NAME ...`` and ``lp-prep check-splits MANIFEST ...`` (argparse; the curation run is Hydra)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_prep import recipes
from data_prep.inputs import read_manifest
from data_prep.recipes import RECIPES
from data_prep.recipes.common import write_manifest
from data_prep.splits import identity_leaks


def recipe_main(argv: list[str]) -> int:
    """Write a manifest from a corpus's metadata; print the summary as JSON. 0 = written, 1 = identity leak."""
    ap = argparse.ArgumentParser(prog="lp-prep recipe", description=recipes.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, r in RECIPES.items():
        p = sub.add_parser(name, help=r.module.__doc__.splitlines()[0], description=r.module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.add_argument("--out", type=Path, required=True, help="manifest to write (.csv)")
        r.module.add_arguments(p)
    args = ap.parse_args(argv)
    result = RECIPES[args.name].convert(args)
    summary = write_manifest(result, args.out)
    leaks = identity_leaks(r.to_csv() for r in result.rows)
    summary["identity_leaks"] = [str(leak) for leak in leaks[:20]]
    print(json.dumps(summary, indent=1))
    if result.missing:
        print(
            f"{len(result.missing)} listed clips have no video on disk: see {summary['missing_list']}", file=sys.stderr
        )
    if leaks:
        print(f"error: {len(leaks)} identities are in train and a held-out split (see identity_leaks)", file=sys.stderr)
        return 1
    return 0


def check_splits_main(argv: list[str]) -> int:
    """Check manifests for identities in train and test together; 0 = disjoint, 1 = leak (listed)."""
    ap = argparse.ArgumentParser(prog="lp-prep check-splits", description=check_splits_main.__doc__)
    ap.add_argument("manifests", nargs="+", type=Path, help="CSV / JSONL manifests of one build (checked together)")
    args = ap.parse_args(argv)
    rows = [row for m in args.manifests for row in read_manifest(m)]
    leaks = identity_leaks(rows)
    print(
        json.dumps({"rows": len(rows), "leaks": len(leaks), "identity_leaks": [str(x) for x in leaks[:50]]}, indent=1)
    )
    return 1 if leaks else 0

"""``python -m lp_train.pretrained pack CKPT OUT [--model tiny] [--note TEXT]`` | ``list``.

``pack`` writes OUT (a path, or a registered short name such as ``stage1_tiny_faces`` for its file in this
package) with the base networks of CKPT (a Lightning .ckpt, its EMA when present, or an lp-train model file) in
float16 plus metadata, atomically, at most 15 MiB. ``list`` prints the registered short names and their files.
"""

from __future__ import annotations

import argparse
import sys

import torch

from lp_train.pretrained import REGISTRY, pack, path_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lp_train.pretrained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack a checkpoint into a shipped model file")
    p.add_argument("checkpoint", help="Lightning .ckpt or lp-train model file")
    p.add_argument("out", help="output file, or a registered short name")
    p.add_argument("--model", default="tiny", help="the model= config the weights load into (default: tiny)")
    p.add_argument("--note", default="", help="free text stored in the metadata (e.g. the training command)")
    sub.add_parser("list", help="registered short names")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for name, entry in REGISTRY.items():
            path = path_of(name)
            state = f"{path.stat().st_size / 2**20:.1f} MiB" if path.is_file() else "not installed"
            print(f"{name}: {path} ({state}; model={entry.model}) - {entry.description}")
        return 0
    try:
        out = pack(args.checkpoint, args.out, args.model, args.note)
    except (OSError, ValueError) as e:
        print(f"lp_train.pretrained pack: error: {e}", file=sys.stderr)
        return 1
    meta = torch.load(out, map_location="cpu", weights_only=True)["metadata"]
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, {meta['parameters']} parameters, "
          f"step {meta['global_step']}, {meta['weights']} weights)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

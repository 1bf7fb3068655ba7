"""``lp-ckpt``: convert between the official LivePortrait release and lp-train model files.

    lp-ckpt import-official DIR OUT.pt [--model official]   official folder (base_models/, retargeting_models/) -> ours
    lp-ckpt export-official CKPT DIR [--model official]     ours / Lightning .ckpt -> official layout
    lp-ckpt inspect CKPT                                      parameter counts per sub-network

Both directions load strictly into the network built from ``conf/model/<model>.yaml`` so a file that does not match
the architecture is rejected with the first mismatched keys named.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from torch import nn

from lp_train.checkpoint import load_model_weights, save_model, write_official_dir
from lp_train.cli_errors import EXIT_USER_ERROR, debug_requested, one_line, user_error_types
from lp_train.conf import CONF_DIR

log = logging.getLogger(__name__)


def build_model(name: str = "official") -> tuple[nn.Module, dict]:
    """Instantiate ``conf/model/<name>.yaml``; returns the model and its resolved config."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not (Path(CONF_DIR) / "model" / f"{name}.yaml").is_file():
        raise FileNotFoundError(f"no model config conf/model/{name}.yaml under {CONF_DIR}")
    with initialize_config_dir(config_dir=str(Path(CONF_DIR) / "model"), version_base="1.3"):
        cfg = compose(config_name=name)
    return instantiate(cfg), OmegaConf.to_container(cfg, resolve=True)


def import_official(src: str | Path, out: str | Path, model: str = "official") -> nn.Module:
    """Official release folder -> our model file (strict)."""
    net, cfg = build_model(model)
    load_model_weights(net, src)
    save_model(net, out, cfg)
    return net


def export_official(ckpt: str | Path, out_dir: str | Path, model: str = "official") -> list[Path]:
    """Our model file or Lightning checkpoint -> official release layout (strictly checked against the network)."""
    net, _ = build_model(model)
    load_model_weights(net, ckpt)
    return write_official_dir(net.state_dict(), out_dir)


def _counts(net: nn.Module) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in net.named_children()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lp-ckpt", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("import-official", help="official release folder -> lp-train model file")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--model", default="official")
    p = sub.add_parser("export-official", help="lp-train model file / Lightning ckpt -> official layout")
    p.add_argument("ckpt")
    p.add_argument("out_dir")
    p.add_argument("--model", default="official")
    p = sub.add_parser("inspect", help="parameter counts of a checkpoint loaded into conf/model/<model>.yaml")
    p.add_argument("ckpt")
    p.add_argument("--model", default="official")
    ap.add_argument("--debug", action="store_true", help="show the traceback of errors")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    args = ap.parse_args([a for a in argv if a != "--debug"])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "import-official":
            net = import_official(args.src, args.out, args.model)
            print(f"wrote {args.out}: {_counts(net)}")
        elif args.cmd == "export-official":
            for path in export_official(args.ckpt, args.out_dir, args.model):
                print(f"wrote {path}")
        else:
            net, _ = build_model(args.model)
            load_model_weights(net, args.ckpt)
            print(_counts(net))
    except user_error_types() as e:
        if debug:
            raise
        print(f"lp-ckpt: error: {one_line(e)}  (--debug for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

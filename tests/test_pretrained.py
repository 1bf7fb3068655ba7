"""Shipped models (``lp_train.pretrained``): ``pack`` writes base-only float16 weights with metadata (atomic, size
capped); a short name resolves for ``module.init_weights``, ``lp-eval`` and ``lp-animate``; a missing file or an
unknown name is one clear error naming the file and the registered names; the demo falls back to random init."""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

import lp_train.pretrained as pretrained
from lp_train.checkpoint import read_model_state
from lp_train.pretrained.__main__ import main as pretrained_main
from lp_train.train import CONF_DIR


def _tiny_model():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=stage1_cpu"])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model)


@pytest.fixture()
def shipped(tmp_path, monkeypatch):
    """The package folder redirected to a temp dir (the real model file may or may not be installed)."""
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", tmp_path / "pkg")
    (tmp_path / "pkg").mkdir()
    return tmp_path / "pkg"


def _lightning_ckpt(tmp_path, ema: bool):
    """A Lightning checkpoint of a stage-1 module: the model (with stage-2 heads), its EMA, a discriminator."""
    model = _tiny_model()
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema:
        sd.update({f"model_ema.module.{k}": v + 1 for k, v in model.state_dict().items() if v.is_floating_point()})
        sd.update({f"model_ema.module.{k}": v for k, v in model.state_dict().items() if not v.is_floating_point()})
    sd["discriminators.face.conv.weight"] = torch.zeros(3)
    path = tmp_path / "step00000020.ckpt"
    torch.save({"state_dict": sd, "global_step": 20, "optimizer_states": [{"big": torch.zeros(1000)}]}, path)
    return path, model


@pytest.mark.parametrize("ema", [False, True])
def test_pack_writes_base_only_float16_weights_with_metadata(tmp_path, ema):
    ckpt, model = _lightning_ckpt(tmp_path, ema)
    out = pretrained.pack(ckpt, tmp_path / "m.pt", note="20-step test run")
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["storage_dtype"] == "float16" and raw["metadata"]["global_step"] == 20
    assert raw["metadata"]["weights"] == ("EMA" if ema else "trained") and raw["metadata"]["note"] == "20-step test run"
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())
    assert not any(k.startswith(("stitching_retargeting_module.", "discriminators")) for k in raw["state_dict"])
    assert out.stat().st_size <= pretrained.MAX_BYTES and not list(tmp_path.glob(".*packing*"))
    sd = read_model_state(out)  # comes back as float32, equal to the float16-rounded weights
    for k, v in model.state_dict().items():
        if k.startswith("stitching_retargeting_module."):
            continue
        want = (v + 1 if ema and v.is_floating_point() else v).half().float() if v.is_floating_point() else v
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], want), k


def test_pack_refuses_an_oversized_model_and_leaves_nothing(tmp_path, monkeypatch):
    ckpt, _ = _lightning_ckpt(tmp_path, ema=False)
    monkeypatch.setattr(pretrained, "MAX_BYTES", 1000)
    with pytest.raises(ValueError, match="MiB > "):
        pretrained.pack(ckpt, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists() and not list(tmp_path.glob(".m.pt*"))
    assert pretrained_main(["pack", str(ckpt), str(tmp_path / "m.pt")]) == 1  # the CLI: one error line, exit 1


def test_short_name_loads_into_stage1_eval_and_animate(tmp_path, shipped, capsys):
    from lp_eval.reenact import load_model as eval_load
    from omegaconf import OmegaConf

    from lp_train.animate import load_model as animate_load
    from lp_train.lit.stage1 import Stage1Module  # noqa: F401 - the module class init_weights belongs to

    ckpt, model = _lightning_ckpt(tmp_path, ema=False)
    assert pretrained_main(["pack", str(ckpt), "stage1_tiny_faces"]) == 0
    assert (shipped / "stage1_tiny_faces.pt").is_file() and "wrote" in capsys.readouterr().out
    assert pretrained.available() == ["stage1_tiny_faces"]
    base = {k: v.half().float() for k, v in model.state_dict().items() if not k.startswith("stitching_")}

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):  # stage 1: module.init_weights=<short name>
        cfg = compose("train", overrides=["experiment=stage1_cpu", "module.init_weights=stage1_tiny_faces",
                                          f"paths.output_dir={tmp_path / 'run'}"])  # fmt: skip
    module = hydra.utils.instantiate(cfg.module)
    got = module.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in base.items())

    net, has_heads = eval_load(OmegaConf.create({"model": OmegaConf.to_container(cfg.model),  # lp-eval
                                                 "checkpoint": "stage1_tiny_faces"}), torch.device("cpu"))  # fmt: skip
    assert not has_heads and all(torch.equal(net.state_dict()[k], v) for k, v in base.items())

    fresh = _tiny_model()  # lp-animate (stage-1 weights: no stitching)
    fresh.stitching_retargeting_module = None
    animate_load(fresh, "stage1_tiny_faces", None, need_heads=False)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in base.items())


def test_missing_file_and_unknown_name_are_one_clear_error(shipped):
    with pytest.raises(FileNotFoundError) as e:
        read_model_state("stage1_tiny_faces")
    assert str(shipped / "stage1_tiny_faces.pt") in str(e.value) and "pack" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"'nope' is neither .* stage1_tiny_faces \(file not installed\)"):
        read_model_state("nope")
    assert pretrained.available() == []


def test_demo_starts_stage1_from_the_shipped_model_or_falls_back_to_random_init(tmp_path, shipped, caplog):
    from lp_train.demo import stage1_start

    overrides, line = stage1_start()
    assert not any("init_weights" in o for o in overrides) and "random init" in line
    assert "experiment=stage1_cpu" in overrides
    ckpt, _ = _lightning_ckpt(tmp_path, ema=False)
    pretrained.pack(ckpt, "stage1_tiny_faces")
    overrides, line = stage1_start()
    assert "module.init_weights=stage1_tiny_faces" in overrides and "fine-tun" in line


def test_wheel_carries_the_shipped_models_and_their_card():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "lp_train.pretrained" in setuptools["packages"]
    assert {"*.pt", "*.md"} <= set(setuptools["package-data"]["lp_train.pretrained"])
    card = (Path(pretrained.__file__).parent / "MODEL_CARD.md").read_text()
    for section in ("## Data", "## Command", "## Steps and wall time", "## Held-out", "## Limits"):
        assert section in card
    assert "blur_matched_copy_source" in card and "TODO" not in card  # filled in for the shipped file
    shipped = pretrained.path_of("stage1_tiny_faces")
    assert shipped.is_file() and shipped.stat().st_size <= pretrained.MAX_BYTES

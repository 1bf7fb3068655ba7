"""SyntheticPairs / SyntheticDataModule: the real batch contract from drawn faces; conf/data configs compose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from train_helpers import data_settings

from lp_train.data import SyntheticDataModule, SyntheticPairs, check_batch, finalize_batch
from lp_train.face import landmarks as lm

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_contract_and_determinism():
    ds = SyntheticPairs(length=8, size=32, p_image=0.5, cross_identity_prob=0.5, seed=3)
    batch = SyntheticPairs.collate([ds[i] for i in range(8)])
    check_batch(batch, 32)
    assert batch["is_image"].any() and not batch["is_image"].all() and not batch["same_identity"].all()
    assert not (batch["is_image"] & ~batch["same_identity"]).any()  # image pairs are always one identity
    again = SyntheticPairs.collate([ds[5]])
    for k in ("source_hr", "driving_landmarks", "driving_pose"):
        assert torch.equal(again[k][0], batch[k][5])
    assert not torch.equal(SyntheticPairs(length=8, size=32, seed=4)[5]["source_u8"], ds[5]["source_u8"])
    with pytest.raises(IndexError):
        ds[8]


def test_pixels_agree_with_landmarks():
    """Irises are drawn where the iris landmarks are; the face box holds the face, outside it is background."""
    ds = SyntheticPairs(
        length=6,
        size=64,
        p_image=0.0,
        augment={"hflip_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
    )
    for i in range(6):
        it = {k: v[0] if isinstance(v, torch.Tensor | list) else v for k, v in SyntheticPairs.collate([ds[i]]).items()}
        img, pts, hr = it["source_hr"], it["source_landmarks"].numpy(), 128
        ident = ds.identity_style(int(it["identity"].split("-")[1]))
        if it["source_eye_ratio"].min() > 0.2:  # both eyes open: the iris centres show the iris colour
            for c in (lm.LEFT_IRIS[0], lm.RIGHT_IRIS[0]):
                x, y = (pts[c] * hr).astype(int)
                np.testing.assert_allclose(img[:, y, x].numpy() * 255, ident["iris"], atol=40)
        face_mask = it["source_masks"][0].bool()
        bg = torch.tensor(ident["background"], dtype=torch.float32)[:, None] / 255
        outside = img[:, ~face_mask]
        assert (outside - bg).abs().max() < 0.02  # nothing but background outside the face box
        assert (img[:, face_mask] - bg[:, :1]).abs().amax(0).float().mean() > 0.1  # the face is in the box


def test_datamodule_batches():
    dm = SyntheticDataModule(**data_settings("synthetic", size=32, batch_size=4, train_length=8, val_length=4))
    train, val = list(dm.train_dataloader()), list(dm.val_dataloader())
    assert len(train) == 2 and len(val) == 1
    for b in train + val:
        check_batch(b, 32)


@pytest.mark.parametrize("name", ["synthetic", "tiny", "shards"])
def test_data_configs_compose_and_instantiate(name, lp_data_synthetic_shards):
    with initialize_config_dir(config_dir=str(CONF / "data"), version_base=None):
        cfg = compose(config_name=name)
    overrides = (
        {}
        if name == "synthetic"
        else {
            "train_shards": str(lp_data_synthetic_shards[0].parent / "*.tar"),
            "val_shards": str(lp_data_synthetic_shards[0]),
            "num_workers": 0,
        }
    )
    dm = instantiate(cfg, **overrides)
    if name == "shards":
        assert dm.hparams.size == 256 and dm.train_cfg.augment.warp_rotation == 15.0
        return
    dm.setup("fit")
    check_batch(finalize_batch(next(iter(dm.train_dataloader()))), cfg.size)
    check_batch(finalize_batch(next(iter(dm.val_dataloader()))), cfg.size)

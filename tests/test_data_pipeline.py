"""The shard -> pair pipeline on shards made from the real faces in ../shared/data/faces (issue "Must show" 1)."""

from __future__ import annotations

import tarfile

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from train_helpers import data_settings

from lp_train.data import (
    LivePortraitDataModule,
    LoaderConfig,
    build_train_pipeline,
    build_val_pipeline,
    check_batch,
    finalize_batch,
)
from lp_train.data import shard_format as sf
from lp_train.data.augment import AugmentConfig

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")

S = 64


def _metas(shards) -> dict[str, sf.SampleMeta]:
    return {
        s["__key__"]: sf.SampleMeta.from_json(s["json"])
        for s in wds.WebDataset([str(p) for p in shards], shardshuffle=False)
    }


def _settings(**kw) -> dict:
    """conf/data/shards.yaml at test size: one pair per chunk, no worker processes, no pinning."""
    small = dict(size=S, num_workers=0, val_num_workers=0, pairs_per_sample=1, shuffle_buffer=8, pool_size=4)
    return data_settings("shards", **small, pin_memory=False, **kw)


def _cfg(shards, **kw) -> LoaderConfig:
    base = dict(size=S, batch_size=4, epoch_batches=6, shuffle_buffer=16, shuffle_initial=4, pool_size=4, p_image=0.2,
                max_gap=0, cross_identity_prob=0.0, pairs_per_sample=1, seed=0)  # fmt: skip
    return LoaderConfig([str(p) for p in shards], **{**base, **kw})


def test_pairs_have_the_contract_and_come_from_one_clip(lp_data_face_shards):
    metas = _metas(lp_data_face_shards)
    pipe = build_train_pipeline(_cfg(lp_data_face_shards, p_image=0.4, max_gap=2))
    batches = [finalize_batch(b) for b in pipe]
    assert len(batches) == 6
    kinds = set()
    for b in batches:
        check_batch(b, S)
        for key, is_image, same in zip(b["key"], b["is_image"].tolist(), b["same_identity"].tolist(), strict=True):
            (src, i), (drv, j) = (part.rsplit(":", 1) for part in key.split("|"))
            assert same and src == drv, key  # same clip
            assert is_image == (metas[src].kind == "image")
            if not is_image:
                assert i != j and abs(int(i) - int(j)) <= 2, key  # two different frames within max_gap
            kinds.add(is_image)
        assert not torch.equal(b["source_hr"], b["driving_hr"])
    assert kinds == {True, False}
    stats = pipe.counters.as_dict()
    assert stats["pairs"] >= 24 and stats["bad_images"] == stats["bad_meta"] == stats["tar_errors"] == 0


def test_image_pairs_are_warps_of_the_same_image(lp_data_face_shards):
    b = finalize_batch(
        next(iter(build_train_pipeline(_cfg(lp_data_face_shards, p_image=1.0, batch_size=6, epoch_batches=1))))
    )
    assert b["is_image"].all()
    hr = 2 * S
    for i in range(6):
        src, drv = (b[k][i].permute(1, 2, 0).numpy() for k in ("source_hr", "driving_hr"))
        h, _ = cv2.findHomography(
            b["source_landmarks"][i].numpy() * hr - 0.5, b["driving_landmarks"][i].numpy() * hr - 0.5
        )
        warped = cv2.warpPerspective(src, h, (hr, hr), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        inner = slice(hr // 8, -hr // 8)
        err = np.abs(warped[inner, inner] - drv[inner, inner]).mean()
        assert err < 0.03, f"pair {i}: driving is not the source warped by the landmark homography ({err:.3f})"
        assert np.abs(src[inner, inner] - drv[inner, inner]).mean() > err  # and it did move


def _dot_shard(lp_data_face_shards, tmp_path, index: int) -> str:
    """One image sample whose frame has a green dot drawn at landmark ``index``."""
    sample = next(s for s in wds.WebDataset(str(lp_data_face_shards[-1]), shardshuffle=False))
    meta = sf.SampleMeta.from_json(sample["json"])
    lmk = sf.decode_npy(sample["landmarks.npy"])
    img = np.array(cv2.imdecode(np.frombuffer(sample["0000.jpg"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    centre = np.round((lmk[0, index] * img.shape[0] - 0.5) * 16).astype(int)
    cv2.circle(img, tuple(int(c) for c in centre), 3 * 16, (0, 255, 0), -1, cv2.LINE_AA, shift=4)
    path = tmp_path / "dot-000000.tar"
    with wds.TarWriter(str(path)) as w:
        w.write(sf.encode_sample(meta, [img], lmk, quality=98))
    return str(path)


def _find_green(img: torch.Tensor) -> np.ndarray:
    """Continuous (x, y) pixel position of the green dot: centroid of the greenest pixels."""
    r, g, b = img.numpy()
    score = g - np.maximum(r, b)
    ys, xs = np.nonzero(score > 0.6 * score.max())
    w = score[ys, xs]
    return np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5])


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_landmarks_follow_warp_flip_and_jitter(lp_data_face_shards, tmp_path, flip):
    """A dot drawn at landmark 33 (right-eye outer corner) is found where the batch's landmarks say: at 33 without
    a flip, at 263 (the left-eye outer corner, after the index remap) with one."""
    shard = _dot_shard(lp_data_face_shards, tmp_path, 33)
    aug = AugmentConfig(hflip_prob=flip, warp_rotation=25.0, warp_translate=0.1, warp_perspective=0.06)
    pipe = build_train_pipeline(_cfg([shard], p_image=1.0, batch_size=8, epoch_batches=2, augment=aug))
    idx = 263 if flip else 33
    for b in map(finalize_batch, pipe):
        for i in range(8):
            for side in ("source", "driving"):
                found = _find_green(b[f"{side}_hr"][i])
                expected = b[f"{side}_landmarks"][i, idx].numpy() * 2 * S
                assert np.abs(found - expected).max() < 1.2, (side, found, expected)
            # after the index remap the subject's left eye (263) is on the image right, flipped or not
            assert b["driving_landmarks"][i, 263, 0] > b["driving_landmarks"][i, 33, 0]


def test_cross_identity_pairs(lp_data_face_shards):
    metas = _metas(lp_data_face_shards)
    pipe = build_train_pipeline(_cfg(lp_data_face_shards, p_image=0.0, cross_identity_prob=1.0, batch_size=8))
    b = finalize_batch(next(iter(pipe)))
    check_batch(b, S)
    assert not b["same_identity"].any() and not b["is_image"].any()
    for key, ident in zip(b["key"], b["identity"], strict=True):
        src, drv = (part.rsplit(":", 1)[0] for part in key.split("|"))
        assert metas[src].identity == ident != metas[drv].identity


def _write_bad_shards(good_shards, tmp_path) -> list[str]:
    good = list(wds.WebDataset(str(good_shards[-1]), shardshuffle=False))
    image = next(s for s in good if sf.SampleMeta.from_json(s["json"]).kind == "image")
    bad_jpeg = {**image, "__key__": "badjpeg_000_000", "0000.jpg": image["0000.jpg"][:200] + b"\x00garbage" * 40}
    bad_json = {**image, "__key__": "badjson_000_000", "json": b'{"key": "x", "kind": '}
    no_lmk = {k: v for k, v in image.items() if k != "landmarks.npy"} | {"__key__": "nolmk_000_000"}
    path = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(path)) as w:
        for s in (image, bad_jpeg, bad_json, no_lmk, {**image, "__key__": "okcopy_000_000"}):
            w.write({k: v for k, v in s.items() if k != "__url__" and k != "__local_path__"})
    truncated = tmp_path / "bad-000001.tar"
    truncated.write_bytes(path.read_bytes()[:1500])  # a shard cut in the middle of its first member
    return [str(path), str(truncated)]


def test_bad_samples_are_skipped_and_counted(lp_data_face_shards, tmp_path):
    shards = _write_bad_shards(lp_data_face_shards, tmp_path)
    pipe = build_val_pipeline(_cfg(shards, batch_size=2))
    keys = [k.split(":")[0] for b in pipe for k in b["key"]]
    assert len(keys) == 2 and keys[1] == "okcopy_000_000"
    stats = pipe.counters.as_dict()
    assert stats["bad_images"] == 1 and stats["bad_meta"] == 1 and stats["incomplete_samples"] >= 1
    assert stats["tar_errors"] >= 1 and stats["pairs"] == 2
    with tarfile.open(shards[0]) as tf:  # the bad members really are in the shard
        assert "badjpeg_000_000.0000.jpg" in tf.getnames()


def test_missing_shards_fail_at_setup(tmp_path, lp_data_synthetic_shards):
    dm = LivePortraitDataModule(**_settings(train_shards=str(tmp_path / "nope-{000000..000003}.tar")))
    with pytest.raises(FileNotFoundError, match="nope-000000.tar"):
        dm.setup("fit")
    dm = LivePortraitDataModule(
        **_settings(train_shards=[str(p) for p in lp_data_synthetic_shards] + [str(tmp_path / "x*.tar")])
    )
    with pytest.raises(FileNotFoundError, match="matches no file"):
        dm.setup("fit")


def test_datamodule_on_synthetic_shards(lp_data_synthetic_shards):
    """The same loader with no real data at all (``conf/data/tiny.yaml`` uses such shards in the demo)."""
    shards = "::".join(str(p) for p in lp_data_synthetic_shards)
    dm = LivePortraitDataModule(
        **_settings(train_shards=shards, val_shards=shards, batch_size=3, train_batches_per_epoch=3)
    )
    dm.setup("fit")
    train, val = list(dm.train_dataloader()), list(dm.val_dataloader())
    assert train[0]["source_u8"].dtype == torch.uint8  # compact in the loader, finalised after transfer
    train, val = ([dm.on_after_batch_transfer(b, 0) for b in bs] for bs in (train, val))
    assert len(train) == 3 and sum(len(b["key"]) for b in val) == 10  # 6 clips + 4 images, one pair each
    for b in train + val:
        check_batch(b, S)
    stats = dm.data_stats()
    assert stats["data/train_pairs"] >= 9 and stats["data/val_pairs"] == 10 and stats["data/val_bad_images"] == 0


class _Module(__import__("lightning").LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer, self.seen = torch.nn.Linear(1, 1), []

    def training_step(self, batch, batch_idx):
        check_batch(batch, S)  # finalised by the datamodule's on_after_batch_transfer
        self.seen.append(batch["key"])
        return self.layer(batch["driving_hr"].mean().reshape(1, 1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_gets_contract_batches_and_logs_data_stats(lp_data_synthetic_shards, tmp_path):
    import lightning as L

    from lp_train.data import LogDataStats

    shards = [str(p) for p in lp_data_synthetic_shards]
    dm = LivePortraitDataModule(**_settings(train_shards=shards, batch_size=2, train_batches_per_epoch=3))
    module = _Module()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[LogDataStats(every_n_steps=1)],
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6 and module.seen[:3] != module.seen[3:]  # a new stream every epoch
    assert trainer.callback_metrics["data/train_pairs"] >= 10 and trainer.callback_metrics["data/train_bad_images"] == 0

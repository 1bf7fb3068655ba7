"""Training data of lp-train: WebDataset shards (``lp_train.data.shard_format``) -> (source, driving) pair batches
(paper Sec. 3.1 mixed image-video training; the regions, ratios and pose labels of Sec. 3.2-3.3).

Batch contract: what a LightningModule receives from ``LivePortraitDataModule`` (its loader workers ship compact
uint8 batches that ``finalize_batch`` completes on the device in ``on_after_batch_transfer``) and from
``SyntheticDataModule`` / ``SyntheticPairs.collate``; ``check_batch`` asserts it. Raw pipeline batches
(``build_train_pipeline`` / ``build_val_pipeline``) become it through ``finalize_batch``.
S = network input side (256 official, 64 tiny), targets are 2S; B = batch size::

    source, driving                   (B, 3, S, S)    float32 in [0, 1]   network inputs (2x2 area downsample)
    source_hr, driving_hr             (B, 3, 2S, 2S)  float32 in [0, 1]   targets (driving_hr: reconstruction target)
    source_landmarks, driving_landmarks (B, 478, 2)   float32, normalised [0, 1] crop coords after augmentation
                                                      (mediapipe face-mesh indices, ``lp_train.face.landmarks``)
    source_boxes, driving_boxes       (B, 3, 4)       float32, normalised (x0, y0, x1, y1) of [face, eyes, lips]
    source_masks, driving_masks       (B, 3, 2S, 2S)  float32 in {0, 1}, the boxes rasterised at the target size
    source_eye_ratio, driving_eye_ratio (B, 2)        float32, eye-open ratio [left, right] (subject's sides)
    source_lip_ratio, driving_lip_ratio (B, 1)        float32, lip-open ratio
    source_pose, driving_pose         (B, 3)          float32, pitch/yaw/roll degrees from the landmarks
                                                      (pseudo labels for L_H; LivePortrait's angle convention)
    is_image                          (B,)            bool, the pair is an image and a warp of itself
    same_identity                     (B,)            bool, False for stage-2 cross-identity pairs
    identity, key                     list[str]       identity of the source; "{source key}|{driving key}"
"""

from lp_train.data.augment import AugmentConfig
from lp_train.data.batch import BATCH_KEYS, check_batch, collate_compact, collate_pairs, compact_pair, finalize_batch
from lp_train.data.datamodule import LivePortraitDataModule, LogDataStats, SyntheticDataModule
from lp_train.data.pipeline import LoaderConfig, build_train_pipeline, build_val_pipeline
from lp_train.data.synthetic import SyntheticPairs

__all__ = [
    "BATCH_KEYS",
    "AugmentConfig",
    "LivePortraitDataModule",
    "LoaderConfig",
    "LogDataStats",
    "SyntheticDataModule",
    "SyntheticPairs",
    "build_train_pipeline",
    "build_val_pipeline",
    "check_batch",
    "collate_compact",
    "collate_pairs",
    "compact_pair",
    "finalize_batch",
]

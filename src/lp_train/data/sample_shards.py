"""Small shards in the real format (``lp_train.data.shard_format``) for tests, benchmarks and demos of the loader
(paper Sec. 3.1 training data, in miniature).

- ``face_folder_samples``: clips and portraits of a faces folder (``videos/``, ``images/``) -> LivePortrait crops
  (``lp_train.face.crop``; one crop per clip, from its first frame) with mediapipe face-mesh landmarks
  (``lp_train.face.detect``) in every frame.
- ``synthetic_samples``: procedurally drawn faces (``lp_train.data.synthetic``), needing no files at all.
- ``write_shards``: samples -> ``{prefix}-{index:06d}.tar`` via ``webdataset.TarWriter`` (atomic per shard).

This is not the curation pipeline (``data_prep``: probing, clip splitting, tracking, quality filters); it is the
shortest path from a handful of faces to loadable shards. CLI: ``python -m lp_train.data.sample_shards OUT
[--faces DIR] [--size 512] [--frames 8]``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds

from lp_train.data import shard_format as sf
from lp_train.data.synthetic import SyntheticPairs, draw_face, face_points
from lp_train.face.crop import crop_affine, crop_params_from_landmarks, warp_crop
from lp_train.face.detect import FaceDetector

log = logging.getLogger(__name__)
Sample = tuple[sf.SampleMeta, list[np.ndarray], np.ndarray]  # meta, RGB frames (size², uint8), landmarks (T, 478, 2)


def sample_meta(
    path: str, kind: str, identity: str, clip: int, frames: int, fps: float, orig, affine, conf, size
) -> sf.SampleMeta:
    key = sf.sample_key(sf.source_id(path), clip, 0)
    return sf.SampleMeta(
        key=key,
        kind=kind,
        source_path=path,
        identity=identity,
        dataset="sample",
        split="train",
        clip_index=clip,
        chunk_index=0,
        num_frames=frames,
        fps=fps,
        frame_indices=list(range(frames)),
        orig_size=list(orig),
        crop_affines=[np.asarray(affine).tolist()] * frames,
        face_confidence=list(conf),
        face_size=float(size),
        sharpness=0.0,
    )


def _read_video(path: Path, max_frames: int, stride: int) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps, frames, i = cap.get(cv2.CAP_PROP_FPS) or 25.0, [], 0
    while len(frames) < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % stride == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return frames, fps / stride


def crop_clip(det, frames: list[np.ndarray], size: int):
    """One LivePortrait crop for the clip (from the first frame with a face), landmarks tracked in the crop."""
    first = next((f for f in (det.detect(fr) for fr in frames[:5]) if f and f[0].landmarks is not None), None)
    if first is None:
        return None
    affine = crop_affine(crop_params_from_landmarks(first[0].landmarks), size)
    det.reset()
    crops, lmks, conf = [], [], []
    for fr in frames:
        crop = warp_crop(fr, affine, size)
        faces = det.detect(crop)
        if faces and faces[0].landmarks is not None:
            crops.append(crop)
            lmks.append(faces[0].landmarks / size)  # mediapipe pixels (x * width) -> normalised crop coordinates
            conf.append(float(faces[0].score))
    return (crops, np.stack(lmks).astype(np.float32), conf, affine, first[0].size) if crops else None


def face_folder_samples(
    faces_dir: str | Path, size: int = 512, frames_per_clip: int = 8, stride: int = 3, max_items: int | None = None
) -> Iterator[Sample]:
    """Samples from ``faces_dir/videos/*.mp4`` (one chunk of ``frames_per_clip`` frames, every ``stride``-th) and
    ``faces_dir/images/*.jpg`` (one-frame image samples); identity = file stem. Files without a face are skipped.
    """
    faces_dir = Path(faces_dir)
    files = sorted((faces_dir / "videos").glob("*.mp4")) + sorted((faces_dir / "images").glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no videos/*.mp4 or images/*.jpg under {faces_dir}")
    for n, path in enumerate(files[:max_items]):
        video = path.suffix == ".mp4"
        if video:
            frames, fps = _read_video(path, frames_per_clip, stride)
        else:
            frames, fps = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)], 0.0
        with FaceDetector(max_faces=1, video=video) as det:
            out = crop_clip(det, frames, size)
        if out is None:
            log.warning("no face in %s, skipped", path)
            continue
        crops, lmks, conf, affine, face_size = out
        orig = frames[0].shape[1::-1]
        meta = sample_meta(
            str(path), "video" if video else "image", path.stem, n, len(crops), fps, orig, affine, conf, face_size
        )
        yield meta, crops, lmks


def synthetic_samples(
    num_identities: int = 6, frames_per_clip: int = 8, num_images: int = 4, size: int = 128, seed: int = 0
) -> Iterator[Sample]:
    """Synthetic clips (one identity each, random pose/expression per frame) and one-frame image samples."""
    gen = SyntheticPairs(size=size // 2, num_identities=num_identities + num_images, seed=seed)
    for n in range(num_identities + num_images):
        rng, ident = np.random.default_rng([seed, n]), gen.identity_style(n)
        count = frames_per_clip if n < num_identities else 1
        lmks = np.stack([face_points(ident, gen.random_frame(rng)) for _ in range(count)])
        frames = [(draw_face(ident, p, size) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for p in lmks]
        path, kind = f"synthetic://{seed}/{n}", "video" if count > 1 else "image"
        yield (
            sample_meta(
                path, kind, f"synthetic-{n}", n, count, 25.0, (size, size), np.eye(3)[:2], [1.0] * count, size / 2
            ),
            frames,
            lmks,
        )


def write_shards(
    samples: Iterable[Sample], out_dir: str | Path, prefix: str = "train", per_shard: int = 4
) -> list[Path]:
    """Write samples into ``out_dir/{prefix}-{index:06d}.tar`` (``per_shard`` samples each, each shard written to a
    temporary name and renamed when complete). Returns the shard paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, writer, tmp = [], None, None
    for i, (meta, frames, lmks) in enumerate(samples):
        if i % per_shard == 0:
            if writer is not None:
                writer.close()
                os.replace(tmp, paths[-1])
            paths.append(out_dir / sf.SHARD_PATTERN.format(prefix=prefix, index=len(paths)))
            tmp = paths[-1].with_suffix(".tar.tmp")
            writer = wds.TarWriter(str(tmp))
        writer.write(sf.encode_sample(meta, frames, lmks))
    if writer is not None:
        writer.close()
        os.replace(tmp, paths[-1])
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--faces", help="folder with videos/ and images/ (default: synthetic faces)")
    ap.add_argument("--size", type=int, default=sf.CROP_SIZE, help="crop side in pixels")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--per-shard", type=int, default=4, help="samples per shard")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    samples = (
        face_folder_samples(args.faces, args.size, args.frames)
        if args.faces
        else synthetic_samples(frames_per_clip=args.frames, size=args.size)
    )
    paths = write_shards(samples, args.out, per_shard=args.per_shard)
    print(f"wrote {len(paths)} shards to {args.out}")


if __name__ == "__main__":
    main()

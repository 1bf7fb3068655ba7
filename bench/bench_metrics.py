"""Evaluation metrics throughput on CPU: frames/s of each metric and of the full set at 256² (issue 5).

Each metric scores (generated, driving) pairs of real 256² face frames (``../shared/data/faces`` when present, else
skimage's astronaut with shifted copies) in batches of 8. Network weights are ``random`` (speed does not depend on
the weight values); LPIPS = alex, FID = pytorch-fid InceptionV3 pool3 (2048-d), AED/APD/MAE = mediapipe face mesh
on both frames of a pair (shared by the three metrics), CSIM = dlib ResNet on both frames. "full set" = all of
them on the same pairs, as one evaluation step of both protocols computes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces/videos"


def _frames(n: int, size: int = 256) -> torch.Tensor:
    import cv2

    out = []
    for path in sorted(FACES.glob("d*.mp4")) if FACES.is_dir() else []:
        cap = cv2.VideoCapture(str(path))
        while len(out) < n:
            ok, f = cap.read()
            if not ok:
                break
            out.append(cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA))
        if len(out) >= n:
            break
    if len(out) < n:  # no shared data: a real portrait bundled with scikit-image, shifted
        from skimage.data import astronaut

        base = cv2.resize(astronaut(), (size, size), interpolation=cv2.INTER_AREA)
        out += [np.roll(base, i, axis=1) for i in range(n - len(out))]
    return torch.from_numpy(np.stack(out[:n])).permute(0, 3, 1, 2).float() / 255


def _time(fn, gen: torch.Tensor, drv: torch.Tensor, batch: int) -> float:
    fn(gen[:batch], drv[:batch])  # warm-up (graph / model initialisation)
    t0 = time.perf_counter()
    for i in range(0, len(gen), batch):
        fn(gen[i : i + batch], drv[i : i + batch])
    return len(gen) / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[dict]:
    from lp_train.metrics import CSIM, FID, L1, LPIPS, PSNR, SSIM, ExpressionDistance, GazeAngularError, PoseDistance
    from lp_train.metrics.face_params import MediapipeFaceParams
    from lp_train.metrics.identity import DlibFaceEmbedder

    torch.set_grad_enabled(False)
    n, batch = (16, 8) if quick else (64, 8)
    drv = _frames(n + 1)
    gen, drv = drv[1:], drv[:-1]  # consecutive frames: realistic, non-identical pairs
    face, ident = MediapipeFaceParams(), DlibFaceEmbedder()
    psnr, ssim, l1, lpips, fid = PSNR(), SSIM(), L1(), LPIPS(weights="random"), FID(weights="random")
    aed, apd, mae, csim = ExpressionDistance(face), PoseDistance(face), GazeAngularError(face), CSIM(ident)

    def face_metrics(g, d):
        pg, pd = face(g), face(d)
        return [m.score(pg, pd) for m in (aed, apd, mae)]

    def full(g, d):
        for m in (psnr, ssim, l1, lpips):
            m.score(g, d)
        fid.features(g)
        face_metrics(g, d)
        csim.score(ident(g), ident(d))

    cases = {
        "psnr": psnr.score, "ssim": ssim.score, "l1": l1.score, "lpips (alex)": lpips.score,
        "fid features (inception pool3)": lambda g, d: fid.features(g),
        "aed+apd+mae (mediapipe, 2 frames)": face_metrics,
        "csim (dlib, 2 frames)": lambda g, d: csim.score(ident(g), ident(d)),
        "full set": full,
    }  # fmt: skip
    rows = []
    for name, fn in cases.items():
        fps = _time(fn, gen, drv, batch)
        rows.append({"metric": name, "value": round(fps, 2), "unit": "frames/s", "frames": n, "batch": batch,
                     "size": 256, "threads": torch.get_num_threads()})  # fmt: skip
    return rows

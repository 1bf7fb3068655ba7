"""Corpus recipes: a public face-video corpus's released metadata -> an ``lp-prep`` manifest.

``lp-prep recipe NAME --out manifest.csv ...`` (``lp-prep recipe NAME --help`` says where that corpus's videos come
from; lp-train never downloads). Each recipe reads the corpus's own metadata files in their released layout, keeps
its official split where it has one, writes time ranges for clips that are spans of longer videos, and lists every
clip whose video is not on disk in ``<manifest stem>.missing.csv`` (counted in the printed summary; not an error).
The manifest is then checked for identities in both train and test (``data_prep.splits``).

The corpora LivePortrait (Guo et al. 2024, Sec. 4.1-4.2) trains and evaluates on: VoxCeleb1/2, MEAD, RAVDESS, AAHQ
(training), TalkingHead-1KH and VFHQ (test sets), FFHQ (cross-reenactment sources); plus HDTF and CelebV-HQ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from data_prep.recipes import celebvhq, hdtf, images, mead, ravdess, talkinghead1kh, vfhq, voxceleb
from data_prep.recipes.common import Result


@dataclass(frozen=True)
class Recipe:
    module: ModuleType  # its docstring is the help; add_arguments(parser) its options
    convert: Callable[..., Result]


RECIPES: dict[str, Recipe] = {
    "voxceleb1": Recipe(voxceleb, voxceleb.convert_vox1),
    "voxceleb2": Recipe(voxceleb, voxceleb.convert_vox2),
    "hdtf": Recipe(hdtf, hdtf.convert),
    "celebvhq": Recipe(celebvhq, celebvhq.convert),
    "talkinghead1kh": Recipe(talkinghead1kh, talkinghead1kh.convert),
    "mead": Recipe(mead, mead.convert),
    "ravdess": Recipe(ravdess, ravdess.convert),
    "vfhq": Recipe(vfhq, vfhq.convert),
    "ffhq": Recipe(images, images.convert_ffhq),
    "aahq": Recipe(images, images.convert_aahq),
}

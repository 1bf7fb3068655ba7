"""Corpus recipes (``lp-prep recipe NAME``): small metadata files written in each corpus's released format, videos
cut with ffmpeg from the shared real faces -> the expected manifest rows, official splits, time ranges, and the
list of what is missing; the identity-leak check fails on a leaking build and passes on the official split."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from data_prep_fixtures import FACES, make_cfg

from data_prep.cli import execute, main
from data_prep.inputs import discover
from data_prep.recipes.cli import check_splits_main, recipe_main
from data_prep.splits import identity_leaks


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """``cut(dest)``: a 1.2 s, 96² clip cut by ffmpeg from a real talking-head clip (cut once, copied after)."""
    src = FACES / "videos" / "d0.mp4"
    if not src.is_file():
        pytest.skip(f"real test faces not found at {FACES} (../shared/data/faces)")
    master = tmp_path_factory.mktemp("cut") / "clip.mp4"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(src), "-t", "1.2", "-vf", "scale=96:96", "-an",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(master)]  # fmt: skip
    subprocess.run(cmd, check=True)

    def make(dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(master, dest)
        return dest

    return make


def run_recipe(name: str, out: Path, *args: str) -> tuple[int, dict, list[dict], list[dict]]:
    """(exit code, printed summary, manifest rows, missing rows) of ``lp-prep recipe NAME``."""
    code = recipe_main([name, "--out", str(out), *map(str, args)])
    rows = list(csv.DictReader(out.open()))
    miss = out.with_name(out.stem + ".missing.csv")
    missing = list(csv.DictReader(miss.open())) if miss.exists() else []
    summary = {"rows": len(rows), "missing": len(missing)}
    return code, summary, rows, missing


def _track(identity: str, ref: str, frames: range) -> str:
    """A VoxCeleb txt track file as released (tab-separated header, FRAME table at 25 fps)."""
    head = (f"Identity  : \t{identity}\nReference : \t{ref}\nOffset    : \t1\nFV Conf   : \t16.140\t(1)\n"
            "ASD Conf  : \t5.142\n\nFRAME \tX \tY \tW \tH \n")  # fmt: skip
    return head + "".join(f"{f:06d} \t0.123 \t0.136 \t0.422 \t0.749 \t\n" for f in frames)


def test_voxceleb2_released_clips_full_videos_and_missing(tmp_path, cut):
    txt, videos = tmp_path / "vox2_dev_txt" / "txt", tmp_path / "videos"
    tracks = {
        ("id00017", "_mjZ87sK6cA", "00001"): range(245, 380),
        ("id00017", "_mjZ87sK6cA", "00002"): range(500, 561),
        ("id00061", "0G9G9oyFHI8", "00001"): range(100, 200),
        ("id00061", "2j8I_WjHu3Q", "00003"): range(0, 90),
    }
    for (i, ref, clip), frames in tracks.items():
        (txt / i / ref).mkdir(parents=True, exist_ok=True)
        (txt / i / ref / f"{clip}.txt").write_text(_track(i, ref, frames))
    cut(videos / "id00017" / "_mjZ87sK6cA" / "00001.mp4")  # the released clip (vox2_dev_mp4 layout)
    cut(videos / "0G9G9oyFHI8.mkv")  # a full YouTube download
    code, s, rows, missing = run_recipe("voxceleb2", tmp_path / "vox2.csv", "--txt", txt, "--videos", videos)
    assert code == 0 and s == {"rows": 2, "missing": 2}
    by_clip = {r["clip_id"]: r for r in rows}
    released = by_clip["id00017/_mjZ87sK6cA/00001"]
    assert released["path"].endswith("id00017/_mjZ87sK6cA/00001.mp4") and released["start"] == released["end"] == ""
    assert released["identity"] == "id00017" and released["split"] == "train" and released["dataset"] == "voxceleb2"
    full = by_clip["id00061/0G9G9oyFHI8/00001"]
    assert (full["start"], full["end"], full["unit"]) == ("4", "8", "s")  # frames 100..199 at 25 fps -> [4 s, 8 s)
    assert {m["clip_id"] for m in missing} == {"id00017/_mjZ87sK6cA/00002", "id00061/2j8I_WjHu3Q/00003"}
    assert "2j8I_WjHu3Q.{mp4" in next(m["expected"] for m in missing if m["clip_id"].endswith("00003"))
    # the manifest is a valid lp-prep input: ranges parsed, keys distinct
    items = discover(manifest=str(tmp_path / "vox2.csv"))
    assert [(it.start, it.end) for it in items if it.range_tag] == [(4.0, 8.0)]
    # the test archive is told apart by its folder name (official dev/test identities)
    test_txt = tmp_path / "vox2_test_txt" / "txt" / "id00812" / "A5zKGBBU_Ts"
    test_txt.mkdir(parents=True)
    (test_txt / "00001.txt").write_text(_track("id00812", "A5zKGBBU_Ts", range(10, 60)))
    cut(videos / "A5zKGBBU_Ts.mp4")
    _, _, rows, _ = run_recipe("voxceleb2", tmp_path / "t.csv", "--txt", test_txt.parents[1], "--videos", videos)
    assert [(r["identity"], r["split"], r["start"], r["end"]) for r in rows] == [("id00812", "test", "0.4", "2.4")]


def test_voxceleb1_official_test_identities(tmp_path, cut):
    txt, videos = tmp_path / "txt", tmp_path / "yt"
    for i, ref in (("id10001", "1zcIwhmdeo4"), ("id10270", "5r0dWxy17C8")):
        (txt / i / ref).mkdir(parents=True)
        (txt / i / ref / "00001.txt").write_text(_track(i, ref, range(25, 75)))
        cut(videos / f"{ref}.mp4")
    _, s, rows, _ = run_recipe("voxceleb1", tmp_path / "vox1.csv", "--txt", txt, "--videos", videos)
    assert {(r["identity"], r["split"]) for r in rows} == {("id10001", "train"), ("id10270", "test")}
    assert all((r["start"], r["end"], r["dataset"]) == ("1", "3", "voxceleb1") for r in rows)


def test_hdtf_intervals_and_split_clips(tmp_path, cut):
    meta, videos = tmp_path / "HDTF_dataset", tmp_path / "hdtf"
    meta.mkdir()
    (meta / "WRA_video_url.txt").write_text(
        "AdamKinzinger2 https://www.youtube.com/watch?v=aaaaaaaaaaa\nAllenWest https://www.youtube.com/watch?v=bbbbbbbbbbb\n"
    )
    (meta / "WRA_annotion_time.txt").write_text(
        "AdamKinzinger2.mp4 00:40-01:20 02:00-02:40 03:30-03:50 \nAllenWest.mp4 00:20-04:55\n"
    )
    (meta / "RD_annotion_time.txt").write_text("Radio11.mp4 00:30-01:00 01:30-02:30\n")
    cut(videos / "AdamKinzinger2.mp4")  # full download: 3 intervals as ranges
    cut(videos / "Radio11_1.mp4")  # README step 2 output: clip 1 only
    _, s, rows, missing = run_recipe("hdtf", tmp_path / "hdtf.csv", "--meta", meta, "--videos", videos)
    got = [(r["clip_id"], r["identity"], r["start"], r["end"]) for r in rows]
    assert got == [("Radio11_1", "Radio11", "", ""), ("AdamKinzinger2_0", "AdamKinzinger", "40", "80"),
                   ("AdamKinzinger2_1", "AdamKinzinger", "120", "160"),
                   ("AdamKinzinger2_2", "AdamKinzinger", "210", "230")]  # fmt: skip
    assert sorted(m["clip_id"] for m in missing) == ["AllenWest_0", "Radio11_0"]
    assert json.loads(rows[0]["attributes"]) == {"group": "RD"}


def test_celebvhq_json_times_and_attributes(tmp_path, cut):
    info = {
        "meta_info": {"appearance_mapping": ["blurry", "male", "young"], "action_mapping": ["blink", "talk"]},
        "clips": {
            "M2Ohb0FAaJU_1": {"ytb_id": "M2Ohb0FAaJU", "duration": {"start_sec": 81.62, "end_sec": 86.17},
                              "bbox": {"top": 0.0, "bottom": 0.8815, "left": 0.1964, "right": 0.6922},
                              "attributes": {"appearance": [0, 1, 1], "action": [0, 1],
                                             "emotion": {"sep_flag": False, "labels": "neutral"}},
                              "version": "v0.1"},
            "_0tf2n3rlJU_0": {"ytb_id": "_0tf2n3rlJU", "duration": {"start_sec": 52.72, "end_sec": 56.1},
                              "bbox": {"top": 0.0, "bottom": 0.8407, "left": 0.5271, "right": 1.0},
                              "attributes": {"appearance": [1, 0, 0], "action": [1, 1],
                                             "emotion": {"sep_flag": True, "labels": [["happy", 0.0, 1.5]]}},
                              "version": "v0.1"},
            "zzzMissing_3": {"ytb_id": "zzzMissing", "duration": {"start_sec": 1.0, "end_sec": 4.0},
                             "bbox": {"top": 0, "bottom": 1, "left": 0, "right": 1},
                             "attributes": {"appearance": [0, 0, 0], "action": [0, 0],
                                            "emotion": {"sep_flag": False, "labels": "sad"}}, "version": "v0.1"},
        },
    }  # fmt: skip
    (tmp_path / "celebvhq_info.json").write_text(json.dumps(info))
    cut(tmp_path / "raw" / "M2Ohb0FAaJU.mp4")
    cut(tmp_path / "raw" / "_0tf2n3rlJU_0.mp4")  # a processed clip
    _, s, rows, missing = run_recipe("celebvhq", tmp_path / "c.csv", "--json", tmp_path / "celebvhq_info.json",
                                     "--videos", tmp_path / "raw")  # fmt: skip
    by = {r["clip_id"]: r for r in rows}
    assert (by["M2Ohb0FAaJU_1"]["start"], by["M2Ohb0FAaJU_1"]["end"]) == ("81.62", "86.17")
    assert json.loads(by["M2Ohb0FAaJU_1"]["attributes"]) == {"action": ["talk"], "appearance": ["male", "young"],
                                                             "emotion": "neutral"}  # fmt: skip
    assert by["_0tf2n3rlJU_0"]["start"] == "" and by["_0tf2n3rlJU_0"]["identity"] == "_0tf2n3rlJU"
    assert [m["clip_id"] for m in missing] == ["zzzMissing_3"]


TUBES_TRAIN = "--Y9imYnfBw_0000,1080,1920,0,21,781,204,1181,604\n--Y9imYnfBw_0001,1080,1920,5,28,720,180,1160,620\n"
TUBES_VAL = "0ZfSOArZaP8_0003,1080,1920,12,29,810,170,1290,650\nzzMissingVid_0000,1080,1920,0,99,1,2,3,4\n"


def th1kh_tree(root: Path, cut) -> Path:
    """TalkingHead-1KH as its scripts leave it: data_list/, train/1min_clips, val/cropped_clips."""
    (root / "data_list").mkdir(parents=True)
    (root / "data_list" / "train_video_tubes.txt").write_text(TUBES_TRAIN)
    (root / "data_list" / "val_video_tubes.txt").write_text(TUBES_VAL)
    cut(root / "train" / "1min_clips" / "--Y9imYnfBw_0000.mp4")
    cut(root / "train" / "1min_clips" / "--Y9imYnfBw_0001.mp4")
    cut(root / "val" / "cropped_clips" / "0ZfSOArZaP8_0003_S12_E29_L810_T170_R1290_B650.mp4")
    return root


def test_talkinghead1kh_tubes_official_split(tmp_path, cut):
    root = th1kh_tree(tmp_path / "th1kh", cut)
    code, s, rows, missing = run_recipe("talkinghead1kh", tmp_path / "th.csv", "--data-list", root / "data_list",
                                        "--root", root)  # fmt: skip
    assert code == 0
    got = [(r["clip_id"], r["identity"], r["split"], r["start"], r["end"], r["unit"]) for r in rows]
    assert got == [
        ("--Y9imYnfBw_0000_S0_E21_L781_T204_R1181_B604", "--Y9imYnfBw", "train", "0", "22", "frames"),
        ("--Y9imYnfBw_0001_S5_E28_L720_T180_R1160_B620", "--Y9imYnfBw", "train", "5", "29", "frames"),
        ("0ZfSOArZaP8_0003_S12_E29_L810_T170_R1290_B650", "0ZfSOArZaP8", "test", "", "", ""),
    ]
    assert [m["clip_id"] for m in missing] == ["zzMissingVid_0000_S0_E99_L1_T2_R3_B4"]
    assert check_splits_main([str(tmp_path / "th.csv")]) == 0  # the official split is identity-disjoint


def test_mead_and_ravdess_labels_from_file_names(tmp_path, cut):
    mead = tmp_path / "MEAD"
    cut(mead / "M003" / "video" / "front" / "angry" / "level_3" / "001.mp4")
    cut(mead / "W009" / "video" / "left_30" / "happy" / "level_1" / "014.mp4")
    _, _, rows, _ = run_recipe("mead", tmp_path / "mead.csv", "--root", mead)
    assert [(r["identity"], json.loads(r["attributes"])) for r in rows] == [
        ("M003", {"emotion": "angry", "level": 3, "view": "front"}),
        ("W009", {"emotion": "happy", "level": 1, "view": "left_30"}),
    ]
    _, _, rows, _ = run_recipe("mead", tmp_path / "front.csv", "--root", mead, "--views", "front")
    assert [r["identity"] for r in rows] == ["M003"]
    rav = tmp_path / "ravdess"
    for name in ("01-01-05-02-01-02-07", "02-01-05-02-01-02-07", "02-02-08-01-02-01-12"):
        actor = f"Actor_{name[-2:]}"
        cut(rav / actor / f"{name}.mp4")
    _, _, rows, _ = run_recipe("ravdess", tmp_path / "rav.csv", "--root", rav)
    assert [(r["clip_id"], r["identity"], json.loads(r["attributes"])["emotion"]) for r in rows] == [
        ("02-01-05-02-01-02-07", "Actor_07", "angry"), ("02-02-08-01-02-01-12", "Actor_12", "surprised")]  # fmt: skip
    assert json.loads(rows[1]["attributes"])["channel"] == "song"


def test_vfhq_meta_files_and_test_folder(tmp_path, cut):
    meta = tmp_path / "meta_info"
    header = "Video ID: {vid}\nH: 1080\nW: 1920\nFPS: 25.0\nPID: 0\nCLIP: 3\nCROP: 716 88 1184 556\n\n"
    table = "FRAME INDEX X0 Y0 X1 Y1 [Landmarks (5 Points)]\n"
    table += "000201 720 90 1180 550 850 300 1000 300 930 380 870 460 990 460\n"
    for split, vid, span in (("train", "0Bo8W5sQxXw", "F200-300"), ("test", "3wFmP_oxN2o", "F50-126")):
        (meta / split).mkdir(parents=True, exist_ok=True)
        (meta / split / f"Clip+{vid}+P0+C3+{span}.txt").write_text(header.format(vid=vid) + table)
    (meta / "train" / "Clip+noVideo123+P1+C0+F0-50.txt").write_text(header.format(vid="noVideo123") + table)
    cut(tmp_path / "yt" / "0Bo8W5sQxXw.webm")
    cut(tmp_path / "yt" / "Clip+3wFmP_oxN2o+P0+C3.mp4")  # a cut clip
    _, _, rows, missing = run_recipe("vfhq", tmp_path / "v.csv", "--meta", meta, "--videos", tmp_path / "yt")
    got = [(r["identity"], r["split"], r["start"], r["end"]) for r in rows]
    assert got == [("3wFmP_oxN2o+P0", "test", "", ""), ("0Bo8W5sQxXw+P0", "train", "8.04", "12")]  # frames 201..299
    assert [m["clip_id"] for m in missing] == ["Clip+noVideo123+P1+C0+F0-50"]


def test_ffhq_json_split_and_aahq_folder(tmp_path):
    if not (FACES / "images").is_dir():
        pytest.skip(f"real test faces not found at {FACES}")
    root = tmp_path / "ffhq"
    for i, src in enumerate(("s0.jpg", "s1.jpg")):
        (root / "images1024x1024" / "00000").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FACES / "images" / src, root / "images1024x1024" / "00000" / f"{i:05d}.png")
    entry = lambda i, cat: {"category": cat, "metadata": {"photo_url": "https://www.flickr.com/photos/x/1/"},  # noqa: E731
                            "image": {"file_url": "https://drive.google.com/uc?id=x", "pixel_size": [1024, 1024],
                                      "file_path": f"images1024x1024/00000/{i:05d}.png"}}  # fmt: skip
    (tmp_path / "ffhq-dataset-v2.json").write_text(json.dumps({"0": entry(0, "training"), "1": entry(1, "validation"),
                                                               "2": entry(2, "training")}))  # fmt: skip
    _, _, rows, missing = run_recipe(
        "ffhq", tmp_path / "f.csv", "--root", root, "--json", tmp_path / "ffhq-dataset-v2.json"
    )
    assert [(r["identity"], r["split"]) for r in rows] == [("ffhq/00000", "train"), ("ffhq/00001", "test")]
    assert [m["clip_id"] for m in missing] == ["images1024x1024/00000/00002.png"]
    (tmp_path / "aahq" / "aligned").mkdir(parents=True)
    shutil.copyfile(FACES / "images" / "s8.jpg", tmp_path / "aahq" / "aligned" / "00042.png")
    _, _, rows, _ = run_recipe("aahq", tmp_path / "a.csv", "--root", tmp_path / "aahq")
    assert [(r["identity"], r["dataset"], r["start"]) for r in rows] == [("aahq/aligned/00042", "aahq", "")]


def test_cli_recipe_help_names_the_download_tool(capsys):
    with pytest.raises(SystemExit) as e:
        main(["recipe", "talkinghead1kh", "--help"])
    assert e.value.code == 0
    assert "videos_download_and_crop.sh" in capsys.readouterr().out


def test_identity_leak_fails_the_check_and_the_curation_run(tmp_path, cut):
    clip = cut(tmp_path / "v" / "a.mp4")
    leaking = tmp_path / "leak.csv"
    leaking.write_text(
        "path,identity,split,dataset,clip_id,start,end\n"
        f"{clip},id00017,train,voxceleb2,c1,0,0.5\n{clip},id00017,test,voxceleb2,c2,0.5,1\n"
        f"{clip},id00018,test,voxceleb2,c3,0,1\n{clip},id00017,train,hdtf,c4,0,1\n"
    )
    assert [(x.dataset, x.identity) for x in identity_leaks(csv.DictReader(leaking.open()))] == [
        ("voxceleb2", "id00017")
    ]
    with pytest.raises(SystemExit) as e:
        main(["check-splits", str(leaking)])
    assert e.value.code == 1
    with pytest.raises(ValueError, match="1 identities of the input list are in a training split and a held-out"):
        execute(make_cfg(tmp_path / "out", manifest=leaking))
    assert not (tmp_path / "out" / "shards").exists()  # refused before curating anything

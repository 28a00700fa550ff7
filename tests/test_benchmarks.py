"""The benchmark scripts still run (at tiny sizes, on the CPU): their figures are not checked here (speed
belongs in benchmarks/, not in timed tests), only that each script runs to its last line. A change to the
engine's API once broke `report_scaling.py` unnoticed until a GPU check needed it."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow  # minutes: `make test` runs them, `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "export_speed.py": ["--images", "16", "--fit-images", "40", "--repeats", "1", "--width", "0.125"],
    "export_agreement.py": ["--images", "8", "--fit-images", "40"],
    "far_gate.py": ["--tiny", "--images", "8"],
    "walk_speed.py": ["--files", "50", "--folders", "5", "--repeats", "1"],
    "score_stream.py": ["--images", "40", "--shards", "2", "--width", "0.125", "--batch-size", "8"],
    "sweep_overhead.py": ["--limit", "100", "--epochs", "1", "--repeats", "1", "--width", "0.125"],
    "objective_overhead.py": ["--steps", "1", "--warmup", "0", "--width", "0.125", "--batch-size", "8"],
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_script_runs(script, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY[script]], cwd=tmp_path,
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip(), "printed nothing"


def test_gpu_check_runs_every_step_in_its_cpu_smoke_mode(tmp_path):
    """The one-shot GPU script (issue 13) with the CPU's tiny sizes: every step (the other benchmark
    scripts and `lbfood pretrain`) must end with status 0; its exit code says so."""
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], cwd=tmp_path,
                       capture_output=True, text=True, env={**_env(), "PY": sys.executable}, timeout=900)
    summary = p.stdout[p.stdout.rfind("== summary"):]
    assert p.returncode == 0, summary + p.stderr[-2000:]
    assert summary.count("rc 0,") == summary.count("\n-- ") >= 8, summary


# ----------------------------------------------------------------------------- real_images.py
# The real sources are two Debian packages that CI may lack, so the builder runs on fake ones made
# here, in the packages' layouts: a Tux Paint stamps tree and GCompris' Qt resource (.rcc) files.

REAL = ROOT / "benchmarks" / "real_images.py"
SCENES_DIR = "gcompris/src/activities/categorization/resource/images"
MONUMENTS_DIR = "gcompris/src/activities/explore_monuments/resource"


def _photo(seed: int, size=(40, 30), alpha=True, fmt="PNG") -> bytes:
    """A distinct, smooth picture (4x4 noise upsampled), cut out as an ellipse when `alpha`."""
    noise = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
    if alpha:
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).ellipse((4, 4, size[0] - 5, size[1] - 5), fill=255)
        im.putalpha(mask)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _rcc(files: dict[str, bytes]) -> bytes:
    """A Qt resource file (format 3) holding `files`: zlib-compressed as qCompress does, except the
    READMEs, stored plain (rcc keeps an entry plain when compressing does not pay)."""
    tree: dict = {}
    for path, data in files.items():
        *dirs, leaf = path.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = data
    names, blobs, nodes = bytearray(), bytearray(), []  # nodes: (name, dict or bytes), breadth first

    def name_off(n: str) -> int:
        off = len(names)
        names.extend(struct.pack(">HI", len(n), 0) + n.encode("utf-16-be"))
        return off

    nodes.append(("", tree))
    packed = {}
    i = 0
    while i < len(nodes):
        n, content = nodes[i]
        if isinstance(content, dict):
            packed[i] = (len(nodes), len(content))
            nodes += sorted(content.items())
        i += 1
    out = bytearray()
    for i, (n, content) in enumerate(nodes):
        off = name_off(n)
        if isinstance(content, dict):
            first, count = packed[i]
            out += struct.pack(">IHII", off, 2, count, first)
        else:
            plain = n == "README"
            z = content if plain else struct.pack(">I", len(content)) + zlib.compress(content)
            out += struct.pack(">IHHHI", off, 0 if plain else 1, 0, 0, len(blobs))
            blobs.extend(struct.pack(">I", len(z)) + z)
        out += struct.pack(">Q", 0)
    tree_at = 24
    blobs_at = tree_at + len(out)
    names_at = blobs_at + len(blobs)
    return b"qres" + struct.pack(">IIIII", 3, tree_at, blobs_at, names_at, 0) + bytes(out + blobs + names)


def _fake_sources(tmp: Path) -> tuple[Path, Path]:
    """Tux Paint: 4 photos per ID class (one in a sub-folder), drawings in `cartoon/` (left out), 3 objects.
    GCompris: 2 monuments + 1 dam, a README, a `tools` photo (not a scene), and in a second file a
    re-encoded copy of a monument (a repeat: dropped) and one more monument."""
    tux, gc = tmp / "stamps", tmp / "rcc"
    seed = 0
    for folders in [("animals/birds",), ("animals/mammals",), ("food/fruit",), ("food/vegetables",),
                    ("plants/flowers",)]:
        for k in range(4):
            f = tux / folders[0] / ("sub" if k == 3 else "") / f"photo{k}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(_photo(seed := seed + 1))
        (tux / folders[0] / "cartoon").mkdir()
        (tux / folders[0] / "cartoon" / "drawing.png").write_bytes(_photo(seed := seed + 1))
        (tux / folders[0] / "drawing.svg").write_text("<svg/>")
    for folder, n in (("household", 2), ("vehicles", 1)):
        (tux / folder).mkdir(parents=True)
        for k in range(n):
            (tux / folder / f"thing{k}.png").write_bytes(_photo(seed := seed + 1))
    gc.mkdir()
    eiffel = _photo(100, (64, 48), alpha=False)
    (gc / "categorization.rcc").write_bytes(_rcc({
        f"{SCENES_DIR}/monuments/eiffel.webp": eiffel,
        f"{SCENES_DIR}/monuments/colosseum.jpg": _photo(101, (48, 64), alpha=False, fmt="JPEG"),
        f"{SCENES_DIR}/monuments/README": b"Copyright: someone\nLicense: Public Domain\n",
        f"{SCENES_DIR}/renewable/dam.jpg": _photo(102, (64, 48), alpha=False, fmt="JPEG"),
        f"{SCENES_DIR}/tools/hammer.webp": _photo(103, (64, 48), alpha=False),
    }))
    (gc / "explore_monuments.rcc").write_bytes(_rcc({
        f"{MONUMENTS_DIR}/france/eiffelTower.jpg": _jpeg(Image.open(io.BytesIO(eiffel))),
        f"{MONUMENTS_DIR}/egypt/pyramid.png": _photo(104, (64, 48), alpha=False),
    }))
    return tux, gc


def _jpeg(im) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _run_real(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REAL), *args], cwd=cwd, capture_output=True, text=True,
                          env=_env(), timeout=300)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_real_images_builds_the_layout_lbfood_reads_from_fake_sources(tmp_path):
    tux, gc = _fake_sources(tmp_path)
    out = tmp_path / "real"
    p = _run_real("--out", str(out), "--tuxpaint", str(tux), "--gcompris", str(gc), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # 4 photos a class: round(4 * 0.3) = 1 test; drawings (cartoon/, .svg) left out; the repeat dropped
    assert "id/train    15  (birds 3, mammals 3, fruit 3, vegetables 3, flowers 3)" in p.stdout
    assert "id/test      5  (birds 1, mammals 1, fruit 1, vegetables 1, flowers 1)" in p.stdout
    assert "ood          7  (objects 3, scenes 4)" in p.stdout
    scenes = sorted(f.name for f in (out / "ood" / "scenes").iterdir())
    assert scenes == ["categorization_gcompris_src_activities_categorization_resource_images_monuments_colosseum.png",
                      "categorization_gcompris_src_activities_categorization_resource_images_monuments_eiffel.png",
                      "categorization_gcompris_src_activities_categorization_resource_images_renewable_dam.png",
                      "explore_monuments_gcompris_src_activities_explore_monuments_resource_egypt_pyramid.png"]
    assert (out / "id" / "train" / "birds" / "animals_birds_sub_photo3.png").is_file() or \
        (out / "id" / "test" / "birds" / "animals_birds_sub_photo3.png").is_file()
    assert not list(out.rglob("*drawing*"))
    licences = sorted(f.name for f in (out / "licences").iterdir())
    assert licences == ["gcompris_gcompris_src_activities_categorization_resource_images_monuments_README.txt",
                        "tuxpaint.txt"]
    assert (out / "licences" / licences[0]).read_text() == "Copyright: someone\nLicense: Public Domain\n"

    from lbfood.engine.data import LoadOptions, get

    opts = LoadOptions(root=tmp_path)
    train = get(f"imagefolder:{out / 'id'}").load(opts, "train")
    test = get(f"imagefolder:{out / 'id'}").load(opts, "test")
    assert train.classes == ("birds", "flowers", "fruit", "mammals", "vegetables")
    assert tuple(train.images.shape) == (15, 32, 32, 3) and tuple(test.images.shape) == (5, 32, 32, 3)
    assert sorted(train.labels.tolist()) == sorted([0, 1, 2, 3, 4] * 3)
    objects = get(f"folder:{out / 'ood' / 'objects'}").load(opts, "test")
    assert tuple(objects.images.shape) == (3, 32, 32, 3)
    # a cut-out is padded on white: the corners of every ID image are white
    assert (train.images[:, 0, 0] == 255).all()

    # deterministic: the same bytes again, and the split does not depend on --size
    first = _tree(out)
    assert _run_real("--out", str(out), "--tuxpaint", str(tux), "--gcompris", str(gc), cwd=tmp_path).returncode == 0
    assert _tree(out) == first
    big = tmp_path / "big"
    assert _run_real("--out", str(big), "--size", "64", "--tuxpaint", str(tux), "--no-scenes",
                     cwd=tmp_path).returncode == 0
    assert sorted(f.relative_to(big / "id").as_posix() for f in (big / "id").rglob("*.png")) == \
        sorted(f.relative_to(out / "id").as_posix() for f in (out / "id").rglob("*.png"))
    assert not (big / "ood" / "scenes").exists()


def test_readme_real_photo_sweep_commands_at_tiny_size(tmp_path, monkeypatch):
    """README "Does background training help?", real photos: the pretraining with held-out photos, the
    sweep over the four objectives with both OOD folders, and the table, on the fake sources' set (15
    training photos: width 0.125, 1 epoch, batch 4, one λ)."""
    from typer.testing import CliRunner

    from lbfood.cli import app

    tux, gc = _fake_sources(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _run_real("--out", "data/real", "--size", "32", "--tuxpaint", str(tux), "--gcompris", str(gc),
                     cwd=tmp_path).returncode == 0
    r = CliRunner().invoke(app, ["pretrain", "--data", "imagefolder:data/real/id", "--width", "0.125", "--epochs", "1",
                                 "--batch-size", "4", "--lr", "0.05", "--holdout", "0.3", "--seed", "0", "--out",
                                 "runs/real-s0", "--device", "cpu", "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["sweep", "--from", "runs/real-s0", "--out", "sweeps/real-s0", "--objective",
                                 "lff,lff-rel,bg-energy,bg-head", "--lambda", "0.1", "--batch-size", "4", "--epochs", "1",
                                 "--holdout", "0.3", "--method", "energy,react,knn,vim,bghead",
                                 "--ood", "objects=folder:data/real/ood/objects", "--ood",
                                 "scenes=folder:data/real/ood/scenes", "--seed", "0", "-q", "--device", "cpu",
                                 "--workers", "0", "--probe-batches", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "sweeps/real-s0/sweep.json").read_text())
    assert [t["objective"] for t in doc["trials"]] == ["lff", "lff", "lff-rel", "bg-energy", "bg-head"]
    assert doc["test"]["ood"] == ["folder:data/real/ood/objects", "folder:data/real/ood/scenes"]
    tested = [t for t in doc["trials"] if t.get("test")]
    assert len(tested) == 5 and all(set(t["test"]["metrics"]) >= {"energy", "react", "vim"} for t in tested)
    assert all("knn" not in t["test"]["metrics"] for t in tested)  # k = 50 > 10 training photos: not validated
    table = subprocess.run([sys.executable, str(ROOT / "docs" / "objectives_table.py"), "sweeps/real-s0/sweep.json"],
                           capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert table.returncode == 0 and "| real-s0 | control |" in table.stdout, table.stderr


def test_real_images_says_what_to_install_and_never_overwrites_other_files(tmp_path):
    tux, gc = _fake_sources(tmp_path)
    p = _run_real("--out", str(tmp_path / "a"), "--tuxpaint", str(tmp_path / "none"), cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        f"real_images.py: no Tux Paint stamps at {tmp_path / 'none'}: install the Debian package "
        "(apt-get install tuxpaint-stamps-default) or pass --tuxpaint DIR"]
    p = _run_real("--out", str(tmp_path / "a"), "--tuxpaint", str(tux), "--gcompris", str(tmp_path / "none"),
                  cwd=tmp_path)
    assert p.returncode == 2 and "apt-get install gcompris-qt-data" in p.stderr and "--no-scenes" in p.stderr
    assert not (tmp_path / "a").exists()  # every source is read before anything is written
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    p = _run_real("--out", str(mine), "--tuxpaint", str(tux), "--no-scenes", cwd=tmp_path)
    assert p.returncode == 2 and "not empty and was not written by this script" in p.stderr
    assert [f.name for f in mine.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(not Path("/usr/share/tuxpaint/stamps").is_dir() or not Path("/usr/share/gcompris-qt/rcc").is_dir(),
                    reason="the Debian packages tuxpaint-stamps-default and gcompris-qt-data are not installed")
def test_real_images_on_the_installed_packages(tmp_path):
    """The counts of the packages in Debian 12 (tuxpaint-stamps-default 2022.06.04, gcompris-qt-data 3.1)."""
    p = _run_real("--out", str(tmp_path / "real"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "id/train   118  (birds 25, mammals 45, fruit 18, vegetables 13, flowers 17)" in p.stdout
    assert "id/test     51  (birds 10, mammals 20, fruit 8, vegetables 5, flowers 8)" in p.stdout
    assert "ood        153  (objects 51, scenes 102)" in p.stdout

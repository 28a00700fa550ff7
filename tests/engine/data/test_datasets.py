"""Datasets: each loader on tiny fake data in its real on-disk format, exact pixels and labels, clear errors."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import fakedata as fd
import numpy as np
import pytest
import torch
from PIL import Image

from lbfood.engine import data
from lbfood.engine.data import LoadOptions
from lbfood.engine.data.catalog import describe
from lbfood.engine.data.images import decode, list_images, load_folder_small, resize_center_crop
from lbfood.engine.errors import ConfigError, DataError
from lbfood.engine.evaluation.benchmarks import BUILTIN, load_benchmark, parse_benchmark

REPO = Path(__file__).resolve().parents[3]


def load(name: str, root: Path, split: str = "test", **kw):
    return data.get(name).load(LoadOptions(root=root, **kw), split)


# ----------------------------------------------------------------------------- images


def test_decode_each_mode_to_8bit_rgb(tmp_path):
    expected = fd.write_mixed_images(tmp_path)
    for name, want in expected.items():
        if want is None:
            continue
        got = decode(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_decode_jpeg_matches_pil(tmp_path):
    fd.write_mixed_images(tmp_path)
    got = decode(tmp_path / "photo.jpg")
    want = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    np.testing.assert_array_equal(got, want)
    assert np.median(np.abs(got.astype(int) - fd.pattern(2, 16, 16))) <= 3  # and JPEG kept the picture


def test_decode_16bit_rgb_png(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 257 * 10, 257 * 200, 65535
    fd.png16(tmp_path / "rgb16.png", arr)
    got = decode(tmp_path / "rgb16.png")
    assert (got[..., 0] == 10).all() and (got[..., 1] == 200).all() and (got[..., 2] == 255).all()


@pytest.mark.parametrize("bad", ["truncated.jpg", "notes.txt", "fake.png", "absent.png"])
def test_decode_bad_file_names_it(tmp_path, bad):
    fd.write_mixed_images(tmp_path)
    with pytest.raises(DataError, match=bad):
        decode(tmp_path / bad)


def test_resize_center_crop_matches_torchvision():
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32)])
    for h, w in ((50, 37), (37, 50), (64, 64), (20, 90), (32, 40)):
        arr = fd.pattern(h + w, h, w)
        want = np.asarray(tf(Image.fromarray(arr)))
        np.testing.assert_array_equal(resize_center_crop(arr, 32), want, err_msg=f"{h}x{w}")
    arr = fd.pattern(0, 32, 32)
    np.testing.assert_array_equal(resize_center_crop(arr, 32), arr)
    assert resize_center_crop(arr[..., 0], 16).shape == (16, 16, 3)


def test_list_images_sorted_recursive_case_insensitive(tmp_path):
    for rel in ("b/x.PNG", "a/y.jpeg", "a/deep/z.Tif", "c.webp", "._hidden.jpg", ".cache/w.png", "readme.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a/deep/z.Tif", "a/y.jpeg", "b/x.PNG", "c.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["c.webp"]


def test_load_folder_small_skips_and_counts(tmp_path):
    expected = fd.write_mixed_images(tmp_path)
    files = list_images(tmp_path)
    images, skipped, kept = load_folder_small(files, 8)
    names = [files[i].name for i in kept.tolist()]
    assert skipped == 2 and "truncated.jpg" not in names and "fake.png" not in names
    assert images.shape == (len(files) - 2, 8, 8, 3) and images.dtype == torch.uint8
    i = names.index("gray.png")
    np.testing.assert_array_equal(images[i].numpy(), expected["gray.png"])


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_exact(tmp_path):
    wrote = fd.write_cifar10(tmp_path, n_train=12, n_test=4)
    for split in ("train", "test"):
        s = load("cifar10", tmp_path, split)
        x, y = wrote[split]
        assert s.in_memory and s.classes == tuple(fd.CIFAR10_CLASSES)
        np.testing.assert_array_equal(s.images.numpy(), x)
        np.testing.assert_array_equal(s.labels.numpy(), y)
    spec = data.get("cifar10")
    assert (spec.role, spec.image_size, spec.preset) == ("id", 32, "cifar10")


def test_cifar100_exact_fine_labels(tmp_path):
    wrote = fd.write_cifar100(tmp_path)
    s = load("cifar100", tmp_path, "train")
    np.testing.assert_array_equal(s.images.numpy(), wrote["train"][0])
    np.testing.assert_array_equal(s.labels.numpy(), wrote["train"][1])
    assert len(s.classes) == 100 and data.get("cifar100").preset == "cifar100"


def test_cifar_resized_to_image_size(tmp_path):
    wrote = fd.write_cifar10(tmp_path, n_train=5, n_test=2)
    s = load("cifar10", tmp_path, "test", image_size=16)
    np.testing.assert_array_equal(s.images[1].numpy(), resize_center_crop(wrote["test"][0][1], 16))


def test_cifar_missing_names_files_and_download(tmp_path):
    fd.write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data_batch_3.*--download"):
        load("cifar10", tmp_path, "train")


def test_cifar_refuses_foreign_pickle(tmp_path):
    fd.write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="test_batch"):
        load("cifar10", tmp_path, "test")


# ----------------------------------------------------------------------------- SVHN


@pytest.mark.parametrize("in_subdir", [True, False])
def test_svhn_exact(tmp_path, in_subdir):
    images = fd.write_svhn(tmp_path, n=5, in_subdir=in_subdir)
    s = load("svhn", tmp_path)
    np.testing.assert_array_equal(s.images.numpy(), images)
    assert (s.labels == -1).all() and data.get("svhn").count(LoadOptions(root=tmp_path)) == 5


def test_svhn_wrong_mat_and_not_mat(tmp_path):
    import scipy.io

    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(str(tmp_path / "svhn" / "test_32x32.mat"), {"images": np.zeros((2, 2))})
    with pytest.raises(DataError, match=r"test_32x32\.mat.*not SVHN's"):
        load("svhn", tmp_path)
    (tmp_path / "svhn" / "test_32x32.mat").write_text("hello")
    with pytest.raises(DataError, match="test_32x32.mat"):
        load("svhn", tmp_path)


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("which,gz", [("mnist", False), ("fashion-mnist", True)])
def test_idx_digits(tmp_path, which, gz):
    wrote = fd.write_idx(tmp_path, which, gz=gz)
    s = load(which, tmp_path, "train", image_size=28)  # native size: exact pixels, gray -> RGB
    x, y = wrote["train"]
    np.testing.assert_array_equal(s.images.numpy(), np.repeat(x[..., None], 3, axis=3))
    np.testing.assert_array_equal(s.labels.numpy(), y)
    s32 = load(which, tmp_path, "test")
    assert s32.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(s32.images[0].numpy(), resize_center_crop(wrote["test"][0][0], 32))


def test_idx_bad_magic(tmp_path):
    fd.write_idx(tmp_path, "mnist")
    p = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x09\x99" + p.read_bytes()[4:])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*magic"):
        load("mnist", tmp_path, "test")


# ----------------------------------------------------------------------------- imagefolder:PATH


def test_imagefolder_train_test(tmp_path):
    train = fd.write_image_folder(tmp_path / "ds" / "train", ["dog", "cat"], 2)
    test = fd.write_image_folder(tmp_path / "ds" / "val", ["cat"], 1, start=50)
    name = f"imagefolder:{tmp_path / 'ds'}"
    s = load(name, tmp_path, "train")
    assert s.classes == ("cat", "dog")
    np.testing.assert_array_equal(s.images.numpy(), np.stack(train["cat"] + train["dog"]))
    assert s.labels.tolist() == [0, 0, 1, 1]
    t = load(name, tmp_path, "test")
    np.testing.assert_array_equal(t.images.numpy(), np.stack(test["cat"]))
    assert t.labels.tolist() == [0] and t.classes == ("cat", "dog")
    spec = data.get(name)
    assert (spec.role, spec.image_size, spec.preset) == ("id", 32, "custom")


def test_imagefolder_flat_val_split_is_stratified_and_deterministic(tmp_path):
    fd.write_image_folder(tmp_path / "flat", ["a", "b", "c"], 5)
    name = f"imagefolder:{tmp_path / 'flat'}"
    tr = load(name, tmp_path, "train", val_split=0.4, seed=3)
    te = load(name, tmp_path, "test", val_split=0.4, seed=3)
    assert torch.bincount(te.labels).tolist() == [2, 2, 2] and torch.bincount(tr.labels).tolist() == [3, 3, 3]
    both = torch.cat([tr.images, te.images]).reshape(15, -1)
    assert len(torch.unique(both, dim=0)) == 15  # a partition: nothing shared, nothing lost
    again = load(name, tmp_path, "test", val_split=0.4, seed=3)
    assert torch.equal(again.images, te.images)
    other = load(name, tmp_path, "test", val_split=0.4, seed=4)
    assert not torch.equal(other.images, te.images)
    with pytest.raises(DataError, match=r"--val-split"):
        load(name, tmp_path, "train")


def test_imagefolder_bad_layouts(tmp_path):
    fd.write_image_folder(tmp_path / "e" / "train", ["a"], 1)
    fd.write_image_folder(tmp_path / "e" / "test", ["a"], 1)
    (tmp_path / "e" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "e" / "train" / "empty")):
        load(f"imagefolder:{tmp_path / 'e'}", tmp_path, "train")
    fd.write_flat_folder(tmp_path / "loose", 2)
    with pytest.raises(DataError, match=r"no class folders.*loose.*own folder"):
        load(f"imagefolder:{tmp_path / 'loose'}", tmp_path, "train", val_split=0.5)
    fd.write_image_folder(tmp_path / "m" / "train", ["a"], 1)
    fd.write_image_folder(tmp_path / "m" / "test", ["zebra"], 1)
    with pytest.raises(DataError, match="zebra"):
        load(f"imagefolder:{tmp_path / 'm'}", tmp_path, "test")
    with pytest.raises(DataError, match="nowhere"):
        load(f"imagefolder:{tmp_path / 'nowhere'}", tmp_path, "train")
    with pytest.raises(DataError, match="needs a path"):
        data.get("imagefolder:")


def test_imagefolder_undecodable_is_skipped_and_large_size_gives_files(tmp_path):
    fd.write_image_folder(tmp_path / "d" / "train", ["a", "b"], 2)
    fd.write_image_folder(tmp_path / "d" / "test", ["a", "b"], 1)
    (tmp_path / "d" / "train" / "b" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    name = f"imagefolder:{tmp_path / 'd'}"
    s = load(name, tmp_path, "train")
    assert s.skipped == 1 and len(s) == 4 and s.labels.tolist() == [0, 0, 1, 1]
    big = load(name, tmp_path, "train", image_size=224)
    assert not big.in_memory and len(big.files) == 5 and big.files[-1].endswith("zz_broken.jpg")
    assert big.labels.tolist() == [0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- OOD folders


def test_folder_family_recursive_unlabelled(tmp_path):
    a = fd.write_flat_folder(tmp_path / "mine" / "x", 2)
    b = fd.write_flat_folder(tmp_path / "mine" / "y", 1, start=9)
    s = load(f"folder:{tmp_path / 'mine'}", tmp_path)
    np.testing.assert_array_equal(s.images.numpy(), np.stack(a + b))
    assert s.labels.tolist() == [-1, -1, -1] and data.get(f"folder:{tmp_path}").role == "ood"
    with pytest.raises(DataError, match="missing_dir"):
        load(f"folder:{tmp_path / 'missing_dir'}", tmp_path)


# Each CIFAR OOD set in its release's layout (subfolders as the tarballs unpack).
RELEASE_DIRS = {"lsun_c": "LSUN/test", "lsun_r": "LSUN_resize/LSUN_resize", "isun": "iSUN/iSUN_patches",
                "textures": "dtd/images/banded", "places365": "places365/test_subset"}


@pytest.mark.parametrize("name", sorted(RELEASE_DIRS))
def test_cifar_ood_release_layouts(tmp_path, name):
    images = fd.write_flat_folder(tmp_path / RELEASE_DIRS[name], 3, size=(36, 36), ext="png")
    s = load(name, tmp_path)
    want = np.stack([resize_center_crop(a, 32) for a in images])
    np.testing.assert_array_equal(s.images.numpy(), want)
    spec = data.get(name)
    assert (spec.role, spec.image_size) == ("ood", 32) and spec.count(LoadOptions(root=tmp_path)) == 3
    assert load(name, tmp_path, image_size=224).files is not None  # folder loading follows image_size


def test_ood_jpeg_release_and_skipped(tmp_path):
    fd.write_flat_folder(tmp_path / "iSUN" / "iSUN_patches", 2, ext="jpeg")
    (tmp_path / "iSUN" / "iSUN_patches" / "bad.jpeg").write_text("nope")
    s = load("isun", tmp_path)
    files = list_images(tmp_path / "iSUN")
    want = [resize_center_crop(decode(f), 32) for f in files if f.name != "bad.jpeg"]
    np.testing.assert_array_equal(s.images.numpy(), np.stack(want))
    assert s.skipped == 1


def test_ood_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match=r"LSUN.*LSUN\.tar\.gz"):
        load("lsun_c", tmp_path)
    (tmp_path / "LSUN" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no image files under .*LSUN"):
        load("lsun_c", tmp_path)
    nowhere = tmp_path / "no_such_root"
    with pytest.raises(DataError, match=rf"{nowhere}.*does not exist"):
        load("textures", nowhere)
    with pytest.raises(DataError, match="no 'train' split"):
        load("textures", tmp_path, "train")


# ----------------------------------------------------------------------------- ImageNet-100


def test_imagenet100_subset_file_list(tmp_path):
    wrote = fd.write_imagenet_subset(tmp_path, fd.IMAGENET_CLASSES, n=2)
    classes = [fd.IMAGENET_CLASSES[2], fd.IMAGENET_CLASSES[0], fd.IMAGENET_CLASSES[1]]  # unsorted, 3 of 4
    cl = fd.write_class_list(tmp_path / "classes.txt", classes)
    s = load("imagenet100", tmp_path, "train", classes_file=cl, image_size=224)
    assert not s.in_memory and s.classes == tuple(sorted(classes))
    want = [str(p) for c in sorted(classes) for p in wrote["train"][c]]
    assert list(s.files) == want and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    t = load("imagenet100", tmp_path, "test", classes_file=cl, image_size=224)
    assert list(t.files) == [str(p) for c in sorted(classes) for p in wrote["val"][c]]
    small = load("imagenet100", tmp_path, "test", classes_file=cl, image_size=16)
    assert small.images.shape == (6, 16, 16, 3)
    spec = data.get("imagenet100")
    assert (spec.role, spec.image_size, spec.preset) == ("id", 224, "imagenet100")
    assert spec.count(LoadOptions(root=tmp_path, classes_file=cl)) == 12


def test_imagenet100_missing_classes_listed(tmp_path):
    fd.write_imagenet_subset(tmp_path, fd.IMAGENET_CLASSES[:2], n=1)
    cl = fd.write_class_list(tmp_path / "c.txt", fd.IMAGENET_CLASSES)
    with pytest.raises(DataError, match=r"2 of the 4 .*n01580077, n01601694"):
        load("imagenet100", tmp_path, "train", classes_file=cl, image_size=224)
    with pytest.raises(DataError, match=r"100 listed classes"):  # the shipped list is not on disk
        load("imagenet100", tmp_path, "train", image_size=224)
    with pytest.raises(DataError, match="nope.txt"):
        load("imagenet100", tmp_path, "train", classes_file=tmp_path / "nope.txt")


def test_imagenet100_shipped_class_list():
    from lbfood.engine.data.imagenet import read_class_list

    classes = read_class_list(None)
    assert len(classes) == 100 and len(set(classes)) == 100
    assert all(len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in classes)
    packaged = (REPO / "lbfood" / "engine" / "data" / "imagenet100_classes.txt").read_text()
    assert packaged == (REPO / "examples" / "imagenet100_classes.txt").read_text()


@pytest.mark.parametrize("name,folder", [("inaturalist", "iNaturalist/images"), ("sun", "SUN/images"),
                                         ("places", "Places/images"), ("textures", "dtd/images/dotted")])
def test_imagenet_ood_sets_give_files_at_224(tmp_path, name, folder):
    fd.write_flat_folder(tmp_path / folder, 2, ext="jpg")
    s = load(name, tmp_path, image_size=224)
    assert [Path(f).name for f in s.files] == ["img_000.jpg", "img_001.jpg"] and s.labels.tolist() == [-1, -1]
    assert data.get(name).role == "ood"


# ----------------------------------------------------------------------------- registry and catalog


@pytest.mark.parametrize("spec", data.specs(), ids=lambda s: s.name)
def test_every_spec_is_well_formed(spec, tmp_path):
    assert spec.role in ("id", "ood") and spec.image_size in (32, 224)
    assert spec.layout and spec.obtain and len(spec.mean) == 3 and len(spec.std) == 3
    if not spec.generated:
        assert spec.count(LoadOptions(root=tmp_path)) is None
        with pytest.raises(DataError, match=str(tmp_path)):
            spec.load(LoadOptions(root=tmp_path, image_size=spec.image_size), "test")


def test_catalog_on_empty_root(tmp_path):
    rows = describe(tmp_path)
    assert [r["name"] for r in rows] == sorted(s.name for s in data.specs())
    by = {r["name"]: r for r in rows}
    for spec in data.specs():
        r = by[spec.name]
        assert set(r) == {"name", "role", "found", "count", "path", "obtain"}
        if spec.generated:
            assert r["found"]
        else:
            assert not r["found"] and r["count"] is None and r["path"].startswith(str(tmp_path))
    assert by["svhn"]["path"] == str(tmp_path / "svhn" / "test_32x32.mat")
    assert by["textures"]["path"] == str(tmp_path / "dtd" / "images")


def test_catalog_counts_found_data(tmp_path):
    fd.write_flat_folder(tmp_path / "LSUN" / "test", 4)
    fd.write_cifar10(tmp_path)
    by = {r["name"]: r for r in describe(tmp_path)}
    assert by["lsun_c"]["found"] and by["lsun_c"]["count"] == 4
    assert by["cifar10"]["found"] and not by["lsun_r"]["found"]


# ----------------------------------------------------------------------------- benchmarks

# Rows whose "Average" in the paper is not the mean of its per-dataset numbers (as printed in the paper).
PAPER_AVERAGE_MISMATCHES = {
    ("cifar10", "dice_react", "auroc"), ("cifar10", "vos", "fpr95"), ("cifar100", "energy", "auroc"),
    ("cifar100", "vim", "fpr95"), ("cifar100", "dice", "auroc"), ("imagenet100", "dice", "fpr95"),
    ("imagenet100", "react", "auroc"), ("imagenet100", "line", "fpr95"),
}


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_benchmarks(name):
    b = load_benchmark(name)
    assert b.name == name and b.id == name
    assert b.image_size == data.get(b.id).image_size
    for o in b.ood:
        assert data.get(o).role == "ood"
    packaged = (REPO / "lbfood" / "engine" / "evaluation" / "benchmark_files" / f"{name}.toml").read_text()
    assert packaged == (REPO / "examples" / f"{name}.toml").read_text()
    assert load_benchmark(REPO / "examples" / f"{name}.toml").paper == b.paper
    assert load_benchmark(REPO / "examples" / f"{name}.toml").paper_ours == b.paper_ours
    if b.paper:  # Table IV: the "+Ours" rows of five methods; ReAct+Ours is the method's own row ("ours")
        assert set(b.paper_ours) == {"msp", "energy", "odin", "react", "featurenorm"}
        assert b.paper_ours["react"] == b.paper["ours"]
        for m in ("msp", "energy", "odin", "featurenorm"):  # lower FPR95, higher AUROC than the baseline
            assert b.paper_ours[m]["average"]["fpr95"] < b.paper[m]["average"]["fpr95"]
            assert b.paper_ours[m]["average"]["auroc"] > b.paper[m]["average"]["auroc"]
    for method, rows in b.paper.items():
        assert set(rows) == set(b.ood) | {"average"}, method
        for metric in ("fpr95", "auroc"):
            mean = sum(rows[o][metric] for o in b.ood) / len(b.ood)
            off = abs(mean - rows["average"][metric]) > 0.015
            assert off == ((name, method, metric) in PAPER_AVERAGE_MISMATCHES), (method, metric)


def test_paper_numbers_spot_checks():
    c100, c10, inet = load_benchmark("cifar100"), load_benchmark("cifar10"), load_benchmark("imagenet100")
    assert c100.paper["react"]["svhn"] == {"fpr95": 43.10, "auroc": 92.22}
    assert c100.paper["ours"]["average"] == {"fpr95": 34.82, "auroc": 92.31}
    assert c10.paper["tagfog"]["lsun_r"] == {"fpr95": 2.02, "auroc": 99.44}
    assert inet.paper["ours"]["sun"] == {"fpr95": 25.93, "auroc": 95.05}
    assert inet.arch == "resnet50_imagenet" and c10.arch == "resnet34" and len(c10.paper) == 18
    assert load_benchmark("backdrops").paper == {}
    # Table IV, "+Ours" rows (averages)
    assert c10.paper_ours["msp"]["average"] == {"fpr95": 19.77, "auroc": 96.61}
    assert c10.paper_ours["featurenorm"]["average"] == {"fpr95": 20.81, "auroc": 96.25}
    assert c100.paper_ours["energy"]["average"] == {"fpr95": 35.20, "auroc": 92.11}
    assert c100.paper_ours["odin"]["average"] == {"fpr95": 34.61, "auroc": 92.32}
    assert c100.paper_ours["react"]["average"] == {"fpr95": 34.82, "auroc": 92.31}
    assert inet.paper_ours["odin"]["average"] == {"fpr95": 30.62, "auroc": 94.04}
    assert inet.paper_ours["featurenorm"]["average"] == {"fpr95": 46.81, "auroc": 85.66}
    assert inet.paper_ours["msp"]["average"] == {"fpr95": 41.60, "auroc": 91.72}


def test_benchmark_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark 'imagenet1k'"):
        load_benchmark("imagenet1k")
    bad = tmp_path / "bad.toml"
    bad.write_text("[benchmark\nname = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml.*not valid TOML"):
        load_benchmark(bad)
    base = '[benchmark]\nname = "x"\nid = "cifar10"\nood = ["svhn"]\nimage_size = 32\narch = "resnet18"\n'
    with pytest.raises(ConfigError, match="lsun_c.*not in ood"):
        parse_benchmark(base + "[paper.msp]\nlsun_c = {fpr95 = 1.0, auroc = 2.0}\n")
    with pytest.raises(ConfigError, match=r"percentage"):
        parse_benchmark(base + "[paper.msp]\nsvhn = {fpr95 = 120.0, auroc = 2.0}\n")
    with pytest.raises(ConfigError, match="lacks arch"):
        parse_benchmark(base.replace('arch = "resnet18"\n', ""))
    ok = parse_benchmark(base + "[paper.msp]\nsvhn = {fpr95 = 1, auroc = 2.5}\n")
    assert ok.paper == {"msp": {"svhn": {"fpr95": 1.0, "auroc": 2.5}}} and ok.ood == ("svhn",)
    assert tomllib.loads((REPO / "examples" / "cifar10.toml").read_text())["benchmark"]["ood"][0] == "svhn"


def test_imagefolder_val_split_too_small(tmp_path):
    fd.write_image_folder(tmp_path / "one", ["a", "b"], 1)
    with pytest.raises(DataError, match="test split .* empty"):
        load(f"imagefolder:{tmp_path / 'one'}", tmp_path, "test", val_split=0.2)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "svhn", "textures", "imagenet100"])
@pytest.mark.parametrize("download", [False, True])
def test_a_data_root_that_is_a_file_is_named_as_the_cause(tmp_path, monkeypatch, name, download):
    """Was: "the data root … does not exist" (it does: as a file), or a FileExistsError from torchvision."""
    (tmp_path / "datafile").write_text("not a folder")
    monkeypatch.setenv("LBFOOD_DATA", str(tmp_path / "datafile"))
    opts = LoadOptions(root=data.default_root(), download=download, image_size=32)
    with pytest.raises(DataError) as e:
        data.get(name).load(opts, "test")
    assert str(e.value) == (f"{name}: the data root {tmp_path / 'datafile'} ($LBFOOD_DATA) is a file, not a folder: "
                            "point $LBFOOD_DATA or --data-root at the folder that holds your datasets "
                            "(e.g. --data-root ./data)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datafile"]
    with pytest.raises(DataError, match=f"the data root {tmp_path / 'datafile' / 'sub'} is under the file "):
        data.get(name).load(LoadOptions(root=tmp_path / "datafile" / "sub", image_size=32), "test")


@pytest.mark.parametrize("layout", ["split", "pool"])
def test_a_class_folder_linked_to_another_class_is_refused_naming_both(tmp_path, layout):
    """`train/kitty -> cat` was silently dropped (one class fewer, no word); now refused, as the README says.
    A link back up the tree is still not a class, and a link to a folder outside is an ordinary class."""
    import os

    root = tmp_path / "pets"
    pool = root / "train" if layout == "split" else root
    for split in (("train", "test") if layout == "split" else (".",)):
        fd.write_image_folder(root / split, ["cat", "dog"], n_per_class=3)
    os.symlink("cat", pool / "kitty")
    opts = dict(image_size=32, val_split=0.0 if layout == "split" else 0.5)
    with pytest.raises(DataError) as e:
        load(f"imagefolder:{root}", tmp_path, "train", **opts)
    assert str(e.value) == (f"imagefolder:{root}: the class folder {pool / 'kitty'} is a link to the class folder "
                            f"{pool / 'cat'}: one folder cannot be two classes; remove the link, or copy the images "
                            "if it is a class of its own")
    (pool / "kitty").unlink()
    fd.write_image_folder(tmp_path / "elsewhere", ["bird"], n_per_class=3)
    os.symlink(tmp_path / "elsewhere" / "bird", pool / "bird")
    os.symlink(".", pool / "loop")
    if layout == "split":
        fd.write_image_folder(root / "test", ["bird"], n_per_class=3)
    assert load(f"imagefolder:{root}", tmp_path, "train", **opts).classes == ("bird", "cat", "dog")

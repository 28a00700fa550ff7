"""lbfood.engine.evaluation.ood_labels: `--ood NAME=DATASET` and short labels for folder:PATH sets."""

import pytest

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.ood_labels import labels_for, split_labels


def test_split_labels():
    names, given = split_labels(["scenes=folder:/data/a b/x", "svhn", "folder:/data/k=v", "n.2=svhn"])
    assert names == ("folder:/data/a b/x", "svhn", "folder:/data/k=v", "svhn")
    assert given == {"folder:/data/a b/x": "scenes", "svhn": "n.2"}
    with pytest.raises(ConfigError, match="nothing after"):
        split_labels(["scenes="])
    with pytest.raises(ConfigError, match="both"):
        split_labels(["a=folder:/x", "a=folder:/y"])
    with pytest.raises(ConfigError, match="named twice"):
        split_labels(["a=folder:/x", "b=folder:/x"])


def test_labels_for_folders():
    ood = ["svhn", "folder:/mnt/a/test/images", "folder:/mnt/b/test/images", "folder:/mnt/c/textures/",
           "folder:/mnt/d/people"]
    assert labels_for(ood, {"folder:/mnt/d/people": "faces"}) == {
        "svhn": "svhn", "folder:/mnt/a/test/images": "a/test/images", "folder:/mnt/b/test/images": "b/test/images",
        "folder:/mnt/c/textures/": "textures", "folder:/mnt/d/people": "faces"}
    assert labels_for(["svhn", "folder:/x/svhn"]) == {"svhn": "svhn", "folder:/x/svhn": "x/svhn"}
    with pytest.raises(ConfigError, match="svhn would label two"):
        labels_for(["svhn", "folder:/x"], {"folder:/x": "svhn"})

import pytest
import torch

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation.features import Features
from lbfood.engine.models import build


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("resnet18", num_classes=3, width=0.125)


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    return [(x[:4], y[:4]), (x[4:], y[4:])]


def test_extract_matches_the_model(model, batches):
    model.train()
    f = fx.extract(model, batches)
    assert model.training  # the caller's mode is restored
    x = torch.cat([b[0] for b in batches])
    model.eval()
    with torch.no_grad():
        logits, z, outs = model(x), model.forward_features(x), model.forward_blocks(x)
    assert len(f) == 10
    torch.testing.assert_close(f.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.features, z.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    assert f.labels.dtype == torch.int64 and f.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert f.block_norms.shape == (10, 8) and f.jigsaw_block_norms is None  # ResNet-18: 8 residual blocks
    expected = torch.stack([o.clamp(min=0).flatten(2).norm(dim=2).mean(dim=1) for o in outs], dim=1)
    torch.testing.assert_close(f.block_norms, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.preds, logits.argmax(dim=1))
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (f.logits, f.features, f.block_norms))


def test_extract_options(model, batches):
    plain = fx.extract(model, batches)
    no_blocks = fx.extract(model, batches, blocks=False)
    assert no_blocks.block_norms is None
    torch.testing.assert_close(no_blocks.logits, plain.logits)
    jig = fx.extract(model, batches, jigsaw=True)
    assert jig.jigsaw_block_norms.shape == (10, 8)
    torch.testing.assert_close(jig.block_norms, plain.block_norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jig.logits, plain.logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(jig.jigsaw_block_norms, jig.block_norms)
    with pytest.raises(ConfigError):
        fx.extract(model, batches, blocks=False, jigsaw=True)
    with pytest.raises(ConfigError, match="normalise"):
        fx.extract(model, [(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2))])
    with pytest.raises(ConfigError, match="no batches"):
        fx.extract(model, [])


def test_feature_norm_hand_made():
    a = torch.tensor([[[[3.0, -4.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    # channel 0: ReLU leaves 3 → norm 3; channel 1: norm 5; mean over channels 4
    assert fx.feature_norm(a).tolist() == [4.0]


def test_jigsaw_shuffles_tiles():
    x = torch.arange(7 * 7, dtype=torch.float32).reshape(1, 1, 7, 7).repeat(2, 3, 1, 1)
    out = fx.jigsaw_puzzle(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out[:, :, 6, :] == 0).all() and (out[:, :, :, 6] == 0).all()  # 7 mod 3 leftover is zero

    def tiles(img):
        return sorted(img[0, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2].flatten().tolist() for i in range(3) for j in range(3))

    for b in range(2):
        assert tiles(out[b]) == tiles(x[b])  # the same nine tiles, moved
        assert torch.equal(out[b, 0], out[b, 2])  # one permutation for all channels of an image
    assert not torch.equal(out[0], out[1]) or not torch.equal(out[0], x[0])


def test_features_tensors_round_trip(tmp_path):
    from lbfood.engine import io

    f = Features(logits=torch.randn(5, 3), features=torch.rand(5, 8), labels=torch.arange(5),
                 block_norms=torch.rand(5, 4))
    io.save_tensors(tmp_path / "f.safetensors", f.to_tensors())
    g = Features.from_tensors(io.load_tensors(tmp_path / "f.safetensors"))
    for k, v in f.to_tensors().items():
        assert torch.equal(getattr(g, k), v)
    assert g.jigsaw_block_norms is None
    assert Features(logits=[[1.0, 2.0]], features=[[0.5]]).labels.tolist() == [-1]
    with pytest.raises(ConfigError):
        Features(logits=torch.zeros(5, 3), features=torch.zeros(4, 8))
    with pytest.raises(ConfigError):
        Features.from_tensors({"logits": torch.zeros(1, 2)})


def test_cached_extract(tmp_path, model, batches):
    calls = {"loader": 0, "forward": 0}
    real = model.forward_blocks

    def counting(x):
        calls["forward"] += 1
        return real(x)

    def make_loader():
        calls["loader"] += 1
        return batches

    model.forward_blocks = counting
    try:
        a = fx.cached_extract(tmp_path, "cifar10/test", model, make_loader, fingerprint="abc")
        assert calls == {"loader": 1, "forward": 2}
        files = list(tmp_path.glob("features-*.safetensors"))
        assert len(files) == 1 and files[0].name.startswith("features-cifar10_test-")
        b = fx.cached_extract(tmp_path, "cifar10/test", model, make_loader, fingerprint="abc")
        assert calls == {"loader": 1, "forward": 2}  # a hit: the model did not run
        for k, v in a.to_tensors().items():
            assert torch.equal(getattr(b, k), v)
        fx.cached_extract(tmp_path, "cifar10/test", model, make_loader, fingerprint="other-weights")
        assert calls == {"loader": 2, "forward": 4}  # fingerprint mismatch: recomputed
        fx.cached_extract(tmp_path, "cifar10/test", model, make_loader, fingerprint="other-weights", jigsaw=True)
        assert calls["loader"] == 3  # different options: recomputed
        files[0].write_bytes(b"garbage")
        c = fx.cached_extract(tmp_path, "cifar10/test", model, make_loader, fingerprint="abc")
        assert calls["loader"] == 4 and torch.equal(c.logits, a.logits)  # unreadable file: recomputed
    finally:
        del model.forward_blocks


def test_cache_from_the_stage_layout_is_not_read(tmp_path, model, batches):
    """A cache written when block norms were one per stage (format 1) is a miss, not 4 norms read as 8."""
    from lbfood.engine import io

    fresh = fx.cached_extract(tmp_path, "cifar10/test", model, lambda: batches, fingerprint="abc")
    path = fx.cache_path(tmp_path, "cifar10/test")
    old = {**fresh.to_tensors(), "block_norms": torch.ones(10, 4)}
    io.save_tensors(path, old, metadata={"format": "lbfood-features-1", "key": "cifar10/test", "fingerprint": "abc",
                                         "blocks": "True", "jigsaw": "False", "precision": "fp32"})
    again = fx.cached_extract(tmp_path, "cifar10/test", model, lambda: batches, fingerprint="abc")
    assert again.block_norms.shape == (10, 8)
    torch.testing.assert_close(again.block_norms, fresh.block_norms)


def test_block_means_average_space_then_channel_groups(model, batches):
    g = torch.Generator().manual_seed(2)
    outs = [torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 64, 2, 2, generator=g), torch.randn(2, 48, 1, 1, generator=g)]
    m = fx.block_means_of(outs)
    assert m.shape == (2, 4 + 32 + 24)  # ≤ 32 groups: all 4 channels, 64 in pairs, 48 in 24 pairs
    torch.testing.assert_close(m[:, :4], outs[0].mean(dim=(2, 3)))
    torch.testing.assert_close(m[:, 4:36], outs[1].mean(dim=(2, 3)).reshape(2, 32, 2).mean(dim=2))
    torch.testing.assert_close(m[:, 36:], outs[2][:, :, 0, 0].reshape(2, 24, 2).mean(dim=2))
    feats = fx.extract(model, batches)  # every residual block's means, the last block's being the features'
    assert feats.block_means.shape == (10, 8 + 8 + 16 + 16 + 32 + 32 + 32 + 32)
    torch.testing.assert_close(feats.block_means[:, -32:], feats.features.reshape(10, 32, 2).mean(dim=2))


def test_a_cache_without_block_means_is_extracted_again(tmp_path, model, batches):
    """Written before the far-OOD gate read block means: a miss, so the gate gets its view."""
    from lbfood.engine import io

    calls = {"loader": 0}

    def make_loader():
        calls["loader"] += 1
        return batches

    fx.cached_extract(tmp_path, "k", model, make_loader, fingerprint="abc")
    (path,) = tmp_path.glob("features-*.safetensors")
    old = {k: v for k, v in io.load_tensors(path).items() if k != "block_means"}
    io.save_tensors(path, old, metadata=io.read_metadata(path))
    again = fx.cached_extract(tmp_path, "k", model, make_loader, fingerprint="abc")
    assert calls["loader"] == 2 and again.block_means is not None

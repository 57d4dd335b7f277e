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

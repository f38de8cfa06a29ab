"""The networks, the source notebook's checkpoints, and our model files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from colorize.color import NOTEBOOK_NORMALIZATION
from colorize.engine import Colorizer
from colorize.model import (
    DiscriminatorConfig,
    GeneratorConfig,
    build_discriminator,
    build_generator,
    config_from_state_dict,
)
from colorize.modelfile import ModelNotFoundError, load_model, new_card, save_model
from colorize.storage import open_storage


# --- An independent copy of the source notebook's generator, written here for the test only. ---
class _Down(nn.Module):
    def __init__(self, i, o, norm=True, drop=0.0):
        super().__init__()
        layers = [nn.Conv2d(i, o, 4, 2, 1, bias=False)]
        if norm:
            layers.append(nn.InstanceNorm2d(o))
        layers.append(nn.LeakyReLU(0.2))
        if drop:
            layers.append(nn.Dropout(drop))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class _Up(nn.Module):
    def __init__(self, i, o, drop=0.0):
        super().__init__()
        layers = [nn.ConvTranspose2d(i, o, 4, 2, 1, bias=False), nn.InstanceNorm2d(o), nn.ReLU(inplace=True)]
        if drop:
            layers.append(nn.Dropout(drop))
        self.model = nn.Sequential(*layers)

    def forward(self, x, skip):
        return torch.cat((self.model(x), skip), 1)


class NotebookGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.down1, self.down2, self.down3 = _Down(3, 64, norm=False), _Down(64, 128), _Down(128, 256)
        self.down4, self.down5 = _Down(256, 512, drop=0.5), _Down(512, 512, drop=0.5)
        self.down6, self.down7 = _Down(512, 512, drop=0.5), _Down(512, 512, drop=0.5)
        self.down8 = _Down(512, 512, norm=False, drop=0.5)
        self.up1, self.up2 = _Up(512, 512, drop=0.5), _Up(1024, 512, drop=0.5)
        self.up3, self.up4 = _Up(1024, 512, drop=0.5), _Up(1024, 512, drop=0.5)
        self.up5, self.up6, self.up7 = _Up(1024, 256), _Up(512, 128), _Up(256, 64)
        self.final = nn.Sequential(nn.Upsample(scale_factor=2), nn.ZeroPad2d((1, 0, 1, 0)),
                                   nn.Conv2d(128, 3, 4, padding=1), nn.Tanh())  # fmt: skip

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        d4 = self.down4(d3)  # noqa: E702
        d5 = self.down5(d4)
        d6 = self.down6(d5)
        d7 = self.down7(d6)
        d8 = self.down8(d7)  # noqa: E702
        u1 = self.up1(d8, d7)
        u2 = self.up2(u1, d6)
        u3 = self.up3(u2, d5)
        u4 = self.up4(u3, d4)  # noqa: E702
        u5 = self.up5(u4, d3)
        u6 = self.up6(u5, d2)
        u7 = self.up7(u6, d1)  # noqa: E702
        return self.final(u7)


@pytest.fixture(scope="module")
def notebook_pth(tmp_path_factory):
    torch.manual_seed(0)
    net = NotebookGenerator()
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
    path = tmp_path_factory.mktemp("nb") / "generator_100.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def test_notebook_state_dict_keys_are_ours(notebook_pth):
    net, _ = notebook_pth
    ours = build_generator(GeneratorConfig(in_channels=3, out_channels=3, width=64, depth=8))
    assert list(ours.state_dict()) == list(net.state_dict())
    assert [k for k in net.state_dict()][0] == "down1.model.0.weight"
    assert [k for k in net.state_dict()][-1] == "final.2.bias"


def test_notebook_pth_loads_strictly_and_gives_the_same_pixels(notebook_pth):
    net, path = notebook_pth
    model = load_model(str(path))
    assert model.color_mode == "rgb" and model.config.width == 64 and model.config.depth == 8
    gray = np.random.default_rng(0).random((2, 256, 256)).astype(np.float32)

    # The notebook's own forward pass and denormalisation.
    norm = NOTEBOOK_NORMALIZATION
    x = torch.from_numpy((gray - norm["gray_mean"][0]) / norm["gray_std"][0])[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        y = net(x).numpy()
    expected = np.clip(
        y * np.array(norm["color_std"])[None, :, None, None] + np.array(norm["color_mean"])[None, :, None, None], 0, 1
    ).transpose(0, 2, 3, 1)

    ours = Colorizer(model, device="cpu").predict_rgb(gray)
    assert np.abs(ours - expected).max() <= 1e-4


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"down1.model.0.weight": Evil()}, bad)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_model(str(bad))


def test_discriminator_matches_the_notebook_layout():
    disc = build_discriminator(DiscriminatorConfig(in_channels=6, width=64))
    keys = list(disc.state_dict())
    assert keys == ["model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias", "model.5.weight",
                    "model.5.bias", "model.8.weight", "model.8.bias", "model.12.weight"]  # fmt: skip
    out = disc(torch.zeros(1, 3, 256, 256), torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 1, 16, 16)


def test_width_depth_and_channels_are_parameters():
    g7 = build_generator(GeneratorConfig(in_channels=1, out_channels=2, width=8, depth=7)).eval()
    with torch.no_grad():
        assert g7(torch.zeros(1, 1, 128, 128)).shape == (1, 2, 128, 128)
        assert g7(torch.zeros(1, 1, 256, 256)).shape == (1, 2, 256, 256)
    cfg = config_from_state_dict(g7.state_dict())
    assert (cfg.width, cfg.depth, cfg.in_channels, cfg.out_channels) == (8, 7, 1, 2)
    with pytest.raises(ValueError, match="unknown generator arch 'resnet'; valid: unet"):
        build_generator(GeneratorConfig(arch="resnet"))


def test_safetensors_fp16_round_trip_loads_as_fp32(tmp_path):
    cfg = GeneratorConfig(width=8)
    gen = build_generator(cfg)
    card = save_model(open_storage(str(tmp_path)), gen, new_card("t", cfg, "lab"), dtype=torch.float16)
    assert card["dtype"] == "float16" and card["model_id"].startswith("t@")
    loaded = load_model(str(tmp_path))
    assert all(p.dtype == torch.float32 for p in loaded.generator.parameters())
    ref = gen.state_dict()["down1.model.0.weight"]
    assert torch.allclose(loaded.generator.state_dict()["down1.model.0.weight"], ref, atol=1e-3)
    # The lone .safetensors file describes itself.
    alone = load_model(str(tmp_path / "generator.safetensors"))
    assert alone.model_id == loaded.model_id


def test_weights_that_do_not_match_their_card_are_refused(tmp_path):
    make = GeneratorConfig(width=4)
    save_model(open_storage(str(tmp_path)), build_generator(make), new_card("t", make, "lab"))
    card = json.loads((tmp_path / "card.json").read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="do not match their card"):
        load_model(str(tmp_path))


def test_missing_model_says_how_to_pass_one(tmp_path):
    with pytest.raises(ModelNotFoundError, match="--model"):
        load_model(str(tmp_path / "nowhere"))
    buf = io.BytesIO()
    torch.save([1, 2, 3], buf)
    (tmp_path / "list.pth").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="state_dict"):
        load_model(str(tmp_path / "list.pth"))


def test_a_registrys_production_is_checked_whole_and_a_mistyped_registry_named(tmp_path):
    from colorize.modelfile import resolve_model_spec
    from colorize.registry import Registry

    with pytest.raises(ModelNotFoundError, match=r"no model versions in .*nowhere \(is it a registry\?"):
        resolve_model_spec(None, str(tmp_path / "nowhere"))
    registry = Registry(str(tmp_path / "registry"))
    config = GeneratorConfig(width=4, depth=5)
    registry.register(build_generator(config), new_card("tiny", config, "lab"))
    registry.promote("v1")
    assert resolve_model_spec(None, registry.uri) == str(tmp_path / "registry" / "versions" / "v1")
    (tmp_path / "registry" / "aliases.json").write_text('{"production": "v9"}')  # a version deleted since
    with pytest.raises(ModelNotFoundError, match="registry .* has no version v9; promote a version"):
        resolve_model_spec(None, registry.uri)
    (tmp_path / "registry" / "aliases.json").write_text('{"production": "v1"}')
    (tmp_path / "registry" / "versions" / "v1" / "generator.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="production, v1, is damaged: it has no weights"):
        resolve_model_spec(None, registry.uri)


def test_without_any_model_the_error_says_how_to_pass_one(tmp_path, monkeypatch):
    from colorize import modelfile

    monkeypatch.setattr(modelfile, "PACKAGED_DIR", tmp_path / "no-starter-here")
    with pytest.raises(ModelNotFoundError, match=r"pass one with --model PATH"):
        modelfile.resolve_model_spec(None, None)


def test_the_packaged_starter_model_is_the_default_and_small():
    from colorize.modelfile import PACKAGED_DIR, WEIGHTS_FILE, resolve_model_spec

    assert resolve_model_spec(None, None) == str(PACKAGED_DIR)
    model = load_model()
    assert model.model_id.startswith("starter@") and model.color_mode == "lab"
    assert model.card["dtype"] == "float16" and (PACKAGED_DIR / WEIGHTS_FILE).stat().st_size <= 30e6
    assert all(p.dtype == torch.float32 for p in model.generator.parameters())  # loaded as fp32 for the CPU


def test_a_relative_model_path_resolves_to_one_any_process_can_load(tiny_model, monkeypatch):
    from colorize.modelfile import resolve_model_spec

    monkeypatch.chdir(tiny_model.parent)  # a Dask worker elsewhere has another working folder
    assert resolve_model_spec(tiny_model.name) == str(tiny_model.resolve())

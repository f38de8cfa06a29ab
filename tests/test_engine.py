"""The inference engine: devices, backends, and the ONNX Runtime path that CPUs use by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from colorize import onnx_backend
from colorize.color import despeckle_ab
from colorize.engine import Colorizer, model_input, pick_backend, pick_device
from colorize.modelfile import load_model
from tests.helpers import gray_image


def test_onnx_runtime_gives_the_same_chroma_as_pytorch(tiny_model):
    gray = np.stack([model_input(gray_image(200, 300, seed=i)) for i in range(3)])
    by_torch = Colorizer(load_model(str(tiny_model)), device="cpu", backend="torch").predict_ab(gray)
    by_onnx = Colorizer(load_model(str(tiny_model)), device="cpu", backend="onnx").predict_ab(gray)
    assert by_onnx.shape == by_torch.shape == (3, 256, 256, 2)
    assert np.abs(by_onnx - by_torch).max() < 1e-3  # ab units


def test_the_exported_graph_is_cached_per_model(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("COLORIZE_CACHE_DIR", str(tmp_path))
    model = load_model(str(tiny_model))
    first = onnx_backend.cached_graph(model)
    stamp = first.stat().st_mtime_ns
    exports = []
    monkeypatch.setattr(onnx_backend, "export", lambda m: exports.append(m) or b"")
    assert onnx_backend.cached_graph(load_model(str(tiny_model))) == first
    assert not exports and first.stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "onnx" and model.card["sha256"] in first.name


def test_auto_picks_onnx_on_cpu_and_refuses_impossible_choices():
    cpu = pick_device("cpu")
    assert pick_backend("auto", cpu) == "onnx"
    assert pick_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        pick_backend("tensorrt", cpu)
    with pytest.raises(ValueError, match="device must be one of"):
        pick_device("tpu")


def test_model_input_squashes_to_the_model_size_in_unit_range():
    x16 = model_input(gray_image(300, 500, dtype=np.uint16))
    x8 = model_input(gray_image(300, 500))
    assert x16.shape == x8.shape == (256, 256) and x16.dtype == np.float32
    assert 0 <= x8.min() and x8.max() <= 1 and np.abs(x16 - x8).mean() < 0.01


def _plain_and_calibrated(model: Path, **calibration: float) -> tuple[Colorizer, Colorizer]:
    """The same model twice: as saved, and with ``calibration`` in its card."""
    calibrated_model = load_model(str(model))
    calibrated_model.card.update(calibration)
    plain = Colorizer(load_model(str(model)), device="cpu", backend="torch")
    return plain, Colorizer(calibrated_model, device="cpu", backend="torch")


def test_a_cards_chroma_scale_scales_the_predicted_colour(tiny_model):
    gray = model_input(gray_image(64, 64))[None]
    plain, calibrated = _plain_and_calibrated(tiny_model, chroma_scale=0.5)
    assert np.allclose(calibrated.predict_ab(gray), 0.5 * plain.predict_ab(gray), atol=1e-5)


def test_a_cards_chroma_median_despeckles_the_predicted_colour_on_both_paths(tiny_model):
    gray = model_input(gray_image(64, 64))[None]
    plain, calibrated = _plain_and_calibrated(tiny_model, chroma_median=5)
    ab = calibrated.predict_ab(gray)
    assert np.array_equal(ab, despeckle_ab(plain.predict_ab(gray), 5))
    assert not np.allclose(ab, plain.predict_ab(gray), atol=0.5)  # it did something on a random model
    on_device = calibrated.predict_ab_tensor(torch.from_numpy(gray)).permute(0, 2, 3, 1).numpy()
    assert np.abs(on_device - ab).max() <= 1.0  # the tensor path: same median, L within 0.25

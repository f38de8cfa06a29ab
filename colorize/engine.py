"""Inference: a generator on a device, turning batches of small gray images into chroma.

The engine works at the model's size (256x256). Going from a scan to the model's input is
:func:`model_input`; going back to full resolution is :func:`colorize.color.merge_chroma`.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import numpy as np
import torch

from colorize import tensor_color
from colorize.color import (
    AB_SCALE,
    L_SCALE,
    NOTEBOOK_NORMALIZATION,
    denormalize_ab,
    despeckle_ab,
    gray_to_lightness,
    normalize_l,
    rgb_to_lab,
    shrink_gray,
)
from colorize.modelfile import LoadedModel

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "onnx")


def default_cpu_threads() -> int:
    """Model threads on a CPU: half the cores, leaving the rest to decoding and encoding."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def pick_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ONNX Runtime on the CPU when it is installed (about 2x less CPU), else PyTorch."""
    from colorize import onnx_backend

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "onnx" and device.type != "cpu":
        raise ValueError("the onnx backend runs on the CPU only; use --backend torch on a GPU")
    if backend == "onnx" and not onnx_backend.available():
        raise RuntimeError("the onnx backend needs onnxruntime: pip install onnxruntime")
    if backend == "auto":
        return "onnx" if device.type == "cpu" and onnx_backend.available() else "torch"
    return backend


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU. ``cuda`` without a GPU is an error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(device)


def model_input(gray: np.ndarray, size: int = 256) -> np.ndarray:
    """Reduce a full-resolution scan to the model's input size.

    Args:
        gray: (H, W) uint8 or uint16 sRGB gray.
        size: the model's square input side.

    Returns:
        (size, size) float32 gray in [0, 1]. The aspect ratio is not kept: the model's chroma is
        stretched back to (H, W) afterwards, so every pixel of the scan gets colour.
    """
    return shrink_gray(gray, size, size)


# The card's keys that say how strongly, and how smoothly, the model's chroma is applied (below).
CALIBRATION_KEYS = ("chroma_scale", "chroma_median")


class Colorizer:
    """A loaded generator on a device, predicting chroma for batches of 256x256 gray images."""

    def __init__(self, model: LoadedModel, device: str = "auto", backend: str = "auto", threads: int | None = None):
        self.model = model
        self.device = pick_device(device)
        self.backend = pick_backend(backend, self.device)
        self.image_size = int(model.card.get("image_size", 256))
        # A calibration of how strongly the model's colour is applied, chosen after training and
        # recorded in its card (see MODEL_CARD.md); 1 leaves the model's chroma as it is.
        self.chroma_scale = float(model.card.get("chroma_scale", 1.0))
        # Likewise: the side of the median filter that removes specks from the chroma (1: none).
        self.chroma_median = int(model.card.get("chroma_median", 1))
        self.generator = model.generator.to(self.device).eval()
        self._cuda = self.device.type == "cuda"
        self._ort = None
        if self.backend == "onnx":
            from colorize.onnx_backend import OrtGenerator

            self._ort = OrtGenerator(model, threads or default_cpu_threads())
        elif threads:
            torch.set_num_threads(threads)
        if self._cuda:
            self.generator = self.generator.to(memory_format=torch.channels_last)
        norm = model.card.get("normalization") or NOTEBOOK_NORMALIZATION
        if model.color_mode == "rgb":
            self._gray_mean = float(norm["gray_mean"][0])
            self._gray_std = float(norm["gray_std"][0])
            self._color_mean = np.array(norm["color_mean"], dtype=np.float32)
            self._color_std = np.array(norm["color_std"], dtype=np.float32)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self._cuda:
            t = t.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return t

    @torch.inference_mode()
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw generator forward pass: (B, C_in, S, S) float32 -> (B, C_out, S, S) float32 in [-1, 1]."""
        if self._ort is not None:
            return self._ort(x)
        return self._forward_tensor(self._to_tensor(x)).cpu().numpy()

    def _forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, S, S) float32 on the device -> (B, C_out, S, S) float32 on the device."""
        if self._ort is not None:
            return torch.from_numpy(self._ort(x.cpu().numpy())).to(x.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self._cuda else nullcontext()
        with autocast:
            y = self.generator(x.contiguous(memory_format=torch.channels_last) if self._cuda else x)
        return y.float()

    def predict_rgb(self, gray: np.ndarray) -> np.ndarray:
        """``rgb``-mode models only: the notebook's own output, denormalised.

        Args:
            gray: (B, S, S) float32 gray in [0, 1].

        Returns:
            (B, S, S, 3) float32 RGB in [0, 1], as the notebook computes ``out * std + mean``, clipped.
        """
        x = (gray - self._gray_mean) / self._gray_std
        x = np.repeat(x[:, None], 3, axis=1).astype(np.float32)  # (B, 3, S, S): gray as 3 channels
        y = self.forward(x).transpose(0, 2, 3, 1)  # (B, S, S, 3)
        return np.clip(y * self._color_std + self._color_mean, 0.0, 1.0)

    def predict_ab(self, gray: np.ndarray) -> np.ndarray:
        """Chroma for a batch of model-size gray images.

        Args:
            gray: (B, S, S) float32 gray in [0, 1], as from :func:`model_input`.

        Returns:
            (B, S, S, 2) float32 ab, times the card's ``chroma_scale`` and through its ``chroma_median``
            (1 and none unless the model was calibrated).
        """
        if self.model.color_mode == "rgb":
            return rgb_to_lab(self.predict_rgb(gray))[..., 1:]
        x = normalize_l(gray_to_lightness(gray)).reshape(len(gray), 1, *gray.shape[1:])  # (B, 1, S, S)
        ab = denormalize_ab(self.forward(x).transpose(0, 2, 3, 1))  # (B, S, S, 2)
        return despeckle_ab(ab * self.chroma_scale if self.chroma_scale != 1.0 else ab, self.chroma_median)

    @torch.inference_mode()
    def predict_ab_tensor(self, gray: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_ab` for images already on the device (``lab``-mode models).

        Args:
            gray: (B, S, S) float32 gray in [0, 1], on :attr:`device`.

        Returns:
            (B, 2, S, S) float32 ab on :attr:`device`, calibrated as :meth:`predict_ab`'s.
        """
        if self.model.color_mode != "lab":
            raise ValueError("predict_ab_tensor needs a lab-mode model")
        x = (tensor_color.gray_to_lightness(gray) / L_SCALE - 1.0)[:, None]  # (B, 1, S, S), as normalize_l
        return tensor_color.despeckle_ab(self._forward_tensor(x) * (AB_SCALE * self.chroma_scale), self.chroma_median)

"""pix2pix training: LSGAN + 100 x L1, Adam, linear decay, random resize-crop and flip.

``train(cfg, train_pairs, val_pairs, checkpoint_dir)`` is the whole job; it resumes from
``checkpoint_dir/last.pt`` when asked, restoring weights, optimisers, schedulers, epoch, EMA and
every random generator, so a killed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import platform
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from colorize.color import NOTEBOOK_NORMALIZATION, lightness_lut, normalize_ab, normalize_l, rgb_to_lab
from colorize.engine import CALIBRATION_KEYS, Colorizer, pick_device
from colorize.evaluate import QualityReport, colorize_like_production, eval_pairs, evaluate, sample_grid
from colorize.model import (
    DiscriminatorConfig,
    GeneratorConfig,
    build_discriminator,
    build_generator,
    init_weights,
)
from colorize.modelfile import LoadedModel, new_card
from colorize.storage import open_storage
from colorize.training.pairs import LoadedPair, fingerprint

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Every training hyperparameter. Defaults are the source notebook's where it has one."""

    color_mode: str = "lab"  # "rgb" reproduces the notebook
    width: int = 64  # generator width (notebook: 64)
    depth: int = 8  # U-Net levels: 8 needs 256 crops, 7 trains on 128 and runs at 256
    dropout: float = 0.5
    disc_width: int = 64
    image_size: int = 256  # training crop side
    load_size: int = 286  # images are held at load_size x load_size (the notebook's 286 jitter)
    min_crop_scale: float = 0.895  # crops take [min, 1] of load_size, resized to image_size (256/286)
    # Share of crops blurred whole (0 = off), by a Gaussian of sigma drawn from [1, blur_sigma] pixels
    # at image_size: a sharp photo's foliage, blurred, is a labelled example of an out-of-focus one.
    blur_probability: float = 0.0
    blur_sigma: float = 8.0
    # Share of crops (0 = off, lab only) whose gray input, not their colour, is shaded by a smooth
    # random field of gains in [1 - shade, 1 + shade]: teaches that light and shadow across a region
    # do not change its colour (the starter model's blurred backgrounds drift blue where brighter).
    shade_probability: float = 0.0
    shade: float = 0.2
    # Share of crops turned upside down, input and target alike (0 = off): the starter model paints a
    # bright blurred background blue where it sits high in the frame, as skies do; upside down, the
    # position says nothing, and only what the region looks like can tell sky from foliage.
    vflip_probability: float = 0.0
    epochs: int = 100
    batch_size: int = 1  # pix2pix's
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 100.0
    # Weight of an edge-aware smoothness loss on the predicted chroma (0 = off): colour that varies
    # where the gray does not is a guess the gray cannot support.
    lambda_smooth: float = 0.0
    # Colour rebalancing of the L1 loss (0 = off, 1 = Zhang et al. 2016's weights, lab mode only):
    # each target pixel's loss is weighted by how rare its ab is in the training photos, so that
    # greens and blues are not averaged away into the browns and greys most pixels have.
    rebalance: float = 0.0
    decay_epoch: int = 100  # linear decay to 0 from here to the last epoch (notebook: none in effect)
    l1_warmup_epochs: int = 0  # epochs of L1 alone before the GAN loss starts
    ema_decay: float = 0.0  # 0 = off; else the exported generator is an EMA of the weights
    val_fraction: float = 0.1
    eval_every: int = 5
    checkpoint_every: int = 5
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    # Batch-building processes. 0 (in the training process) by default: it makes ~550 batches of
    # 256px crops per second on one core, and OpenCV's thread pool misbehaves in forked workers.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.color_mode not in ("lab", "rgb"):
            raise ValueError(f"color_mode must be lab or rgb, not {self.color_mode!r}")
        if self.image_size % (2**self.depth) or self.image_size < 2**self.depth:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**depth = {2**self.depth}; "
                f"use depth {int(np.log2(self.image_size))} or less"
            )
        if self.load_size < self.image_size:
            raise ValueError(
                f"load_size {self.load_size} is below image_size {self.image_size}: every crop would be "
                "enlarged, teaching the model blur; crops are taken from photos held at load_size"
            )
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError("min_crop_scale must be in (0, 1]")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if not 0 <= self.blur_probability <= 1 or self.blur_sigma < 1:
            raise ValueError("blur_probability must be in [0, 1] and blur_sigma at least 1")
        if not 0 <= self.shade_probability <= 1 or not 0 <= self.shade < 1:
            raise ValueError("shade_probability must be in [0, 1] and shade in [0, 1)")
        if self.shade_probability and self.color_mode != "lab":
            raise ValueError("shading changes the gray but not the colour, so it needs color_mode lab")
        if not 0 <= self.vflip_probability <= 1:
            raise ValueError("vflip_probability must be in [0, 1]")
        if not 0 <= self.rebalance <= 1:
            raise ValueError("rebalance must be in [0, 1]")
        if self.rebalance and self.color_mode != "lab":
            raise ValueError("rebalance weights ab, so it needs color_mode lab")

    def generator_config(self) -> GeneratorConfig:
        cin, cout = (1, 2) if self.color_mode == "lab" else (3, 3)
        return GeneratorConfig(
            in_channels=cin, out_channels=cout, width=self.width, depth=self.depth, dropout=self.dropout
        )

    def discriminator_config(self) -> DiscriminatorConfig:
        g = self.generator_config()
        return DiscriminatorConfig(in_channels=g.in_channels + g.out_channels, width=self.disc_width)

    def non_defaults(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


# Fields that may change when a run is resumed (to train longer, or on another device).
RESUMABLE_CHANGES = frozenset({"epochs", "decay_epoch", "eval_every", "checkpoint_every", "device", "amp", "workers"})


def lr_factor(epoch: int, epochs: int, decay_epoch: int) -> float:
    """Learning-rate multiplier for a 1-based epoch: 1 until ``decay_epoch``, then linear to 0 at the end."""
    if epoch <= decay_epoch or epochs <= decay_epoch:
        return 1.0
    return max(0.0, 1.0 - (epoch - decay_epoch) / (epochs - decay_epoch + 1))


@dataclass
class TrainResult:
    generator: nn.Module  # CPU, eval mode; the EMA weights when EMA is on
    card: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    grid: np.ndarray | None = None  # (H, W, 3) uint8: gray | output | truth, one val image per row


class _Batches(torch.utils.data.Dataset):
    """Random resize-crop + flip batches from in-memory pairs.

    Item ``k`` of an epoch is a whole batch, built from ``(indices, seed)``: the seeds are drawn
    by the trainer's one generator, so the crops are the same whether batches are built in this
    process or in DataLoader workers, and a resumed run draws exactly what the killed one would.
    """

    def __init__(self, cfg: TrainConfig, pairs: Sequence[LoadedPair]):
        self.cfg = cfg
        s = cfg.load_size
        self.gray = [cv2.resize(p.gray, (s, s), interpolation=cv2.INTER_AREA) for p in pairs]
        self.rgb = [cv2.resize(p.rgb, (s, s), interpolation=cv2.INTER_AREA) for p in pairs]
        self.specs: list[tuple[np.ndarray, int]] = []
        norm = NOTEBOOK_NORMALIZATION
        self._gray_mean, self._gray_std = norm["gray_mean"][0], norm["gray_std"][0]
        self._color_mean = np.array(norm["color_mean"], np.float32)
        self._color_std = np.array(norm["color_std"], np.float32)

    @property
    def n_images(self) -> int:
        return len(self.gray)

    def plan_epoch(self, rng: np.random.Generator) -> None:
        """Draw this epoch's order and one seed per batch."""
        order = rng.permutation(self.n_images)
        starts = range(0, len(order), self.cfg.batch_size)
        seeds = rng.integers(0, 2**63 - 1, size=len(starts))
        self.specs = [(order[b : b + self.cfg.batch_size], int(seed)) for b, seed in zip(starts, seeds, strict=True)]

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices, seed = self.specs[k]
        return self.batch(indices, np.random.default_rng(seed))

    def _crop(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg, s = self.cfg, self.cfg.load_size
        side = int(round(s * rng.uniform(cfg.min_crop_scale, 1.0)))
        y, x = int(rng.integers(0, s - side + 1)), int(rng.integers(0, s - side + 1))
        flip = bool(rng.random() < 0.5)
        # Drawn only when on, so that runs without blur draw the crops they always drew.
        sigma = (
            float(rng.uniform(1.0, cfg.blur_sigma))
            if cfg.blur_probability and rng.random() < cfg.blur_probability
            else 0.0
        )
        gains = (
            rng.uniform(1 - cfg.shade, 1 + cfg.shade, size=(SHADE_GRID, SHADE_GRID)).astype(np.float32)
            if cfg.shade_probability and rng.random() < cfg.shade_probability
            else None
        )
        vflip = bool(cfg.vflip_probability and rng.random() < cfg.vflip_probability)
        out = []
        for img in (self.gray[i], self.rgb[i]):
            crop = img[y : y + side, x : x + side]
            interp = cv2.INTER_AREA if side > cfg.image_size else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (cfg.image_size, cfg.image_size), interpolation=interp)
            if sigma:
                crop = cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
            crop = crop[::-1] if vflip else crop
            out.append(crop[:, ::-1] if flip else crop)
        if gains is not None:
            out[0] = shade_gray(out[0], gains)
        return out[0], out[1]

    def batch(self, indices: Sequence[int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) tensors: lab (B,1,S,S), (B,2,S,S); rgb (B,3,S,S) both, normalised."""
        grays, rgbs = zip(*(self._crop(int(i), rng) for i in indices), strict=True)
        gray = np.stack(grays)  # (B, S, S) uint8
        rgb = np.stack(rgbs).astype(np.float32) / 255.0  # (B, S, S, 3)
        if self.cfg.color_mode == "lab":
            x = normalize_l(lightness_lut(8)[gray])[:, None]
            y = normalize_ab(rgb_to_lab(rgb)[..., 1:]).transpose(0, 3, 1, 2)
        else:
            g = (gray.astype(np.float32) / 255.0 - self._gray_mean) / self._gray_std
            x = np.repeat(g[:, None], 3, axis=1)
            y = ((rgb - self._color_mean) / self._color_std).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


SHADE_GRID = 3  # gains drawn on a 3x3 grid, so the shading varies over about a third of a crop


def shade_gray(gray: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Light and shadow over a gray image: ``gray`` times a smooth field through ``gains``.

    Args:
        gray: (S, S) uint8.
        gains: (G, G) float32 gains, placed at the centres of a GxG grid and interpolated bicubically.

    Returns:
        (S, S) uint8, clipped to [0, 255].
    """
    field = cv2.resize(gains, gray.shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(gray.astype(np.float32) * field + 0.5, 0, 255).astype(np.uint8)


SMOOTH_SHARPNESS = 10.0


def edge_aware_smoothness(pred: torch.Tensor, gray: torch.Tensor, sharpness: float = SMOOTH_SHARPNESS) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of ``pred``, each weighted by
    ``exp(-sharpness * |the same difference of gray|)``: changes of colour cost little across an
    edge of the gray and fully where the gray is flat.

    Args:
        pred: (N, C, H, W) float, the generator's output (normalised, about [-1, 1]).
        gray: (N, 1 or 3, H, W) float, the generator's input, normalised to [-1, 1].

    Returns:
        A scalar tensor, 0 for a constant ``pred``.
    """
    g = gray.mean(1, keepdim=True)
    cost = pred.new_zeros(())
    for dim in (2, 3):
        dp = pred.diff(dim=dim).abs().mean(1, keepdim=True)
        dg = g.diff(dim=dim).abs()
        cost = cost + (dp * torch.exp(-sharpness * dg)).mean()
    return cost


REBALANCE_BINS = 22  # ab bins per axis over [-110, 110]: 10 units each, Zhang et al.'s grid
REBALANCE_MIX = 0.5  # their share of a uniform prior in the smoothed distribution


def ab_bins(ab: torch.Tensor, bins: int = REBALANCE_BINS) -> torch.Tensor:
    """Flat bin index of each pixel's chroma.

    Args:
        ab: (N, 2, H, W) float, normalised ab (``normalize_ab``: about [-1, 1]).

    Returns:
        (N, H, W) int64 in [0, bins**2): ``a_bin * bins + b_bin``; values outside [-1, 1] fall in
        the edge bins.
    """
    idx = ((ab + 1) * (bins / 2)).floor().long().clamp_(0, bins - 1)
    return idx[:, 0] * bins + idx[:, 1]


def rebalance_weights(rgbs: Sequence[np.ndarray], strength: float, bins: int = REBALANCE_BINS) -> torch.Tensor:
    """Loss weight per ab bin, from the chroma of the training photos (Zhang et al. 2016, sec. 2.2).

    The empirical distribution of ab is smoothed (Gaussian, 5 ab units), mixed half and half with a
    uniform one over the bins the photos use, inverted, raised to ``strength`` and scaled so that
    the expected weight of a training pixel is 1: the L1 loss keeps its size, and a pixel of a rare
    colour counts for more than one of the common greys and browns.

    Args:
        rgbs: uint8 sRGB photos, each (H, W, 3); every 4th pixel of each is counted.
        strength: 0 gives all ones, 1 the paper's weights.

    Returns:
        (bins**2,) float32, indexed by :func:`ab_bins`.
    """
    counts = torch.zeros(bins * bins, dtype=torch.float64)
    for rgb in rgbs:
        ab = normalize_ab(rgb_to_lab(rgb[::4, ::4].astype(np.float32) / 255.0)[..., 1:])
        idx = ab_bins(torch.from_numpy(np.ascontiguousarray(ab.transpose(2, 0, 1)))[None])
        counts += torch.bincount(idx.flatten(), minlength=bins * bins).double()
    p = (counts / counts.sum()).numpy().reshape(bins, bins)
    smooth = cv2.GaussianBlur(p, (0, 0), 0.5, borderType=cv2.BORDER_CONSTANT).ravel()
    used = int((counts > 0).sum())
    weights = (1.0 / ((1 - REBALANCE_MIX) * smooth + REBALANCE_MIX / used)) ** strength
    weights /= float((p.ravel() * weights).sum())
    return torch.from_numpy(weights.astype(np.float32))


def ema_update(decay: float) -> Callable[..., None]:
    """EMA step for ``AveragedModel`` with the usual warm-up: the decay used at step n is
    ``min(decay, (1 + n) / (10 + n))``, so the average forgets the random initial weights quickly
    instead of carrying them for thousands of steps."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def built_ahead(batches: Iterable[Any], depth: int = 3) -> Iterator[Any]:
    """Build the next batches in a thread while the GPU trains on this one.

    Each batch is made from its own seed, so the thread changes the timing, never the numbers;
    OpenCV and numpy release the GIL, so the building really overlaps.
    """
    source = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="batches") as pool:
        ahead = deque(pool.submit(next, source, None) for _ in range(depth))
        while (batch := ahead.popleft().result()) is not None:
            ahead.append(pool.submit(next, source, None))
            yield batch


_CHECKPOINT_KEYS = frozenset(
    {"epoch", "config", "G", "D", "opt_g", "opt_d", "sched_g", "sched_d", "rng", "history", "data_fingerprint"}
)


def _read_checkpoint(raw: bytes, device: torch.device, where: str) -> dict[str, Any]:
    """A checkpoint's state, or a ValueError that says it is damaged (torch's own errors name no file).

    Checkpoints are written atomically, so a damaged one was cut short or replaced from outside:
    a copy stopped by a full disk, a sync of half a file.
    """
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip, pickle, EOF and seek errors alike: the file is not whole
        reason = str(err).split(".")[0] or type(err).__name__
        raise ValueError(
            f"--resume: checkpoint {where} cannot be read ({len(raw):,} bytes; {reason}): it is damaged, "
            "cut short or not this trainer's; restore it, or delete it to train from the start"
        ) from None
    if not isinstance(ckpt, dict) or not _CHECKPOINT_KEYS <= ckpt.keys():
        raise ValueError(f"--resume: {where} is not a checkpoint of this trainer; delete it to train from the start")
    return ckpt


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    # map_location moved every tensor of the checkpoint to the device; RNG states live on the CPU.
    torch.set_rng_state(state["torch"].cpu())
    rng.bit_generator.state = state["numpy"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def _card(cfg: TrainConfig, gcfg: GeneratorConfig, name: str, **extra: Any) -> dict[str, Any]:
    return new_card(name, gcfg, cfg.color_mode, image_size=256, **extra)


def evaluate_generator(
    generator: nn.Module, cfg: TrainConfig, gcfg: GeneratorConfig, images: Sequence[np.ndarray],
    grays: Sequence[np.ndarray], device: str, calibration: Mapping[str, Any] | None = None,
) -> QualityReport:  # fmt: skip
    """Quality of a generator being trained on evaluation images, through the production inference
    path, with the calibration its card will carry (``engine.CALIBRATION_KEYS``)."""
    model = LoadedModel(copy.deepcopy(generator).float().cpu(), _card(cfg, gcfg, "candidate", **(calibration or {})))
    model.card["model_id"] = "candidate"
    return evaluate_model(model, images, grays, device)


def evaluate_model(
    model: LoadedModel, images: Sequence[np.ndarray], grays: Sequence[np.ndarray], device: str
) -> QualityReport:
    """Quality of a model as its card says to run it (colour mode, calibration), on evaluation images."""
    # PyTorch, not ONNX Runtime: a candidate changes every epoch, an export per evaluation would cost more.
    colorizer = Colorizer(model, device=device, backend="torch")
    return evaluate(images, colorizer.predict_ab, grays=grays)


def train(
    cfg: TrainConfig,
    train_pairs: Sequence[LoadedPair],
    val_pairs: Sequence[LoadedPair],
    checkpoint_dir: str,
    resume: bool = False,
    init_from: LoadedModel | None = None,
    name: str = "colorizer",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a generator; checkpoint to ``checkpoint_dir`` every ``cfg.checkpoint_every`` epochs.

    Args:
        cfg: hyperparameters.
        train_pairs, val_pairs: loaded pairs (see :func:`colorize.training.pairs.load_pairs`).
        checkpoint_dir: folder or S3 prefix for ``last.pt``.
        resume: continue from ``checkpoint_dir/last.pt``; an error when there is none.
        init_from: fine-tune this model instead of starting from random weights (its shape and
            colour mode win over ``cfg``'s).
        name: the model's name in its card.
        on_epoch: called after each epoch with that epoch's losses (and metrics when evaluated).
        progress: show a tqdm bar per epoch.

    Returns:
        The trained generator (CPU, eval mode) with its card, history, final metrics and a grid.
    """
    if not train_pairs:
        raise ValueError("no training pairs")
    calibration: dict[str, Any] = {}
    if init_from is not None:
        g0 = init_from.config
        if cfg.image_size % 2**g0.depth:  # TrainConfig's advice would be a depth, which the model fixes
            raise ValueError(
                f"the model to fine-tune has depth {g0.depth}, so crops must be a multiple of {2**g0.depth} px: "
                f"train it at --image-size {max(2**g0.depth, cfg.image_size // 2**g0.depth * 2**g0.depth)}"
            )
        cfg = replace(cfg, color_mode=init_from.color_mode, width=g0.width, depth=g0.depth, dropout=g0.dropout)
        # Fine-tuned weights stay close to their parent's: so does how strongly their colour is
        # applied, and the candidate is measured as it will run (as production is, with its own).
        calibration = {k: init_from.card[k] for k in CALIBRATION_KEYS if k in init_from.card}
    device = pick_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    # Crops are small: OpenCV's own threads only fight the model's (and, on a shared GPU host, other runs').
    cv2.setNumThreads(1)
    gcfg = cfg.generator_config()
    store = open_storage(checkpoint_dir)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    G = build_generator(gcfg)
    D = build_discriminator(cfg.discriminator_config())
    init_weights(G)
    init_weights(D)
    if init_from is not None:
        G.load_state_dict(init_from.generator.state_dict())
    G, D = G.to(device), D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    schedule = lambda e: lr_factor(e + 1, cfg.epochs, cfg.decay_epoch)  # noqa: E731 - LambdaLR counts from 0
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, schedule)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule)
    ema = AveragedModel(G, multi_avg_fn=ema_update(cfg.ema_decay)) if cfg.ema_decay > 0 else None
    exported = ema.module if ema is not None else G  # what is measured and returned

    data = _Batches(cfg, train_pairs)
    workers = cfg.workers
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )  # fmt: skip
    val_images, val_grays = eval_pairs(val_pairs)
    data_fp = fingerprint([*train_pairs, *val_pairs])
    started_from = init_from.model_id if init_from is not None else ""
    history: list[dict[str, float]] = []
    start_epoch, spent = 1, 0.0
    resumes: list[dict[str, Any]] = []

    if resume:
        try:
            raw = store.read_bytes(CHECKPOINT)
        except FileNotFoundError:
            raise FileNotFoundError(f"--resume: no checkpoint {CHECKPOINT} in {store.uri}") from None
        ckpt = _read_checkpoint(raw, device, store.uri_for(CHECKPOINT))
        changed = {k for k, v in ckpt["config"].items() if getattr(cfg, k) != v} - RESUMABLE_CHANGES
        if changed:
            raise ValueError(f"--resume with different settings than the checkpoint: {sorted(changed)}")
        if ckpt["data_fingerprint"] != data_fp:
            raise ValueError("--resume on different training data than the checkpoint was trained on")
        if "init_from" in ckpt and (was := ckpt["init_from"]) != started_from:  # older checkpoints: unknown
            # e.g. a finished training's checkpoint, picked up by a fine-tuning killed before its first
            raise ValueError(
                f"--resume: the checkpoint's training started from {was or 'random weights'}, this one from "
                f"{started_from or 'random weights'} (--from-model): not the same training"
            )
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        sched_g.load_state_dict(ckpt["sched_g"])
        sched_d.load_state_dict(ckpt["sched_d"])
        for sched in (sched_g, sched_d):  # the schedule's length may have changed (--epochs)
            sched.lr_lambdas = [schedule]
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
                group["lr"] = base * schedule(sched.last_epoch)
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        _set_rng_state(rng, ckpt["rng"])
        history = list(ckpt["history"])
        start_epoch, spent = int(ckpt["epoch"]) + 1, float(ckpt.get("seconds", 0.0))
        # The card says where a training was picked up, and which settings it was picked up with
        # that differ (a longer --epochs, say): the weights are not what one run of the card's
        # hyperparameters would make.
        before = {k: v for k, v in ckpt["config"].items() if getattr(cfg, k) != v}
        resumes = [*ckpt.get("resumes", []), {"at_epoch": start_epoch - 1, "settings_before": before}]
        log.info("resumed from epoch %d", start_epoch - 1)

    mse = nn.MSELoss()
    bin_weights = rebalance_weights(data.rgb, cfg.rebalance).to(device) if cfg.rebalance else None

    def l1(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = (fake - target).abs()
        if bin_weights is None:
            return diff.mean()
        return (diff * bin_weights[ab_bins(target)][:, None]).mean()

    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if amp
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    report: QualityReport | None = None

    def save_checkpoint(epoch: int) -> None:
        state = {
            "epoch": epoch, "config": asdict(cfg), "G": G.state_dict(), "D": D.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "sched_g": sched_g.state_dict(),
            "sched_d": sched_d.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "rng": _rng_state(rng), "history": history, "data_fingerprint": data_fp, "seconds": spent,
            "resumes": resumes, "init_from": started_from,
        }  # fmt: skip
        buf = io.BytesIO()
        torch.save(state, buf)
        store.write_bytes(CHECKPOINT, buf.getvalue())

    for epoch in range(start_epoch, cfg.epochs + 1):
        began = time.perf_counter()
        G.train()
        D.train()
        gan_on = epoch > cfg.l1_warmup_epochs
        data.plan_epoch(rng)
        sums = {"loss_g": 0.0, "loss_l1": 0.0, "loss_gan": 0.0, "loss_d": 0.0}
        batches = built_ahead(loader) if device.type == "cuda" else loader
        for x, y in tqdm(
            batches, desc=f"epoch {epoch}/{cfg.epochs}", total=len(data), leave=False, disable=not progress
        ):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt_g.zero_grad(set_to_none=True)
            with autocast():
                fake = G(x)
                loss_l1 = l1(fake.float(), y)
                if gan_on:
                    pred = D(fake, x).float()
                    loss_gan = mse(pred, torch.ones_like(pred))
                else:
                    loss_gan = torch.zeros((), device=device)
                loss_g = loss_gan + cfg.lambda_l1 * loss_l1
                if cfg.lambda_smooth:
                    loss_g = loss_g + cfg.lambda_smooth * edge_aware_smoothness(fake.float(), x.float())
            loss_g.backward()
            opt_g.step()
            if ema is not None:
                ema.update_parameters(G)
            loss_d = torch.zeros((), device=device)
            if gan_on:
                opt_d.zero_grad(set_to_none=True)
                with autocast():
                    real = D(y, x).float()
                    fake_pred = D(fake.detach(), x).float()
                    loss_d = 0.5 * (mse(real, torch.ones_like(real)) + mse(fake_pred, torch.zeros_like(fake_pred)))
                loss_d.backward()
                opt_d.step()
            for k, v in (("loss_g", loss_g), ("loss_l1", loss_l1), ("loss_gan", loss_gan), ("loss_d", loss_d)):
                sums[k] += float(v.detach())
        sched_g.step()
        with warnings.catch_warnings():  # D does not step during the L1 warm-up; its schedule still must
            warnings.simplefilter("ignore", UserWarning)
            sched_d.step()
        spent += time.perf_counter() - began
        n = len(data)
        row: dict[str, float] = {"epoch": float(epoch), "lr": opt_g.param_groups[0]["lr"], "seconds": spent}
        row.update({k: v / n for k, v in sums.items()})
        if val_pairs and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            report = evaluate_generator(exported, cfg, gcfg, val_images, val_grays, cfg.device, calibration)
            row.update(report.as_dict("val_"))
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            save_checkpoint(epoch)

    if val_pairs and report is None:  # resumed at or past its last epoch: nothing ran, measure what it holds
        report = evaluate_generator(exported, cfg, gcfg, val_images, val_grays, cfg.device, calibration)
    final = copy.deepcopy(exported).float().cpu().eval()
    metrics = report.as_dict() if report is not None else {}
    grid = None
    if val_pairs:
        model = LoadedModel(copy.deepcopy(final), {**_card(cfg, gcfg, name, **calibration), "model_id": name})
        colorizer = Colorizer(model, device=cfg.device, backend="torch")
        rows = [
            (g, colorize_like_production(g, colorizer.predict_ab), img)
            for g, img in zip(val_grays[:8], val_images[:8], strict=False)
        ]
        grid = sample_grid(rows)
    card = _card(
        cfg, gcfg, name,
        hyperparameters=asdict(cfg),
        training={
            "pairs_train": len(train_pairs), "pairs_val": len(val_pairs), "data_fingerprint": data_fp,
            "epochs": max(cfg.epochs, start_epoch - 1), "seconds": round(spent, 1), "device": str(device),
            "device_name": _device_name(device),
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "resumes": resumes,
        },
        metrics=metrics,
        **calibration,
    )  # fmt: skip
    if init_from is not None:  # the card's lineage (a registry's `parent` names production at the time)
        card["fine_tuned_from"] = init_from.model_id
    return TrainResult(generator=final, card=card, history=history, metrics=metrics, grid=grid)

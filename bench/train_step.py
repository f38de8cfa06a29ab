"""Training throughput at 256x256: our trainer against the source notebook's plain loop, same run.

    python bench/train_step.py [--device cpu|cuda] [--width 64] [--batch-size 8] [--images 16] [--epochs 2]

Both train the same architecture (pix2pix U-Net + PatchGAN, LSGAN + 100 x L1, Adam) on the same
in-memory colour images:

* source_loop: the notebook's way: a Dataset applying torchvision transforms (resize to 256,
  ToTensor, Normalize) to PIL images, a DataLoader, patch targets built from numpy arrays every
  step, float32, rgb mode;
* ours: ``colorize.training.trainer.train`` (lab mode, random resize-crop + flip jitter, bf16
  autocast on CUDA), checkpointing only at the end.

Printed: images/s of each and the ratio. Each is timed after a warm-up epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize.color import NOTEBOOK_NORMALIZATION, luma  # noqa: E402
from colorize.model import (  # noqa: E402
    DiscriminatorConfig,
    GeneratorConfig,
    build_discriminator,
    build_generator,
    init_weights,
)
from colorize.training.pairs import LoadedPair  # noqa: E402
from colorize.training.trainer import TrainConfig, train  # noqa: E402


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Colourful 320x320 RGB images (uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:320, 0:320].astype(np.float32)
    out = []
    for _ in range(n):
        f = rng.uniform(5, 40, 3)
        img = np.stack([0.5 + 0.5 * np.sin(x / f[0] + y / f[1]), 0.5 + 0.5 * np.cos(y / f[2]),
                        0.5 + 0.5 * np.sin((x - y) / f[0])], axis=-1)  # fmt: skip
        out.append((np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8))
    return out


class NotebookDataset(torch.utils.data.Dataset):
    """The notebook's dataset: PIL images through torchvision transforms on every access."""

    def __init__(self, rgbs: list[np.ndarray]):
        import torchvision.transforms as T

        n = NOTEBOOK_NORMALIZATION
        self.color = [Image.fromarray(c) for c in rgbs]
        self.gray = [Image.fromarray(luma(c)).convert("RGB") for c in rgbs]
        self.tc = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize(n["color_mean"], n["color_std"])])
        self.tg = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize(n["gray_mean"], n["gray_std"])])

    def __len__(self) -> int:
        return len(self.color)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"A": self.tg(self.gray[i]), "B": self.tc(self.color[i])}


def source_loop(rgbs: list[np.ndarray], width: int, batch: int, epochs: int, device: torch.device) -> float:
    """The notebook's training loop; returns images/s over ``epochs`` after one warm-up epoch."""
    G = build_generator(GeneratorConfig(in_channels=3, out_channels=3, width=width)).to(device)  # noqa: N806
    D = build_discriminator(DiscriminatorConfig(in_channels=6, width=width)).to(device)  # noqa: N806
    init_weights(G)
    init_weights(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    loader = torch.utils.data.DataLoader(NotebookDataset(rgbs), batch_size=batch, shuffle=True)
    patch = (1, 256 // 2**4, 256 // 2**4)

    def epoch() -> None:
        for b in loader:
            gray, color = b["A"].to(device), b["B"].to(device)
            valid = torch.tensor(np.ones((gray.size(0), *patch)), dtype=torch.float32, device=device)
            fake = torch.tensor(np.zeros((gray.size(0), *patch)), dtype=torch.float32, device=device)
            opt_g.zero_grad()
            out = G(gray)
            loss_g = mse(D(out, gray), valid) + 100 * l1(out, color)
            loss_g.backward()
            opt_g.step()
            opt_d.zero_grad()
            loss_d = 0.5 * (mse(D(color, gray), valid) + mse(D(out.detach(), gray), fake))
            loss_d.backward()
            opt_d.step()

    epoch()
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    sync(device)
    return len(rgbs) * epochs / (time.perf_counter() - start)


def ours(rgbs: list[np.ndarray], width: int, batch: int, epochs: int, device: str) -> float:
    """Our trainer; images/s over ``epochs`` after one warm-up epoch (timed from its history)."""
    pairs = [LoadedPair(f"p{i}", luma(c), c, "") for i, c in enumerate(rgbs)]
    cfg = TrainConfig(width=width, batch_size=batch, epochs=epochs + 1, decay_epoch=epochs + 1, eval_every=10**6,
                      checkpoint_every=10**6, device=device, load_size=288)  # fmt: skip
    with tempfile.TemporaryDirectory() as ckpt:
        history = train(cfg, pairs, [], ckpt).history
    seconds = history[-1]["seconds"] - history[0]["seconds"]  # excludes the warm-up epoch
    return len(rgbs) * epochs / seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=int, default=64, help="generator and discriminator width (default: 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rgbs = images(args.images)
    device = torch.device(args.device)
    a = source_loop(rgbs, args.width, args.batch_size, args.epochs, device)
    b = ours(rgbs, args.width, args.batch_size, args.epochs, args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "width": args.width, "batch_size": args.batch_size, "images": args.images,
              "source_loop_images_per_s": round(a, 2), "ours_images_per_s": round(b, 2), "ratio": round(b / a, 3),
              "torch_threads": torch.get_num_threads()}  # fmt: skip
    print(f"source loop {a:8.2f} img/s\nours        {b:8.2f} img/s\nratio       {b / a:8.3f}  ({name}, width "
          f"{args.width}, batch {args.batch_size}, 256x256)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

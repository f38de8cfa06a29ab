"""CPU cost and file size of the generator per width: ONNX Runtime against PyTorch.

    python bench/model_cost.py [--widths 16,24,32,64] [--batch-size 8] [--threads 1]

For each width: CPU seconds per 256x256 image under each backend (one thread by default, as the
pipeline gives the model on a 2-core machine), and the size of its fp16 safetensors file.
Random weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize.engine import Colorizer  # noqa: E402
from colorize.model import GeneratorConfig, build_generator, init_weights  # noqa: E402
from colorize.modelfile import WEIGHTS_FILE, load_model, new_card, save_model  # noqa: E402
from colorize.storage import open_storage  # noqa: E402


def cpu_seconds_per_image(colorizer: Colorizer, gray: np.ndarray, repeats: int = 3) -> float:
    colorizer.predict_ab(gray)  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        colorizer.predict_ab(gray)
    return (time.process_time() - start) / (repeats * len(gray))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="16,24,32,64")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    gray = np.random.default_rng(0).random((args.batch_size, 256, 256), dtype=np.float32)
    print("width  onnx CPU-s/img  torch CPU-s/img  fp16 MB")
    for width in (int(w) for w in args.widths.split(",")):
        folder = tempfile.mkdtemp(prefix=f"colorize-w{width}-")
        cfg = GeneratorConfig(width=width)
        generator = build_generator(cfg)
        init_weights(generator)
        save_model(open_storage(folder), generator, new_card(f"w{width}", cfg, "lab"), dtype=torch.float16)
        size = Path(folder, WEIGHTS_FILE).stat().st_size / 1e6
        costs = [
            cpu_seconds_per_image(Colorizer(load_model(folder), "cpu", backend, threads=args.threads), gray)
            for backend in ("onnx", "torch")
        ]
        print(f"{width:5d}  {costs[0]:14.4f}  {costs[1]:15.4f}  {size:7.1f}")


if __name__ == "__main__":
    main()

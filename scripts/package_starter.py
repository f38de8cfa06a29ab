"""Package a trained model as the starter model that ships inside the library.

    python scripts/package_starter.py MODEL [--out colorize/models/starter]

MODEL is a model folder, e.g. a registry version (``REG/versions/v1``). The weights are written as
fp16 safetensors (half the size; loaded as fp32 on the CPU), with the model's card carried over,
renamed ``starter``, and pointing to MODEL_CARD.md for the data, licences and measurements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize.modelfile import PACKAGED_DIR, WEIGHTS_FILE, load_model, save_model  # noqa: E402
from colorize.storage import open_storage  # noqa: E402
from colorize.storage.local import TEMP_DIR  # noqa: E402

MAX_MB = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--out", default=str(PACKAGED_DIR))
    parser.add_argument("--chroma-scale", type=float, help="calibration recorded in the card (see MODEL_CARD.md)")
    parser.add_argument("--chroma-median", type=int, help="despeckling median side recorded in the card (likewise)")
    args = parser.parse_args()
    model = load_model(args.model)
    card = {k: v for k, v in model.card.items() if k not in ("sha256", "model_id", "dtype")}
    card |= {
        "name": "starter",
        "trained_as": model.model_id,
        "model_card": "MODEL_CARD.md in the project's repository: data, licences and attributions, measurements",
    }
    if args.chroma_scale is not None:
        card["chroma_scale"] = args.chroma_scale
    if args.chroma_median is not None:
        card["chroma_median"] = args.chroma_median
    saved = save_model(open_storage(args.out), model.generator, card, dtype=torch.float16)
    # The package ships as it is: no empty staging folder from the atomic writes beside the weights.
    (Path(args.out) / TEMP_DIR).rmdir()
    size = (Path(args.out) / WEIGHTS_FILE).stat().st_size / 1e6
    if size > MAX_MB:
        raise SystemExit(f"{size:.1f} MB is over the {MAX_MB} MB the starter model may weigh")
    print(f"{saved['model_id']}: {size:.1f} MB in {args.out} (from {model.model_id})")


if __name__ == "__main__":
    main()

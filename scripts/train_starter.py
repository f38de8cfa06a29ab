"""Train starter-model candidates side by side, each for a fixed time budget, and report the width curve.

Each named recipe trains in its own process with the library's trainer (the same ``train()`` the
``retrain`` flow runs), on the same held-out split. A recipe first trains a few epochs to measure
its speed, then resumes with as many epochs as its budget allows, so the learning-rate decay
lands at the end of the budget. Results, per recipe, under OUT/<recipe>/: history.json, card.json,
grid.png, and generator.safetensors (fp16) when --keep names the recipe.

    python scripts/train_starter.py PHOTOS OUT --budget-seconds 330 --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import traceback
from dataclasses import replace
from pathlib import Path

import cv2
import torch

RECIPES: dict[str, dict[str, object]] = {
    # The width curve, one recipe: L1 warm-up, then GAN; EMA of the generator weights.
    "w16": dict(width=16, l1_warmup_epochs=10, ema_decay=0.999),
    "w24": dict(width=24, l1_warmup_epochs=10, ema_decay=0.999),
    "w32": dict(width=32, l1_warmup_epochs=10, ema_decay=0.999),
    "w64": dict(width=64, l1_warmup_epochs=10, ema_decay=0.999),
    # Ablations at width 24: half the L1 weight (more colour?), and no warm-up / no EMA.
    "w24-l1x50": dict(width=24, l1_warmup_epochs=10, ema_decay=0.999, lambda_l1=50.0),
    "w24-plain": dict(width=24),
}
CALIBRATION_EPOCHS = 3
VAL_FRACTION = 0.15


def _run(name: str, photos: str, out: str, budget: float, device: str, batch_size: int, keep: bool) -> None:
    from colorize.modelfile import save_model
    from colorize.storage import open_storage
    from colorize.training.pairs import Pair, is_validation, load_pairs
    from colorize.training.trainer import TrainConfig, train

    torch.set_num_threads(2)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    logf = open(folder / "log.txt", "a", buffering=1)
    try:
        files = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp"))
        loaded, problems = load_pairs([Pair(p.name, str(p)) for p in files], short_side=320)
        val = [p for p in loaded if is_validation(p.name, VAL_FRACTION)]
        trn = [p for p in loaded if not is_validation(p.name, VAL_FRACTION)]
        logf.write(f"{len(trn)} train, {len(val)} val, {len(problems)} refused: {problems}\n")
        cfg = TrainConfig(
            device=device, batch_size=batch_size, epochs=CALIBRATION_EPOCHS, decay_epoch=CALIBRATION_EPOCHS,
            eval_every=10_000, checkpoint_every=CALIBRATION_EPOCHS, **RECIPES[name],  # type: ignore[arg-type]
        )  # fmt: skip
        ckpt = str(folder / "ckpt")
        began = time.time()
        train(cfg, trn, val, ckpt, name=f"starter-{name}")
        per_epoch = (time.time() - began) / CALIBRATION_EPOCHS
        epochs = max(CALIBRATION_EPOCHS + 1, int(budget / (per_epoch * 1.08)))
        logf.write(f"{per_epoch:.2f} s/epoch -> {epochs} epochs\n")
        cfg = replace(cfg, epochs=epochs, decay_epoch=epochs // 2, eval_every=max(1, epochs // 8),
                      checkpoint_every=max(1, epochs // 8))  # fmt: skip
        result = train(cfg, trn, val, ckpt, resume=True, name=f"starter-{name}",
                       on_epoch=lambda r: logf.write(json.dumps(r) + "\n"))  # fmt: skip
        (folder / "history.json").write_text(json.dumps(result.history, indent=1))
        if result.grid is not None:
            cv2.imwrite(str(folder / "grid.png"), cv2.cvtColor(result.grid, cv2.COLOR_RGB2BGR))
        card = result.card
        if keep:
            card = save_model(open_storage(str(folder)), result.generator, card, dtype=torch.float16)
        (folder / "card.json").write_text(json.dumps(card, indent=1))
        logf.write(f"done in {time.time() - began:.0f} s: {result.metrics}\n")
    except Exception:  # noqa: BLE001 - one recipe failing must not stop the others
        logf.write(traceback.format_exc())
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos")
    parser.add_argument("out")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--keep", default="w16,w24,w24-l1x50", help="recipes whose weights are saved")
    parser.add_argument("--budget-seconds", type=float, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    names = args.recipes.split(",")
    keep = set(args.keep.split(","))
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_run, args=(n, args.photos, args.out, args.budget_seconds, args.device, args.batch_size,
                                       n in keep), name=n)
        for n in names
    ]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = []
    for n in names:
        card_path = Path(args.out) / n / "card.json"
        if card_path.exists():
            card = json.loads(card_path.read_text())
            rows.append({"recipe": n, **card["metrics"], "epochs": card["training"]["epochs"],
                         "seconds": card["training"]["seconds"]})  # fmt: skip
        else:
            rows.append({"recipe": n, "error": "see log.txt"})
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Colour quality of a model on held-out photos, against two baselines measured in the same run.

    python bench/quality.py PHOTOS [--model PATH] [--val-fraction F] [--long-side PX] [--json PATH]
                            [--sheet PATH] [--split val|train] [--chroma-scales S,..] [--chroma-medians K,..]
                            [--guide-radii R,..] [--axes] [--upside-down]

PHOTOS is a folder of colour photos (the starter set: ``scripts/starter_data.py``). The held-out
split is the one training used: a hash of each file name (``--val-fraction``, by default the
model card's). Each held-out photo is reduced to its gray and colorized through the production
path (256x256 model input, chroma merged on the full-resolution gray), then compared with the
original, at its own resolution unless ``--long-side`` caps it:

* model:       the model under test (default: the packaged starter model);
* gray:        the scan unchanged (zero chroma);
* mean chroma: every pixel gets the training photos' average (a*, b*).

Printed: PSNR (RGB), SSIM, mean ab error, colourfulness (Hasler & Suesstrunk, |rg|/|yb| form) as a
ratio to ground truth and as an absolute difference. ``--sheet`` writes a before/after contact
sheet (gray | model | truth) of the held-out photos. ``--chroma-scales`` and ``--chroma-medians``
also measure the model under other calibrations (applied on top of its card's), to choose them;
``--guide-radii`` under other windows of the guided chroma upsampling (0: plain bicubic).
``--axes`` also prints how much of each chroma axis the model and the baselines predict
(:func:`colorize.evaluate.chroma_axes`): the spread of a* (green-red) and of b* (blue-yellow) as a
ratio to the truth's, and what becomes of the truth's green pixels. ``--upside-down`` also measures
the model shown each gray upside down (its chroma turned back), and the mean of both ways up: how
much of the model's colour comes from where a region sits in the frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colorize.color import despeckle_ab  # noqa: E402
from colorize.engine import Colorizer  # noqa: E402
from colorize.evaluate import (  # noqa: E402
    chroma_axes,
    eval_size,
    evaluate,
    gray_baseline,
    mean_ab,
    mean_chroma_baseline,
    outputs,
    sample_grid,
    score,
)
from colorize.modelfile import load_model  # noqa: E402
from colorize.training.pairs import discover_pairs, is_validation, load_pairs  # noqa: E402


def calibrations(scales: str | None, medians: str | None) -> list[tuple[str, float, int]]:
    """(name, chroma scale, median side) for each calibration to measure: every scale with every side."""
    scale_list = [float(x) for x in scales.split(",")] if scales else [1.0]
    median_list = [int(x) for x in medians.split(",")] if medians else [1]
    if not scales and not medians:
        return []
    return [(f"x{s} m{k}" if medians else f"model x{s}", s, k) for s in scale_list for k in median_list]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos")
    parser.add_argument("--model", help="model to evaluate (default: the packaged starter model)")
    parser.add_argument("--val-fraction", type=float, help="default: the model card's")
    parser.add_argument("--long-side", type=int, default=0, help="cap the compared size (0: full resolution)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sheet", type=Path, help="write a contact sheet PNG of the held-out photos")
    parser.add_argument("--sheet-rows", type=int, default=12)
    parser.add_argument(
        "--split",
        choices=["val", "train"],
        default="val",
        help="measure on the held-out photos (default) or the training photos",
    )
    parser.add_argument("--chroma-scales", help="also measure the model with its chroma scaled, e.g. 0.8,0.9")
    parser.add_argument(
        "--chroma-medians", help="also measure it with its chroma through a median of these sides, e.g. 5,7,9"
    )
    parser.add_argument(
        "--guide-radii",
        help="also measure it with the chroma taken to full resolution by guided windows of these radii "
        "(model pixels; 0: plain bicubic), e.g. 0,4,16",
    )
    parser.add_argument("--axes", action="store_true", help="also measure each chroma axis (green-red, blue-yellow)")
    parser.add_argument(
        "--upside-down",
        action="store_true",
        help="also measure the model shown each gray upside down, and the mean of both ways up",
    )
    args = parser.parse_args()

    model = load_model(args.model)
    fraction = args.val_fraction or float(model.card.get("hyperparameters", {}).get("val_fraction", 0.1))
    found, _ = discover_pairs(args.photos)
    loaded, refused = load_pairs(found)
    val = [p for p in loaded if is_validation(p.name, fraction) == (args.split == "val")]
    train = [p for p in loaded if not is_validation(p.name, fraction)]
    images = [eval_size(p.rgb, args.long_side) if args.long_side else p.rgb for p in val]
    grays = [
        cv2.resize(p.gray, img.shape[1::-1], interpolation=cv2.INTER_AREA) for p, img in zip(val, images, strict=True)
    ]
    colorizer = Colorizer(model, device=args.device)
    mean_chroma = mean_chroma_baseline(mean_ab([p.rgb for p in train]))

    def upside_down(gray: np.ndarray) -> np.ndarray:
        return colorizer.predict_ab(np.ascontiguousarray(gray[:, ::-1]))[:, ::-1]

    def both_ways_up(gray: np.ndarray) -> np.ndarray:
        return 0.5 * (colorizer.predict_ab(gray) + upside_down(gray))

    # The model's and the baselines' outputs are kept, to be scored, measured per axis and shown
    # from one pass each.
    model_out = list(outputs(images, colorizer.predict_ab, grays=grays))
    baseline_out = {name: list(outputs(images, predict, grays=grays))
                    for name, predict in (("gray", gray_baseline), ("mean_chroma", mean_chroma))}  # fmt: skip
    reports = {
        "model": score(model_out),
        **{
            name: evaluate(images, lambda g, s=scale, k=k: despeckle_ab(colorizer.predict_ab(g) * s, k), grays=grays)
            for name, scale, k in calibrations(args.chroma_scales, args.chroma_medians)
        },
        **{
            f"guide r{r}": evaluate(images, colorizer.predict_ab, grays=grays, guide_radius=r)
            for r in (int(x) for x in (args.guide_radii.split(",") if args.guide_radii else []))
        },
        **{
            name: evaluate(images, predict, grays=grays)
            for name, predict in (("upside down", upside_down), ("both ways up", both_ways_up))
            if args.upside_down
        },
        **{name: score(pairs) for name, pairs in baseline_out.items()},
    }
    size = f"long side <= {args.long_side}" if args.long_side else "full resolution"
    what = "held-out" if args.split == "val" else "training"
    print(f"model {model.model_id}; {len(val)} {what} photos (val fraction {fraction}), {len(train)} train, "
          f"{len(refused)} refused; compared at {size}")  # fmt: skip
    print(f"{'':12s} {'PSNR':>7s} {'SSIM':>7s} {'ab err':>7s} {'colourf.':>9s} {'ratio':>7s} {'|diff|':>7s}")
    for name, r in reports.items():
        print(f"{name:12s} {r.psnr:7.2f} {r.ssim:7.4f} {r.ab_error:7.2f} {r.colourfulness:9.2f} "
              f"{r.colourfulness_ratio:7.3f} {r.colourfulness_diff:7.2f}")  # fmt: skip
    print(f"ground truth colourfulness {reports['model'].colourfulness_gt:.2f}")
    axes = {}
    if args.axes:
        axes = {name: chroma_axes(pairs) for name, pairs in {"model": model_out, **baseline_out}.items()}
        print(f"\n{'':12s} {'a spread':>9s} {'b spread':>9s} {'green a':>8s} {'truth':>7s} {'green kept':>11s}")
        for name, r in axes.items():
            print(f"{name:12s} {r.a_spread:9.3f} {r.b_spread:9.3f} {r.green_a:8.1f} {r.green_a_gt:7.1f} "
                  f"{r.green_share:11.3f}")  # fmt: skip
    if args.json:
        out = {k: r.as_dict() | {"n": r.n} for k, r in reports.items()}
        out["axes"] = {k: asdict(r) for k, r in axes.items()}
        out["model_id"], out["val_fraction"], out["held_out"] = model.model_id, fraction, [p.name for p in val]
        args.json.write_text(json.dumps(out, indent=2))
    if args.sheet:
        rows = [(g, out_rgb, img) for g, (img, out_rgb) in zip(grays, model_out[: args.sheet_rows], strict=False)]
        cv2.imwrite(str(args.sheet), cv2.cvtColor(sample_grid(rows, cell=200), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()

"""Retraining: the three pair layouts, bad pairs, exact resume after a kill, the registry and promotion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from threading import Barrier

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from colorize.color import luma, normalize_ab, rgb_to_lab
from colorize.evaluate import chroma_axes, gray_baseline, outputs, sample_grid
from colorize.lease import DestinationBusyError, DestinationLease
from colorize.model import GeneratorConfig, build_generator
from colorize.modelfile import new_card
from colorize.registry import Registry
from colorize.storage import open_storage
from colorize.training.pairs import PairError, discover_pairs, is_validation, load_pairs
from colorize.training.promotion import is_better, unfair_split
from colorize.training.trainer import (
    TrainConfig,
    TrainResult,
    _Batches,
    ab_bins,
    edge_aware_smoothness,
    lr_factor,
    rebalance_weights,
    shade_gray,
)
from tests.helpers import colour_image, encode, gray_image, write

TINY = dict(width=8, depth=6, image_size=64, load_size=72, batch_size=4, epochs=2, eval_every=1, checkpoint_every=1,
            val_fraction=0.25, device="cpu")  # fmt: skip


def _colour(i: int, size: int = 64) -> np.ndarray:
    return colour_image(size, size, seed=i)


def make_victorian(root: Path, n: int = 8) -> None:
    for i in range(n):
        rgb = _colour(i, 96)
        write(root / "gray" / f"p{i}.png", encode(luma(rgb)[::3, ::3].copy(), "PNG"))  # 32x32, same shape
        write(root / "resized" / f"p{i}.png", encode(rgb[::3, ::3].copy(), "PNG"))
        if i % 2 == 0:
            write(root / "original" / f"p{i}.png", encode(rgb, "PNG"))


def make_colour_folder(root: Path, n: int = 8) -> None:
    for i in range(n):
        write(root / f"sub{i % 2}" / f"c{i}.jpg", encode(_colour(i), "JPEG", quality=95))


def test_victorian_layout_prefers_original_and_matches_by_name(tmp_path):
    make_victorian(tmp_path / "v400")
    pairs, problems = discover_pairs(str(tmp_path / "v400"))
    assert not problems and len(pairs) == 8
    by_name = {p.name: p for p in pairs}
    assert by_name["p0.png"].color_uri.endswith("original/p0.png")
    assert by_name["p1.png"].color_uri.endswith("resized/p1.png")
    loaded, bad = load_pairs(pairs)
    assert not bad
    first = next(p for p in loaded if p.name == "p0.png")
    assert first.rgb.shape == (96, 96, 3) and first.gray.shape == (96, 96)  # gray brought to colour's size

    # Boxes inside the three folders pair by their path; a photo beside them is said, not dropped unseen.
    rgb = _colour(9, 96)
    write(tmp_path / "v400/gray/box1/q.png", encode(luma(rgb), "PNG"))
    write(tmp_path / "v400/original/box1/q.png", encode(rgb, "PNG"))
    write(tmp_path / "v400/notes/r.jpg", encode(rgb, "JPEG"))
    pairs, problems = discover_pairs(str(tmp_path / "v400"))
    assert len(pairs) == 9 and {p.name: p for p in pairs}["box1/q.png"].color_uri.endswith("original/box1/q.png")
    assert [(p.name, p.reason) for p in problems] == [
        ("notes/r.jpg", "not in gray/, resized/ or original/, which make this folder the Victorian400 layout: left out")
    ]


def test_colour_only_folder_derives_gray_as_luminance(tmp_path):
    make_colour_folder(tmp_path / "photos")
    pairs, _ = discover_pairs(str(tmp_path / "photos"))
    assert len(pairs) == 8 and all(p.gray_uri is None for p in pairs)
    loaded, bad = load_pairs(pairs)
    assert not bad
    assert np.array_equal(loaded[0].gray, luma(loaded[0].rgb))


def test_csv_of_pairs_with_relative_paths(tmp_path):
    for i in range(3):
        rgb = _colour(i)
        write(tmp_path / "c" / f"{i}.png", encode(rgb, "PNG"))
        write(tmp_path / "g" / f"{i}.png", encode(luma(rgb), "PNG"))
    (tmp_path / "pairs.csv").write_text("gray_uri,color_uri\n" + "".join(f"g/{i}.png,c/{i}.png\n" for i in range(3)))
    pairs, problems = discover_pairs(str(tmp_path / "pairs.csv"))
    assert not problems and [p.gray_uri for p in pairs] == [str(tmp_path / "g" / f"{i}.png") for i in range(3)]
    assert len(load_pairs(pairs)[0]) == 3
    assert len(load_pairs(discover_pairs(f"file://{tmp_path}/pairs.csv")[0])[0]) == 3  # the CSV as a URI

    # A row repeated is trained on once; a row naming a folder is that pair's problem, not the training's.
    # (written another way: ./, an absolute path, a spreadsheet's trailing comma on every row).
    rows = "".join(f"g/{i}.png,c/{i}.png,\n" for i in (0, 1)) + f"./g/0.png,{tmp_path}/c/0.png,\n" + "g/2.png,c,\n"
    (tmp_path / "more.csv").write_text("gray_uri,color_uri\n" + rows)
    pairs, problems = discover_pairs(str(tmp_path / "more.csv"))
    assert [(p.name, p.reason) for p in problems] == [
        (f"{tmp_path}/c/0.png", "CSV row 4 repeats row 2: trained on once")
    ]
    loaded, bad = load_pairs(pairs)
    assert len(loaded) == 2
    assert [(p.name, p.reason) for p in bad] == [("c", f"cannot read {tmp_path / 'c'}: Is a directory")]


def test_one_photo_under_two_names_is_trained_on_once_and_a_csv_no_tool_wrote_is_named(tmp_path):
    write(tmp_path / "photos" / "a.png", encode(_colour(1), "PNG"))
    write(tmp_path / "photos" / "A.PNG", encode(_colour(1), "PNG"))  # on another side of the split, by name
    write(tmp_path / "photos" / "b.png", encode(_colour(2), "PNG"))
    write(tmp_path / "photos" / "b.jpg", encode(_colour(2), "JPEG"))
    pairs, problems = discover_pairs(str(tmp_path / "photos"))
    assert [p.name for p in pairs] == ["A.PNG", "b.jpg"]
    assert {(p.name, p.reason.partition(":")[0]) for p in problems} == {
        ("a.png", "the name of A.PNG but for case or extension"),
        ("b.png", "the name of b.jpg but for case or extension"),
    }
    (tmp_path / "latin1.csv").write_bytes("gray_uri,color_uri\ng/caf\xe9.png,c/caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(PairError, match="latin1.csv is not a CSV of pairs this tool reads"):
        discover_pairs(str(tmp_path / "latin1.csv"))


def test_bad_pairs_are_reported_and_skipped(tmp_path):
    root = tmp_path / "v400"
    make_victorian(root, n=2)
    write(root / "gray" / "lonely.png", encode(gray_image(32, 32), "PNG"))  # no colour partner
    write(root / "gray" / "wide.png", encode(gray_image(32, 64), "PNG"))
    write(root / "resized" / "wide.png", encode(_colour(5), "PNG"))  # 64x64 vs 64x32: other shape
    write(root / "gray" / "broken.png", encode(gray_image(32, 32), "PNG"))
    write(root / "resized" / "broken.png", b"\x89PNG not really")
    write(root / "gray" / "tiny.png", encode(gray_image(5, 40), "PNG"))  # nothing to learn, nothing to measure
    write(root / "resized" / "tiny.png", encode(_colour(6)[:5, :40], "PNG"))
    write(root / "gray" / "grey.png", encode(gray_image(64, 64), "PNG"))
    write(root / "resized" / "grey.png", encode(np.repeat(gray_image(64, 64)[..., None], 3, 2), "PNG"))
    pairs, problems = discover_pairs(str(root))
    loaded, bad = load_pairs(pairs)
    reasons = {p.name: p.reason for p in problems + bad}
    assert len(loaded) == 2
    assert reasons["lonely.png"].startswith("missing partner")
    assert reasons["wide.png"].startswith("size mismatch")
    assert reasons["broken.png"].startswith("unreadable colour image")
    assert "is gray" in reasons["grey.png"]
    assert reasons["tiny.png"] == "too small: 40x5; a pair needs 32 px a side or more"


def test_pairs_no_record_can_hold_are_refused_and_the_rest_kept(tmp_path):
    import os

    make_colour_folder(tmp_path, n=2)
    write(tmp_path / os.fsdecode(b"caf\xe9.png"), encode(_colour(7), "PNG"))  # a Latin-1 name
    pairs, problems = discover_pairs(str(tmp_path))
    assert len(pairs) == 2 and [p.name for p in problems] == ["caf\\xe9.png"]
    assert problems[0].reason.startswith("refused: the name is not UTF-8 (it holds the byte 0xE9")
    assert all(is_validation(p.name, 0.5) in (True, False) for p in pairs)  # names the split can hash


def test_a_registry_inside_the_folder_of_photos_gives_it_no_pairs(tmp_path):
    make_colour_folder(tmp_path, n=2)
    write(tmp_path / "registry/versions/v1/samples.png", encode(_colour(3), "PNG"))  # a sample grid
    pairs, _ = discover_pairs(str(tmp_path), leave_out=[str(tmp_path / "registry")])
    assert len(pairs) == 2 and not [p for p in pairs if p.name.startswith("registry/")]
    assert len(discover_pairs(str(tmp_path))[0]) == 3  # what leave_out keeps out
    with pytest.raises(ValueError, match="is the folder of pairs itself"):  # its grids would be trained on
        discover_pairs(str(tmp_path), leave_out=[str(tmp_path)])


def test_hidden_files_and_pipes_among_the_photos_are_no_pairs(tmp_path):
    make_colour_folder(tmp_path / "colour", n=2)
    write(tmp_path / "colour/.thumbnails/c0.jpg", encode(_colour(0), "JPEG"))  # as a run, hidden names are no photos
    write(tmp_path / "colour/._c1.jpg", b"\x00\x05\x16\x07 a Mac's resource fork")
    os.mkfifo(tmp_path / "colour/pipe.jpg")  # reading it would wait for ever
    pairs, problems = discover_pairs(str(tmp_path / "colour"))
    assert sorted(p.name for p in pairs) == ["sub0/c0.jpg", "sub1/c1.jpg"]
    assert [(p.name, p.reason) for p in problems] == [
        ("pipe.jpg", "not read: not a regular file (a pipe, socket or device): nothing read")
    ]
    make_victorian(tmp_path / "v400", n=2)
    write(tmp_path / "v400/gray/._p0.png", b"\x00\x05\x16\x07")
    os.mkfifo(tmp_path / "v400/original/p1.png")
    pairs, problems = discover_pairs(str(tmp_path / "v400"))
    assert [(p.name, p.color_uri.rsplit("/", 2)[1]) for p in pairs] == [("p0.png", "original"), ("p1.png", "resized")]


def test_split_is_fixed_by_file_name():
    names = [f"photo_{i}.jpg" for i in range(400)]
    val = {n for n in names if is_validation(n, 0.1)}
    assert 20 < len(val) < 60
    more = names + [f"new_{i}.jpg" for i in range(400)]
    assert {n for n in more if is_validation(n, 0.1)} & set(names) == val  # growing the set moves nothing
    assert is_validation("photo_3.jpg", 0.1) == is_validation("other/photo_3.webp", 0.1)


def test_lr_schedule_is_the_sources_linear_decay():
    assert lr_factor(1, 100, 100) == lr_factor(100, 100, 100) == 1.0
    assert lr_factor(50, 100, 50) == 1.0
    assert lr_factor(75, 100, 50) == pytest.approx(1 - 25 / 51)
    assert lr_factor(100, 100, 50) == pytest.approx(1 / 51)


def test_smoothness_loss_charges_colour_changes_where_the_gray_is_flat_only():
    gray = torch.full((1, 1, 16, 16), -0.2)
    step = torch.zeros((1, 2, 16, 16))
    step[..., 8:] = 0.5  # a colour edge down the middle
    assert float(edge_aware_smoothness(torch.full((1, 2, 16, 16), 0.3), gray)) == 0.0
    flat = float(edge_aware_smoothness(step, gray))
    assert flat == pytest.approx(0.5 / 15)  # one jump in every row, over 15 differences per row
    gray[..., 8:] = 0.6  # the gray has an edge in the same place
    assert float(edge_aware_smoothness(step, gray)) < 0.001 * flat
    assert TrainConfig().lambda_smooth == 0.0  # off unless asked for


def _roughness(t: torch.Tensor) -> float:
    return float((t[..., 1:] - t[..., :-1]).abs().mean())


def test_blur_augmentation_blurs_input_and_target_alike_and_only_when_asked(tmp_path):
    # Foliage-like: a colour photo under a fine texture (4 px squares), in focus.
    squares = (np.indices((72, 72)) // 4).sum(axis=0) % 2
    leaves = (_colour(0, 72) * (0.5 + 0.5 * squares[..., None])).astype(np.uint8)
    write(tmp_path / "photos/leaves.png", encode(leaves, "PNG"))
    pairs, _ = load_pairs(discover_pairs(str(tmp_path / "photos"))[0])
    cfg = TrainConfig(**TINY)
    sharp_x, sharp_y = _Batches(cfg, pairs).batch([0], np.random.default_rng(3))
    # Off by default, and a run without it draws the crops it always drew whatever blur_sigma says.
    assert cfg.blur_probability == 0
    same_x, _ = _Batches(TrainConfig(**TINY, blur_sigma=3), pairs).batch([0], np.random.default_rng(3))
    assert torch.equal(sharp_x, same_x)

    blurred = _Batches(TrainConfig(**TINY, blur_probability=1.0, blur_sigma=4), pairs)
    x, y = blurred.batch([0], np.random.default_rng(3))  # the same crop and flip: they are drawn first
    assert _roughness(x) < 0.7 * _roughness(sharp_x) and _roughness(y) < 0.7 * _roughness(sharp_y)
    assert abs(float(x.mean() - sharp_x.mean())) < 0.02  # a blur, not a change of exposure
    with pytest.raises(ValueError, match="blur"):
        TrainConfig(blur_probability=1.5)


def test_shading_changes_the_grays_light_smoothly_and_never_the_colour(tmp_path):
    write(tmp_path / "photos/p.png", encode(_colour(5, 72), "PNG"))
    pairs, _ = load_pairs(discover_pairs(str(tmp_path / "photos"))[0])
    plain_x, plain_y = _Batches(TrainConfig(**TINY), pairs).batch([0], np.random.default_rng(3))
    assert TrainConfig().shade_probability == 0  # off by default
    shaded = _Batches(TrainConfig(**TINY, shade_probability=1.0, shade=0.3), pairs)
    x, y = shaded.batch([0], np.random.default_rng(3))  # the same crop and flip: they are drawn first
    assert torch.equal(y, plain_y)  # the colour the model must predict is the photo's own
    assert float((x - plain_x).abs().mean()) > 0.02  # the light it sees is not
    # Light and shadow, not texture: the gains vary smoothly and stay within the bounds asked for.
    gray = np.full((64, 64), 100, np.uint8)
    gains = np.array([[0.7, 1.0, 1.3], [1.0, 1.0, 1.0], [1.3, 1.0, 0.7]], np.float32)
    lit = shade_gray(gray, gains).astype(np.float32)
    assert lit[0, 0] < 80 and lit[0, -1] > 120 and lit[32, 32] == pytest.approx(100, abs=2)
    assert np.abs(np.diff(lit, axis=1)).max() <= 3  # no step anywhere
    assert np.array_equal(shade_gray(gray, np.ones((3, 3), np.float32)), gray)
    with pytest.raises(ValueError, match="lab"):
        TrainConfig(color_mode="rgb", shade_probability=0.5)


def test_upside_down_crops_turn_gray_and_colour_together_and_only_when_asked(tmp_path):
    write(tmp_path / "photos/p.png", encode(_colour(6, 72), "PNG"))
    pairs, _ = load_pairs(discover_pairs(str(tmp_path / "photos"))[0])
    plain_x, plain_y = _Batches(TrainConfig(**TINY), pairs).batch([0], np.random.default_rng(3))
    assert TrainConfig().vflip_probability == 0  # off by default
    # The same crop and left-right flip (drawn first), upside down: the pair still matches pixel for pixel.
    x, y = _Batches(TrainConfig(**TINY, vflip_probability=1.0), pairs).batch([0], np.random.default_rng(3))
    assert torch.equal(x, plain_x.flip(-2)) and torch.equal(y, plain_y.flip(-2))
    assert not torch.equal(x, plain_x)
    with pytest.raises(ValueError, match="vflip"):
        TrainConfig(vflip_probability=2.0)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="load_size 200 is below image_size 256"):
        TrainConfig(load_size=200)


def test_rebalancing_weights_rare_colours_up_and_keeps_the_loss_size():
    # Photos that are mostly gray, with a small green patch: green is the rare colour.
    photos = [np.full((64, 64, 3), 120 + 10 * i, np.uint8) for i in range(3)]
    for p in photos:
        p[:8, :8] = (40, 160, 60)
    green, grey = (40, 160, 60), (130, 130, 130)
    weights = rebalance_weights(photos, 1.0)

    def weight_of(rgb: tuple[int, int, int], table: torch.Tensor = weights) -> float:
        ab = normalize_ab(rgb_to_lab(np.array([[rgb]], np.float32) / 255)[..., 1:])
        return float(table[ab_bins(torch.from_numpy(ab.transpose(2, 0, 1).copy())[None])].item())

    assert weight_of(green) > 2 * weight_of(grey)
    # The expected weight of a training pixel is 1, so the L1 loss keeps its scale.
    pixels = np.concatenate([p[::4, ::4].reshape(-1, 3) for p in photos])
    assert np.mean([weight_of(tuple(int(v) for v in px)) for px in pixels]) == pytest.approx(1.0, rel=1e-4)
    # Strength is a power on the weights: half of it is the square root of the ratio.
    half = rebalance_weights(photos, 0.5)
    ratio_half = weight_of(green, half) / weight_of(grey, half)
    assert ratio_half == pytest.approx((weight_of(green) / weight_of(grey)) ** 0.5, rel=1e-4)
    assert torch.all(rebalance_weights(photos, 0.0) == 1)  # strength 0 weighs nothing
    with pytest.raises(ValueError, match="lab"):
        TrainConfig(color_mode="rgb", rebalance=1.0)
    assert TrainConfig().rebalance == 0.0  # off unless asked for


def test_promotion_criterion():
    assert is_better({"psnr": 22.0}, None, "psnr")[0]
    assert is_better({"psnr": 22.0}, {"psnr": 21.0}, "psnr")[0]
    assert not is_better({"psnr": 21.0}, {"psnr": 21.0}, "psnr")[0]
    assert is_better({"ab_error": 10.0}, {"ab_error": 11.0}, "ab_error")[0]
    with pytest.raises(ValueError):
        is_better({}, None, "beauty")


def test_a_production_that_held_out_less_is_said_to_be_flattered_by_the_comparison():
    names = [f"p{i:03d}.png" for i in range(400)]
    small, large = ({n for n in names if is_validation(n, f)} for f in (0.1, 0.25))
    assert small < large  # why: production trained on large - small, which this training holds out
    assert "production held out 0.1 of its pairs and this training 0.25" in unfair_split(
        {"hyperparameters": {"val_fraction": 0.1}}, 0.25
    )
    for card in ({"hyperparameters": {"val_fraction": 0.25}}, {"hyperparameters": {"val_fraction": 0.3}}, {}):
        assert unfair_split(card, 0.25) == ""


def test_registrations_and_promotions_at_once_lose_nothing(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    config = GeneratorConfig(width=4)
    registry.register(build_generator(config), new_card("old", config, "lab"))  # v1, already there
    generators = []
    for seed in range(4):
        torch.manual_seed(seed)
        generators.append(build_generator(config))
    start = Barrier(4)

    def register(i: int) -> str:  # four trainings finishing at the same moment
        start.wait()
        return registry.register(generators[i], new_card(f"run{i}", config, "lab"))

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(register, range(4)))
    assert sorted(versions) == ["v2", "v3", "v4", "v5"] and registry.versions() == ["v1", "v2", "v3", "v4", "v5"]
    for i, version in enumerate(versions):  # each version is whole, and the one its registration was told
        loaded = registry.load(version)
        assert loaded.card["name"] == f"run{i}-{version}"
        expected = generators[i].state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in loaded.generator.state_dict().items())

    def promote(i: int) -> None:
        start.wait()
        registry.promote(versions[i], f"alias{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(promote, range(4)))
    assert registry.aliases() == {f"alias{i}": versions[i] for i in range(4)}  # no promotion lost


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_colour_folder(root)
    return root


def test_retrain_flow_registers_promotes_and_refuses_an_equal_candidate(photos, tmp_path, prefect_api_url):
    from flows.retrain import CHECKPOINT_LEASE, retrain

    reg = str(tmp_path / "registry")
    first = retrain(pairs=str(photos), registry=reg, config=TrainConfig(**TINY))
    assert first.version == "v1" and first.promoted and "no production model yet" in first.reason
    registry = Registry(reg)
    card = registry.card("production")
    assert card["version"] == "v1" and card["color_mode"] == "lab" and card["arch"]["width"] == 8
    assert card["training"]["pairs_train"] + card["training"]["pairs_val"] == 8
    assert len(card["training"]["data_fingerprint"]) == 64 and card["hyperparameters"]["lambda_l1"] == 100.0
    assert {"psnr", "ssim", "ab_error", "colourfulness_ratio"} <= set(card["metrics"])
    assert (tmp_path / "registry/versions/v1/samples.png").exists()

    same = retrain(pairs=str(photos), registry=reg, config=TrainConfig(**TINY))  # same seed: same model
    assert same.version == "v2" and not same.promoted and "does not beat" in same.reason
    assert registry.aliases()["production"] == "v1"
    assert registry.card("v2")["parent"] == "v1"

    flagged = retrain(pairs=str(photos), registry=reg, config=TrainConfig(**{**TINY, "seed": 5}), promote=False)
    assert not flagged.promoted and registry.aliases()["production"] == "v1"

    # A candidate measured against v1 while someone promoted v3 by hand: better than v1, but it does
    # not overwrite a production it never saw.
    from flows.retrain import register_and_decide

    # A second training into the same checkpoint folder stops before training, naming the first.
    with DestinationLease(open_storage(f"{reg}/checkpoints"), "train-earlier", key=CHECKPOINT_LEASE):
        with pytest.raises(DestinationBusyError, match="in use by run train-earlier.*checkpoint-dir"):
            retrain(pairs=str(photos), registry=reg, config=TrainConfig(**TINY))
    assert registry.versions() == ["v1", "v2", "v3"]

    # Production named but gone (a version folder deleted by hand): stopped before training, not after.
    aliases = (tmp_path / "registry/aliases.json").read_bytes()
    (tmp_path / "registry/aliases.json").write_text('{"production": "v7"}')
    with pytest.raises(ValueError, match="the registry's production model, v7, cannot be loaded"):
        retrain(pairs=str(photos), registry=reg, config=TrainConfig(**TINY))
    (tmp_path / "registry/aliases.json").write_bytes(aliases)
    assert registry.versions() == ["v1", "v2", "v3"]

    registry.promote("v3")
    config = GeneratorConfig(width=4)
    late = TrainResult(build_generator(config), new_card("late", config, "lab"), metrics={"psnr": 99.0})
    decided = register_and_decide.fn(reg, late, ("v1", {"psnr": 10.0}), "psnr", True, [])
    assert not decided.promoted and "production became v3" in decided.reason
    assert registry.aliases()["production"] == "v3" and registry.card(decided.version)["parent"] == "v1"
    assert not registry.promote("v1", if_current="v2") and registry.promote("v1", if_current="v3")

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        summaries = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-summary"]))
        )
        tables = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-metrics"])))
    assert tables and "val_psnr" in str(tables[0].data)
    assert any("data:image/jpeg;base64," in str(a.data) and "Not promoted" in str(a.data) for a in summaries)


def test_production_is_measured_as_it_runs_whatever_the_candidates_settings(photos, tmp_path, prefect_api_url):
    from colorize.evaluate import eval_pairs
    from colorize.training.trainer import evaluate_model
    from flows.retrain import production_quality, retrain

    registry = Registry(str(tmp_path / "registry"))
    rgb = GeneratorConfig(in_channels=3, out_channels=3, width=4, depth=6)
    registry.register(build_generator(rgb), new_card("old-rgb", rgb, "rgb"))
    registry.promote("v1")
    # A production in the other colour mode: measured in its own, and the candidate still registered.
    summary = retrain(pairs=str(photos), registry=registry.uri, config=TrainConfig(**TINY), promote=False)
    assert summary.version == "v2" and registry.card("v2")["production_metrics_at_training"]["psnr"] > 0

    # A calibrated production: measured with its calibration, as colorize run applies it.
    lab = GeneratorConfig(width=4, depth=6)
    registry.register(build_generator(lab), {**new_card("calibrated", lab, "lab"), "chroma_scale": 3.0})
    registry.promote("v3")
    pairs, _ = discover_pairs(str(photos))
    val = [p for p in load_pairs(pairs)[0] if is_validation(p.name, TINY["val_fraction"])]
    _, measured = production_quality.fn(registry.uri, TrainConfig(**TINY), val)
    images, grays = eval_pairs(val)
    calibrated = evaluate_model(registry.load("v3"), images, grays, "cpu").as_dict()
    plain = registry.load("v3")
    plain.card.pop("chroma_scale")
    assert measured == calibrated != evaluate_model(plain, images, grays, "cpu").as_dict()


def test_fine_tuning_starts_from_the_given_weights_and_calibration(photos, tmp_path, tiny_model):
    from colorize.evaluate import eval_pairs
    from colorize.modelfile import load_model
    from colorize.training.pairs import load_pairs
    from colorize.training.trainer import evaluate_model, train

    start = load_model(str(tiny_model))  # width 4, lab; its shape wins over the config's
    pairs, _ = load_pairs(discover_pairs(str(photos))[0])
    # Adam with lr 0: the weights cannot move. The tiny model has 8 levels, so it trains on 256 crops.
    frozen = TrainConfig(**{**TINY, "lr": 0.0, "epochs": 1, "depth": 8, "image_size": 256, "load_size": 286})
    start.card |= {"chroma_scale": 2.0, "chroma_median": 3}  # a calibrated parent, as the starter is
    result = train(frozen, pairs[1:], pairs[:1], str(tmp_path / "ckpt"), init_from=start)
    assert result.card["arch"]["width"] == 4 and result.card["fine_tuned_from"] == start.model_id
    for name, tensor in start.generator.state_dict().items():
        assert torch.equal(result.generator.state_dict()[name], tensor), name
    # The calibration comes along, and the candidate is measured with it: as its parent, here.
    assert (result.card["chroma_scale"], result.card["chroma_median"]) == (2.0, 3)
    images, grays = eval_pairs(pairs[:1])
    assert result.metrics == pytest.approx(evaluate_model(start, images, grays, "cpu").as_dict())
    # Crops too small for its 8 levels: the advice is a crop size (its depth is the model's).
    small = TrainConfig(**{**TINY, "image_size": 64, "load_size": 72})
    with pytest.raises(ValueError, match="has depth 8, so crops must be a multiple of 256 px: .* --image-size 256"):
        train(small, pairs[1:], pairs[:1], str(tmp_path / "small-ckpt"), init_from=start)

    # A training from random weights, finished, then a fine-tuning killed before its first checkpoint:
    # --resume must not pick the finished one's checkpoint up as the fine-tuning's.
    same_shape = TrainConfig(**{**asdict(frozen), "width": 4})
    train(same_shape, pairs[1:], pairs[:1], str(tmp_path / "shared-ckpt"))
    with pytest.raises(ValueError, match="checkpoint's training started from random weights, this one from tiny@"):
        train(same_shape, pairs[1:], pairs[:1], str(tmp_path / "shared-ckpt"), resume=True, init_from=start)
    # A checkpoint from before the start was recorded says nothing of it: resumed, not refused.
    ckpt_path = tmp_path / "shared-ckpt" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["init_from"]
    torch.save(ckpt, ckpt_path)
    train(same_shape, pairs[1:], pairs[:1], str(tmp_path / "shared-ckpt"), resume=True, init_from=start)


def test_a_damaged_checkpoint_is_named_not_a_traceback(photos, tmp_path):
    from colorize.training.trainer import CHECKPOINT, train

    pairs, _ = load_pairs(discover_pairs(str(photos))[0])
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    train(cfg, pairs, [], str(tmp_path / "ckpt"))
    ckpt = tmp_path / "ckpt" / CHECKPOINT
    whole = ckpt.read_bytes()
    # Cut short (a copy stopped by a full disk), emptied, or another file under its name.
    for damaged in (whole[: len(whole) // 2], b"", b"not a checkpoint", whole[:-10]):
        ckpt.write_bytes(damaged)
        with pytest.raises(ValueError, match=f"checkpoint {ckpt} cannot be read .*delete it to train from the start"):
            train(cfg, pairs, [], str(tmp_path / "ckpt"), resume=True)
    torch.save({"G": {}}, ckpt)
    with pytest.raises(ValueError, match="is not a checkpoint of this trainer"):
        train(cfg, pairs, [], str(tmp_path / "ckpt"), resume=True)


def test_rebalancing_changes_the_loss_training_sees_and_is_recorded(photos, tmp_path):
    from colorize.training.trainer import train

    pairs, _ = load_pairs(discover_pairs(str(photos))[0])
    plain = train(TrainConfig(**{**TINY, "epochs": 1}), pairs, [], str(tmp_path / "a"))
    weighted = train(TrainConfig(**{**TINY, "epochs": 1, "rebalance": 1.0}), pairs, [], str(tmp_path / "b"))
    # Same seed, same crops, same first weights: only the per-pixel weights differ.
    assert weighted.history[0]["loss_l1"] != pytest.approx(plain.history[0]["loss_l1"], rel=1e-3)
    assert weighted.card["hyperparameters"]["rebalance"] == 1.0


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "colorize.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_a_killed_training_resumes_to_the_same_weights(photos, tmp_path, cli_env):
    common = ["train", str(photos), "--width", "8", "--depth", "6", "--image-size", "64", "--batch-size", "2",
              "--epochs", "6", "--eval-every", "3", "--checkpoint-every", "1", "--val-fraction", "0.25",
              "--l1-warmup-epochs", "1", "--ema-decay", "0.9", "--device", "cpu",
              "--load-size", "96", "--min-crop-scale", "0.5"]  # multi-scale crops: 48-96 px resized to 64  # fmt: skip
    straight = _cli([*common, "--registry", str(tmp_path / "a")], cli_env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    ckpt = tmp_path / "b" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "colorize.cli", *common, "--registry", str(tmp_path / "b")],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        start = time.time()
        while time.time() - start < 300:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.kill()
        proc.wait()
    epoch_at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch_at_kill < 6
    assert not (tmp_path / "b" / "versions").exists()

    resumed = _cli([*common, "--registry", str(tmp_path / "b"), "--resume"], cli_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "a/versions/v1/generator.safetensors")
    b = load_file(tmp_path / "b/versions/v1/generator.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist_a = json.loads((tmp_path / "a/versions/v1/card.json").read_text())["metrics"]
    hist_b = json.loads((tmp_path / "b/versions/v1/card.json").read_text())["metrics"]
    assert hist_a == hist_b
    recipe = json.loads((tmp_path / "b/versions/v1/card.json").read_text())["hyperparameters"]
    assert (recipe["load_size"], recipe["min_crop_scale"]) == (96, 0.5)  # the card records the crops used
    # The card says where the training was picked up, and that nothing but the run changed.
    assert json.loads((tmp_path / "a/versions/v1/card.json").read_text())["training"]["resumes"] == []
    resumes = json.loads((tmp_path / "b/versions/v1/card.json").read_text())["training"]["resumes"]
    assert resumes == [{"at_epoch": epoch_at_kill, "settings_before": {}}]

    # Resuming a run that had finished registers the same weights again, measured, not unmeasured.
    again = _cli([*common, "--registry", str(tmp_path / "b"), "--resume", "--no-promote"], cli_env)
    assert again.returncode == 0 and "registered v2" in again.stdout, again.stderr[-2000:]
    card = json.loads((tmp_path / "b/versions/v2/card.json").read_text())
    assert card["metrics"] == hist_a and card["training"]["epochs"] == 6
    c = load_file(tmp_path / "b/versions/v2/generator.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    # ... and resumed with fewer epochs than it ran: the card keeps both numbers, and says so.
    fewer = [*common[: common.index("--epochs")], "--epochs", "4", *common[common.index("--epochs") + 2 :]]
    shorter = _cli([*fewer, "--registry", str(tmp_path / "b"), "--resume", "--no-promote"], cli_env)
    assert shorter.returncode == 0, shorter.stderr[-2000:]
    card = json.loads((tmp_path / "b/versions/v3/card.json").read_text())
    assert (card["training"]["epochs"], card["hyperparameters"]["epochs"]) == (6, 4)
    assert card["training"]["resumes"][-1] == {"at_epoch": 6, "settings_before": {"epochs": 6}}

    listed = _cli(["models", "list", "--registry", str(tmp_path / "b")], cli_env)
    assert listed.returncode == 0 and listed.stdout.startswith("v1\tproduction\t") and "psnr=" in listed.stdout
    shown = _cli(["models", "show", "v1", "--registry", str(tmp_path / "b")], cli_env)
    assert json.loads(shown.stdout)["version"] == "v1"
    bad = _cli(["models", "promote", "v9", "--registry", str(tmp_path / "b")], cli_env)
    assert bad.returncode != 0 and "v9" in bad.stderr
    typo = _cli(["models", "list", "--registry", str(tmp_path / "no-such-registry")], cli_env)
    assert typo.returncode == 1 and "no model versions in" in typo.stderr
    stable = ["models", "promote", "production", "--alias", "stable", "--registry", str(tmp_path / "b")]
    by_alias = _cli(stable, cli_env)
    assert by_alias.returncode == 0 and by_alias.stdout.strip() == "stable -> v1"
    # A version damaged by hand (its card cut short, its weights deleted) is listed as damaged, the
    # rest still listed, and cannot be promoted: a rollback onto it would stop every run.
    (tmp_path / "b/versions/v2/card.json").write_text('{"name": ')
    (tmp_path / "b/versions/v3/generator.safetensors").unlink()
    listed = _cli(["models", "list", "--registry", str(tmp_path / "b")], cli_env)
    assert listed.returncode == 1 and listed.stdout.startswith("v1\tproduction,stable\t"), listed.stdout
    assert "\nv2\t-\tis damaged: " in listed.stdout and "v2/card.json is not valid JSON" in listed.stdout
    assert "\nv3\t-\tis damaged: it has no weights (generator.safetensors)" in listed.stdout
    assert "2 damaged version(s)" in listed.stderr
    for version in ("v2", "v3"):
        refused = _cli(["models", "promote", version, "--registry", str(tmp_path / "b")], cli_env)
        assert refused.returncode == 1 and f"version {version} is damaged" in refused.stderr
    (tmp_path / "b/aliases.json").write_text('{"production": ')  # a hand edit gone wrong
    for command in (["list"], ["show", "v1"], ["promote", "v1"]):
        broken = _cli(["models", *command, "--registry", str(tmp_path / "b")], cli_env)
        assert broken.returncode == 1 and "aliases.json is not valid JSON" in broken.stderr
        assert "Traceback" not in broken.stderr


def test_the_sample_grid_keeps_each_photo_whole_and_wastes_no_rows():
    landscape = _colour(1, 96)[:60]  # 96 x 60
    portrait = np.ascontiguousarray(_colour(2, 96)[:, :48])  # 48 x 96
    grid = sample_grid([(luma(landscape), landscape), (luma(portrait), portrait)], cell=64)
    assert grid.shape == (40 + 64, 128, 3)  # a landscape row is only as tall as its photos
    assert not np.all(grid[:40] == 255, axis=(1, 2)).any()  # no white band across a row
    assert np.all(grid[40:, :16] == 255) and not np.all(grid[40:, 16:48] == 255)  # a portrait, centred


def test_chroma_axes_measure_how_much_of_each_axis_and_of_the_greens_a_model_keeps():
    # Half meadow (green), half sky (blue) with a gradient: both axes of chroma vary.
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[:48] = (90, 170, 60)
    rgb[48:] = np.linspace((60, 110, 200), (150, 190, 240), 128).astype(np.uint8)[None]
    truths = iter([cv2.resize(rgb_to_lab(rgb / 255.0)[..., 1:], (256, 256), interpolation=cv2.INTER_AREA)])

    def oracle(gray: np.ndarray) -> np.ndarray:  # the true chroma, at the model's size
        return next(truths)[None]

    exact = chroma_axes(outputs([rgb], oracle))
    assert exact.a_spread == pytest.approx(1, abs=0.05) and exact.b_spread == pytest.approx(1, abs=0.05)
    assert exact.green_share > 0.95 and exact.green_a_gt < -30
    assert exact.green_a == pytest.approx(exact.green_a_gt, abs=3)
    none = chroma_axes(outputs([rgb], gray_baseline))
    assert none.a_spread < 0.02 and none.b_spread < 0.02 and none.green_share == 0 and abs(none.green_a) < 1

"""The ``retrain`` flow: train on curated pairs, compare with production, register, promote if better."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from colorize.evaluate import eval_pairs
from colorize.lease import DestinationLease
from colorize.manifest import new_run_id
from colorize.registry import PRODUCTION, Registry
from colorize.report import jpeg_data_uri
from colorize.storage import open_storage
from colorize.training.pairs import LoadedPair, PairProblem, discover_pairs, is_validation, load_pairs
from colorize.training.promotion import CRITERIA, is_better, unfair_split
from colorize.training.trainer import TrainConfig, TrainResult, evaluate_model, train
from flows.runners import gpu_slot_held

# Pairs are held in memory at this short side: the trainer crops from 286px squares and the
# held-out evaluation looks at up to 768px, so more would only cost memory.
LOAD_SHORT_SIDE = 384
CHECKPOINT_LEASE = "lease.json"
SHARED = "two trainings in one checkpoint folder would overwrite each other's checkpoints (--checkpoint-dir)"


@dataclass
class RetrainSummary:
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    production_metrics: dict[str, float] | None = None
    problems: list[PairProblem] = field(default_factory=list)


@task(cache_policy=NO_CACHE)
def gather_pairs(
    pairs: str, val_fraction: float, leave_out: tuple[str, ...] = ()
) -> tuple[list[LoadedPair], list[LoadedPair], list[PairProblem]]:
    """Find and load the pairs, report the bad ones, and split off the held-out set by file-name hash.
    ``leave_out``: the registry and checkpoint folders, which may lie inside a folder of photos."""
    logger = get_run_logger()
    found, problems = discover_pairs(pairs, leave_out)
    loaded, bad = load_pairs(found, short_side=LOAD_SHORT_SIDE)
    problems += bad
    for p in problems:
        logger.warning("skipped pair %s: %s", p.name, p.reason)
    val = [p for p in loaded if is_validation(p.name, val_fraction)]
    trn = [p for p in loaded if not is_validation(p.name, val_fraction)]
    logger.info("%d pairs: %d train, %d held out, %d skipped", len(found), len(trn), len(val), len(problems))
    return trn, val, problems


@task(cache_policy=NO_CACHE)
def train_candidate(
    cfg: TrainConfig, trn: list[LoadedPair], val: list[LoadedPair], checkpoints: str, resume: bool,
    from_model: str | None, progress: bool,
) -> TrainResult:  # fmt: skip
    """Train (or fine-tune, or resume) a generator, logging each epoch's losses and metrics."""
    from colorize.modelfile import load_model

    logger = get_run_logger()

    def log_epoch(row: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        logger.info("epoch %d: %s", int(row["epoch"]), text)

    init = load_model(from_model) if from_model else None
    return train(cfg, trn, val, checkpoints, resume=resume, init_from=init, on_epoch=log_epoch, progress=progress)


def check_production_loads(registry: str) -> None:
    """Raise ValueError when the registry names a production version that cannot be loaded: the
    candidate could not be measured against it, and the training would be thrown away."""
    reg = Registry(registry)
    current = reg.aliases().get(PRODUCTION)
    if current is None:
        return
    try:
        reg.load(current)
    except (KeyError, FileNotFoundError, ValueError) as err:  # ValueError: weights that are not their card's
        why = err.args[0] if err.args else err
        raise ValueError(
            f"the registry's production model, {current}, cannot be loaded ({why}); make a version that "
            f"exists production (`colorize models promote VERSION --registry {registry}`) before training"
        ) from None


@task(cache_policy=NO_CACHE)
def production_quality(
    registry: str, cfg: TrainConfig, val: list[LoadedPair]
) -> tuple[str | None, dict[str, float] | None]:
    """Which version is production, and its metrics on the same held-out pairs (None, None: none yet)."""
    reg = Registry(registry)
    current = reg.aliases().get(PRODUCTION)
    if current is None:
        return None, None
    if not val:
        return current, None
    if warning := unfair_split(reg.card(current), cfg.val_fraction):
        get_run_logger().warning("%s: %s", current, warning)
    model = reg.load(current)
    images, grays = eval_pairs(val)
    # As production runs: its own card's colour mode and calibration, not the candidate's settings.
    return current, evaluate_model(model, images, grays, cfg.device).as_dict()


@task(cache_policy=NO_CACHE)
def register_and_decide(
    registry: str, result: TrainResult, production: tuple[str | None, dict[str, float] | None], criterion: str,
    promote: bool, problems: list[PairProblem],
) -> RetrainSummary:  # fmt: skip
    """Store the candidate as a new version; promote it only if it beats production, and only if
    production is still the version it was measured against."""
    reg = Registry(registry)
    measured, metrics = production
    card = {**result.card, "parent": measured, "production_metrics_at_training": metrics}
    version = reg.register(result.generator, card)
    if result.grid is not None:
        buf = io.BytesIO()
        Image.fromarray(result.grid).save(buf, format="PNG")
        reg.storage.write_bytes(f"versions/{version}/samples.png", buf.getvalue(), "image/png")
    better, reason = is_better(result.metrics, metrics, criterion)
    promoted = False
    if better and not promote:
        reason += "; not promoted (--no-promote)"
    elif better and not (promoted := reg.promote(version, if_current=measured)):
        now = reg.aliases().get(PRODUCTION)
        reason += (
            f"; not promoted: production became {now} while this trained (it was measured against "
            f"{measured or 'no production model'}); compare them, then `colorize models promote {version}`"
        )
    return RetrainSummary(version, promoted, reason, result.metrics, metrics, problems)


@task(cache_policy=NO_CACHE)
def publish(summary: RetrainSummary, result: TrainResult, registry: str) -> None:
    """Metrics per epoch and the promotion decision as Prefect artifacts."""
    rows = [{k: round(v, 4) for k, v in r.items()} for r in result.history if "val_psnr" in r]
    if rows:
        create_table_artifact(key="retrain-metrics", table=rows, description="Held-out metrics by epoch")
    reg = Registry(registry)
    lines = [
        f"# Retrain: version `{summary.version}`",
        f"**{'Promoted to production' if summary.promoted else 'Not promoted'}**: {summary.reason}",
        "",
        "| metric | candidate | production |",
        "| --- | --- | --- |",
    ]
    for k, v in summary.metrics.items():
        prod = (summary.production_metrics or {}).get(k)
        lines.append(f"| {k} | {v:.4f} | {'-' if prod is None else f'{prod:.4f}'} |")
    lines += ["", f"Held-out samples (gray | model | original), also `{reg.version_uri(summary.version)}/samples.png`:"]
    if result.grid is not None:
        lines += ["", f"![samples]({jpeg_data_uri(Image.fromarray(result.grid)).uri})"]
    if summary.problems:
        lines += ["", f"## {len(summary.problems)} pairs skipped", ""]
        lines += [f"- `{p.name}`: {p.reason}" for p in summary.problems[:50]]
    create_markdown_artifact(key="retrain-summary", markdown="\n".join(lines))


@flow(name="retrain")
def retrain(
    pairs: str,
    registry: str,
    config: TrainConfig | None = None,
    from_model: str | None = None,
    resume: bool = False,
    promote: bool = True,
    criterion: str = "psnr",
    checkpoint_dir: str | None = None,
    progress: bool = False,
    gpu_slot: str | None = None,  # a global concurrency limit held around the GPU work (deploy/README.md)
) -> RetrainSummary:
    """Train on the pairs under ``pairs``; register the model in ``registry``; promote it if better."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}")
    cfg = config or TrainConfig()
    checkpoints = checkpoint_dir or open_storage(registry).uri_for("checkpoints")
    # One training at a time per checkpoint folder: another would overwrite its checkpoints, and a
    # --resume would carry on someone else's run. Taken first, so that a second stops at once,
    # before loading what may be thousands of pairs.
    checkpoint_store = open_storage(checkpoints)
    with DestinationLease(checkpoint_store, f"train-{new_run_id()}", key=CHECKPOINT_LEASE, why=SHARED):
        check_production_loads(registry)  # now, not after hours of training
        trn, val, problems = gather_pairs(pairs, cfg.val_fraction, (open_storage(registry).uri, checkpoint_store.uri))
        # One model on a GPU at a time (issue 6): training, then the production model on the held-out pairs.
        with gpu_slot_held(gpu_slot):
            result = train_candidate(cfg, trn, val, checkpoints, resume, from_model, progress)
            production = production_quality(registry, cfg, val)
    summary = register_and_decide(registry, result, production, criterion, promote, problems)
    publish(summary, result, registry)
    get_run_logger().info("version %s: %s", summary.version, summary.reason)
    return summary

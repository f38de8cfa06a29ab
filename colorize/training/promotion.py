"""When is a candidate model better than production? One configurable criterion, stated in words."""

from __future__ import annotations

from typing import Any

# criterion -> True when higher is better
CRITERIA: dict[str, bool] = {"psnr": True, "ssim": True, "ab_error": False, "colourfulness_diff": False}


def is_better(candidate: dict[str, float], production: dict[str, float] | None, criterion: str) -> tuple[bool, str]:
    """Compare held-out metrics on one criterion; return (better?, the reason in words)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, not {criterion!r}")
    if criterion not in candidate:
        return False, f"the candidate has no {criterion} (no held-out pairs to measure it on)"
    new = candidate[criterion]
    if production is None:
        return True, f"no production model yet; candidate {criterion} = {new:.4f}"
    old = production[criterion]
    higher = CRITERIA[criterion]
    better = new > old if higher else new < old
    relation = "beats" if better else "does not beat"
    return better, f"candidate {criterion} {new:.4f} {relation} production's {old:.4f}"


def unfair_split(production_card: dict[str, Any], val_fraction: float) -> str:
    """Why production's score on this training's held-out pairs may flatter it ("" when it should not).

    The split holds out the names whose hash falls under the fraction, so a smaller fraction's pairs
    are among a larger one's: a production that held out less trained on some of the pairs it is
    now measured on.
    """
    held = (production_card.get("hyperparameters") or {}).get("val_fraction")
    if not isinstance(held, int | float) or held >= val_fraction:
        return ""
    return (
        f"production held out {held:g} of its pairs and this training {val_fraction:g}: production may have "
        f"trained on some of the pairs it is measured on here, which flatters it; train with --val-fraction "
        f"{held:g} to compare them fairly"
    )

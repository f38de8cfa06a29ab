"""When is a candidate model better than production? One configurable criterion, stated in words."""

from __future__ import annotations

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

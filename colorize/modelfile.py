"""Model artifacts: our safetensors + JSON card format, and the source notebook's pickled ``.pth``.

A model folder (a registry version, or the packaged starter) holds ``generator.safetensors`` and
``card.json``. The card is also embedded in the safetensors header, so a lone ``.safetensors`` file
is self-describing. The card's ``sha256`` is the hash of the safetensors file; ``model_id`` is
``<name>@<first 12 hex of sha256>`` and is what manifests record.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from colorize.color import LAB_NORMALIZATION, NOTEBOOK_NORMALIZATION
from colorize.model import GeneratorConfig, build_generator, config_from_state_dict
from colorize.storage import Storage, open_storage, split_uri

if TYPE_CHECKING:
    from colorize.registry import Registry  # which imports this module

log = logging.getLogger(__name__)

WEIGHTS_FILE = "generator.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "archive-colorize/model-card/1"
COLOR_MODES = ("lab", "rgb")
PACKAGED_DIR = Path(__file__).parent / "models" / "starter"


class ModelNotFoundError(FileNotFoundError):
    """No model where one was asked for (or no default model at all)."""


@dataclass
class LoadedModel:
    """A generator ready for inference (eval mode, float32, CPU) and the card that describes it."""

    generator: torch.nn.Module
    card: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.card["model_id"])

    @property
    def color_mode(self) -> str:
        return str(self.card["color_mode"])

    @property
    def config(self) -> GeneratorConfig:
        return GeneratorConfig(**self.card["arch"])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_id_for(name: str, sha256: str) -> str:
    return f"{name}@{sha256[:12]}"


def new_card(
    name: str,
    config: GeneratorConfig,
    color_mode: str,
    image_size: int = 256,
    **extra: Any,
) -> dict[str, Any]:
    """A card for a new model. ``extra`` holds training, hyperparameters, metrics, parent, ..."""
    if color_mode not in COLOR_MODES:
        raise ValueError(f"colour mode must be one of {', '.join(COLOR_MODES)}, not {color_mode!r}")
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": name,
        "arch": config.to_dict(),
        "color_mode": color_mode,
        "normalization": copy.deepcopy(LAB_NORMALIZATION if color_mode == "lab" else NOTEBOOK_NORMALIZATION),
        "image_size": image_size,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parent": None,
    }
    card.update(extra)
    return card


def save_model(
    storage: Storage,
    generator: torch.nn.Module,
    card: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    prefix: str = "",
) -> dict[str, Any]:
    """Write ``generator.safetensors`` and ``card.json`` under ``prefix``; return the completed card.

    ``dtype=torch.float16`` halves the file; loading always gives float32.
    """
    card = dict(card)
    card["dtype"] = str(dtype).removeprefix("torch.")
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in generator.state_dict().items()}
    header_card = {k: v for k, v in card.items() if k not in ("sha256", "model_id")}
    data = save_safetensors_bytes(state, metadata={"card": json.dumps(header_card, sort_keys=True)})
    card["sha256"] = sha256_hex(data)
    card["model_id"] = model_id_for(card["name"], card["sha256"])
    storage.write_bytes(prefix + WEIGHTS_FILE, data)
    storage.write_bytes(prefix + CARD_FILE, json.dumps(card, indent=2, sort_keys=True).encode(), "application/json")
    return card


def _generator_from_state(state: dict[str, torch.Tensor], config: GeneratorConfig) -> torch.nn.Module:
    generator = build_generator(config)
    state = {k: v.to(torch.float32) for k, v in state.items()}
    generator.load_state_dict(state, strict=True)
    return generator.eval()


def _header_card(data: bytes) -> dict[str, Any]:
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    card = header.get("__metadata__", {}).get("card")
    if card is None:
        raise ValueError("safetensors file carries no model card in its metadata; use a model folder")
    return json.loads(card)


def load_safetensors_model(data: bytes, card: dict[str, Any] | None = None) -> LoadedModel:
    """A model from safetensors bytes and its card (read from the file's header when not given)."""
    card = dict(card) if card is not None else _header_card(data)
    sha = sha256_hex(data)
    if card.get("sha256") and card["sha256"] != sha:
        raise ValueError(
            f"model weights do not match their card: sha256 {sha[:12]}... != card's {card['sha256'][:12]}..."
        )
    card["sha256"] = sha
    card["model_id"] = model_id_for(card.get("name", "model"), sha)
    generator = _generator_from_state(load_safetensors_bytes(data), GeneratorConfig(**card["arch"]))
    return LoadedModel(generator=generator, card=card)


def load_notebook_pth(data: bytes, name: str = "notebook") -> LoadedModel:
    """The source notebook's pickled generator state_dict, loaded safely and strictly.

    ``torch.load(weights_only=True)`` refuses arbitrary pickled code. The notebook's model is an
    ``rgb``-mode U-Net; its width and depth are read off the weights.
    """
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("a .pth model must be a plain generator state_dict (as the notebook saves)")
    config = config_from_state_dict(state)
    sha = sha256_hex(data)
    card = new_card(name, config, "rgb", source="pix2pix notebook state_dict (.pth)")
    card["sha256"] = sha
    card["model_id"] = model_id_for(name, sha)
    return LoadedModel(generator=_generator_from_state(state, config), card=card)


def resolve_model_spec(spec: str | None = None, registry: str | None = None, endpoint_url: str | None = None) -> str:
    """Turn what a user asked for into a concrete model location, loadable by any process.

    Args:
        spec: a model folder (local or ``s3://``; a registry version is one), a ``.safetensors``
            file, a notebook ``.pth`` file, or a registry root (meaning its ``production`` version).
        registry: a registry root whose ``production`` version is used when ``spec`` is None.

    With neither, the starter model packaged with the library.

    Raises:
        ModelNotFoundError: nothing to load, with how to fix it.
    """
    from colorize.registry import Registry  # the registry builds on this module

    if spec is not None and registry:  # a deployment's registry, and one run's own model: the model wins, said
        log.warning("model %s given, so the registry %s's production model is not used", spec, registry)
    try:
        if spec is None and registry:
            return _production_of(Registry(registry, endpoint_url=endpoint_url))
        if spec is None:
            if not (PACKAGED_DIR / WEIGHTS_FILE).exists():
                raise ModelNotFoundError(
                    "no model given and no starter model is packaged with this installation: "
                    "pass one with --model PATH (a model folder, a .safetensors file or a notebook .pth), "
                    "or --registry REG to use a registry's production model"
                )
            return str(PACKAGED_DIR)
        if not spec.lower().endswith((".pth", ".pt", ".safetensors")):
            storage = open_storage(spec, endpoint_url)
            if storage.stat(WEIGHTS_FILE) is None and storage.stat("aliases.json") is not None:
                return _production_of(Registry(spec, storage))
    except KeyError as err:
        raise ModelNotFoundError(f"{err.args[0]}; promote a version with `colorize models promote`") from None
    # Absolute: a Dask worker on another machine, or in another working folder, loads it too.
    return spec if spec.startswith("s3://") else str(Path(spec.removeprefix("file://")).expanduser().resolve())


def _production_of(reg: Registry) -> str:
    """The URI of a registry's production version, checked whole (its card and its weights there).

    Raises:
        KeyError: no production alias, or a version the registry does not have.
        ModelNotFoundError: no versions at all (a mistyped registry), or a damaged production.
    """
    from colorize.registry import PRODUCTION

    if PRODUCTION not in reg.aliases() and not reg.versions():
        raise ModelNotFoundError(
            f"no model versions in {reg.uri} (is it a registry? `colorize train ... --registry` makes one)"
        )
    version = reg.resolve(PRODUCTION)
    if (problem := reg.damage(version)) is not None:
        raise ModelNotFoundError(
            f"registry {reg.uri}'s production, {version}, {problem}; promote a version that loads "
            f"(`colorize models promote VERSION --registry {reg.uri}`)"
        )
    return reg.version_uri(version)


def model_identity(spec: str, endpoint_url: str | None = None) -> str:
    """The ``model_id`` of a resolved model spec, from its card and a hash of its weights.

    Cheap (no network is built), so a flow can name its model in the manifest on a machine that
    will never run it, e.g. a Dask scheduler's client without a GPU.
    """
    lower = spec.lower()
    base, name = split_uri(spec)
    try:
        if lower.endswith((".pth", ".pt")):
            return model_id_for(name.rsplit(".", 1)[0], sha256_hex(open_storage(base, endpoint_url).read_bytes(name)))
        if lower.endswith(".safetensors"):
            data = open_storage(base, endpoint_url).read_bytes(name)
            card = _header_card(data)
        else:
            storage = open_storage(spec, endpoint_url)
            data, card = storage.read_bytes(WEIGHTS_FILE), json.loads(storage.read_bytes(CARD_FILE))
    except FileNotFoundError as err:
        raise _not_found(spec, err) from None
    return model_id_for(card.get("name", "model"), sha256_hex(data))


def _not_found(spec: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"no model at {spec} ({err}); pass --model PATH to a folder with {WEIGHTS_FILE} and "
        f"{CARD_FILE} (a registry version is one), a registry, a .safetensors file or a notebook .pth"
    )


def load_model(spec: str | None = None, registry: str | None = None, endpoint_url: str | None = None) -> LoadedModel:
    """Resolve (see :func:`resolve_model_spec`) and load a model for inference."""
    spec = resolve_model_spec(spec, registry, endpoint_url)
    lower = spec.lower()
    try:
        if lower.endswith((".pth", ".pt")):
            base, name = split_uri(spec)
            return load_notebook_pth(open_storage(base, endpoint_url).read_bytes(name), name=name.rsplit(".", 1)[0])
        if lower.endswith(".safetensors"):
            base, name = split_uri(spec)
            storage = open_storage(base, endpoint_url)
            card = None
            if name == WEIGHTS_FILE and storage.stat(CARD_FILE) is not None:
                card = json.loads(storage.read_bytes(CARD_FILE))
            return load_safetensors_model(storage.read_bytes(name), card)
        storage = open_storage(spec, endpoint_url)
        card = json.loads(storage.read_bytes(CARD_FILE))
        return load_safetensors_model(storage.read_bytes(WEIGHTS_FILE), card)
    except FileNotFoundError as err:
        raise _not_found(spec, err) from None

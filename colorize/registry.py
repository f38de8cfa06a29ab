"""A model registry: a folder or S3 prefix of versions, plus aliases such as ``production``.

Layout::

    REG/versions/v1/generator.safetensors
    REG/versions/v1/card.json
    REG/versions/v2/...
    REG/versions/v2/claim.json  who registered it (written first: one registration per number)
    REG/aliases.json          {"production": "v2"}

A version folder is an ordinary model folder, so ``--model REG/versions/v2`` loads it directly.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import torch

from colorize.host import HOST
from colorize.modelfile import CARD_FILE, LoadedModel, load_safetensors_model, save_model
from colorize.modelfile import WEIGHTS_FILE as WEIGHTS
from colorize.storage import Storage, StorageError, open_storage

ALIASES_FILE = "aliases.json"
CLAIM_FILE = "claim.json"  # versions/v<n>/claim.json: written first, by the one registration that gets v<n>
PRODUCTION = "production"
_VERSION = re.compile(r"^v(\d+)$")
ANY = object()  # Registry.promote's if_current when the alias may point anywhere


class Registry:
    """Versions of a model under one storage root."""

    def __init__(self, uri: str, storage: Storage | None = None, endpoint_url: str | None = None):
        self.storage = storage or open_storage(uri, endpoint_url)
        self.uri = self.storage.uri

    def versions(self) -> list[str]:
        """Version names, oldest first."""
        found: set[str] = set()
        for obj in self.storage.list("versions/"):
            parts = obj.key.split("/")
            if len(parts) == 3 and parts[2] == CARD_FILE and _VERSION.match(parts[1]):
                found.add(parts[1])
        return sorted(found, key=lambda v: int(v[1:]))

    def aliases(self) -> dict[str, str]:
        try:
            data = self.storage.read_bytes(ALIASES_FILE)
        except FileNotFoundError:
            return {}
        try:
            return json.loads(data)
        except ValueError as err:
            raise ValueError(f"{self.storage.uri_for(ALIASES_FILE)} is not valid JSON ({err})") from None

    def resolve(self, ref: str) -> str:
        """A version name from a version name or an alias."""
        aliases = self.aliases()
        if ref in aliases:
            return aliases[ref]
        if _VERSION.match(ref):
            return ref
        raise KeyError(f"registry {self.uri} has no version or alias {ref!r} (aliases: {sorted(aliases)})")

    def card(self, ref: str) -> dict[str, Any]:
        version = self.resolve(ref)
        key = f"versions/{version}/{CARD_FILE}"
        try:
            return json.loads(self.storage.read_bytes(key))
        except FileNotFoundError:
            raise KeyError(f"registry {self.uri} has no version {version}") from None
        except ValueError as err:  # a card cut short or edited by hand
            raise ValueError(f"{self.storage.uri_for(key)} is not valid JSON ({err})") from None

    def damage(self, version: str) -> str | None:
        """What makes a version unloadable, at a glance (its card unreadable, its weights gone); None
        when nothing does. Raises KeyError for a version the registry does not have."""
        try:
            self.card(version)
        except ValueError as err:
            return f"is damaged: {err}"
        if self.storage.stat(f"versions/{version}/{WEIGHTS}") is None:
            return f"is damaged: it has no weights ({WEIGHTS})"
        return None

    def load(self, ref: str) -> LoadedModel:
        """Load a version (or alias) for inference."""
        from colorize.modelfile import ModelNotFoundError

        try:
            version = self.resolve(ref)
        except KeyError as err:
            raise ModelNotFoundError(str(err.args[0])) from None
        card = self.card(version)
        return load_safetensors_model(self.storage.read_bytes(f"versions/{version}/{WEIGHTS}"), card)

    def version_uri(self, ref: str) -> str:
        return self.storage.uri_for(f"versions/{self.resolve(ref)}")

    def register(self, generator: torch.nn.Module, card: dict[str, Any], dtype: torch.dtype = torch.float32) -> str:
        """Store a new version; return its name (``v1``, ``v2``, ...).

        The model's name becomes ``<card name>-<version>``, so its ``model_id`` says where it came from.
        """
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        claim = json.dumps({"host": HOST, "pid": os.getpid(), "at": time.time()}).encode()
        # Two trainings registering at once must not both write v<n>: each claims its number first,
        # by a write that only one can make (a number claimed by a crashed registration stays unused).
        while self.storage.write_if(f"versions/v{number}/{CLAIM_FILE}", claim, None) is None:
            number += 1
        version = f"v{number}"
        name = f"{card.get('name', 'model')}-{version}"
        save_model(
            self.storage,
            generator,
            {**card, "name": name, "version": version},
            dtype=dtype,
            prefix=f"versions/{version}/",
        )
        return version

    def promote(self, version: str, alias: str = PRODUCTION, if_current: str | None | object = ANY) -> bool:
        """Point ``alias`` at ``version``; return whether it did.

        With ``if_current``, only if ``alias`` still points at that version (None: at none), as when a
        candidate was measured against the production of its day: a production promoted meanwhile
        by another run is not overwritten unseen.
        """
        version = self.resolve(version)
        if (problem := self.damage(version)) is not None:  # a rollback to a version half deleted, say
            raise KeyError(f"registry {self.uri}: version {version} {problem}; not promoted")
        for _ in range(10):  # read, change, write back only if no one else wrote in between
            current = self.storage.read_versioned(ALIASES_FILE)
            aliases = json.loads(current[0]) if current else {}
            if if_current is not ANY and aliases.get(alias) != if_current:
                return False
            aliases[alias] = version
            data = json.dumps(aliases, indent=2).encode()
            if self.storage.write_if(ALIASES_FILE, data, current[1] if current else None, "application/json"):
                return True
        raise StorageError(f"registry {self.uri}: {ALIASES_FILE} kept changing under this promotion; try again")

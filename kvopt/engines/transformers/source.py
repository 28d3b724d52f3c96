"""Where the model comes from: a shipped model, a local folder, the Hugging Face cache or the hub.

Resolved once, before any study is written. ``model.hub_id`` decides; the ``model`` group
(conf/model/*.yaml) only supplies the hub id and, for that hub id alone, an architecture
copied from the hub's config.json, so a shipped model runs offline with random weights.
Any other hub id or folder is described by its *own* config.json: architecture, default
dtype (``dtype``/``torch_dtype``, float32 when absent, as Transformers does) and maximum
positions. A model that is not there is one line and exit status 2, never a substitute.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvopt.compose import model_name, shipped_models
from kvopt.config import DTYPES, KvoptConfig, ModelConfig
from kvopt.engines.transformers.loading import WeightsSource
from kvopt.errors import KvoptError

__all__ = ["ModelSource", "resolve_model", "resolve_config"]

# What save_pretrained and the hub hold as weights; the index files name their shards.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# config.json fields that describe the file, not the architecture.
_NOT_ARCHITECTURE = ("transformers_version", "_name_or_path")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_RANDOM_IS_VALID = "valid for timing: the generated length is fixed"


@dataclass(frozen=True)
class ModelSource:
    """The model as resolved: its config (the user's name, its own architecture, pinned revision),
    where its weights come from, and where its config came from (shipped, folder, cache, hub)."""

    model: ModelConfig
    weights: WeightsSource
    origin: str


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine costs seconds, not retries."""
    if _offline():
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    # Name resolution ignores socket timeouts; a daemon thread bounds it.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    return bool(result and result[0])


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _read_config(path: Path, field: str, given: str) -> dict[str, Any]:
    """A config.json as a dict; KvoptError naming ``field`` when it cannot be read or is not a causal LM."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KvoptError(f"{field}: got {given!r} but its config.json cannot be read ({_first_line(exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise KvoptError(
            f"{field}: got {given!r} but its config.json has no model_type; allowed: a Transformers config"
        )
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = data["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise KvoptError(
            f"{field}: got {given!r} whose model_type {model_type!r} this Transformers does not know; "
            "allowed: a causal LM of a model type Transformers ships (kvopt builds probes from the config)"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise KvoptError(
            f"{field}: got {given!r}, a {model_type!r} model, which is not a causal LM; "
            "allowed: a model AutoModelForCausalLM loads (gpt2, llama, qwen2, mistral, ...)"
        )
    return data


def _own_fields(data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(architecture, default dtype) from a config.json."""
    architecture = {k: v for k, v in data.items() if k not in _NOT_ARCHITECTURE}
    dtype = data.get("dtype") or data.get("torch_dtype") or "float32"
    return architecture, dtype if dtype in DTYPES else "float32"


def _has_weights(root: Path) -> bool:
    """Whether a folder (or cache snapshot) holds complete weights, every shard included."""
    for name in _WEIGHT_FILES:
        path = root / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return True
        try:
            shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        if all((root / shard).is_file() for shard in shards):
            return True
    return False


def _hub_weights(m: ModelConfig, cached: bool, hub_ok: bool | None = None) -> WeightsSource:
    """A hub id's weights: pretrained when cached, else from a reachable hub, else random (or an error)."""
    if m.weights == "random":
        return WeightsSource("random", "model.weights=random")
    if cached:
        return WeightsSource("pretrained", "found in the local cache")
    if hub_ok is None:
        hub_ok = _hub_reachable()
    if hub_ok:
        return WeightsSource("pretrained", "from the hub", local_only=False)
    if m.weights == "pretrained":
        raise KvoptError(
            f"model.weights: got 'pretrained' but {m.hub_id!r} has no weights in the local cache and the hub cannot "
            "be reached; allowed here: auto or random (random weights give the same timings)"
        )
    return WeightsSource(
        "random", f"no weights in the local cache and the hub is unreachable: random weights ({_RANDOM_IS_VALID})"
    )


def _is_path(hub_id: str) -> bool:
    """Written as a path (./ckpt, /data/ckpt, ~/ckpt, C:\\ckpt), or not a valid hub id at all."""
    if hub_id.startswith(("/", ".", "~", "\\")) or "\\" in hub_id or re.match(r"^[A-Za-z]:", hub_id):
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(hub_id)
    except HFValidationError:
        return True
    return False


def _from_folder(m: ModelConfig, folder: Path) -> ModelSource:
    config = folder / "config.json"
    if not config.is_file():
        raise KvoptError(
            f"model.hub_id: got {m.hub_id!r}, a folder without config.json; "
            "allowed: a folder written by save_pretrained (config.json and weights) or a hub id"
        )
    architecture, dtype = _own_fields(_read_config(config, "model.hub_id", m.hub_id))
    resolved = replace(
        m,
        name=model_name(m.name, m.hub_id),
        hub_id=str(folder.resolve()),
        dtype=dtype,
        architecture=architecture,
    )
    if m.weights == "random":
        weights = WeightsSource("random", "model.weights=random")
    elif _has_weights(folder):
        weights = WeightsSource("pretrained", "found in the folder")
    elif m.weights == "pretrained":
        raise KvoptError(
            f"model.weights: got 'pretrained' but the folder {m.hub_id!r} has no weights "
            f"({', '.join(_WEIGHT_FILES)}); allowed here: auto or random (random weights give the same timings)"
        )
    else:
        weights = WeightsSource(
            "random", f"no weights in the folder: random weights of its config ({_RANDOM_IS_VALID})"
        )
    return ModelSource(resolved, replace(weights, reason=f"config.json from the folder; {weights.reason}"), "folder")


def _cached_config(hub_id: str, revision: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def _download_config(hub_id: str, revision: str) -> Path:
    """config.json from the hub (HF_TOKEN honoured for gated models); one line when it fails."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(hub_id, "config.json", revision=revision))
    except GatedRepoError:
        raise KvoptError(
            f"model.hub_id: got {hub_id!r}, a gated model this account cannot read; allowed: accept its "
            "terms on the hub and set HF_TOKEN, or another model"
        ) from None
    except RepositoryNotFoundError:
        raise KvoptError(
            f"model.hub_id: got {hub_id!r} but the hub has no such model (or it is private: set HF_TOKEN); "
            "allowed: an existing hub id (org/name) or a local folder"
        ) from None
    except RevisionNotFoundError:
        raise KvoptError(
            f"model.revision: got {revision!r} but {hub_id!r} has no such revision; allowed: a branch, tag or commit"
        ) from None
    except EntryNotFoundError:
        raise KvoptError(
            f"model.hub_id: got {hub_id!r} but it has no config.json; allowed: a Transformers model"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise KvoptError(
            f"model.hub_id: got {hub_id!r} but its config.json cannot be downloaded ({_first_line(exc)})"
        ) from None


def _from_hub_id(m: ModelConfig, shipped: dict[str, dict[str, Any]]) -> ModelSource:
    own_option = next((name for name, data in shipped.items() if data.get("hub_id") == m.hub_id), None)
    # Another shipped model's hub id under a shipped name: that model, whichever group was chosen.
    # A shipped model renamed (model.name=…, its architecture perhaps changed) stays the user's
    # model, never the shipped one silently.
    if own_option is not None and own_option != m.name and m.name in shipped:
        data = shipped[own_option]
        m = replace(m, name=own_option, dtype=data["dtype"], architecture=dict(data["architecture"]))
    if own_option is not None and m.weights == "random":
        return ModelSource(m, WeightsSource("random", "model.weights=random"), "shipped")
    config = _cached_config(m.hub_id, m.revision)
    hub_ok: bool | None = None
    origin = "cache"
    if config is None and own_option is None:
        hub_ok = _hub_reachable()
        if not hub_ok:
            shipped_ids = ", ".join(sorted(str(d.get("hub_id")) for d in shipped.values()))
            why = " (HF_HUB_OFFLINE is set)" if _offline() else ""
            raise KvoptError(
                f"model.hub_id: got {m.hub_id!r} but it is not in the local Hugging Face cache and the hub "
                f"cannot be reached{why}; allowed: a cached hub id, a local folder with config.json, or a "
                f"shipped model ({shipped_ids})"
            )
        config, origin = _download_config(m.hub_id, m.revision), "hub"
    if config is None:  # a shipped model not cached: its YAML's architecture, weights from the hub or random
        return ModelSource(m, _hub_weights(m, cached=False), "shipped")
    snapshot = config.parent
    # The snapshot folder is named by its commit: trials and recommended.py load exactly that one.
    commit = snapshot.name if _COMMIT.match(snapshot.name) else m.revision
    if own_option is None:
        architecture, dtype = _own_fields(_read_config(config, "model.hub_id", m.hub_id))
        m = replace(m, name=model_name(m.name, m.hub_id), dtype=dtype, architecture=architecture)
    pinned = f"commit {commit[:12]}" + (f" of {m.revision!r}" if commit != m.revision else "")
    m = replace(m, revision=commit)
    weights = _hub_weights(m, origin == "cache" and _has_weights(snapshot), hub_ok)
    if weights.kind == "random" and own_option is None and m.weights != "random":
        weights = replace(weights, reason=f"{weights.reason}, built from the model's own config.json")
    return ModelSource(
        m, replace(weights, reason=f"config.json from the {origin} ({pinned}); {weights.reason}"), origin
    )


def resolve_model(m: ModelConfig) -> ModelSource:
    """Resolve ``model`` to what trials load; :class:`KvoptError` (one line) when it is not there.

    Args:
        m: the validated model section, as composed (its architecture is the shipped YAML's).

    Returns:
        The model as measured: a local folder's absolute path or the hub id with its revision
        pinned to a commit when one is known, its own architecture and dtype, and its weights.

    Raises:
        KvoptError: a path that does not exist, a folder without config.json, a config that
            is not a causal LM, a hub id neither cached nor reachable, pretrained weights that
            cannot be had.
    """
    shipped = shipped_models()
    folder = Path(m.hub_id).expanduser()
    if folder.is_dir():
        return _from_folder(m, folder)
    if _is_path(m.hub_id):
        raise KvoptError(
            f"model.hub_id: got {m.hub_id!r} but there is no such folder; "
            "allowed: an existing folder with config.json, or a hub id such as Qwen/Qwen2.5-7B-Instruct"
        )
    return _from_hub_id(m, shipped)


def resolve_config(cfg: KvoptConfig) -> tuple[KvoptConfig, WeightsSource]:
    """``cfg`` with its model resolved (the stored config records the resolved model too)."""
    source = resolve_model(cfg.model)
    m = source.model
    raw_model = {
        **(cfg.raw.get("model") or {}),
        "name": m.name,
        "hub_id": m.hub_id,
        "revision": m.revision,
        "dtype": m.dtype,
        "architecture": m.architecture,
    }
    return replace(cfg, model=m, raw={**cfg.raw, "model": raw_model}), source.weights

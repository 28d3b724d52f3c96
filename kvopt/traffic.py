"""A profile from the user's own traffic: observed (prompt tokens, new tokens) pairs to a mix of shapes.

Foundation: reads one file, imports nothing above :mod:`kvopt.errors` (and transformers'
tokenizer only when a line carries prompt text). Formats, one request per line:

- CSV with a header naming ``prompt_tokens`` and ``new_tokens`` (other columns ignored);
- JSONL of ``{"prompt_tokens": N, "new_tokens": M}``, or ``{"prompt": "text", "new_tokens": M}``
  whose text is counted with the model's own tokenizer (when it can be loaded offline).

Shapes: requests are sorted by prompt length and cut into :data:`BINS` equal-count bins
(quartiles); each bin becomes one shape — the bin's median prompt and median new tokens —
whose share is the bin's fraction of the requests. Fewer distinct pairs than bins: each
pair is its own shape. Every bad line is reported, as ``file:line``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from kvopt.errors import ConfigError

__all__ = ["BINS", "read_requests", "shapes_from_requests", "tokenizer_counter", "TokenCounter"]

# Quartiles of prompt length: the short, typical, long and longest quarter of the requests.
BINS = 4
# At most this many bad lines are listed (then a count), so a wrong file gives a readable error.
_MAX_LISTED = 5
# Decode throughput needs a token after the first: shorter observed outputs are measured as 2.
_MIN_NEW_TOKENS = 2

TokenCounter = Callable[[str], int]
_FIELD = "profile.traffic_file"


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    return None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, object] | None]]:
    """(line number, fields) per non-blank line; fields None where the line cannot be parsed."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        lines = text.splitlines()
        reader = csv.DictReader(lines)
        for number, row in enumerate(reader, start=2):
            if any((v or "").strip() for v in row.values()):
                yield number, dict(row)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            yield number, None
            continue
        yield number, doc if isinstance(doc, dict) else None


def read_requests(path: str | Path, count_tokens: Callable[[], TokenCounter] | None = None) -> list[tuple[int, int]]:
    """Every request's (prompt tokens, new tokens); ConfigError naming each bad line as ``file:line``.

    Args:
        path: a ``.csv`` file (header with prompt_tokens,new_tokens) or a ``.jsonl`` file.
        count_tokens: makes the tokenizer's counter, called once, only if a line has prompt text.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"{_FIELD}: got {str(path)!r} but there is no such file; allowed: a CSV or JSONL file"])
    if file.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise ConfigError([f"{_FIELD}: got {str(path)!r}; allowed: a .csv or .jsonl file"])
    pairs: list[tuple[int, int]] = []
    bad: list[str] = []
    counter: TokenCounter | None = None
    expected = "prompt_tokens and new_tokens integers >= 1 (or prompt text and new_tokens)"
    for number, row in _rows(file):
        where = f"{file}:{number}"
        if row is None:
            bad.append(f"{_FIELD}: {where} is not a JSON object; allowed: {expected}")
            continue
        new = _count(row.get("new_tokens"))
        prompt = _count(row.get("prompt_tokens"))
        text = row.get("prompt")
        if prompt is None and isinstance(text, str) and new is not None:
            if count_tokens is None:
                bad.append(f"{_FIELD}: {where} has prompt text but no tokenizer is available; allowed: prompt_tokens")
                continue
            counter = counter or count_tokens()
            prompt = max(1, counter(text))
        if prompt is None or new is None:
            shown = {k: row.get(k) for k in ("prompt_tokens", "new_tokens") if k in row} or row
            bad.append(f"{_FIELD}: {where} got {shown!r}; allowed: {expected}")
            continue
        pairs.append((prompt, new))
    if bad:
        listed = bad[:_MAX_LISTED]
        if len(bad) > _MAX_LISTED:
            listed.append(f"{_FIELD}: and {len(bad) - _MAX_LISTED} more bad lines in {file}")
        raise ConfigError(listed)
    if not pairs:
        raise ConfigError([f"{_FIELD}: {file} has no requests; allowed: a file with at least one request line"])
    return pairs


def _median(values: list[int]) -> int:
    return math.ceil(statistics.median(values))


def shapes_from_requests(pairs: list[tuple[int, int]]) -> list[tuple[int, int, float]]:
    """(prompt tokens, new tokens, share) per shape: quartile bins of prompt length (module docstring)."""
    distinct = Counter((p, max(n, _MIN_NEW_TOKENS)) for p, n in pairs)
    if len(distinct) <= BINS:
        return [(p, n, count / len(pairs)) for (p, n), count in sorted(distinct.items())]
    ordered = sorted(pairs)
    shapes: dict[tuple[int, int], float] = {}
    for b in range(BINS):
        chunk = ordered[b * len(ordered) // BINS : (b + 1) * len(ordered) // BINS]
        if not chunk:
            continue
        key = (_median([p for p, _ in chunk]), max(_MIN_NEW_TOKENS, _median([n for _, n in chunk])))
        shapes[key] = shapes.get(key, 0.0) + len(chunk) / len(ordered)
    return [(p, n, share) for (p, n), share in sorted(shapes.items())]


def tokenizer_counter(hub_id: str, revision: str, trust_remote_code: bool) -> Callable[[], TokenCounter]:
    """A factory of the model's token counter, loaded offline (cache or folder) when first needed."""

    def make() -> TokenCounter:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(
                hub_id, revision=revision, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except Exception as exc:  # not cached, no tokenizer files, a folder without them
            raise ConfigError(
                [
                    f"{_FIELD}: has prompt text but the tokenizer of {hub_id!r} cannot be loaded offline "
                    f"({type(exc).__name__}); allowed: prompt_tokens,new_tokens pairs, or a model whose "
                    "tokenizer is in the local cache or folder"
                ]
            ) from None
        return lambda text: len(tok(text, add_special_tokens=True)["input_ids"])

    return make

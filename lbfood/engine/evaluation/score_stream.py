"""`lbfood score FOLDER --out FILE.jsonl [--shard I/N]`: score 10^5–10^6 images as a stream.

One JSON object per image (the same as `--json`), appended and flushed after every batch, so memory does
not grow with the number of images (beyond the list of paths) and a killed run loses at most one batch.
Resume: the same command again reads FILE, keeps every complete line (a line cut by the kill is
dropped), checks that they are the first images of this input in order, and scores only the rest.
Shards: the sorted list of images is cut into N contiguous parts; shard I (0-based) scores part I, so
the N files concatenated in shard order equal the unsharded file image for image.
Each shard runs as its own process (one per machine or GPU); torchrun ranks are not used here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lbfood.engine.config import ScoreConfig
from lbfood.engine.data.paths import expand_paths
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import score as scoring
from lbfood.engine.events import Step


@dataclass(frozen=True)
class Streamed:
    """What `score_to_file` did: images in this shard, already in the file, scored now, failed, OOD."""

    out: Path
    total: int
    resumed: int
    scored: int
    errors: int
    ood: int
    seconds: float


def parse_shard(text: str | None) -> tuple[int, int]:
    """"I/N" → (I, N), 0 ≤ I < N; None → (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: pass I/N, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: I must be in 0..N-1 (shards are numbered from 0), e.g. 0/{max(n, 1)}")
    return i, n


def shard_of(entries: list, i: int, n: int) -> list:
    """Part I of N contiguous parts (sizes differ by at most one)."""
    return entries[i * len(entries) // n:(i + 1) * len(entries) // n]


def done_lines(out: Path, entries: list[tuple[str, str | None]], shard: str) -> int:
    """How many of `entries` FILE already holds (its complete lines, which must be their first images in
    order); a last line cut by a kill is removed. Refuses a file holding other images' results."""
    if not out.exists():
        return 0
    if not out.is_file():
        raise ConfigError(f"--out {out} is not a file; pass a .jsonl file to write (or continue)")
    data = out.read_bytes()
    keep = data[:data.rfind(b"\n") + 1]
    lines = keep.splitlines()
    for k, line in enumerate(lines):
        try:
            f = json.loads(line)["file"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--out {out}: line {k + 1} is not a score line; pass a new --out") from None
        if k >= len(entries) or f != entries[k][0]:
            raise ConfigError(f"--out {out} holds results for other images (line {k + 1}: {f}), not the first images "
                              f"of shard {shard} of this input; pass a new --out for each shard and input")
    if len(keep) != len(data):
        with open(out, "r+b") as fh:  # drop the line the kill cut short
            fh.truncate(len(keep))
    return len(lines)


def score_to_file(cfg: ScoreConfig, out: Path, shard: tuple[int, int] = (0, 1),
                  on_event: Callable[[Step], None] | None = None, notes: list[str] | None = None) -> Streamed:
    """Score shard `shard` of cfg.paths into the JSONL file `out`, continuing it if it exists."""
    i, n = shard
    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    entries = shard_of(expand_paths(cfg.paths), i, n)
    resumed = done_lines(out, entries, f"{i}/{n}")
    sc = scoring.prepare(cfg, on_event, notes)
    t0, scored, errors, ood = time.time(), 0, 0, 0
    with open(out, "a", encoding="utf-8") as fh:
        for rows in scoring.iter_rows(sc, entries[resumed:]):
            fh.write("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())
            scored += len(rows)
            errors += sum(r.error is not None for r in rows)
            ood += sum(r.verdict == "OOD" for r in rows)
            if on_event is not None:
                rate = scored / max(time.time() - t0, 1e-9)
                left = len(entries) - resumed - scored
                on_event(Step(f"scored {resumed + scored:,}/{len(entries):,} images · {rate:,.0f} images/s · "
                              f"ETA {left / rate:,.0f} s"))
    return Streamed(out, len(entries), resumed, scored, errors, ood, round(time.time() - t0, 3))

"""Retention: drop old scores, snapshots and model versions, keeping what rollback needs.

Serving versions are pruned by ``publish`` itself (``NIGHTREC_KEEP_SERVING``). Here:

- ``scores/<run>``: the newest ``scores`` folders (scores matter only until publish);
- ``snapshots/<date>``: the newest ``snapshots`` dates;
- model versions: ``current``, every version a kept serving version was scored with
  (so a rollback's lineage stays inspectable), and the newest ``models`` others;
- stale temporary files of killed runs (``nightrec.housekeeping``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from nightrec.config import RetentionConfig, Settings

log = logging.getLogger(__name__)


def _dirs(folder: Path) -> list[Path]:
    """Finished folders (no dot names, no ``.tmp``), oldest first by name then mtime."""
    if not folder.is_dir():
        return []
    done = [
        p
        for p in folder.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and not p.name.startswith(".")
        and not p.name.endswith((".tmp", ".old"))
    ]
    return sorted(done, key=lambda p: (p.stat().st_mtime, p.name))


def _serving_models(settings: Settings) -> set[str]:
    from nightrec.publish import version_info, versions

    return {version_info(settings, v)["model_version"] for v in versions(settings)}


def prune(settings: Settings, cfg: RetentionConfig | None = None) -> dict[str, int]:
    """Apply retention; returns how many folders of each kind were removed."""
    from nightrec import registry

    cfg = cfg or RetentionConfig.from_env()
    removed = {"scores": 0, "snapshots": 0, "models": 0, "leftovers": 0}
    for kind, folder, keep in (
        ("scores", settings.home / "scores", cfg.scores),
        ("snapshots", settings.home / "snapshots", cfg.snapshots),
    ):
        found = _dirs(folder)
        if kind == "snapshots":  # dated names: keep the newest dates, not the newest writes
            found = sorted(found, key=lambda p: p.name)
        for old in found[:-keep]:
            shutil.rmtree(old)
            removed[kind] += 1
    current = registry.CURRENT
    link = settings.models_dir / current
    protected = {link.resolve().name} if link.exists() else set()
    protected |= _serving_models(settings)
    models = [p for p in _dirs(settings.models_dir) if (p / registry.MANIFEST).is_file()]
    others = [p for p in models if p.name not in protected]
    for old in others[: -cfg.models]:
        shutil.rmtree(old)
        removed["models"] += 1
    from nightrec.housekeeping import clean_leftovers

    removed["leftovers"] = len(clean_leftovers(settings, cfg.leftovers_age_s)["removed"])
    log.info(
        "prune: removed %d score folders, %d snapshots, %d model versions, %d leftovers",
        removed["scores"],
        removed["snapshots"],
        removed["models"],
        removed["leftovers"],
    )
    return removed

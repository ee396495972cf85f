"""Journal bundles: runs made without the database, packed into a few files to carry to it.

    python -m ablations.store bundle OUT_DIR                 # where the runs were made (--journal-only)
    python -m ablations.store sync OUT_DIR/journal-*.tar.xz  # where the database is

A bundle part is an xz-compressed tar of whole runs: each run's journal files (run.json,
config.json, info.json, metrics.json, cout.txt and its artifacts; the full checkpoint only when
asked) under ``<run_uuid>/``, the experiment sources they name under ``_sources/``, the journal's
sweep manifests (:mod:`ablations.sweep_manifest`, a few KiB, in every part) under ``_sweeps/``, and a
``manifest.json``. No part is larger than ``part_mib`` (a run is never split across parts), so the
parts fit through a channel that limits the size of a file, such as a GPU machine that returns at
most 16 MiB a file.

Unpacking puts each run into the journal's ``offline/`` directory under its run_uuid, from where
:func:`ablations.sync.sync_all` uploads it like any journal-only run. A run already unpacked is
left as it is, and sync matches runs by ``info.run_uuid``: unpacking and syncing twice changes
nothing.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ablations import sweep_manifest
from ablations.record import CHECKPOINT
from ablations.sync import is_settled, load

PART_MIB = 16
# Weights are nearly incompressible (xz saves about 9% at any preset) and the rest is small: preset 0
# saves as much as 6 here, at about 2.5x the speed (5.7 against 2.3 MiB/s on a 2-core EPYC).
XZ_PRESET = 0
MANIFEST = "manifest.json"
NEVER = {"synced.json"}  # the sender's bookkeeping, not part of the run
SUFFIX = ".tar.xz"


def run_files(run_dir: Path, checkpoints: bool = False) -> list[Path]:
    """The files of a journal run that a bundle carries."""
    return [p for p in sorted(run_dir.iterdir()) if p.is_file() and p.name not in NEVER
            and (checkpoints or p.name != CHECKPOINT)]


def source_files(run_dir: Path) -> list[Path]:
    """The experiment sources a journal run names (kept once for all runs, in ``<journal>/_sources``)."""
    sources = load(run_dir)["run"].get("experiment", {}).get("sources", [])
    return [run_dir.parent / stored for _, stored in sources if (run_dir.parent / stored).exists()]


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def plan_parts(run_dirs: list[Path], checkpoints: bool, part_bytes: int) -> list[list[Path]]:
    """Runs grouped into parts of at most ``part_bytes`` uncompressed (so compressed too), in order.

    :raises ValueError: naming a run that alone is larger than a part.
    """
    parts, current, used = [], [], 0
    for run_dir in run_dirs:
        size = _size(run_files(run_dir, checkpoints)) + _size(source_files(run_dir)) + 4096
        if size > part_bytes:
            raise ValueError(f"run {run_dir} holds {size / 2**20:.1f} MiB, more than a part may "
                             f"({part_bytes / 2**20:.0f} MiB): raise --part-mib, or leave out checkpoints")
        if current and used + size > part_bytes:
            parts.append(current)
            current, used = [], 0
        current.append(run_dir)
        used += size
    return parts + ([current] if current else [])


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def write(run_dirs: list[Path], out_dir: Path, checkpoints: bool = False, part_mib: float = PART_MIB,
          log=print) -> list[Path]:
    """Bundle the settled runs among ``run_dirs`` into ``out_dir``; return the part files written."""
    journals = {d: load(d) for d in run_dirs}
    settled = [d for d, run in journals.items() if run["info"].get("run_uuid") and is_settled(run)]
    for skipped in sorted(set(run_dirs) - set(settled)):
        log(f"{skipped}: left out (still running, or no run_uuid)")
    # Compressed output can exceed its input by a few bytes a block: keep 1% of each part spare.
    parts = plan_parts(settled, checkpoints, int(part_mib * 2**20 * 0.99))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    paths = [out_dir / f"journal-{stamp}-part{i}of{len(parts)}{SUFFIX}" for i in range(1, len(parts) + 1)]
    # One thread a part: lzma compresses outside the GIL, so the parts are made side by side.
    with ThreadPoolExecutor(max_workers=max(1, min(len(parts), os.cpu_count() or 1))) as pool:
        list(pool.map(lambda i: _write_part(paths[i], parts[i], journals, checkpoints, i + 1, len(parts)),
                      range(len(parts))))
    for path, group in zip(paths, parts):
        log(f"{path}: {len(group)} run{'s' if len(group) > 1 else ''}, {path.stat().st_size / 2**20:.1f} MiB")
    return paths


def _write_part(path: Path, group: list[Path], journals: dict, checkpoints: bool, index: int, count: int) -> None:
    """One part: the runs of ``group`` under their run_uuid, the sources they name, and the manifest."""
    manifest = {"part": index, "parts": count, "checkpoints": checkpoints, "runs": []}
    with tarfile.open(path, "w:xz", preset=XZ_PRESET) as tar:
        sources = set()
        for run_dir in group:
            run = journals[run_dir]
            run_uuid = run["info"]["run_uuid"]
            for file in run_files(run_dir, checkpoints):
                tar.add(file, arcname=f"{run_uuid}/{file.name}")
            sources.update(source_files(run_dir))
            manifest["runs"].append({"run_uuid": run_uuid, "status": run["run"].get("status"),
                                     "cell": run["config"].get("cell"), "seed": run["config"].get("seed")})
        for source in sorted(sources):
            tar.add(source, arcname=f"_sources/{source.name}")
        for sweep in sweep_manifest.journal_files(group[0].parent):
            tar.add(sweep, arcname=f"{sweep_manifest.DIRECTORY}/{sweep.name}")
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode())


def unpack(bundle: Path, offline_dir: Path, log=print) -> list[Path]:
    """Put the runs of one bundle part into the journal directory ``offline_dir``; return their directories."""
    with tempfile.TemporaryDirectory(dir=offline_dir.parent if offline_dir.parent.exists() else None) as tmp:
        with tarfile.open(bundle, "r:xz") as tar:
            tar.extractall(tmp, filter="data")  # refuses absolute paths, links out and `..`
        tmp = Path(tmp)
        if not (tmp / MANIFEST).exists():
            raise ValueError(f"{bundle} is not a journal bundle: it has no {MANIFEST}")
        manifest = json.loads((tmp / MANIFEST).read_text())
        (offline_dir / "_sources").mkdir(parents=True, exist_ok=True)
        for source in (tmp / "_sources").glob("*") if (tmp / "_sources").exists() else []:
            if not (offline_dir / "_sources" / source.name).exists():  # names carry the file's md5
                shutil.move(str(source), offline_dir / "_sources" / source.name)
        for sweep in sweep_manifest.journal_files(tmp):
            sweep_manifest.write_journal(offline_dir, json.loads(sweep.read_text()))
        runs = []
        for entry in manifest["runs"]:
            target = offline_dir / entry["run_uuid"]
            if not target.exists():
                shutil.move(str(tmp / entry["run_uuid"]), target)
            runs.append(target)
    log(f"{bundle}: part {manifest['part']} of {manifest['parts']}, {len(runs)} runs")
    return runs

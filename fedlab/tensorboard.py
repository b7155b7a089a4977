"""Per-round metrics as TensorBoard event files, through TFF's own release manager (``tff.program``).

``run_experiment(config, tensorboard_dir=DIR)`` (``--tensorboard DIR``) writes
each run into ``DIR/<algorithm>-<result-cache key>/`` with the run's
``config.json`` beside its events, so ``tensorboard --logdir DIR`` shows every
run of a sweep side by side. Rounds already written (a resumed run, a run read
from the result cache) are not written twice.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Iterable

from .runtime import run_coroutine, tff
from .storage import atomic_write

MARKER = "last_round_written"


def run_folder(root, config, key: str) -> pathlib.Path:
    """``key``: the run's result-cache key (config, fedlab's code, the user's components), so that a run of other
    code never shares a folder, or a record of rounds written, with this one."""
    return pathlib.Path(root) / f"{config.algorithm}-{key[:12]}"


class TensorBoardLog:
    """Writes a run's rows as scalars (one step per round) with ``tff.program.TensorBoardReleaseManager``."""

    def __init__(self, root, config, key: str):
        self.dir = run_folder(root, config, key)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "config.json", config.to_json() + "\n")
        self.manager = tff().program.TensorBoardReleaseManager(str(self.dir))
        marker = self.dir / MARKER
        self.written = int(marker.read_text()) if marker.exists() and marker.read_text().strip().isdigit() else 0

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            round_num = int(row["round"])
            if round_num <= self.written:
                continue
            values = {k: float(v) for k, v in row.items()
                      if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(float(v))}
            run_coroutine(self.manager.release(values, key=round_num))
            self.written = round_num
        # TFF's release manager leaves flushing to TensorFlow (every 10 events or 120 s): flush its writer
        # before the marker says the rounds are on disk, or a crash could lose them for good.
        self.manager._summary_writer.flush()  # noqa: SLF001 - TFF 0.87 exposes no flush
        atomic_write(self.dir / MARKER, str(self.written))


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run folder's event files: tag -> [(step, value)] (for tests and notebooks)."""
    import tensorflow as tf

    out: dict[str, list] = {}
    for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else float(
                    tf.make_ndarray(value.tensor))
                out.setdefault(value.tag, []).append((int(event.step), number))
    return out


def describe(root) -> str:
    runs = sorted(p.name for p in pathlib.Path(root).iterdir() if (p / "config.json").exists())
    return json.dumps(runs)

"""Systems heterogeneity: devices that differ in speed, bandwidth and availability, and a simulated clock.

A device profile (:func:`register_device_profile`) draws, for ``num_clients``
clients, a compute speed (examples per second), download and upload bandwidth
(Mbit/s) and an availability (the chance to be online in a round). fedlab's
profiles register the same way a user's do; a user's own table is a CSV
(:func:`devices_from_csv`, :func:`register_device_table`).

The clock (:func:`client_seconds`): a client's round time is the model's bytes
down over its download bandwidth, plus the examples it processes over its
speed, plus its update's bytes up over its upload bandwidth. A round lasts as
long as the policy (:func:`schedule_round`) waits:

* ``wait``: for every selected client that stays online (with over-selection,
  for the first K to finish);
* ``drop``: until ``round_deadline``; clients not done by then are dropped;
* ``partial``: until ``round_deadline``; a late client sends the local steps it
  finished by then (those that fit before its upload), one with none is dropped.

A client that goes offline mid-round (``dropout_rate``) is dropped and noticed
at once (the server sees its connection close); it costs the round no time.
Everything here is NumPy and a pure function of its arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.registry import Registry, decorator
from ..core.validation import ConfigError

POLICIES = ("wait", "drop", "partial")
CSV_COLUMNS = ("client", "examples_per_second", "down_mbps", "up_mbps", "availability")


@dataclasses.dataclass(frozen=True, eq=False)
class Devices:
    """One device per client: ``speed`` (examples/s), ``down_mbps``, ``up_mbps``, ``availability`` in [0, 1]."""

    speed: np.ndarray
    down_mbps: np.ndarray
    up_mbps: np.ndarray
    availability: np.ndarray

    def __post_init__(self):
        n = len(self.speed)
        for name in ("speed", "down_mbps", "up_mbps", "availability"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (n,):
                raise ValueError(f"{name}: must hold one value per client ({n}), got shape {value.shape}")
            if not np.isfinite(value).all():
                client = int(np.flatnonzero(~np.isfinite(value))[0])
                raise ValueError(f"{name}: must be finite, got {value[client]} (client {client})")
            bad = (value < 0) | (value > 1) if name == "availability" else value <= 0
            if bad.any():
                client = int(np.flatnonzero(bad)[0])
                allowed = "in [0, 1]" if name == "availability" else "> 0"
                raise ValueError(f"{name}: must be {allowed}, got {value[client]:g} (client {client})")
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.speed)

    def table(self):
        import pandas as pd

        return pd.DataFrame({"client": np.arange(len(self)), "examples_per_second": self.speed,
                             "down_mbps": self.down_mbps, "up_mbps": self.up_mbps,
                             "availability": self.availability})


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """A registered profile: ``draw(num_clients, rng) -> Devices``; ``clients``: the only number of clients it
    has devices for (a device table), None if any."""

    name: str
    draw: Callable[[int, np.random.Generator], Devices]
    clients: Optional[int] = None


DEVICE_PROFILES: Registry[DeviceProfile] = Registry("device profile", "device_profile")


def register_device_profile(name: str, *, paper: Optional[str] = None, replace: bool = False):
    """Registers ``draw(num_clients, rng) -> Devices`` under ``name`` (``device_profile=name`` in a config)."""
    return decorator(DEVICE_PROFILES, name, lambda draw: DeviceProfile(name, draw), paper=paper, replace=replace)


def devices_for(profile: str, num_clients: int, seed: int) -> Devices:
    """The devices of ``num_clients`` clients under ``profile``, drawn with ``seed``."""
    devices = DEVICE_PROFILES[profile].draw(num_clients, np.random.default_rng([seed, 7001]))
    if not isinstance(devices, Devices) or len(devices) != num_clients:
        raise ValueError(f"device_profile {profile!r}: must give Devices for {num_clients} clients")
    return devices


# Profiles ------------------------------------------------------------------------------------------------


# FedScale's device trace (Lai et al. 2022, "FedScale: Benchmarking Model and System Performance of Federated
# Learning at Scale", ICML; SymbioticLab/FedScale, benchmark/dataset/data/device_info/client_device_capacity):
# per client, "computation" in ms per sample (AI Benchmark) and "communication" in kbit/s (MobiPerf), drawn
# independently (correlation about 0). The trace itself (500,000 clients, 39 MB) is not shipped here; these are
# quantiles of 1,855 of its clients read from a public JSON copy of its first 50,000 entries, checked against the
# entries FedScale's own Oort docstring quotes. FedScale's client latency (fedscale/cloud/internal/
# client_metadata.py): 3 x samples x ms / 1000 s of compute (backward = 2 x forward) plus (up + down) size over
# the one bandwidth. fedlab's clock does the same: speed = 1000 / (3 ms) examples/s, down = up = kbit/s / 1000.
# Provenance, sample and FedScale's code quoted: docs/fedscale_devices.md (quantiles: docs/fedscale_quantiles.csv).
FEDSCALE_QUANTILES = np.array([0.0, 0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55,
                               0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.98, 0.99, 1.0])
FEDSCALE_MS_PER_SAMPLE = np.array([15.0, 15, 18, 19, 21, 23, 23, 24, 25, 27, 28, 31, 41, 50, 72, 134, 143, 148, 154,
                                   159, 175, 190, 193, 193, 199])
FEDSCALE_KBPS = np.array([1017.0, 1062, 1097, 1278, 1808, 1990, 2217, 2728, 3482, 4237, 4758, 5204, 6075, 7389, 8859,
                          10366, 12844, 15980, 22914, 28808, 33465, 65335, 93131, 115252, 204057])
FEDSCALE_TRAINING_FACTOR = 3.0  # FedScale's augmentation_factor: a training sample costs 3 inference passes


def _fedscale_median() -> tuple[float, float]:
    ms = float(np.interp(0.5, FEDSCALE_QUANTILES, FEDSCALE_MS_PER_SAMPLE))
    mbps = float(np.interp(0.5, FEDSCALE_QUANTILES, FEDSCALE_KBPS)) / 1000
    return 1000.0 / (FEDSCALE_TRAINING_FACTOR * ms), mbps


@register_device_profile("uniform")
def _uniform(num_clients: int, rng: np.random.Generator) -> Devices:
    """Identical, always-online devices (FedScale's median client): fedlab's behaviour before profiles."""
    speed, mbps = _fedscale_median()
    ones = np.ones(num_clients)
    return Devices(speed * ones, mbps * ones, mbps * ones, ones)


@register_device_profile("fedscale", paper="Lai et al. 2022, FedScale (ICML), arXiv:2105.11367: device trace")
def _fedscale(num_clients: int, rng: np.random.Generator) -> Devices:
    """FedScale's mobile devices: speed and bandwidth drawn independently from its trace's quantiles
    (interpolated), one bandwidth both ways, always online (its availability trace is not shipped here)."""
    ms = np.interp(rng.random(num_clients), FEDSCALE_QUANTILES, FEDSCALE_MS_PER_SAMPLE)
    mbps = np.interp(rng.random(num_clients), FEDSCALE_QUANTILES, FEDSCALE_KBPS) / 1000
    return Devices(1000.0 / (FEDSCALE_TRAINING_FACTOR * ms), mbps, mbps.copy(), np.ones(num_clients))


def devices_from_csv(path: str | os.PathLike, num_clients: Optional[int] = None) -> Devices:
    """A user's device table: columns client, examples_per_second, down_mbps, up_mbps, availability.

    Clients 0..N-1, each once. With ``num_clients`` the table must have exactly that many rows.
    Raises ValueError naming the column and row of a bad value.
    """
    import pandas as pd

    path = pathlib.Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"device table {path}: cannot be read ({str(err).splitlines()[0]})") from None
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"device table {path}: column {missing[0]!r} is missing (needs {', '.join(CSV_COLUMNS)})")
    for column in CSV_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=np.float64)))
        if len(bad):
            raise ValueError(f"device table {path}: column {column!r}, row {bad[0] + 1}: "
                             f"{frame[column].iloc[bad[0]]!r} is not a finite number")
        frame[column] = values
    frame = frame.sort_values("client")
    if list(frame["client"]) != list(range(len(frame))):
        raise ValueError(f"device table {path}: column 'client' must hold 0..{len(frame) - 1}, each once")
    if num_clients is not None and len(frame) != num_clients:
        raise ValueError(f"device table {path}: has {len(frame)} clients, the config {num_clients}")
    try:
        return Devices(*(frame[c].to_numpy(np.float64) for c in CSV_COLUMNS[1:]))
    except ValueError as err:
        raise ValueError(f"device table {path}: {err}") from None


def register_device_table(name: str, path: str | os.PathLike, *, replace: bool = False) -> Devices:
    """Registers the CSV at ``path`` as profile ``name`` (its content is read now and keys the result cache)."""
    devices = devices_from_csv(path)
    text = pathlib.Path(path).read_bytes()

    def draw(num_clients: int, rng: np.random.Generator) -> Devices:
        if num_clients != len(devices):
            raise ConfigError("num_clients", f"must be {len(devices)} with device_profile {name!r} "
                                             f"(the rows of {pathlib.Path(path).name})")
        return devices

    draw.__doc__ = f"device table {pathlib.Path(path).name} ({len(devices)} clients)"
    draw.__module__ = "fedlab_user_tables"  # the user's component, not fedlab's (may be registered again)
    draw.fedlab_digest = hashlib.sha256(text).hexdigest()[:12]  # the table, not this code, keys the cache
    decorator(DEVICE_PROFILES, name, lambda d: DeviceProfile(name, d, len(devices)), replace=replace)(draw)
    return devices


# The clock -----------------------------------------------------------------------------------------------


def step_sizes(n: int, batch: int, epochs: int) -> np.ndarray:
    """The examples in each local step of ``epochs`` passes over ``n`` examples in batches of ``batch``."""
    per_epoch = -(-n // batch)
    sizes = np.full(per_epoch, batch, np.int64)
    sizes[-1] = n - batch * (per_epoch - 1)
    return np.tile(sizes, epochs)


def client_seconds(devices: Devices, clients: Sequence[int], examples: Sequence[float], bytes_down: float,
                   bytes_up: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(download, compute, upload) seconds of each client in ``clients`` processing ``examples`` examples."""
    clients = np.asarray(clients, dtype=np.int64)
    down = bytes_down * 8 / (devices.down_mbps[clients] * 1e6)
    compute = np.asarray(examples, dtype=np.float64) / devices.speed[clients]
    up = bytes_up * 8 / (devices.up_mbps[clients] * 1e6)
    return down, compute, up


@dataclasses.dataclass(frozen=True)
class Work:
    """What one selected client would do this round: its step sizes (examples per local step)."""

    steps: np.ndarray  # examples in each step, in order

    @property
    def examples(self) -> float:
        return float(self.steps.sum())

    def steps_within(self, examples: float) -> int:
        """How many whole steps fit in ``examples`` examples of compute."""
        return int(np.searchsorted(np.cumsum(self.steps), examples, side="right"))


@dataclasses.dataclass(frozen=True)
class RoundSchedule:
    """Who takes part in a round and how long it lasts.

    ``selected``: clients asked to train (sorted); ``completed``: those whose
    update the server uses (sorted); ``steps``: local steps of each completed
    client (its full work, or less under ``partial``); ``round_seconds``: the
    simulated length of the round.
    """

    selected: np.ndarray
    completed: np.ndarray
    steps: dict
    round_seconds: float

    @property
    def dropped(self) -> int:
        return len(self.selected) - len(self.completed)


def schedule_round(devices: Devices, selected: Sequence[int], work: Sequence[Work], *, keep: int, policy: str,
                   deadline: Optional[float], offline: Sequence[bool], bytes_down: float, bytes_up: float,
                   tiebreak: Optional[Sequence[float]] = None) -> RoundSchedule:
    """Applies ``policy`` to the ``selected`` clients (each with its ``work``); at most ``keep`` are used.

    Clients finish in order of their round time, ties broken by ``tiebreak``
    (random draws, so equal devices share the work; None: by id); the first
    ``keep`` that finish (in time, for ``drop`` and ``partial``) are used. The
    round ends when the ``keep``-th finishes; short of that, when every client
    still online has reported or (``drop``, ``partial``) the deadline passed.
    """
    if policy not in POLICIES:
        raise ValueError(f"straggler_policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy != "wait" and (deadline is None or not deadline > 0):
        raise ValueError(f"round_deadline: must be > 0 with straggler_policy={policy!r}, got {deadline!r}")
    selected = np.asarray(selected, dtype=np.int64)
    if len(selected) == 0:
        return RoundSchedule(selected, selected, {}, 0.0)
    down, compute, up = client_seconds(devices, selected, [w.examples for w in work], bytes_down, bytes_up)
    finish = down + compute + up
    offline = np.asarray(offline, dtype=bool)
    steps = {int(c): len(w.steps) for c, w in zip(selected, work)}
    done_at = np.where(offline, np.inf, finish)
    if policy == "partial":
        for i, (c, w) in enumerate(zip(selected, work)):
            if offline[i] or finish[i] <= deadline:
                continue
            budget = (deadline - down[i] - up[i]) * devices.speed[c]
            done = w.steps_within(budget) if budget > 0 else 0
            steps[int(c)] = done
            done_at[i] = deadline if done > 0 else np.inf
    elif policy == "drop":
        done_at = np.where(done_at <= deadline, done_at, np.inf)
    order = np.lexsort((selected if tiebreak is None else np.asarray(tiebreak), done_at))
    kept = [i for i in order if np.isfinite(done_at[i])][:keep]
    completed = np.sort(selected[kept])
    if len(kept) == keep:  # the quota is met when the keep-th client finishes
        seconds = float(done_at[kept[-1]])
    else:  # every client still online has reported, or missed the deadline the server waited for
        waited = finish if policy == "wait" else np.minimum(finish, deadline)
        seconds = float(max(waited[~offline], default=0.0))
    return RoundSchedule(selected, completed, {int(c): steps[int(c)] for c in completed}, seconds)


def over_selected(k: int, over_selection: float, available: int) -> int:
    """How many clients to ask when K are needed: ceil(K x over_selection), at most the ``available``."""
    return min(available, math.ceil(k * over_selection - 1e-9))

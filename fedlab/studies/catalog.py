"""What is registered: every data set, task, loss, metric, model, algorithm, partitioner, aggregator, attack,
device profile and baseline, with its paper."""

from __future__ import annotations

import pandas as pd

from ..aggregators.aggregation import AGGREGATORS
from ..algorithms.algorithms import ALGORITHMS
from ..systems.asynchronous import STALENESS
from ..rounds.attacks import ATTACKS
from .comparison import BASELINES
from ..data.data import DATASETS
from ..models.models import MODELS
from ..data.partition import PARTITIONERS
from ..systems.systems import DEVICE_PROFILES
from ..data.tasks import LOSSES, METRICS, TASKS

REGISTRIES = {"dataset": DATASETS, "task": TASKS, "loss": LOSSES, "metric": METRICS, "model": MODELS, "algorithm": ALGORITHMS, "partitioner": PARTITIONERS,
              "aggregator": AGGREGATORS, "attack": ATTACKS, "devices": DEVICE_PROFILES, "staleness": STALENESS,
              "baseline": BASELINES}


def catalog() -> pd.DataFrame:
    """One row per registered component: kind, name, what it is, its paper, built in or the user's."""
    rows = []
    for kind, registry in REGISTRIES.items():
        for entry in registry.entries():
            detail = ""
            if kind == "algorithm":
                params = [f"{f.name}={f.default!r}" for f in entry.component.param_fields()]
                detail = ", ".join(params)
            elif kind == "aggregator":
                detail = f"{entry.component.role}"
            elif kind == "attack":
                detail = entry.component.kind
            elif kind == "dataset":
                detail = entry.component.task
            elif kind == "task":
                detail = f"loss={entry.component.loss}, metrics={', '.join(entry.component.metrics)}"
            elif kind == "loss":
                detail = "" if entry.component.per_example else "couples a batch's records"
            elif kind == "metric":
                detail = entry.component.task
            rows.append({"kind": kind, "name": entry.name, "summary": entry.summary, "parameters": detail,
                         "paper": entry.paper or "", "builtin": entry.builtin})
    return pd.DataFrame(rows, columns=["kind", "name", "summary", "parameters", "paper", "builtin"])


def format_catalog() -> str:
    """The catalog as text, one line per component (what ``python -m fedlab list`` prints)."""
    lines = []
    for row in catalog().itertuples():
        extra = f" [{row.parameters}]" if row.parameters else ""
        paper = f" — {row.paper}" if row.paper else ""
        owner = "" if row.builtin else " (yours)"
        lines.append(f"{row.kind:<12} {row.name:<20} {row.summary}{extra}{paper}{owner}")
    return "\n".join(lines)


def hyperparameters() -> dict[str, tuple]:
    """Every registered algorithm hyperparameter: name -> (field, names of the algorithms that have it)."""
    found: dict[str, tuple] = {}
    for entry in ALGORITHMS.entries():
        for f in entry.component.param_fields():
            field, owners = found.get(f.name, (f, ()))
            found[f.name] = (field, owners + (entry.name,))
    return found


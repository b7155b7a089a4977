"""fedlab: a Jupyter-centric research workbench for federated learning on TensorFlow Federated.

Importing fedlab is cheap; TensorFlow Federated is imported on first use.
Bring your own data set, model, algorithm, partitioner or robust aggregator
with the ``register_*`` decorators; they are then usable by name everywhere a
built-in is (configs, sweeps, caches, checkpoints, widgets, command line).
"""

import os as _os

# TensorFlow's C++ log lines (CUDA factories registered on a machine with no GPU, grappler's "fetch node" notes)
# fill notebooks with red; they must be silenced before TensorFlow is imported. fedlab's own warnings are Python
# warnings and stay visible; TF_CPP_MIN_LOG_LEVEL=0 in the environment shows TensorFlow's lines again.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN kernels on every CPU, not only where TF 2.14 turns them on by default (VNNI, BF16, AMX): the
# same numbers on AVX-512 CPUs with and without VNNI (fedlab.core.runtime.onednn_on). The caller's own setting stays.
# TensorFlow reads it once, at its import: imported before fedlab, this process keeps TensorFlow's own choice.
if not _os.environ.get("TF_ENABLE_ONEDNN_OPTS"):
    _os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    import sys as _sys

    if "tensorflow" in _sys.modules:
        import warnings as _warnings

        _warnings.warn("TensorFlow was imported before fedlab: this process keeps TensorFlow's own kernels (oneDNN's "
                       "only on CPUs with VNNI, BF16 or AMX), TFF's worker runs oneDNN's; for the same numbers on "
                       "every CPU import fedlab first, or set TF_ENABLE_ONEDNN_OPTS=1", stacklevel=2)

from .aggregators import aggregation  # noqa: E402
from .studies import crosssilo, privacy, tcga  # noqa: E402
from .protection.accounting import epsilon, noise_multiplier_for
from .aggregators.aggregation import AGGREGATORS, register_aggregator
from .algorithms.algorithms import ALGORITHMS, AlgorithmParams, hparam, register_algorithm
from .studies.analysis import (
    accounting_table,
    at_time,
    fastest_to_target,
    final_metrics,
    protocol_costs,
    rounds_to_target,
    speedups,
    summarize,
    summarize_paired,
    summarize_rounds_to_target,
    time_to_target,
)
from .systems.asynchronous import STALENESS, register_staleness
from .rounds.attacks import ATTACKS, register_attack
from .studies.catalog import catalog
from .protection.ckks import measure_cost as he_cost
from .experiment.clients import client_arrays_for, dataset_for, partition_for, partition_report_for
from .studies.comparison import BASELINES, compare, register_baseline, tune
from .experiment.config import ExperimentConfig
from .data.data import DATASETS, Dataset, DataUnavailableError, load_dataset, register_dataset
from .workers.distributed import LocalWorkers, use_worker_tls
from .core.encryption import use_encryption
from .models.models import MODELS, DataShape, ModelSpec, register_model
from .data.partition import (
    PARTITIONERS,
    DirichletPartitioner,
    IidPartitioner,
    NaturalPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    partition_report,
    register_partitioner,
)
from .reporting.plots import (
    plot_images,
    plot_interval_heatmap,
    plot_comparison,
    plot_kaplan_meier,
    plot_protocol_costs,
    plot_label_distribution,
    plot_learning_curves,
    plot_metric_vs,
    plot_round_time,
    plot_secagg_cost,
    plot_site_accuracy,
    plot_site_comparison,
    save_figure,
    save_table,
)
from .studies.participation import async_participation, async_steps_within, participation_table
from .reporting.report import compared, findings, interval_table, interval_text, number, quote, ranking, tally
from .experiment.runner import clients_table, final_weights, run_experiment
from .core.runtime import setup
from .core.quiet_periods import measuring_time
from .protection.secagg import measure_cost as secagg_cost
from .data.site_data import SITE_LOADERS, register_site_loader
from .experiment.site_service import LocalSites
from .experiment.sweeps import client_scores, grid, round_times, run_sweep
from .data.tasks import LOSSES, METRICS, TASKS, Task, register_loss, register_metric, register_task
from .systems.systems import DEVICE_PROFILES, Devices, devices_from_csv, register_device_profile, register_device_table
from .core.validation import ConfigError
from .notebook.widgets import ExperimentPanel, exclude_selector

__version__ = "0.2.0"

__all__ = [
    "AGGREGATORS",
    "ALGORITHMS",
    "ATTACKS",
    "AlgorithmParams",
    "BASELINES",
    "ConfigError",
    "DATASETS",
    "DEVICE_PROFILES",
    "DataShape",
    "DataUnavailableError",
    "Dataset",
    "Devices",
    "DirichletPartitioner",
    "ExperimentConfig",
    "ExperimentPanel",
    "IidPartitioner",
    "LOSSES",
    "LocalSites", "LocalWorkers",
    "METRICS",
    "MODELS",
    "ModelSpec",
    "NaturalPartitioner",
    "PARTITIONERS",
    "Partitioner",
    "QuantitySkewPartitioner",
    "SITE_LOADERS", "STALENESS",
    "ShardPartitioner",
    "TASKS",
    "Task",
    "accounting_table",
    "aggregation",
    "async_participation",
    "async_steps_within",
    "at_time",
    "catalog",
    "client_arrays_for",
    "client_scores",
    "clients_table",
    "compare",
    "compared",
    "crosssilo",
    "dataset_for",
    "devices_from_csv",
    "epsilon",
    "exclude_selector",
    "fastest_to_target",
    "final_metrics",
    "final_weights",
    "findings",
    "grid",
    "he_cost",
    "hparam",
    "interval_table",
    "interval_text",
    "load_dataset",
    "measuring_time",
    "noise_multiplier_for",
    "number",
    "participation_table",
    "partition_for",
    "partition_report",
    "partition_report_for",
    "plot_comparison",
    "plot_images",
    "plot_interval_heatmap",
    "plot_kaplan_meier",
    "plot_label_distribution",
    "plot_learning_curves",
    "plot_metric_vs",
    "plot_protocol_costs",
    "plot_round_time",
    "plot_secagg_cost",
    "plot_site_accuracy",
    "plot_site_comparison",
    "privacy",
    "protocol_costs",
    "quote",
    "ranking",
    "register_aggregator",
    "register_algorithm",
    "register_attack",
    "register_baseline",
    "register_dataset",
    "register_device_profile",
    "register_device_table",
    "register_loss",
    "register_metric",
    "register_model",
    "register_partitioner",
    "register_site_loader", "register_staleness",
    "register_task",
    "round_times",
    "rounds_to_target",
    "run_experiment",
    "run_sweep",
    "save_figure",
    "save_table",
    "secagg_cost",
    "setup",
    "speedups",
    "summarize",
    "summarize_paired",
    "summarize_rounds_to_target",
    "tally",
    "tcga",
    "time_to_target",
    "tune",
    "use_encryption",
    "use_worker_tls",
]

from .core import registry as _registry  # noqa: E402

_registry.fedlab_imported()  # components registered from here on are the user's: a worker process has not got them

"""fedlab: a Jupyter-centric research workbench for federated learning on TensorFlow Federated.

Importing fedlab is cheap; TensorFlow Federated is imported on first use.
"""

from .config import ALGORITHMS, DATASETS, MODELS, PARTITIONS, ConfigError, ExperimentConfig
from .data import DataUnavailableError, Dataset, load_dataset
from .partition import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalPartitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    make_partitioner,
    partition_report,
)
from .models import ModelSpec
from .plots import (
    plot_images,
    plot_label_distribution,
    plot_learning_curves,
    plot_metric_vs,
    plot_round_time,
    plot_site_accuracy,
    save_figure,
    save_table,
)
from .analysis import final_metrics, grid, rounds_to_target, summarize
from .runner import client_arrays_for, clients_table, dataset_for, partition_for, partition_report_for, run_experiment, run_sweep
from .runtime import setup
from .widgets import ExperimentPanel

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "ConfigError",
    "DATASETS",
    "DataUnavailableError",
    "Dataset",
    "DirichletPartitioner",
    "ExperimentConfig",
    "ExperimentPanel",
    "IidPartitioner",
    "MODELS",
    "ModelSpec",
    "NaturalPartitioner",
    "PARTITIONS",
    "QuantitySkewPartitioner",
    "ShardPartitioner",
    "client_arrays_for",
    "clients_table",
    "dataset_for",
    "final_metrics",
    "grid",
    "load_dataset",
    "make_partitioner",
    "partition_for",
    "partition_report",
    "partition_report_for",
    "plot_images",
    "plot_label_distribution",
    "plot_learning_curves",
    "plot_metric_vs",
    "plot_round_time",
    "plot_site_accuracy",
    "rounds_to_target",
    "run_experiment",
    "run_sweep",
    "save_figure",
    "save_table",
    "setup",
    "summarize",
]

import fedlab

# Guards the public surface: adding or removing a name is a deliberate change here.
EXPECTED = [
    "AGGREGATORS", "ALGORITHMS", "ATTACKS", "AlgorithmParams", "BASELINES", "ConfigError", "DATASETS",
    "DEVICE_PROFILES", "DataShape", "DataUnavailableError", "Dataset", "Devices", "DirichletPartitioner",
    "ExperimentConfig", "ExperimentPanel", "IidPartitioner", "LOSSES", "LocalSites", "LocalWorkers", "METRICS", "MODELS",
    "ModelSpec", "NaturalPartitioner", "PARTITIONERS", "Partitioner", "QuantitySkewPartitioner", "SITE_LOADERS", "STALENESS",
    "ShardPartitioner", "TASKS", "Task", "accounting_table", "aggregation", "async_participation",
    "async_steps_within", "at_time", "catalog", "client_arrays_for", "client_scores", "clients_table", "compare",
    "compared", "crosssilo", "dataset_for", "devices_from_csv", "epsilon", "exclude_selector", "fastest_to_target",
    "final_metrics", "final_weights", "findings", "grid", "he_cost", "hparam", "interval_table", "interval_text",
    "load_dataset", "measuring_time", "noise_multiplier_for", "number", "participation_table", "partition_for",
    "partition_report",
    "partition_report_for", "plot_comparison", "plot_images", "plot_interval_heatmap", "plot_kaplan_meier",
    "plot_label_distribution", "plot_learning_curves", "plot_metric_vs", "plot_protocol_costs", "plot_round_time",
    "plot_secagg_cost", "plot_site_accuracy", "plot_site_comparison", "privacy", "protocol_costs", "quote",
    "ranking", "register_aggregator", "register_algorithm", "register_attack", "register_baseline",
    "register_dataset", "register_device_profile", "register_device_table", "register_loss", "register_metric",
    "register_model", "register_partitioner", "register_site_loader", "register_staleness", "register_task", "round_times",
    "rounds_to_target", "run_experiment", "run_sweep", "save_figure", "save_table", "secagg_cost", "setup",
    "speedups", "summarize", "summarize_paired", "summarize_rounds_to_target", "tally", "tcga", "time_to_target",
    "tune", "use_encryption", "use_worker_tls",
]


def test_public_api_is_explicit_and_sorted():
    assert fedlab.__all__ == EXPECTED
    assert EXPECTED == sorted(EXPECTED, key=str.casefold) or EXPECTED == sorted(EXPECTED)
    for name in fedlab.__all__:
        assert hasattr(fedlab, name), name


def test_notebooks_use_only_the_public_api():
    import json
    import re

    from fedlab.notebook import reproduce

    for path in reproduce.notebooks():
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "code")
        imports = re.findall(r"^\s*(?:from|import)\s+(fedlab[\w.]*)", code, re.M)
        assert set(imports) <= {"fedlab"}, f"{path.name} imports {imports}"
        taken = {n.strip() for names in re.findall(r"^\s*from\s+fedlab\s+import\s+(.+)$", code, re.M)
                 for n in names.split(",")}
        assert taken <= set(fedlab.__all__), f"{path.name} imports {sorted(taken - set(fedlab.__all__))} from fedlab"
        used = set(re.findall(r"\bfl\.(\w+)", code))
        assert used <= set(fedlab.__all__), f"{path.name} uses fl.{sorted(used - set(fedlab.__all__))}"

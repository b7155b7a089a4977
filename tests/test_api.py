import fedlab

# Guards the public surface: adding or removing a name is a deliberate change here.
EXPECTED = {
    "ALGORITHMS", "ConfigError", "DATASETS", "DataUnavailableError", "Dataset", "DirichletPartitioner",
    "ExperimentConfig", "dataset_for", "plot_site_accuracy", "client_arrays_for", "plot_images", "plot_metric_vs", "plot_round_time", "ExperimentPanel", "grid", "rounds_to_target", "summarize", "partition_report_for", "IidPartitioner", "MODELS", "ModelSpec", "NaturalPartitioner", "PARTITIONS",
    "QuantitySkewPartitioner", "ShardPartitioner", "clients_table", "final_metrics", "load_dataset",
    "make_partitioner", "partition_for", "partition_report", "plot_label_distribution", "plot_learning_curves",
    "run_experiment", "run_sweep", "save_figure", "save_table", "setup",
}


def test_public_api():
    assert set(fedlab.__all__) == EXPECTED
    for name in fedlab.__all__:
        assert hasattr(fedlab, name), name

"""Fed-TCGA-BRCA through fedlab: the survival task, its registries, what it refuses, FLamby's protocol and numbers."""

import math

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.studies import tcga
from fedlab.data.survival import c_index


@pytest.fixture(scope="module")
def data(tcga_dir):
    return fl.load_dataset("fed_tcga_brca")


def test_survival_task_is_what_the_dataset_names():
    task = fl.TASKS[fl.DATASETS["fed_tcga_brca"].task]
    assert task.name == "survival" and task.loss == "cox_breslow" and task.metrics == ("c_index",)
    assert not fl.LOSSES["cox_breslow"].per_example
    assert fl.TASKS["classification"].metrics == ("accuracy", "balanced_accuracy", "auc")
    spec = fl.ModelSpec("cox_linear", 39, 0, task="survival")
    assert spec.shape.num_outputs == 1 and not spec.binary
    y = spec.prepare_labels(np.array([[1, 30], [0, 40]]))
    assert y.dtype == np.float32 and y.shape == (2, 2)


@pytest.mark.parametrize("changes, field", [
    ({"dp": "example", "clip_norm": 1.0, "noise_multiplier": 1.0}, "dp"),
    ({"partition": "dirichlet", "carry_epochs": False}, "partition"),
    ({"partition": "shards", "carry_epochs": False}, "partition"),
    ({"attack": "label_flip", "attacker_fraction": 0.2}, "attack"),
    ({"algorithm": "ditto"}, "algorithm"),
    ({"eval_per_client": True}, "eval_per_client"),
    ({"model": "2nn", "freeze_layers": 1}, "freeze_layers"),
    ({"eval_per_client": True, "finetune_epochs": 1}, "eval_per_client"),
])
def test_what_survival_data_refuses_is_said_in_one_line(changes, field):
    with pytest.raises(fl.ConfigError) as err:
        tcga.tcga_config().replace(**changes)
    message = str(err.value)
    assert message.startswith(f"{field}:") and "\n" not in message
    assert "fed_tcga_brca" in message, message


def test_a_users_metric_is_computed_wherever_the_tasks_are(data):
    """A metric registered for survival appears in every score table of that task, like a built-in."""

    @fl.register_metric("events_share_test", task="survival")
    def events_share(scores, y, num_classes):
        """Share of the test patients whose death was seen."""
        return float(np.asarray(y)[:, 0].mean())

    try:
        assert "events_share_test" in fl.TASKS["survival"].metrics
        table = fl.studies.comparison.metric_rows(np.zeros((len(data.y_test), 1)), data)
        expected = [data.y_test[data.test_sites == s, 0].mean() for s in range(6)]
        assert table["events_share_test"].tolist() == pytest.approx(expected)
        assert (table["c_index"] == 0.5).all()  # a constant ranks nobody
        assert "events_share_test" in fl.catalog().query("kind == 'metric'").name.tolist()
    finally:
        fl.METRICS._entries.pop("events_share_test")


def test_a_metric_for_an_unknown_task_is_refused():
    with pytest.raises(fl.ConfigError, match="^task: must be one of classification, survival"):
        fl.register_metric("nope", task="regression")


def test_the_constant_baseline_scores_half_on_every_region(data):
    table = fl.BASELINES["majority_site"](tcga.tcga_config())
    assert table.site.tolist() == list(data.site_names)
    assert (table.c_index == 0.5).all()
    assert table.prevalence.tolist() == pytest.approx([data.y_test[data.test_sites == s, 0].mean()
                                                       for s in range(6)])


def test_a_short_federated_run_reports_the_c_index_per_region(data):
    config = tcga.tcga_config("fedavg", rounds=1, local_steps=5)
    history = fl.run_experiment(config, progress=False)
    assert "eval_accuracy" not in history and "train_accuracy" not in history
    last = history.iloc[-1]
    regions = [last[f"site_c_index_{r}"] for r in data.site_names]
    assert all(0 <= v <= 1 for v in regions)
    assert last["mean_site_c_index"] == pytest.approx(np.mean(regions))
    assert last["train_loss"] > 0 and last["eval_loss"] > 0
    weights = fl.final_weights(history)
    outputs = data.x_test @ weights[0] + weights[1]
    assert last["eval_c_index"] == pytest.approx(c_index(outputs, data.y_test), abs=1e-9)
    scores = tcga.federated_scores(config)
    assert scores.set_index("site").c_index["pooled test"] == pytest.approx(last["eval_c_index"])
    # the Cox loss does not move a constant shift of the scores: the bias keeps its initial value
    initial = fl.ModelSpec("cox_linear", 39, 0, task="survival").build_keras(config.seeds["model"]).get_weights()
    assert weights[1] == pytest.approx(initial[1], abs=1e-6)
    assert not np.allclose(weights[0], initial[0])


def test_compare_defaults_to_the_tasks_metrics(data):
    config = tcga.tcga_config("fedavg", rounds=1, local_steps=3)
    table = fl.compare({"constant": "majority_site", "fedavg": config}, base=config, seeds=[0, 1],
                       reference="constant")
    assert table.metric.unique().tolist() == ["c_index"]
    assert table.set_index("method")["mean"]["constant"] == 0.5
    with pytest.raises(fl.ConfigError, match="^metrics: must be a list among c_index"):
        fl.compare({"fedavg": config}, seeds=[0], metrics=["accuracy"])
    with pytest.raises(fl.ConfigError, match=r"^tune_metric: must be a validation metric \(validation_c_index\)"):
        fl.compare({"fedavg": config}, seeds=[0], space={"client_lr": [0.1]}, tune_metric="validation_auc")


def test_baselines_train_on_each_region_and_on_all(data, monkeypatch):
    trained = []
    real = tcga.train_centralized

    def recording(spec, x, y, **kwargs):
        trained.append((x, y, kwargs))
        return real(spec, x, y, **kwargs)

    monkeypatch.setattr(tcga, "train_centralized", recording)
    table = tcga.tcga_baselines([0], epochs=1)
    methods = ["pooled", *(f"local_{r}" for r in data.site_names)]
    assert table.method.unique().tolist() == methods
    assert table.site.unique().tolist() == [*data.site_names, tcga.POOLED_TEST]
    assert table.c_index.between(0, 1).all()
    assert np.array_equal(trained[0][0], data.x_train)  # pooled: every training patient
    for s, (x, y, kwargs) in enumerate(trained[1:]):  # local_<region>: that region's patients only
        assert np.array_equal(x, data.x_train[data.train_sites == s]) and np.array_equal(y, data.y_train[data.train_sites == s])
        assert kwargs == {"epochs": 1, "batch_size": 8, "lr": 0.1, "seed": 0, "epsilon": 1e-8}


def test_reproduction_table_welch_interval_agrees_with_scipy():
    """The difference's 95 % interval holds 0 exactly when Welch's t-test does not reject at 5 %."""
    from scipy import stats

    rng = np.random.default_rng(0)
    rows = []
    for method, (mean, std) in tcga.FLAMBY_TCGA_PUBLISHED.items():
        for seed, value in enumerate(mean + rng.normal(0, 0.05, 5) + rng.choice([0, 0.08])):
            rows += [{"method": method, "seed": seed, "site": r, "c_index": value} for r in fl.data.data.TCGA_BRCA_REGIONS]
    table = tcga.reproduction_table(pd.DataFrame(rows)).set_index("method")
    assert len(table) == len(tcga.FLAMBY_TCGA_PUBLISHED)
    for method, row in table.iterrows():
        mean, std = tcga.FLAMBY_TCGA_PUBLISHED[method]
        test = stats.ttest_ind_from_stats(row.fedlab, row.fedlab_std, 5, mean, std, 5, equal_var=False)
        assert row.within == (test.pvalue > 0.05)
        assert row.half_width == pytest.approx((row.diff_ci_high - row.diff_ci_low) / 2)
        assert row.difference == pytest.approx(row.fedlab - mean)
        assert (row.diff_ci_low + row.diff_ci_high) / 2 == pytest.approx(row.difference)


def test_published_constants_are_flambys_files(flamby_tcga_results):
    published = tcga.published_tcga(flamby_tcga_results)
    assert sorted(published.seed.unique()) == [42, 43, 44, 45, 46]
    per_seed = tcga.per_seed(published)
    for method, values in tcga.FLAMBY_TCGA_SEEDS.items():
        files = per_seed[per_seed.method == method].sort_values("seed").c_index.to_numpy()
        assert files == pytest.approx(values, abs=5e-5)
    assert tcga.FLAMBY_TCGA_PUBLISHED["fedavg"] == pytest.approx((0.7319, 0.1811), abs=1e-4)  # FLamby's README


def test_strategies_are_flambys_config(flamby_tcga_results):
    import json

    config = json.loads((flamby_tcga_results / "config_tcga_brca.json").read_text())["strategies"]
    names = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi",
             "fedadagrad": "FedAdagrad", "scaffold": "Scaffold"}
    fields = {"client_lr": "learning_rate", "server_lr": "server_learning_rate", "server_epsilon": "tau",
              "mu": "mu", "beta1": "beta1", "beta2": "beta2"}
    for ours, theirs in names.items():
        for field, value in tcga.TCGA_STRATEGIES[ours].items():
            assert config[theirs][fields[field]] == value, (ours, field)
        assert config[theirs]["optimizer_class"] == "torch.optim.SGD"


def test_region_summary_counts_the_pairs_a_c_index_compares(data):
    regions = fl.tcga.region_summary(data).set_index("region")
    assert regions.loc["canada", "test_comparable_pairs"] == 3  # 11 test patients, 1 death (design measurement)
    for s, name in enumerate(data.site_names):
        y = data.y_test[data.test_sites == s]
        brute = sum(1 for i in range(len(y)) for j in range(len(y)) if y[i, 0] == 1 and
                    (y[i, 1] < y[j, 1] or (y[i, 1] == y[j, 1] and y[j, 0] == 0 and i != j)))
        assert regions.loc[name, "test_comparable_pairs"] == brute


def test_holm_by_hand():
    p = [0.01, np.nan, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4): 0.04, 0.09, 0.09 (made non-decreasing from 0.08), 0.2
    assert tcga.holm(p)[[0, 3, 2, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert math.isnan(tcga.holm(p)[1])


def test_what_a_survival_run_cannot_report_is_refused_in_one_line(data):
    config = tcga.tcga_config(rounds=1, local_steps=2)
    with pytest.raises(fl.ConfigError, match="^dataset: fed_tcga_brca is survival data"):
        fl.partition_report_for(config)
    history = fl.run_experiment(config, progress=False)
    from fedlab.studies.privacy import audit_membership

    with pytest.raises(fl.ConfigError, match="^dataset: a membership audit"):
        audit_membership(config, history)
    panel = fl.ExperimentPanel(config, ["client_lr"])
    assert panel.metric == "eval_c_index"


def test_a_diverged_survival_run_keeps_its_evaluated_round():
    from fedlab.experiment.runner import evaluated_rows

    history = pd.DataFrame({"round": [1, 2, 3, 4], "eval_every": 2, "rounds": 3,
                            "eval_loss": [np.nan, np.nan, np.nan, np.nan], "eval_c_index": np.nan})
    assert evaluated_rows(history)["round"].tolist() == [2, 3, 4]
    last = fl.final_metrics(history.iloc[:3].assign(seed=0), by=[])
    assert last["round"].tolist() == [3] and math.isnan(last["eval_c_index"].iloc[0])


def test_age_alone_and_dropout_cost(data):
    age = tcga.age_only_scores(data).set_index("site").c_index
    assert age[tcga.POOLED_TEST] == pytest.approx(0.705, abs=5e-4)  # measured with lifelines (test_survival)
    rows = []
    for method, shift in (("all regions", 0.0), ("without canada", -0.1)):
        for seed in range(3):
            for i, region in enumerate(data.site_names):
                rows.append({"method": method, "seed": seed, "site": region,
                             "c_index": 0.7 + 0.01 * i + 0.01 * seed + (shift if region == "canada" else 0.0)})
    cost = tcga.dropout_cost(pd.DataFrame(rows)).set_index(["method", "site"])
    assert "p_holm" in cost
    assert cost.loc[("without canada", "left-out region"), "diff"] == pytest.approx(-0.1)
    assert cost.loc[("without canada", "other regions"), "diff"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(cost.loc[("without canada", "left-out region"), "p_value"])  # the same at every seed

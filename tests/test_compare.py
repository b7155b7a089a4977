"""fl.compare, fl.tune, the baselines and the metrics, against numbers worked out by hand."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.studies import comparison as C
from fedlab.experiment.evaluation import classification_metrics
from fedlab.reporting.stats import interval, paired_difference

T_975_DF2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables)
T_975_DF4 = 2.7764451051977987


def test_t_interval_by_hand():
    mean, low, high, n = interval([0.70, 0.80, 0.75])
    half = T_975_DF2 * 0.05 / math.sqrt(3)  # sample std 0.05
    assert (mean, n) == (pytest.approx(0.75), 3)
    assert low == pytest.approx(0.75 - half) and high == pytest.approx(0.75 + half)
    values = [0.61, 0.64, 0.58, 0.66, 0.60]
    sd = math.sqrt(sum((v - 0.618) ** 2 for v in values) / 4)
    assert interval(values)[1] == pytest.approx(0.618 - T_975_DF4 * sd / math.sqrt(5))


def test_bootstrap_interval_against_every_resample_enumerated():
    values = np.array([0.2, 0.5, 0.6, 0.9])
    # all 4^4 resamples are equally likely: the exact percentile bootstrap distribution of the mean
    means = np.sort([np.mean(values[list(idx)]) for idx in itertools.product(range(4), repeat=4)])
    exact_low, exact_high = np.quantile(means, [0.025, 0.975])
    mean, low, high, n = interval(values, method="bootstrap")
    assert mean == pytest.approx(0.55) and n == 4
    assert low == pytest.approx(exact_low, abs=0.02) and high == pytest.approx(exact_high, abs=0.02)
    assert interval(values, method="bootstrap") == (mean, low, high, n)  # a fixed generator


def test_no_interval_from_one_value_and_nans_are_left_out():
    mean, low, high, n = interval([0.8, float("nan")])
    assert mean == 0.8 and n == 1 and math.isnan(low) and math.isnan(high)
    assert interval([0.5, 0.5, 0.5])[1:3] == (0.5, 0.5)  # a constant: no spread, no invented width
    with pytest.raises(ValueError, match="^method: must be one of t, bootstrap"):
        interval([1, 2], method="normal")


def test_paired_difference_on_a_constructed_case():
    b = np.array([0.70, 0.75, 0.72])
    a = b + np.array([0.10, 0.12, 0.08])  # differences: mean 0.1, std 0.02
    out = paired_difference(a, b)
    t = 0.1 / (0.02 / math.sqrt(3))
    # two degrees of freedom: the t distribution's CDF is 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2)
    assert out["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert out["diff"] == pytest.approx(0.1) and out["n_pairs"] == 3
    assert out["diff_ci_low"] == pytest.approx(0.1 - T_975_DF2 * 0.02 / math.sqrt(3))
    # pairing matters: the same values unpaired would not separate
    shuffled = paired_difference(a, np.roll(b, 1))
    assert shuffled["p_value"] > out["p_value"]
    for a_values, b_values in (([0.6, 0.7], [0.5, 0.6]), ([0.7, 0.8], [0.6, 0.7])):  # 0.1 up to float rounding
        rounded = paired_difference(a_values, b_values)
        assert math.isnan(rounded["p_value"]) and math.isnan(rounded["diff_ci_low"])
    same_gap = paired_difference([0.6, 0.7], [0.5, 0.6])  # no spread: nothing to test against
    assert same_gap["diff"] == pytest.approx(0.1) and math.isnan(same_gap["p_value"])
    assert math.isnan(same_gap["diff_ci_low"]) and math.isnan(same_gap["diff_ci_high"])


def test_metrics_by_hand_and_undefined_on_a_one_class_site():
    y = np.array([1, 1, 1, 0])
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]])  # predicts 1, 0, 1, 0
    m = classification_metrics(logits, y, True, 2)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)  # recall 2/3 for 1, 1 for 0
    assert m["auc"] == pytest.approx(1.0)  # every positive scores above the negative
    always_positive = classification_metrics(np.ones((4, 1)), y, True, 2)
    assert always_positive["accuracy"] == 0.75 and always_positive["balanced_accuracy"] == 0.5
    assert always_positive["auc"] == 0.5
    only_positives = classification_metrics(np.ones((3, 1)), np.array([1, 1, 1]), True, 2)
    assert only_positives["accuracy"] == 1.0
    assert math.isnan(only_positives["balanced_accuracy"]) and math.isnan(only_positives["auc"])


def _sites_data():
    """Three sites: 0 mostly positive, 1 balanced, 2 only positive in its test set."""
    rng = np.random.default_rng(0)
    y_train = np.r_[np.ones(8), np.zeros(2), np.ones(5), np.zeros(5), np.ones(4), np.zeros(1)].astype(int)
    train_sites = np.r_[np.zeros(10), np.ones(10), np.full(5, 2)].astype(int)
    y_test = np.array([1, 1, 1, 0, 1, 0, 1, 0, 1, 1])
    test_sites = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    return fl.Dataset("three_sites", rng.normal(size=(25, 3)).astype(np.float32), y_train,
                      rng.normal(size=(10, 3)).astype(np.float32), y_test, 2, train_sites=train_sites,
                      test_sites=test_sites, site_names=("a", "b", "c"))


@fl.register_dataset("three_sites_for_compare", sites=3)
def _three_sites(*, seed, test_fraction):
    """A fixed three-site data set for the baseline tests."""
    return _sites_data()


BASE = fl.ExperimentConfig(dataset="three_sites_for_compare", partition="natural", num_clients=3,
                           clients_per_round=3, rounds=1)


def test_the_majority_baselines_by_hand():
    site = C.BASELINES["majority_site"](BASE)
    assert list(site.site) == ["a", "b", "c"]
    # site a's majority is 1 (test: 3 of 4 positive), b's a tie -> 0 (test: 2 of 4), c's 1 (test all positive)
    assert site.accuracy.tolist() == [0.75, 0.5, 1.0]
    assert site.balanced_accuracy.tolist()[:2] == [0.5, 0.5] and math.isnan(site.balanced_accuracy[2])
    assert site.auc.tolist()[:2] == [0.5, 0.5] and math.isnan(site.auc[2])
    assert site.prevalence.tolist() == [0.75, 0.5, 1.0] and site.num_test.tolist() == [4, 4, 2]
    overall = C.BASELINES["majority_global"](BASE)  # 17 of 25 training labels are 1
    assert overall.accuracy.tolist() == [0.75, 0.5, 1.0]


def _scored(values_by_seed):
    """A baseline whose per-site scores are given per seed (what a run would give)."""
    def baseline(config, *, results_cache=None):
        acc = values_by_seed[config.seed]
        return pd.DataFrame({"site": ["a", "b"], "accuracy": acc, "balanced_accuracy": acc, "auc": acc,
                             "num_test": [4, 4], "prevalence": [0.5, 0.5]})
    return baseline


def test_compare_gives_intervals_over_seeds_and_paired_differences_by_hand():
    C.register_baseline("fixed_a")(_scored({0: [0.6, 0.8], 1: [0.7, 0.9], 2: [0.65, 0.85]}))  # means .7 .8 .75
    C.register_baseline("fixed_b")(_scored({0: [0.55, 0.65], 1: [0.7, 0.8], 2: [0.6, 0.7]}))  # .6 .75 .65
    table = fl.compare({"A": "fixed_a", "B": "fixed_b"}, base=BASE, seeds=[0, 1, 2], reference="B",
                       metrics=["accuracy"])
    a = table.set_index("method").loc["A"]
    assert a["mean"] == pytest.approx(0.75) and a["n"] == 3 and a["sites"] == 2 and a["interval"] == "t 95%"
    assert a["ci_high"] == pytest.approx(0.75 + T_975_DF2 * 0.05 / math.sqrt(3))
    # paired over the seeds: A - B = 0.10, 0.05, 0.10
    d = np.array([0.10, 0.05, 0.10])
    half = T_975_DF2 * d.std(ddof=1) / math.sqrt(3)
    assert a["diff"] == pytest.approx(d.mean()) and a["diff_ci_low"] == pytest.approx(d.mean() - half)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert a["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert math.isnan(table.set_index("method").loc["B", "p_value"])  # the reference itself
    per_site = fl.compare({"A": "fixed_a", "B": "fixed_b"}, base=BASE, seeds=[0, 1, 2], reference="B",
                          metrics=["accuracy"], by_site=True)
    row = per_site.set_index(["method", "site"]).loc[("A", "b")]
    assert row["mean"] == pytest.approx(0.85) and row["num_test"] == 4 and row["prevalence"] == 0.5
    assert row["diff"] == pytest.approx(np.mean([0.15, 0.1, 0.15]))


def test_comparisons_concatenate_and_keep_what_they_were_computed_from():
    one = fl.compare({"majority": "majority_site"}, base=BASE, seeds=[0, 1])
    two = fl.compare({"global": "majority_global"}, base=BASE, seeds=[0, 1])
    both = pd.concat([one, two], ignore_index=True)
    assert list(both.method.unique()) == ["majority", "global"]
    assert set(one.scores.method) == {"majority"} and len(one.scores) == 2 * 3


def test_an_undefined_site_is_left_out_of_the_mean_not_averaged_in():
    table = fl.compare({"majority": "majority_site"}, base=BASE, seeds=[0, 1])
    auc = table.set_index("metric").loc["auc"]
    assert auc["mean"] == 0.5 and auc["sites"] == 2  # site c (one class) is not in it
    accuracy = table.set_index("metric").loc["accuracy"]
    assert accuracy["mean"] == pytest.approx(0.75) and accuracy["sites"] == 3


def _recording(calls):
    def baseline(config, *, results_cache=None):
        calls.append(config)
        score = 1.0 - abs(config.client_lr - 0.1)  # best at 0.1
        return pd.DataFrame({"site": ["a"], "accuracy": [score], "balanced_accuracy": [score], "auc": [score],
                             "num_test": [4], "prevalence": [0.5]})
    return baseline


def test_tune_selects_on_validation_data_only_and_refuses_a_test_metric():
    calls = []
    C.register_baseline("recording")(_recording(calls))
    chosen, table = fl.tune(BASE, {"client_lr": [0.01, 0.1, 0.3]}, baseline="recording")
    assert chosen.client_lr == 0.1 and table.chosen.sum() == 1 and len(table) == 3
    assert calls and all(c.validation_fraction == C.DEFAULT_VALIDATION_FRACTION for c in calls)
    for metric in ("accuracy", "test_accuracy", "eval_accuracy", "auc"):
        with pytest.raises(fl.ConfigError, match="^metric: must be a validation metric .*choosing on the test set"):
            fl.tune(BASE, {"client_lr": [0.1]}, metric=metric)
    with pytest.raises(fl.ConfigError, match="^space: 'lam' is not a setting of 'fedavg'"):
        fl.tune(BASE, {"lam": [0.1]})
    with pytest.raises(fl.ConfigError, match="^validation_fraction: must be between 0 and 1 .*0 would tune on the test"):
        fl.tune(BASE, {"client_lr": [0.1]}, baseline="recording", validation_fraction=0.0)
    for field in ("validation_fraction", "test_fraction", "seed", "data_seed"):
        with pytest.raises(fl.ConfigError, match=f"^space: '{field}' cannot be tuned"):
            fl.tune(BASE, {field: [0.1, 0.2]}, baseline="recording")
    with pytest.raises(fl.ConfigError, match="^seeds: must be distinct whole numbers, at least one"):
        fl.tune(BASE, {"client_lr": [0.1]}, baseline="recording", seeds=[])
    with pytest.raises(fl.ConfigError, match="^tune_seeds: must be distinct whole numbers"):
        fl.compare({"r": "recording"}, base=BASE, space={"client_lr": [0.1]}, tune_seeds=[])


def test_a_search_where_every_candidate_is_undefined_is_refused():
    def undefined(config, *, results_cache=None):
        return pd.DataFrame({"site": ["a"], "accuracy": [0.5], "balanced_accuracy": [np.nan], "auc": [np.nan],
                             "num_test": [4], "prevalence": [1.0]})
    C.register_baseline("undefined")(undefined)
    with pytest.raises(fl.ConfigError, match="^space: undefined: every candidate's validation_balanced_accuracy is "
                                             "undefined"):
        fl.tune(BASE, {"client_lr": [0.1, 0.3]}, baseline="undefined")


def test_compare_tunes_every_method_with_the_same_budget():
    calls = []
    C.register_baseline("recording")(_recording(calls))
    C.register_baseline("recording_too")(_recording(calls))
    space = {"client_lr": [0.01, 0.03, 0.1, 0.3, 1.0]}
    table = fl.compare({"one": "recording", "two": "recording_too", "constant": "majority_site"}, base=BASE,
                       seeds=[0, 1], space=space, budget=3)
    tuning = table.tuning
    trials = tuning.groupby("method").size()
    assert trials["one"] == trials["two"] == 3 and trials["constant"] == 1  # nothing to tune: one row, no trial
    assert tuning.set_index("method").loc["constant", "trials"] == 0
    # the same draw of the grid for both
    assert tuning[tuning.method == "one"].client_lr.tolist() == tuning[tuning.method == "two"].client_lr.tolist()
    tuned = [c for c in calls if c.validation_fraction > 0]
    final = [c for c in calls if c.validation_fraction == 0]
    assert len(tuned) == 6 and len(final) == 4  # tuning on validation; the seeds' runs on the test sets
    assert {c.client_lr for c in final} == {table.chosen["one"]["client_lr"]}


def test_bad_comparisons_are_refused_in_one_line():
    with pytest.raises(fl.ConfigError, match="^base: must be an ExperimentConfig when a method is a baseline"):
        fl.compare({"m": "majority_site"})
    with pytest.raises(fl.ConfigError, match="^reference: must be one of the methods"):
        fl.compare({"m": "majority_site"}, base=BASE, reference="fedavg")
    with pytest.raises(fl.ConfigError, match="^methods: m: 'no_such_baseline' is not a registered baseline"):
        fl.compare({"m": "no_such_baseline"}, base=BASE)
    with pytest.raises(fl.ConfigError, match="^methods: two methods share the label 'fedavg'"):
        fl.compare([BASE, BASE.replace(client_lr=0.5)])
    with pytest.raises(fl.ConfigError, match="^interval: must be one of t, bootstrap"):
        fl.compare({"m": "majority_site"}, base=BASE, interval="normal")
    with pytest.raises(fl.ConfigError, match="^confidence: must be a number between 0 and 1"):
        fl.compare({"m": "majority_site"}, base=BASE, confidence=95)
    with pytest.raises(fl.ConfigError, match="^tune_metric: must be a validation metric"):
        fl.compare({"m": "majority_site"}, base=BASE, space={"client_lr": [0.1]}, tune_metric="auc")
    with pytest.raises(fl.ConfigError, match="^budget: means nothing without space"):
        fl.compare({"m": "majority_site"}, base=BASE, budget=3)
    with pytest.raises(fl.ConfigError, match="^seeds: must be distinct"):
        fl.compare({"m": "majority_site"}, base=BASE, seeds=[1, 1])
    with pytest.raises(fl.ConfigError, match="^budget: must be a whole number"):
        fl.compare({"m": "majority_site"}, base=BASE, space={"client_lr": [0.1]}, budget=0)


@fl.register_dataset("breast_cancer_sites_other_sites_scrambled", sites=4)
def _scrambled(*, seed, test_fraction):
    """breast_cancer_sites with the training labels of sites 1-3 shuffled (site 0 and every test set unchanged)."""
    import dataclasses

    data = fl.load_dataset("breast_cancer_sites", seed=seed, test_fraction=test_fraction)
    y = data.y_train.copy()
    others = np.flatnonzero(data.train_sites != 0)
    y[others] = np.random.default_rng(5).permutation(y[others])
    return dataclasses.replace(data, name="breast_cancer_sites_other_sites_scrambled", y_train=y)


@pytest.mark.slow
def test_local_baseline_trains_each_site_on_its_own_data_and_pooled_on_all_of_it():
    base = fl.crosssilo.heart_disease_config(dataset="breast_cancer_sites", rounds=2, local_steps=5, eval_every=2,
                                             client_lr=0.1)
    scrambled = base.replace(dataset="breast_cancer_sites_other_sites_scrambled")
    local = C.BASELINES["local"](base)
    local_scrambled = C.BASELINES["local"](scrambled)
    # site 0's own model saw only site 0's records: the other sites' labels cannot move it
    assert local.iloc[0].to_dict() == local_scrambled.iloc[0].to_dict()
    assert not local.iloc[1:][["auc"]].equals(local_scrambled.iloc[1:][["auc"]])
    pooled, pooled_scrambled = C.BASELINES["pooled"](base), C.BASELINES["pooled"](scrambled)
    assert pooled.iloc[0].auc != pooled_scrambled.iloc[0].auc  # the pooled model saw every site
    # pooled: one client holding every training record, trained with the config's steps
    one = C._plain(base, partition="iid", num_clients=1, clients_per_round=1)
    xs, _ = fl.client_arrays_for(one)
    assert len(xs) == 1 and len(xs[0]) == len(fl.dataset_for(base).y_train)
    table = fl.compare({"fedavg": base, "local": "local", "pooled": "pooled"}, base=base, seeds=[0, 1],
                       reference="fedavg", metrics=["balanced_accuracy"], by_site=True)
    assert set(table.scores.method) == {"fedavg", "local", "pooled"} and len(table.scores) == 3 * 2 * 4
    assert table.n.eq(2).all() and table.query("method != 'fedavg'").n_pairs.eq(2).all()


def test_quotes_are_built_from_the_table():
    C.register_baseline("fixed_a")(_scored({0: [0.6, 0.8], 1: [0.7, 0.9], 2: [0.65, 0.85]}))
    C.register_baseline("fixed_b")(_scored({0: [0.55, 0.65], 1: [0.7, 0.8], 2: [0.6, 0.7]}))
    table = fl.compare({"A": "fixed_a", "B": "fixed_b"}, base=BASE, seeds=[0, 1, 2], reference="B",
                       metrics=["accuracy"])
    half = T_975_DF2 * 0.05 / math.sqrt(3)
    assert fl.quote(table, "A") == f"0.750 [{0.75 - half:.3f}, {0.75 + half:.3f}]"
    assert fl.compared(table, "A").startswith("above B by +0.083 [+0.")  # the paired interval excludes 0
    assert fl.quote(table, "A", difference=True).endswith(f"(p = {table.p_value.iloc[0]:.2g})")
    with pytest.raises(ValueError, match="^method: 0 rows of the table match"):
        fl.quote(table, "C")


def test_per_site_and_interval_table_come_from_the_same_scores():
    C.register_baseline("fixed_a")(_scored({0: [0.6, 0.8], 1: [0.7, 0.9], 2: [0.65, 0.85]}))
    table = fl.compare({"A": "fixed_a", "M": "majority_site"}, base=BASE, seeds=[0, 1, 2], reference="M",
                       metrics=["accuracy"])
    sites = table.per_site()
    direct = fl.compare({"A": "fixed_a", "M": "majority_site"}, base=BASE, seeds=[0, 1, 2], reference="M",
                        metrics=["accuracy"], by_site=True)
    pd.testing.assert_frame_equal(pd.DataFrame(sites), pd.DataFrame(direct))
    shown = fl.interval_table(sites, index="method", columns="site")
    assert list(shown.index) == ["A", "M"] and shown.loc["A", "b"].startswith("0.850 [")


def test_a_one_class_test_set_has_no_balanced_accuracy_in_multiclass_either():
    constant = np.eye(3)[[1, 1, 1]]  # always class 1, on a test set of class 1 only
    scores = classification_metrics(constant, np.array([1, 1, 1]), False, 3)
    assert scores["accuracy"] == 1.0 and math.isnan(scores["balanced_accuracy"]) and math.isnan(scores["auc"])
    two = classification_metrics(constant, np.array([1, 1, 2]), False, 3)
    assert two["balanced_accuracy"] == 0.5  # recall 1 on class 1, 0 on class 2: over the classes present


def test_quotes_of_a_table_without_what_they_need_are_one_line():
    plain = fl.summarize(pd.DataFrame({"method": ["a", "a"], "seed": [0, 1], "v": [0.5, 0.7]}), ["method"], "v")
    with pytest.raises(ValueError, match="^table: has no column 'reference', which a comparison needs"):
        fl.compared(plain, "a")
    with pytest.raises(ValueError, match="^table: has no column 'diff', which a difference needs"):
        fl.quote(plain, "a", difference=True)
    with pytest.raises(ValueError, match="^table: has no column 'metric', which an interval table needs"):
        fl.interval_table(plain)
    with pytest.raises(ValueError, match="^table: has no column 'w'"):
        fl.summarize(pd.DataFrame({"method": ["a"], "v": [1.0]}), ["method"], "w")

"""Comparisons over seeds as the notebooks report them: fl.summarize_paired, fl.ranking, fl.client_scores and the
figures that draw intervals (fl.plot_interval_heatmap, fl.plot_secagg_cost over repeats), against numbers by hand."""

import math

import numpy as np
import pandas as pd
import pytest

import fedlab as fl

T_975_DF2 = 4.302652729749464  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables)


def _runs():
    """Two groups (alpha), two methods, three seeds; A has a fourth seed that B lacks. In alpha 0.1 A is
    0.80, 0.90, 0.85 and B 0.70, 0.78, 0.77 (A - B: 0.10, 0.12, 0.08); in alpha 1 B is the higher."""
    rows = [(0.1, "A", 0, 0.80), (0.1, "A", 1, 0.90), (0.1, "A", 2, 0.85), (0.1, "A", 3, 0.95),
            (0.1, "B", 0, 0.70), (0.1, "B", 1, 0.78), (0.1, "B", 2, 0.77),
            (1.0, "A", 0, 0.50), (1.0, "A", 1, 0.60), (1.0, "A", 2, 0.70),
            (1.0, "B", 0, 0.90), (1.0, "B", 1, 0.90), (1.0, "B", 2, 0.90)]
    return pd.DataFrame(rows, columns=["alpha", "algorithm", "seed", "eval_accuracy"])


def _row(table, **where):
    rows = table
    for column, value in where.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, where
    return rows.iloc[0]


def test_summarize_paired_by_hand():
    table = fl.summarize_paired(_runs(), ["alpha", "algorithm"], "eval_accuracy", method="algorithm", reference="B")
    assert list(table.columns[:3]) == ["alpha", "method", "metric"]
    a = _row(table, alpha=0.1, method="A")
    # four seeds: 0.80, 0.90, 0.85, 0.95; mean 0.875, sample variance (0.075^2 + 0.025^2 * 2 + 0.075^2) / 3
    sd = math.sqrt((2 * 0.075 ** 2 + 2 * 0.025 ** 2) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3 df) * sd / sqrt(4)
    assert (a["mean"], a.n) == (pytest.approx(0.875), 4)
    assert (a.ci_low, a.ci_high) == pytest.approx((0.875 - half, 0.875 + half))
    # paired over the three seeds both have: A - B = 0.10, 0.12, 0.08: mean 0.1, sd 0.02
    assert (a["diff"], a.n_pairs, a.reference) == (pytest.approx(0.1), 3, "B")
    assert a.diff_ci_low == pytest.approx(0.1 - T_975_DF2 * 0.02 / math.sqrt(3))
    t = 0.1 / (0.02 / math.sqrt(3))
    assert a.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))  # two-sided p on 2 df
    b = _row(table, alpha=0.1, method="B")
    assert b["mean"] == pytest.approx(0.75) and math.isnan(b["diff"]) and b.n_pairs == 0
    # pairs stay within their group: alpha 1, A - B = -0.4, -0.3, -0.2
    assert _row(table, alpha=1.0, method="A")["diff"] == pytest.approx(-0.3)
    assert fl.compared(table[table.alpha == 1.0], "A", "eval_accuracy").startswith("below B by -0.300 [")


def test_summarize_paired_against_the_best_of_each_group_and_several_values():
    runs = _runs().assign(loss=lambda t: 1 - t.eval_accuracy)
    table = fl.summarize_paired(runs, ["alpha", "algorithm"], ["eval_accuracy", "loss"], method="algorithm",
                                reference="best")
    assert _row(table, alpha=0.1, method="B", metric="eval_accuracy").reference == "A"
    assert _row(table, alpha=1.0, method="A", metric="eval_accuracy").reference == "B"
    assert _row(table, alpha=0.1, method="A", metric="loss").reference == "B"  # the highest value by default
    losses = fl.summarize_paired(runs, ["alpha", "algorithm"], "loss", method="algorithm", reference="best",
                                 higher_is_better=False)
    assert _row(losses, alpha=0.1, method="B", metric="loss").reference == "A"  # the lowest loss is the best
    assert _row(table, alpha=0.1, method="B", metric="eval_accuracy")["diff"] == pytest.approx(-0.1)
    assert len(table) == 2 * 2 * 2


def test_summarize_paired_counts_a_seed_once_with_its_mean_over_clients():
    # per client: seed 0 clients 0.6 and 1.0 (mean 0.8), seed 1: 0.9, 0.9; seed 2: 0.7, 0.9 (0.8)
    clients = pd.DataFrame({"policy": "drop", "seed": [0, 0, 1, 1, 2, 2],
                            "accuracy": [0.6, 1.0, 0.9, 0.9, 0.7, 0.9]})
    table = fl.summarize_paired(clients, ["policy"], "accuracy", method="policy")
    row = table.iloc[0]
    half = T_975_DF2 * math.sqrt((0.0333 ** 2 * 2 + 0.0667 ** 2) / 2) / math.sqrt(3)  # 0.8, 0.9, 0.8
    assert (row.method, row["mean"], row.n) == ("drop", pytest.approx(2.5 / 3), 3)
    assert row.ci_high - row["mean"] == pytest.approx(half, rel=1e-2)
    assert "diff" not in table  # no reference, no comparison


def test_summarize_paired_refuses_what_it_cannot_pair():
    runs = _runs()
    with pytest.raises(ValueError, match="^by: must include the method column 'algorithm'"):
        fl.summarize_paired(runs, ["alpha"], "eval_accuracy", method="algorithm")
    with pytest.raises(ValueError, match="^reference: 'C' is not a value of 'algorithm'"):
        fl.summarize_paired(runs, ["algorithm"], "eval_accuracy", method="algorithm", reference="C")
    with pytest.raises(ValueError, match="^table: has no column 'accuracy'"):
        fl.summarize_paired(runs, ["algorithm"], "accuracy", method="algorithm")


def test_ranking_says_what_the_paired_intervals_support():
    # C is 0.1 below A at every seed but one (clearly below); B is level with A give or take 0.01
    rows = [(m, s, v) for m, values in {"A": [0.80, 0.90, 0.85], "B": [0.81, 0.88, 0.86],
                                         "C": [0.70, 0.79, 0.76]}.items() for s, v in enumerate(values)]
    runs = pd.DataFrame(rows, columns=["method", "seed", "accuracy"])
    table = fl.summarize_paired(runs, ["method"], "accuracy", reference="best")
    assert _row(table, method="B").reference == "A"
    text = fl.ranking(table)
    a = fl.quote(table, "A")
    # B - A: +0.01, -0.02, +0.01: mean 0, sd 0.01732, half-width 4.303 * 0.01 = 0.043, t = 0 so p = 1;
    # C - A: -0.10, -0.11, -0.09: mean -0.1, sd 0.01, half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    p = fl.quote(table, "C", difference=True).split("p = ")[1].rstrip(")")
    assert text == (f"A {a}; not distinguishable from it: B (+0.000 [-0.043, +0.043], p = 1); "
                    f"below it: C (-0.100 [-0.125, -0.075], p = {p})")
    with pytest.raises(ValueError, match="^table: has no column .diff., which a ranking needs"):
        fl.ranking(fl.summarize_paired(runs, ["method"], "accuracy"))


def test_ranking_against_the_lowest_mean_of_each_group():
    # notebook 05: per defence, the attack with the lowest mean accuracy, and every other attack against it
    accuracy = {("none", "X"): [0.10, 0.20, 0.15], ("none", "Y"): [0.12, 0.17, 0.19], ("none", "Z"): [0.80, 0.91, 0.84],
                ("median", "X"): [0.85, 0.86, 0.87], ("median", "Y"): [0.60, 0.70, 0.65],
                ("median", "Z"): [0.80, 0.81, 0.79]}
    runs = pd.DataFrame([(d, a, s, v) for (d, a), values in accuracy.items() for s, v in enumerate(values)],
                        columns=["defense", "attack", "seed", "eval_accuracy"])
    table = fl.summarize_paired(runs, ["defense", "attack"], "eval_accuracy", method="attack", reference="best",
                                higher_is_better=False)
    assert set(table[table.defense == "none"].reference) == {"X"}  # mean 0.15: the lowest of 0.15, 0.16, 0.85
    assert set(table[table.defense == "median"].reference) == {"Y"}  # 0.65 against 0.86 and 0.80
    highest = fl.summarize_paired(runs, ["defense", "attack"], "eval_accuracy", method="attack", reference="best")
    assert set(highest[highest.defense == "none"].reference) == {"Z"}
    # X: 0.10, 0.20, 0.15: mean 0.15, sd 0.05, half-width 4.303 * 0.05 / sqrt(3) = 0.1242
    # Z - X: 0.70, 0.71, 0.69: mean 0.70, sd 0.01, half-width 0.0248; t = 0.70 / (0.01 / sqrt(3)) = 121.2
    # Y - X: +0.02, -0.03, +0.04: mean 0.01, sd sqrt(0.0013) = 0.03606, half-width 0.0896; t = 0.4804, p = 0.68
    t_z = 0.70 / (0.01 / math.sqrt(3))
    p_z = 1 - t_z / math.sqrt(2 + t_z * t_z)  # two-sided p on 2 df
    assert fl.ranking(table[table.defense == "none"]) == (
        f"X 0.150 [0.026, 0.274]; above it: Z (+0.700 [+0.675, +0.725], p = {p_z:.2g}); "
        "not distinguishable from it: Y (+0.010 [-0.080, +0.100], p = 0.68)")


def test_client_scores_are_each_clients_held_out_score_of_the_final_model():
    base = fl.ExperimentConfig(dataset="digits", num_clients=4, clients_per_round=4, rounds=2, eval_every=1,
                               eval_per_client=True, local_test_fraction=0.25)
    configs = [base.replace(seed=s) for s in (0, 1)]
    scores = fl.client_scores(configs, progress=False, labels={"label": lambda c: f"seed {c.seed}"})
    assert len(scores) == 2 * 4 and set(scores["round"]) == {2}
    for seed, config in enumerate(configs):
        history = fl.run_experiment(config, progress=False)
        own = fl.clients_table(history).query("round == 2").reset_index(drop=True)
        mine = scores[scores.seed == seed].reset_index(drop=True)
        pd.testing.assert_series_equal(mine.accuracy, own.accuracy)
        assert (mine.label == f"seed {seed}").all() and mine.eval_accuracy.eq(history.eval_accuracy.iloc[-1]).all()
        assert (mine.local_test_fraction == 0.25).all()
        # the run's own summary, on every client's row: the mean and worst client (of four: one) of these
        assert mine.client_accuracy_mean.eq(history.client_accuracy_mean.iloc[-1]).all()
        assert mine.client_accuracy_worst10.iloc[0] == pytest.approx(own.accuracy.min())
        assert mine.client_accuracy_mean.iloc[0] == pytest.approx(own.accuracy.mean())
    sizes = fl.client_arrays_for(base)[1]
    # a quarter of each client's examples held out (rounded): what num_examples counts
    assert scores[scores.seed == 0].num_examples.tolist() == [round(0.25 * len(y)) for y in sizes]
    with pytest.raises(fl.ConfigError, match="^eval_per_client"):
        fl.client_scores([base.replace(eval_per_client=False)], progress=False)


def test_interval_heatmap_prints_each_mean_with_its_interval():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = pd.DataFrame({"attack": ["none"] * 4 + ["flip"] * 4, "defense": ["mean", "median"] * 4,
                         "seed": [0, 0, 1, 1] * 2, "eval_accuracy": [0.8, 0.9, 0.9, 0.9, 0.1, 0.7, 0.3, 0.8]})
    table = fl.summarize(runs, ["attack", "defense"], "eval_accuracy")
    fig, ax, grid = fl.plot_interval_heatmap(table, index="attack", columns="defense", rows=["none", "flip"])
    assert grid.loc["flip", "mean"] == pytest.approx(0.2) and list(grid.index) == ["none", "flip"]
    texts = [t.get_text() for t in ax.texts]
    # flip, mean: 0.1 and 0.3, mean 0.2, sd 0.1414: half-width t(0.975, 1 df) 12.706 * 0.1414 / sqrt(2) = 1.27
    assert "0.20\n[-1.07, 1.47]" in texts and "0.90\n[0.90, 0.90]" in texts
    assert ax.get_title().endswith("mean [95 % t-interval over 2 seeds]")
    plt.close(fig)


def test_secagg_cost_over_repeats_is_drawn_as_means_with_intervals():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = pd.DataFrame({"protocol": "secagg", "clients": [10, 100], "dropout_rate": 0.0, "vector_length": 8,
                        "modulus_bits": 8, "bytes_per_client": [108, 1008], "client_seconds": [1.0, 10.0],
                        "server_seconds": [2.0, 200.0]})
    twice = pd.concat([one.assign(seed=0), one.assign(seed=1, client_seconds=[3.0, 30.0])], ignore_index=True)
    fig, axes, _ = fl.plot_secagg_cost(twice)
    client = [c for c in axes[1].containers if c.get_label() == "secagg"][0]
    assert list(client.lines[0].get_ydata()) == [2.0, 20.0]  # the mean of 1 and 3, of 10 and 30
    assert client.has_yerr
    assert axes[1].get_legend().get_title().get_text() == "mean, 95 % t-interval over 2 repeats"
    plt.close(fig)
    fig, axes, _ = fl.plot_secagg_cost(one)  # one measurement: the numbers themselves, no interval
    overhead = [c for c in axes[0].containers if c.get_label() == "secagg"][0]
    assert overhead.lines[0].get_ydata().tolist() == [100, 1000] and not overhead.has_yerr  # 108 - 8 bytes, ...
    assert axes[0].get_legend().get_title().get_text() == ""
    plt.close(fig)


def test_a_diverged_model_has_an_accuracy_and_no_auc():
    import warnings

    from fedlab.experiment.evaluation import classification_metrics

    logits = np.array([[np.nan, np.nan, np.nan], [np.inf, 0.0, -np.inf], [0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = classification_metrics(logits, np.array([0, 0, 2, 1]), False, 3)
    # argmax: 0 (NaN row: its first entry), 0, 2, 0: three of four right
    assert scores["accuracy"] == 0.75 and math.isnan(scores["auc"])


def test_a_difference_the_same_at_every_seed_is_said_as_such():
    # notebook 01: K = 50 reached the target one round before K = 10 at each of the three seeds; no spread to build
    # an interval from, and "not distinguishable" would misreport three agreeing seeds
    runs = pd.DataFrame([(m, s, v) for m, values in {"ref": [6.0, 5.0, 6.0], "K": [5.0, 4.0, 5.0],
                                                     "same": [6.0, 5.0, 6.0], "C": [9.0, 5.0, 7.0]}.items()
                         for s, v in enumerate(values)], columns=["method", "seed", "rounds"])
    table = fl.summarize_paired(runs, ["method"], "rounds", reference="ref")
    assert np.isnan(_row(table, method="K").diff_ci_low) and np.isnan(_row(table, method="K").p_value)
    assert fl.compared(table, "K", digits=1) == "below ref by -1.0 at each of the 3 seeds (no spread, so no interval)"
    assert fl.compared(table, "same", digits=1) == "the same as ref at each of the 3 seeds (no spread, so no interval)"
    assert fl.compared(table, "C", digits=1).startswith("not distinguishable from ref (+1.3 [-2.5, +5.1]")
    assert fl.ranking(table, digits=1).endswith(
        "the same difference at every seed: same (the same as ref at each of the 3 seeds), "
        "K (below ref by -1.0 at each of the 3 seeds)")
    one = fl.summarize_paired(runs[runs.seed == 0].assign(seed=0), ["method"], "rounds", reference="ref")
    assert fl.compared(one, "C", digits=1) == "+3.0 from ref on the one seed where both are defined (no interval)"


def test_ranking_groups_the_differences_without_an_interval():
    # L and K differ from ref by +1 and -1 at each of three seeds, "same" by 0; C ran at seed 0 only; B - ref is
    # +2, -1, +0.5: mean 0.5, sd 1.5, half-width 4.303 * 1.5 / sqrt(3) = 3.73, t = 0.577, p = 1 - t / sqrt(2 + t^2)
    runs = pd.DataFrame([(m, s, v) for m, values in {"ref": [6.0, 5.0, 6.0], "K": [5.0, 4.0, 5.0], "L": [7.0, 6.0, 7.0],
                                                     "same": [6.0, 5.0, 6.0], "B": [8.0, 4.0, 6.5], "C": [9.0]}.items()
                         for s, v in enumerate(values)], columns=["method", "seed", "rounds"])
    table = fl.summarize_paired(runs, ["method"], "rounds", reference="ref")
    assert _row(table, method="C").n_pairs == 1
    assert fl.ranking(table, digits=1) == (
        f"ref {fl.quote(table, 'ref', digits=1)}; not distinguishable from it: B (+0.5 [-3.2, +4.2], p = 0.62); "
        "the same difference at every seed: L (above ref by +1.0 at each of the 3 seeds), "
        "same (the same as ref at each of the 3 seeds), K (below ref by -1.0 at each of the 3 seeds); "
        "on one seed only (no interval): C (+3.0 from ref on the one seed where both are defined)")


def test_a_table_that_does_not_count_its_pairs_says_no_interval():
    # a table of one's own without n_pairs, or with NaN there (tables put together with pd.concat): no crash, and
    # a difference without an interval or p-value is said to have none, not "not distinguishable"
    plain = pd.DataFrame({"method": ["ref", "A"], "mean": [0.8, 0.9], "reference": "ref", "diff": [np.nan, 0.1],
                          "diff_ci_low": np.nan, "diff_ci_high": np.nan, "p_value": np.nan})
    for table in (plain, plain.assign(n_pairs=np.nan), plain.assign(n_pairs=[0, None])):
        assert fl.compared(table, "A") == "+0.100 from ref (no interval)"
        assert fl.ranking(table) == "ref 0.800; with no interval: A (+0.100 from ref)"
    # with a p-value the seeds did spread: no interval is not "the same at every seed"
    assert fl.compared(plain.assign(n_pairs=3, p_value=[np.nan, 0.5]), "A") == (
        "not distinguishable from ref (+0.100 (p = 0.5))")

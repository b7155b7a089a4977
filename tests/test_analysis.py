"""Tables read off histories (fedlab.studies.analysis), checked with numbers worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

import fedlab as fl

T_975_DF1 = 12.706204736174698  # Student's t, 97.5 % quantile, 1 and 2 degrees of freedom (tables)
T_975_DF2 = 4.302652729749464


def _rounds():
    # Each seed's first crossing. iid: the reference never reaches the target at seed 2; shards: A at seed 2.
    rows = [("iid", "ref", 0, 10), ("iid", "ref", 1, 12), ("iid", "ref", 2, np.nan),
            ("iid", "A", 0, 4), ("iid", "A", 1, 8), ("iid", "A", 2, 5),
            ("shards", "ref", 0, 20), ("shards", "ref", 1, 30), ("shards", "ref", 2, 40),
            ("shards", "A", 0, 10), ("shards", "A", 1, 10), ("shards", "A", 2, np.nan)]
    table = pd.DataFrame(rows, columns=["partition", "method", "seed", "rounds"])
    return table.assign(reached=table.rounds.notna())


def _row(summary, partition, method, metric):
    rows = summary[(summary.partition == partition) & (summary.method == method) & (summary.metric == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_rounds_to_target_over_seeds_by_hand():
    summary = fl.summarize_rounds_to_target(_rounds(), by=["partition", "method"], reference="ref")
    a = _row(summary, "iid", "A", "rounds")
    # 4, 8, 5: mean 17/3, sample variance ((4-17/3)^2 + (8-17/3)^2 + (5-17/3)^2) / 2 = 13/3
    half = T_975_DF2 * math.sqrt(13 / 3) / math.sqrt(3)
    assert a["mean"] == pytest.approx(17 / 3)
    assert (a.ci_low, a.ci_high) == pytest.approx((17 / 3 - half, 17 / 3 + half))
    assert (a.n, a.seeds, a.reached) == (3, 3, 3)
    # paired with the reference where both reached (seeds 0, 1): 4-10 = -6, 8-12 = -4; mean -5, sd sqrt(2)
    assert (a["diff"], a.n_pairs) == (pytest.approx(-5.0), 2)
    assert (a.diff_ci_low, a.diff_ci_high) == pytest.approx((-5 - T_975_DF1, -5 + T_975_DF1))
    assert a.p_value == pytest.approx(1 - 2 * math.atan(5) / math.pi)  # t = -5 on 1 df
    # speedup per seed: 10/4 = 2.5, 12/8 = 1.5; mean 2, sd sqrt(1/2), half-width t * 0.5
    speedup = _row(summary, "iid", "A", "speedup")
    assert (speedup["mean"], speedup.n) == (pytest.approx(2.0), 2)
    assert (speedup.ci_low, speedup.ci_high) == pytest.approx((2 - T_975_DF1 / 2, 2 + T_975_DF1 / 2))
    ref = _row(summary, "iid", "ref", "rounds")  # 10, 12 of three seeds: the unreached seed is left out
    assert (ref["mean"], ref.n, ref.seeds, ref.reached) == (pytest.approx(11.0), 2, 3, 2)
    assert math.isnan(ref["diff"]) and _row(summary, "iid", "ref", "speedup")["mean"] == 1.0
    assert summary[summary.metric == "speedup"][["diff", "n_pairs", "p_value"]].isna().all().all()  # no difference
    assert (summary.metric.tolist() == ["rounds", "speedup"] * 4 and summary.reference.eq("ref").all()
            and summary.method.tolist() == ["ref", "ref", "A", "A"] * 2)  # each run's rows together, in table order
    # pairs stay within their partition: shards speedups 20/10 = 2, 30/10 = 3
    assert _row(summary, "shards", "A", "speedup")["mean"] == pytest.approx(2.5)
    assert _row(summary, "shards", "A", "rounds").reached == 2


def test_rounds_to_target_summary_without_a_reference_and_bad_input():
    summary = fl.summarize_rounds_to_target(_rounds(), by=["partition", "method"])
    assert set(summary.metric) == {"rounds"} and "diff" not in summary
    with pytest.raises(ValueError, match="^by: must include 'method'"):
        fl.summarize_rounds_to_target(_rounds(), by=["partition"], reference="ref")
    with pytest.raises(ValueError, match="^by: several runs"):
        fl.summarize_rounds_to_target(_rounds(), by=["method"])
    with pytest.raises(ValueError, match="^reference: 'FedSGD' is not a method"):
        fl.summarize_rounds_to_target(_rounds(), by=["partition", "method"], reference="FedSGD")


def test_rounds_to_target_summary_reads_rounds_to_target():
    # two seeds of one setting: seed 0 crosses 0.5 at round 2 (not at 1, and 0.4 again at 3 does not matter),
    # seed 1 never does
    history = pd.DataFrame({"method": "A", "seed": [0, 0, 0, 1, 1, 1], "round": [1, 2, 3, 1, 2, 3],
                            "eval_accuracy": [0.3, 0.6, 0.4, 0.2, 0.3, 0.45]})
    per_seed = fl.rounds_to_target(history, 0.5, by=["method"])
    assert per_seed.rounds.tolist()[0] == 2 and math.isnan(per_seed.rounds.tolist()[1])
    summary = fl.summarize_rounds_to_target(per_seed, by=["method"])
    assert summary.iloc[0][["mean", "n", "seeds", "reached"]].tolist() == [2.0, 1, 2, 1]
    assert math.isnan(summary.iloc[0].ci_low)  # one seed reached: no interval


def test_speedups_per_seed_pair_across_partitions_by_hand():
    speedup = fl.speedups(_rounds(), by=["partition", "method"], reference="ref")
    a = speedup[speedup.method == "A"].set_index(["partition", "seed"]).speedup
    # iid: 10/4 = 2.5, 12/8 = 1.5, the reference never reached at seed 2; shards: 20/10 = 2, 30/10 = 3, A never at 2
    assert a.loc["iid"].tolist()[:2] == [2.5, 1.5] and a.loc["shards"].tolist()[:2] == [2.0, 3.0]
    assert math.isnan(a["iid", 2]) and math.isnan(a["shards", 2])
    assert speedup[speedup.method == "ref"].speedup.dropna().tolist() == [1.0] * 5
    # A's speedup on shards against on iid, paired over the seeds where both are defined (0, 1): 2 - 2.5 = -0.5,
    # 3 - 1.5 = +1.5; mean 0.5, sd sqrt(2), standard error 1, t = 0.5 on 1 df
    across = fl.summarize_paired(speedup[speedup.method == "A"], ["partition"], "speedup", method="partition",
                                 reference="iid")
    shards = across.set_index("method").loc["shards"]
    assert (shards["mean"], shards.n, shards["diff"], shards.n_pairs) == (2.5, 2, pytest.approx(0.5), 2)
    assert (shards.diff_ci_low, shards.diff_ci_high) == pytest.approx((0.5 - T_975_DF1, 0.5 + T_975_DF1))
    assert shards.p_value == pytest.approx(1 - 2 * math.atan(0.5) / math.pi)
    assert fl.compared(across, "shards", "speedup", digits=1) == (
        f"not distinguishable from iid (+0.5 [{0.5 - T_975_DF1:+.1f}, {0.5 + T_975_DF1:+.1f}] (p = 0.7))")
    # the summary's speedup rows are these per-seed speedups' means
    summary = fl.summarize_rounds_to_target(_rounds(), by=["partition", "method"], reference="ref")
    assert _row(summary, "shards", "A", "speedup")["mean"] == shards["mean"]
    with pytest.raises(ValueError, match="^reference: must name the method"):
        fl.speedups(_rounds(), by=["partition", "method"], reference=None)


def test_fastest_to_target_most_seeds_then_fewest_rounds_by_hand():
    summary = pd.DataFrame(
        [("p", "ref", "rounds", 2.0, 3), ("p", "X", "rounds", 8.0, 3), ("p", "Y", "rounds", 6.0, 3),
         ("p", "Z", "rounds", 3.0, 2), ("p", "Z", "speedup", 100.0, 3),  # Z is soonest, but at fewer seeds
         ("q", "X", "rounds", np.nan, 0), ("q", "Y", "rounds", np.nan, 0), ("q", "ref", "rounds", 9.0, 1)],
        columns=["partition", "method", "metric", "mean", "reached"])
    fastest = fl.fastest_to_target(summary, "partition", exclude=["ref"])
    assert fastest.method.to_dict() == {"p": "Y", "q": "X"}  # q: no method reached, the first in the table
    assert fastest.reached.to_dict() == {"p": 3, "q": 0} and fastest.loc["p", "metric"] == "rounds"
    assert fastest["mean"].dtype == float and fastest.reached.dtype == summary.reached.dtype
    assert fl.fastest_to_target(summary).method.tolist() == ["ref"]  # the whole table: reached 3, 2 rounds
    with pytest.raises(ValueError, match="^exclude: leaves no method"):
        fl.fastest_to_target(summary, "partition", exclude=["ref", "X", "Y", "Z"])
    with pytest.raises(ValueError, match="^table: has no column 'reached'; "):
        fl.fastest_to_target(summary.drop(columns="reached"), "partition")


def test_rounds_to_target_summary_refuses_a_table_without_its_columns():
    for column in ("rounds", "reached", "seed", "partition"):
        with pytest.raises(ValueError, match=f"^table: has no column '{column}'; columns are ") as info:
            fl.summarize_rounds_to_target(_rounds().drop(columns=column), by=["partition", "method"],
                                          reference="ref")
        assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ValueError, match="^table: has no column 'rounds'; "):
        fl.speedups(_rounds().drop(columns="rounds"), by=["partition", "method"], reference="ref")
    with pytest.raises(ValueError, match="^by: must name at least one column"):
        fl.summarize_rounds_to_target(_rounds(), by=[])
    # without a reference, by need not hold 'method': any column of it groups the runs
    by_partition = fl.summarize_rounds_to_target(_rounds()[_rounds().method == "A"], by=["partition"])
    assert by_partition.partition.tolist() == ["iid", "shards"] and by_partition.reached.tolist() == [3, 2]
    assert by_partition["mean"].tolist() == [pytest.approx(17 / 3), 10.0]


def test_interval_table_with_several_index_columns_and_undefined_comparisons():
    summary = fl.summarize_rounds_to_target(_rounds(), by=["partition", "method"], reference="ref")
    shown = fl.interval_table(summary, index=["partition", "method", "reached"], columns="metric", digits=1)
    assert list(shown.index) == [("iid", "ref", 2), ("iid", "A", 3), ("shards", "ref", 3), ("shards", "A", 2)]
    assert list(shown.columns) == ["rounds", "speedup"]
    assert shown.loc[("iid", "ref", 2), "rounds"] == f"11.0 [{11 - T_975_DF1:.1f}, {11 + T_975_DF1:.1f}]"
    # no seed where both reached: the comparison is undefined, not "+nan"
    lone = summary.assign(diff=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan, p_value=np.nan)
    iid = lone[lone.partition == "iid"]
    assert fl.quote(iid, "A", "rounds", difference=True) == "undefined"
    assert fl.compared(iid, "A", "rounds") == "not comparable with ref (no seed where both are defined)"


def test_an_infinite_x_is_a_labelled_line_not_a_point_and_chance_stays_in_view():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"epsilon": [1.0, 1.0, 10.0, 10.0, math.inf, math.inf], "seed": [0, 1] * 3,
                          "clients_per_round": 5, "attack_auc": [0.52, 0.54, 0.55, 0.57, 0.58, 0.60]})
    fig, ax, stats = fl.plot_metric_vs(table, x="epsilon", y="attack_auc", hue="clients_per_round", logx=True,
                                       chance=0.5)
    assert any(list(line.get_xdata()) == [1.0, 10.0] for line in ax.get_lines())  # the finite points, joined
    labels = ax.get_legend_handles_labels()[1]
    assert "5, epsilon = ∞" in labels and "chance (0.5)" in labels
    infinite = [line for line in ax.get_lines() if line.get_label() == "5, epsilon = ∞"][0]
    assert list(infinite.get_ydata()) == [pytest.approx(0.59)] * 2  # a horizontal line at the mean
    assert ax.get_ylim()[0] < 0.5 and len(stats) == 3
    plt.close(fig)


def test_tally_counts_which_intervals_exclude_a_value():
    # means 0.50, 0.55, 0.48, 0.52: intervals above 0.5 (0.51..0.59), below (0.45..0.49), holding it, undefined
    rows = pd.DataFrame({"mean": [0.50, 0.55, 0.48, 0.52], "ci_low": [0.47, 0.51, 0.45, np.nan],
                         "ci_high": [0.53, 0.59, 0.49, np.nan]})
    assert fl.tally(rows, 0.5) == ("means from 0.480 to 0.550; 95 % interval above 0.5 in 1 of 4, below 0.5 in 1, "
                                   "holding 0.5 in 1, undefined in 1")
    paired = pd.DataFrame({"diff": [-0.02, 0.03], "diff_ci_low": [-0.05, 0.01], "diff_ci_high": [0.01, 0.05]})
    assert fl.tally(paired, 0, difference=True, digits=2) == (
        "differences from -0.02 to +0.03; 95 % interval above 0 in 1 of 2, below 0 in 0, holding 0 in 1")


def test_protocol_costs_counts_what_a_client_sends_and_receives():
    import pandas as pd

    secagg = pd.DataFrame({"protocol": ["secagg", "secagg", "secagg"], "clients": [10, 10, 10],
                           "dropout_rate": [0.0, 0.0, 0.1], "vector_length": [100, 100, 100],
                           "bytes_per_client": [1000.0, 1200.0, 5000.0], "client_seconds": [0.1, 0.3, 9.0],
                           "server_seconds": [1.0, 3.0, 9.0]})
    ckks = pd.DataFrame({"protocol": ["ckks"], "clients": [10], "vector_length": [100],
                         "bytes_per_client": [524514], "client_seconds": [0.05],
                         "server_seconds_extrapolated": [0.5], "max_error": [1e-10]})
    table = fl.protocol_costs(secagg, ckks).set_index("protocol")
    assert table.loc["plain float32", "bytes_per_client"] == 800  # update up and model down, 4 bytes a value each
    # the mean of the two runs without dropouts, plus the model the client downloads
    assert table.loc["secagg", "bytes_per_client"] == 1100 + 400
    assert table.loc["secagg", "server_seconds"] == 2.0 and bool(table.loc["secagg", "server_seconds_measured"])
    assert table.loc["ckks", "bytes_per_value_sent_received"] == 5245.14
    assert not table.loc["ckks", "server_seconds_measured"] and table.loc["ckks", "max_error"] == 1e-10

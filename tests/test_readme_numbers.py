"""The README's numbers, rebuilt from the committed results/ with the functions the notebooks quote them with
(fedlab.reporting.report): a number in the README cannot drift from the results it cites. When `make figures` changes a
result, this test names the README sentence to update, with the new text."""

import pathlib

import pandas as pd
import pytest

import fedlab as fl
from fedlab.experiment.evaluation import worst_fraction_mean

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _flat(text: str) -> str:
    return " ".join(text.split())


README = _flat((ROOT / "README.md").read_text())


def _csv(name: str) -> pd.DataFrame:
    return pd.read_csv(RESULTS / f"{name}.csv")


def fastest_settings(rounds: pd.DataFrame, summary: pd.DataFrame, partition: str) -> tuple[str, str]:
    """The FedAvg setting that reaches the target first on ``partition`` and the words naming it with every setting
    that takes the same rounds at every seed: "settings, E = 5 or E = 20 with B = 10 (the same number of rounds at
    every seed)", or "setting, E = 5, B = 10" alone."""
    fastest = fl.fastest_to_target(summary[summary.partition == partition], exclude=["FedSGD"]).method[0]
    runs = rounds[rounds.partition == partition]
    per_seed = runs.pivot(index="seed", columns="method", values="rounds")
    tied = runs[runs.method.isin([m for m in per_seed if per_seed[m].equals(per_seed[fastest])])]
    tied = tied.drop_duplicates("method").sort_values("local_epochs").method
    if len(tied) == 1:
        return fastest, f"setting, {fastest.replace('=', ' = ')}"
    epochs, batches = zip(*(m.replace("=", " = ").split(", ") for m in tied))
    assert len(set(batches)) == 1, f"{partition}: the tied fastest settings differ in B: {list(tied)}"
    return fastest, f"settings, {' or '.join(epochs)} with {batches[0]} (the same number of rounds at every seed)"


def notebook_01():
    rounds = _csv("01_rounds_to_target")
    summary = fl.summarize_rounds_to_target(rounds, by=["partition", "method"], reference="FedSGD")
    iid, shards = (summary[summary.partition == p] for p in ("iid", "shards"))
    speedup = fl.speedups(rounds, by=["partition", "method"], reference="FedSGD")
    across = fl.summarize_paired(speedup[speedup.method == "E=20, B=10"], ["partition"], "speedup",
                                 method="partition", reference="iid")

    fastest, names = fastest_settings(rounds, summary, "shards")

    def q(table, method):
        return fl.quote(table, method, "rounds", digits=1)

    def s(partition, **kw):
        return fl.quote(across, partition, "speedup", digits=1, **kw)

    return [f"reaches the target in {q(iid, 'E=20, B=10')} rounds where FedSGD needs {q(iid, 'FedSGD')}",
            f"FedSGD needs {q(shards, 'FedSGD')} and the fastest {names}, {q(shards, fastest)}",
            f"over FedSGD is {s('iid')} on IID data and {s('shards')} on shards, below IID by "
            f"{s('shards', difference=True)} paired over the seeds",
            f"E = 20, B = 10 needs {s('iid')} times fewer rounds than FedSGD on IID data, {s('shards')} times on "
            "two-digit shards"]


def notebook_02():
    tuned = _csv("02_tuned_comparison")
    ranked = fl.summarize_paired(tuned, ["method"], "accuracy", reference="best")
    final = _csv("02_alpha_sweep")
    low = fl.summarize_paired(final[final.alpha == 0.05], ["algorithm"], "eval_accuracy", method="algorithm",
                              reference="fedavg")
    clients = _csv("02_personalisation")
    per_seed = clients.groupby(["method", "seed"]).agg(
        mean=("accuracy", "mean"), worst10=("accuracy", lambda a: worst_fraction_mean(a.dropna().to_numpy(), 0.1)))
    personal = fl.summarize_paired(per_seed.reset_index(), ["method"], ["mean", "worst10"], reference="fedavg")
    names = {"fedavg": "FedAvg", "fedavg + fine-tuning": "FedAvg fine-tuned for two local epochs before scoring",
             "qffl": "q-FFL (q = 1)", "scaffold": "SCAFFOLD", "fedper": "FedPer", "ditto": "Ditto (λ = 0.1)"}
    return [", ".join(f"{name} {fl.quote(personal, m, 'mean')} / {fl.quote(personal, m, 'worst10')}"
                      for m, name in names.items()),
            f"ranks nothing above the rest: {fl.ranking(ranked)}",
            f"lift FedAvg's clients above FedAvg by {fl.quote(personal, 'fedavg + fine-tuning', 'mean', difference=True)}",
            f"FedAvg {fl.quote(low, 'fedavg', 'eval_accuracy')}, FedAvgM {fl.quote(low, 'fedavgm', 'eval_accuracy')}, "
            f"{fl.compared(low, 'fedavgm', 'eval_accuracy')}"]


FLAMBY_LABELS = {"pooled": "pooled (all patients, one model)", "local_cleveland": "Cleveland alone",
                 "local_hungarian": "Hungary alone", "local_switzerland": "Switzerland alone", "local_va": "VA alone",
                 "fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi",
                 "fedadagrad": "FedAdagrad"}


def flamby_rows():
    """The README's FLamby table, row by row: method, published, fedlab, difference, held to."""
    rows = []
    for r in _csv("04_flamby_reproduction").itertuples():
        difference = f"{r.difference:+.3f}".replace("+0.000", "0.000").replace("-0.000", "0.000")
        held = "not a target" if pd.isna(r.tolerance) else f"±{r.tolerance:g} {'✓' if r.within else '✗'}"
        rows.append(f"| {FLAMBY_LABELS[r.method]} | {r.flamby:.3f} ± {r.flamby_std:.3f} | "
                    f"{r.fedlab:.3f} ± {r.fedlab_std:.3f} | {difference} | {held} |")
    return rows


def notebook_04():
    study, sites = _csv("04_study"), _csv("04_study_sites")
    b = "balanced_accuracy"
    flamby = fl.crosssilo.with_majority(_csv("heart_disease_benchmark"), fl.crosssilo.flamby_config())
    constant = fl.summarize_paired(flamby, ["method"], ["accuracy"], reference="majority class")
    return flamby_rows() + [
        f"reaches a balanced accuracy of {fl.quote(study, 'fedavg', b)}, above each hospital alone by "
        f"{fl.quote(study, 'fedavg', b, difference=True)}, where predicting each hospital's majority class scores "
        f"{fl.quote(study, 'majority class', b)} and pooling every patient {fl.quote(study, 'pooled', b)}; its AUC "
        f"is {fl.quote(study, 'fedavg', 'auc')} against {fl.quote(study, 'alone', 'auc')} alone. The gain is VA's "
        f"({fl.compared(sites, 'fedavg', b, site='va')})",
        f"Ditto's own models {fl.quote(study, 'ditto', b)}, {fl.compared(study, 'ditto', b)}, against FedAvg's shared "
        f"model {fl.quote(study, 'fedavg', b)}; per hospital, Ditto is "
        f"{fl.compared(sites, 'ditto', b, site='cleveland').replace('alone', 'alone in Cleveland', 1)}, where "
        f"FedAvg's shared model is {fl.compared(sites, 'fedavg', b, site='cleveland')}",
        f"scores {fl.quote(constant, 'majority class', 'accuracy')}; against it pooled training is "
        f"{fl.compared(constant, 'pooled', 'accuracy')} and FedAvg {fl.compared(constant, 'fedavg', 'accuracy')}"]


def secagg_cost_rows():
    cost = _csv("05_secagg_cost")
    mean = cost.groupby(["clients", "dropout_rate", "protocol"])[
        ["bytes_per_client", "client_seconds", "server_seconds"]].mean()
    rows = []
    for (clients, dropout), g in mean.groupby(level=[0, 1]):
        a, b = g.loc[(clients, dropout, "secagg")], g.loc[(clients, dropout, "secagg+")]
        rows.append(f"| {clients} | {dropout:g} | {a.bytes_per_client / 1e3:.1f} | {b.bytes_per_client / 1e3:.1f} | "
                    f"{a.client_seconds:.4f} | {b.client_seconds:.4f} | {a.server_seconds:.3f} | "
                    f"{b.server_seconds:.3f} |")
    return rows


def secagg_server_at_1000():
    """The SecAgg server's seconds at 1000 clients without dropouts, seed by seed: "a, b and c"."""
    cost = _csv("05_secagg_cost").query("protocol == 'secagg' and clients == 1000 and dropout_rate == 0")
    values = [f"{v:.2f}" for v in cost.sort_values("seed").server_seconds]
    return ", ".join(values[:-1]) + " and " + values[-1]


THREATS = {"none": "none (no attackers)", "label_flip": "label flipping", "sign_flip": "sign flipping",
           "gaussian": "Gaussian", "alie": "ALIE"}
DEFENCES = ["none", "clip", "median", "trimmed_mean", "krum"]


def threat_matrix_rows():
    matrix = _csv("05_threat_matrix").fillna({"attack": "none"})
    mean = matrix.groupby(["attack", "defense"]).eval_accuracy.mean()
    return [f"| {name} | " + " | ".join(f"{mean[attack, d]:.3f}" for d in DEFENCES) + " |"
            for attack, name in THREATS.items()]


def notebook_05():
    cost = _csv("05_secagg_cost")
    cost_table = fl.summarize_paired(cost, ["clients", "dropout_rate", "protocol"],
                                     ["overhead_kb", "server_seconds"], method="protocol", reference="secagg")
    calm, stormy, fewest = (cost_table[(cost_table.clients == c) & (cost_table.dropout_rate == d)]
                            for c, d in ((1000, 0.0), (1000, 0.3), (10, 0.0)))
    attacked = _csv("05_attackers").query("attacker_fraction == 0.3")
    attacked = attacked.assign(method=attacked.robust + ", " + attacked.client_weighting)
    defences = fl.summarize_paired(attacked, ["method"], "eval_accuracy", reference="clip, examples")
    matrix = _csv("05_threat_matrix").fillna({"attack": "none"})
    krum_alie = matrix.query("attack == 'alie' and defense == 'krum'").eval_accuracy
    clip = matrix.query("defense == 'clip'").groupby("attack").eval_accuracy.mean()

    def q(table, method, metric, digits):
        return fl.quote(table, method, metric, digits=digits)

    def a(method):
        return fl.quote(defences, method, "eval_accuracy")

    return secagg_cost_rows() + threat_matrix_rows() + ckks_rows() + [
        f"a SecAgg client sends and receives {q(fewest, 'secagg', 'overhead_kb', 1)} kB of keys and shares besides "
        f"its masked vector at 10 clients and {q(calm, 'secagg', 'overhead_kb', 1)} kB at 1000; a SecAgg+ client "
        f"at 1000: {q(calm, 'secagg+', 'overhead_kb', 1)} kB",
        f"The server needs {q(calm, 'secagg', 'server_seconds', 2)} s for SecAgg at 1000 clients and "
        f"{q(stormy, 'secagg', 'server_seconds', 2)} s when 30 % drop out after the key exchange",
        f"SecAgg+ {q(calm, 'secagg+', 'server_seconds', 2)} s and {q(stormy, 'secagg+', 'server_seconds', 2)} s",
        f"dropouts took {secagg_server_at_1000()} s over the three repeats",
        f"the plain mean ends at {a('none, examples')} and L2 clipping at {a('clip, examples')}",
        f"clipping with equal weights reaches {a('clip, uniform')}, "
        f"{fl.compared(defences, 'clip, uniform', 'eval_accuracy')}, beside the plain mean with equal weights "
        f"{a('none, uniform')}, median {a('median, uniform')}, trimmed mean {a('trimmed_mean, uniform')} and Krum "
        f"{a('krum, uniform')}",
        f"(Krum {krum_alie.mean():.3f}, {krum_alie.min():.3f} in one seed)",
        f"the most even ({clip.min():.2f} to {clip.max():.2f})"]


def ckks_rows():
    """The README's CKKS sentences: a round's bytes and server seconds beside plain and SecAgg (notebook 05), and the
    accuracy of training under CKKS against plain FedAvg over the seeds (notebooks 05 and 04)."""
    cost = _csv("05_he_cost").set_index(["protocol", "clients", "vector_length"])
    small = 7850

    def kb(protocol, clients=10):
        return f"{cost.loc[(protocol, clients, small), 'bytes_per_client'] / 1e3:,.1f}"

    ratio = cost.loc[("ckks", 10, small), "bytes_per_client"] / cost.loc[("plain float32", 10, small),
                                                                         "bytes_per_client"]
    seconds = {p: cost.loc[(p, 1000, small), "server_seconds"] for p in ("ckks", "secagg")}
    accuracy = fl.summarize_paired(_csv("05_he_accuracy"), ["aggregation"], "eval_accuracy", method="aggregation",
                                   reference="plain")
    hospitals = _csv("04_secure_aggregation")
    hospitals = hospitals[hospitals.method.isin(["ckks, the hospitals hold the key", "fedavg, examples weights"])]
    heart = fl.summarize_paired(hospitals, ["method"], "balanced_accuracy", reference="fedavg, examples weights")
    return [f"a CKKS client sends and receives {kb('ckks')} kB a round for the 7,850-value model, against "
            f"{kb('plain float32')} kB in plain float32 ({ratio:.1f} times) and {kb('secagg', 1000)} kB for SecAgg "
            f"at 1000 clients",
            f"the server needs {seconds['ckks']:.2f} s at 1000 clients (extrapolated from 3 timed clients: it grows "
            f"linearly in them), SecAgg {seconds['secagg']:.2f} s (the mean of {secagg_server_at_1000()} s)",
            f"CKKS ends at {fl.quote(accuracy, 'ckks', 'eval_accuracy')} test accuracy and plain FedAvg at "
            f"{fl.quote(accuracy, 'plain', 'eval_accuracy')}: {fl.compared(accuracy, 'ckks', 'eval_accuracy')}",
            f"CKKS between the four hospitals reaches a balanced accuracy of "
            f"{fl.quote(heart, 'ckks, the hospitals hold the key', 'balanced_accuracy')}, "
            f"{fl.compared(heart, 'ckks, the hospitals hold the key', 'balanced_accuracy')}"]


def notebook_07():
    table = _csv("07_fedbuff")
    paired = fl.summarize_paired(table, ["policy"], ["eval_accuracy", "hours_to_target", "fast_half_share"],
                                 method="policy", reference="wait")

    def q(policy, column, digits=3):
        return fl.quote(paired, policy, column, digits=digits)

    stale = table[table.policy == "FedBuff"]
    return [f"FedBuff's test accuracy is {q('FedBuff', 'eval_accuracy')} when the drop run ends, waiting's "
            f"{q('wait', 'eval_accuracy')}: {fl.compared(paired, 'FedBuff', 'eval_accuracy')}",
            f"it reaches 0.85 in {q('FedBuff', 'hours_to_target', 2)} simulated hours against waiting's "
            f"{q('wait', 'hours_to_target', 2)}: {fl.compared(paired, 'FedBuff', 'hours_to_target', digits=2)}",
            f"the faster half of the devices sends {q('FedBuff', 'fast_half_share')} of the updates it uses "
            f"(waiting: {q('wait', 'fast_half_share')})",
            f"{stale.staleness_mean.mean():.1f} server steps old on average (at most {stale.staleness_max.max():.0f})"]


TCGA_LABELS = {"pooled": "pooled (all patients, one model)", "local_northeast": "Northeast alone",
               "local_south": "South alone", "local_west": "West alone", "local_midwest": "Midwest alone",
               "local_europe": "Europe alone", "local_canada": "Canada alone", "fedavg": "FedAvg",
               "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad",
               "scaffold": "SCAFFOLD"}


def tcga_rows():
    """The README's Fed-TCGA-BRCA table, row by row: method, published, fedlab, difference [Welch interval],
    collapsed seeds in each."""
    return [f"| {TCGA_LABELS[r.method]} | {r.flamby:.3f} ± {r.flamby_std:.3f} | {r.fedlab:.3f} ± {r.fedlab_std:.3f} | "
            f"{r.difference:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}] | {r.flamby_collapsed} / "
            f"{r.fedlab_collapsed} |" for r in _csv("08_tcga_reproduction_table").itertuples()]


def notebook_08():
    age, cost = _csv("08_against_age"), _csv("08_region_dropout_cost")
    repro = _csv("08_tcga_reproduction_table").set_index("method")
    tests = cost[cost.method != "all regions"]
    held = tests[tests.p_holm < 0.05]
    typical = lambda m: (f"{fl.number(repro.typical_fedlab[m])} against {fl.number(repro.typical_flamby[m])} "  # noqa
                         f"({repro.typical_difference[m]:+.3f})")
    return tcga_rows() + [
        f"The interval holds 0 for {int(repro.within.sum())} of the {len(repro)} methods, but it is only as narrow as "
        f"the seeds allow: FLamby's FedAvg and FedProx each have {repro.flamby_collapsed['fedavg']} collapsed seed "
        f"(seed 43, near {min(fl.tcga.FLAMBY_TCGA_SEEDS['fedavg']):.2f}), fedlab's {repro.fedlab_collapsed['fedavg']}, "
        f"which widens their intervals to "
        f"±{fl.number(repro.half_width['fedavg'], 2)}. Over the seeds that did not collapse, FedAvg scores "
        f"{typical('fedavg')} and FedProx {typical('fedprox')}",
        f"fedlab's South alone varies more than FLamby's (standard deviation "
        f"{fl.number(repro.fedlab_std['local_south'])} against {fl.number(repro.flamby_std['local_south'])}, "
        f"{repro.fedlab_collapsed['local_south']} collapsed seeds), and West alone collapses at "
        f"{repro.fedlab_collapsed['local_west']} of 5 seeds in fedlab and {repro.flamby_collapsed['local_west']} "
        "of 5 in FLamby",
        f"FedAdagrad's shared model ranks patients with a C-index of {fl.quote(age, 'fedadagrad')} and FedAvg's "
        f"{fl.quote(age, 'fedavg')}, where age alone, with no training, scores {fl.quote(age, 'age alone')}: "
        f"FedAdagrad is {fl.compared(age, 'fedadagrad')}; the best region alone, Europe, "
        f"{fl.compared(age, 'local_europe')}; pooling every patient {fl.compared(age, 'pooled')}",
        f"of {len(tests)} comparisons, {len(held)} holds after Holm's correction for testing them all: "
        + "; ".join(f"{r.region} left out, on its own patients, {fl.compared(cost, r.method, site=r.site)}, Holm "
                    f"p = {fl.number(r.p_holm, 2)}" for r in held.itertuples())]


def stacked_seeds():
    """The README's table of benchmarks/stacked_seeds.py (results/benchmarks/stacked_seeds.csv)."""
    t = _csv("benchmarks/stacked_seeds")
    one, sequential, stacked, xla_one, xla, product = t.itertuples()
    return [f"| one seed's client | {one.seconds:.2g} | 1 | {one.gflop_per_s:.0f} |",
            f"| 10 seeds' clients one after the other | {sequential.seconds:.2g} | {sequential.ratio_to_one:.1f} | "
            f"{sequential.gflop_per_s:.0f} |",
            f"| 10 seeds' clients stacked | {stacked.seconds:.2g} | {stacked.ratio_to_one:.1f} | "
            f"{stacked.gflop_per_s:.0f} |",
            f"| one seed's client, the stacked loop compiled by XLA | {xla_one.seconds:.2g} | "
            f"{xla_one.ratio_to_one:.1f} | {xla_one.gflop_per_s:.0f} |",
            f"| 10 seeds' clients stacked, compiled by XLA | {xla.seconds:.2g} | {xla.ratio_to_one:.1f} | "
            f"{xla.gflop_per_s:.0f} |",
            f"| one 2000×2000 matrix product | {product.seconds:.2g} | | {product.gflop_per_s:.0f} |",
            f"({one.local_steps} local steps of 10 examples, {one.mflop_per_client:.0f} MFLOP)",
            f"its updates equal the ones trained alone within {stacked.max_abs_difference:.1e}",
            f"would need {one.need_gflop_per_s_for_2x:.0f} GFLOP/s from steps of 10 examples",
            f"arithmetic ({product.gflop_per_s:.0f} on one large product), but stacked the steps reach "
            f"{stacked.gflop_per_s:.0f}",
            f"about half of the training ({stacked.ratio_to_one:.1f}× instead of {sequential.ratio_to_one:.1f}×)"]


def stacked_seeds_one_thread():
    """The README's table of benchmarks/stacked_seeds.py on one thread (results/benchmarks/stacked_seeds_one_thread.csv)."""
    t = _csv("benchmarks/stacked_seeds_one_thread")
    one, sequential, stacked, xla_one, xla, product = t.itertuples()
    assert set(t.threads.astype(str)) == {"1"}
    rows = [("one seed's client", one), ("10 seeds' clients one after the other", sequential),
            ("10 seeds' clients stacked", stacked), ("one seed's client, the stacked loop compiled by XLA", xla_one),
            ("10 seeds' clients stacked, compiled by XLA", xla)]
    return [f"| {name} | {r.seconds:.2g} | {r.ratio_to_one:.{0 if r is one else 1}f} | {r.gflop_per_s:.0f} |"
            for name, r in rows] + [
            f"| one 2000×2000 matrix product | {product.seconds:.2g} | | {product.gflop_per_s:.0f} |",
            f"training {sequential.ratio_to_one / stacked.ratio_to_one:.1f} times faster ({stacked.ratio_to_one:.1f} "
            f"times one seed's\ninstead of {sequential.ratio_to_one:.1f})",
            f"would need\n{one.need_gflop_per_s_for_2x:.0f} GFLOP/s from steps of 10 examples "
            f"({one.need_gflop_per_s_for_2x / 2:.0f} on each of two cores); stacked, a core reaches "
            f"{stacked.gflop_per_s:.0f}",
            f"at least {stacked.ratio_to_one:.1f} / 2 = {stacked.ratio_to_one / 2:.1f} times"]


def secagg_cost_speed():
    """The README's sentence on benchmarks/secagg_cost_speed.py (results/benchmarks/secagg_cost_speed.csv)."""
    one, spread, timed = _csv("benchmarks/secagg_cost_speed").itertuples()
    return [f"{one.seconds:.1f} s in one process, {spread.seconds:.1f} s spread "
            f"({spread.ratio_to_one_process:.2f} of the time), the same table but for its seconds columns, with a "
            f"mean client time of {one.mean_client_seconds:.4f} s against {spread.mean_client_seconds:.4f} s",
            f"{timed.seconds:.1f} s ({timed.ratio_to_one_process:.2f} of one process, "
            f"{timed.seconds / spread.seconds:.2f} of spread with every client timed), with a mean client time of "
            f"{timed.mean_client_seconds:.4f} s"]


def tff_tracing():
    """The README's sentences on benchmarks/tff_tracing.py (results/benchmarks/tff_tracing.csv)."""
    t = _csv("benchmarks/tff_tracing")
    medians = t.groupby(["setting", "tff_tracing"])[["wall_ms", "fedlab_cpu_ms", "worker_cpu_ms"]].median()
    pairs = t.pivot_table(index=["setting", "pair"], columns="tff_tracing", values=["wall_ms", "fedlab_cpu_ms"])
    saved = {m: (pairs[(m, True)] - pairs[(m, False)]) for m in ("wall_ms", "fedlab_cpu_ms")}
    one, bench = "notebook 01", "make bench, K = 10"
    assert (saved["fedlab_cpu_ms"] > 0).all() and t.groupby("setting").final_train_loss.nunique().eq(1).all()

    def cpu(setting):
        return f"{medians.fedlab_cpu_ms[setting, True]:.1f} → {medians.fedlab_cpu_ms[setting, False]:.1f}"

    def span(setting, metric):
        return f"{saved[metric][setting].min():.1f}–{saved[metric][setting].max():.1f} ms"

    faster_wall = saved["wall_ms"][bench][saved["wall_ms"][bench] > 0]
    t["total_ms"] = t.fedlab_cpu_ms + t.worker_cpu_ms
    totals = t.pivot_table(index=["setting", "pair"], columns="tff_tracing", values="total_ms")
    share = 100 * saved["fedlab_cpu_ms"][bench] / totals[True][bench]
    whole = medians.fedlab_cpu_ms[one, True] - medians.fedlab_cpu_ms[one, False]
    whole = 100 * whole / (medians.fedlab_cpu_ms[one, True] + medians.worker_cpu_ms[one, True])
    worker = medians.worker_cpu_ms
    return [f"{len(pairs) // 2} pairs of {t.rounds.iloc[0]}-round runs",
            f"fedlab's process took less CPU in all {len(pairs)} pairs",
            f"{cpu(one)} CPU ms a round (medians; {span(one, 'fedlab_cpu_ms')} less per pair)",
            f"K = 10 workload {cpu(bench)} ({span(bench, 'fedlab_cpu_ms')} less;",
            f"from {-saved['wall_ms'][one].min():.1f} ms slower to {saved['wall_ms'][one].max():.1f} ms faster a "
            f"round of {medians.wall_ms[one, False]:.0f} in the first setting",
            f"{faster_wall.min():.1f}–{faster_wall.max():.1f} ms faster in {len(faster_wall)} of "
            f"{len(saved['wall_ms'][bench])} pairs of the second ({medians.wall_ms[bench, True]:.1f} → "
            f"{medians.wall_ms[bench, False]:.1f} ms, medians)",
            f"TFF's worker took {worker[one, True]:.1f} and {worker[one, False]:.1f} CPU ms a round in the first "
            f"setting and {worker[bench, True]:.1f} and {worker[bench, False]:.1f} in the second",
            f"{whole:.1f} % of a round's CPU in notebook 01's setting, {share.min():.1f}–{share.max():.1f} % per pair"]


def quiet_periods():
    """The README's sentence on benchmarks/quiet_periods.py (results/benchmarks/quiet_periods.csv)."""
    t = _csv("benchmarks/quiet_periods")
    medians = t.groupby(["setting", "clients_per_round"]).seconds_per_round.median()
    alone, quiet, busy = "alone", "beside a sweep, in a quiet period", "beside a sweep, no quiet period"
    runs = t.groupby(["clients_per_round", "setting"]).seconds_per_round
    assert all(medians[quiet][k] <= medians[alone][k] for k in (10, 100))  # "its median was no slower"

    def at(setting):
        return " and ".join(f"{medians[setting][k]:.4f}" for k in (10, 100)) + " s a round"

    def ratio(setting):
        return " and ".join(f"{medians[setting][k] / medians[alone][k]:.2f}x" for k in (10, 100))

    def spread(k, setting, word=" s"):
        return f"{runs.min()[k, setting]:.3f}{word}{runs.max()[k, setting]:.3f} s"

    return [f"took {at(alone)} alone, {at(quiet)} beside a sweep of notebook 01's setting in a quiet period "
            f"({ratio(quiet)}; at K = 100 the runs alone took {spread(100, alone, '–')}, those in a quiet period "
            f"{spread(100, quiet, '–')}), and {at(busy)} beside it without one ({ratio(busy)}): in a quiet period a "
            f"measurement's median was no slower than alone (at K = 10 the runs alone ranged from "
            f"{spread(10, alone, ' s to ')}, those in a quiet period from {spread(10, quiet, ' s to ')}"]


def sweeps_side_by_side():
    """The README's sentence on benchmarks/sweeps_side_by_side.py (results/benchmarks/sweeps_side_by_side.csv)."""
    t = _csv("benchmarks/sweeps_side_by_side")
    assert t.same_final.all() and (t.runs_per_sweep == 6).all()  # "six seeds", "the same in all nine"
    assert len(t) == 9 and (t.groupby("setting").repeat.nunique() == 3).all()  # "medians of three"
    by = t.groupby("setting")
    wall, cpu, low, high = by.seconds.median(), by.cpu_seconds.median(), by.seconds.min(), by.seconds.max()
    assert wall["one"] < wall["workers"] and cpu["one"] < cpu["workers"]  # what the change rests on

    def at(setting):
        return f"{wall[setting]:.1f} s ({low[setting]:.1f}–{high[setting]:.1f}), {cpu[setting]:.1f} CPU s"

    return [f"two sweeps side by side took {at('workers')} with a worker process per core each, {at('one')} with "
            f"one process each ({wall['one'] / wall['workers']:.2f} of the time, {cpu['one'] / cpu['workers']:.2f} of "
            f"the CPU), and {at('one-interop')} with one process each and one inter-op thread"]


def _side_by_side(name: str, column: str, before, after, unit: str) -> list[str]:
    """The README's sentence on a side-by-side benchmark: ``column`` is ``before`` in one run of each pair or
    repeat, ``after`` in the other; medians, and how much less fedlab's process took in each pair."""
    t = _csv(f"benchmarks/{name}")
    assert t.groupby("setting").final_train_loss.nunique().eq(1).all()  # the same numbers both ways
    medians = t.groupby(["setting", column])[["wall_ms", "fedlab_cpu_ms", "worker_cpu_ms"]].median()
    index = "pair" if "pair" in t else "repeat"
    pairs = t.pivot_table(index=["setting", index], columns=column, values=["wall_ms", "fedlab_cpu_ms"])
    saved = pairs[("fedlab_cpu_ms", before)] - pairs[("fedlab_cpu_ms", after)]
    faster = pairs[("wall_ms", before)] - pairs[("wall_ms", after)]
    parts = []
    for setting in ("notebook 01", "make bench, K = 10"):
        wall, cpu, worker = (medians[m][setting] for m in ("wall_ms", "fedlab_cpu_ms", "worker_cpu_ms"))
        assert (saved[setting] > 0).all()  # what the change rests on: less of fedlab's CPU in every pair
        parts.append(f"{setting}: {wall[before]:.1f} → {wall[after]:.1f} ms a round "
                     f"({wall[after] / wall[before]:.2f}; faster in {(faster[setting] > 0).sum()} of "
                     f"{len(faster[setting])} {unit}), fedlab's process {cpu[before]:.1f} → {cpu[after]:.1f} CPU ms "
                     f"(less in every {unit[:-1]}), TFF's worker {worker[before]:.1f} and {worker[after]:.1f}")
    return ["; ".join(parts) + " (medians; the same final loss in every run of a setting)."]


def kept_results():
    """The README's sentence on benchmarks/kept_results.py (results/benchmarks/kept_results.csv)."""
    return _side_by_side("kept_results", "results_sent_back", True, False, "pairs")


def array_files_speed():
    """The README's sentence on benchmarks/array_files_speed.py (results/benchmarks/array_files_speed.csv)."""
    return _side_by_side("array_files_speed", "files", "disk", "memory", "repeats")


CLAIMS = [notebook_01, notebook_02, notebook_04, notebook_05, notebook_07, notebook_08, stacked_seeds,
          stacked_seeds_one_thread, secagg_cost_speed, tff_tracing, quiet_periods, sweeps_side_by_side, kept_results,
          array_files_speed]


@pytest.mark.parametrize("claims", CLAIMS, ids=lambda f: f.__name__)
def test_the_readme_quotes_the_committed_results(claims):
    missing = [text for text in claims() if _flat(text) not in README]
    assert not missing, "README.md does not say (from results/):\n" + "\n".join(missing)


def test_every_committed_comparison_rests_on_at_least_three_seeds():
    # issue 32: a results table that compares runs has >= 3 seeds for every setting it compares (5 for notebook 04)
    counted = 0
    for path in sorted(RESULTS.glob("*.csv")):
        table = pd.read_csv(path)
        if "seed" in table:
            settings = [c for c in table.columns if table[c].dtype == object and c != "site"]
            seeds = table.groupby(settings).seed.nunique() if settings else pd.Series([table.seed.nunique()])
            least = 5 if path.name.startswith("04_") else 3
        elif "n" in table and "mean" in table:  # a compare table: n seeds behind each defined mean
            seeds, least = table.n[table["mean"].notna()], 5 if path.name.startswith("04_") else 3
        else:
            continue
        counted += 1
        assert seeds.min() >= least, f"{path.name}: a setting with {seeds.min()} seeds"
    assert counted >= 25


if __name__ == "__main__":  # prints what the README should say, to update it after `make figures`
    for claims in CLAIMS:
        print(f"# {claims.__name__}")
        print("\n".join(claims()))

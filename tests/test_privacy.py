"""Privacy: accounting against dp-accounting, the noise that reaches the aggregate, clipping, the audit."""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

from fedlab import ExperimentConfig, final_weights, run_experiment
from fedlab.aggregators.seeded import round_seed
from fedlab.rounds.secure_rounds import ProtocolSum
from fedlab.protection import accounting
from fedlab.studies import privacy
from fedlab.aggregators import aggregation
from fedlab.experiment.config import ConfigError


def direct_epsilon(z, q, rounds, delta, accountant):
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_agrees_with_dp_accounting(accountant):
    ours = accounting.epsilon(1.1, 0.05, 200, 1e-5, accountant)
    assert ours == pytest.approx(direct_epsilon(1.1, 0.05, 200, 1e-5, accountant), rel=1e-9)


def test_epsilon_by_round_matches_per_round_accounting():
    curve = accounting.epsilon_by_round(0.8, 0.1, 30, 1e-5, "rdp")
    for r in (1, 7, 30):
        assert curve[r - 1] == pytest.approx(direct_epsilon(0.8, 0.1, r, 1e-5, "rdp"), rel=1e-9)
    assert np.all(np.diff(curve) > 0)
    sparse = accounting.epsilon_by_round(0.8, 0.1, 30, 1e-5, "pld", at=[5, 30])
    assert np.isnan(sparse[0]) and sparse[29] == pytest.approx(direct_epsilon(0.8, 0.1, 30, 1e-5, "pld"))


def test_epsilon_by_round_is_computed_once_per_setting_and_each_caller_gets_its_own_array():
    accounting._epsilon_by_round.cache_clear()
    first = accounting.epsilon_by_round(0.9, 0.2, 12, 1e-5)
    first[:] = -1.0  # a caller's array is its own
    second = accounting.epsilon_by_round(0.9, 0.2, 12, 1e-5)
    assert accounting._epsilon_by_round.cache_info().hits == 1
    assert second[11] == pytest.approx(direct_epsilon(0.9, 0.2, 12, 1e-5, "rdp"), rel=1e-9)
    assert np.all(np.diff(second) > 0)
    other = accounting.epsilon_by_round(0.9, 0.2, 12, 1e-4)  # another delta is another setting
    assert other[11] < second[11] and accounting._epsilon_by_round.cache_info().misses == 2


def test_tff_dp_tutorial_calibration_is_reproduced():
    """TFF's tutorial "Differential Privacy in TFF" (federated_learning_with_differential_privacy.ipynb): 3,383
    EMNIST clients, 100 rounds, noise multiplier = 0.01 x clients per round, calibrated with dp-accounting's RDP to
    (2, 1e-5)-DP, which gives 120 clients per round (noise 1.2). The smallest K whose epsilon is within 2 is 120 here."""
    eps = {k: accounting.epsilon(0.01 * k, k / 3383, 100, 1e-5, "rdp") for k in (119, 120)}
    assert eps[119] > 2.0 >= eps[120]
    assert eps[120] == pytest.approx(1.98611, abs=1e-4)


def test_pld_is_tighter_and_more_noise_buys_privacy():
    rdp, pld = accounting.epsilon(1.0, 0.1, 100, 1e-5, "rdp"), accounting.epsilon(1.0, 0.1, 100, 1e-5, "pld")
    assert pld < rdp < 1.3 * pld
    assert accounting.epsilon(2.0, 0.1, 100, 1e-5) < rdp
    assert accounting.epsilon(1.0, 0.05, 100, 1e-5) < rdp  # fewer clients per round: less privacy loss
    assert math.isinf(accounting.epsilon(0.0, 0.1, 100, 1e-5))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_noise_multiplier_for_is_the_inverse(accountant):
    z = accounting.noise_multiplier_for(2.0, 0.1, 100, 1e-5, accountant)
    assert accounting.epsilon(z, 0.1, 100, 1e-5, accountant) == pytest.approx(2.0, abs=1e-2)
    assert accounting.epsilon(z * 0.9, 0.1, 100, 1e-5, accountant) > 2.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(noise_multiplier=-1.0, sampling_probability=0.1, rounds=10, delta=1e-5), "noise_multiplier"),
    (dict(noise_multiplier=1.0, sampling_probability=1.5, rounds=10, delta=1e-5), "sampling_probability"),
    (dict(noise_multiplier=1.0, sampling_probability=0.1, rounds=0, delta=1e-5), "rounds"),
    (dict(noise_multiplier=1.0, sampling_probability=0.1, rounds=10, delta=1.0), "delta"),
])
def test_bad_privacy_parameters(kwargs, field):
    with pytest.raises(accounting.PrivacyParameterError) as info:
        accounting.epsilon(**kwargs)
    assert info.value.field == field


def test_dp_config_validation():
    with pytest.raises(ConfigError, match="^weight_bound: must be > 0 with qffl and dp='fixed'"):
        ExperimentConfig(dp="fixed", algorithm="qffl")  # its own weights, unbounded
    ExperimentConfig(dp="fixed", algorithm="qffl", weight_bound=50.0)  # each client's share of them, bounded
    with pytest.raises(ConfigError, match="^local_steps: must be set with fednova under dp='fixed': its server "
                                          "scales every update by tau_eff"):
        ExperimentConfig(dp="fixed", algorithm="fednova")
    ExperimentConfig(dp="adaptive", algorithm="fednova", local_steps=5)  # tau_eff: the public 5
    ExperimentConfig(dp="fixed", algorithm="fedsgd", model="2nn", freeze_layers=1)  # frozen layers: compiled loop
    ExperimentConfig(dp="fixed", algorithm="fedprox")  # fedlab's compiled loop with a plain mean
    ExperimentConfig(dp="fixed", algorithm="ditto")  # personalised: the global model takes the DP mean
    ExperimentConfig(dp="fixed", algorithm="scaffold", local_steps=5)  # its control variates noised with its update
    ExperimentConfig(dp="fixed", algorithm="fedper", model="2nn")
    with pytest.raises(ConfigError, match="target_quantile"):
        ExperimentConfig(dp="adaptive", target_quantile=1.0)
    assert ExperimentConfig(num_clients=100).effective_delta == pytest.approx(100 ** -1.1)


def _aggregate(factory, values):
    from fedlab.core.runtime import tff

    t = tff()
    process = factory.create(t.types.TensorType(np.float32, [len(values[0])]))
    return np.asarray(process.next(process.initialize(), values).result)


def test_noise_reaches_the_aggregate_with_std_z_c_over_k():
    z, clip, k, dim = 2.0, 0.5, 4, 20000
    factory = aggregation.dp_aggregator(mode="fixed", noise_multiplier=z, clients_per_round=k, clip_norm=clip)
    result = _aggregate(factory, [np.zeros(dim, np.float32)] * k)
    # zero updates: the aggregate is pure noise of std z*C/K = 0.25; sample std of 20,000 draws is within 2%.
    assert result.std() == pytest.approx(z * clip / k, rel=0.03)
    assert abs(result.mean()) < 4 * (z * clip / k) / np.sqrt(dim)


def test_clipped_updates_never_exceed_the_clip_norm():
    clip, k = 1.0, 3
    factory = aggregation.dp_aggregator(mode="fixed", noise_multiplier=0.0, clients_per_round=k, clip_norm=clip)
    rng = np.random.default_rng(0)
    big = [(v / np.linalg.norm(v) * s).astype(np.float32) for v, s in zip(rng.normal(size=(k, 50)), [5.0, 0.3, 40.0])]
    mean = _aggregate(factory, big)
    # each update is scaled to norm <= 1, so their mean is the mean of the clipped vectors
    clipped = [v * min(1.0, clip / np.linalg.norm(v)) for v in big]
    np.testing.assert_allclose(mean, np.mean(clipped, axis=0), atol=1e-5)
    assert np.linalg.norm(mean) <= clip + 1e-6
    # one client alone cannot move the aggregate by more than clip/K
    assert np.linalg.norm(_aggregate(factory, [big[2], np.zeros(50, np.float32), np.zeros(50, np.float32)])) \
        == pytest.approx(clip / k, rel=1e-5)


def test_dp_run_uses_poisson_sampling_and_reports_epsilon():
    config = ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=5, rounds=5, dp="fixed",
                              noise_multiplier=0.7, clip_norm=0.5, delta=1e-3)
    history = run_experiment(config, progress=False)
    counts = history["clients_this_round"].tolist()
    assert len(set(counts)) > 1, f"Poisson sampling should vary the clients per round: {counts}"
    expected = accounting.epsilon_by_round(0.7, 0.25, 5, 1e-3)
    np.testing.assert_allclose(history["epsilon"], expected)
    adaptive = run_experiment(config.replace(dp="adaptive", rounds=3), progress=False)
    assert adaptive["clip_norm_this_round"].notna().all()


def test_attack_aucs_by_hand():
    # members' scores -0.1, -0.2 against non-members' -0.3, -0.05: 2 of 4 pairs ranked right.
    assert privacy.membership_inference([0.1, 0.2], [0.3, 0.05])["loss_auc"] == 0.5
    assert privacy.membership_inference([0.1, 0.2], [0.3, 0.4])["loss_auc"] == 1.0
    # calibration: reference minus target. Members 1.0-0.1=0.9, 0.3-0.2=0.1; non-members 0.35-0.3=0.05,
    # 0.1-0.05=0.05: members rank above both, so 1.0 where the raw loss gave 0.5.
    result = privacy.membership_inference([0.1, 0.2], [0.3, 0.05], [1.0, 0.3], [0.35, 0.1])
    assert result["calibrated_auc"] == 1.0


def test_true_positive_rate_at_a_low_false_positive_rate_by_hand():
    nonmembers = np.arange(100.0)  # scores 0..99
    members = np.array([99.5, 98.5, 97.0, 10.0])
    # 1 % of 100 non-members may pass: the threshold is the second-highest non-member, 98; two members exceed it
    assert privacy.tpr_at_fpr(members, nonmembers, 0.01) == 0.5
    assert privacy.tpr_at_fpr(members, nonmembers, 0.05) == 0.75  # threshold 94
    assert np.isnan(privacy.tpr_at_fpr(members, nonmembers, 0.001))  # 100 non-members cannot measure 0.1 %


def test_attack_report_gives_the_auc_with_a_bootstrap_interval_that_narrows_with_more_examples():
    rng = np.random.default_rng(3)
    small = privacy.attack_report(rng.normal(0.3, 1, 60), rng.normal(0, 1, 60))
    large = privacy.attack_report(rng.normal(0.3, 1, 2000), rng.normal(0, 1, 2000))
    for report in (small, large):
        assert report["auc_ci_low"] < report["auc"] < report["auc_ci_high"]
    assert large["auc_ci_high"] - large["auc_ci_low"] < (small["auc_ci_high"] - small["auc_ci_low"]) / 3
    assert 0.55 < large["auc_ci_low"] and large["auc_ci_high"] < 0.62  # the true AUC: Phi(0.3 / sqrt 2) = 0.584
    assert np.isnan(small["tpr_at_0.01_fpr"]) and not np.isnan(large["tpr_at_0.001_fpr"])
    # chance: members and non-members alike; the interval holds 0.5
    chance = privacy.attack_report(rng.normal(0, 1, 124), rng.normal(0, 1, 124))
    assert chance["auc_ci_low"] < 0.5 < chance["auc_ci_high"]


def test_membership_audit_runs_on_a_finished_run():
    config = ExperimentConfig(dataset="digits", model="logreg", num_clients=4, clients_per_round=4, rounds=2,
                              test_fraction=0.5)
    history = run_experiment(config, progress=False)
    result = privacy.audit_membership(config, history, reference_epochs=2)
    assert 0.0 <= result["loss_auc"] <= 1.0 and 0.0 <= result["calibrated_auc"] <= 1.0
    assert result["loss_auc_ci_low"] <= result["loss_auc"] <= result["loss_auc_ci_high"]
    assert result["num_members"] == result["num_nonmembers"] == 449
    columns = privacy.audit_columns(result)
    assert {"attack_auc", "attack_auc_ci_low", "attack_tpr_at_0.01_fpr", "calibrated_attack_auc", "members",
            "nonmembers"} <= set(columns)


def test_the_audits_of_runs_at_one_seed_train_one_reference_model_and_score_as_if_each_trained_its_own(monkeypatch):
    config = ExperimentConfig(dataset="digits", model="logreg", num_clients=4, clients_per_round=4, rounds=2,
                              test_fraction=0.5)
    runs = [(c, run_experiment(c, progress=False)) for c in (config, config.replace(client_lr=0.05))]
    privacy._REFERENCE_MODELS.clear()
    fits = []
    train = privacy.train_keras
    monkeypatch.setattr(privacy, "train_keras", lambda *a, **k: (fits.append(1), train(*a, **k))[1])
    shared = [privacy.audit_membership(c, h, reference_epochs=2) for c, h in runs]
    assert len(fits) == 1  # the second run's audit took the first one's reference model
    alone = []
    for c, h in runs:  # each audit with a reference model trained for it alone
        privacy._REFERENCE_MODELS.clear()
        alone.append(privacy.audit_membership(c, h, reference_epochs=2))
    assert len(fits) == 3
    np.testing.assert_equal(shared, alone)  # to the bit (NaN where a rate is undefined in both)
    privacy.audit_membership(config, runs[0][1], reference_epochs=2, seed=1)  # another seed: another model
    privacy.audit_membership(config, runs[0][1], reference_epochs=3)  # other epochs: another model
    other_data = config.replace(test_fraction=0.4)  # other held-out examples: another model
    privacy.audit_membership(other_data, run_experiment(other_data, progress=False), reference_epochs=2)
    assert len(fits) == 6


def test_privacy_cli():
    out = subprocess.run([sys.executable, "-m", "fedlab", "privacy", "--noise-multiplier", "1.1",
                          "--clients-per-round", "5", "--num-clients", "100", "--rounds", "200", "--delta", "1e-5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    value = float(out.stdout.strip().split("=")[1])
    assert out.stdout.startswith("epsilon=") and value == pytest.approx(direct_epsilon(1.1, 0.05, 200, 1e-5, "rdp"),
                                                                        rel=1e-5)
    inverse = subprocess.run([sys.executable, "-m", "fedlab", "privacy", "--target-epsilon", f"{value}",
                              "--clients-per-round", "5", "--num-clients", "100", "--rounds", "200", "--delta",
                              "1e-5"], capture_output=True, text=True, timeout=120)
    assert inverse.stdout.startswith("noise_multiplier=")
    assert float(inverse.stdout.strip().split("=")[1]) == pytest.approx(1.1, rel=1e-3)
    bad = subprocess.run([sys.executable, "-m", "fedlab", "privacy", "--noise-multiplier", "1", "--clients-per-round",
                          "50", "--num-clients", "20", "--rounds", "3", "--delta", "1e-5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--clients-per-round" in bad.stderr


def _live_workers() -> list[int]:
    from fedlab.core.runtime import _children

    return [pid for pid, cmd in _children() if cmd.endswith("worker_binary")
            and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")]


def test_a_dp_run_leaves_the_worker_to_the_next_until_it_holds_more_than_the_limit(monkeypatch):
    """TFF's worker grows on the DP path; fedlab stops it after a run (DP or not) only once it holds more than
    FEDLAB_WORKER_MEMORY_MB (0: after every run), and TFF starts a fresh one on the next call."""
    from fedlab.core.runtime import stop_large_local_workers

    config = ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=3, rounds=2, dp="fixed",
                              noise_multiplier=0.5, delta=1e-3)
    monkeypatch.delenv("FEDLAB_WORKER_MEMORY_MB", raising=False)
    stop_large_local_workers(0)  # an earlier test's workers (a secure sum's runtime has its own)
    run_experiment(config, progress=False)
    kept = _live_workers()
    assert len(kept) == 1  # well under the default 2000 MB: left for the next run
    run_experiment(config.replace(seed=1), progress=False)
    assert _live_workers() == kept  # and that run was served by it
    monkeypatch.setenv("FEDLAB_WORKER_MEMORY_MB", "0")
    run_experiment(config.replace(seed=2), progress=False)
    assert not _live_workers()
    again = run_experiment(config.replace(seed=3), progress=False)  # a new worker serves the next run
    assert not _live_workers()
    plain = run_experiment(config.replace(dp="none", noise_multiplier=0.0), progress=False)
    assert not _live_workers()  # a run without DP is held to the limit too
    assert len(again) == 2 and len(plain) == 2


def test_the_worker_is_not_stopped_while_another_run_of_the_process_uses_it(monkeypatch):
    """A panel's run in another thread may be using TFF's worker when a run ends: the worker is stopped only when
    the last run going ends."""
    from fedlab.experiment import runner

    monkeypatch.setenv("FEDLAB_WORKER_MEMORY_MB", "0")
    config = ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=3, rounds=1, dp="fixed",
                              noise_multiplier=0.5, delta=1e-3, seed=5)
    runner.stop_large_local_workers(0)  # an earlier test's workers
    runner._runs_started()  # another run, going
    try:
        run_experiment(config, progress=False)
        assert len(_live_workers()) == 1
    finally:
        runner._run_ended(0.0)  # it ends: the last one
    assert not _live_workers()


def test_a_bad_worker_memory_limit_stops_a_run_before_it_trains(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDLAB_WORKER_MEMORY_MB", "lots")
    rounds = []
    config = ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=3, rounds=1, seed=6)
    with pytest.raises(ValueError, match="^FEDLAB_WORKER_MEMORY_MB: "):
        run_experiment(config, progress=False, results_cache=tmp_path, callback=lambda row, _: rounds.append(row))
    assert not rounds and not any(tmp_path.iterdir())


@pytest.mark.parametrize("raw", ["-1", "lots", "nan", "inf"])
def test_a_bad_worker_memory_limit_is_refused_in_one_line(monkeypatch, raw):
    from fedlab.core.runtime import worker_memory_limit_mb

    monkeypatch.setenv("FEDLAB_WORKER_MEMORY_MB", raw)
    with pytest.raises(ValueError, match=r"^FEDLAB_WORKER_MEMORY_MB: must be a number of megabytes >= 0") as err:
        worker_memory_limit_mb()
    assert "\n" not in str(err.value)


def test_audit_summary_by_hand():
    import pandas as pd

    import fedlab as fl

    # two seeds of one setting; the calibrated attack is 0.02 above the loss attack on seed 0 and 0.04 on seed 1
    runs = pd.DataFrame({"clients_per_round": 5, "noise_multiplier": 1.0, "seed": [0, 1], "epsilon": 4.4,
                         "attack_auc": [0.50, 0.56], "attack_tpr_at_0.01_fpr": [0.01, 0.03],
                         "attack_tpr_at_0.001_fpr": [np.nan, np.nan], "calibrated_attack_auc": [0.52, 0.60],
                         "calibrated_attack_tpr_at_0.01_fpr": [0.02, 0.02],
                         "calibrated_attack_tpr_at_0.001_fpr": [np.nan, np.nan], "members": [500, 500],
                         "nonmembers": [500, 498]})
    audit = privacy.audit_summary(runs)
    assert len(audit) == 2 * 3 and set(audit.method) == {"loss threshold", "calibrated"}
    row = audit[(audit.method == "loss threshold") & (audit.metric == "auc")].iloc[0]
    half = 12.706204736174698 * 0.06 / 2  # t(0.975, 1 df) * sd (0.06 / sqrt 2) / sqrt 2
    assert (row["mean"], row.ci_low, row.ci_high) == pytest.approx((0.53, 0.53 - half, 0.53 + half))
    assert (row.n, row.seeds, row.members, row.nonmembers, row.epsilon) == (2, 2, 500, 498, 4.4)
    calibrated = audit[(audit.method == "calibrated") & (audit.metric == "auc")].iloc[0]
    assert (calibrated["diff"], calibrated.n_pairs) == (pytest.approx(0.03), 2)  # (0.02 + 0.04) / 2, paired
    assert calibrated.diff_ci_low == pytest.approx(0.03 - 12.706204736174698 * 0.01)
    tpr = audit[(audit.method == "calibrated") & (audit.metric == "tpr_at_0.001_fpr")].iloc[0]
    assert tpr.n == 0 and np.isnan(tpr["mean"])  # 500 non-members cannot measure 0.1 %
    assert fl.quote(audit[audit.metric == "auc"], "calibrated", difference=True).startswith("+0.030")


def test_audit_summary_refuses_a_table_without_a_column_it_needs():
    import pandas as pd

    runs = pd.DataFrame({"clients_per_round": 5, "noise_multiplier": 1.0, "seed": [0, 1], "epsilon": 4.4,
                         "attack_auc": [0.50, 0.56], "attack_tpr_at_0.01_fpr": [0.01, 0.03],
                         "attack_tpr_at_0.001_fpr": [np.nan, np.nan], "members": 500, "nonmembers": 500})
    assert set(privacy.audit_summary(runs).method) == {"loss threshold"}  # one attack: nothing to pair with
    for column in ("attack_tpr_at_0.001_fpr", "members", "epsilon", "seed", "noise_multiplier"):
        with pytest.raises(ValueError, match=f"^table: has no column '{column}'; an audit summary needs ") as info:
            privacy.audit_summary(runs.drop(columns=column))
        assert len(str(info.value).splitlines()) == 1
    # the calibrated attack with one of its measures only: refused, not summarized without the others
    with pytest.raises(ValueError, match="^table: has no column 'calibrated_attack_tpr_at_0.01_fpr'; "):
        privacy.audit_summary(runs.assign(calibrated_attack_auc=[0.52, 0.60]))
    with pytest.raises(ValueError, match="^table: has no audit columns"):
        privacy.audit_summary(runs.drop(columns=[c for c in runs if c.startswith("attack_")]))


@pytest.mark.slow
def test_dp_fedprox_without_noise_or_clipping_is_fedprox_weighing_clients_alike():
    # clients of unequal sizes, every client every round (q = 1), a clip no update reaches, no noise: the DP mean
    # is sum / K, FedProx's uniform mean, not its examples-weighted one
    base = ExperimentConfig(dataset="digits", partition="quantity", num_clients=4, clients_per_round=4, rounds=3,
                            algorithm="fedprox", mu=0.1, batch_size=16)
    private = run_experiment(base.replace(dp="fixed", noise_multiplier=0.0, clip_norm=1e6), progress=False)
    uniform = run_experiment(base.replace(client_weighting="uniform"), progress=False)
    weighted = run_experiment(base, progress=False)
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(private[column], uniform[column], rtol=0, atol=1e-6, err_msg=column)
    assert not np.allclose(private.eval_loss, weighted.eval_loss, rtol=0, atol=1e-6)  # the weighting shows
    # the noise reaches the model, and the accounting is the Gaussian mechanism's on the clipped sum
    noisy = base.replace(dp="fixed", noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    fedprox = run_experiment(noisy, progress=False)
    assert not np.allclose(fedprox.eval_loss, run_experiment(noisy.replace(noise_multiplier=0.0),
                                                             progress=False).eval_loss)
    assert fedprox.epsilon.iloc[-1] == pytest.approx(accounting.epsilon(1.0, 1.0, 3, 1e-5))


@pytest.mark.slow
def test_dp_on_a_secure_sum_adds_the_noise_to_the_sum_and_accounts_for_its_rounding():
    # every client every round (q = 1), a clip no update reaches, no noise: DP on TFF's 16-bit secure sum is the
    # secure mean (sum / K); with noise it moves the model; epsilon uses z relative to the rounded sensitivity
    base = ExperimentConfig(dataset="digits", model="2nn", num_clients=4, clients_per_round=4, rounds=2,
                            local_steps=3, batch_size=16, secure_aggregation=True, quantization_bits=16,
                            clip_norm=10.0)
    secure = run_experiment(base, progress=False)
    private = run_experiment(base.replace(dp="fixed", noise_multiplier=0.0), progress=False)
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(private[column], secure[column], rtol=0, atol=1e-6, err_msg=column)
    noisy = base.replace(dp="fixed", noise_multiplier=1.0, delta=1e-5)
    released = run_experiment(noisy, progress=False)
    assert not np.allclose(released.eval_loss, private.eval_loss)
    # by hand: 64*200+200 + 200*200+200 + 200*10+10 = 55,210 weights; step 10 / (2^15 - 1); z C / (C + sqrt(d) step/2)
    step = 10.0 / (2 ** 15 - 1)
    z = 1.0 * 10.0 / (10.0 + math.sqrt(55210) * step / 2)
    assert released.epsilon.iloc[-1] == pytest.approx(accounting.epsilon(z, 1.0, 2, 1e-5))
    assert released.epsilon.iloc[-1] > accounting.epsilon(1.0, 1.0, 2, 1e-5)  # the rounding costs privacy
    assert privacy.describe(noisy).startswith(f"<b>epsilon = {released.epsilon.iloc[-1]:.3g}</b>")
    fresh = run_experiment(noisy.replace(noise_source="unseeded"), progress=False)  # TFF's own DP factory
    assert fresh.epsilon.iloc[-1] == released.epsilon.iloc[-1]
    assert not np.allclose(fresh.eval_loss, released.eval_loss)
    # Poisson rounds can exceed K: the ring holds all N clients (8 bits + ceil(log2 100) = 15, summed in 16 bits)
    wide = ExperimentConfig(num_clients=100, clients_per_round=10, dp="fixed", noise_multiplier=1.0,
                            secure_aggregation=True, quantization_bits=8)
    assert aggregation.secure_modulus(8, aggregation.cohort_size(wide)) == 2 ** 15
    assert aggregation.bits_per_value_up(wide) == 16
    # at 4 bits the rounding bound (C + sqrt(d) step / 2, step = C / 7) is far above 2C: the 2C bound is used
    assert aggregation.dp_sensitivity(base.replace(dp="fixed", noise_multiplier=1.0, quantization_bits=4),
                                      55210) == 20.0


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["secagg", "secaggplus"])
def test_dp_on_the_secagg_protocol_noises_the_unmasked_sum_as_on_tffs_secure_sum(protocol):
    # a Poisson round of 3 clients at K = 4 (q = 2/3), a clip no update reaches: without noise, DP on the protocol's
    # sum is DP on TFF's secure sum (the same clipping and 16-bit rounding, sum / the expected K, not / 3); with
    # noise, the server's draw of std z C is added to the unmasked sum and divided by K, reproducibly, and epsilon
    # is the secure sum's (same rounding)
    base = ExperimentConfig(dataset="digits", model="2nn", num_clients=6, clients_per_round=4, rounds=1,
                            local_steps=3, batch_size=16, secure_aggregation=True, quantization_bits=16,
                            clip_norm=10.0, dp="fixed", noise_multiplier=0.0, delta=1e-5, seed=0)
    on_sum = run_experiment(base, progress=False)
    clean = run_experiment(base.replace(secure_protocol=protocol), progress=False)
    assert list(clean.clients_this_round) == [3]  # fewer than K: dividing by the clients included would differ
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(clean[column], on_sum[column], rtol=0, atol=1e-6, err_msg=column)
    for a, b in zip(final_weights(clean), final_weights(on_sum)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    noisy = base.replace(secure_protocol=protocol, noise_multiplier=1.0)
    released = run_experiment(noisy, progress=False)
    # FedAvg's server step is minus the mean update (TFF's update is the client's start minus its end; server
    # learning rate 1): the model moved by exactly minus the noise / K
    moved = np.concatenate([(a - b).ravel() for a, b in zip(final_weights(released), final_weights(clean))])
    assert moved.std() * 4 == pytest.approx(1.0 * 10.0, rel=0.03)  # 55,210 draws of std z C / K
    protocol_sum = aggregation.make_aggregator(noisy)
    assert (protocol_sum.noise_stddev, protocol_sum.denominator, protocol_sum.seeded) == (10.0, 4.0, True)
    drawn = protocol_sum.noise([(moved.size,)], round_seed(noisy.seeds["noise"], 1))[0]
    np.testing.assert_allclose(-moved * 4, drawn, rtol=0, atol=5e-5)  # the round's seeded draw, nothing else
    again = run_experiment(noisy, progress=False)
    for a, b in zip(final_weights(again), final_weights(released)):
        np.testing.assert_array_equal(a, b)
    on_sum_noisy = run_experiment(base.replace(noise_multiplier=1.0), progress=False)
    assert released.epsilon.iloc[-1] == on_sum_noisy.epsilon.iloc[-1] > accounting.epsilon(1.0, 4 / 6, 1, 1e-5)
    fresh = run_experiment(noisy.replace(noise_source="unseeded"), progress=False)
    assert not np.allclose(fresh.eval_loss, released.eval_loss) and fresh.epsilon.iloc[-1] == released.epsilon.iloc[-1]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedavg", "fedper"])  # the fused protocol round; split at the updates
def test_a_round_of_one_client_under_dp_on_the_protocol_is_summed_as_on_tffs_secure_sum(algorithm):
    # Poisson rounds at q = 2/8 bring one client now and then: under central DP its update is summed without the
    # protocol (a sum of one is the update), never dropped, so the rounds are TFF's secure sum's within 1e-6
    config = ExperimentConfig(dataset="digits", model="2nn", algorithm=algorithm, num_clients=8,
                              clients_per_round=2, rounds=8, local_steps=2, dp="fixed", noise_multiplier=0.0,
                              clip_norm=1.0, secure_aggregation=True, quantization_bits=12, seed=3)
    on_sum = run_experiment(config, progress=False)
    protocol = run_experiment(config.replace(secure_protocol="secagg"), progress=False)
    lone = protocol.clients_this_round == 1
    assert lone.any() and (protocol.secagg_included[lone] == 1).all() and (protocol.secagg_aborted[lone] == 0).all()
    np.testing.assert_allclose(protocol.eval_loss, on_sum.eval_loss, rtol=0, atol=1e-6)
    noisy = run_experiment(config.replace(secure_protocol="secagg", noise_multiplier=1.0), progress=False)
    assert np.isfinite(noisy.eval_loss).all() and all(np.isfinite(w).all() for w in final_weights(noisy))


@pytest.mark.slow
@pytest.mark.parametrize("seed, sampled", [(3, 0), (9, 1)])  # round 1 samples nobody; one client
def test_an_empty_or_one_client_round_under_dp_on_the_protocol_releases_exactly_the_noise_over_k(seed, sampled):
    # the accounting's Poisson-sampled Gaussian releases (sum + noise) / K whatever the round's size: an empty
    # round moves the model by the noise alone, a round of one by its update plus the noise
    clean = ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=2, rounds=1, dp="fixed",
                             noise_multiplier=0.0, clip_norm=1.0, secure_aggregation=True, secure_protocol="secagg",
                             quantization_bits=12, seed=seed)
    noisy = clean.replace(noise_multiplier=1.0)
    base, released = run_experiment(clean, progress=False), run_experiment(noisy, progress=False)
    assert list(released.clients_this_round) == [sampled]
    moved = np.concatenate([(a - b).ravel() for a, b in zip(final_weights(released), final_weights(base))])
    drawn = aggregation.make_aggregator(noisy).noise([(moved.size,)], round_seed(noisy.seeds["noise"], 1))[0]
    np.testing.assert_allclose(-moved * 2, drawn, rtol=0, atol=5e-5)


@pytest.mark.parametrize("algorithm, changes", [("fedavg", {}), ("fedper", {"model": "2nn"})])
def test_an_empty_round_under_user_dp_on_tffs_aggregator_releases_the_noise_over_k(algorithm, changes):
    # as on the protocol: seed 3 samples nobody in round 1, and the DP aggregator still noises the empty sum (the
    # accounting's Poisson-sampled Gaussian releases it): every coordinate moves by N(0, z C / K), here 1 x 1 / 2
    clean = ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=2, rounds=1, dp="fixed",
                             noise_multiplier=0.0, clip_norm=1.0, seed=3, algorithm=algorithm, **changes)
    noisy = clean.replace(noise_multiplier=1.0)
    base, released = run_experiment(clean, progress=False), run_experiment(noisy, progress=False)
    assert list(released.clients_this_round) == [0]
    moved = np.concatenate([(a - b).ravel() for a, b in zip(final_weights(released), final_weights(base))])
    assert np.all(moved != 0)  # every value of the global model takes its noise
    # (over 650 or more values: 0.12 and 0.08 are four standard errors; without the noise nothing moves)
    assert moved.size > 600 and np.std(moved) == pytest.approx(0.5, rel=0.12) and abs(np.mean(moved)) < 0.08


@pytest.mark.parametrize("algorithm, changes", [("fedavg", {}), ("fedavg", {"quantization_bits": 8}),
                                                ("fedper", {"model": "2nn"})])
def test_unseeded_adaptive_dp_reports_the_clip_each_round_clips_to(algorithm, changes):
    # TFF's own adaptive factory (unseeded) reports the clip its round moved to, the next round's; the history says
    # the clip the round's updates were clipped to: the first clip in round 1, as the seeded factory reports it
    config = ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=4, rounds=3, dp="adaptive",
                              noise_multiplier=0.5, clip_norm=1.0, noise_source="unseeded", eval_every=1,
                              algorithm=algorithm, **changes)
    for noise_source in ("unseeded", "seeded"):
        clips = run_experiment(config.replace(noise_source=noise_source), progress=False,
                               results_cache=None).clip_norm_this_round.tolist()
        # then it moves (by exp(-0.2 (f - 0.5)), f the noised fraction below it: f = 1/2 exactly has probability 0;
        # a later round may move it back, e.g. by exp(-0.1) then exp(0.1))
        assert clips[0] == 1.0 and clips[1] != 1.0, (noise_source, clips)


def test_an_empty_round_moves_an_adaptive_clip_by_its_noised_count():
    # round 1 samples nobody; TF Privacy's estimate of the fraction below the clip is then (0 - 0.5 x 0 + n) / K +
    # 0.5, n ~ N(0, s^2) with s = 0.05 K at z = 0, and the geometric rule C_2 = C_1 exp(-eta (estimate - gamma)),
    # eta = 0.2, gamma = 0.5, gives |log C_2| = eta |n| / K: not 0 (a skipped round leaves C), within 4 s
    config = ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=2, rounds=2, dp="adaptive",
                              noise_multiplier=0.0, clip_norm=1.0, seed=3, eval_every=1)
    history = run_experiment(config, progress=False)
    assert history.clients_this_round.tolist()[0] == 0
    first, second = history.clip_norm_this_round.tolist()
    assert first == 1.0 and 0 < abs(np.log(second)) <= 0.2 * 4 * (0.05 * 2) / 2
    # a split round (FedPer) reports the empty round's clip too, and moves it by its noised count; unseeded (TFF's
    # own factory, whose measurement is the clip it moved to), the empty round's clip is the first clip as well
    for noise_source in ("seeded", "unseeded"):
        fedper = run_experiment(config.replace(algorithm="fedper", model="2nn", noise_source=noise_source),
                                progress=False, results_cache=None)
        first, second = fedper.clip_norm_this_round.tolist()
        assert first == 1.0 and 0 < abs(np.log(second)) <= 0.2 * 4 * (0.05 * 2) / 2, (noise_source, first, second)


def test_an_attack_adapting_to_the_cohort_is_told_the_expected_k_under_user_dp():
    # "A little is enough" scales its shift with the round's clients: under user-level DP one honest user would
    # then move every attacker's update; it is told the public expected K instead
    from fedlab.experiment.runner import _round_inputs

    config = ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=5, attack="alie",
                              attacker_fraction=0.2)
    chosen = [1, 2, 3]
    assert _round_inputs(("attack_clients",), config, 1, chosen, chosen, set())["attack_clients"] == 3
    private = config.replace(dp="fixed", noise_multiplier=1.0)
    assert _round_inputs(("attack_clients",), private, 1, chosen, chosen, set())["attack_clients"] == 5


def test_pld_is_checked_before_training_at_the_noise_over_selection_leaves():
    # z = 0.2 at q' = 2K/N = 0.2 fits PLD's grid for 1,000 rounds (the config's own check); displacement doubles
    # the sensitivity, so the run accounts at z = 0.1, which does not: refused before any round
    config = ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=2, rounds=1000, dp="fixed",
                              noise_multiplier=0.2, over_selection=2.0, accountant="pld")
    with pytest.raises(ConfigError) as err:
        run_experiment(config, progress=False)
    assert err.value.field == "accountant" and "over-selection" in err.value.message


def test_the_protocols_central_noise_is_seeded_by_the_round_and_fresh_when_unseeded():
    dp = ProtocolSum("secagg", 8, 2.0, 10, noise_stddev=3.0, denominator=5.0)
    shapes = [(300, 100), (100,)]
    first, second = dp.noise(shapes, 11), dp.noise(shapes, 12)
    assert [a.shape for a in first] == shapes and all(a.dtype == np.float32 for a in first)
    np.testing.assert_array_equal(first[0], dp.noise(shapes, 11)[0])
    assert not np.array_equal(first[0], second[0])
    assert np.concatenate([a.ravel() for a in first]).std() == pytest.approx(3.0, rel=0.02)
    assert dp.count(7) == 5.0
    with pytest.raises(ValueError, match="noise_seed"):
        dp.noise(shapes, None)  # a fixed default would draw the same noise every round
    unseeded = dataclasses.replace(dp, seeded=False)
    assert not np.array_equal(unseeded.noise(shapes, 11)[0], unseeded.noise(shapes, 11)[0])
    plain = ProtocolSum("secagg", 8, 2.0, 10)  # no central DP: no noise, the clients included
    assert not any(a.any() for a in plain.noise(shapes, 11)) and plain.count(7) == 7.0


def test_pld_refuses_before_training_what_the_rounded_secure_sum_leaves_it():
    # z = 0.2 fits PLD's grid for 1,000 rounds at q = 0.1 (its least is 0.15): the config is accepted; 4-bit rounding
    # doubles the sensitivity (2C), so the run accounts at z = 0.1, which does not fit: refused before any round
    config = ExperimentConfig(dataset="digits", model="2nn", num_clients=20, clients_per_round=2, rounds=1000,
                              dp="fixed", noise_multiplier=0.2, secure_aggregation=True, quantization_bits=4,
                              accountant="pld")
    with pytest.raises(ConfigError) as err:
        run_experiment(config, progress=False)
    assert err.value.field == "accountant" and "sensitivity (0.1: a secure sum" in err.value.message


@pytest.mark.parametrize("changes, field", [
    (dict(dp="fixed", secure_aggregation=True, secure_protocol="ckks"), "secure_protocol"),
    (dict(dp="adaptive", secure_aggregation=True, secure_protocol="secagg", quantization_bits=8,
          dropout_rate=0.1), "dropout_rate"),
    (dict(dp="fixed", secure_aggregation=True, secure_protocol="secagg", quantization_bits=8, over_selection=1.5),
     "over_selection"),
    (dict(dp="fixed", secure_aggregation=True, secure_protocol="secaggplus", quantization_bits=8,
          dropout_rate=0.1), "dropout_rate"),
    (dict(dp="fixed", secure_aggregation=True, secure_protocol="secagg", quantization_bits=8,
          straggler_policy="drop", round_deadline=5.0), "straggler_policy"),
])
def test_dp_with_what_it_cannot_stack_on_is_refused_in_one_line(changes, field):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(**{"noise_multiplier": 1.0, **changes})
    assert err.value.field == field and "\n" not in str(err.value)


def _record_sum(values, bits):
    """Each value through DP's compressed record sum alone: what the client sends, as the server decodes it."""
    from fedlab.aggregators.seeded import quantizing_sum

    return [_aggregate(quantizing_sum(bits), [v]) for v in values]


def test_dp_with_compression_quantises_the_clipped_updates_within_the_clip_and_noises_their_sum():
    # 2 bits: 4 values per tensor, between its min and max; norms below the clip C = 1, so clipping changes nothing
    rng = np.random.default_rng(3)
    values = [(v / np.linalg.norm(v) * s).astype(np.float32) for v, s in zip(rng.normal(size=(3, 400)),
                                                                                [0.9, 0.5, 0.99])]
    sent = _record_sum(values, 2)
    for v, q in zip(values, sent):
        lo, hi = v.min(), v.max()
        # a 2-bit code times the scale that keeps it no longer than v: q / s is on the grid lo + k (hi - lo) / 3
        grid = lo + np.arange(4) * (hi - lo) / 3
        scale = min(1.0, np.linalg.norm(v) / np.linalg.norm(_aggregate_unscaled(v)))
        np.testing.assert_allclose(np.min(np.abs(q[:, None] / scale - grid[None, :]), axis=1), 0, atol=2e-6)
        assert np.linalg.norm(q) <= np.linalg.norm(v) * (1 + 1e-6) <= 1.0  # within the clip: sensitivity C
        assert np.abs(q / scale - v).max() <= (hi - lo) / 3 + 1e-6  # each coordinate rounded to a neighbour
    # many random vectors: stochastic rounding often lengthens one; the scale never lets it out
    for v in rng.normal(size=(15, 30)).astype(np.float32) * 0.05:
        assert np.linalg.norm(_record_sum([v], 1)[0]) <= np.linalg.norm(v) * (1 + 1e-6)
    # DP on top, no noise: the mean is the sum of what the clients sent over K (K = 3 here)
    factory = aggregation.dp_aggregator(mode="fixed", noise_multiplier=0.0, clients_per_round=3, clip_norm=1.0,
                                        record_sum=aggregation.compressed_record_sum(
                                            aggregation.sum_settings(ExperimentConfig(quantization_bits=2))))
    np.testing.assert_allclose(_aggregate(factory, values), np.sum(sent, axis=0) / 3, atol=1e-6)
    two_bits = aggregation.sum_settings(ExperimentConfig(quantization_bits=2))
    adaptive = aggregation.dp_aggregator(mode="adaptive", noise_multiplier=0.0, clients_per_round=3, clip_norm=1.0,
                                         record_sum=aggregation.compressed_record_sum(two_bits))  # first clip: C
    np.testing.assert_allclose(_aggregate(adaptive, values), np.sum(sent, axis=0) / 3, atol=1e-6)
    # with noise z = 2 on zero updates: the released sum is the noise, of std z C (20,000 draws)
    dim = 20000
    zeros = [np.zeros(dim, np.float32)] * 4
    noisy = aggregation.dp_aggregator(mode="fixed", noise_multiplier=2.0, clients_per_round=4, clip_norm=0.5,
                                      record_sum=aggregation.compressed_record_sum(
                                          aggregation.sum_settings(ExperimentConfig(quantization_bits=8))))
    assert (_aggregate(noisy, zeros) * 4).std() == pytest.approx(2.0 * 0.5, rel=0.03)


def _aggregate_unscaled(v):
    """``v`` through the same seeded 2-bit rounding, before the scale (a weighted mean of one client)."""
    from fedlab.core.runtime import tff
    from fedlab.aggregators.seeded import _stochastic_round
    from fedlab.core.stateless_keys import fold_key, update_digest
    import tensorflow as tf

    flat = [tf.constant(v)]
    key = fold_key(fold_key(tf.constant([0x5EC, 2], tf.int64), update_digest(flat)), 0)
    del tff
    return _stochastic_round(flat[0], 3.0, key).numpy()


@pytest.mark.slow
def test_dp_with_compression_runs_its_accounting_and_bytes_as_dp_alone_and_repeats():
    base = ExperimentConfig(dataset="digits", model="logreg", num_clients=10, clients_per_round=3, rounds=2,
                            local_epochs=1, batch_size=10, dp="fixed", noise_multiplier=0.5, clip_norm=1.0,
                            delta=1e-5)
    compressed = base.replace(quantization_bits=8)
    plain, first, again = (run_experiment(c, progress=False) for c in (base, compressed, compressed))
    assert first[["eval_loss", "eval_accuracy"]].equals(again[["eval_loss", "eval_accuracy"]])  # seeded
    assert not np.allclose(first.eval_loss, plain.eval_loss)  # the rounding reaches the model
    assert first.epsilon.tolist() == plain.epsilon.tolist()  # the clip still bounds every update
    assert aggregation.dp_sensitivity(compressed, 650) == 1.0
    import fedlab as fl

    @fl.register_aggregator("dp_without_record_sum", role="dp")
    def _without(noise_multiplier, clients_per_round, clip_norm, target_quantile=0.5, *, seeded=True):
        return aggregation.dp_fixed(noise_multiplier, clients_per_round, clip_norm, seeded=seeded)

    try:
        with pytest.raises(ConfigError, match="^quantization_bits: must be 0 with dp='dp_without_record_sum'"):
            compressed.replace(dp="dp_without_record_sum")
        with pytest.raises(ConfigError, match="^dp: must be 'fixed', 'adaptive' or a distributed mode with "
                                                  "secure_protocol='secagg'"):
            compressed.replace(dp="dp_without_record_sum", secure_aggregation=True, secure_protocol="secagg")
    finally:
        aggregation.AGGREGATORS._entries.pop("dp_without_record_sum", None)
    # up: 650 weights at 8 bits, a min and a max per tensor (2 tensors), the weight; 32 bits without compression
    assert aggregation.round_bytes(compressed, [640, 10], [], 3)["bytes_up"] == 3 * (650 + 16 + 4)
    assert aggregation.round_bytes(base, [640, 10], [], 3)["bytes_up"] == 3 * (650 * 4 + 4)
    # SCAFFOLD: c down beside the model, its change of c_i up beside the update (float32; at the sum's bits when
    # a sum that hides the updates takes both)
    scaffold = ExperimentConfig(dataset="digits", model="logreg", algorithm="scaffold")
    assert aggregation.round_bytes(scaffold, [640, 10], [], 3) == {"bytes_down": 3 * 4 * 650 * 2,
                                                                     "bytes_up": 3 * (650 * 4 * 2 + 4)}
    assert aggregation.round_bytes(scaffold.replace(quantization_bits=8), [640, 10], [], 3)["bytes_up"] == \
        3 * (650 + 16 + 4 + 650 * 4)
    private = scaffold.replace(dp="fixed", noise_multiplier=1.0, local_steps=5)
    assert aggregation.round_bytes(private, [640, 10], [], 3) == {"bytes_down": 3 * 4 * 650 * 2,
                                                                    "bytes_up": 3 * (650 * 2 * 4 + 4)}
    for adaptive in (compressed.replace(dp="adaptive"), compressed.replace(dp="adaptive", noise_source="unseeded"),
                     compressed.replace(noise_source="unseeded")):
        history = run_experiment(adaptive, progress=False)
        assert np.isfinite(history.eval_loss).all() and history.epsilon.iloc[-1] > 0

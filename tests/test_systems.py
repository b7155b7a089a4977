"""Systems heterogeneity: the simulated clock and the round policies against round times computed by hand,
seeded selection, device tables, FedNova against NumPy, and runs that record the clock."""

import collections

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.rounds.array_training import local_steps, with_tau_eff
from fedlab.experiment.sampling import Scheduler, sample_clients, work_of
from fedlab.systems.systems import Devices, Work, client_seconds, devices_for, schedule_round, step_sizes

# Two devices. Model 1 MB down, 0.5 MB up; 200 examples of work (20 steps of 10).
# client 0: down 8e6 bit / 8 Mbit/s = 1 s, compute 200 / 100 = 2 s, up 4e6 / 2e6 = 2 s -> 5 s
# client 1: down 8e6 / 4e6 = 2 s, compute 200 / 50 = 4 s, up 4e6 / 1e6 = 4 s -> 10 s
TWO = Devices(speed=np.array([100.0, 50.0]), down_mbps=np.array([8.0, 4.0]), up_mbps=np.array([2.0, 1.0]),
              availability=np.array([1.0, 1.0]))
WORK = [Work(np.full(20, 10)), Work(np.full(20, 10))]
ROUND = dict(bytes_down=1e6, bytes_up=0.5e6)


def schedule(policy="wait", deadline=None, keep=2, offline=(False, False), selected=(0, 1)):
    return schedule_round(TWO, list(selected), WORK, keep=keep, policy=policy, deadline=deadline, offline=offline,
                          **ROUND)


def test_client_seconds_by_hand():
    down, compute, up = client_seconds(TWO, [0, 1], [200, 200], 1e6, 0.5e6)
    np.testing.assert_allclose(down, [1.0, 2.0])
    np.testing.assert_allclose(compute, [2.0, 4.0])
    np.testing.assert_allclose(up, [2.0, 4.0])


def test_wait_lasts_as_long_as_the_slowest_client():
    s = schedule("wait")
    assert s.round_seconds == 10.0 and list(s.completed) == [0, 1] and s.dropped == 0
    assert s.steps == {0: 20, 1: 20}


def test_drop_keeps_the_clients_done_by_the_deadline_and_waits_until_it():
    s = schedule("drop", deadline=6.0)
    assert list(s.completed) == [0] and s.dropped == 1 and s.round_seconds == 6.0
    everyone = schedule("drop", deadline=12.0)  # all done before the deadline: the round ends with the last
    assert list(everyone.completed) == [0, 1] and everyone.round_seconds == 10.0


def test_partial_sends_the_steps_done_before_the_upload():
    # client 1 at deadline 8: 8 - 2 (down) - 4 (up) = 2 s of compute = 100 examples = 10 steps of 10
    s = schedule("partial", deadline=8.0)
    assert list(s.completed) == [0, 1] and s.steps == {0: 20, 1: 10} and s.round_seconds == 8.0
    # deadline 6: no time left to compute before the upload: dropped
    s = schedule("partial", deadline=6.0)
    assert list(s.completed) == [0] and s.steps == {0: 20} and s.round_seconds == 6.0
    # a partial step is not sent: 8.5 s leaves 125 examples = 12 whole steps
    assert schedule("partial", deadline=8.5).steps[1] == 12


def test_over_selection_keeps_the_first_to_finish():
    s = schedule("wait", keep=1)
    assert list(s.completed) == [0] and s.round_seconds == 5.0 and s.dropped == 1


def test_a_client_that_goes_offline_is_dropped_at_no_cost():
    s = schedule("wait", offline=(True, False))
    assert list(s.completed) == [1] and s.round_seconds == 10.0 and s.dropped == 1
    s = schedule("wait", offline=(False, True))
    assert list(s.completed) == [0] and s.round_seconds == 5.0
    nobody = schedule("drop", deadline=3.0)
    assert len(nobody.completed) == 0 and nobody.round_seconds == 3.0
    # short of the quota, a round ends when every client still online has reported, before the deadline
    for policy in ("drop", "partial"):
        early = schedule(policy, deadline=12.0, offline=(False, True))
        assert list(early.completed) == [0] and early.round_seconds == 5.0
    assert schedule("wait", offline=(True, True)).round_seconds == 0.0


def test_equal_devices_share_the_work_under_over_selection():
    """Ties in finishing time are broken at random (seeded), not by client id."""
    config = fl.ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=5, rounds=200,
                                 over_selection=1.6)
    used = Scheduler(config, [50] * 20, ([640, 10], [])).participation().sum(axis=0)
    assert used.min() > 0.5 * used.mean(), used


def test_step_sizes_and_work_follow_the_client_plan():
    np.testing.assert_array_equal(step_sizes(25, 10, 2), [10, 10, 5, 10, 10, 5])
    config = fl.ExperimentConfig(dataset="digits", num_clients=4, clients_per_round=2, local_epochs=2, batch_size=10)
    data = fl.dataset_for(config)
    from fedlab.experiment.clients import client_inputs, client_plan

    for client, part in enumerate(fl.partition_for(config, data)):
        got = client_inputs(data.x_train[part], data.y_train[part], config, 3, client)
        assert len(work_of(len(part), config, 3).steps) == local_steps(got)
        assert work_of(len(part), config, 3).examples == 2 * len(part)
    carried = config.replace(local_steps=7, carry_epochs=True, batch_size=16)
    n = len(fl.partition_for(carried, data)[0])
    for r in (1, 2, 5):
        orders, batch, steps, skip = client_plan(n, carried, r, 0)
        per_epoch = -(-n // batch)
        sizes = [min(batch, n - (i % per_epoch) * batch) for i in range(skip, skip + steps)]
        np.testing.assert_array_equal(work_of(n, carried, r).steps, sizes)


def test_uniform_profile_selects_what_the_sampler_always_did():
    config = fl.ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=5, rounds=6, seed=3)
    scheduler = Scheduler(config, [50] * 20, ([640, 10], []))
    for r in range(1, 7):
        s = scheduler.round(r)
        np.testing.assert_array_equal(s.completed, sample_clients(config, r))
        np.testing.assert_array_equal(s.selected, s.completed)
    dp = config.replace(dp="fixed", noise_multiplier=0.5)
    for r in range(1, 7):
        np.testing.assert_array_equal(Scheduler(dp, [50] * 20, ([640, 10], [])).round(r).completed,
                                      sample_clients(dp, r))


def test_over_selection_under_dp_asks_at_the_higher_rate_uses_the_first_k_and_accounts_for_displacement():
    from fedlab.protection import accounting

    config = fl.ExperimentConfig(dataset="digits", num_clients=40, clients_per_round=4, rounds=30, seed=2,
                                 dp="fixed", noise_multiplier=1.0, clip_norm=1.0, over_selection=2.0,
                                 device_profile="fedscale", delta=1e-4)
    assert config.sampling_probability == 0.2  # asked at 2K/N
    scheduler = Scheduler(config, [45] * 40, ([640, 10], []))
    asked = [len(scheduler.round(r).selected) for r in range(1, 31)]
    assert np.mean(asked) == pytest.approx(8, rel=0.25)  # Poisson at 0.2 of 40 (of those online)
    for r in range(1, 31):
        s = scheduler.round(r)
        assert len(s.completed) == min(4, len(s.selected))  # the first K to finish (the wait policy)
    # one user can displace another: the sum's sensitivity is 2C, so epsilon is that of z / 2 at q = 0.2
    history = fl.run_experiment(config.replace(rounds=3), progress=False)
    np.testing.assert_allclose(history.epsilon, accounting.epsilon_by_round(0.5, 0.2, 3, 1e-4))
    assert fl.privacy.describe(config.replace(rounds=3)).startswith(f"<b>epsilon = {history.epsilon.iloc[-1]:.3g}")


def test_offline_clients_are_never_selected_and_over_selection_asks_more(tmp_path):
    table = pd.DataFrame({"client": range(10), "examples_per_second": [100.0] * 5 + [10.0] * 5,
                          "down_mbps": 10.0, "up_mbps": 5.0, "availability": [1.0] * 8 + [0.0] * 2})
    table.to_csv(tmp_path / "devices.csv", index=False)
    fl.register_device_table("test_half_slow", tmp_path / "devices.csv", replace=True)
    config = fl.ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=3, rounds=20,
                                 device_profile="test_half_slow", over_selection=2.0)
    scheduler = Scheduler(config, [100] * 10, ([640, 10], []))
    for r in range(1, 21):
        s = scheduler.round(r)
        assert len(s.selected) == 6 and not set(s.selected) & {8, 9}
        assert len(s.completed) == 3
        fast = [c for c in s.selected if c < 5]
        if len(fast) >= 3:  # the fast finish first (which of them: a seeded draw among equals)
            assert set(s.completed) <= set(fast)
        else:
            assert set(fast) <= set(s.completed)
    seeded = [Scheduler(config, [100] * 10, ([640, 10], [])).round(r).selected.tolist() for r in (1, 2)]
    again = [Scheduler(config, [100] * 10, ([640, 10], [])).round(r).selected.tolist() for r in (1, 2)]
    other = [Scheduler(config.replace(sampling_seed=9), [100] * 10, ([640, 10], [])).round(r).selected.tolist()
             for r in (1, 2)]
    assert seeded == again and seeded != other


def test_dropout_rate_drops_about_that_share():
    config = fl.ExperimentConfig(dataset="digits", num_clients=100, clients_per_round=50, rounds=40, dropout_rate=0.3)
    scheduler = Scheduler(config, [20] * 100, ([640, 10], []))
    dropped = sum(scheduler.round(r).dropped for r in range(1, 41))
    assert abs(dropped / (40 * 50) - 0.3) < 0.03


def test_device_table_errors_name_the_column_and_row(tmp_path):
    good = pd.DataFrame({"client": [0, 1], "examples_per_second": [10.0, 20.0], "down_mbps": [1.0, 2.0],
                         "up_mbps": [1.0, 1.0], "availability": [1.0, 0.5]})
    good.to_csv(tmp_path / "good.csv", index=False)
    assert len(fl.devices_from_csv(tmp_path / "good.csv")) == 2
    cases = {
        "examples_per_second": (good.assign(examples_per_second=[10.0, float("nan")]), "row 2"),
        "availability": (good.assign(availability=[1.0, 1.5]), "availability: must be in"),
        "down_mbps": (good.assign(down_mbps=[0.0, 1.0]), "down_mbps: must be > 0"),
        "up_mbps": (good.drop(columns="up_mbps"), "column 'up_mbps' is missing"),
        "client": (good.assign(client=[0, 0]), "'client' must hold 0..1"),
    }
    cases["availability_row"] = (good.assign(availability=[1.0, -0.5]), "client 1")
    for column, (frame, message) in cases.items():
        frame.to_csv(tmp_path / f"{column}.csv", index=False)
        with pytest.raises(ValueError, match=message) as info:
            fl.devices_from_csv(tmp_path / f"{column}.csv")
        assert "\n" not in str(info.value) and column.split("_row")[0] in str(info.value)


def test_a_device_table_is_the_users_and_fixes_the_number_of_clients(tmp_path):
    table = pd.DataFrame({"client": range(3), "examples_per_second": 10.0, "down_mbps": 1.0, "up_mbps": 1.0,
                          "availability": 1.0})
    table.to_csv(tmp_path / "three.csv", index=False)
    fl.register_device_table("test_three", tmp_path / "three.csv")
    fl.register_device_table("test_three", tmp_path / "three.csv")  # a notebook cell run again
    assert not fl.DEVICE_PROFILES.entry("test_three").builtin
    with pytest.raises(fl.ConfigError, match="^num_clients: must be 3 with device_profile 'test_three'"):
        fl.ExperimentConfig(dataset="digits", num_clients=10, device_profile="test_three")
    fl.ExperimentConfig(dataset="digits", num_clients=3, clients_per_round=2, device_profile="test_three")


def test_config_refuses_policies_that_make_no_sense():
    base = dict(dataset="digits")
    for changes, field in [(dict(straggler_policy="drop"), "round_deadline"),
                           (dict(round_deadline=5.0), "round_deadline"),
                           (dict(straggler_policy="late"), "straggler_policy"),
                           (dict(over_selection=0.5), "over_selection"),
                           (dict(over_selection=float("nan")), "over_selection"),
                           (dict(dropout_rate=1.0), "dropout_rate"),
                           (dict(straggler_policy="partial", round_deadline=float("inf")), "round_deadline"),
                           (dict(device_profile="pigeon"), "device_profile")]:
        with pytest.raises(fl.ConfigError, match=f"^{field}"):
            fl.ExperimentConfig(**base, **changes)


def test_profiles_are_drawn_with_the_systems_seed():
    a, b = devices_for("fedscale", 50, 0), devices_for("fedscale", 50, 0)
    np.testing.assert_array_equal(a.speed, b.speed)
    assert not np.array_equal(a.speed, devices_for("fedscale", 50, 1).speed)
    uniform = devices_for("uniform", 5, 0)
    assert len(set(uniform.speed)) == 1 and (uniform.availability == 1).all()


def test_fedscale_profile_follows_its_trace():
    """FedScale's quantiles: 41 ms a sample and 6,075 kbit/s at the median; a training sample costs 3 passes."""
    from fedlab.systems.systems import FEDSCALE_KBPS, FEDSCALE_MS_PER_SAMPLE

    devices = devices_for("fedscale", 20_000, 0)
    ms = 1000 / (3 * devices.speed)
    assert np.median(ms) == pytest.approx(41, rel=0.1)
    assert np.median(devices.down_mbps) == pytest.approx(6.075, rel=0.05)
    assert np.quantile(ms, 0.9) == pytest.approx(175, rel=0.03)
    assert ms.min() >= FEDSCALE_MS_PER_SAMPLE[0] and ms.max() <= FEDSCALE_MS_PER_SAMPLE[-1]
    assert devices.down_mbps.max() <= FEDSCALE_KBPS[-1] / 1000
    np.testing.assert_array_equal(devices.down_mbps, devices.up_mbps)  # FedScale: one bandwidth both ways
    assert abs(np.corrcoef(ms, devices.down_mbps)[0, 1]) < 0.03
    uniform = devices_for("uniform", 3, 0)
    assert uniform.speed[0] == pytest.approx(1000 / (3 * 41)) and uniform.down_mbps[0] == pytest.approx(6.075)


# FedNova against NumPy ------------------------------------------------------------------------------------
from tests.test_algorithms_by_hand import B0, MODEL, W0, XA, XB, YA, YB, grad  # noqa: E402


def nova_inputs(x, y, epochs, steps=-1):
    return collections.OrderedDict(x=x, y=y, orders=np.tile(np.arange(len(x)), (epochs, 1)).astype(np.int64),
                                   batch=np.int64(1), steps=np.int64(steps), skip=np.int64(0),
                                   key=np.zeros(2, np.int64))


def sgd_steps(w, b, x, y, lr, epochs, steps):
    w0, b0 = w, b
    order = np.tile(np.arange(len(x)), epochs)[: steps if steps >= 0 else None]
    for i in order:
        gw, gb = grad(w, b, x[i:i + 1], y[i:i + 1])
        w, b = w - lr * gw, b - lr * gb
    return w - w0, b - b0, len(order)


@pytest.mark.parametrize("b_steps", [-1, 2])
def test_fednova_by_hand_over_two_rounds(b_steps):
    """Client A: 1 example, 3 epochs (tau 3); client B: 3 examples, 2 epochs (tau 6, or 2 when cut short).
    x <- x + tau_eff * sum_i p_i Delta_i / tau_i, p = (1/4, 3/4), tau_eff = sum_i p_i tau_i (Wang et al. eq. 5)."""
    t = fl.core.runtime.tff()
    entry = fl.ALGORITHMS["fednova"]
    process = entry.on_arrays(MODEL, client_lr=0.1, server_lr=1.0, params=entry.make_params())
    state = process.set_model_weights(process.initialize(),
                                      t.learning.models.ModelWeights(trainable=[W0, B0], non_trainable=[]))
    from fedlab.rounds.array_training import with_learning_rates

    state = with_learning_rates(state, 0.1, 1.0)
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    naive_w = w.copy()
    for _ in range(2):
        inputs = with_tau_eff([nova_inputs(XA, YA, 3), nova_inputs(XB, YB, 2, b_steps)], "examples")
        state = process.next(state, inputs).state
        dwa, dba, ta = sgd_steps(w, b, XA, YA, 0.1, 3, -1)
        dwb, dbb, tb = sgd_steps(w, b, XB, YB, 0.1, 2, b_steps)
        p = np.array([1, 3]) / 4
        tau_eff = p[0] * ta + p[1] * tb
        assert float(inputs[0]["tau_eff"]) == pytest.approx(tau_eff)
        naive_w = w + p[0] * dwa + p[1] * dwb
        w = w + tau_eff * (p[0] * dwa / ta + p[1] * dwb / tb)
        b = b + tau_eff * (p[0] * dba / ta + p[1] * dbb / tb)
    got_w, got_b = process.get_model_weights(state).trainable
    np.testing.assert_allclose(np.asarray(got_w), w, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(got_b), b, rtol=2e-5, atol=2e-6)
    assert np.abs(np.asarray(got_w) - naive_w).max() > 1e-3  # not the naive average


def test_fednova_equals_fedavg_when_every_client_takes_the_same_steps():
    base = fl.ExperimentConfig(dataset="digits", num_clients=4, clients_per_round=4, rounds=2, local_steps=3,
                               batch_size=8, client_weighting="dataset")
    avg = fl.run_experiment(base, progress=False)
    nova = fl.run_experiment(base.replace(algorithm="fednova"), progress=False)
    np.testing.assert_allclose(nova["eval_loss"], avg["eval_loss"], rtol=1e-5)


def test_fednova_with_public_steps_by_hand():
    """User-level DP: tau_eff is the public number of steps asked (4), not the clients' mean (2.5); p_i = 1/2.
    x <- x + 1/2 (4 Delta_A / 3 + 4 Delta_B / 2)."""
    t = fl.core.runtime.tff()
    entry = fl.ALGORITHMS["fednova"]
    process = entry.on_arrays(MODEL, client_lr=0.1, server_lr=1.0, params=entry.make_params(),
                              client_weighting="uniform")
    state = process.set_model_weights(process.initialize(),
                                      t.learning.models.ModelWeights(trainable=[W0, B0], non_trainable=[]))
    from fedlab.rounds.array_training import with_learning_rates

    state = with_learning_rates(state, 0.1, 1.0)
    inputs = with_tau_eff([nova_inputs(XA, YA, 3), nova_inputs(XB, YB, 2, 2)], "uniform", public_steps=4)
    assert [float(i["tau_eff"]) for i in inputs] == [4.0, 4.0]
    state = process.next(state, inputs).state
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    dwa, dba, ta = sgd_steps(w, b, XA, YA, 0.1, 3, -1)
    dwb, dbb, tb = sgd_steps(w, b, XB, YB, 0.1, 2, 2)
    assert (ta, tb) == (3, 2)
    got_w, got_b = process.get_model_weights(state).trainable
    np.testing.assert_allclose(np.asarray(got_w), w + 0.5 * (4 * dwa / ta + 4 * dwb / tb), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(got_b), b + 0.5 * (4 * dba / ta + 4 * dbb / tb), rtol=2e-5, atol=2e-6)


DP_NOVA = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=3, local_steps=3,
                              batch_size=8, dp="fixed", noise_multiplier=0.5, clip_norm=1.0)


def test_fednova_under_user_dp_equals_fedavg_when_every_client_takes_its_steps():
    """Every client takes the 3 steps asked: tau_eff / tau_i = 1, so FedNova's round is DP-FedAvg's, noise included."""
    avg = fl.run_experiment(DP_NOVA, progress=False)
    nova = fl.run_experiment(DP_NOVA.replace(algorithm="fednova"), progress=False)
    np.testing.assert_allclose(nova["eval_loss"], avg["eval_loss"], rtol=1e-6)


def test_fednova_under_user_dp_runs_on_a_secure_sum_and_the_protocol():
    """The three stack: user-level DP's noise on the secure sum (TFF's, or SecAgg's) of FedNova's normalised updates."""
    for secure in ({"quantization_bits": 12}, {"quantization_bits": 12, "secure_protocol": "secagg"}):
        config = DP_NOVA.replace(algorithm="fednova", secure_aggregation=True, rounds=2, **secure)
        history = fl.run_experiment(config, progress=False)
        assert np.isfinite(history.eval_loss).all() and len(history) == 2


def test_fednova_under_user_dp_scales_by_the_public_steps_under_partial_work(monkeypatch):
    """Clients cut short by the deadline: tau_eff stays the public local_steps (their mean would be smaller)."""
    import fedlab.experiment.runner as runner

    seen = []

    def recording(inputs, weighting, public_steps=None):
        out = with_tau_eff(inputs, weighting, public_steps)
        seen.append(([local_steps(i) for i in inputs], [float(i["tau_eff"]) for i in out]))
        return out

    monkeypatch.setattr(runner, "with_tau_eff", recording)
    config = DP_NOVA.replace(algorithm="fednova", device_profile="fedscale", straggler_policy="partial",
                             round_deadline=20.0, local_steps=20, rounds=2)
    fl.run_experiment(config, progress=False)
    taus = [tau for steps, _ in seen for tau in steps]
    assert seen and min(taus) < 20  # partial work happened
    assert all(tau_eff == [20.0] * len(steps) for steps, tau_eff in seen)


def test_runs_record_the_clock_and_partial_work_changes_the_numbers(tmp_path):
    table = pd.DataFrame({"client": range(6), "examples_per_second": [400.0, 400, 400, 40, 40, 40],
                          "down_mbps": 100.0, "up_mbps": 100.0, "availability": 1.0})
    table.to_csv(tmp_path / "d.csv", index=False)
    fl.register_device_table("test_three_slow", tmp_path / "d.csv", replace=True)
    base = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=6, rounds=3, local_epochs=2,
                               batch_size=10, device_profile="test_three_slow")
    waited = fl.run_experiment(base, progress=False)
    n = np.array([len(p) for p in fl.partition_for(base)])
    bytes_down = 4 * (64 * 10 + 10)
    bytes_up = (64 * 10 + 10) * 4 + 4
    expected = (bytes_down * 8 / 100e6 + 2 * n / np.array([400, 400, 400, 40, 40, 40]) + bytes_up * 8 / 100e6).max()
    np.testing.assert_allclose(waited["sim_round_seconds"], expected, rtol=1e-9)
    np.testing.assert_allclose(waited["sim_elapsed_seconds"], expected * np.arange(1, 4), rtol=1e-9)
    assert (waited["clients_selected"] == 6).all() and (waited["clients_completed"] == 6).all()
    plain = fl.run_experiment(base.replace(device_profile="uniform"), progress=False)
    np.testing.assert_array_equal(plain["eval_loss"], waited["eval_loss"])  # the clock alone changes no number
    deadline = float(2 * n.max() / 400 + 0.01)
    dropped = fl.run_experiment(base.replace(straggler_policy="drop", round_deadline=deadline), progress=False)
    assert (dropped["clients_completed"] == 3).all() and (dropped["clients_dropped"] == 3).all()
    assert (dropped["sim_round_seconds"] == deadline).all()
    partial = fl.run_experiment(base.replace(straggler_policy="partial", round_deadline=deadline), progress=False)
    assert (partial["clients_completed"] == 6).all()
    assert not np.array_equal(partial["eval_loss"], dropped["eval_loss"])
    table = fl.participation_table(base.replace(straggler_policy="drop", round_deadline=deadline))
    assert list(table["rounds_completed"]) == [3, 3, 3, 0, 0, 0]
    assert list(table["rounds_dropped"]) == [0, 0, 0, 3, 3, 3]

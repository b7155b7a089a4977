"""Asynchronous buffered aggregation (FedBuff): the schedule worked out by hand, a server step against NumPy, the
synchronous special case, seeds, checkpoints, and what is refused."""

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.rounds.array_training import with_learning_rates
from fedlab.systems.asynchronous import plan, staleness_weights
from fedlab.core.runtime import tff
from fedlab.systems.systems import Devices, Work
from fedlab.core.validation import ConfigError

from by_hand import BATCH, X, Y, grad, inputs

# --- the schedule, by hand ----------------------------------------------------------------------------------


def two_devices(speed=(10.0, 4.0)) -> Devices:
    ones = np.ones(len(speed))
    return Devices(np.asarray(speed, float), ones, ones, ones)


def ten_examples(client, number):
    return Work(np.array([5, 5]))


def test_a_two_device_schedule_worked_out_by_hand():
    """Client 0 takes 1 s a job (10 examples at 10/s), client 1 2.5 s (at 4/s); both start at 0 on version 0; a
    buffer of 1. t=1: job 0 (client 0) -> step 1, client 0 starts job 2 on version 1. t=2: job 2 -> step 2 (fresh),
    job 3 starts on version 2. t=2.5: job 1, started on version 0, -> step 3: 2 steps stale. t=3: job 3 -> step 4,
    started on version 2: 1 step stale."""
    p = plan(two_devices(), steps=4, concurrency=2, buffer=1, work=ten_examples, bytes_down=0.0, bytes_up=0.0,
             seed=(0,))
    assert [(j.client, j.number, j.version, j.start, j.finish) for j in p.jobs] == [
        (0, 1, 0, 0.0, 1.0), (1, 1, 0, 0.0, 2.5), (0, 2, 1, 1.0, 2.0), (0, 3, 2, 2.0, 3.0), (1, 2, 3, 2.5, 5.0),
        (0, 4, 4, 3.0, 4.0)]
    assert [(s.version, s.time, s.jobs, s.staleness) for s in p.steps] == [
        (1, 1.0, (0,), (0,)), (2, 2.0, (2,), (0,)), (3, 2.5, (1,), (2,)), (4, 3.0, (3,), (1,))]
    assert [s.started for s in p.steps] == [2, 1, 1, 1]  # jobs started since the step before
    assert all(s.in_flight == 2 for s in p.steps)
    # FedBuff's weighting 1/sqrt(1 + staleness), the constant one 1
    np.testing.assert_allclose(staleness_weights("polynomial", [0, 0, 2, 1]), [1, 1, 3 ** -0.5, 2 ** -0.5])
    np.testing.assert_array_equal(staleness_weights("constant", [0, 2]), [1, 1])
    # what the runner trains after each step: the jobs that start on the version it made
    assert [j.id for j in p.started_on(0)] == [0, 1] and [j.id for j in p.started_on(3)] == [4]
    assert p.pending_after(2) == [1, 3]  # after step 2, jobs 1 (version 0) and 3 (version 2) wait


def test_a_full_buffer_steps_on_every_update_that_arrives_together():
    """Equal devices, concurrency = buffer = 2: both arrive at once, one step takes both, fresh; both restart."""
    p = plan(two_devices((5.0, 5.0)), steps=2, concurrency=2, buffer=2, work=ten_examples, bytes_down=0.0,
             bytes_up=0.0, seed=(1,))
    assert [(s.version, s.time, sorted(s.jobs), s.staleness) for s in p.steps] == [
        (1, 2.0, [0, 1], (0, 0)), (2, 4.0, [2, 3], (0, 0))]
    assert sorted((j.client, j.number, j.version) for j in p.jobs[2:4]) == [(0, 2, 1), (1, 2, 1)]


def test_several_steps_at_one_instant_count_the_steps_between_them():
    """Three equal devices, a buffer of 1: the three reports at t = 2 make three steps at that instant; the second
    takes an update one step old, the third two; then the three restart on version 3."""
    p = plan(two_devices((5.0, 5.0, 5.0)), steps=3, concurrency=3, buffer=1, work=ten_examples, bytes_down=0.0,
             bytes_up=0.0, seed=(2,))
    assert [(s.version, s.time, s.staleness) for s in p.steps] == [(1, 2.0, (0,)), (2, 2.0, (1,)), (3, 2.0, (2,))]
    assert sorted(j for s in p.steps for j in s.jobs) == [0, 1, 2]
    assert [j.version for j in p.jobs[3:]] == [3, 3, 3] and all(s.in_flight == 3 for s in p.steps)


def test_a_longer_schedule_begins_with_the_shorter_one():
    """Planning more steps draws the same first ones (async_steps_within plans ahead, the runner exactly)."""
    devices = Devices(np.array([3.0, 5.0, 7.0, 11.0, 2.0]), np.ones(5), np.ones(5), np.array([1, .5, 1, .2, .9]))
    short, long = (plan(devices, steps=n, concurrency=3, buffer=2, work=ten_examples, bytes_down=0.0, bytes_up=0.0,
                        seed=(9,), dropout_rate=0.2) for n in (5, 40))
    assert long.steps[:5] == short.steps
    assert long.jobs[:len(short.jobs)] == short.jobs


def test_clients_that_are_never_online_never_train():
    devices = Devices(np.full(4, 5.0), np.ones(4), np.ones(4), np.array([1.0, 1.0, 0.0, 0.0]))
    p = plan(devices, steps=10, concurrency=2, buffer=1, work=ten_examples, bytes_down=0.0, bytes_up=0.0, seed=(0,))
    assert {j.client for j in p.jobs} == {0, 1}
    with pytest.raises(ConfigError, match="async_concurrency: must be at most the 2 eligible clients"):
        plan(devices, steps=1, concurrency=3, buffer=1, work=ten_examples, bytes_down=0.0, bytes_up=0.0, seed=(0,))


def test_a_lost_job_frees_its_slot_and_sends_nothing():
    p = plan(two_devices(), steps=6, concurrency=2, buffer=1, work=ten_examples, bytes_down=0.0, bytes_up=0.0,
             seed=(3,), dropout_rate=0.5)
    lost = {j.id for j in p.jobs if j.lost}
    assert lost, "seed 3 should lose a job"
    assert not lost & {j for s in p.steps for j in s.jobs}
    assert sum(s.lost for s in p.steps) <= len(lost)
    assert all(len(s.jobs) == 1 for s in p.steps)


def test_the_schedule_is_a_function_of_its_seed():
    devices = Devices(np.array([3.0, 5.0, 7.0, 11.0]), np.ones(4), np.ones(4), np.array([1.0, 0.5, 1.0, 0.2]))
    a, b, c = (plan(devices, steps=20, concurrency=2, buffer=1, work=ten_examples, bytes_down=1e5, bytes_up=1e5,
                    seed=(s,), dropout_rate=0.1) for s in (4, 4, 5))
    assert a == b and a != c


@pytest.mark.parametrize("kw, field", [
    (dict(concurrency=3, buffer=1), "async_concurrency"), (dict(concurrency=2, buffer=3), "async_buffer")])
def test_the_schedule_refuses_impossible_sizes(kw, field):
    with pytest.raises(ConfigError, match=field):
        plan(two_devices(), steps=1, work=ten_examples, bytes_down=0.0, bytes_up=0.0, seed=(0,), **kw)


# --- a server step against NumPy -------------------------------------------------------------------------


def test_a_server_step_scales_each_update_by_its_staleness_weight():
    """Clients 1 and 2 train from w0 (one epoch, batches of 2); the step takes their updates with staleness
    weights 1 and 1/sqrt(3): w1 = w0 - lr_server * sum_i n_i s_i (w0 - w_i) / sum_i n_i (FedAvg, examples)."""
    from fedlab.rounds.buffered_rounds import BufferedProcess
    from fedlab.rounds.array_training import client_training
    from fedlab.models.models import ModelSpec

    spec = ModelSpec("logreg", num_features=2, num_classes=3)
    model = spec.functional_model()
    training = client_training(model, client_lr=0.1, server_optimizer=tff().learning.optimizers.build_sgdm(1.0))
    process = BufferedProcess(training, tff().aggregators.MeanFactory(), slots=3)
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    state = process.set_model_weights(process.initialize(),
                                      tff().learning.models.ModelWeights(trainable=(w0, b0), non_trainable=()))
    state = process.client_state(with_learning_rates(state, 0.1), 0)
    results = process.train(state, [inputs(1), inputs(2)])
    factors = staleness_weights("polynomial", [0, 2])
    new, _, _ = process.step(state, results, factors)

    def local(i):
        w, b = w0.astype(np.float64), b0.astype(np.float64)
        for j in range(0, len(X[i]), BATCH):
            gw, gb = grad(w, b, X[i][j:j + BATCH], Y[i][j:j + BATCH])
            w, b = w - 0.1 * gw, b - 0.1 * gb
        return w, b

    n = np.array([len(X[1]), len(X[2])], float)
    deltas = [local(i) for i in (1, 2)]
    want_w = w0 + sum(n[k] * factors[k] * (deltas[k][0] - w0) for k in range(2)) / n.sum()
    want_b = b0 + sum(n[k] * factors[k] * (deltas[k][1] - b0) for k in range(2)) / n.sum()
    got = new.global_model_weights.trainable
    np.testing.assert_allclose(got[0], want_w, atol=1e-5)
    np.testing.assert_allclose(got[1], want_b, atol=1e-5)
    # the updates wait in the state (what a checkpoint saves) and come back whole
    held = process.held(process.hold(state, {7: results[0], 9: results[1]}))
    assert sorted(held) == [7, 9]
    np.testing.assert_array_equal(held[9][0][0], results[1][0][0])
    assert held[7][1] == results[0][1]


# --- whole runs -------------------------------------------------------------------------------------------

SYNC = fl.ExperimentConfig(dataset="digits", num_clients=4, clients_per_round=4, rounds=3, local_steps=3,
                           batch_size=10, client_lr=0.05, seed=2)


def test_a_full_buffer_on_equal_devices_is_synchronous_fedavg():
    """concurrency = buffer = every client, equal devices and equal work: every step takes every client's fresh
    update, as a synchronous round with full participation does."""
    sync = fl.run_experiment(SYNC, progress=False)
    buffered = fl.run_experiment(SYNC.replace(async_concurrency=4), progress=False)
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(buffered[column], sync[column], rtol=1e-6, err_msg=column)
    assert (buffered.staleness_max == 0).all() and (buffered.clients_this_round == 4).all()
    np.testing.assert_allclose(buffered.sim_elapsed_seconds, sync.sim_elapsed_seconds)


ASYNC = fl.ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=3, rounds=6, local_epochs=1,
                            batch_size=20, client_lr=0.05, seed=1, device_profile="fedscale", async_concurrency=4,
                            async_buffer=2)


def test_an_asynchronous_run_reports_its_steps_and_repeats_from_its_seeds():
    a = fl.run_experiment(ASYNC, progress=False)
    b = fl.run_experiment(ASYNC, progress=False)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert list(a["round"]) == list(range(1, 7)) and (a.clients_this_round == 2).all()
    assert (a.staleness_max >= 0).all() and (a.staleness_mean <= a.staleness_max).all()
    assert a.staleness_max.max() > 0, "fedscale devices should make some update stale"
    assert np.all(np.diff(a.sim_elapsed_seconds) >= 0) and (a.clients_in_flight == 4).all()
    assert np.isfinite(a.eval_accuracy.iloc[-1])
    c = fl.run_experiment(ASYNC.replace(seed=2), progress=False)
    assert not np.array_equal(a.eval_loss.to_numpy(), c.eval_loss.to_numpy())


def test_a_run_resumed_mid_stream_gives_the_uninterrupted_history(tmp_path):
    """Stopped after step 3 with updates still waiting (started on older versions), resumed from the checkpoint:
    the same history and final model as without the stop."""
    import threading

    from fedlab.experiment.runner import RunStopped

    whole = fl.run_experiment(ASYNC, progress=False)
    stop = threading.Event()
    with pytest.raises(RunStopped):
        fl.run_experiment(ASYNC, progress=False, checkpoint_dir=tmp_path, stop=stop,
                          callback=lambda row, history: stop.set() if row["round"] == 3 else None)
    resumed = fl.run_experiment(ASYNC, checkpoint_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), whole.drop(columns="seconds"))
    for a, b in zip(fl.final_weights(whole), fl.final_weights(resumed)):
        np.testing.assert_array_equal(a, b)
    # a step after the stop took an update started on a version before 3: it waited in the checkpoint
    assert whole.staleness_max.iloc[3:].max() > 0


@pytest.mark.parametrize("changes, field", [
    (dict(async_buffer=2), "async_buffer"),  # without async_concurrency
    (dict(async_concurrency=9), "async_concurrency"),
    (dict(async_concurrency=2, async_buffer=3), "async_buffer"),
    (dict(async_concurrency=2, async_staleness="hinge"), "async_staleness"),
    (dict(async_concurrency=2, algorithm="scaffold"), "algorithm"),
    (dict(async_concurrency=2, algorithm="fednova"), "algorithm"),
    (dict(async_concurrency=2, dp="fixed", noise_multiplier=0.5, clip_norm=1.0), "dp"),
    (dict(async_concurrency=2, dp="example", noise_multiplier=0.5, clip_norm=1.0), "dp"),
    (dict(async_concurrency=2, secure_aggregation=True, secure_protocol="ckks"), "secure_protocol"),
    (dict(async_concurrency=4, exclude_clients=(0, 1, 2, 3, 4)), "async_concurrency"),
    (dict(async_concurrency=2, straggler_policy="drop", round_deadline=10.0), "straggler_policy"),
    (dict(async_concurrency=2, attack="sign_flipping", attacker_fraction=0.25), "attack"),
])
def test_what_cannot_run_asynchronously_is_refused_in_one_line(changes, field):
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=2, **changes)
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_synchronous_config_keeps_its_fingerprint():
    """The asynchronous fields at their defaults are not in a synchronous config's fingerprint (its cache entries
    and seeded noise predate them); set, they are."""
    config = fl.ExperimentConfig(dataset="digits", num_clients=8, clients_per_round=2)
    assert "async_concurrency" not in config.experiment_dict()
    # the fingerprints fedlab gave these configs before the asynchronous fields existed (commit f8ad706)
    assert config.fingerprint() == "71b9639ec7854264"
    ckks = fl.ExperimentConfig(dataset="heart_disease", model="logreg", partition="natural", num_clients=4,
                               clients_per_round=4, rounds=5, secure_aggregation=True, secure_protocol="ckks")
    assert ckks.fingerprint() == "87d700b482a5ff14"
    assert config.replace(async_concurrency=2).fingerprint() != config.fingerprint()
    assert fl.ExperimentConfig.from_dict(config.replace(async_concurrency=2).to_dict()).async_concurrency == 2


def test_a_users_staleness_weighting_is_registered_like_fedlabs():
    @fl.register_staleness("hinge_test", replace=True)
    def hinge(staleness):
        return np.where(staleness <= 1, 1.0, 1.0 / (staleness - 0.5))

    config = ASYNC.replace(async_staleness="hinge_test", rounds=2)
    assert config.async_staleness == "hinge_test"
    np.testing.assert_allclose(staleness_weights("hinge_test", [0, 1, 3]), [1, 1, 0.4])


def test_who_contributes_and_how_many_steps_fit_are_read_from_the_schedule():
    table = fl.async_participation(ASYNC)
    assert table.updates_used.sum() == ASYNC.rounds * ASYNC.async_buffer
    assert table.share_of_updates.sum() == pytest.approx(1.0)
    assert (table.jobs_started >= table.updates_used).all()
    history = fl.run_experiment(ASYNC, progress=False)
    # the steps within the time the run's third step ended: three
    assert fl.async_steps_within(ASYNC, float(history.sim_elapsed_seconds.iloc[2])) == 3
    with pytest.raises(ValueError, match="async_participation"):
        fl.participation_table(ASYNC)


def test_runs_compared_at_equal_simulated_time_and_time_to_target():
    history = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "seed": 0, "round": [1, 2, 3] * 2,
                            "sim_elapsed_seconds": [10.0, 20.0, 30.0, 4.0, 8.0, 12.0],
                            "eval_accuracy": [0.5, 0.6, 0.7, 0.2, 0.65, 0.9], "eval_every": 1, "rounds": 3})
    at = fl.at_time(history, 20.0, ["method"]).set_index("method")
    assert at.loc["a", "round"] == 2 and at.loc["b", "round"] == 3
    with pytest.warns(UserWarning, match=r"\('a', 0\) has no evaluated round by 9 s"):
        assert fl.at_time(history, {0: 9.0}, ["method"]).set_index("method").loc["b", "round"] == 2
    with pytest.warns(UserWarning, match="no evaluated round"):
        assert list(fl.at_time(history, 5.0, ["method"]).method) == ["b"]
    reach = fl.time_to_target(history, 0.6, ["method"]).set_index("method")
    assert reach.loc["a", "seconds"] == 20.0 and reach.loc["b", "seconds"] == 8.0
    assert not fl.time_to_target(history, 0.95, ["method"]).reached.any()


def test_secure_sums_and_robust_rules_see_a_steps_buffer():
    """TFF's secure sum adds each step's buffer (its modulus sized for the buffer, not clients_per_round), with the
    numbers of the plain sum up to float32; Multi-Krum keeps K - f of the buffer's updates."""
    from fedlab.aggregators.aggregation import aggregator_key, cohort_size

    config = ASYNC.replace(rounds=3, clients_per_round=6)
    assert cohort_size(config) == 2 and cohort_size(config.replace(async_concurrency=0, async_buffer=None)) == 6
    assert aggregator_key(config.replace(robust="multikrum")) != aggregator_key(
        config.replace(robust="multikrum", async_concurrency=0, async_buffer=None))
    plain = fl.run_experiment(config, progress=False)
    secure = fl.run_experiment(config.replace(secure_aggregation=True), progress=False)
    np.testing.assert_allclose(secure.eval_loss, plain.eval_loss, rtol=1e-4)

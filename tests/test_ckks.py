"""CKKS homomorphic aggregation (fedlab.ckks, fedlab.homomorphic_rounds): the weighted mean within the stated
bound of the exact one, a server that cannot decrypt, reproducible from the seed, rounds equal to plain FedAvg."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab import ckks
from fedlab.validation import ConfigError


@pytest.fixture(scope="module")
def keys():
    return ckks.make_keys()


def weighted_mean(vectors, weights):
    w = np.asarray(list(weights), dtype=np.float64)
    return (w / w.sum()) @ np.stack([np.asarray(v, dtype=np.float64) for v in vectors])


# ---------------------------------------------------------------------------------------------------------------
# The scheme, no TensorFlow

D = {1: np.array([0.5, -1, 0.25]), 2: np.array([1.5, 0, -0.75]), 3: np.array([-0.5, 2, 1])}
N = {1: 10, 2: 30, 3: 60}


def test_the_weighted_mean_of_three_clients_by_hand(keys):
    secret, public = keys
    result = ckks.run_round(D, N, secret_context=secret, public_context=public, seed=(7,))
    # (10 D1 + 30 D2 + 60 D3) / 100
    np.testing.assert_allclose(result.mean, [0.20, 1.10, 0.40], rtol=0, atol=ckks.error_bound(2))
    assert result.included == (1, 2, 3)
    # client 2 dropped out: the weights renormalised over the two that arrived, (10 D1 + 60 D3) / 70
    dropped = ckks.run_round({1: D[1], 3: D[3]}, N, secret_context=secret, public_context=public, seed=(7,))
    np.testing.assert_allclose(dropped.mean, np.array([-25, 110, 62.5]) / 70, rtol=0, atol=ckks.error_bound(2))


def test_the_error_bound_holds_over_several_ciphertexts(keys):
    secret, public = keys
    rng = np.random.default_rng(0)
    vectors = {c: rng.normal(0, 0.05, 10_000).astype(np.float32) for c in range(4)}  # 3 ciphertexts each
    weights = {0: 10, 1: 30, 2: 25, 3: 35}
    exact = weighted_mean(vectors.values(), weights.values())
    for seed in ((1,), None):
        result = ckks.run_round(vectors, weights, secret_context=secret, public_context=public, seed=seed)
        error = np.abs(result.mean - exact).max()
        magnitude = max(np.abs(v).max() for v in vectors.values())
        assert error <= ckks.error_bound(magnitude)
        assert error < 2e-9  # measured 4e-10 on values up to 0.25: far inside the bound
    assert result.bytes_per_client == pytest.approx(2 * 3 * ckks.ciphertext_bytes(), rel=1e-3)
    assert 55 < ckks.ciphertext_bytes() / ckks.SLOTS < 60  # bytes per value (float32: 4)


def test_the_server_holds_no_secret_key_and_cannot_decrypt(keys):
    secret, public = keys
    server = ckks.CkksServer(public)
    assert not server.context.is_private() and not server.context.has_secret_key()
    with pytest.raises(ValueError, match="doesn't hold a Secret key"):
        server.context.secret_key()
    total = server.weighted_sum([ckks.encrypt(D[1], secret), ckks.encrypt(D[2], secret)], [0.5, 0.5])
    with pytest.raises(ValueError, match="holds no secret key"):
        ckks.decrypt(total, 3, public)
    np.testing.assert_allclose(ckks.decrypt(total, 3, secret), (D[1] + D[2]) / 2, atol=ckks.error_bound(2))
    assert len(public) < 200  # the parameters only: no key of any kind
    with pytest.raises(ValueError, match="holds the secret key"):
        ckks.CkksServer(secret)


def test_seeded_encryption_is_reproducible_whatever_the_keys_and_each_ciphertext_has_its_own_mask(keys):
    secret, public = keys
    other_secret, other_public = ckks.make_keys()
    values = np.tile(D[1], 3000)  # 9,000 values: three ciphertexts
    first = ckks.run_round({1: values, 2: -values / 3}, {1: 1, 2: 2}, secret_context=secret, public_context=public,
                           seed=(3, 4))
    again = ckks.run_round({1: values, 2: -values / 3}, {1: 1, 2: 2}, secret_context=other_secret,
                           public_context=other_public, seed=(3, 4))
    np.testing.assert_array_equal(first.mean, again.mean)  # the decryption of an unrescaled sum needs no key bits
    assert ckks.encrypt(values, secret, seed=(5,)) == ckks.encrypt(values, secret, seed=(5,))
    unseeded = ckks.encrypt(values, secret)
    assert unseeded != ckks.encrypt(values, secret)
    # one seeded context per ciphertext: equal plaintexts in two ciphertexts are not encrypted alike
    chunks = ckks.encrypt(np.tile(D[1][:1], 2 * ckks.SLOTS), secret, seed=(5,))
    assert chunks[0] != chunks[1]


def test_values_beyond_the_range_are_refused_in_one_line(keys):
    secret, _ = keys
    with pytest.raises(ValueError, match=r"out of CKKS's range here \(\|x\| < 2\^16\)") as err:
        ckks.encrypt(np.array([0.0, 2.0 ** 16]), secret)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="out of CKKS's range"):
        ckks.encrypt(np.array([np.nan]), secret)


def test_write_keys_writes_a_secret_file_for_the_sites_and_a_public_one_that_cannot_decrypt(tmp_path):
    secret_path, public_path = ckks.write_keys(tmp_path / "keys")
    assert (secret_path.name, public_path.name) == (ckks.SECRET_FILE, ckks.PUBLIC_FILE)
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == sorted([ckks.SECRET_FILE, ckks.PUBLIC_FILE])
    secret, public = secret_path.read_bytes(), public_path.read_bytes()
    total = ckks.weighted_sum([ckks.encrypt(D[3], secret)], [1.0], public)
    np.testing.assert_allclose(ckks.decrypt(total, 3, secret), D[3], atol=ckks.error_bound(2))
    with pytest.raises(ValueError, match="holds no secret key"):
        ckks.decrypt(total, 3, public)


def test_measure_cost_tabulates_bytes_and_seconds():
    table = ckks.measure_cost(clients=(10, 100), sizes=(100, 5000), timed_clients=2)
    assert list(table.clients) == [10, 100, 10, 100] and list(table.ciphertexts) == [1, 1, 2, 2]
    assert (table.bytes_per_client == 2 * table.ciphertexts * ckks.ciphertext_bytes()).all() or \
        np.allclose(table.bytes_per_client, 2 * table.ciphertexts * ckks.ciphertext_bytes(), rtol=1e-3)
    per = table.set_index(["vector_length", "clients"]).server_seconds_extrapolated
    assert per[(100, 100)] == pytest.approx(10 * per[(100, 10)])
    assert (table.max_error < ckks.error_bound(1)).all()


# ---------------------------------------------------------------------------------------------------------------
# Rounds (TFF)

BASE = fl.ExperimentConfig(dataset="heart_disease", model="logreg", partition="natural", num_clients=4,
                           clients_per_round=4, rounds=2, client_lr=0.05, batch_size=8)
CKKS = dict(secure_aggregation=True, secure_protocol="ckks")
RUN_COLUMNS = ["train_loss", "eval_loss", "eval_accuracy", "secagg_participants", "secagg_included",
               "secagg_aborted", "secagg_bytes_per_client", "bytes_up"]


def assert_weights_close(plain, encrypted, rounds):
    # each round's decrypted mean is within error_bound of the exact one; the plain run sums in float32
    # (2^-24 relative a step): both allowed per round
    for p, c in zip(fl.final_weights(plain), fl.final_weights(encrypted)):
        np.testing.assert_allclose(c, p, rtol=rounds * 4 * 2.0 ** -24, atol=rounds * ckks.error_bound(1))


@pytest.mark.slow
def test_a_ckks_round_equals_the_plain_fedavg_round_within_the_bound():
    plain = fl.run_experiment(BASE, progress=False)
    encrypted = fl.run_experiment(BASE.replace(**CKKS), progress=False)
    assert_weights_close(plain, encrypted, BASE.rounds)
    np.testing.assert_allclose(encrypted.eval_loss, plain.eval_loss, rtol=1e-6)
    assert (encrypted.secagg_included == 4).all() and (encrypted.secagg_aborted == 0).all()
    # 14 weights: one ciphertext up and the encrypted mean down, about 235 kB each
    np.testing.assert_allclose(encrypted.secagg_bytes_per_client, 2 * ckks.ciphertext_bytes(), rtol=1e-3)
    assert (encrypted.seconds_secagg_server > 0).all() and (encrypted.seconds_secagg_client > 0).all()
    assert (encrypted.bytes_up == 4 * (ckks.ciphertext_bytes() + 4)).all()


@pytest.mark.slow
def test_the_same_config_and_seed_give_the_same_history_twice():
    config = BASE.replace(**CKKS, rounds=3)
    first, second = fl.run_experiment(config, progress=False), fl.run_experiment(config, progress=False)
    pd.testing.assert_frame_equal(first[RUN_COLUMNS], second[RUN_COLUMNS])
    for a, b in zip(fl.final_weights(first), fl.final_weights(second)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_run_resumed_from_its_checkpoint_equals_the_uninterrupted_one(tmp_path):
    import threading

    from fedlab.runner import RunStopped

    config = BASE.replace(**CKKS, rounds=3, algorithm="fedadam", server_lr=0.05)  # Adam's moments in the state
    whole = fl.run_experiment(config, progress=False)
    stop = threading.Event()
    with pytest.raises(RunStopped):
        fl.run_experiment(config, progress=False, checkpoint_dir=tmp_path, stop=stop,
                          callback=lambda row, history: stop.set() if row["round"] == 1 else None)
    resumed = fl.run_experiment(config, progress=False, checkpoint_dir=tmp_path)
    pd.testing.assert_frame_equal(whole[RUN_COLUMNS], resumed[RUN_COLUMNS])
    for a, b in zip(fl.final_weights(whole), fl.final_weights(resumed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_dropouts_are_left_out_and_the_weights_renormalised():
    config = fl.ExperimentConfig(dataset="breast_cancer", model="logreg", num_clients=8, clients_per_round=6,
                                 rounds=3, client_lr=0.05, batch_size=8, dropout_rate=0.3, systems_seed=2)
    plain = fl.run_experiment(config, progress=False)
    encrypted = fl.run_experiment(config.replace(**CKKS), progress=False)
    assert_weights_close(plain, encrypted, config.rounds)
    assert (encrypted.secagg_participants == 6).all()
    assert (encrypted.secagg_included == encrypted.clients_completed).all()
    assert (encrypted.secagg_included < encrypted.secagg_participants).any(), "no client dropped: choose another seed"


@pytest.mark.slow
@pytest.mark.parametrize("changes", [dict(dp="example", noise_multiplier=1.0, clip_norm=1.0),
                                     dict(algorithm="fedadam", server_lr=0.05), dict(noise_source="unseeded")],
                         ids=["record-level-dp", "fedadam", "os-randomness"])
def test_record_level_dp_an_adaptive_server_optimizer_and_os_randomness_run_on_the_decrypted_mean(changes):
    config = BASE.replace(**changes)
    plain = fl.run_experiment(config, progress=False)
    encrypted = fl.run_experiment(config.replace(**CKKS), progress=False)
    # measured: the weights differ by at most one float32 step (6e-8), as without DP or with FedAvg
    assert_weights_close(plain, encrypted, config.rounds)
    assert (encrypted.secagg_included == 4).all()


@pytest.mark.parametrize("changes, field, message", [
    (dict(quantization_bits=8), "quantization_bits", "CKKS encrypts the float updates"),
    (dict(clients_per_round=1), "clients_per_round", "must be 2 or more"),
    (dict(secure_aggregation=False), "secure_protocol", "needs secure_aggregation=True"),
    (dict(robust="clip"), "robust", "must be none with secure_protocol='ckks'"),
    (dict(dp="fixed", noise_multiplier=1.0), "secure_aggregation", "DP factory owns the sum"),
    (dict(freeze_layers=1, model="2nn", dataset="digits", partition="iid", num_clients=10), "secure_protocol",
     "compiled client loop"),
])
def test_what_ckks_cannot_do_is_refused_in_one_line(changes, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        BASE.replace(**{**CKKS, **changes})
    assert err.value.field == field and "\n" not in str(err.value)

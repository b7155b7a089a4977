"""CKKS homomorphic aggregation (fedlab.protection.ckks, fedlab.rounds.homomorphic_rounds): the weighted mean within the stated
bound of the exact one, a server that cannot decrypt, reproducible from the seed, rounds equal to plain FedAvg."""

import os
import pathlib
import stat
import struct
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.protection import ckks
from fedlab.core.validation import ConfigError, FedlabWarning


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
    assert result.bytes_per_client == 2 * 3 * 262_257  # 3 ciphertexts up, 3 down (checked against SEAL below)


def uncompressed(ciphertext: bytes, seal_context) -> bytes:
    """SEAL's serialisation of a stored ciphertext with compression off (compression mode 0), built field by field
    as ``Ciphertext::save_members`` writes them; SEAL loads it only if every field and size is right."""
    ct = ckks._files().load(seal_context, ciphertext)
    array = ct.dyn_array()
    coefficients = np.fromiter((array.at(i) for i in range(array.size())), dtype=np.uint64, count=array.size())
    major, minor = ciphertext[3], ciphertext[4]

    def sealed(body):  # SEALHeader: magic, header size, version, compression mode (none), reserved, total size
        return struct.pack("<HBBBBHQ", 0xA15E, 16, major, minor, 0, 0, 16 + len(body)) + body

    members = (struct.pack("<4Q", *ct.parms_id()) + bytes([int(ct.is_ntt_form())])
               + struct.pack("<QQQdQ", ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size(), ct.scale, 1)
               + sealed(struct.pack("<Q", coefficients.size) + coefficients.tobytes()))
    return sealed(members)


def test_the_bytes_counted_are_seals_uncompressed_serialisation_of_a_ciphertext_and_of_the_sum(keys):
    secret, public = keys
    seal_context = ckks._context(secret, private=True).seal_context().data
    sent = {c: ckks.encrypt(D[c], secret, seed=(9,)) for c in (1, 2)}
    total = ckks.weighted_sum([sent[1], sent[2]], [0.25, 0.75], public)
    for ciphertext, expected in ((sent[1][0], D[1]), (total[0], (D[1] + 3 * D[2]) / 4)):
        raw = uncompressed(ciphertext, seal_context)
        assert raw[5] == 0 and ciphertext[5] != 0  # compression off here; on in what fedlab passes around
        assert len(raw) == ckks.ciphertext_bytes() == 262_257
        assert len(ciphertext) < len(raw)  # SEAL's zstd: smaller, and varying with the key
        # SEAL loads the uncompressed bytes and they decrypt to the values: every field was right
        np.testing.assert_allclose(ckks.decrypt([raw], 3, secret), expected, atol=ckks.error_bound(2))
        with pytest.raises(Exception):
            ckks.decrypt([raw[:-8]], 3, secret)  # one coefficient short: SEAL refuses
    assert ckks.upload_bytes(1) == ckks.upload_bytes(ckks.SLOTS) == 262_257
    assert ckks.upload_bytes(ckks.SLOTS + 1) == 2 * 262_257


BYTES_SCRIPT = """
import numpy as np
from fedlab.protection import ckks
secret, public = ckks.make_keys()
rng = np.random.default_rng()
updates = {c: rng.normal(0, 0.1, 5000) for c in range(3)}
result = ckks.run_round(updates, {0: 1, 1: 2, 2: 3}, secret_context=secret, public_context=public)
compressed = len(ckks.encrypt(updates[0], secret)[0])
print(ckks.ciphertext_bytes(), result.bytes_per_client, ckks.upload_bytes(5000), compressed)
"""


def test_the_bytes_are_the_same_in_two_processes_with_their_own_keys():
    runs = [subprocess.Popen([sys.executable, "-c", BYTES_SCRIPT], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    (first, second) = [[float(v) for v in out] for out in outputs]
    assert first[:3] == second[:3] == [262_257, 4 * 262_257, 2 * 262_257]  # 2 ciphertexts up, 2 down
    assert first[3] < first[0] and second[3] < second[0]  # compressed: what the old count measured


def test_the_server_holds_no_secret_key_and_cannot_decrypt(keys):
    import tenseal as ts
    import tenseal.sealapi as seal

    secret, public = keys
    server = ckks.CkksServer(public)
    assert not server.context.is_private() and not server.context.has_secret_key()
    with pytest.raises(ValueError, match="doesn't hold a Secret key"):
        server.context.secret_key()
    total = server.weighted_sum([ckks.encrypt(D[1], secret), ckks.encrypt(D[2], secret)], [0.5, 0.5])
    with pytest.raises(ValueError, match="holds no secret key"):
        ckks.decrypt(total, 3, public)
    # real decryptions with the public context, past fedlab's guard: SEAL and TenSEAL refuse
    seal_context = server.context.seal_context().data
    ckks._files().load(seal_context, total[0])  # the server reads the ciphertext itself
    with pytest.raises(ValueError, match="secret key is not valid"):
        seal.Decryptor(seal_context, seal.SecretKey())  # the only secret key it could have: an empty one
    vector = ts.ckks_vector_from(ts.context_from(public), ts.ckks_vector(ts.context_from(secret), [1.0]).serialize())
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        vector.decrypt()
    # and another key decrypts to garbage: the key, not the guard, protects the mean
    other, _ = ckks.make_keys()
    assert np.abs(ckks.decrypt(total, 3, other) - (D[1] + D[2]) / 2).max() > 1e6
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


def test_an_encrypting_context_without_the_modulus_chain_makes_the_ciphertexts_of_one_with_it(keys, monkeypatch):
    import tenseal.sealapi as seal

    secret, _ = keys
    values = np.tile(D[1], 3000)
    lean = ckks.encrypt(values, secret, seed=(5,))

    def with_chain(seed=None):  # what the contexts were built as before: every level of the chain
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(ckks.POLY_MODULUS_DEGREE)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(ckks.POLY_MODULUS_DEGREE, list(ckks.COEFF_MOD_BIT_SIZES)))
        if seed is not None:
            parms.set_random_generator(seal.Blake2xbPRNGFactory([int(s) for s in seed]))
        return seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)

    monkeypatch.setattr(ckks, "_seal_context", with_chain)
    ckks._unseeded_context.cache_clear()
    try:
        assert ckks.encrypt(values, secret, seed=(5,)) == lean  # the committed CKKS results stay as they are
    finally:
        ckks._unseeded_context.cache_clear()


def test_chunks_encoded_by_one_encoder_are_the_ciphertexts_of_each_context_encoding_its_own(keys):
    """encrypt encodes every chunk with one encoder (a plaintext belongs to every context of the same parameters):
    the ciphertexts are those of each chunk's seeded context encoding its chunk itself, as fedlab did before."""
    import tenseal.sealapi as seal

    secret, _ = keys
    values = np.tile(D[1], 3000).astype(np.float64)
    key = ckks._context(secret, private=True).secret_key().data
    expected = []
    for chunk, start in enumerate(range(0, values.size, ckks.SLOTS)):
        context = ckks._seal_context(ckks._chunk_seed((5,), chunk))
        plain, cipher = seal.Plaintext(), seal.Ciphertext()
        seal.CKKSEncoder(context).encode(values[start:start + ckks.SLOTS].tolist(), 2.0 ** ckks.SCALE_BITS, plain)
        seal.Encryptor(context, key).encrypt_symmetric(plain, cipher)
        expected.append(ckks._files().dump(cipher))
    assert len(expected) > 1
    assert ckks.encrypt(values, secret, seed=(5,)) == expected


def test_ciphertext_files_are_removed_once_read_and_kept_in_memory_only_where_there_is_room(keys, monkeypatch,
                                                                                             tmp_path):
    import tempfile

    files = ckks._files()
    folder = pathlib.Path(files._dir.name)
    secret, _ = keys
    ckks.encrypt(np.ones(10), secret, seed=(1,))
    assert list(folder.iterdir()) == []  # nothing left behind, in memory or on disk
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    tempfile.gettempdir()  # Python's default, cached in tempfile.tempdir: not a choice
    monkeypatch.setattr(ckks, "MEMORY_ROOM", 0)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        assert ckks._memory_folder() == "/dev/shm"
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(tmp_path))
        assert ckks._memory_folder() is None  # the user's choice of temporary folder stands
        monkeypatch.delenv(name)
    monkeypatch.setattr(ckks, "MEMORY_ROOM", 2 ** 62)
    assert ckks._memory_folder() is None  # no room: the system's temporary folder


def test_values_beyond_the_range_are_refused_in_one_line(keys):
    secret, _ = keys
    with pytest.raises(ValueError, match=r"out of CKKS's range here \(\|x\| < 2\^16\)") as err:
        ckks.encrypt(np.array([0.0, 2.0 ** 16]), secret)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="out of CKKS's range"):
        ckks.encrypt(np.array([np.nan]), secret)


def test_zero_total_weight_gives_a_zero_mean_and_only_positive_weights_are_included(keys):
    secret, public = keys
    zero = ckks.run_round(D, {1: 0, 2: 0, 3: 0}, secret_context=secret, public_context=public, seed=(1,))
    np.testing.assert_array_equal(zero.mean, np.zeros(3))  # as TFF's mean: divide no-NaN
    assert zero.included == () and zero.bytes_per_client == 0
    nan = {**D, 2: np.array([np.nan, 1e9, 0])}  # weight 0: never encrypted, so never refused
    some = ckks.run_round(nan, {1: 10, 2: 0, 3: 60}, secret_context=secret, public_context=public, seed=(1,))
    assert some.included == (1, 3)
    np.testing.assert_allclose(some.mean, np.array([-25, 110, 62.5]) / 70, rtol=0, atol=ckks.error_bound(2))
    with pytest.raises(ValueError, match="must be >= 0"):
        ckks.run_round(D, {1: -1, 2: 1, 3: 1}, secret_context=secret, public_context=public)


def test_more_clients_than_the_error_bound_holds_for_are_refused_in_one_line(keys, monkeypatch):
    secret, public = keys
    monkeypatch.setattr(ckks, "MAX_CLIENTS", 2)
    sent = ckks.encrypt(D[1], secret)
    with pytest.raises(ValueError, match="more than the 2 error_bound holds for") as err:
        ckks.weighted_sum([sent] * 3, [1 / 3] * 3, public)
    assert "\n" not in str(err.value)


def test_write_keys_refuses_to_replace_a_secret_context_unless_forced(tmp_path):
    secret_path, public_path = ckks.write_keys(tmp_path)
    before = secret_path.read_bytes(), public_path.read_bytes()
    with pytest.raises(FileExistsError, match="secret context is already there") as err:
        ckks.write_keys(tmp_path)
    assert str(secret_path) in str(err.value) and "\n" not in str(err.value)
    assert (secret_path.read_bytes(), public_path.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckks.SECRET_FILE, ckks.PUBLIC_FILE])  # no temp
    ckks.write_keys(tmp_path, force=True)
    assert secret_path.read_bytes() != before[0]  # a new key (the public context: the parameters only)
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600


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
    assert list(table.bytes_per_client) == [2 * 262_257] * 2 + [4 * 262_257] * 2  # up and down, uncompressed
    assert (table.server_seconds_per_client > 0).all()
    # a real decryption's error: above zero (CKKS is approximate), inside the bound
    assert ((table.max_error > 0) & (table.max_error < ckks.error_bound(1))).all()
    # the error comes from the seeded round: a second measurement writes the same table but for its seconds
    again = ckks.measure_cost(clients=(10, 100), sizes=(100, 5000), timed_clients=2)
    assert list(again.max_error) == list(table.max_error)


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
    # 14 weights: one ciphertext up and the encrypted mean down, 262,257 bytes each (SEAL, uncompressed)
    assert (encrypted.secagg_bytes_per_client == 2 * 262_257).all()
    assert (encrypted.seconds_secagg_server > 0).all() and (encrypted.seconds_secagg_client > 0).all()
    # the runner's count agrees with the protocol's: each client's ciphertext and weight up, the model and the
    # encrypted mean down
    assert (encrypted.bytes_up == 4 * (encrypted.secagg_bytes_per_client / 2 + 4)).all()
    assert (encrypted.bytes_down == plain.bytes_down + 4 * encrypted.secagg_bytes_per_client / 2).all()


@pytest.mark.slow
def test_two_configs_in_one_process_never_share_encryption_randomness(monkeypatch):
    seeds = []
    real = ckks.run_round

    def spy(*args, seed=None, **kwargs):
        seeds.append(tuple(seed))
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(ckks, "run_round", spy)
    config = BASE.replace(**CKKS, rounds=1)
    fl.run_experiment(config, progress=False)
    fl.run_experiment(config.replace(client_lr=0.1), progress=False)  # a learning-rate sweep, same noise seed
    fl.run_experiment(config, progress=False)
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]


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

    from fedlab.experiment.runner import RunStopped

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


def _round_with(updates_of, monkeypatch, clients=(0, 1, 2)):
    """Round 1 of BASE under CKKS with the clients' trained updates and weights changed by ``updates_of``."""
    from fedlab.experiment.clients import Clients, dataset_for, spec_for
    from fedlab.experiment.processes import get_process, initial_state, trainer_for

    config = BASE.replace(**CKKS)
    data = dataset_for(config)
    spec = spec_for(config, data)
    data_of = Clients.for_config(config, spec)
    process = get_process(config, spec)
    real = process._clients_fn

    def changed(*args):
        updates, weights, metrics = real(*args)
        updates, weights = updates_of([tuple(np.asarray(a) for a in u) for u in updates], [float(w) for w in weights])
        return updates, weights, metrics

    monkeypatch.setattr(process, "_clients_fn", changed)
    trainer = trainer_for(process, data_of.x[0], data_of.y[0])
    state = initial_state(process, config, spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = trainer.next(state, [data_of.inputs(config, 1, c) for c in clients], clients=list(clients),
                              participants=list(clients), noise_seed=5)
    before = [np.asarray(w) for w in state.global_model_weights.trainable]
    after = [np.asarray(w) for w in output.state.global_model_weights.trainable]
    return output, before, after, [str(w.message) for w in caught if issubclass(w.category, FedlabWarning)]


@pytest.mark.slow
def test_an_out_of_range_update_is_left_out_with_a_warning_and_the_run_goes_on(monkeypatch):
    def boost(updates, weights):
        updates[1] = tuple(np.full_like(a, 2.0 ** 16) for a in updates[1])
        return updates, weights

    output, before, after, messages = _round_with(boost, monkeypatch)
    stats = output.metrics["aggregator"]["secagg"]
    assert (stats["included"], stats["aborted"]) == (2, 0)
    assert len(messages) == 1 and "ckks round 1: client 1's update reaches 6.55e+04" in messages[0]
    assert "\n" not in messages[0]
    assert all(np.isfinite(a).all() for a in after) and any((a != b).any() for a, b in zip(after, before))
    assert int(output.state.aggregator["rounds"]) == 1


@pytest.mark.slow
def test_zero_total_weight_applies_a_zero_mean_as_plain_fedavg_does(monkeypatch):
    output, before, after, messages = _round_with(lambda u, w: (u, [0.0] * len(w)), monkeypatch)
    stats = output.metrics["aggregator"]["secagg"]
    assert (stats["included"], stats["aborted"]) == (0, 0) and messages == []
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)  # FedAvg's SGD step on a zero mean


@pytest.mark.slow
def test_fewer_than_two_positive_weight_updates_stop_the_round(monkeypatch):
    output, before, after, messages = _round_with(lambda u, w: (u, [w[0], 0.0, 0.0]), monkeypatch)
    assert output.metrics["aggregator"]["secagg"]["aborted"] == 1
    assert len(messages) == 1 and "ckks round 1 stopped: 1 of 3 clients" in messages[0]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("changes, field, message", [
    (dict(quantization_bits=8), "quantization_bits", "CKKS encrypts the float updates"),
    (dict(clients_per_round=1), "clients_per_round", "must be 2 or more"),
    (dict(secure_aggregation=False), "secure_protocol", "needs secure_aggregation=True"),
    (dict(robust="clip"), "robust", "must be none with secure_protocol='ckks'"),
    (dict(dp="fixed", noise_multiplier=1.0), "secure_protocol", "CKKS sums them unclipped"),
])
def test_what_ckks_cannot_do_is_refused_in_one_line(changes, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        BASE.replace(**{**CKKS, **changes})
    assert err.value.field == field and "\n" not in str(err.value)

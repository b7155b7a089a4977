"""Training rounds summed by the SecAgg / SecAgg+ protocol (fedlab.rounds.split_rounds, with the protocol's stage
in fedlab.rounds.secure_rounds): the same numbers as the simulated secure sum, dropouts recovered, a round that
cannot be unmasked leaves the model unchanged."""

import numpy as np
import pytest

import fedlab as fl
from fedlab.aggregators.aggregation import bits_per_value_up, make_aggregator
from fedlab.rounds.secure_rounds import ProtocolSum
from fedlab.core.validation import ConfigError

BASE = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=10, clients_per_round=4, rounds=2,
                           client_lr=0.05, batch_size=20, clip_norm=0.3, secure_aggregation=True, quantization_bits=8)


def weights_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(fl.final_weights(a), fl.final_weights(b)))


def test_a_protocol_round_gives_the_numbers_of_the_simulated_secure_sum():
    simulated = fl.run_experiment(BASE, progress=False)
    protocol = fl.run_experiment(BASE.replace(secure_protocol="secagg"), progress=False)
    assert weights_equal(simulated, protocol)
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_array_equal(simulated[column], protocol[column], err_msg=column)
    assert (protocol.secagg_included == 4).all() and (protocol.secagg_aborted == 0).all()
    assert (protocol.secagg_bytes_per_client > 0).all()


@pytest.mark.parametrize("algorithm", ["fedprox", "fedsgd"])
def test_the_protocol_sums_other_compiled_loop_algorithms_as_the_simulated_secure_sum(algorithm):
    # FedProx and FedSGD run fedlab's compiled loop with a plain mean: the protocol's unweighted mean fits them
    config = BASE.replace(algorithm=algorithm)
    simulated = fl.run_experiment(config, progress=False)
    protocol = fl.run_experiment(config.replace(secure_protocol="secagg"), progress=False)
    assert weights_equal(simulated, protocol)
    np.testing.assert_array_equal(simulated.eval_loss, protocol.eval_loss)
    assert (protocol.secagg_included == 4).all()


@pytest.mark.parametrize("changes", [
    dict(algorithm="fedper"),
    dict(algorithm="ditto", lam=0.1),
    dict(attack="sign_flip", attacker_fraction=0.3, attack_boost=3),
    dict(algorithm="fedper", attack="sign_flip", attacker_fraction=0.3),
    dict(algorithm="scaffold"),  # its control variates' change summed with each update
], ids=["fedper", "ditto", "sign-flip", "fedper-sign-flip", "scaffold"])
def test_the_protocol_stacks_on_a_split_round_with_the_simulated_secure_sums_numbers(changes):
    # FedPer's and Ditto's own models, SCAFFOLD's control variates, forged updates: Python between the clients and
    # the server; the protocol then
    # sums the updates in the same split round (SplitRoundProcess.protocol_step), as TFF's simulated secure sum does
    config = BASE.replace(**changes)
    simulated = fl.run_experiment(config, progress=False)
    protocol = fl.run_experiment(config.replace(secure_protocol="secagg"), progress=False)
    assert weights_equal(simulated, protocol)
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_array_equal(simulated[column], protocol[column], err_msg=column)
    assert (protocol.secagg_included == 4).all() and (protocol.secagg_aborted == 0).all()
    without = BASE.replace(**{k: v for k, v in changes.items() if k == "algorithm"} if "attack" in changes else {})
    plain = fl.run_experiment(without.replace(secure_protocol="secagg"), progress=False)
    # Ditto's global model is FedAvg's, unchanged; FedPer's head and forged updates change the global model
    assert weights_equal(plain, protocol) == (changes.get("algorithm") == "ditto" and "attack" not in changes)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedper"])  # FedPer: the protocol in a split round
def test_dropouts_after_the_key_exchange_are_recovered(algorithm):
    # a quarter of the selected clients go offline mid-round: they took part in the key exchange, sent nothing
    config = BASE.replace(algorithm=algorithm, num_clients=20, clients_per_round=8, rounds=3, dropout_rate=0.25,
                          systems_seed=3)
    simulated = fl.run_experiment(config, progress=False)
    protocol = fl.run_experiment(config.replace(secure_protocol="secaggplus"), progress=False)
    assert weights_equal(simulated, protocol)
    assert (protocol.secagg_participants == 8).all()
    assert (protocol.secagg_included == protocol.clients_completed).all()
    assert (protocol.secagg_included < protocol.secagg_participants).any(), "no client dropped: choose another seed"


@pytest.mark.parametrize("algorithm", ["fedavg", "fedper"])  # FedPer: the protocol in a split round
def test_a_round_too_few_clients_survive_leaves_the_model_unchanged(algorithm):
    # SecAgg's threshold is a strict majority of the participants: with most dropping out, rounds stop
    config = BASE.replace(algorithm=algorithm, clients_per_round=6, rounds=4, dropout_rate=0.6, systems_seed=1,
                          secure_protocol="secagg")
    with pytest.warns(UserWarning, match=r"fedlab: secure aggregation stopped at .* the threshold is \d+; the round's "
                                         r"update is lost"):
        history = fl.run_experiment(config, progress=False)
    stopped = history.secagg_aborted == 1
    assert stopped.any() and (~stopped).any(), "every round stopped, or none did: choose another seed"
    for i in np.flatnonzero(stopped.to_numpy()):
        if i > 0:  # nothing applied: the global model (and so its test loss) is the previous round's
            assert history.eval_loss.iloc[i] == history.eval_loss.iloc[i - 1]
    assert history.loc[stopped, "secagg_included"].eq(0).all()


def test_the_ring_holds_the_sum_of_k_clients():
    protocol = make_aggregator(BASE.replace(secure_protocol="secagg", clients_per_round=10))
    assert isinstance(protocol, ProtocolSum)
    assert protocol.modulus_bits == 8 + 4  # 10 clients: ceil(log2 10) = 4 more bits
    assert protocol.scale == pytest.approx(127 / 0.3)
    # K symmetric 8-bit values of at most 127 each never reach R / 2 = 2048 in absolute value
    assert 10 * 127 < 2 ** protocol.modulus_bits // 2
    assert bits_per_value_up(BASE.replace(secure_protocol="secaggplus", clients_per_round=10)) == 12


def test_the_sum_is_read_from_the_ring_as_signed_integers():
    from fedlab.rounds.secure_rounds import signed_sum

    protocol = ProtocolSum("secagg", 4, 1.0, 4)  # R = 2^6 = 64
    a, b = signed_sum(np.array([0, 1, 63, 32], dtype=np.uint64), protocol.modulus_bits, [(2,), (1, 2)])
    np.testing.assert_array_equal(a, [0, 1])
    np.testing.assert_array_equal(b, [[-1, -32]])


@pytest.mark.parametrize("changes, field", [
    (dict(secure_aggregation=False), "secure_protocol"),
    (dict(quantization_bits=0), "quantization_bits"),
    (dict(robust="zeroing"), "robust"),
    (dict(algorithm="qffl"), "weight_bound"),  # its weights h_k, unbounded, need a public bound on a ring
    (dict(clients_per_round=1), "clients_per_round"),
    (dict(secure_protocol="secagg+"), "secure_protocol"),
    (dict(algorithm="fedper", secure_protocol="ckks", quantization_bits=0), "secure_protocol"),
    (dict(attack="sign_flip", attacker_fraction=0.3, secure_protocol="ckks", quantization_bits=0), "secure_protocol"),
])
def test_what_a_protocol_cannot_do_is_refused_in_one_line(changes, field):
    with pytest.raises(ConfigError) as err:
        BASE.replace(**{"secure_protocol": "secagg", **changes})
    assert err.value.field == field and "\n" not in str(err.value)


def test_fednova_takes_a_secure_sums_plain_mean_with_tau_eff_the_mean_of_the_clients_steps():
    # unequal data (Dirichlet), one epoch each: unequal tau_i; a clip no update reaches and 16 bits: the secure
    # sum's mean is FedNova's with p_i = 1/m (client_weighting="uniform") within its rounding, the protocol's exactly
    base = fl.ExperimentConfig(dataset="digits", model="logreg", num_clients=6, clients_per_round=3, rounds=2,
                               client_lr=0.1, batch_size=10, algorithm="fednova", partition="dirichlet", alpha=0.3)
    uniform = fl.run_experiment(base.replace(client_weighting="uniform"), progress=False)
    secure = base.replace(secure_aggregation=True, quantization_bits=16, clip_norm=20.0)
    simulated = fl.run_experiment(secure, progress=False)
    np.testing.assert_allclose(simulated.eval_loss, uniform.eval_loss, atol=2e-3)
    assert weights_equal(simulated, fl.run_experiment(secure.replace(secure_protocol="secagg"), progress=False))
    by_examples = fl.run_experiment(base, progress=False)  # p_i = the clients' data: another model
    ckks = fl.run_experiment(base.replace(secure_aggregation=True, secure_protocol="ckks"), progress=False)
    np.testing.assert_allclose(ckks.eval_loss, by_examples.eval_loss, atol=1e-4)  # CKKS weighs as asked
    assert np.abs(by_examples.eval_loss - uniform.eval_loss).max() > 10 * np.abs(simulated.eval_loss
                                                                             - uniform.eval_loss).max()

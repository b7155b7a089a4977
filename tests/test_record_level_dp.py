"""Record-level DP (dp="example"): DP-SGD inside every client, checked by hand, and its accounting (issue #20)."""

import math
import subprocess
import sys

import numpy as np
import pytest

import fedlab as fl
from fedlab.protection import accounting
from fedlab.algorithms.algorithms import ALGORITHMS
from fedlab.models.models import ModelSpec
from fedlab.core.runtime import tff

SPEC = ModelSpec("logreg", num_features=2, num_classes=3)
RNG = np.random.default_rng(1)
W0 = RNG.normal(size=(2, 3)).astype(np.float32)
B0 = RNG.normal(size=3).astype(np.float32)
X = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]], np.float32)
Y = np.array([2, 0, 1, 1], np.int32)


def grad(w, b, x, y):
    z = x @ w + b
    p = np.exp(z - z.max())
    p /= p.sum()
    p[y] -= 1.0
    return np.outer(x, p), p


def one_round(z, clip, batch, lr=0.5, steps=1, key=(3, 4)):
    process = ALGORITHMS["fedavg"].on_arrays(SPEC.functional_model(), client_lr=lr, server_lr=1.0,
                                              example_dp=(z, clip))
    state = process.set_model_weights(process.initialize(), tff().learning.models.ModelWeights([W0, B0], []))
    data = {"x": X, "y": Y, "orders": np.arange(4)[None], "batch": np.int64(batch), "steps": np.int64(steps),
            "skip": np.int64(0), "key": np.asarray(key, np.int64)}
    return [np.asarray(w) for w in process.get_model_weights(process.next(state, [data]).state).trainable]


def test_per_example_clipping_by_hand():
    """No noise, and batch = n so that the Poisson rate is 1 and every example joins: the step is the sum of
    the per-example gradients, each clipped to C, over the batch size. (Configs keep batch < n; the process
    itself is called here.)"""
    clip, lr = 0.8, 0.5
    w, b = one_round(z=0.0, clip=clip, batch=4, lr=lr)
    gw, gb = np.zeros_like(W0, np.float64), np.zeros_like(B0, np.float64)
    for xi, yi in zip(X, Y):
        dw, db = grad(W0.astype(np.float64), B0.astype(np.float64), xi, yi)
        norm = math.sqrt((dw ** 2).sum() + (db ** 2).sum())
        factor = min(1.0, clip / norm)
        gw, gb = gw + factor * dw, gb + factor * db
    np.testing.assert_allclose(w, W0 - lr * gw / 4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, B0 - lr * gb / 4, rtol=1e-5, atol=1e-6)
    unclipped = W0 - lr * sum(grad(W0.astype(np.float64), B0.astype(np.float64), xi, yi)[0] for xi, yi in zip(X, Y)) / 4
    assert not np.allclose(w, unclipped, atol=1e-3)  # the clip did bite


def test_noise_on_the_batch_sum_has_std_z_clip_over_batch():
    """A tiny clip makes the gradients vanish: the step is lr * noise / batch, noise std z * C."""
    spec = ModelSpec("logreg", num_features=64, num_classes=10)
    process = ALGORITHMS["fedavg"].on_arrays(spec.functional_model(), client_lr=1.0, server_lr=1.0,
                                              example_dp=(2.0, 1e-3))
    state = process.initialize()
    before = [np.asarray(w) for w in process.get_model_weights(state).trainable]
    x = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    data = {"x": x, "y": np.arange(20, dtype=np.int32) % 10, "orders": np.arange(20)[None], "batch": np.int64(5),
            "steps": np.int64(1), "skip": np.int64(0), "key": np.asarray([7, 8], np.int64)}
    after = [np.asarray(w) for w in process.get_model_weights(process.next(state, [data]).state).trainable]
    step = np.concatenate([(a - b).ravel() for a, b in zip(after, before)])
    assert step.std() == pytest.approx(2.0 * 1e-3 / 5, rel=0.1)
    assert abs(step.mean()) < 4 * step.std() / math.sqrt(step.size)


def test_fedsgd_under_dp_sgd_is_one_step_on_every_records_clipped_gradient_by_hand():
    """FedSGD's full batch under DP-SGD: every record joins (q = 1), each gradient clipped to C, their noised sum
    over n is the update, applied with step client_lr."""
    clip, lr = 0.8, 0.5
    process = ALGORITHMS["fedsgd"].on_arrays(SPEC.functional_model(), client_lr=lr, server_lr=1.0,
                                              example_dp=(0.0, clip))
    state = process.set_model_weights(process.initialize(), tff().learning.models.ModelWeights([W0, B0], []))
    data = {"x": X, "y": Y, "orders": np.arange(4)[None], "batch": np.int64(4), "steps": np.int64(-1),
            "skip": np.int64(0), "key": np.asarray([3, 4], np.int64)}
    w, b = [np.asarray(v) for v in process.get_model_weights(process.next(state, [data]).state).trainable]
    gw, gb = np.zeros_like(W0, np.float64), np.zeros_like(B0, np.float64)
    for xi, yi in zip(X, Y):
        dw, db = grad(W0.astype(np.float64), B0.astype(np.float64), xi, yi)
        factor = min(1.0, clip / math.sqrt((dw ** 2).sum() + (db ** 2).sum()))
        gw, gb = gw + factor * dw, gb + factor * db
    np.testing.assert_allclose(w, W0 - lr * gw / 4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, B0 - lr * gb / 4, rtol=1e-5, atol=1e-6)


def test_fedsgd_under_dp_sgd_accounts_one_unsampled_step_a_round(heart_dir):
    config = fl.ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4,
                                 algorithm="fedsgd", batch_size=0, rounds=3, client_lr=0.05, dp="example",
                                 noise_multiplier=1.1, clip_norm=1.0, eval_every=1)
    history = fl.run_experiment(config, progress=False)
    table = fl.privacy.site_epsilons(config)
    assert list(table.steps) == [3, 3, 3, 3] and list(table.sampling_probability) == [1.0] * 4
    assert table.epsilon.tolist() == pytest.approx([accounting.epsilon(1.1, 1.0, 3, 1e-5)] * 4)
    assert history["epsilon"].iloc[-1] == pytest.approx(table.epsilon.max())
    assert history["train_loss"].isna().all()  # nothing but the noised update leaves a site


def test_ditto_under_dp_sgd_trains_its_own_models_with_noise_of_their_own():
    """A clip so small that the gradients vanish: the global model and the client's own model each move by their
    noise alone, lr z C / batch in std; drawn from keys of their own, the two are uncorrelated (the same noise in
    both would cancel in their difference and release the records' clipped gradients)."""
    from fedlab.algorithms.algorithms import DittoParams
    from fedlab.algorithms.personal import build_ditto
    from fedlab.rounds.array_training import with_learning_rates

    spec = ModelSpec("logreg", num_features=64, num_classes=10)
    process = build_ditto(spec.functional_model(), client_lr=1.0, server_lr=1.0, params=DittoParams(lam=0.0),
                          example_dp=(2.0, 1e-3))
    state = process.client_state(with_learning_rates(process.initialize(), 1.0), 1)
    before = np.concatenate([np.ravel(w) for w in process.get_model_weights(state).trainable])
    x = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    data = {"x": x, "y": np.arange(20, dtype=np.int32) % 10, "orders": np.arange(20)[None], "batch": np.int64(5),
            "steps": np.int64(1), "skip": np.int64(0), "key": np.asarray([7, 8], np.int64)}
    state = process.next(state, [data], clients=[0]).state
    moved = np.concatenate([np.ravel(w) for w in process.get_model_weights(state).trainable]) - before
    own = np.concatenate([np.ravel(w) for w in process.client_weights(state, 0).trainable]) - before
    for step in (moved, own):
        assert step.std() == pytest.approx(2.0 * 1e-3 / 5, rel=0.1)
    assert abs(np.corrcoef(moved, own)[0, 1]) < 0.15


def test_ditto_under_dp_sgd_accounts_both_passes(heart_dir):
    config = fl.ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4,
                                 algorithm="ditto", batch_size=4, local_steps=5, rounds=2, client_lr=0.05,
                                 dp="example", noise_multiplier=1.1, clip_norm=1.0, eval_every=1)
    table = fl.privacy.site_epsilons(config)
    assert list(table.steps) == [20, 20, 20, 20]  # 2 rounds x 5 steps x 2 passes (the global and the own model)
    for row in table.itertuples():
        assert row.epsilon == pytest.approx(accounting.epsilon(1.1, 4 / row.examples, 20, 1e-5))
    history = fl.run_experiment(config, progress=False)
    assert history["epsilon"].iloc[-1] == pytest.approx(table.epsilon.max())


def test_runs_repeat_exactly_and_epsilon_is_per_site(heart_dir):
    config = fl.ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4,
                                 batch_size=4, local_steps=10, rounds=2, client_lr=0.05, dp="example",
                                 noise_multiplier=1.1, clip_norm=1.0, eval_every=1)
    a, b = fl.run_experiment(config, progress=False), fl.run_experiment(config, progress=False)
    np.testing.assert_array_equal(a["eval_loss"], b["eval_loss"])
    # nothing about the private batches leaves a site but the noised update: no training metrics released
    assert a["train_loss"].isna().all() and a["train_accuracy"].isna().all(), a["train_loss"].tolist()
    unseeded = fl.run_experiment(config.replace(noise_source="unseeded"), progress=False)
    assert not np.array_equal(unseeded["eval_loss"], a["eval_loss"])  # fresh sampling and noise, not the seed's
    table = fl.privacy.site_epsilons(config)
    assert list(table.steps) == [20, 20, 20, 20]
    for row in table.itertuples():
        assert row.epsilon == pytest.approx(accounting.epsilon(1.1, 4 / row.examples, 20, 1e-5))
    assert a["epsilon"].iloc[-1] == pytest.approx(table.epsilon.max())  # the history gives the worst site
    assert table.set_index("site").epsilon.idxmax() == "switzerland"  # the smallest site pays most


def test_with_attackers_the_epsilon_is_the_worst_honest_sites(heart_dir):
    """Attackers are the adversary the guarantee is held against (and train attack_boost times longer than DP-SGD's
    plan): the history's epsilon is the largest over the honest sites. A data seed that makes the smallest site,
    whose epsilon is the largest, an attacker shows the difference."""
    from fedlab.rounds.attacks import attacker_clients

    base = fl.ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4,
                               batch_size=4, local_steps=10, rounds=2, client_lr=0.05, dp="example",
                               noise_multiplier=1.1, clip_norm=1.0, attack="label_flip", attacker_fraction=0.25,
                               attack_boost=3)
    worst = int(fl.privacy.site_epsilons(base.replace(attacker_fraction=0.0)).epsilon.to_numpy().argmax())
    config = next(c for c in (base.replace(data_seed=s) for s in range(50)) if worst in attacker_clients(c))
    history = fl.run_experiment(config, progress=False)
    table = fl.privacy.site_epsilons(config)
    attackers = attacker_clients(config)
    assert table.epsilon.iloc[attackers].isna().all()  # the adversary's own records have no guarantee
    honest = [e for k, e in enumerate(table.epsilon) if k not in attackers]
    assert history["epsilon"].iloc[-1] == pytest.approx(max(honest)) == pytest.approx(table.epsilon.max())
    from fedlab.experiment.clients import Clients, spec_for
    from fedlab.experiment.runner import record_level_site_epsilons

    every_site = record_level_site_epsilons(config, Clients.for_config(config, spec_for(config)), at=[2])[-1]
    assert max(honest) < every_site.max()  # an attacker's own figure would have been the largest
    assert fl.privacy.describe(config).startswith(f"<b>record-level epsilon = {max(honest):.3g}</b>")
    with pytest.raises(fl.ConfigError, match="^attacker_fraction: must leave an honest client"):
        config.replace(attacker_fraction=0.8)  # ceil(0.8 x 4) = 4 attackers of 4


def test_accounting_matches_tensorflow_privacy():
    """TF Privacy's own DP-SGD accountant (Poisson q = batch/n, ceil(epochs n / batch) steps, RDP)."""
    import tensorflow_privacy

    n, batch, z, epochs, delta = 202, 4, 1.1, 30, 1e-5
    theirs, _ = tensorflow_privacy.compute_dp_sgd_privacy(n, batch, z, epochs, delta)
    ours = accounting.epsilon(z, batch / n, math.ceil(epochs * n / batch), delta, "rdp")
    assert ours == pytest.approx(theirs, rel=0.02)
    assert accounting.epsilon(z, batch / n, math.ceil(epochs * n / batch), delta, "pld") < ours


def test_what_record_level_dp_cannot_honour_is_refused(heart_dir):
    with pytest.raises(fl.ConfigError, match="batch_size: must be > 0"):
        fl.ExperimentConfig(dp="example", noise_multiplier=1.0, batch_size=0)
    # what the algorithm computes from the records outside DP-SGD: q-FFL's loss weights, Ditto's own models
    # (q-FFL's loss weights are released noised under a public bound on each record's loss)
    with pytest.raises(fl.ConfigError, match="^loss_clip: must be > 0 with qffl and dp='example': its server weighs"):
        fl.ExperimentConfig(model="logreg", algorithm="qffl", dp="example", noise_multiplier=1.0)
    fl.ExperimentConfig(model="logreg", algorithm="qffl", dp="example", noise_multiplier=1.0, loss_clip=5.0)
    # fine-tuning before scoring trains on the records outside DP-SGD, and its scores are released
    with pytest.raises(fl.ConfigError, match="^finetune_epochs: must be 0 with dp='example': fine-tuning trains on"):
        fl.ExperimentConfig(dp="example", noise_multiplier=1.0, eval_per_client=True, finetune_epochs=2,
                            local_test_fraction=0.2)
    # per-client scores on the training records themselves would be released outside DP-SGD
    with pytest.raises(fl.ConfigError, match="^local_test_fraction: must be > 0 with dp='example' and eval_per_"):
        fl.ExperimentConfig(model="logreg", algorithm="ditto", dp="example", noise_multiplier=1.0,
                            eval_per_client=True)
    fl.ExperimentConfig(model="2nn", algorithm="fedper", dp="example", noise_multiplier=1.0)  # one DP-SGD pass
    too_big = fl.ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4,
                                  batch_size=40, dp="example", noise_multiplier=1.0, rounds=1)
    with pytest.raises(fl.ConfigError, match="batch_size: must be below the smallest client's 31 records"):
        fl.run_experiment(too_big, progress=False)


def test_privacy_cli_at_record_level():
    run = [sys.executable, "-m", "fedlab", "privacy", "--examples", "202", "--batch-size", "4", "--steps", "1500",
           "--delta", "1e-5"]
    out = subprocess.run(run + ["--noise-multiplier", "1.0"], capture_output=True, text=True, timeout=120)
    eps = float(out.stdout.strip().split("=")[1])
    assert eps == pytest.approx(accounting.epsilon(1.0, 4 / 202, 1500, 1e-5), rel=1e-5)
    back = subprocess.run(run + ["--target-epsilon", f"{eps}"], capture_output=True, text=True, timeout=120)
    assert float(back.stdout.strip().split("=")[1]) == pytest.approx(1.0, rel=1e-3)


def _library_threshold_auc(member_loss, nonmember_loss) -> float:
    """TF Privacy's THRESHOLD_ATTACK (tensorflow-empirical-privacy, its ``privacy_tests`` package) on losses."""
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import membership_inference_attack as mia
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack.data_structures import (
        AttackInputData, AttackType, SlicingSpec)

    results = mia.run_attacks(AttackInputData(loss_train=np.asarray(member_loss), loss_test=np.asarray(nonmember_loss)),
                              SlicingSpec(entire_dataset=True, by_class=False),
                              attack_types=(AttackType.THRESHOLD_ATTACK,))
    return float(results.single_attack_results[0].get_auc())


def test_loss_attack_is_tensorflow_privacys_threshold_attack():
    """TF Privacy 0.9's wheel leaves its membership-inference library out; tensorflow-empirical-privacy ships it.
    Its THRESHOLD_ATTACK and fedlab's loss attack give the same AUC, ties between members and non-members included."""
    from fedlab.studies.privacy import membership_inference

    rng = np.random.default_rng(7)
    members = np.round(rng.exponential(0.5, 300), 2)  # rounded: ties between members and non-members
    others = np.round(rng.exponential(0.8, 200), 2)
    library_auc = _library_threshold_auc(members, others)
    assert membership_inference(members, others)["loss_auc"] == pytest.approx(library_auc, abs=1e-12)
    assert 0.55 < library_auc < 0.75  # the two loss distributions differ, and the attack sees it


def test_audit_agrees_with_tensorflow_privacys_library_on_the_same_models():
    """On one DP-SGD run's final model and its reference model: fedlab's loss attack equals the library's threshold
    attack, and its calibrated attack the library's score offset from an "out" reference (``advanced_mia``)."""
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import advanced_mia

    config = fl.ExperimentConfig(dataset="digits", num_clients=5, clients_per_round=5, rounds=3, batch_size=8,
                                 dp="example", noise_multiplier=0.5, clip_norm=1.0)
    history = fl.run_experiment(config, progress=False)
    target_in, target_out, reference_in, reference_out = fl.privacy.membership_losses(config, history,
                                                                                      reference_epochs=3)
    ours = fl.privacy.membership_inference(target_in, target_out, reference_in, reference_out)
    assert ours["loss_auc"] == pytest.approx(_library_threshold_auc(target_in, target_out), abs=1e-9)

    def offset(target, reference):  # one reference model ("out" for every example), one statistic per example
        return advanced_mia.compute_score_offset(target[:, None], None, [np.array([[r]]) for r in reference],
                                                 option="out").ravel()

    calibrated = _library_threshold_auc(offset(target_in, reference_in), offset(target_out, reference_out))
    assert ours["calibrated_auc"] == pytest.approx(calibrated, abs=1e-9)

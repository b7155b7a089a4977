"""Privacy beyond the accounting: what a DP config promises, and what an attacker learns.

:func:`describe` puts a config's epsilon in one line (for panels);
:func:`audit_membership` runs a membership-inference attack against a run's
final global model; :func:`privacy_utility` tabulates accuracy, epsilon and
the attack's success over a sweep. The DP mechanism itself is an aggregator
(:func:`fedlab.aggregation.dp_aggregator`), its accounting
:mod:`fedlab.accounting`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .accounting import epsilon
from .clients import Clients, client_arrays_for, dataset_for, plan_size, spec_for
from .config import RECORD_LEVEL
from .evaluation import Evaluator, per_example_loss
from .runner import final_weights, record_level_site_epsilons, run_experiment
from .sampling import Scheduler


def describe(config) -> str:
    """One line for a DP config: epsilon after its rounds at its delta (accounting only, no training)."""
    if config.dp == "none" or config.noise_multiplier == 0:
        return "no differential privacy (epsilon = infinity)"
    if config.dp == RECORD_LEVEL:
        table = site_epsilons(config)
        worst = table.loc[table.epsilon.idxmax()]
        return (f"<b>record-level epsilon = {worst.epsilon:.3g}</b> at delta = {config.effective_delta:.1e} per site "
                f"after {config.rounds} rounds (worst site: {worst.site}, {int(worst.examples)} records, "
                f"q = {worst.sampling_probability:.3g}, {int(worst.steps)} steps)")
    eps = epsilon(config.noise_multiplier, config.sampling_probability, config.rounds, config.effective_delta,
                  config.accountant)
    return (f"<b>epsilon = {eps:.3g}</b> at delta = {config.effective_delta:.1e} after {config.rounds} rounds "
            f"(q = {config.sampling_probability:.3g}, {config.accountant.upper()})")


def site_epsilons(config):
    """Record-level DP (``dp="example"``): each site's records, sampling probability, DP-SGD steps and epsilon
    after the config's rounds, at ``config.effective_delta`` per site."""
    import pandas as pd

    if config.dp != RECORD_LEVEL:
        raise ValueError(f"dp: site epsilons are for record-level DP (dp='example'), got {config.dp!r}")
    spec = spec_for(config)
    clients = Clients.for_config(config, spec)
    scheduler = Scheduler(config, [len(x) for x in clients.x], spec.tensor_sizes(), clients.attackers)
    eps = record_level_site_epsilons(config, clients, at=[config.rounds], scheduler=scheduler)[-1]
    used = scheduler.participation().sum(axis=0)  # the rounds whose update each site sent
    data = dataset_for(config)
    names = data.site_names if data.site_names is not None and len(data.site_names) == config.num_clients \
        else [str(c) for c in range(config.num_clients)]
    rows = []
    for k, x in enumerate(clients.x):
        n = len(x)
        epochs, batch, cap = plan_size(n, config)
        per_round = cap if cap >= 0 else epochs * -(-n // batch)
        rows.append({"site": names[k], "examples": n, "sampling_probability": min(1.0, config.batch_size / n),
                     "steps": per_round * int(used[k]), "epsilon": float(eps[k]), "delta": config.effective_delta})
    return pd.DataFrame(rows)


def _auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, nonmember_scores]))


def membership_inference(target_loss_members: np.ndarray, target_loss_nonmembers: np.ndarray,
                         reference_loss_members: Optional[np.ndarray] = None,
                         reference_loss_nonmembers: Optional[np.ndarray] = None) -> dict[str, float]:
    """Attack AUCs (0.5 = the attacker learns nothing about membership).

    ``loss_auc``: the loss-threshold attack (Yeom et al. 2018): lower loss means
    member. ``calibrated_auc``: difficulty calibration (Watson et al. 2022,
    arXiv:2111.08440): the target's loss minus a reference model's loss on the
    same example, which removes how hard the example is for any model; stronger
    at the same cost. Needs the reference losses.
    """
    out = {"loss_auc": _auc(-np.asarray(target_loss_members), -np.asarray(target_loss_nonmembers))}
    if reference_loss_members is not None and reference_loss_nonmembers is not None:
        out["calibrated_auc"] = _auc(np.asarray(reference_loss_members) - np.asarray(target_loss_members),
                                     np.asarray(reference_loss_nonmembers) - np.asarray(target_loss_nonmembers))
    return out


def membership_losses(config, history, *, reference_epochs: int = 20, seed: int = 0):
    """The per-example losses a membership-inference audit of a run's final global model uses.

    Returns ``(target_members, target_nonmembers, reference_members, reference_nonmembers)``.
    Members: training examples as the clients hold them; non-members: half of
    the held-out test set. The other half trains the reference model for the
    calibrated attack (same architecture, Adam, ``reference_epochs``). Members
    are subsampled to as many as there are non-members.
    """
    import tensorflow as tf

    data = dataset_for(config)
    spec = spec_for(config, data)
    xs, ys = client_arrays_for(config)
    x_mem, y_mem = np.concatenate(xs), np.concatenate(ys)
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(len(data.x_test))
    ref_idx, out_idx = order[: len(order) // 2], order[len(order) // 2:]
    mem_idx = rng.choice(len(x_mem), size=min(len(out_idx), len(x_mem)), replace=False)

    target = Evaluator(spec).load(final_weights(history))
    tf.keras.utils.set_random_seed(seed)
    reference = spec.build_keras(seed + 1)
    reference.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=spec.loss())
    reference.fit(data.x_test[ref_idx], spec.prepare_labels(data.y_test[ref_idx]), epochs=reference_epochs,
                  batch_size=32, verbose=0)

    def losses(model_logits, x, y):
        return per_example_loss(model_logits(x), y, spec.binary)

    ref_logits = lambda x: reference(x, training=False).numpy()  # noqa: E731
    return (losses(target.logits, x_mem[mem_idx], y_mem[mem_idx]),
            losses(target.logits, data.x_test[out_idx], data.y_test[out_idx]),
            losses(ref_logits, x_mem[mem_idx], y_mem[mem_idx]),
            losses(ref_logits, data.x_test[out_idx], data.y_test[out_idx]))


def audit_membership(config, history, *, reference_epochs: int = 20, seed: int = 0) -> dict[str, float]:
    """Membership inference against a run's final global model (:func:`membership_losses`, then
    :func:`membership_inference`). The loss attack is TF Privacy's THRESHOLD_ATTACK and the calibrated one its
    score offset from an "out" reference model (``tests/test_record_level_dp.py`` runs the library beside it)."""
    target_in, target_out, reference_in, reference_out = membership_losses(
        config, history, reference_epochs=reference_epochs, seed=seed)
    result = membership_inference(target_in, target_out, reference_in, reference_out)
    result.update(num_members=int(len(target_in)), num_nonmembers=int(len(target_out)))
    return result


def privacy_utility(configs, *, results_cache=None, audit: bool = True, reference_epochs: int = 20):
    """One row per config: final accuracy, epsilon, and (``audit``) the attacks' AUCs.

    Runs come from ``results_cache`` when they are there; columns include
    noise_multiplier, clients_per_round, epsilon, eval_accuracy, attack_auc
    (the loss-threshold attack) and calibrated_attack_auc.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for config in tqdm(configs, desc="privacy-utility"):
        history = run_experiment(config, results_cache=results_cache, progress=False)
        last = history.dropna(subset=["eval_accuracy"]).iloc[-1]
        row = {**config.experiment_dict(), "eval_accuracy": float(last["eval_accuracy"]),
               "epsilon": (float(last["epsilon"]) if "epsilon" in history else math.inf)}
        if config.dp != "none" and config.noise_multiplier == 0:
            row["epsilon"] = math.inf
        if audit:
            result = audit_membership(config, history, reference_epochs=reference_epochs, seed=config.seed)
            row.update(attack_auc=result["loss_auc"], calibrated_attack_auc=result["calibrated_auc"])
        rows.append(row)
    return pd.DataFrame(rows)

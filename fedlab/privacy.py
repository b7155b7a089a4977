"""User-level differential privacy: accounting, DP aggregators, and an empirical audit.

Accounting uses Google's ``dp-accounting`` library. A DP-FedAvg round is a
Poisson-subsampled Gaussian mechanism: each client joins with probability
``q = clients_per_round / num_clients``, its update is clipped to L2 norm C,
and Gaussian noise of standard deviation ``z * C`` is added to the sum
(McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", arXiv:1710.06963). Epsilon is reported at ``delta`` for the
add-or-remove-one-client relation.

The mechanism itself is TFF's ``DifferentiallyPrivateFactory`` (fixed clipping,
or adaptive clipping to a target quantile, Andrew et al. 2021,
arXiv:1905.03871). TFF 0.87 draws the noise from an unseeded generator, so DP
runs repeat exactly except for the noise; that is also what a real deployment
needs (noise predictable from a seed protects nothing).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

ACCOUNTANTS = ("rdp", "pld")


class PrivacyParameterError(ValueError):
    """A privacy parameter is outside what is allowed; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check(noise_multiplier: Optional[float], sampling_probability: float, rounds: int, delta: float,
           accountant: str) -> None:
    if noise_multiplier is not None and not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise PrivacyParameterError("noise_multiplier", f"must be >= 0, got {noise_multiplier!r}")
    if not 0 < sampling_probability <= 1:
        raise PrivacyParameterError("sampling_probability",
                                    f"must be in (0, 1] (clients_per_round <= num_clients), got {sampling_probability!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise PrivacyParameterError("rounds", f"must be an integer >= 1, got {rounds!r}")
    if not 0 < delta < 1:
        raise PrivacyParameterError("delta", f"must be in (0, 1), got {delta!r}")
    if accountant not in ACCOUNTANTS:
        raise PrivacyParameterError("accountant", f"must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")


def _accountant(name: str):
    import dp_accounting

    if name == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    return dp_accounting.pld.PLDAccountant()


def _round_event(noise_multiplier: float, sampling_probability: float):
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier))


def epsilon(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon after ``rounds`` Poisson-sampled Gaussian rounds (inf when there is no noise)."""
    _check(noise_multiplier, sampling_probability, rounds, delta, accountant)
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant)
    acc.compose(_round_event(noise_multiplier, sampling_probability), int(rounds))
    return float(acc.get_epsilon(delta))


def epsilon_by_round(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
                     accountant: str = "rdp", at: Optional[Sequence[int]] = None) -> np.ndarray:
    """Epsilon after each of rounds 1..``rounds`` (NaN for rounds not in ``at``, when given).

    RDP composes additively, so round r's RDP is r times one round's and
    every round costs one conversion. PLD has no such shortcut (about a second
    per round asked for), so pass ``at`` to ask for a few rounds only.
    """
    _check(noise_multiplier, sampling_probability, rounds, delta, accountant)
    if noise_multiplier == 0:
        return np.full(rounds, math.inf)
    wanted = set(range(1, rounds + 1)) if at is None else {int(r) for r in at}
    out = np.full(rounds, np.nan)
    if accountant == "rdp":
        acc = _accountant(accountant)
        event = _round_event(noise_multiplier, sampling_probability)
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        acc.compose(event, 1)
        orders, one_round = acc._orders, acc._rdp  # noqa: SLF001 - the accountant's own RDP curve
        for r in sorted(wanted):
            out[r - 1] = compute_epsilon(orders, r * one_round, delta)[0]
        return out
    for r in sorted(wanted):  # a fresh self-composition per round is far faster than composing one by one
        out[r - 1] = epsilon(noise_multiplier, sampling_probability, r, delta, accountant)
    return out


def noise_multiplier_for(target_epsilon: float, sampling_probability: float, rounds: int, delta: float,
                         accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` is at most ``target_epsilon``."""
    import dp_accounting

    _check(None, sampling_probability, rounds, delta, accountant)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyParameterError("target_epsilon", f"must be > 0, got {target_epsilon!r}")
    def calibrate(name, bracket):
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(name),
            lambda z: dp_accounting.SelfComposedDpEvent(_round_event(z, sampling_probability), int(rounds)),
            target_epsilon, delta, bracket_interval=bracket, tol=1e-4,
        ))

    z_rdp = calibrate("rdp", dp_accounting.LowerEndpointAndGuess(1e-3, 1.0))
    if accountant == "rdp":
        return z_rdp
    # PLD is tighter, so its z lies below RDP's; a tiny z would make PLD's grid huge.
    return calibrate("pld", dp_accounting.ExplicitBracketInterval(z_rdp / 4, z_rdp))


def describe(config) -> str:
    """One line for a DP config: epsilon after its rounds at its delta (accounting only, no training)."""
    if config.dp == "none" or config.noise_multiplier == 0:
        return "no differential privacy (epsilon = infinity)"
    eps = epsilon(config.noise_multiplier, config.sampling_probability, config.rounds, config.effective_delta,
                  config.accountant)
    return (f"<b>epsilon = {eps:.3g}</b> at delta = {config.effective_delta:.1e} after {config.rounds} rounds "
            f"(q = {config.sampling_probability:.3g}, {config.accountant.upper()})")


# The mechanism -------------------------------------------------------------------


def dp_aggregator(*, mode: str, noise_multiplier: float, clients_per_round: float, clip_norm: float,
                  target_quantile: float = 0.5):
    """TFF's user-level DP mean: clip each client's update, add Gaussian noise z*C, divide by the expected K."""
    from .runtime import tff

    factory = tff().aggregators.DifferentiallyPrivateFactory
    if mode == "fixed":
        return factory.gaussian_fixed(noise_multiplier=float(noise_multiplier),
                                      clients_per_round=float(clients_per_round), clip=float(clip_norm))
    if mode == "adaptive":
        # The clipped-count query shares the budget: TFF raises the update noise to
        # (z^-2 - (2 s)^-2)^-1/2 for count noise s. Its default s = 0.05 K leaves nothing
        # for small K; s >= z caps the update noise at z / sqrt(3/4), about 1.15 z.
        count_stddev = max(0.05 * float(clients_per_round), float(noise_multiplier))
        return factory.gaussian_adaptive(noise_multiplier=float(noise_multiplier),
                                         clients_per_round=float(clients_per_round),
                                         initial_l2_norm_clip=float(clip_norm),
                                         target_unclipped_quantile=float(target_quantile),
                                         clipped_count_stddev=count_stddev)
    raise ValueError(f"dp: must be 'fixed' or 'adaptive', got {mode!r}")


def poisson_sample(num_clients: int, sampling_probability: float, rng: np.random.Generator) -> np.ndarray:
    """Clients that join a round, each independently with ``sampling_probability`` (sorted ids)."""
    return np.flatnonzero(rng.random(num_clients) < sampling_probability)


# The audit -------------------------------------------------------------------------


def _auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, nonmember_scores]))


def per_example_loss(logits: np.ndarray, y: np.ndarray, binary: bool) -> np.ndarray:
    """Cross-entropy of each example (the attack's signal)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if binary:
        z = logits.reshape(-1)
        return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y]


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


def audit_membership(config, history, *, reference_epochs: int = 20, seed: int = 0) -> dict[str, float]:
    """Membership inference against a run's final global model.

    Members: training examples as the clients hold them; non-members: half of
    the held-out test set. The other half trains the reference model for the
    calibrated attack (same architecture, Adam, ``reference_epochs``). Members
    are subsampled to as many as there are non-members.
    """
    import tensorflow as tf

    from .runner import _Evaluator, client_arrays_for, dataset_for, spec_for

    data = dataset_for(config)
    spec = spec_for(config, data)
    xs, ys = client_arrays_for(config)
    x_mem, y_mem = np.concatenate(xs), np.concatenate(ys)
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(len(data.x_test))
    ref_idx, out_idx = order[: len(order) // 2], order[len(order) // 2:]
    mem_idx = rng.choice(len(x_mem), size=min(len(out_idx), len(x_mem)), replace=False)

    target = _Evaluator(spec).load_final(history)
    tf.keras.utils.set_random_seed(seed)
    reference = spec.build_keras(seed + 1)
    reference.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=spec.loss())
    reference.fit(data.x_test[ref_idx], spec.prepare_labels(data.y_test[ref_idx]), epochs=reference_epochs,
                  batch_size=32, verbose=0)

    def losses(model_logits, x, y):
        return per_example_loss(model_logits(x), y, spec.binary)

    ref_logits = lambda x: reference(x, training=False).numpy()  # noqa: E731
    result = membership_inference(
        losses(target.logits, x_mem[mem_idx], y_mem[mem_idx]),
        losses(target.logits, data.x_test[out_idx], data.y_test[out_idx]),
        losses(ref_logits, x_mem[mem_idx], y_mem[mem_idx]),
        losses(ref_logits, data.x_test[out_idx], data.y_test[out_idx]),
    )
    result.update(num_members=int(len(mem_idx)), num_nonmembers=int(len(out_idx)))
    return result


def privacy_utility(configs, *, results_cache=None, audit: bool = True, reference_epochs: int = 20):
    """One row per config: final accuracy, epsilon, and (``audit``) the attacks' AUCs.

    Runs come from ``results_cache`` when they are there; columns include
    noise_multiplier, clients_per_round, epsilon, eval_accuracy, attack_auc
    (the loss-threshold attack) and calibrated_attack_auc.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .runner import run_experiment

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

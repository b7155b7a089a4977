"""Privacy beyond the accounting: what a DP config promises, and what an attacker learns.

:func:`describe` puts a config's epsilon in one line (for panels);
:func:`audit_membership` runs a membership-inference attack against a run's
final global model; :func:`privacy_utility` tabulates accuracy, epsilon and
the attack's success over a sweep. The DP mechanism itself is an aggregator
(:func:`fedlab.aggregators.aggregation.dp_aggregator`), its accounting
:mod:`fedlab.protection.accounting`.
"""

from __future__ import annotations

import collections
import math
from typing import Optional

import numpy as np

from ..protection.accounting import ddp_epsilon_by_round, epsilon, general_bound_epsilon
from ..aggregators.aggregation import accounting_noise_multiplier, ddp_parameters_of, distributed_dp
from ..experiment.clients import Clients, client_arrays_for, dataset_for, dp_sgd_steps, spec_for
from ..experiment.config import RECORD_LEVEL
from ..experiment.evaluation import Evaluator, per_example_loss
from ..experiment.pool import spread
from ..experiment.runner import evaluated_rows, final_weights, record_level_site_epsilons, run_experiment
from ..experiment.sampling import Scheduler
from ..data.data import DATASETS
from ..data.tasks import TASKS
from ..models.models import train_keras
from ..core.validation import ConfigError


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
    how = f"q = {config.sampling_probability:.3g}, {config.accountant.upper()}"
    if distributed_dp(config):
        params = ddp_parameters_of(config, spec_for(config).num_parameters())
        how = (f"q = {config.sampling_probability:.3g}, RDP of the Skellam sum; noise "
               f"{params.effective_noise_multiplier:.3g} times the rounded update's bound")
    return (f"<b>epsilon = {user_level_epsilon(config):.3g}</b> at delta = {config.effective_delta:.1e} after "
            f"{config.rounds} rounds ({how})")


def user_level_epsilon(config, bound: str = "tightest") -> float:
    """Epsilon of a user-level DP config after its rounds at its delta (accounting only, no training): central DP's
    Poisson-sampled Gaussian at z relative to the sum's sensitivity (a secure sum's rounding adds to clip_norm,
    over-selection doubles it: :func:`fedlab.aggregators.aggregation.dp_sensitivity`), or distributed DP's Skellam
    sum; infinite without noise.

    ``bound``: ``"tightest"``, what a run reports (central DP: dp-accounting's exact subsampled Gaussian; distributed
    DP: Zhu and Wang's general subsampling bound, the only one it has); ``"general"``, central DP under that general
    bound too (:func:`fedlab.protection.accounting.general_bound_epsilon`), to set beside distributed DP's: the two
    bounds differ by more than the mechanisms do.
    """
    if not config.user_level_dp:
        raise ConfigError("dp", f"must be a user-level DP mode for user_level_epsilon, got {config.dp!r}")
    if bound not in ("tightest", "general"):
        raise ConfigError("bound", f"must be 'tightest' or 'general', got {bound!r}")
    if config.noise_multiplier == 0:
        return float("inf")
    if distributed_dp(config):
        params = ddp_parameters_of(config, spec_for(config).num_parameters())
        return float(ddp_epsilon_by_round(params, config.sampling_probability, config.rounds,
                                          config.effective_delta, displaced=config.over_selection > 1)[-1])
    z = (accounting_noise_multiplier(config, spec_for(config).num_parameters())  # the model's size matters only here
         if config.secure_aggregation or config.over_selection > 1 else config.noise_multiplier)
    if bound == "general":
        return general_bound_epsilon(z, config.sampling_probability, config.rounds, config.effective_delta)
    return float(epsilon(z, config.sampling_probability, config.rounds, config.effective_delta, config.accountant))


def site_epsilons(config):
    """Record-level DP (``dp="example"``): each site's records, sampling probability, DP-SGD steps (with what the
    algorithm releases besides, counted as steps: q-FFL's noised loss) and epsilon
    after the config's rounds, at ``config.effective_delta`` per site (NaN for an attacker: the adversary the
    guarantee is held against, whose own records it does not cover)."""
    import pandas as pd

    if config.dp != RECORD_LEVEL:
        raise ValueError(f"dp: site epsilons are for record-level DP (dp='example'), got {config.dp!r}")
    spec = spec_for(config)
    clients = Clients.for_config(config, spec)
    scheduler = Scheduler(config, [len(x) for x in clients.x], spec.tensor_sizes(), clients.attackers)
    eps = record_level_site_epsilons(config, clients, at=[config.rounds], scheduler=scheduler)[-1]
    eps[sorted(clients.attackers)] = np.nan  # attackers are the adversary: their own records have no guarantee
    used = scheduler.participation().sum(axis=0)  # the rounds whose update each site sent
    data = dataset_for(config)
    names = data.site_names if data.site_names is not None and len(data.site_names) == config.num_clients \
        else [str(c) for c in range(config.num_clients)]
    rows = []
    for k, x in enumerate(clients.x):
        n = len(x)
        per_round, batch = dp_sgd_steps(n, config)
        rows.append({"site": names[k], "examples": n, "sampling_probability": min(1.0, batch / n),
                     "steps": per_round * int(used[k]), "epsilon": float(eps[k]), "delta": config.effective_delta})
    return pd.DataFrame(rows)


def _auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, nonmember_scores]))


AUDIT_FPRS = (0.01, 0.001)  # Carlini et al. 2022: an attack's worth is its true-positive rate at a low false-positive rate
AUDIT_RESAMPLES = 1000


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """The attack's true-positive rate at false-positive rate ``fpr`` (a higher score means "member"): the share
    of members scored above the threshold that lets at most ``fpr`` of the non-members through. NaN when there
    are fewer than ``1 / fpr`` non-members: such a rate cannot be measured on them."""
    nonmembers = np.sort(np.asarray(nonmember_scores, dtype=float))[::-1]
    if len(nonmembers) < 1 / fpr:
        return float("nan")
    allowed = int(np.floor(fpr * len(nonmembers)))  # non-members that may score above the threshold
    threshold = nonmembers[allowed] if allowed < len(nonmembers) else -np.inf
    return float(np.mean(np.asarray(member_scores, dtype=float) > threshold))


def attack_report(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, confidence: float = 0.95,
                  seed: int = 0) -> dict[str, float]:
    """An attack as the field reports it (Carlini et al. 2022): AUC with a percentile-bootstrap interval (members
    and non-members resampled separately, ``scipy.stats.bootstrap``), and the true-positive rate at 1 % and 0.1 %
    false positives (NaN where there are too few non-members to measure it).

    An AUC whose interval holds 0.5 is what an attacker who learns nothing gets by chance with this many
    examples; one below 0.5 with an interval below 0.5 means members score *worse* than non-members (e.g. a
    model less sure on its training data than on held-out data, or non-members drawn from an easier part of
    the data), which is no evidence of privacy: the flipped attack would do as well.
    """
    from scipy import stats

    members, nonmembers = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)

    def auc(m, n, axis=-1):  # Mann-Whitney U / (n_m n_n): the chance a member outscores a non-member, ties half
        m, n = np.asarray(m), np.asarray(n)
        ranks = stats.rankdata(np.concatenate([m, n], axis=-1), axis=-1)
        k = m.shape[-1]
        return (ranks[..., :k].sum(axis=-1) - k * (k + 1) / 2) / (k * n.shape[-1])

    result = stats.bootstrap((members, nonmembers), auc, paired=False, vectorized=True, batch=100,
                             n_resamples=AUDIT_RESAMPLES, confidence_level=confidence, method="percentile",
                             random_state=np.random.default_rng(seed))
    out = {"auc": float(auc(members, nonmembers)), "auc_ci_low": float(result.confidence_interval.low),
           "auc_ci_high": float(result.confidence_interval.high)}
    for fpr in AUDIT_FPRS:
        out[f"tpr_at_{fpr:g}_fpr"] = tpr_at_fpr(members, nonmembers, fpr)
    return out


def membership_inference(target_loss_members: np.ndarray, target_loss_nonmembers: np.ndarray,
                         reference_loss_members: Optional[np.ndarray] = None,
                         reference_loss_nonmembers: Optional[np.ndarray] = None, *, seed: int = 0) -> dict[str, float]:
    """Attack AUCs (0.5 = the attacker learns nothing about membership), each with its 95 % bootstrap interval
    and its true-positive rate at 1 % and 0.1 % false positives (:func:`attack_report`).

    ``loss_*``: the loss-threshold attack (Yeom et al. 2018): lower loss means
    member. ``calibrated_*``: difficulty calibration (Watson et al. 2022,
    arXiv:2111.08440): the target's loss minus a reference model's loss on the
    same example, which removes how hard the example is for any model. Needs the
    reference losses. Neither is guaranteed to be the stronger on a given model.
    """
    report = attack_report(-np.asarray(target_loss_members), -np.asarray(target_loss_nonmembers), seed=seed)
    out = {f"loss_{k}": v for k, v in report.items()}
    if reference_loss_members is not None and reference_loss_nonmembers is not None:
        report = attack_report(np.asarray(reference_loss_members) - np.asarray(target_loss_members),
                               np.asarray(reference_loss_nonmembers) - np.asarray(target_loss_nonmembers), seed=seed)
        out.update({f"calibrated_{k}": v for k, v in report.items()})
    return out


def membership_losses(config, history, *, reference_epochs: int = 20, seed: int = 0):
    """The per-example losses a membership-inference audit of a run's final global model uses.

    Returns ``(target_members, target_nonmembers, reference_members, reference_nonmembers)``.
    Members: training examples as the clients hold them; non-members: half of
    the held-out test set. The other half trains the reference model for the
    calibrated attack (same architecture, Adam, ``reference_epochs``; trained once per seed and held-out
    examples in this process, and shared by the audits of other runs). Members are subsampled to as many as there
    are non-members.
    """
    data = dataset_for(config)
    spec = spec_for(config, data)
    if data.task != "classification":
        raise ConfigError("dataset", f"a membership audit scores each record by its own loss; {config.dataset}'s "
                                     f"{spec.task_entry.loss!r} loss couples the records of a batch and has none")
    xs, ys = client_arrays_for(config)
    x_mem, y_mem = np.concatenate(xs), np.concatenate(ys)
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(len(data.x_test))
    ref_idx, out_idx = order[: len(order) // 2], order[len(order) // 2:]
    mem_idx = rng.choice(len(x_mem), size=min(len(out_idx), len(x_mem)), replace=False)

    target = Evaluator(spec).load(final_weights(history))
    reference = _reference_model(spec, data.x_test[ref_idx], data.y_test[ref_idx], seed=seed,
                                 epochs=reference_epochs)

    def losses(model_logits, x, y):
        return per_example_loss(model_logits(x), y, spec.binary)

    ref_logits = lambda x: reference(x, training=False).numpy()  # noqa: E731
    return (losses(target.logits, x_mem[mem_idx], y_mem[mem_idx]),
            losses(target.logits, data.x_test[out_idx], data.y_test[out_idx]),
            losses(ref_logits, x_mem[mem_idx], y_mem[mem_idx]),
            losses(ref_logits, data.x_test[out_idx], data.y_test[out_idx]))


_REFERENCE_MODELS: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()  # the last few, by key
_REFERENCES_KEPT = 8


def _reference_model(spec, x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int):
    """The calibrated attack's "out" reference model, trained on held-out examples ``x, y`` (Adam, batch 32,
    ``epochs``), once per model, examples, seed and epochs in this process: it depends on nothing of the audited
    run, so the audits of a sweep's runs at one seed share it (notebook 03's 54 audited runs train three, one per
    seed). Keyed by the examples' digest, the model's spec and what a notebook may register again under the same
    name (its builder, task, loss); the last few are kept."""
    import hashlib

    task = spec.task_entry
    key = (spec, spec.builder, task, task.loss_entry, x.shape, hashlib.sha256(x.tobytes()).hexdigest(),
           hashlib.sha256(y.tobytes()).hexdigest(), seed, epochs)
    if key in _REFERENCE_MODELS:
        _REFERENCE_MODELS.move_to_end(key)
        return _REFERENCE_MODELS[key]
    model = train_keras(spec, x, y, seed=seed, model_seed=seed + 1, epochs=epochs, batch_size=32, lr=1e-3)
    _REFERENCE_MODELS[key] = model
    while len(_REFERENCE_MODELS) > _REFERENCES_KEPT:
        _REFERENCE_MODELS.popitem(last=False)
    return model


def audit_membership(config, history, *, reference_epochs: int = 20, seed: int = 0) -> dict[str, float]:
    """Membership inference against a run's final global model (:func:`membership_losses`, then
    :func:`membership_inference`). The loss attack is TF Privacy's THRESHOLD_ATTACK and the calibrated one its
    score offset from an "out" reference model (``tests/test_record_level_dp.py`` runs the library beside it)."""
    target_in, target_out, reference_in, reference_out = membership_losses(
        config, history, reference_epochs=reference_epochs, seed=seed)
    result = membership_inference(target_in, target_out, reference_in, reference_out, seed=seed)
    result.update(num_members=int(len(target_in)), num_nonmembers=int(len(target_out)))
    return result


def audit_columns(result: dict) -> dict:
    """:func:`audit_membership`'s result as table columns: ``attack_*`` (the loss-threshold attack: ``auc``, its
    interval ``auc_ci_low``/``auc_ci_high``, ``tpr_at_0.01_fpr``, ``tpr_at_0.001_fpr``), ``calibrated_attack_*``,
    ``members`` and ``nonmembers`` (how many examples each side of the audit had)."""
    out = {}
    for prefix, column in (("loss_", "attack_"), ("calibrated_", "calibrated_attack_")):
        out.update({column + k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)})
    out.update(members=result["num_members"], nonmembers=result["num_nonmembers"])
    return out


AUDIT_MEASURES = ("auc",) + tuple(f"tpr_at_{fpr:g}_fpr" for fpr in AUDIT_FPRS)
AUDIT_ATTACKS = {"attack_": "loss threshold", "calibrated_attack_": "calibrated"}  # column prefix -> name


def audit_summary(table, by=("clients_per_round", "noise_multiplier"), *,
                  reference: Optional[str] = "loss threshold"):
    """:func:`privacy_utility`'s audits over seeds, as the field reports them (Carlini et al. 2022).

    One row per setting (``by``), attack (``method``: ``loss threshold``, ``calibrated``) and measure
    (``metric``: ``auc``, ``tpr_at_0.01_fpr``, ``tpr_at_0.001_fpr``): the mean over seeds, its 95 % t-interval
    (``ci_low``, ``ci_high``; each run's own bootstrap interval of its AUC stays in ``table``), ``n`` the seeds
    where the measure is defined (a true-positive rate at 0.1 % false positives needs 1,000 non-members),
    ``seeds``, ``epsilon``, and the fewest ``members`` and ``nonmembers`` a run's audit had. With ``reference``
    (an attack), the other attack's difference from it, paired on the same model and examples (``diff``,
    ``diff_ci_low``, ``diff_ci_high``, ``n_pairs``, ``p_value``): what says which attack finds more.

    A table that lacks a column this needs (``by``, ``seed``, ``epsilon``, ``members``, ``nonmembers``, or one of
    the measures of an attack it holds) is refused in one line that names the column.
    """
    import pandas as pd

    from .comparison import summarize_scores

    by = [by] if isinstance(by, str) else list(by)
    attacks = {prefix: name for prefix, name in AUDIT_ATTACKS.items()
               if any(prefix + m in table.columns for m in AUDIT_MEASURES)}
    if not attacks:
        raise ValueError("table: has no audit columns (attack_auc, ...); run privacy_utility with audit=True")
    # every measure of each attack the table holds, and what each setting needs: refused in one line, named
    needed = [*by, "seed", "epsilon", "members", "nonmembers", *(p + m for p in attacks for m in AUDIT_MEASURES)]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"table: has no column {missing[0]!r}; an audit summary needs {', '.join(needed)} "
                         f"(privacy_utility's table with audit=True)")
    frames = [table[[*by, "seed", *(prefix + m for m in AUDIT_MEASURES)]]
              .rename(columns={prefix + m: m for m in AUDIT_MEASURES}).assign(method=name)
              for prefix, name in attacks.items()]
    runs = pd.concat(frames, ignore_index=True)
    if reference is not None and reference not in set(runs["method"]):
        reference = None  # one attack only: nothing to pair with
    rows = []
    for key, group in runs.groupby(by, dropna=False, sort=False):
        key = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        setting = table.loc[(table[by] == pd.Series(key)).all(axis=1)]
        summary = summarize_scores(group, reference=reference, metrics=list(AUDIT_MEASURES))
        rows.append(summary.drop(columns="sites").assign(
            **key, epsilon=float(setting["epsilon"].iloc[0]), seeds=int(setting["seed"].nunique()),
            members=int(setting["members"].min()), nonmembers=int(setting["nonmembers"].min())))
    out = pd.concat(rows, ignore_index=True)
    first = [*by, "epsilon", "method", "metric", "mean", "ci_low", "ci_high", "n", "seeds", "members", "nonmembers"]
    return out[first + [c for c in out.columns if c not in first]]


def privacy_utility(configs, *, results_cache=None, audit: bool = True, reference_epochs: int = 20):
    """One row per config: final accuracy, epsilon, and (``audit``) the attacks' AUCs.

    Runs come from ``results_cache`` when they are there; columns include
    noise_multiplier, clients_per_round, epsilon, eval_accuracy and the audit's
    :func:`audit_columns` (``attack_auc`` for the loss-threshold attack, with its
    interval and true-positive rates at low false-positive rates, the same for
    ``calibrated_attack_*``, and the number of members and non-members).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    configs = list(configs)
    with spread(configs, results_cache) as done:
        histories = [run_experiment(config, results_cache=done.cache, progress=False) for config in configs]
    for config, history in zip(tqdm(configs, desc="privacy-utility"), histories):
        last = evaluated_rows(history).iloc[-1]
        metric = f"eval_{TASKS[DATASETS[config.dataset].task].eval_metric}"
        row = {**config.experiment_dict(), metric: float(last[metric]),
               "epsilon": (float(last["epsilon"]) if "epsilon" in history else math.inf)}
        if config.dp != "none" and config.noise_multiplier == 0:
            row["epsilon"] = math.inf
        if audit:
            row.update(audit_columns(audit_membership(config, history, reference_epochs=reference_epochs,
                                                      seed=config.seed)))
        rows.append(row)
    return pd.DataFrame(rows)

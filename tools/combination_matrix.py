"""Which pairs of settings a researcher combines does fedlab accept, and do the accepted ones run? (issue #33)

One setting from each of ten groups (algorithms, DP, secure aggregation, compression, robust rules, attacks,
systems, frozen layers, fine-tuning, workers), every pair of settings from two different groups, each made into
an ``ExperimentConfig``: accepted, or refused with its one line. A refusal is either **impossible** (listed in
:data:`IMPOSSIBLE` with the field it names and the reason it holds in any system), a pair that **needs** a public
value the config must give (:data:`NEEDS`: the field its refusal names, the setting with which it runs), or one of
fedlab's **limits** (listed in :data:`LIMITS`, the work left for issue #33); ``tests/test_combinations.py`` fails on
a refusal in no list, on a listed pair that is accepted, and on an accepted pair (or a pair given the value it needs)
that crashes in two rounds.

    python tools/combination_matrix.py            # counts and refusals by reason; build/combinations.csv
    python tools/combination_matrix.py --readme   # rewrites the matrix in README.md (a test checks it is current)

Configs only: nothing here trains (TensorFlow is not imported).
"""

from __future__ import annotations

import collections
import itertools
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fedlab import ExperimentConfig  # noqa: E402
from fedlab.core.validation import ConfigError  # noqa: E402

BASE = dict(dataset="digits", model="2nn", num_clients=10, clients_per_round=5, rounds=2, batch_size=16)
ALGORITHMS = ["fedavg", "fedavgm", "fedsgd", "fedprox", "fednova", "scaffold", "fedper", "ditto", "qffl", "fedadam"]
WORKER = "127.0.0.1:1"  # a placeholder address: the running test puts a live worker's address in its place
GROUPS = {
    "algorithm": {name: {"algorithm": name} for name in ALGORITHMS},
    "dp": {"user DP fixed": {"dp": "fixed", "noise_multiplier": 0.5, "clip_norm": 1.0},
           "user DP adaptive": {"dp": "adaptive", "noise_multiplier": 0.5, "clip_norm": 1.0},
           "record DP": {"dp": "example", "noise_multiplier": 1.0, "clip_norm": 1.0},
           # distributed DP is DP on a secure sum: the setting carries its secure sum (16 bits)
           "user DP distributed": {"dp": "distributed", "noise_multiplier": 0.5, "clip_norm": 1.0,
                                   "secure_aggregation": True, "quantization_bits": 16}},
    "secure": {"secure sum": {"secure_aggregation": True, "quantization_bits": 8},
               "SecAgg": {"secure_aggregation": True, "secure_protocol": "secagg", "quantization_bits": 8},
               "SecAgg+": {"secure_aggregation": True, "secure_protocol": "secaggplus", "quantization_bits": 8}},
    "compression": {"8-bit": {"quantization_bits": 8}},
    "robust": {name: {"robust": name} for name in ("median", "krum", "trimmed_mean", "clip")},
    "attack": {"label flip": {"attack": "label_flip", "attacker_fraction": 0.2},
               "sign flip": {"attack": "sign_flip", "attacker_fraction": 0.2}},
    "systems": {"fedscale drop": {"device_profile": "fedscale", "straggler_policy": "drop", "round_deadline": 30.0},
                "fedscale partial": {"device_profile": "fedscale", "straggler_policy": "partial",
                                     "round_deadline": 30.0},
                "over-selection": {"device_profile": "fedscale", "over_selection": 1.3},
                "dropouts": {"dropout_rate": 0.2}},
    "frozen": {"frozen layers": {"freeze_layers": 1}},
    "finetune": {"fine-tuning": {"finetune_epochs": 1, "eval_per_client": True}},
    "workers": {"workers": {"workers": (WORKER,)}},
}

# Refused in any system: the field the refusal must name, and why no system could run the pair.
_HIDDEN = "a median, a trimmed mean and Krum are statistics of each client's update, which secure aggregation hides"
_OWN_MODELS = "its clients keep models of their own: fine-tuning a copy of the global model scores something else"
IMPOSSIBLE = {
    **{frozenset((secure, robust)): ("robust", _HIDDEN)
       for secure in ("secure sum", "SecAgg", "SecAgg+", "user DP distributed")
       for robust in ("median", "krum", "trimmed_mean")},
    **{frozenset(("qffl", robust)): ("robust", "q-FFL's server step is a ratio of two sums over the clients, which a "
                                               "statistic of the updates does not give")
       for robust in ("median", "krum", "trimmed_mean")},
    frozenset(("fedper", "fine-tuning")): ("finetune_epochs", _OWN_MODELS),
    frozenset(("ditto", "fine-tuning")): ("finetune_epochs", _OWN_MODELS),
    frozenset(("record DP", "fine-tuning")): ("finetune_epochs", "fine-tuning trains on the records without DP-SGD "
                                              "and its scores are released: the record-level guarantee would not "
                                              "cover them"),
}

# Refused until the config gives a public value the pair needs, which the refusal names: the field, the setting
# that makes the pair run (tests/test_combinations.py runs it so), why no default can stand in for it.
def _needing(algorithm: str, partners: tuple, field: str, value, why: str) -> dict:
    """:data:`NEEDS` entries: ``algorithm`` with each of ``partners`` runs once ``field`` is given ``value``."""
    return {frozenset((algorithm, partner)): (field, {field: value}, why) for partner in partners}


_USER_DP = ("user DP fixed", "user DP adaptive", "user DP distributed")
NEEDS = {
    **_needing("scaffold", _USER_DP, "local_steps", 5,
               "what a client sends beside its update is scaled by one public number of steps: a scale drawn from "
               "the clients' data would move every client's values when one user joins, which the noise does not "
               "hide; DP-SCAFFOLD runs K fixed steps, Noble et al. 2022"),
    **_needing("fednova", _USER_DP, "local_steps", 5,
               "the server scales every update by tau_eff, which is then that public number of steps: with epochs "
               "the steps depend on each client's data, and their mean over the sampled clients would move every "
               "update when one user joins, which the noise does not hide"),
    **_needing("qffl", ("secure sum", "SecAgg", "SecAgg+"), "weight_bound", 100.0,
               "each client sends its step times its weight's share min(h_k, H) / H and that share, which a secure "
               "sum's fixed range holds only under a public bound H on q-FFL's weights h_k (the loss to the power "
               "q, unbounded); a bound read from the clients' weights would tell the server one of them"),
    **_needing("qffl", _USER_DP, "weight_bound", 100.0,
               "each client sends its step times its weight's share min(h_k, H) / H and that share, clipped and "
               "noised together, and the server divides the two noised sums (by at least one whole share); a user's "
               "weight must be bounded for the noise to hide it, as DP-FedAvg caps it, and a bound read from the "
               "clients' weights would move every step when one user joins"),
    **_needing("qffl", ("record DP",), "loss_clip", 5.0,
               "the server weighs each update by the client's training loss, which DP-SGD does not cover: it is "
               "released as a DP-SGD step releases a gradient, a Poisson sample of the records whose losses are "
               "clipped to a public bound B and summed, the sum noised by z B (one more step in the accounting); a "
               "bound read from the losses would move with one record"),
}

# fedlab's limits today (issue #33 lifts them): refused, although a system could run them.
LIMITS: set = set()


def settings():
    """(group, label, fields) of every setting."""
    for group, members in GROUPS.items():
        for label, fields in members.items():
            yield group, label, fields


def pairs():
    """(group_a, label_a, group_b, label_b, config fields) of every pair of settings from two groups."""
    for (g1, l1, f1), (g2, l2, f2) in itertools.combinations(list(settings()), 2):
        if g1 != g2:
            yield g1, l1, g2, l2, {**BASE, **f1, **f2}


def verdict(a: str, b: str, fields: dict) -> dict:
    """How fedlab answers one pair: accepted, needs (refused as :data:`NEEDS` says, accepted with its setting),
    impossible, limit, or unlisted (a refusal in no list)."""
    pair = frozenset((a, b))
    try:
        ExperimentConfig(**fields)
    except ConfigError as err:
        kind = ("impossible" if IMPOSSIBLE.get(pair, ("",))[0] == err.field else "limit" if pair in LIMITS
                else "needs" if NEEDS.get(pair, ("",))[0] == err.field and accepts({**fields, **NEEDS[pair][1]})
                else "unlisted")
        return {"verdict": kind, "field": err.field, "reason": err.message}
    except (TypeError, ValueError) as err:
        return {"verdict": "crashed", "field": "", "reason": f"{type(err).__name__}: {err}"}
    return {"verdict": "accepted", "field": "", "reason": ""}


def accepts(fields: dict) -> bool:
    """Whether the config takes ``fields`` (a crash counts as not taking them)."""
    try:
        ExperimentConfig(**fields)
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def runnable_pairs():
    """(group_a, label_a, group_b, label_b, config fields) of every pair that runs: accepted, or given the setting
    it needs (:data:`NEEDS`)."""
    frame = table()
    verdicts = {frozenset((r.a, r.b)): r.verdict for r in frame.itertuples()}
    for g1, l1, g2, l2, fields in pairs():
        pair = frozenset((l1, l2))
        if verdicts[pair] == "accepted":
            yield g1, l1, g2, l2, fields
        elif verdicts[pair] == "needs":
            yield g1, l1, g2, l2, {**fields, **NEEDS[pair][1]}


def table():
    import pandas as pd

    return pd.DataFrame([{"group_a": g1, "a": l1, "group_b": g2, "b": l2, **verdict(l1, l2, fields)}
                         for g1, l1, g2, l2, fields in pairs()])


MARK = {"accepted": "✓", "needs": "◦", "impossible": "✗", "limit": "·", "unlisted": "?", "crashed": "!"}
BEGIN, END = "<!-- combinations:begin (python tools/combination_matrix.py --readme) -->", "<!-- combinations:end -->"


def readme_section(frame) -> str:
    """The README's matrix: every setting against every algorithm, then the other refused pairs, generated."""
    counts = collections.Counter(frame.verdict)
    lines = [BEGIN, "",
             f"{len(frame)} pairs of settings from {len(GROUPS)} groups: **{counts['accepted']} run**, "
             f"{counts['needs']} run once the config gives the public value their refusal names (◦), "
             f"{counts['impossible']} are refused because no system could run them (✗), {counts['limit']} "
             f"{'is' if counts['limit'] == 1 else 'are'} refused by a limit of fedlab's today (·), "
             f"{counts['unlisted'] + counts['crashed']} otherwise. "
             "`tests/test_combinations.py` runs every accepted pair, and every ◦ pair with that value, for two "
             "rounds.", "",
             "| setting | " + " | ".join(ALGORITHMS) + " |", "|---|" + "---|" * len(ALGORITHMS)]
    by_pair = {frozenset((r.a, r.b)): r.verdict for r in frame.itertuples()}
    for group, label, _ in settings():
        if group != "algorithm":
            lines.append(f"| {label} | " + " | ".join(MARK[by_pair[frozenset((label, a))]] for a in ALGORITHMS)
                         + " |")
    needs = frame[frame.verdict == "needs"]
    if len(needs):
        lines += ["", "Pairs that run once the config gives a public value (◦), and why no default stands in for it:",
                  ""]
        by_why = collections.defaultdict(list)
        for r in needs.itertuples():
            field, _, why = NEEDS[frozenset((r.a, r.b))]
            by_why[(field, why)].append(f"{r.a} + {r.b}")
        for (field, why), listed in by_why.items():
            lines.append(f"- ◦ {'; '.join(listed)}: with `{field}` set; {why}")
    lines += ["", "Refused pairs without an algorithm, and why:", ""]
    others = frame[~frame.verdict.isin(["accepted", "needs"]) & (frame.group_a != "algorithm")]
    for (kind, reason), rows in others.groupby(["verdict", "reason"], sort=True):
        listed = "; ".join(f"{a} + {b}" for a, b in zip(rows.a, rows.b))
        lines.append(f"- {MARK[kind]} {listed}: {reason}")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    frame = table()
    out = ROOT / "build" / "combinations.csv"
    out.parent.mkdir(exist_ok=True)
    frame.to_csv(out, index=False)
    counts = collections.Counter(frame.verdict)
    print(f"{len(frame)} pairs: " + ", ".join(f"{v} {counts[v]}" for v in MARK) + f" -> {out}")
    refused = frame[frame.verdict != "accepted"].copy()
    refused["why"] = [r.split(", got ")[0].split(" cannot be honoured by ")[0] for r in refused.reason]
    for (kind, field, reason), rows in sorted(refused.groupby(["verdict", "field", "why"]), key=lambda kv: -len(kv[1])):
        print(f"\n{len(rows):3d} {kind} x {field}: {reason}")
        print("      " + "; ".join(f"{a} + {b}" for a, b in zip(rows.a, rows.b)))
    if "--readme" in argv:
        readme = ROOT / "README.md"
        text = readme.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        partial = readme.with_name(readme.name + ".partial")  # written whole, then put in place
        partial.write_text(text[:start] + readme_section(frame) + text[end:])
        os.replace(partial, readme)
        print(f"\nrewrote the matrix in {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

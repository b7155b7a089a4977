"""Which pairs of settings a researcher combines does fedlab accept? (issue #33's matrix, measured at config time)

One setting from each of nine groups (algorithms, DP, secure aggregation, compression, robust rules, attacks,
systems, frozen layers, fine-tuning), every pair of settings from two different groups, each made into an
``ExperimentConfig``: accepted, or refused with its one line. Writes ``build/combinations.csv`` and prints the
counts and the refusals grouped by reason. Configs only: nothing is trained (TensorFlow is not imported).

    python tools/combination_matrix.py
"""

from __future__ import annotations

import collections
import itertools
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedlab import ExperimentConfig  # noqa: E402
from fedlab.validation import ConfigError  # noqa: E402

BASE = dict(dataset="digits", model="2nn", num_clients=10, clients_per_round=5, rounds=2, batch_size=16)
ALGORITHMS = ["fedavg", "fedavgm", "fedsgd", "fedprox", "fednova", "scaffold", "fedper", "ditto", "qffl", "fedadam"]
GROUPS = {
    "algorithm": {name: {"algorithm": name} for name in ALGORITHMS},
    "dp": {"user DP fixed": {"dp": "fixed", "noise_multiplier": 0.5, "clip_norm": 1.0},
           "user DP adaptive": {"dp": "adaptive", "noise_multiplier": 0.5, "clip_norm": 1.0},
           "record DP": {"dp": "example", "noise_multiplier": 1.0, "clip_norm": 1.0}},
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
}


def settings():
    for group, members in GROUPS.items():
        for label, fields in members.items():
            yield group, label, fields


def main() -> int:
    import pandas as pd

    rows = []
    for (g1, l1, f1), (g2, l2, f2) in itertools.combinations(list(settings()), 2):
        if g1 == g2:
            continue
        fields = {**BASE, **f1, **f2}
        try:
            ExperimentConfig(**fields)
            verdict, field, why = "accepted", "", ""
        except ConfigError as err:
            verdict, field, why = "refused", err.field, err.message
        except (TypeError, ValueError) as err:
            verdict, field, why = "crashed", "", f"{type(err).__name__}: {err}"
        rows.append({"group_a": g1, "a": l1, "group_b": g2, "b": l2, "verdict": verdict, "field": field,
                     "reason": why})
    table = pd.DataFrame(rows)
    out = ROOT / "build" / "combinations.csv"
    out.parent.mkdir(exist_ok=True)
    table.to_csv(out, index=False)
    counts = collections.Counter(table.verdict)
    print(f"{len(table)} pairs: " + ", ".join(f"{v} {counts[v]}" for v in ("accepted", "refused", "crashed"))
          + f" -> {out}")
    refused = table[table.verdict != "accepted"].copy()
    refused["why"] = [r.split(", got ")[0].split(" cannot be honoured by ")[0] for r in refused.reason]
    for (field, reason), pairs in sorted(refused.groupby(["field", "why"]), key=lambda kv: -len(kv[1])):
        print(f"\n{len(pairs):3d} x {field}: {reason}")
        print("      " + "; ".join(f"{a} + {b}" for a, b in zip(pairs.a, pairs.b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

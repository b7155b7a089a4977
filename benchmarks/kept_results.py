"""TFF's worker sent back what it computed, or not, side by side in one process
(``fedlab.core.tff_speedups._patch_keep_results``).

    python benchmarks/kept_results.py [--pairs 4] [--rounds 150] [--out results/benchmarks/kept_results.csv]

The settings and pairs of ``benchmarks/tff_tracing.py``: notebook 01's FedAvg setting and ``make bench``'s workload
at K = 10, each pair running each setting once with TFF's own ``_ingest`` and ``_invoke`` put back (every call's
result fetched and disposed of on the worker, the next round's state created there again from Python:
``results_sent_back`` True) and once with fedlab's (the results kept on the worker: False), the order alternating
from pair to pair; no evaluation but the last round's. Prints the medians and each pair's difference; writes every
run to OUT.
"""

from __future__ import annotations

import sys

from tff_tracing import side_by_side_main


def kept_results_switch():
    """``switch(own)``: TFF's own ``_ingest`` and ``_invoke`` (True) or fedlab's, which keep results (False)."""
    from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context as context

    fedlab_ones = context._ingest, context._invoke
    own_ones = context.fedlab_original_ingest, context.fedlab_original_invoke

    def switch(own: bool) -> None:
        context._ingest, context._invoke = own_ones if own else fedlab_ones

    return switch


def main() -> int:
    return side_by_side_main(kept_results_switch, "results_sent_back", "kept_results.csv",
                             "with the results sent back and kept")


if __name__ == "__main__":
    sys.exit(main())

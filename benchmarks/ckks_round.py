"""What one round of CKKS aggregation costs here: ten clients encrypt the 2NN's update (199,210 values, 49
ciphertexts each, seeded), the server takes their weighted sum, a key holder decrypts the mean.

    python benchmarks/ckks_round.py [--clients 10] [--rounds 3]

One warm-up round, then ``--rounds`` timed ones; prints a JSON line with the round's wall seconds, their median, the
client's and the server's seconds of the last round, and a digest of the decrypted mean (the same in every run
of the same code and library build: the encryption is seeded). To compare two versions of fedlab side by side,
run it with each on ``PYTHONPATH`` (then the checkout the script is in is not put first), interleaved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.clients < 2 or args.rounds < 1:
        parser.error("--clients must be at least 2 and --rounds at least 1")

    import numpy as np

    from fedlab.protection import ckks

    secret, public = ckks.make_keys()
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(0, 0.05, 199_210).astype(np.float32) for c in range(args.clients)}
    weights = {c: float(rng.integers(10, 100)) for c in updates}
    ckks.run_round(updates, weights, secret_context=secret, public_context=public, seed=[1, 2])  # warm-up
    seconds = []
    for r in range(args.rounds):
        start = time.perf_counter()
        result = ckks.run_round(updates, weights, secret_context=secret, public_context=public, seed=[1, 2, r])
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"code": ckks.__file__, "round_seconds": [round(s, 3) for s in seconds],
                      "median": round(statistics.median(seconds), 3), "client_seconds": round(result.client_seconds, 4),
                      "server_seconds": round(result.server_seconds, 4),
                      "mean_digest": hashlib.sha256(result.mean.tobytes()).hexdigest()[:16]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

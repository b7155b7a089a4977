"""What distributed DP costs in privacy against central DP at the same z, by model size and bits (the README's table).

    python tools/ddp_accounting.py [--z 1] [--q 0.1] [--rounds 100] [--delta 1e-5] [--clients 10] [--population 100]

Accounting only (no training, no TensorFlow): for each model size and bit width, the scale s, the noise relative to
the rounded update's bound (z_eff), epsilon of the Skellam sum (fedlab's accounting: its RDP, Poisson-subsampled by
Zhu and Wang's general bound), of a Gaussian at z_eff (dp-accounting's exact subsampled Gaussian, on the same integer
orders), and of the Skellam sum over the rounds a user joins on average (q x rounds) without amplification by
sampling (what holds against a server that knows who was sampled), beside central DP at z.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from fedlab.protection import accounting  # noqa: E402

MODELS = {"logistic regression on MNIST (7,850 weights)": 7850, "2NN (199,210 weights)": 199210}


def gaussian_on(orders, noise_multiplier: float, q: float, rounds: int, delta: float) -> float:
    """Epsilon of the Poisson-subsampled Gaussian at ``noise_multiplier`` (dp-accounting's exact RDP), on ``orders``."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant(list(orders))
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier)), rounds)
    return accountant.get_epsilon(delta)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--z", type=float, default=1.0)
    parser.add_argument("--q", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--population", type=int, default=100)
    args = parser.parse_args(argv)
    central = accounting.epsilon(args.z, args.q, args.rounds, args.delta)
    joined = round(args.q * args.rounds)
    print(f"central DP at z = {args.z:g}: epsilon = {central:.2f} (q = {args.q:g}, {args.rounds} rounds, "
          f"delta = {args.delta:g})")
    print(f"| model | bits | s | z_eff | epsilon, Skellam sum | epsilon, Gaussian at z_eff | epsilon, Skellam sum, "
          f"{joined} rounds without sampling |")
    print("|---|---|---|---|---|---|---|")
    for name, dim in MODELS.items():
        for bits in (8, 12, 16):
            params = accounting.ddp_parameters(args.z, 1.0, bits, args.clients, args.population, dim)
            ddp = accounting.ddp_epsilon_by_round(params, args.q, args.rounds, args.delta)[-1]
            gaussian = gaussian_on(accounting.DDP_ORDERS, params.effective_noise_multiplier, args.q, args.rounds,
                                   args.delta)
            known = accounting.ddp_epsilon_by_round(params, 1.0, joined, args.delta)[-1]
            print(f"| {name} | {bits} | {params.scale:.0f} | {params.effective_noise_multiplier:.3f} | {ddp:.2f} | "
                  f"{gaussian:.2f} | {known:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

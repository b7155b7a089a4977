"""Command line: ``python -m fedlab run|privacy|worker|reproduce ...``.

Errors in the input are one line naming the option (``--alpha: must be > 0``)
and exit status 2, with no traceback, before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Optional, Sequence

from .config import ConfigError, ExperimentConfig

def _int_tuple(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated client ids, got {text!r}") from None


def _workers(text: str) -> tuple:
    from .distributed import parse_workers

    try:
        return parse_workers(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_FIELD_TYPES = {"workers": _workers}  # fields whose type name alone does not say how to parse them
_TYPES = {"str": str, "float": float, "int": int, "Optional[float]": float, "Optional[int]": int, "tuple": _int_tuple}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    defaults = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        if f.type == "bool":
            parser.add_argument(option_name(f.name), dest=f.name, action="store_true", default=getattr(defaults, f.name))
        else:
            parser.add_argument(option_name(f.name), dest=f.name, type=_FIELD_TYPES.get(f.name, _TYPES[f.type]),
                                default=getattr(defaults, f.name),
                                metavar=f.name.upper(), help=f"default: {getattr(defaults, f.name)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fedlab", description="fedlab: federated learning experiments on TFF")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one experiment; writes OUT/history.csv and OUT/config.json")
    _add_config_options(run)
    run.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    run.add_argument("--no-checkpoint", action="store_true",
                     help="do not checkpoint to OUT/checkpoint (by default a rerun resumes there)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    priv = sub.add_parser("privacy", help="epsilon of DP-FedAvg, or the noise multiplier for a target epsilon")
    which = priv.add_mutually_exclusive_group(required=True)
    which.add_argument("--noise-multiplier", type=float, help="z: prints epsilon=<value>")
    which.add_argument("--target-epsilon", type=float, help="prints noise_multiplier=<value>")
    priv.add_argument("--clients-per-round", type=int, required=True, help="K (expected, Poisson sampling)")
    priv.add_argument("--num-clients", type=int, required=True, help="N")
    priv.add_argument("--rounds", type=int, required=True)
    priv.add_argument("--delta", type=float, required=True)
    priv.add_argument("--accountant", choices=["rdp", "pld"], default="rdp")

    work = sub.add_parser("worker", help="serve TFF's worker service, for runs with --workers HOST:PORT,...")
    work.add_argument("--port", type=int, required=True)
    work.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only); '*' for every interface. "
                           "Workers are unauthenticated: listen only on a private network")
    work.add_argument("--max-concurrent-calls", type=int, default=-1,
                      help="TFF's limit on parallel calls of one computation (default: none)")

    rep = sub.add_parser("reproduce", help="run every notebook; writes figures/ and results/")
    rep.add_argument("--fast", action="store_true", help="the test suite's fast setting")
    rep.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    rep.add_argument("--figures-dir", type=pathlib.Path, default=None)
    rep.add_argument("--results-dir", type=pathlib.Path, default=None)
    return parser


def _config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)}
    return ExperimentConfig(**values)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)  # validated before TensorFlow is imported
    from .runner import clients_table, run_experiment

    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json() + "\n")
    history = run_experiment(config, checkpoint_dir=None if args.no_checkpoint else out / "checkpoint",
                             progress=not args.quiet)
    history.to_csv(out / "history.csv", index=False)
    if config.eval_per_client:
        clients_table(history).to_csv(out / "clients.csv", index=False)
    last = history.dropna(subset=["eval_accuracy"]).iloc[-1]
    print(f"round={int(last['round'])} eval_accuracy={last['eval_accuracy']:.4f} eval_loss={last['eval_loss']:.4f} "
          f"-> {out / 'history.csv'}")
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from .privacy import PrivacyParameterError, epsilon, noise_multiplier_for

    if args.num_clients < 1:
        raise PrivacyParameterError("num_clients", f"must be an integer >= 1, got {args.num_clients}")
    if not 1 <= args.clients_per_round <= args.num_clients:
        raise PrivacyParameterError(
            "clients_per_round", f"must be between 1 and num_clients={args.num_clients}, got {args.clients_per_round}")
    q = args.clients_per_round / args.num_clients
    if args.noise_multiplier is not None:
        print(f"epsilon={epsilon(args.noise_multiplier, q, args.rounds, args.delta, args.accountant):.6g}")
    else:
        print(f"noise_multiplier={noise_multiplier_for(args.target_epsilon, q, args.rounds, args.delta, args.accountant):.6g}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .distributed import serve

    return serve(args.port, args.host, max_concurrent_calls=args.max_concurrent_calls)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import reproduce

    kwargs = {}
    if args.figures_dir is not None:
        kwargs["figures_dir"] = args.figures_dir
    if args.results_dir is not None:
        kwargs["results_dir"] = args.results_dir
    reproduce.reproduce(fast=args.fast, only=args.only, **kwargs)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    prog = "fedlab"
    try:
        args = parser.parse_args(argv)
        prog = f"fedlab {args.command}"
        return {"run": cmd_run, "privacy": cmd_privacy, "worker": cmd_worker,
                "reproduce": cmd_reproduce}[args.command](args)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
    except (ConfigError,) + _privacy_error() as err:
        print(f"{prog}: error: {option_name(err.field)}: {err.message}", file=sys.stderr)
    except ValueError as err:  # data-dependent checks (partition sizes, checkpoint mismatch)
        print(f"{prog}: error: {err}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - e.g. DataUnavailableError: say it in one line
        if type(err).__name__ in ("WorkerUnreachableError", "WorkerLostError"):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1
        if type(err).__name__ in ("DataUnavailableError", "CheckpointMismatchError"):
            print(f"{prog}: error: {err}", file=sys.stderr)
        else:
            raise
    return 2


def _privacy_error() -> tuple:
    from .privacy import PrivacyParameterError

    return (PrivacyParameterError,)


if __name__ == "__main__":
    sys.exit(main())

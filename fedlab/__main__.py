"""Command line: ``python -m fedlab run|show|list|privacy|worker|site|certs|keys|reproduce ...``.

Errors in the input are one line naming the option (``--alpha: must be > 0``)
and exit status 2, with no traceback, before TensorFlow is imported. Every
config field is an option of ``run``, and so is every hyperparameter of every
registered algorithm; ``--plugin MODULE`` (a module name or a ``.py`` file,
repeatable) is imported first, so its registered components and their
hyperparameters are options too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import pathlib
import re
import signal
import sys
import threading
from typing import Optional, Sequence

from .core.validation import ConfigError, one_line_warnings


class UsageError(Exception):
    pass


# argparse takes only -1 and -.5 for negative numbers; anything else after an option that starts with '-' is
# taken for another option ("--delta: expected one argument"), hiding the range error the value deserves.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --rou 3 must not silently mean --rounds
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER  # -1e-5 and -inf are values (no option looks like one)

    def error(self, message):  # one line instead of usage + message, the option first
        raise UsageError(message[len("argument "):] if message.startswith("argument ") else message)


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# Plugins -------------------------------------------------------------------------------------------
def plugin_names(argv: Sequence[str]) -> list[str]:
    """The ``--plugin`` values in ``argv``, read before the parser is built (they add options)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise UsageError("--plugin: expected a module name or a .py file")
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


def load_plugin(name: str) -> None:
    """Imports a plugin module (``my_module`` from the current folder or the path, or ``path/to/file.py``)."""
    try:
        if name.endswith(".py") or "/" in name:
            path = pathlib.Path(name)
            if not path.is_file():
                raise UsageError(f"--plugin: {name} is not a file")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            importlib.import_module(name)
    except UsageError:
        raise
    except ModuleNotFoundError as err:
        raise UsageError(f"--plugin: no module named {err.name!r} (importing {name})") from None
    except Exception as err:  # noqa: BLE001 - the user's module: say what went wrong in one line
        raise UsageError(f"--plugin: importing {name} failed: {type(err).__name__}: {err}") from None


# Options ---------------------------------------------------------------------------------------------
def _int_tuple(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated client ids, got {text!r}") from None


def _workers(text: str) -> tuple:
    from .workers.distributed import parse_workers

    try:
        workers = parse_workers(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not workers:
        raise argparse.ArgumentTypeError(f"no worker address in {text!r}; give host:port,host:port")
    return workers


def _sites(text: str) -> dict:
    from .experiment.sites import parse_sites

    try:
        return parse_sites(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _number(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _folder(text: str) -> pathlib.Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty path")
    return pathlib.Path(text)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_FIELD_TYPES = {"workers": _workers}  # fields whose type name alone does not say how to parse them
_TYPES = {"str": str, "float": _number(float), "int": _number(int), "Optional[float]": _number(float),
          "Optional[int]": _number(int), "tuple": _int_tuple}
_NOT_OPTIONS = ("algorithm_params",)  # set through the hyperparameters' own options


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from .studies.catalog import hyperparameters
    from .experiment.config import ExperimentConfig

    defaults = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in _NOT_OPTIONS:
            continue
        if f.type == "bool":
            parser.add_argument(option_name(f.name), dest=f.name, action="store_true", default=getattr(defaults, f.name))
        else:
            parser.add_argument(option_name(f.name), dest=f.name, type=_FIELD_TYPES.get(f.name, _TYPES[f.type]),
                                default=getattr(defaults, f.name),
                                metavar=f.name.upper(), help=f"default: {getattr(defaults, f.name)}")
    group = parser.add_argument_group("algorithm hyperparameters (each applies to the algorithms named)")
    from .algorithms.algorithms import hparam_spec, hparam_type

    for name, (f, owners) in hyperparameters().items():
        kind = hparam_type(f)
        parse = _bool if kind is bool else _number(kind)
        group.add_argument(option_name(name), dest=f"param_{name}", type=parse, default=None,
                           metavar=name.upper(),
                           help=f"{hparam_spec(f).help or name} ({', '.join(owners)}; default {f.default})")


def _add_tls_options(parser: argparse.ArgumentParser, purpose: str, cert: str, key: str, checks: str) -> None:
    group = parser.add_argument_group("mutual TLS (all three or none; python -m fedlab certs DIR makes a set)")
    group.add_argument("--tls-cert", default=None, metavar="PEM", help=f"{purpose} this certificate (e.g. DIR/{cert})")
    group.add_argument("--tls-key", default=None, metavar="PEM", help=f"the private key of --tls-cert (DIR/{key})")
    group.add_argument("--tls-ca", default=None, metavar="PEM",
                       help=f"the CA certificate that must have signed {checks} (DIR/ca.pem)")


def _add_encryption_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--encryption-key", default=None, metavar="FILE",
                        help=f"{what} encrypted with the AES-256 key in FILE (python -m fedlab keys new FILE makes one)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fedlab", description="fedlab: federated learning experiments on TFF")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (or a .py file) first: its registered components become usable")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one experiment; writes OUT/history.csv and OUT/config.json")
    run.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                     help="import MODULE (or a .py file) first: its registered components become usable")
    _add_config_options(run)
    run.add_argument("--out", required=True, type=_folder, help="output folder")
    run.add_argument("--no-checkpoint", action="store_true",
                     help="do not checkpoint to OUT/checkpoint (by default a rerun resumes there)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--tensorboard", type=_folder, default=None, metavar="DIR",
                     help="also write each round's metrics as TensorBoard events under DIR (tensorboard --logdir DIR)")
    run.add_argument("--sites", type=_sites, default=None, metavar="NAME=HOST:PORT,...",
                     help="run the data set's natural clients at site processes (python -m fedlab site), which "
                          "hold the records; this process reads none")
    _add_tls_options(run, "with --workers or --sites: connect with mutual TLS, presenting", "client.pem",
                     "client-key.pem", "the workers' or sites' certificates")
    _add_encryption_option(run, "write OUT/*.enc, the checkpoint and TensorBoard events (and read them back)")

    show = sub.add_parser("show", help="print a file run --out wrote (history.csv, config.json, clients.csv; "
                                       "decrypting a .enc one), or with --to write a TensorBoard run folder's "
                                       "events in the clear")
    show.add_argument("path", type=pathlib.Path, metavar="PATH",
                      help="OUT/history.csv[.enc], or a run folder under --tensorboard DIR (with --to)")
    show.add_argument("--to", type=_folder, default=None, metavar="PLAIN",
                      help="write the run folder's event files, decrypted, into PLAIN (tensorboard --logdir PLAIN)")
    _add_encryption_option(show, "read files")

    keys = sub.add_parser("keys", help="make keys: an AES-256 key for encryption at rest (keys new FILE), "
                                       "CKKS keys for homomorphic aggregation (keys ckks DIR)")
    kinds = keys.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    new = kinds.add_parser("new", help="write a new AES-256 key to FILE (mode 0600) for --encryption-key")
    new.add_argument("file", type=pathlib.Path, metavar="FILE")
    ckks = kinds.add_parser("ckks", help="write the sites' shared CKKS secret context and the server's public one "
                                         "into DIR")
    ckks.add_argument("dir", type=_folder, metavar="DIR")
    seal = kinds.add_parser("seal-data", help="write DIR/NAME.enc, encrypted, beside every data file in DIR (a "
                                              "site's heart-disease or TCGA files); read instead of NAME with "
                                              "--encryption-key")
    seal.add_argument("dir", type=_folder, metavar="DIR")
    seal.add_argument("--encryption-key", required=True, metavar="FILE", help="the AES-256 key to encrypt with")
    seal.add_argument("--remove-plain", action="store_true",
                      help="delete each plain file once its .enc decrypts back to it (its blocks may stay on the disk)")

    listing = sub.add_parser("list", help="what is registered: data sets, models, algorithms, partitioners, "
                                          "aggregators, with their papers")
    listing.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                         help="import MODULE (or a .py file) first")

    priv = sub.add_parser("privacy", help="epsilon of DP-FedAvg (user level) or DP-SGD in a site (record level), "
                                          "or the noise multiplier for a target epsilon")
    which = priv.add_mutually_exclusive_group(required=True)
    which.add_argument("--noise-multiplier", type=_number(float), help="z: prints epsilon=<value>")
    which.add_argument("--target-epsilon", type=_number(float), help="prints noise_multiplier=<value>")
    user = priv.add_argument_group("user level (DP-FedAvg): clients are the unit")
    user.add_argument("--clients-per-round", type=_number(int), help="K (expected, Poisson sampling)")
    user.add_argument("--num-clients", type=_number(int), help="N")
    user.add_argument("--rounds", type=_number(int))
    record = priv.add_argument_group("record level (DP-SGD in one site): records are the unit")
    record.add_argument("--examples", type=_number(int), help="records at the site")
    record.add_argument("--batch-size", type=_number(int), help="expected batch (Poisson rate batch/examples)")
    record.add_argument("--steps", type=_number(int), help="DP-SGD steps the site takes in all")
    priv.add_argument("--delta", type=_number(float), required=True)
    priv.add_argument("--accountant", choices=["rdp", "pld"], default="rdp")

    work = sub.add_parser("worker", help="serve TFF's worker service, for runs with --workers HOST:PORT,...")
    work.add_argument("--port", type=_number(int), required=True)
    work.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only); '*' for every interface. "
                           "Without --tls-* workers are unauthenticated: listen only on a private network")
    work.add_argument("--max-concurrent-calls", type=_number(int), default=-1,
                      help="TFF's limit on parallel calls of one computation (default: none)")
    _add_tls_options(work, "accept only mutual-TLS connections (TFF's worker behind a TLS proxy), presenting",
                     "server.pem", "server-key.pem", "every client's certificate")

    site = sub.add_parser("site", help="serve one site's own records to a driver (run --sites NAME=HOST:PORT,...): "
                                       "it trains and scores here, only updates and scores leave")
    site.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                      help="import MODULE (or a .py file) first: a data set and site loader of your own")
    site.add_argument("--dataset", default="heart_disease", help="the registered data set the site belongs to "
                                                                  "(it needs a site loader: fl.register_site_loader)")
    site.add_argument("--name", required=True, help="this site's name in the data set (heart_disease: cleveland, "
                                                     "hungarian, switzerland, va)")
    site.add_argument("--data", required=True, type=pathlib.Path, metavar="PATH",
                      help="the folder holding this site's own file(s); nothing else is read")
    site.add_argument("--port", type=_number(int), required=True)
    site.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only); without --tls-* anyone "
                           "who reaches the port can ask for updates computed on the records")
    site.add_argument("--ckks-secret", type=pathlib.Path, default=None, metavar="FILE",
                      help="the sites' shared CKKS secret context (python -m fedlab keys ckks DIR), for runs with "
                           "secure_protocol=ckks: this site encrypts its update and decrypts the weighted mean")
    site.add_argument("--reproducible", action="store_true",
                      help="accept the run's seeds for DP-SGD's noise and CKKS's encryption here, to check a federation "
                           "against the simulation; the driver then knows that randomness: never with real records")
    _add_tls_options(site, "accept only drivers whose certificate the CA signed, presenting", "server.pem",
                     "server-key.pem", "the drivers' certificates")

    certs = sub.add_parser("certs", help="make a local CA, a worker (server) and a driver (client) certificate in DIR, "
                                         "for trying --tls-cert/--tls-key/--tls-ca")
    certs.add_argument("dir", type=_folder, metavar="DIR")
    certs.add_argument("--hosts", default="localhost,127.0.0.1",
                       help="names and addresses the driver uses to reach the workers, comma-separated: the "
                            "worker certificate is valid for these (default: localhost,127.0.0.1)")
    certs.add_argument("--days", type=_number(int), default=365, help="validity (default: 365)")
    certs.add_argument("--force", action="store_true", help="replace existing files in DIR")

    rep = sub.add_parser("reproduce", help="run every notebook; writes figures/ and results/")
    rep.add_argument("--fast", action="store_true", help="the test suite's fast setting")
    rep.add_argument("--check", action="store_true",
                     help="rerun in the full setting from an empty cache into build/check and compare every "
                          "results/ CSV and figure with the committed one; exit 1 on any difference")
    rep.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 03")
    rep.add_argument("--jobs", type=_number(int), default=None,
                     help="notebooks run at a time (default: 2 with two cores or more, else 1); above 1 each runs "
                          "in its own process, its sweeps on its share of the cores, and each wall-clock time is "
                          "measured while the others pause")
    rep.add_argument("--figures-dir", type=pathlib.Path, default=None)
    rep.add_argument("--results-dir", type=pathlib.Path, default=None)
    return parser


def config_from_args(args: argparse.Namespace):
    from .experiment.config import ExperimentConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)
              if f.name not in _NOT_OPTIONS}
    params = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    return ExperimentConfig(**values, **params)


# Commands -----------------------------------------------------------------------------------------
ENCRYPTED_SUFFIX = ".enc"


def _use_key(args: argparse.Namespace) -> bool:
    """Turns encryption at rest on with ``--encryption-key`` (one line if the file is not a key); whether it is on."""
    from .core.encryption import use_encryption

    return use_encryption(args.encryption_key) is not None


def _out_label(name: str, config_json: Optional[bytes]) -> str:
    """The label of ``OUT/name``: ``out/config.json`` for the run's config, ``out/run-<digest>/name`` for the others,
    the digest of the ``config.json`` beside them (:func:`fedlab.core.storage.run_digest`): renamed, or copied from
    another run's folder, a file fails its check."""
    from .core.storage import run_digest

    if name == "config.json" or config_json is None:  # None: a plain file, or refused before its label counts
        return f"out/{name}"
    return f"out/run-{run_digest(config_json)}/{name}"


def _write_out(out: pathlib.Path, name: str, text: str, encrypted: bool, config_json: str) -> pathlib.Path:
    """``OUT/name``, or ``OUT/name.enc`` encrypted (labelled by :func:`_out_label`)."""
    from .core.storage import write_sealed

    path = out / (name + ENCRYPTED_SUFFIX if encrypted else name)
    write_sealed(path, text, _out_label(name, config_json.encode()))
    return path


def _run_config_beside(path: pathlib.Path) -> bytes:
    """The encrypted ``config.json.enc`` that ``run --out`` wrote beside ``path``, decrypted: its digest is in the
    file's label."""
    from .core.storage import read_sealed

    config = path.parent / ("config.json" + ENCRYPTED_SUFFIX)
    if not config.is_file():
        raise UsageError(f"PATH: {path} is bound to its run's config.json{ENCRYPTED_SUFFIX}, which is not beside it "
                         f"in {path.parent}; show reads the files run --out wrote, in their folder")
    return read_sealed(config, "out/config.json")


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # validated before TensorFlow is imported
    encrypted = _use_key(args)
    from .workers.distributed import WorkerTLS, use_worker_tls

    tls = WorkerTLS.load(args.tls_cert, args.tls_key, args.tls_ca)
    if tls is not None and not (config.workers or args.sites):
        raise UsageError("--tls-cert: mutual TLS is for runs on --workers or --sites; this run is local")
    use_worker_tls(tls)  # the process's setting, not the config's: the same numbers, the same cached result
    from .core.storage import Checkpoint, ensure_folder

    out = ensure_folder(args.out, "--out")
    checkpoint_dir = None if args.no_checkpoint else out / "checkpoint"
    if checkpoint_dir is not None:
        Checkpoint(checkpoint_dir, config)  # refuses another config's checkpoint before anything is written
    from .experiment.runner import RunStopped, clients_table, evaluated_rows, run_experiment

    # Ctrl-C ends the run after the current round, its checkpoint saved; a second Ctrl-C stops at once.
    # (A KeyboardInterrupt raised inside TensorFlow's or TFF's clean-up code can be swallowed there.)
    stop = threading.Event()

    def on_interrupt(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        history = run_experiment(config, checkpoint_dir=checkpoint_dir, progress=not args.quiet, stop=stop,
                                 tensorboard_dir=args.tensorboard, sites=args.sites)
    except (RunStopped, KeyboardInterrupt):
        kept = (f"the checkpoint in {checkpoint_dir} holds {Checkpoint(checkpoint_dir, config).describe()}; "
                "run the same command again to resume" if checkpoint_dir is not None
                else "nothing was kept (--no-checkpoint)")
        print(f"\nfedlab run: interrupted; {kept}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    config_json = config.to_json() + "\n"
    _write_out(out, "config.json", config_json, encrypted, config_json)
    written = _write_out(out, "history.csv", history.to_csv(index=False), encrypted, config_json)
    if config.eval_per_client:
        _write_out(out, "clients.csv", clients_table(history).to_csv(index=False), encrypted, config_json)
    last = evaluated_rows(history).iloc[-1]
    metric = next(c for c in last.index if c.startswith("eval_") and c != "eval_loss" and c != "eval_every")
    print(f"round={int(last['round'])} {metric}={last[metric]:.4f} eval_loss={last['eval_loss']:.4f} "
          f"-> {written}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        return _show(args)
    except OSError as err:
        raise UsageError(_os_error(err, args.path)) from None


def _os_error(err: OSError, default) -> str:
    """An OSError in one line: the file it names (else ``default``) and why."""
    return f"{err.filename or default}: {err.strerror or err}"


def _show(args: argparse.Namespace) -> int:
    encrypted = _use_key(args)
    path = args.path
    if args.to is not None:
        if not path.is_dir():
            raise UsageError(f"--to: PATH must be a TensorBoard run folder (DIR/<algorithm>-<key>), got {path}")
        from .experiment.tensorboard import export

        written = export(path, args.to)
        print(f"wrote {len(written)} event file(s) in the clear into {args.to}: tensorboard --logdir {args.to}")
        return 0
    if not path.is_file():
        raise UsageError(f"PATH: {path} is not a file")
    from .core.encryption import is_encrypted, unseal

    name = path.name[:-len(ENCRYPTED_SUFFIX)] if path.name.endswith(ENCRYPTED_SUFFIX) else path.name
    blob = path.read_bytes()
    # an encrypted file's label names its run's config; any other is refused (or read) on its own
    config_json = _run_config_beside(path) if encrypted and is_encrypted(blob) and name != "config.json" else None
    sys.stdout.write(unseal(blob, label=_out_label(name, config_json), where=str(path)).decode())
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if args.kind == "new":
        from .core.encryption import new_key

        try:
            key = new_key(args.file)
        except FileExistsError as err:
            raise UsageError(f"FILE: {err}") from None
        except OSError as err:
            raise UsageError(f"FILE: cannot write {args.file}: {err.strerror or err}") from None
        print(f"wrote {args.file} (AES-256 key, id {key.id_hex}, mode 0600). Use it with --encryption-key "
              f"{args.file} or fl.use_encryption(key_file={str(args.file)!r}); keep it off the disk it protects")
        return 0
    if args.kind == "seal-data":
        _use_key(args)
        from .data.data import seal_folder

        try:
            written = seal_folder(args.dir, remove_plain=args.remove_plain)
        except OSError as err:
            raise UsageError(f"DIR: {_os_error(err, args.dir)}") from None
        if not written:
            raise UsageError(f"DIR: no file to encrypt in {args.dir}")
        for path in written:
            print(f"wrote {path}")
        return 0
    from .protection.ckks import write_keys

    try:
        paths = write_keys(pathlib.Path(args.dir))
    except OSError as err:
        raise UsageError(f"DIR: cannot write {_os_error(err, args.dir)}") from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .studies.catalog import format_catalog

    print(format_catalog())
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from .protection.accounting import epsilon, noise_multiplier_for
    from .core.validation import integer

    user = [args.clients_per_round, args.num_clients, args.rounds]
    record = [args.examples, args.batch_size, args.steps]
    if any(v is not None for v in record):
        if any(v is not None for v in user) or any(v is None for v in record):
            raise UsageError("give either --clients-per-round, --num-clients and --rounds (user level) or "
                             "--examples, --batch-size and --steps (record level)")
        integer("examples", args.examples, 2)
        if not 1 <= args.batch_size < args.examples:
            raise ConfigError("batch_size", f"must be between 1 and examples - 1 = {args.examples - 1}, "
                                            f"got {args.batch_size}")
        q, steps, unit = args.batch_size / args.examples, args.steps, "steps"
    else:
        if any(v is None for v in user):
            raise UsageError("--clients-per-round, --num-clients and --rounds are required (or, at record level, "
                             "--examples, --batch-size and --steps)")
        integer("num_clients", args.num_clients, 1)
        if not 1 <= args.clients_per_round <= args.num_clients:
            raise ConfigError("clients_per_round", f"must be between 1 and num_clients={args.num_clients}, "
                                                   f"got {args.clients_per_round}")
        q, steps, unit = args.clients_per_round / args.num_clients, args.rounds, "rounds"
    if args.noise_multiplier is not None:
        print(f"epsilon={epsilon(args.noise_multiplier, q, steps, args.delta, args.accountant, unit=unit):.6g}")
    else:
        z = noise_multiplier_for(args.target_epsilon, q, steps, args.delta, args.accountant, unit=unit)
        print(f"noise_multiplier={z:.6g}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .workers.distributed import WorkerTLS, serve

    tls = WorkerTLS.load(args.tls_cert, args.tls_key, args.tls_ca)
    return serve(args.port, args.host, max_concurrent_calls=args.max_concurrent_calls, tls=tls)


def cmd_site(args: argparse.Namespace) -> int:
    from .workers.distributed import WorkerTLS
    from .experiment.site_service import serve

    tls = WorkerTLS.load(args.tls_cert, args.tls_key, args.tls_ca)
    return serve(args.dataset, args.name, args.data, args.port, args.host, tls, args.ckks_secret, args.reproducible)


def cmd_certs(args: argparse.Namespace) -> int:
    from .workers.certs import make_certs, parse_hosts

    hosts = parse_hosts(args.hosts)
    try:
        paths = make_certs(args.dir, hosts=hosts, days=args.days, force=args.force)
    except FileExistsError as err:
        raise UsageError(f"DIR: {err}") from None
    except OSError as err:
        raise UsageError(f"DIR: cannot write {err.filename or args.dir}: {err.strerror or err}") from None
    for name, path in paths.items():
        print(f"wrote {path}")
    d, host = args.dir, hosts[0]
    print(f"certificates valid for {', '.join(hosts)} for {args.days} days. Worker (on {host}):\n"
          f"  python -m fedlab worker --host {host} --port 8000 --tls-cert {d / 'server.pem'} "
          f"--tls-key {d / 'server-key.pem'} --tls-ca {d / 'ca.pem'}\n"
          f"Driver:\n  python -m fedlab run ... --workers {host}:8000 --tls-cert {d / 'client.pem'} "
          f"--tls-key {d / 'client-key.pem'} --tls-ca {d / 'ca.pem'}\n"
          f"  (Python: fedlab.workers.distributed.use_worker_tls(cert={str(d / 'client.pem')!r}, "
          f"key={str(d / 'client-key.pem')!r}, ca={str(d / 'ca.pem')!r}))\n"
          f"Keep ca-key.pem away from the workers: it signs new certificates.")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .notebook import reproduce

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs: notebooks run at a time, at least 1 (got {args.jobs})")
    kwargs = {}
    if args.figures_dir is not None:
        kwargs["figures_dir"] = args.figures_dir
    if args.results_dir is not None:
        kwargs["results_dir"] = args.results_dir
    if args.check:
        if args.fast or kwargs:
            raise UsageError("--check: compares the full setting with the committed files; "
                             "it takes no --fast, --figures-dir or --results-dir")
        return reproduce.check(only=args.only, jobs=args.jobs)
    reproduce.reproduce(fast=args.fast, only=args.only, jobs=args.jobs, **kwargs)
    return 0


COMMANDS = {"run": cmd_run, "show": cmd_show, "list": cmd_list, "privacy": cmd_privacy, "worker": cmd_worker,
            "site": cmd_site, "certs": cmd_certs, "keys": cmd_keys, "reproduce": cmd_reproduce}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"fedlab {argv[0]}" if argv and argv[0] in COMMANDS else "fedlab"
    one_line_warnings()
    try:
        for name in plugin_names(argv):
            load_plugin(name)
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
    except ConfigError as err:
        print(f"{prog}: error: {option_name(err.field)}: {err.message}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - known failures: say them in one line
        known = ("WorkerUnreachableError", "WorkerLostError", "SiteUnreachableError", "SiteLostError", "SiteError",
                 "DataUnavailableError", "CheckpointMismatchError",
                 "StorageError", "EncryptionError", "NotebookFailed")
        if type(err).__name__ in known or isinstance(err, ValueError):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1 if type(err).__name__.startswith(("Worker", "Site", "Notebook")) else 2
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())

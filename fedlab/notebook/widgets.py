"""An interactive panel: controls for config fields, a Run button, a live curve.

Training runs in a background thread so the notebook stays responsive; the
curve is drawn with matplotlib into an ``ipywidgets.Image`` after every round
(no front-end extension beyond ipywidgets is needed). Built TFF processes are
cached by the runner, and finished runs by ``results_cache``, so the same
settings twice come back at once. A run that fails, or finishes no round
within :func:`fedlab.core.runtime.wait_limit`, says so in the status line (where
its thread stood, for a stall), and Run works again.
"""

from __future__ import annotations

import functools
import io
import threading
import time
from typing import Callable, Optional, Sequence

import pandas as pd

from ..rounds.attacks import ATTACKS
from ..aggregators.aggregation import names as aggregator_names, protocol_names
from ..algorithms.algorithms import ALGORITHMS, hparam_spec, hparam_type
from ..experiment.clients import partition_report_for
from ..experiment.config import FIELD_NAMES, RECORD_LEVEL, ExperimentConfig
from ..data.data import DATASETS
from ..models.models import MODELS
from ..data.partition import PARTITIONERS
from ..experiment.runner import run_experiment
from ..core.runtime import held, wait_limit, where
from ..systems.asynchronous import STALENESS
from ..systems.systems import DEVICE_PROFILES, POLICIES
from ..data.tasks import TASKS


def default_control(field: str, config: ExperimentConfig):
    """A sensible ipywidgets control for one config field, set to the config's value."""
    import ipywidgets as w

    style = {"description_width": "140px"}
    layout = w.Layout(width="420px")
    if field not in FIELD_NAMES:
        return hparam_control(field, config, style=style, layout=layout)
    value = getattr(config, field)
    common = dict(description=field, style=style, layout=layout, continuous_update=False)
    if field == "clients_per_round":
        return w.IntSlider(value=value, min=1, max=config.num_clients, **common)
    if field == "local_epochs":
        return w.IntSlider(value=value, min=1, max=20, **common)
    if field == "rounds":
        return w.IntSlider(value=value, min=1, max=max(100, value), **common)
    if field == "batch_size":
        options = sorted({0, 5, 10, 20, 50, value})
        return w.Dropdown(options=[("all (B=inf)" if b == 0 else str(b), b) for b in options], value=value,
                          description=field, style=style, layout=layout)
    if field in ("client_lr", "server_lr"):
        return w.FloatLogSlider(value=value if value is not None else 1.0, base=10, min=-3, max=1, step=0.1,
                                readout_format=".3g", **common)
    if field == "alpha":
        return w.FloatLogSlider(value=value, base=10, min=-2, max=2, step=0.1, readout_format=".3g", **common)
    if field == "noise_multiplier":
        return w.FloatSlider(value=value, min=0.0, max=3.0, step=0.05, **common)
    if field == "clip_norm":
        return w.FloatLogSlider(value=value, base=10, min=-2, max=1, step=0.1, readout_format=".3g", **common)
    if field == "delta":
        return w.FloatLogSlider(value=config.effective_delta, base=10, min=-9, max=-1, step=0.5,
                                readout_format=".1e", **common)
    if field == "dp":
        return w.Dropdown(options=["none", *aggregator_names("dp"), RECORD_LEVEL], value=value, description=field,
                          style=style,
                          layout=layout)
    if field == "quantization_bits":
        return w.IntSlider(value=value, min=0, max=16, **common)
    if field == "secure_aggregation":
        return w.Checkbox(value=value, description=field, style=style, layout=layout)
    if field == "secure_protocol":
        return w.Dropdown(options=["none", *protocol_names()], value=value, description=field, style=style,
                          layout=layout)
    if field == "attacker_fraction":
        return w.FloatSlider(value=value, min=0.0, max=0.5, step=0.05, **common)
    if field == "attack":
        return w.Dropdown(options=list(ATTACKS.names()), value=value, description=field, style=style, layout=layout)
    if field == "attack_boost":
        return w.IntSlider(value=value, min=1, max=10, **common)
    if field == "robust":
        return w.Dropdown(options=["none", *aggregator_names("robust")], value=value, description=field, style=style,
                          layout=layout)
    if field == "robust_fraction":
        return w.FloatSlider(value=value, min=0.0, max=0.45, step=0.05, **common)
    if field == "straggler_policy":
        return w.Dropdown(options=list(POLICIES), value=value, description=field, style=style, layout=layout)
    if field == "device_profile":
        return w.Dropdown(options=list(DEVICE_PROFILES.names()), value=value, description=field, style=style,
                          layout=layout)
    if field == "round_deadline":  # simulated seconds, 1 s to about 3 h
        return w.FloatLogSlider(value=60.0 if value is None else value, base=10, min=0, max=4, step=0.05,
                                readout_format=".3g", **common)
    if field == "over_selection":
        return w.FloatSlider(value=value, min=1.0, max=3.0, step=0.1, **common)
    if field == "dropout_rate":
        return w.FloatSlider(value=value, min=0.0, max=0.9, step=0.05, **common)
    if field == "async_concurrency":  # 0: synchronous rounds
        return w.IntSlider(value=value, min=0, max=config.num_clients, **common)
    if field == "async_buffer":  # read only with async_concurrency > 0, at most it
        return w.IntSlider(value=max(config.effective_async_buffer, 1), min=1, max=config.num_clients, **common)
    if field == "async_staleness":
        return w.Dropdown(options=list(STALENESS.names()), value=value, description=field, style=style,
                          layout=layout)
    if field == "partition":
        options = [e.name for e in PARTITIONERS.entries() if not e.component.needs_sites]
        return w.Dropdown(options=options, value=value, description=field, style=style, layout=layout)
    if field in ("algorithm", "dataset", "model"):
        registry = {"algorithm": ALGORITHMS, "dataset": DATASETS, "model": MODELS}[field]
        return w.Dropdown(options=list(registry.names()), value=value, description=field, style=style,
                          layout=layout)
    raise ValueError(f"field: no default control for {field!r}; pass one in controls=")


def _param_field(name: str):
    """The hyperparameter field ``name`` of the first registered algorithm that has one."""
    for entry in ALGORITHMS.entries():
        for f in entry.component.param_fields():
            if f.name == name:
                return f, entry.component
    raise ValueError(f"field: {name!r} is neither a config field nor a parameter of a registered algorithm")


def hparam_control(name: str, config: ExperimentConfig, *, style, layout):
    """A control for an algorithm's hyperparameter, from its declared bounds (log slider if ``log``)."""
    import math

    import ipywidgets as w

    f, algorithm = _param_field(name)
    spec, kind = hparam_spec(f), hparam_type(f)
    params = config.algorithm_params
    value = getattr(params, name) if name in params.to_dict() else algorithm.params().to_dict()[name]
    common = dict(description=name, style=style, layout=layout, continuous_update=False)
    if kind is bool:
        return w.Checkbox(value=value, description=name, style=style, layout=layout)
    low = spec.low if spec.low is not None else 0.0
    if kind is int:
        return w.IntSlider(value=value, min=int(low), max=int(spec.high if spec.high is not None else max(10, 2 * value)),
                           **common)
    if spec.log:
        lo = math.log10(low) if low > 0 else -4.0
        hi = math.log10(spec.high) if spec.high else max(lo + 4, math.log10(max(value, 1e-12)) + 2)
        return w.FloatLogSlider(value=max(value, 10 ** lo), base=10, min=lo, max=hi, step=0.25, readout_format=".3g",
                                **common)
    high = spec.high if spec.high is not None else max(1.0, 2 * value)
    if high - low > 1e4 * max(abs(low), 1.0):  # too wide for a slider's 100 steps (q-FFL's weight_bound): a box
        return w.BoundedFloatText(value=value, min=low, max=high, description=name, style=style, layout=layout)
    step = (high - low) / 100
    return w.FloatSlider(value=min(value, high - step if spec.high_open else high), min=low,
                         max=high - step if spec.high_open else high, step=step, **common)


class ExperimentPanel:
    """Controls for ``fields`` of ``base``; Run trains and redraws round by round, Stop ends a run after its
    current round.

    The status line reads like an instrument's: round r/R, the metric, seconds per round, and epsilon or
    megabytes sent where they apply. The plot keeps up to ``keep_previous`` earlier runs, each labelled by
    only the settings that differ between the runs shown. ``side_plot(config, ax, history)`` optionally
    draws a second panel that updates with the settings and every round; ``"label_distribution"`` draws the
    partition's labels per client, ``"site_accuracy"`` (``"site_c_index"``) the global model's accuracy
    (C-index) on each site (sites left out of training hatched). With an ``exclude_clients`` control and the natural partition, every site not
    excluded takes part in every round. With ``results_cache``, a stopped run keeps its checkpoint there
    and Run with the same settings resumes it.
    """

    def __init__(self, base: ExperimentConfig, fields: Sequence[str], *, results_cache=None,
                 metric: Optional[str] = None, controls: Optional[dict] = None,
                 side_plot: Optional[Callable] = None, info: Optional[Callable] = None,
                 keep_previous: int = 4):
        import ipywidgets as w

        self.base = base
        # default: what the data's task reports on the test set (eval_accuracy; a survival task's eval_c_index)
        self.metric = metric or f"eval_{TASKS[DATASETS[base.dataset].task].eval_metric}"
        self.results_cache = results_cache
        self.side_plot = {"label_distribution": _label_distribution,
                          "site_accuracy": _site_accuracy,
                          "site_c_index": functools.partial(_site_accuracy, metric="c_index")}.get(side_plot, side_plot)
        self.keep_previous = keep_previous
        self.controls = {f: (controls or {}).get(f) or default_control(f, base) for f in fields}
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="end the run after the current round" + (
                                        " (its checkpoint is kept)" if results_cache is not None else ""))
        self.progress = w.IntProgress(value=0, min=0, max=base.rounds, description="rounds")
        self.status = w.HTML()
        self.info = info
        self.info_line = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto", object_fit="contain"))
        self.previous: list[tuple[ExperimentConfig, pd.DataFrame]] = []
        self.history: Optional[pd.DataFrame] = None
        self.last_from_cache = False
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        # Set under the lock by start(), cleared first thing as a run ends or stalls: Run, Stop and the status
        # line read it, from the kernel's thread, the training thread and the run's watch alike.
        self._lock = threading.Lock()
        self._active = False
        self._run_id = 0  # the current run's number: a stalled run's late updates, if any, are ignored
        self._last_progress = 0.0  # time.monotonic() of the current run's start or latest round
        from ..core.runtime import current_context

        # TFF's context stack is per thread, and ipykernel 7 handles button clicks outside the
        # thread that runs cells: take the runtime now, while a notebook cell is building the panel.
        self._context = current_context()
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        for control in self.controls.values():
            control.observe(lambda _: self._settings_changed(), names="value")
        self._settings_changed()
        # The controls keep their width (a slider's value must stay readable); the figure shrinks or wraps below.
        controls_box = w.VBox(list(self.controls.values())
                              + [self.info_line, w.HBox([self.run_button, self.stop_button, self.progress]),
                                 self.status])
        # A two-panel figure is too wide to sit beside the controls without squeezing them.
        controls_box.layout = w.Layout(flex="0 0 auto", min_width="430px")
        self.widget = w.VBox([controls_box, self.image]) if self.side_plot else w.HBox(
            [controls_box, self.image], layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        self._draw(None)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def config(self) -> ExperimentConfig:
        """The base config with the controls' current values (validated)."""
        values = {f: c.value for f, c in self.controls.items()}
        algorithm = ALGORITHMS[values.get("algorithm", self.base.algorithm)]
        own = {f.name for f in algorithm.param_fields()}
        values = {f: v for f, v in values.items() if f in FIELD_NAMES or f in own}  # others mean nothing here
        if "exclude_clients" in values and self.base.partition == "natural":
            values["clients_per_round"] = self.base.num_clients - len(set(values["exclude_clients"]))
        if values.get("straggler_policy", self.base.straggler_policy) == "wait" and "round_deadline" in values:
            values["round_deadline"] = None  # waiting for everyone has no deadline: the slider is ignored
        if "async_buffer" in values:  # synchronous rounds have no buffer; one larger than the clients in flight
            concurrency = values.get("async_concurrency", self.base.async_concurrency)  # fills at most with them
            values["async_buffer"] = min(values["async_buffer"], concurrency) if concurrency else None
        return self.base.replace(**values)

    def _settings_changed(self) -> None:
        """Validates the settings once: an invalid one is shown (once) and Run is disabled until it is fixed."""
        try:
            config = self.config()
        except ValueError as err:
            self.info_line.value = f"<b style='color:#b00'>{err}</b>"
            self.run_button.disabled = True
            return
        self.info_line.value = self.info(config) if self.info is not None else ""
        self.run_button.disabled = self.running

    @property
    def running(self) -> bool:
        return self._active

    def start(self) -> None:
        """Starts a run in the background (the Run button calls this)."""
        try:
            config = self.config()
        except ValueError:
            return  # the settings' error is already shown, and Run is disabled
        with held(self._lock, "the panel's run state"):
            if self._active:
                return  # Run is disabled while a run goes on; a click that raced it does nothing
            self._active = True
            self._run_id += 1
            self._last_progress = time.monotonic()
            self._stop = threading.Event()  # a stalled run keeps its own, set
        self.error, self.history = None, None
        self.progress.max, self.progress.value = config.rounds, 0
        self.status.value = f"round 0/{config.rounds} · starting…"
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._train, args=(config, self._context, self._run_id, self._stop),
                                        daemon=True, name=f"fedlab panel run {self._run_id}")
        self._thread.start()
        threading.Thread(target=self._watch, args=(self._run_id, self._thread, config), daemon=True,
                         name=f"fedlab panel watch {self._run_id}").start()

    def stop(self) -> None:
        """Ends the current run after its current round (the Stop button calls this)."""
        with held(self._lock, "the panel's run state"):
            if not self._active or self._stop.is_set():
                return
            self._stop.set()
            self.stop_button.disabled = True
            self.status.value += " · stopping after this round…"

    def wait(self, timeout: Optional[float] = None) -> Optional[pd.DataFrame]:
        """Blocks until the current run ends and returns its history, re-raising its error.

        At most ``timeout`` seconds when given; in any case a run that finishes no round within
        :func:`fedlab.core.runtime.wait_limit` ends the wait with a ``TimeoutError`` saying where its thread stood.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        thread = self._thread
        while thread is not None and thread.is_alive() and self._active:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the panel's run is still going after {timeout:g} s (round "
                                   f"{self.progress.value} of {self.progress.max}); its thread is at {where(thread)}")
            thread.join(min(1.0, left))
        if self.error is not None:
            raise self.error
        return self.history

    def _watch(self, run_id: int, thread: threading.Thread, config: ExperimentConfig) -> None:
        """Ends the panel's wait for a run that finishes no round within the wait limit: the status line says
        where the run's thread stands, and Run works again (the stuck thread, should it ever finish a round,
        stops there, and its updates are ignored)."""
        limit = wait_limit()
        while thread.is_alive():
            thread.join(1.0)
            with held(self._lock, "the panel's run state"):
                if run_id != self._run_id or not self._active:
                    return
                quiet = time.monotonic() - self._last_progress
                if quiet <= limit:
                    continue
                # the error is set before the run is marked inactive: wait() reads it as soon as _active is False
                self.error = TimeoutError(f"the panel's run finished no round in {quiet:.0f} s (round "
                                          f"{self.progress.value} of {config.rounds}; the limit is "
                                          f"FEDLAB_WAIT_LIMIT_S={limit:g}); its thread is at {where(thread)}")
                self._active = False
                self._stop.set()
                self.stop_button.disabled = True
            self.status.value = f"<b style='color:#b00'>stalled: {self.error}. Run starts again.</b>"
            self._settings_changed()
            return

    def _checkpoint_dir(self, config: ExperimentConfig):
        if self.results_cache is None:
            return None
        import pathlib

        from ..experiment.runner import component_digests
        from ..core.storage import cache_key

        # keyed like the result cache (config, fedlab's code, the user's components): never resumed by other code
        return pathlib.Path(self.results_cache) / "panel-checkpoints" / cache_key(config, component_digests(config))

    def _current(self, run_id: int) -> bool:
        """Whether ``run_id`` is still the panel's run (not one given up on as stalled)."""
        return run_id == self._run_id and self._active

    def _train(self, config: ExperimentConfig, context, run_id: int, stop: threading.Event) -> None:
        from ..experiment.runner import RunStopped
        from ..core.runtime import real_stdio, run_in_context

        def on_round(row, history):
            if not self._current(run_id):
                return
            self._last_progress = time.monotonic()
            self.progress.value = int(row["round"])
            stopping = " · stopping after this round…" if stop.is_set() else ""
            self.status.value = self._status(config, history, finished=False) + stopping
            self._draw(history, config)

        try:
            with real_stdio():
                history = run_in_context(context, run_experiment, config, results_cache=self.results_cache,
                                         progress=False, callback=on_round, stop=stop,
                                         checkpoint_dir=self._checkpoint_dir(config))
            if not self._current(run_id):
                return
            self.history = history
            self.last_from_cache = bool(history.attrs.get("from_cache"))
            self.progress.value = config.rounds
            earlier = [(c, h) for c, h in self.previous if c != config]  # a repeat is shown once, as the latest
            self.previous = (earlier + [(config, history)])[-self.keep_previous:]
            self._draw(history, config, current_in_previous=True)
            self.status.value = self._status(config, history, finished=True)
        except RunStopped as stopped:
            if self._current(run_id):
                kept = " (its checkpoint is kept: Run with these settings resumes it)" if self.results_cache else ""
                self.status.value = (str(stopped) if stopped.waiting
                                     else f"stopped after round {stopped.round} of {config.rounds}{kept}")
        except BaseException as err:  # shown in the panel and re-raised by wait()
            if self._current(run_id):
                self.error = err
                self.status.value = f"<b style='color:#b00'>{type(err).__name__}: {err}</b>"
        finally:
            with held(self._lock, "the panel's run state"):
                if run_id != self._run_id:
                    return  # given up on as stalled; a newer run may be going
                self._active = False
                self.stop_button.disabled = True
            self._settings_changed()

    def _status(self, config: ExperimentConfig, history: pd.DataFrame, *, finished: bool) -> str:
        """round r/R · metric · seconds per round · epsilon or megabytes sent."""
        last = history.iloc[-1]
        measured = history.dropna(subset=[self.metric]) if self.metric in history else history.iloc[0:0]
        parts = []
        if len(measured):
            value = f"{self.metric.replace('_', ' ')} = {measured[self.metric].iloc[-1]:.3f}"
            parts.append(f"{value} after {int(measured['round'].iloc[-1])} rounds" if finished else value)
        if not finished:
            parts.insert(0, f"round {int(last['round'])}/{config.rounds}")
        if "seconds" in history and not self.last_from_cache:
            parts.append(f"{history['seconds'].median():.2f} s/round")
        if "epsilon" in history and pd.notna(last.get("epsilon")):
            parts.append(f"ε = {last['epsilon']:.3g}")
        elif config.quantization_bits or config.secure_aggregation:
            parts.append(f"{last['cumulative_bytes'] / 1e6:.2f} MB sent")
        if "secagg_bytes_per_client" in history and pd.notna(last.get("secagg_bytes_per_client")):
            parts.append(f"{config.secure_protocol}: {last['secagg_bytes_per_client'] / 1e3:.0f} kB per client")
        if finished and history.attrs.get("from_cache"):
            parts.append("(from the result cache)")
        elif finished and int(last["round"]) == config.rounds:
            parts.append("done")
        return " · ".join(parts)

    def _label(self, config: ExperimentConfig, against: Sequence[ExperimentConfig]) -> str:
        """The settings of ``config`` that differ among the runs shown, rounded; all controls if none differ."""
        fields = [f for f in self.controls if hasattr(config, f)]
        differing = [f for f in fields if any(getattr(other, f, None) != getattr(config, f) for other in against)]
        return ", ".join(f"{f}={_short(self._shown(f, getattr(config, f)))}" for f in (differing or fields))

    def _shown(self, field: str, value):
        if field == "exclude_clients":
            names = _site_names(self.base)
            return "none" if not value else "+".join(names[c] if names else str(c) for c in value)
        return value

    def _draw(self, history: Optional[pd.DataFrame], config: Optional[ExperimentConfig] = None, *,
              current_in_previous: bool = False) -> None:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        config = config or self.base
        ncols = 2 if self.side_plot else 1
        fig = Figure(figsize=(5.6 * ncols + 1.6, 3.6), layout="constrained")
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
        ax = axes[0]
        earlier = self.previous[:-1] if current_in_previous else self.previous
        shown = [c for c, _ in earlier] + [config]
        for i, (old_config, old) in enumerate(earlier):
            if self.metric not in old:  # a run on data of another task (the dataset control moved)
                continue
            data = old.dropna(subset=[self.metric])
            ax.plot(data["round"], data[self.metric], color=f"C{i + 1}", alpha=0.55, lw=1.2, marker=".", ms=3,
                    label=_wrapped(self._label(old_config, shown)))
        if history is not None and len(history) and self.metric in history:
            data = history.dropna(subset=[self.metric])
            ax.plot(data["round"], data[self.metric], marker="o", ms=3.5, color="C0", lw=2,
                    label=_wrapped(self._label(config, shown) + " (latest)"))
        if ax.lines:
            fig.legend(loc="outside right upper", fontsize="small", title="runs", title_fontsize="small")
        ax.set_xlim(0.5, max(config.rounds, 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if "accuracy" in self.metric or "c_index" in self.metric:
            ax.set_ylim(0, 1)
        ax.set_xlabel("round")
        ax.set_ylabel(self.metric.replace("_", " "))
        ax.grid(alpha=0.3)
        if self.side_plot:
            self.side_plot(config, axes[1], history)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        self.image.value = buffer.getvalue()


def _wrapped(label: str, width: int = 32) -> str:
    """A legend label on lines of about ``width`` characters, broken between settings: the legend sits outside the
    axes, and one line listing every control (six in notebook 05) is wider than the figure, which left constrained
    layout no room for the axes (matplotlib warned and drew the figure without it)."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width, break_long_words=False, break_on_hyphens=False)) or label


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _site_names(config: ExperimentConfig):
    if config.partition != "natural":
        return None
    from ..experiment.clients import dataset_for

    return dataset_for(config).site_names


def exclude_selector(names: Sequence[str], excluded: Sequence[int] = ()):
    """A multi-select of sites to leave out of training (they are still evaluated)."""
    import ipywidgets as w

    return w.SelectMultiple(options=[(n, i) for i, n in enumerate(names)], value=tuple(excluded),
                            description="exclude", rows=len(names), style={"description_width": "140px"})


def _site_accuracy(config: ExperimentConfig, ax, history, metric: str = "accuracy") -> None:
    from ..reporting.plots import plot_site_accuracy

    names = _site_names(config)
    excluded = [names[c] for c in config.exclude_clients] if names else []
    plot_site_accuracy(history, ax=ax, site_names=names, excluded=excluded, metric=metric)


def _label_distribution(config: ExperimentConfig, ax, history=None) -> None:
    from ..reporting.plots import plot_label_distribution

    plot_label_distribution(partition_report_for(config), ax=ax, max_clients=50,
                            title=f"labels per client ({config.partition})")

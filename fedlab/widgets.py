"""An interactive panel: controls for config fields, a Run button, a live curve.

Training runs in a background thread so the notebook stays responsive; the
curve is drawn with matplotlib into an ``ipywidgets.Image`` after every round
(no front-end extension beyond ipywidgets is needed). Built TFF processes are
cached by the runner, and finished runs by ``results_cache``, so the same
settings twice come back at once.
"""

from __future__ import annotations

import io
import threading
from typing import Callable, Optional, Sequence

import pandas as pd

from .aggregation import names as aggregator_names
from .algorithms import ALGORITHMS, hparam_spec, hparam_type
from .clients import partition_report_for
from .config import FIELD_NAMES, ExperimentConfig
from .data import DATASETS
from .models import MODELS
from .partition import PARTITIONERS
from .runner import run_experiment


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
        return w.Dropdown(options=["none", *aggregator_names("dp")], value=value, description=field, style=style,
                          layout=layout)
    if field == "quantization_bits":
        return w.IntSlider(value=value, min=0, max=16, **common)
    if field == "secure_aggregation":
        return w.Checkbox(value=value, description=field, style=style, layout=layout)
    if field == "attacker_fraction":
        return w.FloatSlider(value=value, min=0.0, max=0.5, step=0.05, **common)
    if field == "robust":
        return w.Dropdown(options=["none", *aggregator_names("robust")], value=value, description=field, style=style,
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
    step = (high - low) / 100
    return w.FloatSlider(value=min(value, high - step if spec.high_open else high), min=low,
                         max=high - step if spec.high_open else high, step=step, **common)


class ExperimentPanel:
    """Controls for ``fields`` of ``base``; Run trains and redraws round by round.

    ``side_plot(config, ax, history)`` optionally draws a second panel that
    updates with the settings and every round; ``"label_distribution"`` draws the
    partition's labels per client, ``"site_accuracy"`` the global model's
    accuracy on each site. With an ``exclude_clients`` control and the natural
    partition, every site not excluded takes part in every round.
    """

    def __init__(self, base: ExperimentConfig, fields: Sequence[str], *, results_cache=None,
                 metric: str = "eval_accuracy", controls: Optional[dict] = None,
                 side_plot: Optional[Callable] = None, info: Optional[Callable] = None,
                 keep_previous: int = 4):
        import ipywidgets as w

        self.base = base
        self.metric = metric
        self.results_cache = results_cache
        self.side_plot = {"label_distribution": _label_distribution,
                          "site_accuracy": _site_accuracy}.get(side_plot, side_plot)
        self.keep_previous = keep_previous
        self.controls = {f: (controls or {}).get(f) or default_control(f, base) for f in fields}
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=base.rounds, description="rounds")
        self.status = w.HTML()
        self.info = info
        self.info_line = w.HTML()
        self.image = w.Image(format="png")
        self.previous: list[tuple[str, pd.DataFrame]] = []
        self.history: Optional[pd.DataFrame] = None
        self.last_from_cache = False
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        from .runtime import current_context

        # TFF's context stack is per thread, and ipykernel 7 handles button clicks outside the
        # thread that runs cells: take the runtime now, while a notebook cell is building the panel.
        self._context = current_context()
        self.run_button.on_click(lambda _: self.start())
        for control in self.controls.values():
            control.observe(lambda _: self._update_info(), names="value")
        self._update_info()
        controls_box = w.VBox(list(self.controls.values())
                              + [self.info_line, w.HBox([self.run_button, self.progress]), self.status])
        # A two-panel figure is too wide to sit beside the controls without squeezing them.
        self.widget = w.VBox([controls_box, self.image]) if self.side_plot else w.HBox([controls_box, self.image])
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
        return self.base.replace(**values)

    def _update_info(self) -> None:
        if self.info is None:
            return
        try:
            self.info_line.value = self.info(self.config())
        except ValueError as err:
            self.info_line.value = f"<b style='color:#b00'>{err}</b>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Starts a run in the background (the Run button calls this)."""
        if self.running:
            self.status.value = "<i>already running</i>"
            return
        try:
            config = self.config()
        except ValueError as err:
            self.status.value = f"<b style='color:#b00'>{err}</b>"
            return
        self.error = None
        self.progress.max, self.progress.value = config.rounds, 0
        self.status.value = "running…"
        self.run_button.disabled = True
        self._thread = threading.Thread(target=self._train, args=(config, self._context), daemon=True)
        self._thread.start()

    def wait(self, timeout: Optional[float] = None) -> Optional[pd.DataFrame]:
        """Blocks until the current run ends; re-raises its error."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.history

    def _train(self, config: ExperimentConfig, context) -> None:
        from .runtime import run_in_context

        def on_round(row, history):
            self.progress.value = int(row["round"])
            self._draw(history, config)

        try:
            from .runtime import real_stdio

            with real_stdio():
                history = run_in_context(context, run_experiment, config, results_cache=self.results_cache,
                                         progress=False, callback=on_round)
            self.history = history
            self.last_from_cache = bool(history.attrs.get("from_cache"))
            self.progress.value = config.rounds
            self._draw(history, config)
            self.previous = (self.previous + [(self._label(config), history)])[-self.keep_previous:]
            last = history.dropna(subset=[self.metric]).iloc[-1]
            source = " (from the result cache)" if self.last_from_cache else ""
            self.status.value = f"{self.metric} = {last[self.metric]:.3f} after {int(last['round'])} rounds{source}"
        except BaseException as err:  # shown in the panel and re-raised by wait()
            self.error = err
            self.status.value = f"<b style='color:#b00'>{type(err).__name__}: {err}</b>"
        finally:
            self.run_button.disabled = False

    def _label(self, config: ExperimentConfig) -> str:
        return ", ".join(f"{f}={getattr(config, f)}" for f in self.controls if hasattr(config, f))

    def _draw(self, history: Optional[pd.DataFrame], config: Optional[ExperimentConfig] = None) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        config = config or self.base
        ncols = 2 if self.side_plot else 1
        fig = Figure(figsize=(5.5 * ncols, 3.6))
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
        ax = axes[0]
        for label, old in self.previous:
            data = old.dropna(subset=[self.metric])
            ax.plot(data["round"], data[self.metric], color="0.75", lw=1)
        if history is not None and len(history):
            data = history.dropna(subset=[self.metric])
            ax.plot(data["round"], data[self.metric], marker="o", ms=3, color="C0", label=self._label(config))
            ax.legend(fontsize="x-small", loc="lower right")
        ax.set_xlim(0.5, max(config.rounds, 1) + 0.5)
        ax.set_xlabel("round")
        ax.set_ylabel(self.metric.replace("_", " "))
        ax.grid(alpha=0.3)
        if self.side_plot:
            self.side_plot(config, axes[1], history)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        self.image.value = buffer.getvalue()


def exclude_selector(names: Sequence[str], excluded: Sequence[int] = ()):
    """A multi-select of sites to leave out of training (they are still evaluated)."""
    import ipywidgets as w

    return w.SelectMultiple(options=[(n, i) for i, n in enumerate(names)], value=tuple(excluded),
                            description="exclude", rows=len(names), style={"description_width": "140px"})


def _site_accuracy(config: ExperimentConfig, ax, history) -> None:
    from .plots import plot_site_accuracy

    plot_site_accuracy(history, ax=ax)


def _label_distribution(config: ExperimentConfig, ax, history=None) -> None:
    from .plots import plot_label_distribution

    plot_label_distribution(partition_report_for(config), ax=ax, max_clients=50,
                            title=f"labels per client ({config.partition})")

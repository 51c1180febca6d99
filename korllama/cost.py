"""Time to quality: what each compared system's training cost in CPU minutes, beside the macro-F1 it reached, for
`korllama compare`'s figure. A run's cost is its train_summary.json's `cpu_seconds` (a resumed run's earlier CPU
time added) and its curve the `eval_cpu_minutes` of trainer_state.json's evaluations; the tree baseline's is the
`fit_cpu_seconds` its metrics.json records. CPU time is process time (time.process_time(): every thread of the
main process). A system with no such record (a bare base model, a run trained before korllama recorded CPU time)
is named with the reason, not drawn."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from korllama import plots
from korllama.evaluation import Evaluation
from korllama.layout import RunDir


@dataclass
class Cost:
    minutes: float | None  # None: not recorded (`missing` says why)
    run: Path | None = None  # the run folder whose curve this is (one curve per run)
    curve: list[tuple[float, float]] = field(default_factory=list)  # (CPU minutes, validation macro-F1)
    missing: str = ""  # why no cost is known, for the report's words


def training_cost(evaluation: Evaluation) -> Cost:
    """The training CPU minutes of the system an evaluation (metrics.json) belongs to, and its run's curve."""
    if evaluation.trees:
        if evaluation.fit_cpu_seconds is not None:
            return Cost(evaluation.fit_cpu_seconds / 60)
        return Cost(None, missing="fitted before korllama recorded CPU time")
    if evaluation.own_run is None:  # a bare base model, or one scored with a run's prompts
        return Cost(None, missing="a base model, not trained here")
    run = RunDir(evaluation.own_run)
    if not run.root.is_dir():  # metrics.json names the folder as evaluate was given it: moved, deleted, another cwd
        return Cost(None, missing=f"its run folder {run.root} is not found from here")
    summary, state = _json(run.summary), _json(run.trainer_state)
    cpu = summary.get("cpu_seconds")
    if not isinstance(cpu, int | float):
        return Cost(None, missing="trained before korllama recorded CPU time")
    curve = [(e["eval_cpu_minutes"], e["eval_macro_f1"]) for e in state.get("log_history", [])
             if isinstance(e, dict) and "eval_cpu_minutes" in e and "eval_macro_f1" in e]
    return Cost((cpu + summary.get("cpu_seconds_before_resume", 0.0)) / 60, run.root.resolve(), curve)


def _json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def figure_data(evals: list[Evaluation], costs: list[Cost]):
    """What the figure draws: (points: (system, minutes, macro-F1, colour k) of the systems with a cost; curves:
    (run name, curve, colour k), each run once; unknown: "system (why)" of the others)."""
    points = [(e.system, c.minutes, e.macro_f1, k) for k, (e, c) in enumerate(zip(evals, costs))
              if c.minutes is not None]
    unknown = [f"{e.system} ({c.missing})" for e, c in zip(evals, costs) if c.minutes is None]
    curves, seen = [], set()
    for k, c in enumerate(costs):
        if c.curve and c.run not in seen:
            seen.add(c.run)
            curves.append((c.run.name, c.curve, k))
    return points, curves, unknown


def time_to_quality(evals: list[Evaluation]) -> dict:
    """The report's section: "png" and "caption" when some system has a cost, else a "note" (the figure left
    out); the keys absent from one are None."""
    points, curves, unknown = figure_data(evals, [training_cost(e) for e in evals])
    if not points:
        return {"png": None, "caption": None,
                "note": f"no system here records the CPU time its training cost ({'; '.join(unknown)}), so the "
                        "figure is left out; runs trained and baselines fitted by this korllama record it."}
    caption = ("Each system's macro-F1 on the scored rows (the table above) against the CPU minutes its training "
               "cost: process CPU time, every thread (a run's whole training, a tree baseline's search and fit).")
    if curves:
        caption += (" Lines: a run's validation curve, macro-F1 on its validation rows (its training's evaluation "
                    "sample, not the scored rows) at each evaluation, against the CPU minutes spent until then.")
    if unknown:
        caption += " No training cost known, so not drawn: " + "; ".join(unknown) + "."
    return {"png": plots.plot_time_to_quality(points, curves), "caption": caption, "note": None}

"""The model card: RUN/model_card.md, written at the end of training (and again by `write_model_card(RUN)`).

What a person deciding whether to use the model needs on one page: the base model and where it came from, the
data (file, rows, hash, split), the prompt template, the recipe, validation metrics, calibration, the decision
rule, the reasons the model leans on (global importance, korllama.explain), group metrics, and the intended use and
limits in plain words.

The validation figures come from the kept weights loaded the way `korllama predict` loads them (so the card also
proves the run loads), scored on the run's validation sample: the `train.eval_rows` held-out rows the best
checkpoint was chosen on, hence slightly optimistic; `korllama evaluate RUN --held-out` scores every held-out
row. The neutral references of korllama.explain are computed here from the training split and stored beside the
card (RUN/references.json), so `korllama explain` and the service need not read the training data again.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from korllama import __version__, bases
from korllama.config import config_to_yaml
from korllama.data import Table
from korllama.decision import DecisionRule
from korllama.evaluation import Evaluation, metrics
from korllama.explain import describe, explain, importance
from korllama.groups import group_columns, group_gaps, group_metrics
from korllama.io import write_text
from korllama.layout import RunDir
from korllama.plots import plot_train_curve
from korllama.references import reference_values, save_references
from korllama.run import Run
from korllama.scoring import predict_labels
from korllama.templates import render

IMPORTANCE_ROWS = 200  # validation rows explained for the card's global importance, at most
IMPORTANCE_SECONDS = 60  # about how long the card's explanations may take (each row is scored once per field + 1)


def document_run(run: Run, on_error: str = "warn", card: bool = True) -> Path | None:
    """What a finished training leaves for people: RUN/train_curve.png from its trainer_state.json, and (`card`) the
    model card (write_model_card). The CLI and the demo call it after `train()`; training itself writes neither."""
    log_history = json.loads(run.dir.trainer_state.read_text("utf-8"))["log_history"]
    plot_train_curve(log_history, run.dir.train_curve)
    if not card:
        return None
    print(f"korllama: writing {run.dir.model_card.name} (the validation rows scored again and explained: up to "
          f"about {IMPORTANCE_SECONDS} s more)", file=sys.stderr, flush=True)
    return write_model_card(run, on_error=on_error)


def write_model_card(run: Run, on_error: str = "raise") -> Path | None:
    """Write RUN/model_card.md and RUN/references.json for a finished run. With on_error="warn" a failure is a
    warning (after training: a finished training is not lost to its card), and None is returned."""
    try:
        return _write(run)
    except Exception as exc:
        if on_error != "warn":
            raise
        warnings.warn(f"the model card of {run.root} was not written: {exc}", stacklevel=2)
        return None


def _write(run: Run) -> Path:

    config, folder = run.config, run.dir
    summary = folder.read_summary()
    table = run.training_table()
    parts = run.split()
    train_part, valid_part = parts.train, parts.valid
    # the figures: on test rows, where no choice was made (a sample as large as the training's validation sample),
    # or, for a run split two ways, on the validation sample its best checkpoint was chosen on (optimistic)
    eval_part = run.eval_sample(valid_part if parts.test is None else parts.test)
    spec, classes = run.spec, run.classes

    refs = reference_values(train_part)
    save_references(folder.references, refs, table.source, len(train_part))

    template = run.template
    started = time.perf_counter()
    proba = run.predict_proba(eval_part, config.train.eval_batch_size)
    rows_per_s = len(eval_part) / max(time.perf_counter() - started, 1e-9)
    pred = predict_labels(proba, classes)
    truth = eval_part.labels.tolist()
    ordinal = getattr(spec.label, "ordinal", None)  # label sets without an order get no QWK
    figures = metrics(truth, pred, classes, proba) if ordinal is None else metrics(truth, pred, classes, proba,
                                                                                   ordinal)
    _, kinds = group_columns(eval_part)
    groups = group_metrics(eval_part.frame, kinds, truth, pred, classes, proba.max(axis=1))
    fields = run.fields
    explained = eval_part.sample(explained_rows(rows_per_s, len(fields), len(eval_part)), seed=0)
    reasons = explain(lambda rows: run.predict_proba(rows, config.train.eval_batch_size), explained,
                      fields, refs, classes) if fields else None

    text = render_card(folder, config, summary, table, train_part, valid_part, eval_part, template, figures, groups,
                       group_gaps(groups, classes), importance(reasons.frame()) if reasons is not None else None,
                       refs, fields, explained_rows=len(explained), test_part=parts.test)
    write_text(folder.model_card, text)
    return folder.model_card


def explained_rows(rows_per_s: float, fields: int, available: int) -> int:
    """How many validation rows the card explains: each costs `fields` + 1 scorings, so as many as fit in about
    IMPORTANCE_SECONDS at the rate the eval rows were just scored (a 270M model on a CPU with the Korean prompt
    scores ~3 rows/s: 200 rows x 14 prompts took minutes), at least 20 and at most IMPORTANCE_ROWS."""
    fit = int(rows_per_s * IMPORTANCE_SECONDS / (fields + 1))
    return max(1, min(available, IMPORTANCE_ROWS, max(20, fit)))


# --- the page: korllama/templates/model_card.md.j2 lays out what these functions prepare -------------------------

def _base(config, recorded: dict | None) -> dict:
    """The Model section's facts: the tiny base's size, or a named base's record (as training recorded it in
    train_summary.json, else the cache's) / local folder / hub id; LoRA."""
    base = config.model.base
    facts = {"name": base, "tiny": config.model.tiny if base == "tiny" else None, "record": None, "local": False,
             "lora": config.lora, "head": config.model.head}
    if base != "tiny":
        record = recorded or (bases.provenance(bases.base_dir(base)) if bases.is_named_base(base) else None)
        if record:  # its plain values; nested ones (file lists) stay in the record
            facts["record"] = [(k, v) for k, v in record.items() if not isinstance(v, dict | list)]
        facts["local"] = Path(base).is_dir()
    return facts


def render_card(run: RunDir, config, summary: dict, table: Table, train_part: Table, valid_part: Table,
                eval_part: Table, template, figures: Evaluation, groups: pd.DataFrame, gaps: list[str],
                weights: pd.Series | None, refs: dict, fields: list[str], explained_rows: int | None = None,
                test_part: Table | None = None) -> str:
    """The card's text. `eval_part`: the rows its figures are on, a sample of `test_part` when the run has test
    rows, else the validation sample."""
    spec, classes = table.spec, table.spec.label.classes
    data = summary.get("data", {})
    counts = train_part.labels.value_counts().reindex(classes, fill_value=0)
    qwk, cal = figures.qwk, figures.calibration
    page = {
        "name": config.name, "version": __version__, "root": run.root, "classes": classes,
        "now": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "spec": {"name": spec.name, "description": spec.description or "a table with a rubric",
                 "label": spec.label.name, "columns": len(spec.columns), "derived": len(spec.derived)},
        "base": _base(config, summary.get("base")),
        "data": {"file": data.get("source", table.source), "rows": f"{data.get('rows', len(table)):,}",
                 "synthetic": {"rows": config.data.synth_rows, "seed": config.data.synth_seed}
                 if config.data.train is None else None,
                 "sha256": data.get("sha256"), "spec": config.data.spec,
                 "held_out": f"{config.data.valid_fraction:.0%}", "seed": config.data.split_seed,
                 "test": None if test_part is None else {"share": f"{config.data.test_fraction:.0%}",
                                                         "rows": f"{len(test_part):,}"},
                 "train_rows": f"{len(train_part):,}",
                 "valid_rows": f"{len(valid_part):,}", "eval_rows": f"{len(eval_part):,}",
                 "labels": [["rows", *[f"{int(n):,}" for n in counts]],
                            ["share", *[f"{n / max(counts.sum(), 1):.1%}" for n in counts]]]},
        "prompt": {"name": template.name, "about": getattr(template, "about", ""), "fields": fields,
                   "missing": template.missing, "text": template.text},
        "recipe": {"steps": summary.get("global_step", "?"), "seconds": f"{summary.get('seconds', 0):.0f}",
                   "threads": summary.get("threads"),
                   "best_step": summary.get("best_step", "?"),
                   "best_f1": f"{summary.get('best_eval_macro_f1', float('nan')):.4f}",
                   "loss": f"{summary.get('train_loss', float('nan')):.4f}",
                   "config": config_to_yaml(config).rstrip()},
        "validation": {"n": f"{figures.n:,}",
                       "overall": [f"{figures.macro_f1:.4f}", f"{figures.accuracy:.4f}",
                                   "—" if qwk is None else f"{qwk:.4f}"],
                       "per_class": [[c, f"{v.precision:.3f}", f"{v.recall:.3f}", f"{v.f1:.3f}", v.support]
                                     for c, v in figures.per_class.items()]},
        "calibration": {"ece": f"{cal.ece:.3f}", "rows": [
            [f"{cal.bin_edges[i]:.1f}–{cal.bin_edges[i + 1]:.1f}", cal.count[i], f"{cal.confidence[i]:.3f}",
             f"{cal.accuracy[i]:.3f}"] for i in range(len(cal.count)) if cal.count[i]]} if cal else None,
        "decision": _decision(run),
        "reasons": {"rows": explained_rows or min(IMPORTANCE_ROWS, len(eval_part)),
                    "weights": [[f, f"{w:.3f}", describe(spec, f, refs.get(f))] for f, w in weights.items()]}
        if weights is not None and len(weights) else None,
        "groups": {"gaps": gaps, "columns": [
            {"name": column, "rows": [[g["group"], f"{g['rows']:,}", f"{g['macro_f1']:.3f}", f"{g['accuracy']:.3f}",
                                       f"{g['mean_top_probability']:.3f}",
                                       " ".join(f"{c} {g[f'share_{c}']:.0%}" for c in classes if g[f"share_{c}"] > 0)]
                                      for _, g in part.iterrows()]}
            for column, part in groups.groupby("column", sort=False)]},
    }
    return render("model_card.md.j2", **page)


def _decision(run: RunDir) -> dict | None:
    """The run's decision rule (decision.json) as the card shows it, or None when the run has none."""
    if not run.decision.is_file():
        return None
    rule = DecisionRule.load(run.decision)
    f1 = rule.valid_macro_f1
    return {"fitted_rows": f"{rule.fitted_rows:,}", "classes": list(rule.classes),
            "weights": [f"{w:.3f}" for w in rule.weights],
            "f1": {"argmax": f"{f1.get('argmax', float('nan')):.4f}",
                   "decision": f"{f1.get('decision', float('nan')):.4f}"} if f1 else None}

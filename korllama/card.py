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
import time
import warnings
from pathlib import Path

import pandas as pd

from korllama.data import Table
from korllama.run import RunDir

IMPORTANCE_ROWS = 200  # validation rows explained for the card's global importance, at most
IMPORTANCE_SECONDS = 60  # about how long the card's explanations may take (each row is scored once per field + 1)


def write_model_card(run: str | Path | RunDir, table: Table | None = None, on_error: str = "raise") -> Path | None:
    """Write RUN/model_card.md and RUN/references.json for a finished run; `table`: the run's data, when the caller
    has already read it. With on_error="warn" a failure is a warning (training calls it so: a finished training is
    not lost to its card), and None is returned."""
    try:
        return _write(RunDir(run.root if isinstance(run, RunDir) else run), table)
    except Exception as exc:
        if on_error != "warn":
            raise
        warnings.warn(f"the model card of {run} was not written: {exc}", stacklevel=2)
        return None


def _write(run: RunDir, table: Table | None) -> Path:
    from korllama.config import load_config
    from korllama.data import split
    from korllama.evaluate import metrics
    from korllama.explain import (
        carried_fields,
        explain,
        importance,
        llm_proba_fn,
        reference_values,
        save_references,
    )
    from korllama.groups import group_columns, group_gaps, group_metrics
    from korllama.io import write_text
    from korllama.predict import load_run
    from korllama.prompts import get_template
    from korllama.scoring import predict_labels, score
    from korllama.train import load_training_table

    config = load_config(run.config)
    summary = run.read_summary()
    table = table if table is not None else load_training_table(config)
    train_part, valid_part = split(table, config.data.valid_fraction, config.data.split_seed)
    eval_part = valid_part.sample(config.train.eval_rows, seed=config.data.split_seed)  # the training's own sample
    spec, classes = table.spec, table.spec.label.classes

    refs = reference_values(train_part)
    save_references(run.references, refs, table.source, len(train_part))

    model, tokenizer, _ = load_run(run.root)
    template = get_template(spec, config.prompt.template, config.prompt.fields)
    started = time.perf_counter()
    proba = score(model, tokenizer, template.render(eval_part), classes, config.train.eval_batch_size)
    rows_per_s = len(eval_part) / max(time.perf_counter() - started, 1e-9)
    pred = predict_labels(proba, classes)
    truth = eval_part.labels.tolist()
    ordinal = getattr(spec.label, "ordinal", None)  # label sets without an order get no QWK
    figures = metrics(truth, pred, classes, proba) if ordinal is None else metrics(truth, pred, classes, proba,
                                                                                   ordinal)
    _, kinds = group_columns(eval_part)
    groups = group_metrics(eval_part.frame, kinds, truth, pred, classes, proba.max(axis=1))
    fields = carried_fields(template, spec)
    explained = eval_part.sample(explained_rows(rows_per_s, len(fields), len(eval_part)), seed=0)
    reasons = explain(llm_proba_fn(model, tokenizer, template, classes, config.train.eval_batch_size), explained,
                      fields, refs, classes) if fields else None

    text = render_card(run, config, summary, table, train_part, valid_part, eval_part, template, figures, groups,
                       group_gaps(groups, classes), importance(reasons.frame()) if reasons is not None else None,
                       refs, fields, explained_rows=len(explained))
    write_text(run.model_card, text)
    return run.model_card


def explained_rows(rows_per_s: float, fields: int, available: int) -> int:
    """How many validation rows the card explains: each costs `fields` + 1 scorings, so as many as fit in about
    IMPORTANCE_SECONDS at the rate the eval rows were just scored (a 270M model on a CPU with the Korean prompt
    scores ~3 rows/s: 200 rows x 14 prompts took minutes), at least 20 and at most IMPORTANCE_ROWS."""
    fit = int(rows_per_s * IMPORTANCE_SECONDS / (fields + 1))
    return max(1, min(available, IMPORTANCE_ROWS, max(20, fit)))


# --- the page ----------------------------------------------------------------------------------------------------

def _md_table(header: list[str], rows: list[list]) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _base_section(run: RunDir, config) -> list[str]:
    from korllama import bases

    base = config.model.base
    lines = []
    if base == "tiny":
        t = config.model.tiny
        lines.append(f"- **Base:** `tiny`, a small Llama built by korllama with random weights (hidden size "
                     f"{t.hidden_size}, {t.num_hidden_layers} layers, {t.num_attention_heads} heads, vocabulary "
                     f"{t.vocab_size}: a byte-level BPE trained on this run's training prompts). Nothing pretrained: "
                     "everything it knows comes from this run's training rows. Saved in `base/`.")
    else:
        lines.append(f"- **Base:** `{base}`")
        record = None
        if run.base_info.is_file():
            try:
                record = json.loads(run.base_info.read_text("utf-8"))
            except ValueError:
                record = None
        elif bases.is_named_base(base):
            record = bases.provenance(bases.base_dir(base))
        if record:
            lines.append("- **Where it came from:** " + ", ".join(f"{k}: `{v}`" for k, v in record.items()
                                                                    if not isinstance(v, dict | list)))
        elif Path(base).is_dir():
            lines.append(f"- **Where it came from:** the local folder `{base}`.")
        else:
            lines.append(f"- **Where it came from:** the Hugging Face hub id `{base}` (as cached on the training "
                         "machine).")
    if config.lora is not None:
        lo = config.lora
        lines.append(f"- **Tuning:** LoRA (r {lo.r}, alpha {lo.alpha}, dropout {lo.dropout}, modules "
                     f"{lo.target_modules or 'PEFT default'}); the adapter is in `adapter/` (safetensors).")
    else:
        lines.append("- **Tuning:** all weights; the kept model is in `model/` (safetensors).")
    lines.append("- **Answer:** rank scoring: P(label) for every label from one forward pass; the label is the most "
                 "probable one" + (", or argmax(P × w) with the decision rule below" if run.decision.is_file() else "")
                 + ".")
    return lines


def render_card(run: RunDir, config, summary: dict, table: Table, train_part: Table, valid_part: Table,
                eval_part: Table, template, figures: dict, groups: pd.DataFrame, gaps: list[str],
                weights: pd.Series | None, refs: dict, fields: list[str], explained_rows: int | None = None) -> str:
    from korllama import __version__
    from korllama.config import config_to_yaml
    from korllama.explain import describe

    spec, classes = table.spec, table.spec.label.classes
    data = summary.get("data", {})
    synthetic = config.data.train is None
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# Model card: {config.name}", "",
           f"_Written by korllama {__version__} on {now} for the run in `{run.root}`. The figures below are "
           "measured, not claimed: how each was obtained is said beside it._", ""]

    out += ["## What it does", "",
            f"Reads one row of a `{spec.name}` table ({spec.description or 'a table with a rubric'}) written as a "
            f"prompt and answers its `{spec.label.name}`: one of {', '.join(classes)}, with a probability for "
            "each.", ""]

    out += ["## Model", "", *_base_section(run, config), ""]

    counts = train_part.labels.value_counts().reindex(classes, fill_value=0)
    out += ["## Data", "",
            f"- **File:** `{data.get('source', table.source)}`" + (" (a synthetic loan table made by korllama: "
                                                                   f"{config.data.synth_rows} rows, seed "
                                                                   f"{config.data.synth_seed})" if synthetic else ""),
            f"- **Rows:** {data.get('rows', len(table)):,}"
            + (f"; sha256 `{data['sha256']}`" if data.get("sha256") else ""),
            f"- **Spec:** `{config.data.spec}` ({len(spec.columns)} columns, {len(spec.derived)} derived "
            "features)",
            f"- **Split:** stratified by label, {config.data.valid_fraction:.0%} held out (seed "
            f"{config.data.split_seed}): {len(train_part):,} training rows, {len(valid_part):,} held-out rows; "
            f"{len(eval_part):,} of the held-out rows are the validation sample scored during training.",
            "", "Labels in the training rows:", "",
            _md_table(["label", *classes], [["rows", *[f"{int(n):,}" for n in counts]],
                                            ["share", *[f"{n / max(counts.sum(), 1):.1%}" for n in counts]]]),
            ""]

    out += ["## Prompt", "",
            f"Template `{template.name}`"
            + (f" ({template.about})" if getattr(template, "about", "") else "")
            + f"; the fields it shows: {', '.join(f'`{f}`' for f in fields) or 'none'}. A missing value is "
            f"written `{template.missing}`. The answer is a space and the label, then EOS.", "",
            "```text", template.text, "```", ""]

    out += ["## Recipe", "",
            f"{summary.get('global_step', '?')} optimizer steps in {summary.get('seconds', 0):.0f} s; the kept "
            f"weights are from step {summary.get('best_step', '?')} (best validation macro-F1 "
            f"{summary.get('best_eval_macro_f1', float('nan')):.4f}); final training loss "
            f"{summary.get('train_loss', float('nan')):.4f}. Loss on the answer tokens only. The whole config:", "",
            "```yaml", config_to_yaml(config).rstrip(), "```", ""]

    qwk = figures.get("qwk")
    out += ["## Validation", "",
            f"Plain argmax, on the {figures['n']:,} rows of the validation sample, with the kept weights loaded from "
            "the run "
            "(the rows the best checkpoint was chosen on: slightly optimistic; `korllama evaluate "
            f"{run.root} --held-out` scores all {len(valid_part):,} held-out rows):", "",
            _md_table(["macro-F1", "accuracy", "QWK"],
                      [[f"{figures['macro_f1']:.4f}", f"{figures['accuracy']:.4f}",
                        "—" if qwk is None else f"{qwk:.4f}"]]), "",
            _md_table(["label", "precision", "recall", "F1", "rows"],
                      [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                       for c, v in figures["per_class"].items()]), ""]

    cal = figures.get("calibration")
    if cal:
        edges = cal["bin_edges"]
        rows = [[f"{edges[i]:.1f}–{edges[i + 1]:.1f}", cal["count"][i], f"{cal['confidence'][i]:.3f}",
                 f"{cal['accuracy'][i]:.3f}"] for i in range(len(cal["count"])) if cal["count"][i]]
        out += ["## Calibration", "",
                f"Expected calibration error {cal['ece']:.3f}: how far, on average, the probability of the answered "
                "label is from how often it is right (0 = the probabilities can be read as frequencies).", "",
                _md_table(["P(answer)", "rows", "mean P", "share right"], rows), ""]

    out += ["## Decision rule", ""]
    if run.decision.is_file():
        from korllama.decision import DecisionRule

        rule = DecisionRule.load(run.decision)
        f1 = rule.valid_macro_f1
        out += [f"`decision.json`: label = argmax(P × w), fitted on {rule.fitted_rows:,} validation rows"
                + (f" (macro-F1 {f1.get('argmax', float('nan')):.4f} with plain argmax -> "
                   f"{f1.get('decision', float('nan')):.4f} with the rule, on those rows)" if f1 else "") + ".", "",
                _md_table(["label", *rule.classes], [["w", *[f"{w:.3f}" for w in rule.weights]]]), ""]
    else:
        out += ["None: the answer is the most probable label (plain argmax).", ""]

    out += ["## Reasons", ""]
    if weights is not None and len(weights):
        out += [f"What the model leans on: each field the prompt shows is set in turn to a typical value of the "
                f"training rows and the row scored again (`korllama explain`); the mean change in the probability "
                f"of the answered label over {explained_rows or min(IMPORTANCE_ROWS, len(eval_part))} validation "
                "rows:", "",
                _md_table(["field", "mean |change|", "typical value"],
                          [[f, f"{w:.3f}", describe(spec, f, refs.get(f))] for f, w in weights.items()]), ""]
    else:
        out += ["The prompt shows no column of the spec: there is nothing to explain.", ""]

    out += ["## Group metrics", "",
            "On the validation sample, by each category column and by quartiles of each numeric column (groups "
            "under 30 rows are listed but not compared). Macro-F1 within a group is over the labels present in it.",
            ""]
    out += [f"- {g}" for g in gaps] or ["- No gap to report (no column has two groups of 30 rows or more)."]
    out.append("")
    for column, part in groups.groupby("column", sort=False):
        out += [f"**{column}**", "",
                _md_table(["group", "rows", "macro-F1", "accuracy", "mean P(answer)", "answers"],
                          [[g["group"], f"{g['rows']:,}", f"{g['macro_f1']:.3f}", f"{g['accuracy']:.3f}",
                            f"{g['mean_top_probability']:.3f}",
                            " ".join(f"{c} {g[f'share_{c}']:.0%}" for c in classes if g[f"share_{c}"] > 0)]
                           for _, g in part.iterrows()]), ""]

    out += ["## Intended use", "",
            f"Grading rows of the `{spec.name}` table the way the training rows were graded: to reproduce, check "
            "or study an existing grading, in research and in tests of this toolkit. With a person who reviews "
            "the grade and its reasons (`korllama explain`), it can help prepare a decision; it is not a decision.",
            "", "## Limits", ""]
    limits = []
    if synthetic:
        limits.append("It was trained on **synthetic** rows made by korllama: its figures say nothing about real "
                      "applicants.")
    if config.model.base == "tiny":
        limits.append("The base is a tiny model trained from scratch on these rows: it knows no language and no "
                      "finance beyond the patterns of the prompts it was shown.")
    limits += [
        "It learns the grades it was shown, including any unfairness in how they were given; the group metrics "
        "above show where it does worse, not why. Check them on your own rows before any use.",
        f"It saw only the fields of its prompt ({', '.join(fields) or 'none'}); rows unlike the training rows "
        "(values outside their range, categories never seen) get grades with no evidence behind them.",
        "The probabilities are calibrated only as the section above shows, on rows like the training rows.",
        "The reasons are one field at a time against a typical value: interactions between fields are not shown, "
        "and they explain the model, not the world.",
        "It is not a credit decision: lenders must state the principal reasons for an adverse decision and "
        "credit scoring is high-risk under the EU AI Act (Annex III 5(b)); a person decides.",
    ]
    out += [f"- {x}" for x in limits]
    return "\n".join(out) + "\n"

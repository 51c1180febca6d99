"""Score predictions the way the competition does (macro-F1) and then some: accuracy, quadratic weighted kappa,
per-class precision/recall/F1, the confusion matrix, the share of invalid answers. scikit-learn computes them.

Every system — the base model before tuning, the tuned run in each template, the baseline — writes the same
`metrics.json` and `predictions.csv`, so `korllama compare` can put any of them side by side.
"""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from korllama.data import Table, table_chunks
from korllama.errors import KorllamaError
from korllama.groups import group_columns  # the rows' columns, for group metrics in `korllama compare`
from korllama.io import atomic_path, json_text, sha256_file
from korllama.outputs import METRICS_FILE, PREDICTIONS_FILE, clear_others
from korllama.predict import off_format_rate, open_atomic, process_state, score_chunk, sigterm_as_interrupt
from korllama.run import Run
from korllama.scoring import predict_labels
from korllama.synth import synthetic_table
from korllama.ui import progress_bar

OUTPUT_FILES = (METRICS_FILE, PREDICTIONS_FILE)  # what every evaluation folder holds


def metrics(truth, pred, classes: list[str], proba: np.ndarray | None = None, ordinal: bool = True) -> dict:
    """The metrics.json body. `pred` may hold None/'' for invalid answers: they count as wrong. For an ordinal label
    set (`classes` in order) also QWK and the share of answers within one label of the truth; null otherwise."""
    truth = np.asarray(truth, dtype=object)
    pred = np.asarray([p if p in classes else "" for p in pred], dtype=object)
    valid = pred != ""
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    rank = {c: i for i, c in enumerate(classes)}
    result = {
        "n": int(len(truth)),
        "macro_f1": float(f.mean()),  # = f1_score(average="macro") over the same labels
        "accuracy": float(accuracy_score(truth, pred)),
        "ordinal": bool(ordinal),
        # QWK rewards near misses; invalid answers are left out of it
        "qwk": (float(cohen_kappa_score(truth[valid], pred[valid], labels=classes, weights="quadratic"))
                if valid.any() else 0.0) if ordinal else None,
        "within_one": float(np.mean([v and abs(rank[t] - rank[q]) <= 1 for t, q, v in zip(truth, pred, valid)]))
        if ordinal else None,
        "invalid_rate": float(1 - valid.mean()),
        "classes": list(classes),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion": confusion_matrix(truth, pred, labels=classes).tolist(),  # rows = truth, columns = prediction
    }
    if proba is not None:
        result["calibration"] = reliability(truth, proba, classes)
    return result


def reliability(truth, proba: np.ndarray, classes: list[str], bins: int = 10) -> dict:
    """Confidence of the top grade vs how often it is right, in equal-width bins (for the reliability diagram)."""
    top = proba.max(axis=1)
    correct = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == np.asarray(truth, dtype=object)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(top, edges) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    shown = np.maximum(count, 1)
    conf = np.bincount(which, weights=top, minlength=bins) / shown
    acc = np.bincount(which, weights=correct.astype(float), minlength=bins) / shown
    ece = float((count * np.abs(acc - conf)).sum() / max(len(top), 1))
    empty = count == 0  # None in JSON: an empty bin has no confidence or accuracy
    return {"bin_edges": edges.tolist(), "count": count.tolist(), "ece": ece,
            "confidence": [None if e else float(c) for c, e in zip(conf, empty)],
            "accuracy": [None if e else float(a) for a, e in zip(acc, empty)]}


def write_evaluation(out_dir: str | Path, result: dict, ids, truth, pred, proba: np.ndarray | None,
                     classes: list[str], extra_columns: dict | None = None) -> Path:
    """DIR/metrics.json and DIR/predictions.csv (ID, truth, prediction, P_A..)."""
    out_dir = Path(out_dir)
    frame = pd.DataFrame({"ID": list(ids), "truth": list(truth), "prediction": [p or "" for p in pred]})
    if proba is not None:
        for i, c in enumerate(classes):
            frame[f"P_{c}"] = proba[:, i].round(6)
    for name, values in (extra_columns or {}).items():
        frame[name] = list(values)
    body = json_text(result)  # NaN -> null: valid JSON
    # both files appear together or not at all (an interrupted command leaves neither)
    with atomic_path(out_dir / PREDICTIONS_FILE) as csv_tmp, atomic_path(out_dir / METRICS_FILE) as json_tmp:
        frame.to_csv(csv_tmp, index=False)
        json_tmp.write_text(body, encoding="utf-8")
    clear_others(out_dir, OUTPUT_FILES)  # a replaced system's decision rule and explanation go with it
    return out_dir


def evaluate_run(run: Run, data: str | Path | Table, out_dir: str | Path, mode: str = "score",
                 limit: int | None = None, held_out: bool = False, batch_size: int = 32, system: str | None = None,
                 console=None, chunk_rows: int | None = None, decision: str = "argmax") -> dict:
    """Predict a labelled table with a run (or a bare base model: `Run.load(base=...)`) and write
    DIR/metrics.json + predictions.csv.

    Labels by argmax, or by the run's macro-F1 decision rule (`decision="macro-f1"`); then the rows the rule was
    fitted on are left out, so it is never judged on them. When the run has a rule, metrics.json also holds
    `decision`: argmax and the rule side by side on the scored rows the rule never saw.

    `held_out` keeps only the run's validation split (the rows its training never saw), re-drawn from the run's
    data.valid_fraction and data.split_seed.

    A file streams as in `korllama predict` (korllama.data.stream.TableChunks): checked whole first, then read, scored
    and written `chunk_rows` rows at a time; predictions.csv and metrics.json appear together at the end, or not at
    all. What stays in memory for the metrics is, per row, its truth, prediction and probabilities (about 80 bytes;
    with --held-out or --limit also its ID, to choose the rows). Under `accelerate launch` each chunk's rows are
    split between the processes and the main process writes; the other processes return {}.
    """

    state = process_state()
    rule = run.rule(decision) if mode == "score" else None
    stored = run.stored_rule if mode == "score" else None
    model, tokenizer, template = run.model, run.tokenizer, run.template
    stream = table_chunks(data, run.spec, chunk_rows)
    spec = run.spec
    fitted = set(rule.fitted_ids or []) if rule is not None else set()
    choose = held_out or limit is not None or bool(fitted)
    checked = stream.check(keep=choose, warn=state.is_main_process)
    if not checked.has_labels:
        raise KorllamaError(f"{stream.source} has no {spec.label.name} column: evaluation needs graded rows "
                            "(use `korllama predict` for unlabelled ones).")
    select = None  # the rows to score, as positions in the file (sorted)
    if choose:  # chosen as for the whole table in memory: from the IDs and labels alone
        rows = Table(pd.DataFrame({spec.id.alias: checked.ids, spec.label.alias: checked.labels,
                                   "_position": np.arange(checked.rows)}), spec, stream.source)
        if held_out:
            rows = held_out_rows(run, data, rows)
        if fitted:  # the decision rule is never judged on the rows it was fitted on
            rows = rows.subset(np.flatnonzero(~rows.ids.isin(fitted).to_numpy()))
        if limit is not None and limit < len(rows):
            rows = rows.sample(limit, seed=0)
        select = rows.frame["_position"].to_numpy()
        if not len(select):  # only with the rule: every row chosen was one it was fitted on
            raise KorllamaError(f"--decision macro-f1: every row chosen from {stream.source} is one the run's decision "
                                "rule was fitted on, and a rule is never judged on those; score other rows, or use "
                                "--decision argmax.")
        rows = checked.ids = checked.labels = None  # what chose them is no longer needed
    n = checked.rows if select is None else len(select)
    classes = run.classes
    truth, pred, probas, ids, kinds, texts = [], [], [], [], {}, []
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        fh = json_tmp = advance = None
        if state.is_main_process:  # both files appear together at the end (metrics.json renamed first)
            fh = open_atomic(stack, out_dir / PREDICTIONS_FILE)
            json_tmp = stack.enter_context(atomic_path(out_dir / METRICS_FILE))
            advance = stack.enter_context(progress_bar(n, "scoring" if mode == "score" else "generating", console))
        known: dict = {}  # prompts scored in earlier chunks: each distinct prompt of the file is scored once
        for offset, chunk in stream.chunks():
            if select is not None:
                lo, hi = np.searchsorted(select, [offset, offset + len(chunk)])
                if lo == hi:
                    continue
                chunk = chunk.subset(select[lo:hi] - offset)
            scored = score_chunk(model, tokenizer, template, chunk, batch_size, mode, state, advance, rule,
                                 max_tokens=run.max_tokens, known=known)
            if fh is None:  # not the main process
                continue
            frame = pd.DataFrame({"ID": chunk.ids.tolist(), "truth": chunk.labels.tolist(),
                                  "prediction": [p or "" for p in scored.pred]})
            if scored.proba is not None:
                for i, c in enumerate(classes):
                    frame[f"P_{c}"] = scored.proba[:, i].round(6)
                probas.append(scored.proba)
            if scored.texts is not None:
                frame["generated"] = scored.texts
                texts.extend(scored.texts)
            groups, kinds = group_columns(chunk)
            for name, values in groups.items():
                frame[name] = values
            frame.to_csv(fh, index=False, header=fh.tell() == 0)
            truth.extend(chunk.labels.tolist())
            ids.extend(chunk.ids.tolist() if stored is not None else [])
            pred.extend(scored.pred.tolist())
        if not state.is_main_process:
            return {}
        seconds = time.perf_counter() - started
        proba = np.concatenate(probas) if mode == "score" else None
        result = metrics(truth, pred, classes, proba, spec.label.ordinal)
        if system is None:
            system = run.name + ("" if mode == "score" else "-generate")
        result.update(system=system, mode=mode, template=template.name, spec=run.spec_source,
                      rows_per_s=n / max(seconds, 1e-9), seconds=seconds, data=stream.source, held_out=held_out,
                      run=str(run.root.resolve()) if run.root else None, base=run.base, processes=state.num_processes,
                      group_columns=kinds, decision_rule=decision)
        if mode == "generate":
            result["off_format_rate"] = off_format_rate(texts, classes)
        if stored is not None and len(truth):
            result["decision"] = side_by_side(stored, truth, proba, ids, classes)
        json_tmp.write_text(json_text(result), encoding="utf-8")
    clear_others(out_dir, OUTPUT_FILES)  # a replaced system's decision rule and explanation go with it
    return result


def side_by_side(rule, truth, proba: np.ndarray, ids, classes: list[str]) -> dict:
    """Argmax and the decision rule on the same rows: those of the scored rows the rule was not fitted on."""
    unseen = ~np.isin(np.asarray(ids, dtype=object).astype(str), list(rule.fitted_ids or []))
    truth = np.asarray(truth, dtype=object)[unseen]
    out = {"rows": int(unseen.sum()), "left_out_fitting_rows": int((~unseen).sum()),
           "weights": dict(zip(classes, rule.weights))}
    for name, pred in (("argmax", predict_labels(proba[unseen], classes)), ("macro-f1", rule.apply(proba[unseen]))):
        out[name] = {"macro_f1": float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0))
                     if len(truth) else None, "accuracy": float(accuracy_score(truth, pred)) if len(truth) else None}
    return out


def held_out_rows(run: Run, data: str | Path | Table, table: Table) -> Table:
    """The run's validation split of `table`, once `table` is known to be the table the run was trained on: the
    same split of any other table holds rows the training saw. The run's train_summary.json records its data
    (korllama.run.data_fingerprint): a file's sha256 and rows, or "synthetic" (then the rows are drawn again
    from data.synth_rows and data.synth_seed and compared by ID and label)."""
    config = run.config
    record = None
    if run.dir is not None and run.dir.finished:
        record = run.dir.read_summary().get("data")
    if run.dir is not None and record is None:
        warnings.warn(f"{run.root} does not record the table it was trained on (a run made by an older korllama), so "
                      f"--held-out cannot check that {table.source} is that table.", stacklevel=2)
    if record is not None:
        if record["source"] == "synthetic":
            rows, seed = config.data.synth_rows, config.data.synth_seed
            drawn = synthetic_table(rows, seed, table.spec)
            same = (len(drawn) == len(table) and drawn.ids.tolist() == table.ids.tolist()
                    and drawn.labels.tolist() == table.labels.tolist())
            trained_on = (f"a synthetic table of {rows:,} rows, seed {seed}; `korllama data synth --rows {rows} "
                          f"--seed {seed} --out FILE` writes it")
        else:
            if isinstance(data, (str, Path)) and record.get("sha256"):
                same = sha256_file(Path(data)) == record["sha256"]
            else:  # a table already in memory (the demo's): its rows are all there is to compare
                same = len(table) == record["rows"]
            trained_on = f"{record['source']}, {record['rows']:,} rows"
        if not same:
            raise KorllamaError(f"--held-out: {table.source} is not the table {run.root} was trained on "
                                f"({trained_on}); its held-out rows exist only in that table: pass it as --data, or "
                                f"leave out --held-out to score every row of {table.source}.")
    return run.split(table)[1]

"""`korllama evaluate`: a system scored on labelled rows, streamed like `korllama predict`, its figures
(korllama.evaluation: macro-F1, accuracy, QWK, per label, confusion, calibration) written as an evaluation folder.

Every system — the base model before tuning, the tuned run in each template, the baseline — writes the same
`metrics.json` and `predictions.csv` (korllama.evaluation.Evaluation), so `korllama compare` can put any of them
side by side.
"""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.choices import Mode
from korllama.data import Table, table_chunks
from korllama.defaults import BATCH_SIZE
from korllama.errors import KorllamaError
from korllama.evaluation import (
    METRICS_FILE,
    OUTPUT_FILES,
    PREDICTIONS_FILE,
    Evaluation,
    clear_others,
    metrics,
    side_by_side,
)
from korllama.generation import off_format_rate
from korllama.groups import group_columns  # the rows' columns, for group metrics in `korllama compare`
from korllama.io import atomic_path, sha256_file
from korllama.streaming import open_atomic, process_state, score_chunk, sigterm_as_interrupt
from korllama.synth import synthetic_table
from korllama.system import System
from korllama.ui import progress_bar


def evaluate_run(run: System, data: str | Path | Table, out_dir: str | Path, mode: str | None = None,
                 limit: int | None = None, held_out: bool = False, batch_size: int = BATCH_SIZE,
                 system: str | None = None, console=None, chunk_rows: int | None = None,
                 decision: str = "argmax") -> Evaluation | None:
    """Predict a labelled table with a system — a run (or a bare base model: `Run.load(base=...)`) or the trees
    (korllama.system) — and write DIR/metrics.json + predictions.csv. `mode`: the system's own way (rank scoring,
    the trees' probabilities; default), or "generate" for an LLM's sampled answers.

    Labels by argmax, or by the run's macro-F1 decision rule (`decision="macro-f1"`); then the rows the rule was
    fitted on are left out, so it is never judged on them. When the run has a rule, metrics.json also holds
    `decision`: argmax and the rule side by side on the scored rows the rule never saw.

    `held_out` keeps only the system's test rows (never trained on, no choice made on them), re-drawn from its
    data.valid_fraction, data.test_fraction and data.split_seed; for a run split two ways (test_fraction 0), its
    validation rows.

    A file streams as in `korllama predict` (korllama.data.stream.TableChunks): checked whole first, then read, scored
    and written `chunk_rows` rows at a time; predictions.csv and metrics.json appear together at the end, or not at
    all. What stays in memory for the metrics is, per row, its truth, prediction and probabilities (about 80 bytes;
    with --held-out or --limit also its ID, to choose the rows). Under `accelerate launch` each chunk's rows are
    split between the processes and the main process writes; the other processes return None.
    """

    state = process_state()
    mode = run.kind if mode is None or mode == Mode.SCORE else Mode(mode)
    if mode != run.kind and mode != Mode.GENERATE or mode == Mode.GENERATE and run.template is None:
        raise KorllamaError(f"--mode {mode} does not apply to {run.name} ({run.kind}): leave --mode out.")
    if mode == Mode.GENERATE and getattr(run, "classifier", False):
        raise KorllamaError(f"--mode generate reads the answer a language model writes, and {run.name} grades with "
                            "a classification head, which writes none: leave --mode out.")
    generated = mode == Mode.GENERATE
    rule = run.rule(decision) if not generated else None
    stored = run.stored_rule if not generated else None
    _ = run.model  # loaded, its checksums checked, before a file or a progress bar is opened
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
            advance = stack.enter_context(progress_bar(n, "generating" if generated else "scoring", console))
        known: dict = {}  # prompts scored in earlier chunks: each distinct prompt of the file is scored once
        for offset, chunk in stream.chunks():
            if select is not None:
                lo, hi = np.searchsorted(select, [offset, offset + len(chunk)])
                if lo == hi:
                    continue
                chunk = chunk.subset(select[lo:hi] - offset)
            scored = score_chunk(run, chunk, batch_size, mode, state, advance, rule, known=known)
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
            return None
        seconds = time.perf_counter() - started
        proba = np.concatenate(probas) if not generated else None
        result = metrics(truth, pred, classes, proba, spec.label.ordinal)
        result.system = system if system is not None else run.name + ("-generate" if generated else "")
        result.mode, result.template, result.spec = mode, run.template.name if run.template else "", run.spec_source
        result.rows_per_s, result.seconds, result.data, result.held_out = n / max(seconds, 1e-9), seconds, \
            stream.source, held_out
        result.run, result.base = (str(run.root.resolve()) if run.root else None), run.base
        result.processes, result.group_columns, result.decision_rule = state.num_processes, kinds, decision
        if mode == Mode.TREES:  # what the trees cost to fit, for the report's training cost
            result.fit_seconds, result.fit_cpu_seconds = run.fit_cost
        if generated:
            result.off_format_rate = off_format_rate(texts, classes)
        if stored is not None and len(truth):
            result.decision = side_by_side(stored, truth, proba, ids, classes)
        json_tmp.write_text(result.text(), encoding="utf-8")
    clear_others(out_dir, OUTPUT_FILES)  # a replaced system's decision rule and explanation go with it
    return result


def held_out_rows(run: System, data: str | Path | Table, table: Table) -> Table:
    """The run's held-out rows of `table` (its test rows, or the validation rows of a run split two ways), once
    `table` is known to be the table the run was trained on: the same split of any other table holds rows the
    training saw. The run's train_summary.json records its data
    (korllama.run.data_fingerprint): a file's sha256 and rows, or "synthetic" (then the rows are drawn again
    from data.synth_rows and data.synth_seed and compared by ID and label)."""
    record = run.trained_on
    if run.root is not None and record is None:
        warnings.warn(f"{run.root} does not record the table it was trained on (a run made by an older korllama), so "
                      f"--held-out cannot check that {table.source} is that table.", stacklevel=2)
    if record is not None:
        if record["source"] == "synthetic":
            rows, seed = run.config.data.synth_rows, run.config.data.synth_seed
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
    return run.split(table).held_out

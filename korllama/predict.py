"""Predict labels with a system (korllama.system: an LLM run or the trees): grade a file (`predict_file`), or
generate the original project's way (`generate`: its sampling settings and its parser).

Files stream (korllama.data.stream.TableChunks): checked whole first, then read, scored and written a chunk at a
time, so memory does not grow with the table; under `accelerate launch --num_processes N` every chunk's rows are
split between the processes (`score_chunk`) and the main process writes them in input order. korllama.evaluate
streams the same way.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import GenerationConfig

from korllama.choices import Mode
from korllama.csvsafe import neutralise_formulas
from korllama.data.stream import CHUNK_ROWS, TableChunks
from korllama.errors import KorllamaError
from korllama.io import atomic_path
from korllama.outputs import claim_file
from korllama.scoring import encode_prompts, left_padded_batches, pad_id_of, predict_labels
from korllama.system import System
from korllama.ui import progress_bar

# --- generation, the original's way ------------------------------------------------------------------------------

def seed_generation_config(tokenizer):
    """The original project's GenerationConfig, verbatim (pad = eos)."""
    return GenerationConfig(pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                            do_sample=True, top_k=1, top_p=0.9, num_return_sequences=1,
                            repetition_penalty=1.1, max_new_tokens=100, temperature=0.8)


def parse_grade(text: str, classes: list[str]) -> str | None:
    """The label the text answers: one at the very start, else the first right after a colon (the original's
    "###Credit Rating : C", or any "grade: ..."), else the first standing alone; None if none. Labels are the spec's
    (any script: Korean labels too); the longest wins where two start at the same place ("A+" over "A")."""
    alternatives = "|".join(re.escape(c) for c in sorted(classes, key=len, reverse=True))
    for pattern in (rf"^\s*({alternatives})(?![\w+-])", rf"[:：]\s*({alternatives})(?![\w+-])",
                    rf"(?<![\w+-])({alternatives})(?![\w+-])"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def off_format_rate(texts: list[str], classes: list[str]) -> float:
    """Share of generated answers that are not just a label (surrounding white space aside): the original's "CCC+",
    or a right grade followed by invented "### ..." sections, which its parser may still read as a grade."""
    return sum(text.strip() not in classes for text in texts) / max(len(texts), 1)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str] | None, classes: list[str], batch_size: int = 8, seed: int = 0,
             progress=None, encoded: list[list[int]] | None = None) -> tuple[list[str | None], list[str]]:
    """(parsed grade or None, generated text) per prompt, with the original's sampling settings. A caller that
    already tokenised the prompts (`encode_prompts`) passes `encoded` instead of `prompts`, as for `score`."""
    torch.manual_seed(seed)
    config = seed_generation_config(tokenizer)
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    encoded = encode_prompts(tokenizer, prompts) if encoded is None else encoded
    texts: list[str] = [""] * len(encoded)
    model.eval()
    for rows, ids, mask in left_padded_batches(encoded, batch_size, pad_id):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for j, i in enumerate(rows):  # generation continues from the last column
            texts[i] = tokenizer.decode(out[j, ids.shape[1]:], skip_special_tokens=True)
        if progress is not None:
            progress(len(rows))
    return [parse_grade(t, classes) for t in texts], texts


def predict_file(system: System, data: str | Path, out: str | Path, with_proba: bool = False, batch_size: int = 32,
                 console=None, chunk_rows: int | None = None, decision: str = "argmax", progress=None) -> dict:
    """Grade every row of a table and write the competition's format: `ID,<label header>` in input order; labels
    by argmax of the probabilities, or by the system's macro-F1 decision rule (`decision="macro-f1"`).

    The table streams (`TableChunks`): read, scored and written `chunk_rows` rows at a time into a temporary file
    beside `out` that becomes `out` only at the end, so memory does not grow with the table and `out` never holds a
    partial result (an error, Ctrl-C or SIGTERM leaves nothing). The whole file is validated before the first row
    is scored. Under `accelerate launch --num_processes N` each chunk's rows are split between the processes and
    the main process writes them in input order; the other processes return {}.

    `progress(done, total)`: told the rows graded, instead of the console's progress bar (the service's page
    grades uploads with the system it serves, and polls this).
    """
    state = process_state()
    out = Path(out)
    given = (data,) if isinstance(data, str | Path) else ()
    claim_file(out, overwrite=True, inputs=given)  # the one output rule; a library caller may replace its own file
    rule = system.rule(decision)
    _ = system.model  # loaded, its checksums checked, before a file or a progress bar is opened
    stream = TableChunks(data, system.spec, chunk_rows or CHUNK_ROWS)
    checked = stream.check(warn=state.is_main_process)
    spec, classes = system.spec, system.classes
    counts = dict.fromkeys(classes, 0)
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        fh = advance = None
        if state.is_main_process:
            fh = open_atomic(stack, out)
            advance = stack.enter_context(progress_bar(checked.rows, "grading", console)) if progress is None \
                else _counter(progress, checked.rows)
        known: dict = {}  # prompts scored in earlier chunks: each distinct prompt of the file is scored once
        for _, chunk in stream.chunks():
            scored = score_chunk(system, chunk, batch_size, state=state, progress=advance, rule=rule, known=known)
            if fh is None:  # not the main process: its share went to the main process
                continue
            # a spreadsheet must not run an ID such as =HYPERLINK(...) as a formula (korllama.csvsafe)
            frame = neutralise_formulas(pd.DataFrame({spec.id.name: chunk.ids.to_numpy(),
                                                      spec.label.name: scored.pred}))
            if with_proba:
                for i, c in enumerate(classes):
                    frame[f"P_{c}"] = scored.proba[:, i].round(6)
            frame.to_csv(fh, index=False, header=fh.tell() == 0)
            for label, n in frame[spec.label.name].value_counts().items():
                counts[label] += int(n)
    if not state.is_main_process:
        return {}
    seconds = time.perf_counter() - started
    return {"rows": checked.rows, "out": str(out), "counts": counts, "seconds": seconds,
            "rows_per_s": checked.rows / max(seconds, 1e-9), "processes": state.num_processes, "decision": decision,
            "warnings": checked.warnings}


def _counter(progress, total: int):
    """advance(n) for score(): tells `progress(done, total)`, from 0."""
    done = [0]
    progress(0, total)

    def advance(n: int = 1) -> None:
        done[0] += n
        progress(done[0], total)
    return advance


# --- streaming: a table read in chunks, scored across processes ------------------------------------------------------

def process_state():
    """accelerate's PartialState: one process (a plain `korllama predict`), or one of `accelerate launch`'s N. Under
    N processes on GPUs each process owns the GPU of its local rank (PartialState sets it), so the model that
    Run.model puts on "cuda" lands there."""
    return PartialState()



@dataclass
class Scored:
    """One chunk's results, rows in input order: probabilities (rank scoring) or generated texts."""

    pred: np.ndarray
    proba: np.ndarray | None = None
    texts: list[str] | None = None


def score_chunk(system, table, batch_size: int, mode: str = "score", state=None, progress=None, rule=None,
                known: dict | None = None) -> Scored | None:
    """Score (or, for an LLM, generate for) one chunk with `system` (korllama.system.System); labels by argmax, or
    by `rule` (a korllama.decision.DecisionRule). With several processes each scores a contiguous share of the rows
    (accelerate's split_between_processes) and the shares are gathered to the main process in rank order, that is
    in input order; the other processes get None. `progress(n)` is told rows done, on the main process."""
    classes = table.spec.label.classes
    many = state is not None and state.num_processes > 1
    if many:
        with state.split_between_processes(list(range(len(table)))) as mine:
            part = table.subset(mine)
    else:
        part = table
    each_batch = progress if not many else None
    if mode == Mode.GENERATE:
        codes, distinct = system.encode(part)
        pred, texts = generate(system.model, system.tokenizer, None, classes, batch_size, progress=each_batch,
                               encoded=[distinct[c] for c in codes]) if len(part) else ([], [])
        result = Scored(np.asarray(pred, dtype=object), None, texts)
    else:
        proba = system.predict_proba(part, batch_size, progress=each_batch, known=known)
        result = Scored(rule.apply(proba) if rule is not None else predict_labels(proba, classes), proba)
    if not many:
        return result
    parts = gather_object([result])  # one per process, in process order
    if not state.is_main_process:
        return None
    if progress is not None:
        progress(len(table))
    generated = mode == Mode.GENERATE
    return Scored(np.concatenate([p.pred for p in parts]),
                  None if generated else np.concatenate([p.proba for p in parts]),
                  [t for p in parts for t in p.texts] if generated else None)


def open_atomic(stack, target: Path):
    """A text file for `target` that becomes `target` only when the stack closes without an error."""
    try:
        tmp = stack.enter_context(atomic_path(target))
        return stack.enter_context(tmp.open("w", encoding="utf-8", newline=""))
    except OSError as exc:
        raise KorllamaError(f"Could not write {target}: {exc.strerror or exc}.") from None


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a job scheduler, accelerate stopping its other processes) unwinds like Ctrl-C, so the temporary
    output is removed; only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

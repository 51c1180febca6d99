"""`korllama predict`: grade every row of a file with a system (korllama.system: an LLM run or the trees) and write
the competition's format, streamed a chunk at a time (korllama.streaming): memory does not grow with the table, and
under `accelerate launch --num_processes N` every chunk's rows are split between the processes and the main process
writes them in input order.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd

from korllama.csvsafe import neutralise_formulas
from korllama.data.stream import TableChunks
from korllama.defaults import BATCH_SIZE, CHUNK_ROWS
from korllama.outputs import claim_file
from korllama.streaming import counter, open_atomic, process_state, score_chunk, sigterm_as_interrupt
from korllama.system import System
from korllama.ui import progress_bar


def predict_file(system: System, data: str | Path, out: str | Path, with_proba: bool = False,
                 batch_size: int = BATCH_SIZE, console=None, chunk_rows: int | None = None, decision: str = "argmax",
                 progress=None) -> dict:
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
                else counter(progress, checked.rows)
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

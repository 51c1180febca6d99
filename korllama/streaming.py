"""A table graded a chunk at a time: `score_chunk` scores (or generates for) one chunk with any system, its rows split
between the processes of `accelerate launch` and gathered back in input order; `open_atomic` gives the output a
temporary file that becomes it only when every row is done; `sigterm_as_interrupt` makes SIGTERM unwind like Ctrl-C so
nothing half-written stays. `korllama predict` (korllama.predict) and `korllama evaluate` (korllama.evaluate) both
stream through here.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object

from korllama.choices import Mode
from korllama.errors import KorllamaError
from korllama.generation import generate
from korllama.io import atomic_path
from korllama.scoring import predict_labels


def counter(progress, total: int):
    """advance(n) for score(): tells `progress(done, total)`, from 0."""
    done = [0]
    progress(0, total)

    def advance(n: int = 1) -> None:
        done[0] += n
        progress(done[0], total)
    return advance


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

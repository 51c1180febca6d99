"""Predict labels with a tuned run: load it (`load_run`), grade a file (`predict_file`, rank scoring from
korllama.scoring), or generate the original project's way (`generate`: its sampling settings and its parser).

Files stream (`TableChunks`): checked whole first, then read, scored and written a chunk at a time, so memory does
not grow with the table; under `accelerate launch --num_processes N` every chunk's rows are split between the
processes (`score_chunk`) and the main process writes them in input order. korllama.evaluate streams the same way.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from korllama.errors import DataError, KorllamaError
from korllama.run import RunDir
from korllama.scoring import encode_prompts, left_padded_batches, pad_id_of, predict_labels, score

# --- loading what to predict with ------------------------------------------------------------------------------

def load_run(run: str | Path | None = None, base: str | None = None):
    """(model, tokenizer, config) for a tuned run directory, or for a bare base model (`base`, "before tuning").

    A run holds model/ (full training: a complete save_pretrained folder) or adapter/ (LoRA: loaded on top of
    the run's base model with PeftModel.from_pretrained). A bare base uses the default RunConfig.
    """
    from korllama.config import RunConfig, load_config
    from korllama.model import load_base

    if run is None and base is None:
        raise KorllamaError("Name a run directory, or a base model with --base.")
    if run is None:
        config = RunConfig()
        config = config.model_copy(update={"model": config.model.model_copy(update={"base": base})})
        model, tokenizer = load_base(config.model, base, for_training=False)
        return model, tokenizer, config
    run = RunDir(run)
    run.require_run()
    config = load_config(run.config)
    for folder in (run.model, run.adapter):  # weights from safetensors only: a pickle can run code
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            raise KorllamaError(f"{folder} holds no safetensors weights; korllama loads safetensors only "
                                "(never pickled .bin files).")
    run_tokenizer = run.tokenizer if run.tokenizer.is_dir() else None
    if base is not None:  # the run's prompt settings with another model (its untrained base): its own tokenizer
        model, tokenizer = load_base(config.model, base, for_training=False)
    elif (run.model / "config.json").is_file():
        model, tokenizer = load_base(config.model, run.model, for_training=False, tokenizer_source=run_tokenizer)
    elif (run.adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = run.base if config.model.base == "tiny" else config.model.base
        model, tokenizer = load_base(config.model, base_path, for_training=False, tokenizer_source=run_tokenizer)
        model = PeftModel.from_pretrained(model, run.adapter)  # safetensors adapter
        model.eval()
    else:
        raise KorllamaError(f"{run} holds neither model/ nor adapter/: its training did not finish; "
                            f"resume it with `korllama train --out {run} --resume`.")
    return model, tokenizer, config


# --- generation, the original's way ------------------------------------------------------------------------------

def seed_generation_config(tokenizer):
    """The original project's GenerationConfig, verbatim (pad = eos)."""
    from transformers import GenerationConfig

    return GenerationConfig(pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                            do_sample=True, top_k=1, top_p=0.9, num_return_sequences=1,
                            repetition_penalty=1.1, max_new_tokens=100, temperature=0.8)


def parse_grade(text: str, classes: list[str]) -> str | None:
    """The label the text answers: one at the very start, else the first right after a colon (the original's
    "###Credit Rating : C", or any "grade: ..."), else the first standing alone; None if none. Labels are the spec's
    (any script: Korean labels too); the longest wins where two start at the same place ("A+" over "A")."""
    import re

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
def generate(model, tokenizer, prompts: list[str], classes: list[str], batch_size: int = 8, seed: int = 0,
             progress=None) -> tuple[list[str | None], list[str]]:
    """(parsed grade or None, generated text) per prompt, with the original's sampling settings."""
    torch.manual_seed(seed)
    config = seed_generation_config(tokenizer)
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    encoded = encode_prompts(tokenizer, prompts)
    texts: list[str] = [""] * len(prompts)
    model.eval()
    for rows, ids, mask in left_padded_batches(encoded, batch_size, pad_id):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for j, i in enumerate(rows):  # generation continues from the last column
            texts[i] = tokenizer.decode(out[j, ids.shape[1]:], skip_special_tokens=True)
        if progress is not None:
            progress(len(rows))
    return [parse_grade(t, classes) for t in texts], texts


def decision_rule(run: str | Path | None, base: str | None, decision: str = "argmax"):
    """None for plain argmax; for "macro-f1" the run's rule (korllama.decision), fitted on its eval rows when it was
    trained, which weighs the rare labels up so that macro-F1 is higher than argmax's."""
    from korllama.decision import RULES, DecisionRule

    if decision not in RULES:
        raise KorllamaError(f"--decision must be one of {', '.join(RULES)}, not {decision!r}.")
    if decision == "argmax":
        return None
    if run is None or base is not None:
        raise KorllamaError("--decision macro-f1 uses the rule fitted when a run was trained: name the run, "
                            "without --base.")
    path = RunDir(run).decision
    if not path.is_file():
        raise KorllamaError(f"{run} has no decision rule ({path.name}; runs trained before it existed have none): "
                            "use --decision argmax, or train the run again.")
    return DecisionRule.load(path)


def predict_file(run: str | Path | None, data: str | Path, out: str | Path, with_proba: bool = False,
                 base: str | None = None, batch_size: int = 32, console=None, chunk_rows: int | None = None,
                 decision: str = "argmax", loaded: tuple | None = None, progress=None) -> dict:
    """Grade every row of a table and write the competition's format: `ID,<label header>` in input order; labels
    by argmax of the probabilities, or by the run's macro-F1 decision rule (`decision="macro-f1"`).

    The table streams (`TableChunks`): read, scored and written `chunk_rows` rows at a time into a temporary file
    beside `out` that becomes `out` only at the end, so memory does not grow with the table and `out` never holds a
    partial result (an error, Ctrl-C or SIGTERM leaves nothing). The whole file is validated before the first row
    is scored. Under `accelerate launch --num_processes N` each chunk's rows are split between the processes and
    the main process writes them in input order; the other processes return {}.

    `loaded`: the (model, tokenizer, config) of `run`, already loaded (the service's page grades uploads with the
    model it serves); `progress(done, total)`: told the rows graded, instead of the console's progress bar.
    """
    import time
    from contextlib import ExitStack

    import pandas as pd

    from korllama.prompts import get_template
    from korllama.ui import progress_bar

    state = process_state()
    out = Path(out)
    _check_file_target(out)
    rule = decision_rule(run, base, decision)
    model, tokenizer, config = loaded or load_run(run, base)
    stream = TableChunks(data, config.data.spec, chunk_rows or CHUNK_ROWS)
    checked = stream.check(warn=state.is_main_process)
    spec = stream.spec
    classes = spec.label.classes
    template = get_template(spec, config.prompt.template, config.prompt.fields)
    counts = dict.fromkeys(classes, 0)
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(sigterm_as_interrupt())
        fh = advance = None
        if state.is_main_process:
            fh = open_atomic(stack, out)
            advance = stack.enter_context(progress_bar(checked.rows, "grading", console)) if progress is None \
                else _counter(progress, checked.rows)
        for _, chunk in stream.chunks():
            scored = score_chunk(model, tokenizer, template, chunk, batch_size, state=state, progress=advance,
                                 rule=rule)
            if fh is None:  # not the main process: its share went to the main process
                continue
            frame = pd.DataFrame({spec.id.name: chunk.ids.to_numpy(), spec.label.name: scored.pred})
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

CHUNK_ROWS = 10_000  # rows read, cleaned, scored and written at a time: memory follows this, not the table's size


def process_state():
    """accelerate's PartialState: one process (a plain `korllama predict`), or one of `accelerate launch`'s N. Under
    N processes on GPUs each process owns the GPU of its local rank (PartialState sets it), so the model that
    load_run puts on "cuda" lands there."""
    from accelerate import PartialState

    return PartialState()


@dataclass
class Checked:
    """What a first pass over the whole file found: its rows, and when asked for (to choose rows: a split, a
    sample) every row's ID and label."""

    rows: int
    has_labels: bool
    ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


class TableChunks:
    """A CSV or Parquet table read `chunk_rows` rows at a time (CSV: pandas' chunked reader; Parquet: pyarrow's
    `iter_batches`), each chunk validated and cleaned by korllama.data.clean with its real line numbers, so an error
    names the same file, line, column and value as `read_table` would.

    `check()` reads the whole file once before anything is scored: every chunk validated, the IDs unique across
    chunks (64-bit hashes, 8 bytes a row; a clash is confirmed on the IDs themselves), the chunks' warnings summed
    into one per column. `chunks()` then yields the clean chunks again, in file order.
    """

    def __init__(self, path: str | Path, spec=None, chunk_rows: int = CHUNK_ROWS):
        from korllama.schema import TableSpec, load_spec

        if chunk_rows < 1:
            raise KorllamaError(f"chunk_rows must be at least 1, not {chunk_rows}.")
        self.path = Path(path)
        self.spec = spec if isinstance(spec, TableSpec) else load_spec(spec)
        self.chunk_rows = chunk_rows
        self.source = self.path.name
        self.parquet, self.encoding = self._sniff()

    def _sniff(self) -> tuple[bool, str | None]:
        """Parquet or CSV (korllama.data.sniff: the same sentences as read_table for a missing, empty or binary
        file), and for a CSV its encoding — utf-8, utf-8 with BOM or cp949, the whole file decoded once, a block at a
        time, so a bad byte near the end is found before any work — its header checked as read_table checks it, and
        each row's line when blank lines make the lines differ from the rows (8 bytes a row, then)."""
        import codecs
        import csv

        from korllama.data import ENCODINGS, _decode, _refuse_duplicate_headers, _refuse_other_delimiters, sniff

        self.lines = None
        if sniff(self.path):
            return True, None
        for encoding in ENCODINGS:
            try:
                with self.path.open(encoding=encoding, newline="") as fh:
                    header = next(csv.reader(fh), [])
                    blank = False
                    for line in fh:  # decodes the rest; a blank line shifts the lines of the rows after it
                        blank = blank or not line.strip(" \t\r\n")
            except UnicodeDecodeError:
                continue
            _refuse_duplicate_headers(header, self.source)
            _refuse_other_delimiters(header, self.source)
            if blank:
                self.lines = self._record_lines(encoding)
            if encoding == "utf-8-sig":  # without a BOM plain utf-8 reads the same, and pandas' C parser reads it
                with self.path.open("rb") as fh:  # without a Python decoding layer (a quarter of the memory)
                    encoding = encoding if fh.read(3) == codecs.BOM_UTF8 else "utf-8"
            return False, encoding
        _decode(self.path)  # raises read_table's sentence, naming the line of the first bad byte
        raise DataError(f"{self.source} is not text in UTF-8 or CP949 (Korean Excel); save it as UTF-8 CSV.")

    def _record_lines(self, encoding: str) -> np.ndarray:
        """The line each row starts on (korllama.data.record_lines, reading the file as a stream); a row with more
        cells than the header is a DataError naming its line."""
        from korllama.data import record_lines

        with self.path.open(encoding=encoding, newline="") as fh:
            return record_lines(fh, self.source)

    def raw_chunks(self):
        """(offset, frame of raw strings) per chunk, in file order: row i of the frame is row offset + i."""
        if self.parquet:
            yield from self._parquet_chunks()
            return
        import warnings as _warnings

        import pandas as pd

        from korllama.data import READ_CSV

        try:
            reader = pd.read_csv(self.path, encoding=self.encoding, chunksize=self.chunk_rows, **READ_CSV)
            offset = 0
            with reader:
                while True:
                    with _warnings.catch_warnings():  # a row longer than the header: pandas would drop cells
                        _warnings.simplefilter("error", pd.errors.ParserWarning)
                        frame = next(reader, None)
                    if frame is None:
                        break
                    yield offset, frame.astype(object)
                    offset += len(frame)
        except pd.errors.EmptyDataError:
            raise DataError(f"{self.source} is empty: expected a header line and at least one row.") from None
        except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
            self._record_lines(self.encoding)  # names the line when a row has too many cells
            raise DataError(f"{self.source} is not a well-formed comma-separated file: {' '.join(str(exc).split())}"
                            ) from None

    def _parquet_chunks(self):
        import pyarrow.parquet as pq

        def strings(frame):  # read_table's conversion: every cell a string, a missing one ""
            return frame.astype(object).where(frame.notna(), "").astype(str).astype(object)

        try:
            reader = pq.ParquetFile(self.path)
            offset = 0
            for batch in reader.iter_batches(batch_size=self.chunk_rows):
                yield offset, strings(batch.to_pandas())
                offset += batch.num_rows
            if offset == 0:  # no rows at all: one empty chunk, so that clean says so in its words
                yield 0, strings(reader.schema_arrow.empty_table().to_pandas())
        except DataError:
            raise
        except Exception as exc:  # pyarrow raises many types for a broken file
            raise DataError(f"{self.source} could not be read as Parquet: {exc}") from None

    def chunks(self):
        """(offset, clean Table) per chunk, in file order. clean's warnings are kept in each Table's `warnings`
        (check() reports them once, summed) instead of being shown once per chunk."""
        import warnings as _warnings

        from korllama.data import DataWarning, clean

        spec, source = self.spec, self.source
        for offset, raw in self.raw_chunks():
            if self.parquet and offset:
                where = {"first_line": 1, "row_label": lambda i, o=offset: f"{source}, row {o + i + 1}"}
            elif self.lines is not None:  # blank lines: each row's own line
                where = {"first_line": 2, "lines": self.lines[offset:offset + len(raw)]}
            else:
                where = {"first_line": 1 if self.parquet else 2 + offset}
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore", DataWarning)
                    table = clean(raw, spec, source=source, **where)
            except DataError as exc:  # the row within the file, not within the chunk
                raise DataError(str(exc), row=None if exc.row is None else exc.row + offset,
                                column=exc.column) from None
            table.frame.index = range(len(table.frame))  # pandas numbered a chunk's rows from its offset
            if offset and _header(raw.columns, spec.id.name, spec.id.alias) is None:  # generated IDs go on counting
                table.frame[spec.id.alias] = np.array([f"ROW_{offset + i:05d}" for i in range(len(table))],
                                                      dtype=object)
            yield offset, table

    def check(self, keep: bool = False, warn: bool = True) -> Checked:
        """Validate the whole file (see the class); `keep` keeps every row's ID and label, `warn` shows the
        warnings."""
        import warnings as _warnings

        import pandas as pd

        from korllama.data import DataWarning

        rows, has_labels, hashes, ids, labels, messages = 0, False, [], [], [], []
        for _, table in self.chunks():
            rows += len(table)
            has_labels = table.has_labels
            hashes.append(pd.util.hash_array(table.ids.to_numpy(dtype=object)))
            if keep:
                ids.append(table.ids.to_numpy(dtype=object))
                if has_labels:
                    labels.append(table.labels.to_numpy(dtype=object))
            messages.extend(table.warnings)
        self._check_unique_ids(np.concatenate(hashes))
        summed = sum_warnings(messages)
        if warn:
            for message in summed:
                _warnings.warn(message, DataWarning, stacklevel=2)
        return Checked(rows, has_labels, np.concatenate(ids) if keep else None,
                       np.concatenate(labels) if keep and has_labels else None, summed)

    def _check_unique_ids(self, hashes: np.ndarray) -> None:
        """IDs unique across chunks (clean checks within one): equal hashes are confirmed on the IDs, and the first
        duplicate is reported as clean reports one."""
        import pandas as pd

        ordered = np.sort(hashes)
        twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not len(twice):
            return
        candidates = set(np.flatnonzero(np.isin(hashes, twice)).tolist())
        header, ids = None, {}
        for offset, raw in self.raw_chunks():
            header = _header(raw.columns, self.spec.id.name, self.spec.id.alias)
            for i in (p - offset for p in candidates if offset <= p < offset + len(raw)):
                ids[offset + i] = str(raw[header].iloc[i]).strip()
        values = pd.Series(ids).sort_index()
        dup = values[values.duplicated(keep=False)]
        if dup.empty:  # only a clash of hashes
            return
        twins = dup.index[dup == dup.iloc[0]].tolist()
        if self.parquet:
            where, also = f"{self.source}, row {twins[1] + 1}", f"{self.source}, row {twins[0] + 1}"
        else:
            line = (lambda p: int(self.lines[p])) if self.lines is not None else (lambda p: p + 2)
            where, also = f"{self.source}, line {line(twins[1])}", f"on line {line(twins[0])}"
        raise DataError(f"{where}, column {header}: duplicate ID {dup.iloc[0]!r} (also {also}); {len(dup)} rows "
                        "share an ID. IDs must be unique.", row=int(twins[1]), column=self.spec.id.alias)


class InMemoryChunks:
    """A Table already in memory, as one chunk: the same interface as TableChunks."""

    def __init__(self, table):
        self.table, self.spec, self.source = table, table.spec, table.source

    def check(self, keep: bool = False, warn: bool = True) -> Checked:
        table = self.table
        return Checked(len(table), table.has_labels, table.ids.to_numpy(dtype=object) if keep else None,
                       table.labels.to_numpy(dtype=object) if keep and table.has_labels else None,
                       list(table.warnings))

    def chunks(self):
        yield 0, self.table


def table_chunks(data, spec=None, chunk_rows: int | None = None):
    """TableChunks for a file, InMemoryChunks for a Table."""
    from korllama.data import Table

    return InMemoryChunks(data) if isinstance(data, Table) else TableChunks(data, spec, chunk_rows or CHUNK_ROWS)


_UNSEEN = re.compile(r"^(?P<where>.*), column (?P<column>.*): (?P<n>\d+) rows have values never seen in training "
                     r"\((?P<kinds>.*)\); treated as (?P<treated>.*)\.$", re.S)


def sum_warnings(messages: list[str]) -> list[str]:
    """One warning per column for the whole file: clean's per-chunk "N rows have values never seen in training"
    counts added up and their values joined; any other warning once."""
    summed: dict = {}
    for message in messages:
        found = _UNSEEN.match(message)
        if not found:
            summed.setdefault(message, None)
            continue
        key = (found["where"], found["column"], found["treated"])
        n, kinds = summed.get(key) or (0, set())
        summed[key] = (n + int(found["n"]), kinds | set(found["kinds"].split(", ")))
    return [key if value is None else
            f"{key[0]}, column {key[1]}: {value[0]} rows have values never seen in training "
            f"({', '.join(sorted(value[1]))}); treated as {key[2]}."
            for key, value in summed.items()]


def _header(columns, name: str, alias: str):
    """The file's header for a spec column (its name, its alias, or the alias in any case), as clean finds it."""
    headers = {str(h).strip(): h for h in columns}
    for key in (name, alias):
        if key in headers:
            return headers[key]
    return {h.casefold(): h for h in headers}.get(alias.casefold())


@dataclass
class Scored:
    """One chunk's results, rows in input order: probabilities (rank scoring) or generated texts."""

    pred: np.ndarray
    proba: np.ndarray | None = None
    texts: list[str] | None = None


def score_chunk(model, tokenizer, template, table, batch_size: int, mode: str = "score", state=None,
                progress=None, rule=None) -> Scored | None:
    """Rank-score (or generate for) one chunk; labels by argmax, or by `rule` (a korllama.decision.DecisionRule).
    With several processes each scores a contiguous share of the rows
    (accelerate's split_between_processes) and the shares are gathered to the main process in rank order, that is
    in input order; the other processes get None. `progress(n)` is told rows done, on the main process."""
    classes = table.spec.label.classes
    many = state is not None and state.num_processes > 1
    if many:
        with state.split_between_processes(list(range(len(table)))) as mine:
            part = table.subset(mine)
    else:
        part = table
    prompts = template.render(part) if len(part) else []
    each_batch = progress if not many else None
    if mode == "score":
        proba = (score(model, tokenizer, prompts, classes, batch_size, progress=each_batch) if prompts
                 else np.zeros((0, len(classes))))
        result = Scored(rule.apply(proba) if rule is not None else predict_labels(proba, classes), proba)
    else:
        pred, texts = generate(model, tokenizer, prompts, classes, batch_size, progress=each_batch) if prompts \
            else ([], [])
        result = Scored(np.asarray(pred, dtype=object), None, texts)
    if not many:
        return result
    from accelerate.utils import gather_object

    parts = gather_object([result])  # one per process, in process order
    if not state.is_main_process:
        return None
    if progress is not None:
        progress(len(table))
    return Scored(np.concatenate([p.pred for p in parts]),
                  None if mode != "score" else np.concatenate([p.proba for p in parts]),
                  None if mode == "score" else [t for p in parts for t in p.texts])


def _check_file_target(out: Path) -> None:
    """Fail before the work, not after it, when the output cannot be a file."""
    if out.is_dir():
        raise KorllamaError(f"--out {out} is a folder; name the CSV file to write.")


def open_atomic(stack, target: Path):
    """A text file for `target` that becomes `target` only when the stack closes without an error."""
    from korllama.io import atomic_path

    try:
        tmp = stack.enter_context(atomic_path(target))
        return stack.enter_context(tmp.open("w", encoding="utf-8", newline=""))
    except OSError as exc:
        raise KorllamaError(f"Could not write {target}: {exc.strerror or exc}.") from None


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a job scheduler, accelerate stopping its other processes) unwinds like Ctrl-C, so the temporary
    output is removed; only the main thread can take signals."""
    import signal
    import threading

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

"""Tests for prediction at scale: streaming (korllama.data.stream.TableChunks, predict_file, evaluate_run) equals the
in-memory path, with the same error messages and nothing written on an error or Ctrl-C, in memory that does not
grow with the table; and data-parallel prediction with `accelerate launch --num_processes 2` on CPU.

Everything uses conftest's shared tiny run (hidden 32, 2 layers, 4 steps).
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import BAD_CASES, CLASSES, free_port, quirky_frame, subprocess_env, unlabelled_csv, write_bad, write_table

from korllama.data import read_table
from korllama.data.stream import TableChunks, sum_warnings
from korllama.errors import DataError
from korllama.predict import predict_file
from korllama.prompts import get_template
from korllama.run import Run
from korllama.scoring import predict_labels, score
from korllama.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
ROUNDING = 1.5e-6  # P_x columns are rounded to 6 decimals: a row scored in another batch may round the other way


def in_memory_predictions(run_dir: Path, data: Path, with_proba: bool = True) -> pd.DataFrame:
    """The in-memory path, as predict_file was before streaming: read the whole table, score it, build the frame."""
    _loaded = Run.load(run_dir)
    model, tokenizer, config = _loaded.model, _loaded.tokenizer, _loaded.config
    table = read_table(data, config.data.spec)
    spec = table.spec
    prompts = get_template(spec, config.prompt.template, config.prompt.fields).render(table)
    proba = score(model, tokenizer, prompts, spec.label.classes, 32)
    frame = pd.DataFrame({spec.id.name: table.ids.to_numpy(), spec.label.name: predict_labels(proba, CLASSES)})
    if with_proba:
        for i, c in enumerate(CLASSES):
            frame[f"P_{c}"] = proba[:, i].round(6)
    return frame


def assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert got.iloc[:, 0].astype(str).tolist() == expected.iloc[:, 0].astype(str).tolist()  # IDs, input order
    assert got.iloc[:, 1].tolist() == expected.iloc[:, 1].tolist()  # the labels
    if got.shape[1] > 2:
        np.testing.assert_allclose(got.iloc[:, 2:].to_numpy(float), expected.iloc[:, 2:].to_numpy(float),
                                   atol=ROUNDING, rtol=0)


def labelled_csv(path: Path, rows: int, seed: int = 5) -> Path:
    synthesize(rows, seed=seed).to_csv(path, index=False)
    return path


# --- streaming equals the in-memory path ---------------------------------------------------------------------------

def test_streaming_predictions_equal_the_in_memory_path(run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "test.csv", rows=53, seed=8)
    out = tmp_path / "sub.csv"
    result = predict_file(Run.load(run_dir), data, out, with_proba=True, chunk_rows=7)  # 8 chunks, the last of 4 rows
    assert result["rows"] == 53 and sum(result["counts"].values()) == 53
    got = pd.read_csv(out, dtype={"ID": str})
    assert_same_predictions(got, in_memory_predictions(run_dir, data))
    assert result["counts"] == {c: int((got["대출등급"] == c).sum()) for c in CLASSES}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv", "test.csv"]  # no temporary file left


def test_a_parquet_table_streams_in_batches_like_its_csv(run_dir, tmp_path):
    frame = synthesize(30, seed=9).drop(columns=["대출등급"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    predict_file(Run.load(run_dir), tmp_path / "t.parquet", tmp_path / "p.csv", with_proba=True, chunk_rows=8)
    predict_file(Run.load(run_dir), tmp_path / "t.csv", tmp_path / "c.csv", with_proba=True, chunk_rows=30)
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "c.csv").read_text()
    assert len(list(TableChunks(tmp_path / "t.parquet", None, 8).chunks())) == 4


@pytest.mark.parametrize("form", ["utf-8", "utf-8-sig", "cp949", "parquet", "english"])
def test_chunks_clean_every_form_like_read_table(tmp_path, form):
    path = {"utf-8": lambda: write_table(tmp_path, "t.csv"),
            "utf-8-sig": lambda: write_table(tmp_path, "t.csv", encoding="utf-8-sig"),
            "cp949": lambda: write_table(tmp_path, "t.csv", encoding="cp949"),
            "parquet": lambda: write_table(tmp_path, "t.parquet", encoding="parquet"),
            "english": lambda: write_table(tmp_path, "t.csv", english=True)}[form]()
    whole = read_table(path).frame
    pieces = [table.frame for _, table in TableChunks(path, None, chunk_rows=11).chunks()]
    assert len(pieces) == 6  # 60 rows
    assert all(piece.index.tolist() == list(range(len(piece))) for piece in pieces)  # rows counted from 0 in each
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), whole)


def test_generated_ids_go_on_counting_across_chunks(tmp_path):
    path = tmp_path / "no_id.csv"
    quirky_frame().drop(columns=["ID"]).to_csv(path, index=False)
    streamed = pd.concat([t.ids for _, t in TableChunks(path, None, chunk_rows=25).chunks()], ignore_index=True)
    assert streamed.tolist() == read_table(path).ids.tolist() == [f"ROW_{i:05d}" for i in range(60)]


# --- errors: the same sentence as read_table, found before anything is scored or written ------------------------

@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_file_gets_read_tables_sentence(tmp_path, case):
    path, _ = write_bad(tmp_path, case)
    with pytest.raises(DataError) as whole:
        read_table(path)
    with pytest.raises(DataError) as streamed:
        TableChunks(path, None, chunk_rows=4).check()  # the bad rows lie in later chunks
    assert str(streamed.value) == str(whole.value)
    assert (streamed.value.row, streamed.value.column) == (whole.value.row, whole.value.column)


def long_row(lines: list[str]) -> list[str]:
    lines[50] += ",extra"  # row 48: a comma too many
    return lines


def every_row_long(lines: list[str]) -> list[str]:
    return [line + (",extra" if i else "") for i, line in enumerate(lines)]


def blank_lines(lines: list[str]) -> list[str]:
    lines[44] = lines[44].replace(" 36 months", " 48 months").replace(" 60 months", " 48 months")
    lines[10:10] = ["", "   "]  # pandas skips them: the rows after them lie two lines further down
    return lines


def blank_lines_and_a_late_duplicate(lines: list[str]) -> list[str]:
    lines[50] = lines[5].split(",")[0] + lines[50][lines[50].index(","):]
    lines[20:20] = [""]
    return lines


def bad_byte(lines: list[str]) -> list[str]:
    lines[40] = "\udcff" + lines[40]  # written as the byte 0xff: neither UTF-8 nor CP949
    return lines


def semicolon_header(lines: list[str]) -> list[str]:
    lines[0] = lines[0].replace(",", ";")
    return lines


def repeated_header(lines: list[str]) -> list[str]:
    return [line + "," + (line.split(",")[2] if i else "대출기간") for i, line in enumerate(lines)]


@pytest.mark.parametrize("corrupt", [long_row, every_row_long, blank_lines, blank_lines_and_a_late_duplicate,
                                     bad_byte, semicolon_header, repeated_header])
def test_a_badly_written_file_gets_read_tables_sentence(tmp_path, corrupt):
    lines = corrupt(quirky_frame().to_csv(index=False, lineterminator="\n").splitlines())
    path = tmp_path / "odd.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError) as whole:
        read_table(path)
    with pytest.raises(DataError) as streamed:
        TableChunks(path, None, chunk_rows=4).check()
    assert str(streamed.value) == str(whole.value)


def test_blank_lines_keep_every_rows_line_across_chunks(tmp_path):
    lines = quirky_frame().to_csv(index=False, lineterminator="\n").splitlines()
    lines[30:30] = ["", ""]
    path = tmp_path / "gaps.csv"
    path.write_text("\n".join(lines) + "\n\n", "utf-8")
    streamed = pd.concat([t.frame for _, t in TableChunks(path, None, chunk_rows=7).chunks()], ignore_index=True)
    pd.testing.assert_frame_equal(streamed, read_table(path).frame)


def test_a_duplicate_id_across_chunks_is_named_with_both_lines(tmp_path):
    frame = quirky_frame()
    frame.loc[57, "ID"] = frame.loc[3, "ID"]
    path = tmp_path / "dup.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"dup.csv, line 59, column ID: duplicate ID 'SYN_00003' \(also on line 5\); "
                                        r"2 rows share an ID") as streamed:
        TableChunks(path, None, chunk_rows=10).check()
    with pytest.raises(DataError) as whole:
        read_table(path)
    assert str(streamed.value) == str(whole.value)


def test_a_bad_row_in_the_last_chunk_leaves_nothing_written(cli, run_dir, tmp_path, monkeypatch):
    import korllama.predict as predict

    frame = quirky_frame().drop(columns=["대출등급"])
    frame.loc[58, "대출기간"] = " 48 months"
    data = tmp_path / "late.csv"
    frame.to_csv(data, index=False)
    scored = []
    monkeypatch.setattr(predict, "score_chunk", lambda *a, **k: scored.append(1))
    out = tmp_path / "sub.csv"
    code, _, err = cli("predict", run_dir, "--data", data, "--out", out, "--chunk-rows", 10)
    assert code == 2 and "late.csv, line 60, column 대출기간: ' 48 months' is not allowed" in err
    assert scored == []  # the whole file is checked before the first row is scored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.csv"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_prediction_leaves_nothing(run_dir, tmp_path, monkeypatch, interrupt):
    import korllama.predict as predict

    data = unlabelled_csv(tmp_path / "test.csv", rows=30)
    real, calls = predict.score_chunk, []

    def stop_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two chunks were written to the temporary file by now
            raise interrupt("stop")
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "score_chunk", stop_on_the_third_chunk)
    with pytest.raises(interrupt):
        predict_file(Run.load(run_dir), data, tmp_path / "sub.csv", chunk_rows=5)
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv"]


def test_warnings_of_all_chunks_are_summed_into_one(tmp_path):
    frame = quirky_frame()
    for row in (2, 31, 55):
        frame.loc[row, "대출목적"] = "결혼"  # never seen in training: treated as 'other', with a warning
    path = tmp_path / "wedding.csv"
    frame.to_csv(path, index=False)
    with pytest.warns(UserWarning) as whole:
        read_table(path)
    with pytest.warns(UserWarning) as streamed:
        checked = TableChunks(path, None, chunk_rows=20).check()
    assert [str(w.message) for w in streamed] == [str(w.message) for w in whole] == checked.warnings
    assert "3 rows have values never seen in training (wedding)" in checked.warnings[0]
    assert sum_warnings(["a", "a", "b"]) == ["a", "b"]


# --- evaluate streams the same way ------------------------------------------------------------------------------

def trained_rows_csv(path: Path) -> Path:
    """The rows the shared tiny run trained on (synthetic, seed 0), so that --held-out applies."""
    from fixtures import RUN_ROWS

    synthesize(RUN_ROWS, seed=0).to_csv(path, index=False)
    return path


def read_metrics(folder: Path) -> dict:
    import json

    found = json.loads((folder / "metrics.json").read_text())
    for key in ("seconds", "rows_per_s", "data", "processes"):
        found.pop(key, None)
    return found


@pytest.mark.parametrize("choice", [{}, {"held_out": True}, {"held_out": True, "limit": 15}, {"limit": 23}])
def test_streaming_evaluation_equals_the_in_memory_one(run_dir, tmp_path, choice):
    from korllama.evaluate import evaluate_run

    data = trained_rows_csv(tmp_path / "train.csv")
    streamed = evaluate_run(Run.load(run_dir), data, tmp_path / "streamed", chunk_rows=9, **choice)
    whole = evaluate_run(Run.load(run_dir), read_table(data), tmp_path / "whole", **choice)  # a Table: one chunk
    got = pd.read_csv(tmp_path / "streamed" / "predictions.csv", dtype={"ID": str})
    expected = pd.read_csv(tmp_path / "whole" / "predictions.csv", dtype={"ID": str})
    assert got["ID"].tolist() == expected["ID"].tolist()  # the same rows chosen: split and sample as in memory
    assert got["truth"].tolist() == expected["truth"].tolist()
    assert_same_predictions(got[["ID", "prediction", *[f"P_{c}" for c in CLASSES]]],
                            expected[["ID", "prediction", *[f"P_{c}" for c in CLASSES]]])
    assert streamed.n == whole.n == len(got) == {(): 200, ("held_out",): 40, ("held_out", "limit"): 15,
                                                       ("limit",): 23}[tuple(choice)]
    assert streamed.macro_f1 == pytest.approx(whole.macro_f1)
    if got["prediction"].tolist() == expected["prediction"].tolist():
        streamed_metrics, whole_metrics = read_metrics(tmp_path / "streamed"), read_metrics(tmp_path / "whole")
        streamed_metrics.pop("calibration"), whole_metrics.pop("calibration")
        assert streamed_metrics == whole_metrics


def test_evaluation_of_a_bad_file_writes_nothing(run_dir, tmp_path):
    from korllama.evaluate import evaluate_run

    frame = synthesize(60, seed=2)
    frame.loc[55, "대출등급"] = "Z"
    data = tmp_path / "bad.csv"
    frame.to_csv(data, index=False)
    with pytest.raises(DataError, match="bad.csv, line 57, column 대출등급: 'Z' is not a grade"):
        evaluate_run(Run.load(run_dir), data, tmp_path / "eval", chunk_rows=10)
    assert not (tmp_path / "eval").exists() or not list((tmp_path / "eval").iterdir())


# --- memory ------------------------------------------------------------------------------------------------------

def peak_python_memory(run_dir: Path, data: Path, out: Path, chunk_rows: int) -> int:
    import gc

    gc.collect()
    tracemalloc.start()
    try:
        predict_file(Run.load(run_dir), data, out, with_proba=True, chunk_rows=chunk_rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_table(run_dir, tmp_path, monkeypatch):
    """Python's own peak allocations (tracemalloc: pandas, numpy, the tokenizer's output; not torch's) while
    predicting 600 and 2,400 rows 150 at a time: the extra rows cost the first pass's ID hashes (8 bytes a row,
    a few copies while duplicates are looked for) and pandas' read buffer filling up, not the rows themselves,
    which a whole table in memory holds (over 1 KB a row). The model's forward pass is replaced by uniform
    probabilities (its memory is per batch, and it would take most of a minute here); the rest is the real path:
    reading, both passes' cleaning, rendering, tokenising, writing."""
    import korllama.run as run_module
    from korllama.scoring import encode_prompts

    def uniform(model, tokenizer, prompts, classes, batch_size=32, progress=None, encoded=None, known=None,
                copies=None):
        rows = encoded if encoded is not None else encode_prompts(tokenizer, prompts)
        return np.full((len(rows), len(classes)), 1 / len(classes))

    monkeypatch.setattr(run_module, "score", uniform)
    warm = unlabelled_csv(tmp_path / "warm.csv", rows=20)
    predict_file(Run.load(run_dir), warm, tmp_path / "warm-out.csv")  # imports
    small = unlabelled_csv(tmp_path / "small.csv", rows=600, seed=1)
    large = unlabelled_csv(tmp_path / "large.csv", rows=2400, seed=2)
    peak_small = peak_python_memory(run_dir, small, tmp_path / "s.csv", 150)
    peak_large = peak_python_memory(run_dir, large, tmp_path / "l.csv", 150)
    # what may grow: pandas' read buffer (256 KiB, which the smaller file does not fill) and the ID hashes
    assert peak_large - peak_small < 256 * 1024 + 24 * 1800, (peak_small, peak_large)
    assert len(pd.read_csv(tmp_path / "l.csv")) == 2400
    # the measurement can tell: the whole table in one chunk costs its rows
    peak_whole = peak_python_memory(run_dir, large, tmp_path / "w.csv", 2400)
    assert (peak_whole - peak_large) / 2400 > 1000, (peak_small, peak_large, peak_whole)


# --- data-parallel: accelerate launch --num_processes 2 ----------------------------------------------------------



def launch(args: list, processes: int = 2) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    port = free_port()
    env = subprocess_env(MASTER_PORT=str(port))
    command = [str(accelerate), "launch", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "--main_process_port", str(port),
               "-m", "korllama", *[str(a) for a in args]]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)


@pytest.mark.slow  # two subprocesses: `make test` runs it, `-m 'not slow'` skips it
def test_two_processes_predict_what_one_does_in_input_order(run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "test.csv", rows=45, seed=6)
    one = tmp_path / "one.csv"
    predict_file(Run.load(run_dir), data, one, with_proba=True, chunk_rows=10)
    two = tmp_path / "two.csv"
    result = launch(["predict", run_dir, "--data", data, "--out", two, "--proba", "--chunk-rows", 10])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("wrote") == 1  # the main process reports, once
    assert "45 rows" in result.stdout
    got, expected = pd.read_csv(two, dtype={"ID": str}), pd.read_csv(one, dtype={"ID": str})
    assert got["ID"].tolist() == pd.read_csv(data, dtype=str)["ID"].tolist()  # input order (shuffled IDs)
    assert_same_predictions(got, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "test.csv", "two.csv"]


@pytest.mark.slow  # two subprocesses: `make test` runs it, `-m 'not slow'` skips it
def test_two_processes_evaluate_what_one_does(run_dir, tmp_path):
    from korllama.evaluate import evaluate_run

    data = trained_rows_csv(tmp_path / "train.csv")
    evaluate_run(Run.load(run_dir), data, tmp_path / "one", held_out=True, chunk_rows=16)
    result = launch(["evaluate", run_dir, "--data", data, "--out", tmp_path / "two", "--held-out",
                     "--chunk-rows", 16])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("macro-F1") == 1
    got = pd.read_csv(tmp_path / "two" / "predictions.csv", dtype={"ID": str})
    expected = pd.read_csv(tmp_path / "one" / "predictions.csv", dtype={"ID": str})
    assert len(got) == 40
    probabilities = [f"P_{c}" for c in CLASSES]
    assert_same_predictions(got[["ID", "prediction", *probabilities]], expected[["ID", "prediction", *probabilities]])
    pd.testing.assert_frame_equal(got.drop(columns=probabilities), expected.drop(columns=probabilities))
    assert read_metrics(tmp_path / "two")["macro_f1"] == pytest.approx(read_metrics(tmp_path / "one")["macro_f1"])


# --- training at scale: the shipped accelerate configs ----------------------------------------------------------

ACCELERATE_CONFIGS = REPO / "korllama" / "configs" / "accelerate"


def launcher_environment(name: str) -> tuple[object, dict]:
    """What `accelerate launch --config_file korllama/configs/accelerate/NAME.yaml -m korllama train` hands its
    processes (the launcher's own parsing and environment, without starting them)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"),
                                               "-m", "korllama", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if defaults.distributed_type.value == "DEEPSPEED":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return defaults, prepare_deepspeed_cmd_env(args)[1]
    return defaults, prepare_multi_gpu_env(args)


def test_the_fsdp_config_is_what_accelerate_builds_fsdp_from(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    defaults, env = launcher_environment("fsdp")
    assert defaults.distributed_type.value == "FSDP" and env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    plugin = FullyShardedDataParallelPlugin()  # reads the environment, as the Trainer's Accelerator does
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # whole safetensors, as korllama verifies


@pytest.mark.parametrize("stage", [2, 3])
def test_the_deepspeed_configs_are_what_accelerate_builds_zero_from(monkeypatch, stage):
    from accelerate.utils import DeepSpeedPlugin

    defaults, env = launcher_environment(f"deepspeed-zero{stage}")
    assert defaults.distributed_type.value == "DEEPSPEED" and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    zero = DeepSpeedPlugin().deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)  # one whole file saved

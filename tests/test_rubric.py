"""Any rubric, end to end: a table with Korean headers and Korean labels (examples/hiring) goes through train ->
evaluate -> predict -> serve with no code change, and labels of several tokens where one is a prefix of another
("pass" / "pass with merit") are trained and rank-scored correctly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from korllama.config import load_config
from korllama.evaluate import evaluate_run
from korllama.predict import predict_file
from korllama.run import Run
from korllama.scoring import label_tokens, score
from korllama.training import train

REPO = Path(__file__).resolve().parents[1]
HIRING = REPO / "examples" / "hiring"
LABELS = ["우수", "보통", "미흡"]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 400, "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def hiring_run(tmp_path_factory) -> Path:
    """The example's own config, shrunk to a few steps on the tiny model."""
    run_dir = tmp_path_factory.mktemp("hiring") / "run"
    config = load_config(HIRING / "config.yaml", [
        f"data.train={HIRING / 'hiring.csv'}", f"data.spec={HIRING / 'spec.yaml'}", "prompt.fields=[rubric_score]",
        f"model.tiny={json.dumps(TINY)}", "train.max_steps=8", "train.eval_steps=8", "train.save_steps=8",
        "train.eval_rows=40", "train.warmup_steps=0", "train.lr=1e-2"])
    train(config, run_dir)
    return run_dir


def test_korean_labels_train_evaluate_and_predict(hiring_run, tmp_path):
    config = Run.load(hiring_run).config
    assert config.data.spec.endswith("spec.yaml")
    result = evaluate_run(Run.load(hiring_run), HIRING / "hiring.csv", tmp_path / "eval", held_out=True)
    assert result.classes == LABELS and result.n == 240  # the test rows: 10% of the 2,400
    assert np.asarray(result.confusion).shape == (3, 3) and set(result.per_class) == set(LABELS)
    assert result.ordinal is True and result.qwk is not None
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert set(predictions["prediction"]) <= set(LABELS)
    assert [c for c in predictions.columns if c.startswith("P_")] == [f"P_{c}" for c in LABELS]

    unlabelled = pd.read_csv(HIRING / "hiring.csv").head(30).drop(columns=["평가"])
    unlabelled.to_csv(tmp_path / "new.csv", index=False)
    summary = predict_file(Run.load(hiring_run), tmp_path / "new.csv", tmp_path / "graded.csv")
    graded = pd.read_csv(tmp_path / "graded.csv")
    assert list(graded.columns) == ["지원번호", "평가"]  # the spec's id and label headers
    assert set(graded["평가"]) <= set(LABELS) and summary["rows"] == 30
    assert set(summary["counts"]) == set(LABELS)


def test_korean_labels_are_served(hiring_run):
    from korllama.serve import create_app

    row = pd.read_csv(HIRING / "hiring.csv", dtype=str, keep_default_na=False).iloc[0].drop("평가").to_dict()
    with TestClient(create_app(Run.load(hiring_run)), base_url="http://localhost") as client:
        answer = client.post("/v1/grade", json=row)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert list(body["probabilities"]) == LABELS and body["grade"] in LABELS
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
        bad = client.post("/v1/grade", json=row | {"학력": "유치원"})
        assert bad.status_code == 422 and "학력" in json.dumps(bad.json(), ensure_ascii=False)


# --- a label that is a prefix of another -----------------------------------------------------------------------

MERIT_SPEC = {
    "name": "merit", "id": {"name": "ID", "alias": "id"},
    "label": {"name": "result", "alias": "result", "classes": ["pass", "pass with merit", "fail"]},
    "columns": [{"name": "band", "alias": "band", "parser": "category", "values": ["low", "mid", "high"]},
                {"name": "score", "alias": "score", "parser": "number", "min": 0, "max": 100}],
}


def merit_table(path: Path, rows: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    band = rng.choice(["low", "mid", "high"], rows)
    result = np.select([band == "high", band == "mid"], ["pass with merit", "pass"], "fail")
    pd.DataFrame({"ID": [f"R{i}" for i in range(rows)], "band": band, "score": rng.integers(0, 100, rows),
                  "result": result}).to_csv(path, index=False)
    return path


def test_a_prefix_label_is_trained_and_scored_correctly(tmp_path):
    spec = tmp_path / "merit.yaml"
    spec.write_text(yaml.safe_dump(MERIT_SPEC))
    data = merit_table(tmp_path / "merit.csv", 400, seed=0)
    config = load_config(None, [
        f"data.train={data}", f"data.spec={spec}", "prompt.fields=[band]", f"model.tiny={json.dumps(TINY)}",
        "model.device=cpu", "train.max_steps=60", "train.batch_size=16", "train.grad_accum=1", "train.lr=1e-2",
        "train.warmup_steps=0", "train.eval_steps=60", "train.save_steps=60", "train.eval_rows=40",
        "train.max_length=64", "train.logging_steps=20"])
    run_dir = tmp_path / "run"
    train(config, run_dir)
    _loaded = Run.load(run_dir)
    model, tokenizer, _ = _loaded.model, _loaded.tokenizer, _loaded.config
    labels = label_tokens(tokenizer, MERIT_SPEC["label"]["classes"])
    assert not labels.single and labels.answers[1][:1] == labels.answers[0]  # " pass" starts " pass with merit"

    prompts = [f"band: {b}\nresult:" for b in ("low", "mid", "high")]
    proba = score(model, tokenizer, prompts, MERIT_SPEC["label"]["classes"])
    assert list(proba.argmax(axis=1)) == [2, 0, 1]  # fail, pass, pass with merit
    assert proba[1, 0] > 0.8 and proba[2, 1] > 0.8  # "pass" wins where it is right, its extension where that is

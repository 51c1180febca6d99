"""Tests for korllama.explain (reasons), korllama.card (the model card), `korllama explain` and the
report's importance and group sections.

A toy spec where only `signal` decides the label shows the reasons are faithful: with a hand-written proba_fn and
with the tree baseline, `signal` is rank 1 for nearly every row, a field the system reads but that cannot matter
gets |delta| near 0, and a column the prompt does not show gets no line. The tiny trained run (conftest's `run_dir`)
gives the LLM's shape, the CLI, the stored references and the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import RUN_ROWS

from korllama.data import clean, split
from korllama.errors import KorllamaError
from korllama.explain import REASON_COLUMNS, explain, explain_rows, importance, neutralised, sentence
from korllama.prompts import carried_fields, get_template, known_fields
from korllama.references import load_references, reference_values
from korllama.run import Run
from korllama.spec import load_spec
from korllama.synth import synthesize, synthetic_table

PNG = b"\x89PNG\r\n\x1a\n"

TOY_SPEC = """\
name: toy
label: {name: outcome, alias: outcome, classes: [low, mid, high]}
columns:
  - {name: signal, alias: signal, parser: number}
  - {name: noise, alias: noise, parser: number}
  - {name: color, alias: color, parser: category, values: [red, green, blue]}
  - {name: hidden, alias: hidden, parser: number, min: 1}
derived:
  - {alias: noise_per_hidden, op: ratio, args: [noise, hidden]}
templates:
  plain: {text: "signal: {signal:.3f}\\nnoise: {noise:.3f}\\ncolor: {color}\\noutcome:"}
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(train, rows to explain) of a table where only `signal` decides the label: low below -0.8, high above 0.8
    (a fifth of the rows each), mid between, so the typical signal (the training median, about 0) is clearly mid."""
    folder = tmp_path_factory.mktemp("toy")
    (folder / "spec.yaml").write_text(TOY_SPEC, "utf-8")
    spec = load_spec(folder / "spec.yaml")
    rng = np.random.default_rng(0)
    n = 600
    signal = rng.normal(size=n)
    raw = pd.DataFrame({"ID": [f"T{i:04d}" for i in range(n)], "signal": signal.round(4).astype(str),
                        "noise": rng.normal(size=n).round(4).astype(str),
                        "color": rng.choice(["red", "green", "blue"], n), "hidden": rng.uniform(1, 2, n).astype(str),
                        "outcome": np.select([signal < -0.8, signal > 0.8], ["low", "high"], "mid")})
    table = clean(raw, spec, source="toy.csv")
    train, rows, _ = split(table, 0.2, 0)
    return train, rows


def signal_only(table, turn: float) -> np.ndarray:
    """A system that reads nothing but `signal`: P(low, mid, high) = softmax(-4 x, 0, 4 x), x = signal - turn."""
    x = 4 * (table.frame["signal"].to_numpy(dtype=float) - turn)
    logits = np.stack([-x, np.zeros_like(x), x], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_carried_fields_are_the_templates_columns(toy):
    train, _ = toy
    spec = train.spec
    assert carried_fields(get_template(spec, "plain"), spec) == ["signal", "noise", "color"]
    assert known_fields(spec) == ["signal", "noise", "color", "hidden", "noise_per_hidden"]
    loan = load_spec()
    assert carried_fields(get_template(loan, "compact", ["term", "implied_rate"]), loan) == ["term", "implied_rate"]
    seed = carried_fields(get_template(loan, "seed"), loan)
    assert seed == [c.alias for c in loan.columns]  # the original prompt: every raw column, no derived feature


def test_references_are_typical_training_values():
    train = synthetic_table(400, 0)
    refs = reference_values(train)
    frame = train.frame
    assert refs["term"] == frame["term"].mode().iloc[0] == 36  # a fixed set of values: the most frequent, never 48
    assert refs["home_ownership"] == frame["home_ownership"].value_counts().index[0]
    assert isinstance(refs["loan_amount"], int)  # a whole-number column gets a whole number
    assert abs(refs["loan_amount"] - frame["loan_amount"].astype(float).median()) <= 0.5
    assert refs["implied_rate"] == pytest.approx(frame["implied_rate"].median())
    json.dumps(refs)  # stored as JSON in the run


def test_reasons_in_words():
    spec = load_spec()
    assert sentence(spec, "implied_rate", 0.1891, 0.1157, "E", 0.41) == \
        "implied_rate 18.91% (typical 11.57%) raises E by 0.41"
    assert sentence(spec, "loan_amount", 16800000, 14000000, "B", -0.123) == \
        "loan_amount 16,800,000 (typical 14,000,000) lowers B by 0.12"
    assert sentence(spec, "term", 36, 36, "C", 0.0) == "term 36 (typical) does not change C"
    assert sentence(spec, "home_ownership", None, "MORTGAGE", "A", 0.05) == \
        "home_ownership missing (typical MORTGAGE) raises A by 0.05"


def test_only_the_deciding_field_matters_hand_written(toy):
    train, rows = toy
    spec = train.spec
    fields = carried_fields(get_template(spec, "plain"), spec)
    refs = reference_values(train)
    calls = []

    def counted(table):  # its answer turns at the typical signal: every row's signal argues for its answer
        calls.append(len(table))
        return signal_only(table, turn=refs["signal"])

    reasons = explain(counted, rows, fields, refs, spec.label.classes)
    frame = reasons.frame()
    assert list(frame.columns[:8]) == REASON_COLUMNS
    assert list(frame.columns[8:]) == ["delta_low", "delta_mid", "delta_high"]
    assert len(frame) == len(rows) * 3  # one line per row and carried field
    assert "hidden" not in set(frame["field"]) and "noise_per_hidden" not in set(frame["field"])
    first = frame[frame["rank"] == 1]
    assert (first["field"] == "signal").mean() >= 0.99
    assert (first["delta"] > 0).mean() >= 0.99
    others = frame[frame["field"] != "signal"]
    assert others["delta"].abs().max() == 0  # fields it does not read: exactly no change
    assert np.allclose(frame[["delta_low", "delta_mid", "delta_high"]].sum(axis=1), 0, atol=1e-5)  # sums to 1
    assert len(calls) == 1 and calls[0] <= len(rows) * 4  # every variant of the rows in one call
    p = signal_only(rows, turn=refs["signal"])
    assert np.allclose(reasons.proba, p)
    row = frame[frame["id"] == rows.ids.iloc[0]]
    assert row["probability"].iloc[0] == pytest.approx(p[0].max(), abs=1e-6)
    assert row["label"].iloc[0] == ["low", "mid", "high"][p[0].argmax()]


def test_only_the_deciding_field_matters_trees(toy):
    from korllama.baseline import TreeBaseline

    train, rows = toy
    spec = train.spec
    model = TreeBaseline(n_estimators=200, seed=0).fit(train)
    reasons = explain(model.predict_proba, rows, known_fields(spec), reference_values(train), spec.label.classes)
    frame = reasons.frame()
    assert len(frame) == len(rows) * 5  # the trees read every column and derived feature
    # Trees are steps: at the typical signal they say "mid" outright, so a row answered "mid" has no reason to
    # differ from typical (every delta about 0). Every row answered "low" or "high" owes it to its signal.
    first = frame[frame["rank"] == 1]
    far = first[first["label"] != "mid"]
    assert len(far) >= 30 and (far["field"] == "signal").mean() >= 0.95
    assert far["delta"].quantile(0.1) > 0.5
    weights = importance(frame)
    assert weights.index[0] == "signal" and weights["signal"] > 0.1
    for field in ("noise", "color", "hidden", "noise_per_hidden"):
        assert weights[field] < 0.05, (field, weights[field])


def test_neutralising_a_raw_column_recomputes_what_is_derived_from_it():
    table = synthetic_table(50, 1)
    spec, frame = table.spec, table.frame
    ref = float(frame["principal_repaid"].median())
    out = neutralised(frame, spec, "principal_repaid", ref)
    assert (out["principal_repaid"] == ref).all()
    moved = frame["principal_repaid"] != ref
    for derived in ("principal_ratio", "interest_per_principal", "implied_rate", "payments_made"):
        assert not np.allclose(out.loc[moved, derived], frame.loc[moved, derived], equal_nan=True), derived
    pd.testing.assert_series_equal(out["interest_ratio"], frame["interest_ratio"])  # not derived from it
    pd.testing.assert_series_equal(out["annual_income"], frame["annual_income"])
    # the reasons follow: a system reading only the implied rate, explained through the raw columns of `seed`
    rate_only = lambda t: np.stack([np.nan_to_num(t.frame["implied_rate"].to_numpy(dtype=float), nan=0.1),  # noqa: E731
                                    1 - np.nan_to_num(t.frame["implied_rate"].to_numpy(dtype=float), nan=0.1)], 1)
    fields = carried_fields(get_template(spec, "seed"), spec)
    weights = importance(explain(rate_only, table, fields, reference_values(table), ["x", "y"]).frame())
    for field in ("principal_repaid", "interest_repaid", "loan_amount", "term"):  # the rate's inputs
        assert weights[field] > 0, field
    for field in ("annual_income", "purpose", "home_ownership", "debt_to_income"):
        assert weights[field] == 0, field


def test_a_derived_field_is_neutralised_by_its_own_median():
    table = synthetic_table(50, 1)
    spec, frame = table.spec, table.frame
    refs = reference_values(table)
    out = neutralised(frame, spec, "implied_rate", refs["implied_rate"])
    assert (out["implied_rate"] == refs["implied_rate"]).all()
    pd.testing.assert_series_equal(out["principal_ratio"], frame["principal_ratio"])  # inputs untouched
    pd.testing.assert_series_equal(out["principal_repaid"], frame["principal_repaid"])
    assert not np.allclose(out["payments_made"], frame["payments_made"], equal_nan=True)  # derived from it: follows


# --- the tiny trained run: CLI, LLM shape, stored references, the model card, the report ------------------------

@pytest.fixture(scope="module")
def run_data(tmp_path_factory) -> Path:
    """The rows the shared tiny run was trained on (synthetic seed 0), as a CSV."""
    path = tmp_path_factory.mktemp("explain-data") / "data.csv"
    synthesize(RUN_ROWS, seed=0).to_csv(path, index=False)
    return path


def test_explain_llm_and_baseline_give_the_same_csv_shape(cli, run_dir, run_data, tmp_path):
    code, out, err = cli("explain", run_dir, "--data", run_data, "--held-out", "--limit", 6, "--out",
                         tmp_path / "llm")
    assert code == 0, err
    llm = pd.read_csv(tmp_path / "llm" / "reasons.csv")
    assert list(llm.columns[:8]) == REASON_COLUMNS
    assert len(llm) == 6 * 3 and set(llm["field"]) == {"term", "implied_rate", "principal_ratio"}
    assert "loan_amount" not in set(llm["field"])  # not in the prompt: no line
    assert "rows/s" in out and "(typical" in out
    summary = json.loads((tmp_path / "llm" / "explain.json").read_text())
    assert summary["rows"] == 6 and summary["fields"] == ["term", "implied_rate", "principal_ratio"]

    code, _, err = cli("baseline", "--train", run_data, "--config", run_dir / "config.yaml", "--out",
                       tmp_path / "trees")
    assert code == 0, err
    code, out, err = cli("explain", tmp_path / "trees", "--data", run_data, "--held-out", "--limit", 6, "--out",
                         tmp_path / "trees")
    assert code == 0, err
    trees = pd.read_csv(tmp_path / "trees" / "reasons.csv")
    assert list(trees.columns) == list(llm.columns)  # the same shape: reasons compare across systems
    assert len(trees) == 6 * len(known_fields(load_spec()))  # every column and derived feature
    assert set(trees["id"]) == set(llm["id"])  # the same rows
    for frame in (llm, trees):
        assert (frame.groupby("id")["rank"].apply(sorted).map(lambda r: r == list(range(1, len(r) + 1)))).all()


def test_explain_prints_reasons_in_words_and_refuses_unknown_ids(cli, run_dir, run_data, tmp_path):
    ids = pd.read_csv(run_data)["ID"].iloc[[3, 7]].tolist()
    code, out, err = cli("explain", run_dir, "--data", run_data, "--id", ids[0], "--id", ids[1], "--top", 2,
                         "--out", tmp_path / "why")
    assert code == 0, err
    assert ids[0] in out and ids[1] in out
    assert out.count("(typical") == 4  # two reasons for each of two rows
    frame = pd.read_csv(tmp_path / "why" / "reasons.csv")
    assert list(dict.fromkeys(frame["id"])) == ids  # in the order asked
    code, out, err = cli("explain", run_dir, "--data", run_data, "--id", "NOPE_1", "--out", tmp_path / "none")
    assert code == 2
    assert "no row with ID 'NOPE_1'" in err and "Traceback" not in err
    assert not (tmp_path / "none").exists()  # nothing written


def test_explain_rows_for_the_service_equals_korllama_explain(cli, run_dir, run_data, tmp_path):
    from korllama.data import read_table

    run = Run.load(run_dir)
    table = read_table(run_data).subset([5, 9])
    proba, top = explain_rows(run, table, run.references, top=2)
    assert proba.shape == (2, 7) and [len(t) for t in top] == [2, 2]
    code, _, err = cli("explain", run_dir, "--data", run_data, "--id", table.ids.iloc[0], "--id",
                       table.ids.iloc[1], "--out", tmp_path / "cli")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "cli" / "reasons.csv")
    for i, reasons in enumerate(top):
        lines = frame[frame["id"] == table.ids.iloc[i]].set_index("rank")
        assert lines.loc[1, "probability"] == pytest.approx(proba[i].max(), abs=1e-6)
        for rank, r in enumerate(reasons, start=1):
            assert lines.loc[rank, "field"] == r["field"]
            assert lines.loc[rank, "delta"] == pytest.approx(r["delta"], abs=1e-6)
            assert r["text"].startswith(r["field"]) and "(typical" in r["text"]


def test_the_run_stores_its_references(run_dir):
    from korllama.layout import RunDir

    stored = load_references(RunDir(run_dir).references)
    assert stored == json.loads(json.dumps(reference_values(Run.load(run_dir).split()[0])))


def test_the_model_card_reports_the_test_rows(tested_run):
    from korllama.layout import RunDir

    text = RunDir(tested_run).model_card.read_text("utf-8")
    assert "## Test rows" in text and "## Validation" not in text
    assert "140 training rows; 40 validation rows (20%)" in text and "20 test rows (10%), kept aside" in text
    # the figures are on the test rows, not on the validation sample the best checkpoint was chosen on
    assert "on 20 of the 20 test rows" in text and "no choice was made on these rows" in text
    assert "over 20 test rows" in text  # the reasons too


def test_the_model_card(run_dir, tmp_path):
    from korllama.card import write_model_card
    from korllama.decision import DecisionRule
    from korllama.layout import RunDir

    text = RunDir(run_dir).model_card.read_text("utf-8")
    for heading in ("# Model card: tiny", "## Model", "## Data", "## Prompt", "## Recipe", "## Validation",
                    "## Calibration", "## Decision rule", "## Reasons", "## Group metrics", "## Intended use",
                    "## Limits"):
        assert heading in text, heading
    summary = json.loads(RunDir(run_dir).summary.read_text())
    assert "`tiny`" in text and "synthetic" in text and "160 training rows, 40 held-out rows" in text
    assert "no test rows: data.test_fraction 0" in text and "## Test rows" not in text
    assert "Template `compact`" in text and "{implied_rate:.2%}" in text
    assert f"kept weights are from step {summary['best_step']}" in text
    assert "plain argmax" in text  # no decision.json
    assert "**home_ownership**" in text and "| implied_rate |" in text

    copy = tmp_path / "run"  # a decision rule beside the weights: the card says so
    shutil.copytree(run_dir, copy)
    DecisionRule(list("ABCDEFG"), [1, 0.5, 1, 1, 1, 2, 1], fitted_rows=40,
                 valid_macro_f1={"argmax": 0.1, "decision": 0.2}).save(RunDir(copy).decision)
    card = write_model_card(Run.load(copy)).read_text("utf-8")
    assert "fitted on 40 validation rows" in card and "0.1000 with plain argmax -> 0.2000" in card
    shutil.rmtree(RunDir(copy).model)
    with pytest.warns(UserWarning, match="model card"):  # after training a broken card is a warning, not a failure
        assert write_model_card(Run.load(copy), on_error="warn") is None
    with pytest.raises(KorllamaError):
        write_model_card(Run.load(copy))
    (copy / "references.json").unlink()
    run = Run.load(copy)  # a run without its stored references derives them from its training split
    assert run.references == stored_references(run_dir)


def test_compare_shows_cards_importance_and_groups(cli, run_dir, run_data, tmp_path):
    from korllama.evaluate import evaluate_run
    from korllama.report import compare

    tuned = evaluate_run(Run.load(run_dir), run_data, tmp_path / "tuned", held_out=True, system="tuned")
    assert set(tuned.group_columns) == {c.alias for c in load_spec().columns}
    predictions = pd.read_csv(tmp_path / "tuned" / "predictions.csv")
    assert {"home_ownership", "loan_amount"} <= set(predictions.columns)
    code, _, err = cli("explain", run_dir, "--data", run_data, "--held-out", "--out", tmp_path / "tuned")
    assert code == 0, err
    evaluate_run(Run.load(run_dir, base=str(run_dir / "base")), run_data, tmp_path / "before", held_out=True,
                 system="before")
    report = tmp_path / "report.html"
    compare([tmp_path / "before", tmp_path / "tuned"], report)
    page = report.read_text("utf-8")
    assert "global importance" in page and "group metrics" in page and "largest gaps" in page
    assert page.count("model_card.md") == 2  # a link to the tuned run's card (none for the bare base)
    assert "<summary>tuned: every group</summary>" in page and "<summary>before: every group</summary>" in page
    assert not (tmp_path / "report").exists()  # every plot is in the page
    assert page.count("data:image/png") >= 5  # confusion, F1, reliability, curve, importance, groups
    groups = tmp_path / "groups"
    shutil.copytree(tmp_path / "before", groups)  # an evaluation from before group columns: no section, no crash
    metrics = json.loads((groups / "metrics.json").read_text())
    metrics.pop("group_columns")
    (groups / "metrics.json").write_text(json.dumps(metrics))
    compare([groups], tmp_path / "old.html")
    assert "group metrics" not in (tmp_path / "old.html").read_text("utf-8")


def test_the_card_explains_as_many_rows_as_fit_its_time():
    from korllama.card import IMPORTANCE_ROWS, IMPORTANCE_SECONDS, explained_rows

    assert explained_rows(2000.0, 3, 5000) == IMPORTANCE_ROWS  # the tiny model: all it may
    assert explained_rows(2000.0, 3, 40) == 40  # never more rows than there are
    assert explained_rows(3.0, 13, 100) == 20  # Gemma on the Korean prompt: the floor (60 s would give 12)
    assert explained_rows(25.0, 3, 300) == min(IMPORTANCE_ROWS, int(25.0 * IMPORTANCE_SECONDS / 4))
    assert explained_rows(10.0, 9, 300) == 60


def stored_references(run_dir) -> dict:
    from korllama.layout import RunDir

    return load_references(RunDir(run_dir).references)

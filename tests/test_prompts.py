"""Prompt templates: the seed template reproduces the original project's prompt exactly; the others by content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SEED_README
from fixtures import (
    HEADER,
    README_EXAMPLE_1,
    README_TEST_00000,
    TEST_00000,
    TEST_00010,
    quirky_frame,
    strip_lines,
    write_table,
)

from korllama.data import read_table
from korllama.errors import ConfigError
from korllama.prompts import answer, get_template, render, templates
from korllama.spec import load_spec

INSTRUCTION = "with those conditions, Guess His Credit Rating in one of A,B,C,D,E,F,G"


@pytest.fixture
def rows_csv(tmp_path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("\n".join([HEADER, TEST_00000, TEST_00010]) + "\n", "utf-8")
    return path


@pytest.fixture
def rows(rows_csv):
    return read_table(rows_csv)


def test_templates_by_name():
    spec = load_spec()
    assert list(templates(spec)) == ["compact", "seed", "seed-clear", "ko", "ko-rate"]
    for name in ("seed", "seed-clear", "ko", "ko-rate", "compact"):
        assert get_template(spec, name).name == name
        assert get_template(spec, name).text


def test_unknown_template_lists_allowed_names():
    with pytest.raises(ConfigError) as info:
        get_template(load_spec(), "fancy")
    message = str(info.value)
    assert "'fancy'" in message
    for name in ("compact", "seed", "seed-clear", "ko"):
        assert name in message


def test_the_short_korean_prompt_writes_the_term_and_the_schedule_rate(rows):
    rated = int(np.flatnonzero(rows.frame["schedule_rate"].notna().to_numpy())[0])
    text = render(rows, "ko-rate")[rated]
    term, rate = int(rows.frame.loc[rated, "term"]), rows.frame.loc[rated, "schedule_rate"]
    assert f"대출 기간: {term}개월\n" in text and f"상환 기준 연이율: {rate:.2%}\n" in text
    assert text.endswith("신용 등급:")
    unpaid = rows.subset(rows.frame.index[:1])
    unpaid.frame.loc[0, "schedule_rate"] = np.nan  # a loan that repaid nothing has no rate
    assert "상환 기준 연이율: 알 수 없음\n" in render(unpaid, "ko-rate")[0]


def test_answer_is_space_then_grade():
    assert answer("B") == " B"
    assert [answer(g) for g in "AG"] == [" A", " G"]


def test_seed_renders_test_00000_exactly_as_the_original_readme(rows):
    prompt = render(rows, "seed")[0]
    assert strip_lines(prompt) == strip_lines(README_TEST_00000)
    assert prompt.rstrip().endswith("###Credit Rating :")
    # trailing spaces are kept as the original wrote them (they are in the template file)
    assert "response about ###instruction \n" in prompt
    assert "take out a loan during 36 months. \n" in prompt


def test_seed_renders_readme_example_1(rows):
    assert strip_lines(render(rows, "seed")[1]) == strip_lines(README_EXAMPLE_1)


@pytest.mark.skipif(not SEED_README.exists(), reason="the original README is not beside the checkout")
def test_seed_rendering_appears_in_the_original_readme(rows):
    readme = strip_lines(SEED_README.read_text("utf-8"))
    for prompt in render(rows, "seed"):
        assert strip_lines(prompt) in readme


def test_seed_clear_says_the_instruction_twice(rows):
    seed, clear = render(rows, "seed")[0], render(rows, "seed-clear")[0]
    assert clear.count(INSTRUCTION) == 2 and seed.count(INSTRUCTION) == 1
    assert "###Condition\nhe/she owe $ 16800000" in clear
    assert clear.rstrip().endswith("###Credit Rating :")


def test_ko_is_korean_with_the_raw_purpose(rows):
    first, second = render(rows, "ko")
    assert "주택 개선" in first and "housing improvement" not in first
    assert "부채 통합" in second
    for word in ("대출 금액", "신용 등급", "연간 소득", "16800000", "36개월"):
        assert word in first, word
    assert "60개월" in second


def test_compact_has_every_column_and_the_implied_rate(rows):
    first = render(rows, "compact")[0]
    lines = first.splitlines()
    assert "implied_rate: 10.57%" in lines
    assert "purpose: housing improvement" in lines and "term: 36" in lines
    assert lines[-1] == "grade:"
    spec = load_spec()
    for name in [c.alias for c in spec.columns] + [d.alias for d in spec.derived]:
        assert any(line.startswith(f"{name}: ") for line in lines), name
    assert rows.frame.loc[0, "implied_rate"] == pytest.approx(0.106, abs=0.0005)


def test_missing_employment_renders_as_unknown(tmp_path):
    path = tmp_path / "unknown.csv"
    path.write_text("\n".join([HEADER, TEST_00000.replace("8 years", "Unknown")]) + "\n", "utf-8")
    table = read_table(path)
    assert "He/she works for Unknown years." in render(table, "seed")[0]
    assert "employment_length: Unknown" in render(table, "compact")[0].splitlines()
    assert "알 수 없음" in render(table, "ko")[0]


def test_one_prompt_per_row_in_order(tmp_path):
    table = read_table(write_table(tmp_path, frame=quirky_frame()))
    for name in ("seed", "seed-clear", "ko", "compact"):
        prompts = render(table, name)
        assert len(prompts) == len(table)
        assert len(set(prompts)) == len(table)  # rows differ, so do their prompts
    seeds = render(table, "seed")
    first = table.frame.iloc[0]
    assert f"he/she owe $ {first['loan_amount']} , take out a loan during {first['term']} months." in seeds[0]


def test_template_with_an_unknown_field_is_a_config_error(rows):
    from korllama.prompts import Template

    with pytest.raises(ConfigError, match=r"\{salary\}"):
        Template("bad", "pay: {salary}").render(rows)

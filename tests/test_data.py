"""Reading, cleaning and validating tables: encodings, headers, quirks, derived features and every bad case."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from fixtures import (
    BAD_CASES,
    DTI_ROW,
    EMPLOYMENT,
    GRADE_ROWS,
    GRADES,
    HOMES,
    INCOME_ROW,
    PURPOSES,
    ROWS,
    UNPAID_ROW,
    quirky_frame,
    write_bad,
    write_table,
    write_variants,
)

from korllama.data import DataWarning, read_table, split
from korllama.errors import DataError
from korllama.features import monthly_payment, principal_repaid
from korllama.spec import load_spec
from korllama.synth import synthetic_table

ALIASES = ["loan_amount", "term", "employment_length", "home_ownership", "annual_income", "debt_to_income",
           "total_accounts", "purpose", "delinquencies_2y", "principal_repaid", "interest_repaid", "overdue_amount",
           "delinquent_accounts", "grade"]
DERIVED = ["principal_ratio", "interest_ratio", "interest_per_principal", "implied_rate", "payments_made",
           "schedule_rate"]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return write_variants(tmp_path_factory.mktemp("variants"))


@pytest.fixture(scope="module")
def table(variants):
    return read_table(variants["utf-8"])


# --- reading ----------------------------------------------------------------------------------------------------

def test_clean_frame_has_id_aliases_label_and_derived(table):
    assert list(table.frame.columns) == ["id", *ALIASES, *DERIVED]
    assert len(table) == ROWS
    assert table.ids.iloc[0] == "SYN_00000" and table.ids.is_unique
    assert table.has_labels
    assert table.warnings == []


@pytest.mark.parametrize("form", ["utf-8-sig", "cp949", "parquet", "english"])
def test_every_form_reads_to_the_same_table(variants, table, form):
    other = read_table(variants[form])
    pd.testing.assert_frame_equal(other.frame, table.frame, check_dtype=False)
    assert other.source == variants[form].name


def test_encodings_really_differ_on_disk(variants):
    utf8, bom, cp949 = (variants[k].read_bytes() for k in ("utf-8", "utf-8-sig", "cp949"))
    assert bom.startswith(b"\xef\xbb\xbf") and not utf8.startswith(b"\xef\xbb\xbf")
    assert cp949 != utf8
    with pytest.raises(UnicodeDecodeError):
        cp949.decode("utf-8")
    assert variants["parquet"].read_bytes()[:4] == b"PAR1"
    assert variants["english"].read_text("utf-8").startswith("id,loan_amount,term,employment_length,")


def test_english_headers_in_any_case_are_accepted(tmp_path, table):
    frame = quirky_frame().rename(columns={c.name: c.alias.upper() for c in load_spec().columns})
    assert "LOAN_AMOUNT" in frame.columns
    pd.testing.assert_frame_equal(read_table(write_table(tmp_path, frame=frame)).frame, table.frame)


# --- cleaning the quirks ----------------------------------------------------------------------------------------

def test_term_months_with_leading_space(table):
    raw = quirky_frame()["대출기간"]
    assert set(raw) == {" 36 months", " 60 months"}
    assert table.frame["term"].tolist() == [36 if r == " 36 months" else 60 for r in raw]
    assert table.frame.loc[0, "term"] == 36 and table.frame.loc[1, "term"] == 60


def test_employment_strings(table):
    for i, (raw, expected) in enumerate(EMPLOYMENT.items()):
        value = table.frame.loc[i, "employment_length"]
        if expected is None:
            assert pd.isna(value), raw
        else:
            assert value == expected, raw
    assert table.frame["employment_length"].dropna().between(0, 10).all()


def test_home_ownership_values(table):
    assert table.frame.loc[: len(HOMES) - 1, "home_ownership"].tolist() == HOMES


def test_purpose_korean_to_english(table):
    assert table.frame.loc[: len(PURPOSES) - 1, "purpose"].tolist() == list(PURPOSES.values())
    assert set(table.frame["purpose"]) <= set(PURPOSES.values())


def test_english_purpose_values_accepted(tmp_path):
    frame = quirky_frame()
    frame["대출목적"] = frame["대출목적"].map(PURPOSES)
    clean = read_table(write_table(tmp_path, frame=frame)).frame["purpose"]
    assert clean.tolist() == frame["대출목적"].tolist()


def test_grades_and_label_maps(table):
    spec = load_spec()
    assert table.labels.loc[list(GRADE_ROWS)].tolist() == GRADES
    assert spec.label2int == {g: i for i, g in enumerate("ABCDEFG")}
    assert spec.int2label == {i: g for i, g in enumerate("ABCDEFG")}


def test_odd_but_real_values_pass(table):
    assert table.frame.loc[DTI_ROW, "debt_to_income"] == 9999
    assert table.frame.loc[INCOME_ROW, "annual_income"] == 0


def test_wedding_maps_to_other_with_a_warning(tmp_path):
    frame = quirky_frame().drop(columns=["대출등급"])
    frame.loc[40, "대출목적"] = "결혼"
    path = write_table(tmp_path, "wedding.csv", frame=frame)
    with pytest.warns(DataWarning, match="wedding") as record:
        t = read_table(path)
    assert len([w for w in record if issubclass(w.category, DataWarning)]) == 1
    assert t.frame.loc[40, "purpose"] == "other"
    assert len(t.warnings) == 1 and "other" in t.warnings[0] and "대출목적" in t.warnings[0]
    assert not t.has_labels


def test_clean_table_gives_no_warning(variants):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_table(variants["utf-8"])
        read_table(variants["parquet"])
    assert [str(w.message) for w in caught] == []  # no DataWarning, no unclosed-file ResourceWarning


# --- derived features -------------------------------------------------------------------------------------------

def test_ratios(table):
    f = table.frame
    np.testing.assert_allclose(f["principal_ratio"], f["principal_repaid"] / f["loan_amount"].astype(float))
    np.testing.assert_allclose(f["interest_ratio"], f["interest_repaid"] / f["loan_amount"].astype(float))
    paid = f["principal_repaid"] > 0
    np.testing.assert_allclose(f.loc[paid, "interest_per_principal"],
                               f.loc[paid, "interest_repaid"] / f.loc[paid, "principal_repaid"])
    assert f.loc[~paid, "interest_per_principal"].isna().all()  # no principal repaid: no ratio


def test_implied_rate_nan_when_nothing_repaid(table):
    f = table.frame
    assert np.isnan(f.loc[UNPAID_ROW, "implied_rate"])
    assert np.isnan(f.loc[UNPAID_ROW, "interest_per_principal"])
    assert f.loc[UNPAID_ROW, "principal_ratio"] == 0
    repaid = f["principal_repaid"] > 0
    assert f.loc[repaid, "implied_rate"].between(0.02, 0.40).all()
    assert f.loc[~repaid, "implied_rate"].isna().all()


def test_implied_rate_of_a_known_loan_read_from_a_csv(tmp_path):
    # 12,000,000 over 36 months at 12%, three payments made (the schedule is tested in tests/test_features.py),
    # through a CSV with the repaid sums rounded to whole won as the real file has them
    principal = principal_repaid(12_000_000, 36, 0.01, 3)
    interest = 3 * monthly_payment(12_000_000, 36, 0.01) - principal
    frame = quirky_frame()
    frame.loc[0, ["대출금액", "대출기간", "총상환원금", "총상환이자"]] = [
        "12000000", " 36 months", f"{principal:.0f}", f"{interest:.1f}"]
    t = read_table(write_table(tmp_path, frame=frame))
    assert t.frame.loc[0, "implied_rate"] == pytest.approx(0.12, abs=5e-4)
    assert t.frame.loc[0, "payments_made"] == pytest.approx(3, abs=0.01)  # three payments made


# --- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_sentence(tmp_path, case):
    path, expected = write_bad(tmp_path, case)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(DataError) as info:
        read_table(path)
    message = str(info.value)
    for piece in expected:
        assert piece in message, (piece, message)
    assert "\n" not in message and message.endswith(".")
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_missing_columns_lists_all_in_one_message(tmp_path):
    frame = quirky_frame().drop(columns=["대출금액", "근로기간", "연체계좌수"])
    with pytest.raises(DataError, match="missing required columns") as info:
        read_table(write_table(tmp_path, frame=frame))
    for header in ["대출금액 (loan_amount)", "근로기간 (employment_length)", "연체계좌수 (delinquent_accounts)"]:
        assert header in str(info.value)


def test_line_number_counts_the_header_as_line_one(tmp_path):
    for row in (0, 1, 37, ROWS - 1):
        frame = quirky_frame()
        frame.loc[row, "대출기간"] = " 48 months"
        path = write_table(tmp_path, f"row{row}.csv", frame=frame)
        lines = path.read_text("utf-8").splitlines()
        line = next(n for n, text in enumerate(lines, start=1) if " 48 months" in text)  # header is line 1
        assert line == row + 2
        with pytest.raises(DataError, match=rf"row{row}\.csv, line {line}, column 대출기간: ' 48 months'"):
            read_table(path)


def test_line_numbers_in_cp949_and_bom_files(tmp_path):
    frame = quirky_frame()
    frame.loc[5, "대출금액"] = "abc"
    for encoding in ("utf-8-sig", "cp949"):
        with pytest.raises(DataError, match=r"line 7, column 대출금액: 'abc'"):
            read_table(write_table(tmp_path, f"{encoding}.csv", frame=frame, encoding=encoding))


def test_parquet_errors_name_the_row(tmp_path):
    frame = quirky_frame()
    frame.loc[5, "대출등급"] = "Z"
    with pytest.raises(DataError, match=r"bad\.parquet, row 6, column 대출등급: 'Z'"):
        read_table(write_table(tmp_path, "bad.parquet", frame=frame, encoding="parquet"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="broken.parquet could not be read as Parquet"):
        read_table(broken)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path)


def test_more_bad_rows_are_counted(tmp_path):
    frame = quirky_frame()
    frame.loc[[3, 8, 9], "대출기간"] = " 48 months"
    with pytest.raises(DataError, match=r"line 5, .*\(2 more rows like it\)"):
        read_table(write_table(tmp_path, frame=frame))


# --- split ---------------------------------------------------------------------------------------------------

def test_split_is_deterministic_and_falls_back_when_a_grade_is_too_rare(table):
    # the 60-row fixture holds one F and one G: too few to stratify, so the split is a plain random one
    train, valid, _ = split(table, valid_fraction=0.25, seed=3)
    again, _, _ = split(table, valid_fraction=0.25, seed=3)
    other, _, _ = split(table, valid_fraction=0.25, seed=4)
    assert len(train) + len(valid) == len(table) and len(valid) == 15
    assert set(train.ids).isdisjoint(valid.ids)
    assert train.ids.tolist() == again.ids.tolist() != other.ids.tolist()


def test_split_keeps_each_grades_share():
    table = synthetic_table(2000, seed=0)
    _, valid, _ = split(table, valid_fraction=0.25, seed=3)
    whole, held = table.labels.value_counts(), valid.labels.value_counts()
    for grade, count in whole.items():  # stratified: each grade's held-out count is a quarter of it, to a row
        assert abs(held.get(grade, 0) - count / 4) <= 1, grade



@pytest.mark.parametrize("rows,grades,fraction", [(1, "A", 0.2), (3, "ABC", 0.2), (20, "ABCDEFG", 0.2),
                                                  (60, "ABCDEFG", 0.05)])
def test_split_refuses_a_table_too_small_for_a_row_of_each_label_in_each_part(rows, grades, fraction):
    table = synthetic_table(200, seed=0)
    labels = [grades[i % len(grades)] for i in range(rows)]
    small = table.subset(table.frame.index[:rows])
    small.frame[small.spec.label.alias] = labels
    with pytest.raises(DataError) as info:
        split(small, valid_fraction=fraction, seed=0)
    message = str(info.value)
    assert f"{rows} labelled row" in message and f"{len(grades)} label" in message, message
    assert "cannot hold a row of each label" in message and "\n" not in message


def test_split_takes_the_smallest_table_it_allows():
    table = synthetic_table(200, seed=0)
    three = table.subset(table.frame.index[:11])
    three.frame[three.spec.label.alias] = list("ABCABCABCAB")
    train, valid, _ = split(three, valid_fraction=0.2, seed=0)  # 11 rows: 8 / 3, a row of each label in both
    assert (len(train), len(valid)) == (8, 3)
    assert set(train.labels) == set(valid.labels) == set("ABC")
    with pytest.raises(DataError, match="needs at least 11 rows"):
        split(three.subset(three.frame.index[:10]), valid_fraction=0.2, seed=0)


def test_a_test_part_keeps_the_validation_rows_and_takes_its_rows_from_the_rest():
    table = synthetic_table(2000, seed=0)
    two = split(table, valid_fraction=0.2, seed=3)
    three = split(table, valid_fraction=0.2, seed=3, test_fraction=0.1)
    # the validation rows (where choices were made before a test part existed) are the same rows either way
    assert three.valid.ids.tolist() == two.valid.ids.tolist() and two.test is None
    parts = [set(three.train.ids), set(three.valid.ids), set(three.test.ids)]
    assert sum(map(len, parts)) == len(table) and set.union(*parts) == set(table.ids)
    assert parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2]) and parts[0].isdisjoint(parts[1])
    assert set(three.test.ids) <= set(two.train.ids)
    assert (len(three.train), len(three.valid), len(three.test)) == (1400, 400, 200)
    whole, test = table.labels.value_counts(), three.test.labels.value_counts()
    for grade, count in whole.items():  # stratified: each grade's test count is a tenth of it, to a row
        assert abs(test.get(grade, 0) - count / 10) <= 1, grade
    # the figures are reported on the test rows; a two-way split reports on its validation rows
    assert three.held_out.ids.tolist() == three.test.ids.tolist()
    assert two.held_out.ids.tolist() == two.valid.ids.tolist()
    assert split(table, 0.2, 3, 0.1).test.ids.tolist() == three.test.ids.tolist()  # the same seed, the same rows


def test_a_test_part_too_large_or_too_small_is_one_sentence():
    table = synthetic_table(200, seed=0)
    with pytest.raises(DataError, match=r"valid fraction 0.5 \+ test fraction 0.5 leave no rows") as info:
        split(table, valid_fraction=0.5, test_fraction=0.5)
    assert "\n" not in str(info.value)
    small = table.subset(table.frame.index[:14])
    small.frame[small.spec.label.alias] = list("ABCABCABCABCAB")
    with pytest.raises(DataError, match="no test rows \\(data.test_fraction=0") as info:
        split(small, valid_fraction=0.25, test_fraction=0.05)
    assert "validation rows cannot be split" in str(info.value) and "\n" not in str(info.value)


# --- encodings and headers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding,name", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"),
                                           ("utf-32", "UTF-32")])
def test_a_utf16_or_utf32_file_is_named(tmp_path, encoding, name):
    path = write_table(tmp_path, "wide.csv", encoding=encoding)  # Excel's "Unicode text" is UTF-16
    with pytest.raises(DataError, match=rf"wide\.csv is {name} text; .*save it as UTF-8"):
        read_table(path)


@pytest.mark.parametrize("header", ["대출기간", "ID", "대출등급"])
def test_a_repeated_header_is_refused_naming_it(tmp_path, header):
    frame = quirky_frame()
    text = frame.to_csv(index=False, lineterminator="\n")
    lines = text.splitlines()
    at = lines[0].split(",").index(header) + 1
    repeated = [f"{line},{line.split(',')[at - 1]}" if i else f"{line},{header}" for i, line in enumerate(lines)]
    path = tmp_path / "twice.csv"
    path.write_text("\n".join(repeated) + "\n", "utf-8")
    with pytest.raises(DataError, match=rf"twice\.csv: the header '{header}' appears twice \(columns {at} and "
                                        rf"{len(frame.columns) + 1}\)"):
        read_table(path)


def test_a_column_given_twice_under_its_two_names_is_refused(tmp_path):
    frame = quirky_frame()
    frame["term"] = frame["대출기간"]  # the Korean header and the English alias: which one is meant?
    with pytest.raises(DataError, match=r"'대출기간', 'term' are all 대출기간 \(term\); keep one"):
        read_table(write_table(tmp_path, frame=frame))
    frame = quirky_frame().rename(columns={"대출기간": "Term"})
    frame["term"] = " 36 months"
    with pytest.raises(DataError, match=r"'Term', 'term' are all"):
        read_table(write_table(tmp_path, "cased.csv", frame=frame))


def test_duplicate_ids_finds_the_first_repeat():
    from korllama.data import duplicate_ids

    assert duplicate_ids(["a", "b", "c"]) is None
    assert duplicate_ids([]) is None
    assert duplicate_ids(["a", "b", "b", "a"]) == (1, 2)  # the first row that repeats an earlier one
    assert duplicate_ids(["x", "a", "y", "a", "a"]) == (1, 3)
    assert duplicate_ids([None, "a", None]) is None  # a missing ID is no one's twin


@pytest.mark.parametrize("rows", [[7], list(range(ROWS))])
def test_a_row_with_more_cells_than_the_header_names_its_line(tmp_path, rows):
    lines = quirky_frame().to_csv(index=False, lineterminator="\n").splitlines()
    for r in rows:  # one row, or every row (pandas would take the first column for an index)
        lines[r + 1] += ",extra"
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DataError, match=rf"long\.csv, line {rows[0] + 2}: 16 cells, but the header names 15 columns"):
        read_table(path)


def test_blank_lines_do_not_shift_the_line_numbers(tmp_path):
    frame = quirky_frame()
    frame.loc[40, "대출기간"] = " 48 months"
    lines = frame.to_csv(index=False, lineterminator="\n").splitlines()
    lines[10:10] = ["", "   "]  # two blank lines before row 9: pandas skips them
    path = tmp_path / "gaps.csv"
    path.write_text("\n".join(lines) + "\n\n", "utf-8")
    line = next(n for n, text in enumerate(path.read_text("utf-8").splitlines(), start=1) if " 48 months" in text)
    assert line == 40 + 2 + 2
    with pytest.raises(DataError, match=rf"gaps\.csv, line {line}, column 대출기간: ' 48 months'"):
        read_table(path)
    lines = quirky_frame().to_csv(index=False, lineterminator="\n").splitlines()
    lines[10:10] = [""]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    assert len(read_table(path)) == ROWS  # a blank line is no row


def test_a_bad_byte_is_found_by_its_line(tmp_path):
    data = quirky_frame().to_csv(index=False, lineterminator="\n").encode("utf-8")
    at = data.index(b"\n", data.index(b"SYN_00020")) + 1  # the start of line 23 (row 21)
    path = tmp_path / "byte.csv"
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(DataError, match=r"byte\.csv is not text in UTF-8 or CP949 .*: line 23 holds byte 0xff"):
        read_table(path)


def test_a_header_separated_by_semicolons_over_comma_rows_is_named(tmp_path):
    lines = quirky_frame().to_csv(index=False, lineterminator="\n").splitlines()
    lines[0] = lines[0].replace(",", ";")
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DataError, match=r"mixed\.csv: the header is one column separated by ';'"):
        read_table(path)


def test_the_profile_gathered_chunk_by_chunk_equals_the_whole_tables(tmp_path):
    """`korllama data check` streams (memory follows a chunk, not the file) and prints the same figures."""
    from korllama.data import TableChunks, profile, read_table
    from korllama.data.table import Profile
    from korllama.synth import synthesize

    path = tmp_path / "t.csv"
    synthesize(700, seed=5).to_csv(path, index=False)
    whole = profile(read_table(path))
    stream = TableChunks(path, chunk_rows=64)
    gathered = Profile(stream.spec)
    checked = stream.check(each=gathered.add)
    assert gathered.rows == 700 and checked.rows == 700
    assert gathered.result(stream.source, checked.warnings) == whole

"""Small fixture tables written by the tests themselves: every quirk of the real loan file, and every bad case.

`quirky_frame()` is a synthetic table (korllama.synth) whose cells are overwritten so that it holds every raw
format the real file has: each employment string, each home-ownership value (ANY included), each Korean purpose,
every grade, a debt-to-income of 9999, an income of 0, a row with nothing repaid. `write_table` writes it as
utf-8, utf-8 with BOM, cp949 or Parquet, with Korean or English headers. `write_bad` writes one corrupted copy
per bad case, with the pieces its error message must contain. Row i of a frame is on line i + 2 of its CSV.

Also shared here, so that no test module imports another: the tiny training recipe (`run_config`, `make_run`,
`unlabelled_csv`) and two rows of the real test.csv with the prompts the original's README shows for them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd

from korllama.spec import load_spec
from korllama.synth import synthesize

ROWS = 60

# raw employment string -> clean value (None = missing)
EMPLOYMENT = {"10+ years": 10, "10+years": 10, "< 1 year": 0, "<1 year": 0, "1 year": 1, "1 years": 1, "3": 3,
              "7 years": 7, "Unknown": None}
HOMES = ["MORTGAGE", "RENT", "OWN", "ANY"]
PURPOSES = {"부채 통합": "debt consolidation", "신용 카드": "credit card", "주택 개선": "housing improvement",
            "기타": "other", "주요 구매": "major purchase", "의료": "medical", "자동차": "car",
            "소규모 사업": "small business", "이사": "moving", "휴가": "vacation", "주택": "house",
            "재생 에너지": "renewable energy"}
GRADES = list("ABCDEFG")
# Median implied annual rate per grade in ../shared/data/dacon-loan/train.csv (`korllama data check`), measured once
REAL_MEDIAN_RATE = {"A": 0.0675, "B": 0.0959, "C": 0.1265, "D": 0.1620, "E": 0.1827, "F": 0.2251, "G": 0.2650}
DTI_ROW, INCOME_ROW, UNPAID_ROW = 12, 13, 14  # 9999 debt-to-income, 0 income, nothing repaid
GRADE_ROWS = range(20, 27)  # A..G in order

ENGLISH = {c.name: c.alias for c in load_spec().columns} | {"ID": "id", "대출등급": "grade"}


def quirky_frame(rows: int = ROWS, seed: int = 1) -> pd.DataFrame:
    """A raw table (all cells strings, Korean headers) holding every quirk of the real file."""
    frame = synthesize(rows, seed=seed).astype(str)
    for i, raw in enumerate(EMPLOYMENT):
        frame.loc[i, "근로기간"] = raw
    for i, home in enumerate(HOMES):
        frame.loc[i, "주택소유상태"] = home
    for i, purpose in enumerate(PURPOSES):
        frame.loc[i, "대출목적"] = purpose
    frame.loc[0, "대출기간"], frame.loc[1, "대출기간"] = " 36 months", " 60 months"
    frame.loc[DTI_ROW, "부채_대비_소득_비율"] = "9999"
    frame.loc[INCOME_ROW, "연간소득"] = "0"
    frame.loc[UNPAID_ROW, ["총상환원금", "총상환이자"]] = ["0", "0.0"]
    for i, grade in zip(GRADE_ROWS, GRADES, strict=True):
        frame.loc[i, "대출등급"] = grade
    return frame


def write_table(folder: Path, name: str = "loan.csv", frame: pd.DataFrame | None = None,
                encoding: str = "utf-8", english: bool = False) -> Path:
    """Write `frame` (default: quirky_frame()) as CSV in `encoding`, or as Parquet when `encoding` is 'parquet'."""
    frame = quirky_frame() if frame is None else frame
    if english:
        frame = frame.rename(columns=ENGLISH)
    path = Path(folder) / name
    if encoding == "parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_bytes(frame.to_csv(index=False, lineterminator="\n").encode(encoding))
    return path


def write_variants(folder: Path) -> dict[str, Path]:
    """The same table in every form korllama must read: utf-8, utf-8-sig, cp949, Parquet, English headers."""
    return {
        "utf-8": write_table(folder, "utf8.csv"),
        "utf-8-sig": write_table(folder, "bom.csv", encoding="utf-8-sig"),
        "cp949": write_table(folder, "cp949.csv", encoding="cp949"),
        "parquet": write_table(folder, "table.parquet", encoding="parquet"),
        "english": write_table(folder, "english.csv", english=True),
    }


def _with(row: int, column: str, value: str):
    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[row, column] = value
        return frame
    return corrupt


def _duplicate_id(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[9, "ID"] = frame.loc[2, "ID"]
    return frame


# case -> (how to corrupt the frame, pieces the error message must contain). Line of row i = i + 2.
FRAME_CASES = {
    "missing_columns": (lambda f: f.drop(columns=["대출기간", "총상환이자", "대출목적"]),
                        ["missing_columns.csv", "대출기간 (term)", "총상환이자 (interest_repaid)",
                         "대출목적 (purpose)"]),
    "bad_term": (_with(7, "대출기간", " 48 months"), ["bad_term.csv", "line 9", "대출기간", "' 48 months'", "36, 60"]),
    "not_a_number": (_with(4, "대출금액", "abc"), ["not_a_number.csv", "line 6", "대출금액", "'abc'", "whole number"]),
    "negative_amount": (_with(10, "총상환원금", "-12"),
                        ["negative_amount.csv", "line 12", "총상환원금", "'-12'", ">= 0"]),
    "negative_loan": (_with(30, "대출금액", "-1200000"),
                      ["negative_loan.csv", "line 32", "대출금액", "'-1200000'", ">= 0"]),
    "bad_grade": (_with(3, "대출등급", "H"), ["bad_grade.csv", "line 5", "대출등급", "'H'", "A, B, C, D, E, F, G"]),
    "bad_employment": (_with(15, "근로기간", "ten years"),
                       ["bad_employment.csv", "line 17", "근로기간", "'ten years'", "10+ years"]),
    "bad_home": (_with(16, "주택소유상태", "CONDO"),
                 ["bad_home.csv", "line 18", "주택소유상태", "'CONDO'", "MORTGAGE, RENT, OWN, ANY"]),
    "bad_purpose": (_with(17, "대출목적", "여행"), ["bad_purpose.csv", "line 19", "대출목적", "'여행'", "부채 통합"]),
    "empty_required": (_with(18, "총계좌수", ""), ["empty_required.csv", "line 20", "총계좌수", "''"]),
    "duplicate_id": (_duplicate_id,
                     ["duplicate_id.csv", "line 11", "ID", "SYN_00002", "line 4", "unique"]),
}

# case -> (raw bytes of the file, pieces the error message must contain)
def _byte_cases(frame: pd.DataFrame) -> dict[str, tuple[bytes, list[str]]]:
    text = frame.to_csv(index=False, lineterminator="\n")
    header = text.splitlines()[0] + "\n"
    return {
        "empty": (b"", ["empty.csv", "empty"]),
        "blank_lines": (b"\n\n  \n", ["blank_lines.csv", "empty"]),
        "header_only": (header.encode(), ["header_only.csv", "header but no rows"]),
        "semicolon": (text.replace(",", ";").encode(), ["semicolon.csv", "';'", "comma"]),
        "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, ["binary.csv", "not a text file"]),
        "not_utf8": (header.encode() + b"\x80\xff\xfe\x80,\xff\n", ["not_utf8.csv", "UTF-8 or CP949"]),
    }


BYTE_CASES = list(_byte_cases(pd.DataFrame({"a": [1]})))
BAD_CASES = [*FRAME_CASES, *BYTE_CASES]


def write_bad(folder: Path, case: str) -> tuple[Path, list[str]]:
    """Write the fixture corrupted for `case` as `<case>.csv`; return its path and the message's expected pieces."""
    frame = quirky_frame()
    path = Path(folder) / f"{case}.csv"
    if case in FRAME_CASES:
        corrupt, expected = FRAME_CASES[case]
        path.write_text(corrupt(frame).to_csv(index=False, lineterminator="\n"), "utf-8")
    else:
        data, expected = _byte_cases(frame)[case]
        path.write_bytes(data)
    return path, expected


# --- tiny training runs (test_train, test_predict, test_evaluate, test_serve, conftest's run_dir) ---------------

CLASSES = list("ABCDEFG")
FIELDS = ["term", "implied_rate", "principal_ratio"]  # short prompts: fast steps
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=384,
            max_position_embeddings=512)


def run_config(**overrides) -> dict:
    """A tiny, fast run as a YAML-ready dict; `overrides` replace whole sections' keys (train={...})."""
    config = {
        "name": "test",
        # two-way (no test rows), as before data.test_fraction: the many small runs built on this config keep the
        # rows and the weights their tests were written for; make_run's shared run has test rows
        "data": {"synth_rows": 200, "synth_seed": 0, "test_fraction": 0.0},
        "prompt": {"template": "compact", "fields": FIELDS},
        "model": {"base": "tiny", "device": "cpu", "tiny": dict(TINY)},
        "lora": None,
        "train": {"max_steps": 6, "batch_size": 16, "grad_accum": 1, "lr": 1e-2, "warmup_steps": 0,
                  "eval_steps": 3, "save_steps": 3, "save_total_limit": 1, "eval_rows": 20, "eval_batch_size": 32,
                  "logging_steps": 2, "max_length": 256},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    return config


RUN_ROWS = 200  # synthetic rows (seed 0) the tiny run trains on; its validation split is 20% of them


def make_run(run_dir: Path, test_fraction: float = 0.0) -> Path:
    """Full-weight training of a tiny random Llama on RUN_ROWS synthetic rows: 4 steps, one evaluation. Its split
    seed is not the default, so a test can tell the run's held-out rows from a default split's. `test_fraction`: the
    share kept aside as test rows (0: a two-way split, whose validation rows `--held-out` scores)."""
    from korllama.card import document_run
    from korllama.config import RunConfig
    from korllama.run import Run
    from korllama.training import train

    config = run_config(name="tiny", data={"synth_rows": RUN_ROWS, "split_seed": 3, "test_fraction": test_fraction},
                        train={"max_steps": 4, "eval_steps": 4, "save_steps": 4})
    train(RunConfig.model_validate(config), run_dir)
    document_run(Run.load(run_dir), on_error="raise")  # as `korllama train` does: the curve and the card
    return run_dir


def unlabelled_csv(path: Path, rows: int = 25, seed: int = 3) -> Path:
    """A test.csv look-alike: the real headers without 대출등급, IDs TEST_xxxxx in a shuffled (non-sorted) order."""
    frame = synthesize(rows, seed=seed).drop(columns=["대출등급"])
    order = np.random.default_rng(seed).permutation(rows)
    frame["ID"] = [f"TEST_{i:05d}" for i in order]
    frame.to_csv(path, index=False, encoding="utf-8")
    return path


# --- rows of the real test.csv and the prompts the original's README shows for them (test_prompts, test_cli) ---

HEADER = ("ID,대출금액,대출기간,근로기간,주택소유상태,연간소득,부채_대비_소득_비율,총계좌수,대출목적,"
          "최근_2년간_연체_횟수,총상환원금,총상환이자,총연체금액,연체계좌수")
TEST_00000 = "TEST_00000,16800000, 36 months,8 years,MORTGAGE,132000000,19.64,12,주택 개선,0,394692,146604.0,0.0,0.0"
TEST_00010 = "TEST_00010,16800000, 60 months,10+ years,MORTGAGE,82680000,21.96,27,부채 통합,0,199284,159924.0,0.0,0.0"

# The original Kor_llama README, "before tuning", second example (the prompt up to '###Credit Rating :').
README_TEST_00000 = """\
you are financial speciallist. And you will see ###condition of one person. and judge his/her Credit rating
response about ###instruction 

###Condition
he/she owe $ 16800000 , take out a loan during 36 months. 
He/she works for 8 years. Status of home ownership is MORTGAGE
His/her annual income was about 132000000. His/her total debt/income ratio was 19.640000 
He/she have total 12 accounts, and he/she take out a loan for housing improvement.
He/she overdue of interest 0 times over last 2 year.
His/Her total redemption principal $ 394692. His/Her total interst pay $ 146604.000000 
His/Her total overdue payment $ 0.000000. He/She have 0.000000 overdue account for total 

###instruction: with those conditions, Guess His Credit Rating in one of A,B,C,D,E,F,G 


###Credit Rating :"""


# The same README, "before tuning", first example.
README_EXAMPLE_1 = """\
you are financial speciallist. And you will see ###condition of one person. and judge his/her Credit rating
response about ###instruction 

###Condition
he/she owe $ 16800000 , take out a loan during 60 months. 
He/she works for 10 years. Status of home ownership is MORTGAGE
His/her annual income was about 82680000. His/her total debt/income ratio was 21.960000 
He/she have total 27 accounts, and he/she take out a loan for debt consolidation.
He/she overdue of interest 0 times over last 2 year.
His/Her total redemption principal $ 199284. His/Her total interst pay $ 159924.000000 
His/Her total overdue payment $ 0.000000. He/She have 0.000000 overdue account for total 

###instruction: with those conditions, Guess His Credit Rating in one of A,B,C,D,E,F,G 


###Credit Rating :"""


def strip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


# --- the pretrained base's tests (tests/test_bases.py, the `smollm2` fixture in conftest.py) --------------------------

def loan_prompts(rows: int = 8, template: str = "compact", seed: int = 3) -> tuple[list[str], list[str]]:
    from korllama.prompts import render
    from korllama.synth import synthetic_table

    table = synthetic_table(40, seed=seed).sample(rows, seed=seed)
    return render(table, template, ["term", "payments_made", "implied_rate"]), list(table.labels)


def logits(model, tokenizer, prompts: list[str]) -> list:
    import torch

    with torch.no_grad():
        return [model(**tokenizer(p, return_tensors="pt")).logits[0] for p in prompts]


def free_port() -> int:
    """A free TCP port on the loopback address (a service under test, accelerate's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a korllama subprocess in tests: one thread each (the machine has two cores), no hub,
    unbuffered output, lines wide enough not to wrap; `extra` on top."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                COLUMNS="200", **extra)


# --- a hostile spec: script in every string a spec gives the service's pages (tests/test_serve_hostile.py) ----------

XSS = "<img src=x onerror=\"document.title='pwned';window.pwned=1;alert(1)\">"  # runs wherever markup is not inert
XSS_SVG = "<svg onload=\"window.pwned=2\">"
XSS_LINK = "[click](javascript:window.pwned=3)"


def make_hostile_run(folder: Path) -> Path:
    """The hiring example with script payloads in its description, a header, a column description, category values
    (raw and clean), the label's name and its classes, the ID's header: 2 tiny training steps and its model card."""
    import yaml

    from korllama.card import document_run
    from korllama.config import RunConfig
    from korllama.run import Run
    from korllama.training import train

    hiring = Path(__file__).resolve().parents[1] / "examples" / "hiring"
    spec = yaml.safe_load((hiring / "spec.yaml").read_text("utf-8"))
    classes = {"우수": f"우수{XSS}", "보통": "보통", "미흡": f"미흡{XSS_SVG}"}
    spec["description"] = f"hostile {XSS} {XSS_LINK}"
    spec["id"]["name"] = f"지원번호{XSS_SVG}"
    spec["label"] |= {"name": f"평가{XSS}", "classes": list(classes.values())}
    headers = {"학력": f"학력{XSS}"}
    values = {"고졸": f"고졸{XSS}"}
    for col in spec["columns"]:
        col["text"] = f"{col.get('text', '')} {XSS} {XSS_LINK}"
        if col["name"] == "학력":
            col["values"] = {values.get(k, k): (f"high school {XSS_SVG}" if k == "고졸" else v)
                             for k, v in col["values"].items()}
        col["name"] = headers.get(col["name"], col["name"])
    spec.pop("templates")
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), "utf-8")
    frame = pd.read_csv(hiring / "hiring.csv", dtype=str, keep_default_na=False)
    frame["학력"] = frame["학력"].replace(values)
    frame["평가"] = frame["평가"].map(classes)
    frame = frame.rename(columns=headers | {"지원번호": spec["id"]["name"], "평가": spec["label"]["name"]})
    frame.to_csv(folder / "data.csv", index=False)
    config = run_config(name="hostile", data={"train": str(folder / "data.csv"), "spec": str(folder / "spec.yaml")},
                        prompt={"template": "compact", "fields": ["written", "interview", "education"]},
                        train={"max_steps": 2, "eval_steps": 2, "save_steps": 2})
    train(RunConfig.model_validate(config), folder / "run")
    document_run(Run.load(folder / "run"), on_error="raise")
    return folder / "run"

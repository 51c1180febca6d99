"""Make examples/hiring/hiring.csv: 2,400 job applications (Korean headers) graded 우수 / 보통 / 미흡 by a rubric.

The rubric (also written in spec.yaml, as the derived feature `rubric_score`):

    종합점수 = 0.45 x 필기점수 + 0.45 x 면접점수 + 2 x 자격증수        (0..100)
    우수 (excellent) from 75, 보통 (fair) from 55, 미흡 (poor) below

Experience, education and the field applied for are in the table too, but do not enter the grade: a model that
learned the rubric ignores them (`korllama explain` shows it). Same seed, same file:

    python examples/hiring/make_table.py --rows 2400 --seed 0 --out examples/hiring/hiring.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

EDUCATION = ["고졸", "전문학사", "학사", "석사", "박사"]
FIELDS = ["개발", "디자인", "영업", "인사", "재무"]


def grade(written: np.ndarray, interview: np.ndarray, certificates: np.ndarray) -> np.ndarray:
    score = 0.45 * written + 0.45 * interview + 2 * certificates
    return np.where(score >= 75, "우수", np.where(score >= 55, "보통", "미흡"))


def make(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    written = np.clip(np.round(rng.normal(66, 14, rows)), 0, 100).astype(int)
    interview = np.clip(np.round(rng.normal(64, 16, rows)), 0, 100).astype(int)
    certificates = rng.integers(0, 6, rows)
    experience = np.clip(np.round(rng.gamma(2.0, 2.5, rows)), 0, 30).astype(int)
    study = np.round(rng.uniform(0, 40, rows), 1)
    return pd.DataFrame({
        "지원번호": [f"APP_{i:05d}" for i in range(rows)],
        "경력년수": experience,
        "학력": rng.choice(EDUCATION, rows, p=[0.15, 0.2, 0.45, 0.15, 0.05]),
        "지원분야": rng.choice(FIELDS, rows),
        "필기점수": written,
        "면접점수": interview,
        "자격증수": certificates,
        "주간학습시간": np.where(rng.random(rows) < 0.05, "", study.astype(str)),  # sometimes not answered
        "평가": grade(written, interview, certificates),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("hiring.csv"))
    args = parser.parse_args()
    frame = make(args.rows, args.seed)
    frame.to_csv(args.out, index=False, encoding="utf-8")
    print(f"wrote {args.out}: {len(frame):,} rows;", frame["평가"].value_counts().to_dict())

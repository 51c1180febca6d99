"""The choices of options (most shared by several commands), as enums: typer shows and checks them, and each value
is also the string the code and the output files use (StrEnum)."""

from enum import StrEnum


class Decision(StrEnum):
    """How a grade is chosen from the probabilities (`--decision`)."""

    ARGMAX = "argmax"  # the most probable label
    MACRO_F1 = "macro-f1"  # argmax(P x w): per-label weights fitted for macro-F1 (korllama.decision.DecisionRule)


class Mode(StrEnum):
    """How a system answers, which says what kind of system it is (metrics.json's `mode`): an LLM by rank scoring
    or by the original project's generation and parser (`evaluate --mode`), the tree baseline by its own
    probabilities."""

    SCORE = "score"
    GENERATE = "generate"
    TREES = "trees"


class MergeInto(StrEnum):
    """What `korllama export --merge-into` merges a 4-bit run's LoRA adapter into (korllama.export)."""

    DEQUANTIZED = "dequantized"  # the base's NF4 weights read back to float: the weights the adapter trained against
    ORIGINAL = "original"  # the base's full-precision weights: how peft and LLaMA-Factory merge a QLoRA adapter

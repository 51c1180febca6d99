"""Tests for korllama.config: YAML in and out, built-in names, `section.key=value` overrides, and every refusal is
one ConfigError sentence naming the key."""

from __future__ import annotations

import pytest
import yaml
from fixtures import run_config

from korllama.config import RunConfig, builtin_configs, config_to_yaml, load_config
from korllama.errors import ConfigError


def write_config(path, config: dict):
    path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    return path


def test_defaults_builtin_names_and_files_agree(tmp_path):
    assert {"demo", "seed", "dacon-tiny"} <= set(builtin_configs())
    demo = load_config("demo")
    assert demo.name == "demo"
    again = load_config(write_config(tmp_path / "c.yaml", yaml.safe_load(config_to_yaml(demo))))
    assert again == demo  # YAML out and in again: the same config
    assert load_config(None) == RunConfig()


def test_overrides_set_typed_values():
    config = load_config("demo", ["train.epochs=1", "model.tiny.num_hidden_layers=3", "train.lr=1e-3",
                                  "lora.target_modules=[q_proj,v_proj]", "data.train=some/file.csv"])
    assert config.train.epochs == 1 and config.model.tiny.num_hidden_layers == 3
    assert config.train.lr == pytest.approx(1e-3)  # YAML reads "1e-3" as a string: pydantic makes it a float
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert str(config.data.train) == "some/file.csv"


def test_lora_override_on_a_config_without_lora_switches_it_on():
    assert load_config("demo").lora is None  # demo trains all weights of the tiny model
    config = load_config("demo", ["lora.r=4"])
    assert config.lora is not None and config.lora.r == 4 and config.lora.alpha == 16  # the other keys: defaults


@pytest.mark.parametrize("value", [".inf", "-.inf", "nan", ".nan", "1e400"])
def test_non_finite_numbers_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"train\.lr: .*finite") as info:
        load_config("demo", [f"train.lr={value}"])
    assert "\n" not in str(info.value)


def test_non_finite_number_in_a_yaml_file_is_refused(tmp_path):
    path = write_config(tmp_path / "c.yaml", run_config(train={"weight_decay": float("nan")}))
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.weight_decay: .*finite"):
        load_config(path)


def test_an_override_that_is_not_yaml_is_one_sentence():
    with pytest.raises(ConfigError, match=r"Override 'train\.lr=\[': '\[' is not a value") as info:
        load_config("demo", ["train.lr=["])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override,pieces", [
    ("train.lr", ["train.lr", "section.key=value"]),
    ("=3", ["'=3'", "section.key=value"]),
    ("train.epochs.x=1", ["'epochs' is a setting, not a section"]),
    ("nosuch.x=1", ["unknown key 'nosuch'"]),
    ("train.learning_rate=1", ["learning_rate"]),
    ("train.epochs=0", ["train.epochs", "greater than 0"]),
    ("data.valid_fraction=1", ["data.valid_fraction", "less than 1"]),
])
def test_bad_overrides_name_the_key(override, pieces):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    for piece in pieces:
        assert piece in str(info.value), (piece, str(info.value))


def test_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match=r"model\.tiny: hidden_size 130 must be a multiple of "
                                          r"num_attention_heads 4"):
        load_config("demo", ["model.tiny.hidden_size=130"])
    assert load_config("demo", ["model.tiny.hidden_size=132"]).model.tiny.hidden_size == 132


def test_vocabulary_without_room_for_merges_is_refused():
    with pytest.raises(ConfigError, match="vocab_size"):
        load_config("demo", ["model.tiny.vocab_size=256"])


def test_an_unknown_key_in_the_yaml_is_named(tmp_path):
    config = run_config(train={"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(write_config(tmp_path / "c.yaml", config))


@pytest.mark.parametrize("text,piece", [("train: [1, 2\n", "is not valid YAML"),
                                        ("- a\n- b\n", "must be a mapping of sections")])
def test_a_broken_yaml_file_is_one_sentence(tmp_path, text, piece):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=piece):
        load_config(path)


def test_a_missing_config_lists_the_built_in_names(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist \(built-in configs: .*demo"):
        load_config(tmp_path / "nope.yaml")


def test_smollm2_ships_the_measured_lora_recipe_and_keeps_the_originals_beside_it():
    # benchmarks/RESULTS.md section 12: every linear layer of the blocks, r 16, a larger lr, beat the original's LoRA
    # (q_proj + v_proj, r 8, lr 1e-3) on the same rows; the original stays as a config to compare with.
    from korllama.demo import PretrainedStage

    shipped, original = load_config("smollm2-lora"), load_config("smollm2-lora-seed")
    assert original.lora.target_modules == ["q_proj", "v_proj"]
    assert (original.lora.r, original.lora.alpha, original.lora.dropout) == (8, 16, 0.1)
    assert original.train.lr == pytest.approx(1e-3) and original.train.scheduler == "cosine"
    assert shipped.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert shipped.lora.r == 16 and shipped.lora.alpha == 2 * shipped.lora.r
    assert shipped.train.lr > original.train.lr
    # nothing else differs: the same base, prompt, data, batch and budget, so the two are a fair comparison
    same = {"name", "lora", "train"}
    assert {k: v for k, v in shipped.model_dump().items() if k not in same} == \
        {k: v for k, v in original.model_dump().items() if k not in same}
    recipe = {"lr", "scheduler", "warmup_steps"}
    assert {k: v for k, v in shipped.train.model_dump().items() if k not in recipe} == \
        {k: v for k, v in original.train.model_dump().items() if k not in recipe}
    stage = PretrainedStage()  # the demo's SmolLM2 stage trains the shipped recipe at the shipped lr
    assert stage.config == "smollm2-lora" and stage.lr == pytest.approx(shipped.train.lr)


def test_a_runs_saved_config_without_a_test_fraction_keeps_its_two_way_split(tmp_path):
    # runs made before data.test_fraction existed wrote every other setting: they split two ways, and must still
    saved = yaml.safe_load(config_to_yaml(RunConfig()))
    del saved["data"]["test_fraction"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved), "utf-8")
    assert load_config(path, saved=True).data.test_fraction == 0
    assert load_config(path).data.test_fraction == 0.1  # a user's config without the key: the default


def test_the_validation_and_test_shares_must_leave_rows_to_train_on():
    with pytest.raises(ConfigError, match="valid_fraction 0.6 \\+ test_fraction 0.4 must be under 1"):
        load_config(None, ["data.valid_fraction=0.6", "data.test_fraction=0.4"])


def test_distinct_prompts_with_a_head_need_one_batch_a_step():
    # the head's weighted per-batch mean is averaged over accumulated batches: not the table's loss, so refused
    with pytest.raises(ConfigError, match="needs train.grad_accum 1 \\(it is 4\\)"):
        load_config(None, ["train.distinct_prompts=true", "model.head=classifier", "train.grad_accum=4"])
    assert load_config(None, ["train.distinct_prompts=true", "model.head=classifier", "train.grad_accum=1"])
    assert load_config(None, ["train.distinct_prompts=true", "train.grad_accum=4"])  # rank scoring's loss is exact

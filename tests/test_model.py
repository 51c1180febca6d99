"""Tests for korllama.model: the meta-device lora-info line, the embedded tiny Llama, loading, LoRA, errors."""

import json

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file

from korllama.config import LoraSettings, ModelConfig, TinyModelConfig, load_config
from korllama.errors import ConfigError, KorllamaError
from korllama.model import (
    _force_single_tokens,
    build_tiny,
    format_parameter_report,
    load_base,
    parameter_report,
    skeleton,
    wrap_lora,
)
from korllama.prompts import answer, render
from korllama.synth import synthetic_table

LABELS = list("ABCDEFG")
TINY = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       vocab_size=512, max_position_embeddings=512)


@pytest.fixture(scope="module")
def prompts():
    return render(synthetic_table(200, seed=0), "compact")


@pytest.fixture(scope="module")
def tiny_dir(prompts, tmp_path_factory):
    return build_tiny(prompts, tmp_path_factory.mktemp("tiny"), TINY, seed=0, labels=LABELS)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_base(ModelConfig(device="cpu"), str(tiny_dir), for_training=True)


# --- lora-info on the meta skeleton ------------------------------------------------------------------------------

def test_lora_info_line_for_llama_2_ko_7b_matches_the_original_project():
    model = wrap_lora(skeleton("llama-2-ko-7b"), LoraSettings())
    assert format_parameter_report(*parameter_report(model)) == \
        "Trainable: 4194304 | total: 6860050432 | Percentage: 0.0611%"
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated


def test_skeleton_reads_a_config_json_folder(tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
              "num_attention_heads": 4, "vocab_size": 1000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = skeleton(str(tmp_path))
    assert model.config.num_hidden_layers == 3
    assert model.get_input_embeddings().weight.shape == (1000, 64)
    assert model.get_input_embeddings().weight.device.type == "meta"


def test_skeleton_rejects_an_unknown_architecture(tmp_path):
    with pytest.raises(ConfigError, match="llama-2-ko-7b"):
        skeleton(str(tmp_path / "nope.json"))


def test_format_parameter_report():
    assert format_parameter_report(1, 3) == "Trainable: 1 | total: 3 | Percentage: 33.3333%"


# --- the embedded tiny model -------------------------------------------------------------------------------------

def test_tiny_folder_holds_safetensors_weights_and_tokenizer(tiny_dir, tiny):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    model, tokenizer = tiny
    assert model.config.vocab_size == len(tokenizer) <= TINY.vocab_size
    assert model.config.hidden_size == TINY.hidden_size and model.config.num_hidden_layers == TINY.num_hidden_layers


def test_every_label_is_one_token_after_the_prompt(prompts, tiny):
    _, tokenizer = tiny
    prompt_ids = tokenizer(prompts[0])["input_ids"]
    label_ids = []
    for label in LABELS:
        ids = tokenizer(prompts[0] + answer(label))["input_ids"]
        assert ids[:-1] == prompt_ids, f"answer {label} changed the prompt's tokens"
        label_ids.append(ids[-1])
        assert tokenizer.decode([ids[-1]]) == answer(label)
    assert len(set(label_ids)) == len(LABELS)


def test_digits_are_one_token_each_and_text_round_trips(prompts, tiny):
    _, tokenizer = tiny
    tokens = tokenizer.tokenize("loan_amount: 19200000")
    assert tokens[-8:] == list("19200000")
    ids = tokenizer(prompts[1])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompts[1]


@pytest.mark.parametrize("name", ["demo", "dacon-tiny"])
def test_shipped_configs_tokenizer_merges_field_names(prompts, tmp_path, name):
    # A vocabulary of only the 256 bytes learns no merges: every byte of a prompt becomes a token (twice the tokens
    # per row, twice the training and scoring time). The shipped configs must leave room for merges.
    config = load_config(name)
    folder = build_tiny(prompts, tmp_path, config.model.tiny, labels=LABELS)
    _, tokenizer = load_base(ModelConfig(device="cpu"), str(folder))
    line = "term: 36\n"
    tokens = tokenizer.tokenize(line)
    if config.model.tiny.numbers == "digits":
        assert tokens[0] == "term"
    else:  # whole numbers: the text between numbers is one piece, merged as BPE likes; the number is one token
        assert "36" in tokens and len(tokens) <= 5
    assert len(tokenizer(prompts[0])["input_ids"]) < len(prompts[0].encode()) / 2


def test_the_tokenizer_pads_on_the_left_as_korllama_does(prompts, tiny):
    """The tokenizer says left, as korllama's own batches are (a row's answer ends in the last column): padded by the
    tokenizer and given positions that count from the first real token, a row's last logits are its own."""
    model, tokenizer = tiny
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id != tokenizer.eos_token_id
    short = min(prompts[:5], key=len)
    batch = tokenizer([short, short + " 123 extra words"], return_tensors="pt", padding=True)
    alone = tokenizer([short], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    assert n < batch["input_ids"].shape[1] and not batch["attention_mask"][0, :-n].any()  # padded at the start
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(**batch, position_ids=positions).logits
        single = model(**alone).logits
    torch.testing.assert_close(padded[0, -n:], single[0], atol=1e-5, rtol=1e-4)  # the padding changed nothing
    assert torch.isfinite(padded).all()


def test_same_seed_same_weights_other_seed_other_weights(prompts, tiny_dir, tmp_path):
    again = load_file(build_tiny(prompts, tmp_path / "a", TINY, seed=0, labels=LABELS) / "model.safetensors")
    other = load_file(build_tiny(prompts, tmp_path / "b", TINY, seed=1, labels=LABELS) / "model.safetensors")
    first = load_file(tiny_dir / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_force_single_tokens_adds_a_piece_the_bpe_never_saw():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(["grade: x\nAnt Bob"] * 5, trainer=trainer)
    assert bpe.encode(" G").tokens == ["Ġ", "G"]  # never seen: two tokens
    assert bpe.encode(" Gx").tokens == ["Ġ", "G", "x"]
    forced = _force_single_tokens(bpe, [" G", " Gx"])
    assert forced.encode(" G").tokens == ["ĠG"] and forced.encode(" Gx").tokens == ["ĠGx"]
    assert forced.encode("grade: Ant").tokens == bpe.encode("grade: Ant").tokens  # learnt merges unchanged


# --- LoRA on the tiny model --------------------------------------------------------------------------------------

def test_wrap_lora_trains_only_the_adapters(tiny_dir):
    model, _ = load_base(ModelConfig(device="cpu"), str(tiny_dir))
    peft_model = wrap_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}  # PEFT's Llama default
    n_trainable, total = parameter_report(peft_model)
    # q_proj and v_proj are 32 -> 32 here: each adapter is r x (in + out)
    assert n_trainable == TINY.num_hidden_layers * 2 * 4 * (32 + 32)
    assert 0 < n_trainable < total
    assert format_parameter_report(n_trainable, total).startswith(f"Trainable: {n_trainable} | total: {total} |")


def test_wrap_lora_with_an_unknown_target_module_is_a_config_error(tiny_dir):
    model, _ = load_base(ModelConfig(device="cpu"), str(tiny_dir), for_training=False)
    assert not model.training
    with pytest.raises(ConfigError, match="lora"):
        wrap_lora(model, LoraSettings(target_modules=["no_such_proj"]))


# --- loading errors ----------------------------------------------------------------------------------------------

def test_missing_local_path_is_a_korllama_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(KorllamaError, match="no-such-model"):
        load_base(ModelConfig(), str(missing))


def test_unreachable_hub_id_is_a_korllama_error_naming_it(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail fast
    with pytest.raises(KorllamaError, match="nobody/korllama-missing-model"):
        load_base(ModelConfig(), "nobody/korllama-missing-model")


def test_folder_without_config_is_a_korllama_error(tmp_path):
    with pytest.raises(KorllamaError, match="config.json"):
        load_base(ModelConfig(), str(tmp_path))


def test_load_in_4bit_works_on_the_cpu(tiny_dir):
    """bitsandbytes >= 0.50 quantises on the CPU: the linear layers of the blocks are 4-bit, and they score."""
    model, tokenizer = load_base(ModelConfig(load_in_4bit=True, device="cpu"), str(tiny_dir), for_training=False)
    quantised = [name for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantised and all(".layers." in name for name in quantised)  # embeddings and head stay full precision
    with torch.no_grad():
        assert torch.isfinite(model(**tokenizer("a prompt", return_tensors="pt")).logits).all()


def test_tiny_base_name_needs_a_built_folder():
    with pytest.raises(ConfigError, match="build_tiny"):
        load_base(ModelConfig(base="tiny"))


@pytest.mark.parametrize("labels", [["우수", "보통", "미흡"], ["low", "medium", "high"], ["H", "I"]])
def test_the_tiny_tokenizer_makes_the_specs_labels_single_tokens(prompts, tmp_path, labels):
    """Labels come from the spec: any word the pre-tokenizer keeps whole becomes one token after the prompt."""
    _, tokenizer = load_base(ModelConfig(device="cpu"), str(build_tiny(prompts[:50], tmp_path, TINY, labels=labels)))
    for label in labels:
        ids = tokenizer(answer(label), add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids) == answer(label)


def test_a_label_of_several_words_stays_several_tokens(prompts, tmp_path):
    _, tokenizer = load_base(ModelConfig(device="cpu"),
                             str(build_tiny(prompts[:50], tmp_path, TINY, labels=["pass", "pass with merit"])))
    assert len(tokenizer(answer("pass"), add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer(answer("pass with merit"), add_special_tokens=False)["input_ids"]) == 3


def test_whole_numbers_make_frequent_values_single_tokens_and_keep_labels_whole(tmp_path):
    # the loan rates are discrete: a few values, each on many rows (here 4 rates x 60 rows), plus one rare rate
    rates = ["10.89%", "13.02%", "7.51%", "21.48%"] * 60 + ["18.37%"]
    texts = [f"term: {36 if i % 3 else 60}\npayments_made: {i % 40}\nimplied_rate: {r}\ngrade:"
             for i, r in enumerate(rates)]
    cfg = TINY.model_copy(update={"numbers": "whole"})
    _, tokenizer = load_base(ModelConfig(device="cpu"), str(build_tiny(texts, tmp_path, cfg, labels=LABELS)))
    _, digits = load_base(ModelConfig(device="cpu"), str(build_tiny(texts, tmp_path / "d", TINY, labels=LABELS)))
    for rate in ("10.89%", "21.48%"):
        assert rate in tokenizer.tokenize(f"implied_rate: {rate}\n")  # one token for a frequent value
        assert digits.tokenize(rate) == list(rate)  # digits: one token per character
    assert len(tokenizer.tokenize("99.99%")) > 1  # a value never seen is in pieces, and still reads back
    for text in [*texts[:5], texts[-1], "implied_rate: 99.99%"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    for label in LABELS:
        ids = tokenizer(answer(label), add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids) == answer(label)
    with pytest.raises(ValueError, match="numbers"):
        TinyModelConfig(numbers="chunks")

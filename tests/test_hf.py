"""Model type hf: a tiny random GPT-2 and a tokenizer built here, saved to a temp dir and fine-tuned
from that path (no download): the adapter's cache, decoding, LoRA, the train and evaluate stages,
and serving from data/model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import transformers  # the `hf` extra, also in `dev`: these tests run in CI, never skip
import yaml

from chitchat.answering.checkpoint import load_checkpoint
from chitchat.answering.decoding import DecodingConfig, generate
from chitchat.core.errors import InputError
from chitchat.text.hf_tokenizer import CONDITION_LINES, INSTALL_HINT, HFTokenizer, import_transformers
from chitchat.answering.service import ChatService
from chitchat.models import ModelConfig, build_model
from chitchat.models.hf import load_pretrained
from chitchat.training.batching import collate, encode_pairs
from chitchat.training.loop import TrainConfig, corpus_nll, train
from conftest import REPO
from test_inference import PAIRS


MAX_SRC_LEN = 40
ROWS = [(cat, q, a) for cat, pairs in PAIRS.items() for q, a in pairs]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two cores shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pairs_frame(rows=ROWS, with_history=True) -> pl.DataFrame:
    """A split table as the split stage writes it; every third pair carries two earlier turns."""
    history = [["Привет!", "Здравствуй."] if with_history and i % 3 == 0 else [] for i in range(len(rows))]
    return pl.DataFrame({"question": [q for _, q, _ in rows], "category": [c for c, _, _ in rows],
                         "answer": [a for _, _, a in rows], "history": history},
                        schema_overrides={"history": pl.List(pl.String)})


def build_tiny_pretrained(directory: Path, pad: str | None = "<pad>") -> Path:
    """A 2-layer GPT-2 (n_embd 32) with random weights and a byte-level BPE trained on PAIRS;
    `pad` None: GPT-2's own setup, padding with the EOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [t for _, q, a in ROWS for t in (q, a)] + list(PAIRS) + ["Привет!", "Здравствуй.", "Категория:"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=([pad] if pad else []) + ["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                               pad_token=pad or "</s>")
    tok.save_pretrained(directory)
    torch.manual_seed(0)
    # initializer_range 0.1 (GPT-2: 0.02): logits with some spread, as a trained model's have, so that
    # a LoRA adapter on frozen random weights can move them within a few steps
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                  initializer_range=0.1, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return build_tiny_pretrained(tmp_path_factory.mktemp("tiny_gpt2"))


def hf_config(pretrained: Path, **kw) -> ModelConfig:
    return ModelConfig(type="hf", pretrained=str(pretrained), **kw)


def batch(tok, rows=ROWS[:4]):
    examples = encode_pairs(pairs_frame(rows), tok, MAX_SRC_LEN, 24)
    return collate(examples, tok.pad_id)


def test_prompt_is_text_with_category_history_and_question(pretrained):
    _, tok = load_pretrained(hf_config(pretrained), categories=list(PAIRS))
    ids, cut = tok.encode_source("Как дела?", "Юмор", ["Привет!", "Здравствуй."], max_len=200)
    assert tok.backend.decode(ids) == "Категория: Юмор\n— Привет!\n— Здравствуй.\n— Как дела?\n" and not cut
    short, cut = tok.encode_source("Как дела?", "Юмор", ["Привет!", "Здравствуй."], max_len=len(ids) - 1)
    assert tok.backend.decode(short) == "Категория: Юмор\n— Здравствуй.\n— Как дела?\n" and not cut  # oldest turn goes
    tiny, cut = tok.encode_source("Как дела?", "Юмор", [], max_len=4)
    assert cut and len(tiny) == 4 and tiny[:3] == ids[:3]
    ex = encode_pairs(pairs_frame(ROWS[:1]), tok, MAX_SRC_LEN, 24)[0]
    assert ex.tgt[0] == tok.bos_id and ex.tgt[-1] == tok.eos_id and tok.decode(ex.tgt[1:]) == ROWS[0][2]


def test_a_persona_model_names_the_character_and_keeps_that_line_when_saved(pretrained, tmp_path):
    _, tok = load_pretrained(hf_config(pretrained), categories=["Пенни"], condition_field="speaker")
    ids, _ = tok.encode_source("Привет.", "Пенни", [], max_len=200)
    assert tok.backend.decode(ids) == "Персонаж: Пенни\n— Привет.\n"
    tok.save(tmp_path / "saved")
    again = type(tok).load(tmp_path / "saved")  # as serving loads data/model/hf
    assert again.encode_source("Привет.", "Пенни", [], max_len=200)[0] == ids and again.categories == tok.categories


def test_pad_equal_to_eos_gets_a_new_pad_token_and_the_embeddings_grow(tmp_path):
    # pad == eos (GPT-2's habit) would make the loss ignore every EOS target: the model would never stop
    build_tiny_pretrained(tmp_path, pad=None)
    model, tok = load_pretrained(hf_config(tmp_path))
    assert tok.pad_id not in (tok.eos_id, tok.bos_id) and tok.vocab_size == 401
    assert model.lm.get_input_embeddings().num_embeddings == 401 and model.cfg.pad_id == tok.pad_id
    assert tok.eos_id not in tok.never_generated and tok.pad_id in tok.never_generated


def test_incremental_decoding_equals_the_full_pass(pretrained):
    model, tok = load_pretrained(hf_config(pretrained))
    model.eval()
    src, tgt = batch(tok)
    with torch.no_grad():
        full = model(src, tgt[:, :-1])
        enc = model.encode(src)
        teacher = model.decode(tgt[:, :-1], enc)
        cache, steps = model.init_cache(enc), []
        for t in range(tgt.size(1) - 1):
            logits, cache = model.decode_step(tgt[:, t], enc, cache)
            steps.append(logits)
        alone = model(src[1:2, : int((src[1] != tok.pad_id).sum())], tgt[1:2, :-1])
    real = tgt[:, 1:] != tok.pad_id
    assert torch.allclose(teacher[real], full[real], atol=1e-5)
    assert torch.allclose(torch.stack(steps, 1)[real], full[real], atol=1e-5)
    n = int(real[1].sum())  # padding of the batch does not change a row's logits
    assert torch.allclose(alone[0, :n], full[1, :n], atol=1e-5)


def test_greedy_and_beam_give_valid_ids_scored_as_the_model_scores_them(pretrained):
    model, tok = load_pretrained(hf_config(pretrained))
    model.eval()
    src, _ = batch(tok)
    greedy = generate(model, src, DecodingConfig(max_new_tokens=6), tok.bos_id, tok.eos_id, tok.never_generated)
    cfg = DecodingConfig(strategy="beam", beam_size=3, n=3, max_new_tokens=6, length_penalty=0.0)
    beams = generate(model, src, cfg, tok.bos_id, tok.eos_id, tok.never_generated)
    assert len(greedy) == len(beams) == src.size(0)
    for row, (g, hyps) in enumerate(zip(greedy, beams)):
        assert len(hyps) == 3 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert hyps[0].score >= g[0].score - 1e-4  # beam keeps greedy's path among its candidates
        for h in [g[0], *hyps]:
            assert all(0 <= i < tok.vocab_size and i not in tok.never_generated for i in h.ids)
            # the reordered cache gave the same log-probs as one teacher-forced pass over the answer
            tgt = torch.tensor([[tok.bos_id, *h.ids] + ([tok.eos_id] if len(h.ids) < 6 else [])])
            with torch.no_grad():
                logp = model(src[row:row + 1], tgt[:, :-1]).log_softmax(-1)
            assert abs(float(logp[0].gather(1, tgt[0, 1:, None]).sum()) - h.logprob) < 1e-3


@pytest.mark.parametrize("lora_r, targets", [(0, "auto"), (8, "auto"), (8, "c_attn,c_proj,c_fc")])
def test_fine_tuning_lowers_the_loss_and_lora_trains_only_the_adapter(pretrained, lora_r, targets):
    torch.manual_seed(0)
    model, tok = load_pretrained(hf_config(pretrained, lora_r=lora_r, lora_target_modules=targets))
    examples = encode_pairs(pairs_frame(), tok, MAX_SRC_LEN, 24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nll0, n = corpus_nll(model, examples, tok.pad_id, 4096, torch.device("cpu"))
    cfg = TrainConfig(epochs=12, max_tokens=400, lr=0.03 if lora_r else 0.01, warmup_steps=2, eval_every=1000,
                      patience=0)
    result = train(model, examples, examples, cfg, tok.pad_id, torch.device("cpu"))
    nll1, _ = corpus_nll(model, examples, tok.pad_id, 4096, torch.device("cpu"))
    assert result.steps >= 20 and nll1 < 0.95 * nll0
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = model.num_parameters()
    total = sum(p.numel() for p in model.parameters())
    if lora_r:
        assert changed and all("lora_" in k for k in changed)  # the base weights did not move
        # keys like lm.base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight
        assert {k.split(".")[-4] for k in changed} == ({"c_attn"} if targets == "auto" else set(targets.split(",")))
        assert 0 < trainable < total / 5
    else:
        assert any("wte" in k for k in changed) and trainable == total


def test_missing_transformers_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pip install -e \"\.\[hf\]\"") as err:
        import_transformers()
    assert str(err.value) == INSTALL_HINT and "\n" not in INSTALL_HINT


def test_bad_pretrained_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        build_model(hf_config(tmp_path / "nope"))
    with pytest.raises(InputError, match=r"not a Hugging Face model folder \(config.json missing\)"):
        build_model(hf_config(tmp_path))
    with pytest.raises(ValueError, match="model.pretrained is empty"):
        build_model(ModelConfig(type="hf"))


# --- the stages, as DVC runs them ----------------------------------------------------------------

def run_stage(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # offline, as on a machine without network
    return subprocess.run([sys.executable, str(REPO / "pipeline" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def stage_project(root: Path, pretrained: Path, **model) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["max_history"] = 2  # recorded by train: evaluation and serving read two earlier turns
    params["model"].update({"type": "hf", "pretrained": str(pretrained), **model})
    params["train"].update({"epochs": 6, "max_tokens": 400, "accum_steps": 1, "lr": 0.01, "warmup_steps": 2,
                            "eval_every": 5, "patience": 0, "max_src_len": MAX_SRC_LEN, "max_tgt_len": 24,
                            "label_smoothing": 0.0, "checkpoint_every": 0})
    params["evaluate"].update({"num_examples": 3})
    params["evaluate"]["decoding"]["max_new_tokens"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (root / "data" / "split").mkdir(parents=True)
    frame = pairs_frame()
    for name in ("train", "valid"):
        frame.write_parquet(root / "data" / "split" / f"{name}.parquet")
    frame.filter(pl.col("history").list.len() == 0).write_parquet(root / "data" / "split" / "test.parquet")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pretrained) -> Path:
    """train (LoRA, r=8) then evaluate in a temp project; data/tokenizer does not even exist."""
    root = stage_project(tmp_path_factory.mktemp("project"), pretrained, lora_r=8)
    for script in ("train.py", "evaluate.py"):
        done = run_stage(script, root)
        assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_train_and_evaluate_stages_write_a_self_contained_model_and_the_usual_metrics(trained, pretrained):
    tm = json.loads((trained / "metrics" / "train.json").read_text())
    assert tm["model_type"] == "hf" and tm["lora_r"] == 8 and tm["pretrained"] == str(pretrained)
    assert 0 < tm["parameters"] < tm["parameters_total"] and tm["steps"] > 0
    ev = json.loads((trained / "metrics" / "eval.json").read_text())
    assert ev["model_type"] == "hf"
    for key in ("ppl_token", "ppl_word", "bleu", "chrf", "rouge1", "rougeL", "distinct_1", "distinct_2"):
        assert isinstance(ev[key], float), key
    assert ev["ppl_word"] > ev["ppl_token"] > 1
    assert (trained / "metrics" / "examples.md").read_text(encoding="utf-8").count("\n") == 2 + 3
    hf = trained / "data" / "model" / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chitchat_meta.json"} <= {p.name for p in hf.iterdir()}
    assert "lora" not in json.dumps(transformers.AutoConfig.from_pretrained(hf).to_dict()).lower()  # merged
    model, ckpt = load_checkpoint(trained / "data" / "model")
    assert ckpt["hf_dir"] == "hf" and "state_dict" not in ckpt and model.cfg.type == "hf"


@pytest.mark.parametrize("condition_field", ["category", "speaker"])
def test_the_saved_chat_template_renders_the_prompt_chitchat_trains_on(trained, tmp_path, condition_field):
    """transformers' own apply_chat_template (as vLLM or TGI would call it) on the saved folder gives
    the token ids chitchat builds: category or character line, the turns, BOS."""
    hf = trained / "data" / "model" / "hf"
    if condition_field == "speaker":  # a persona model: the same folder with the character line
        tok = HFTokenizer.load(hf, category_line=CONDITION_LINES["speaker"])
        tok.save(tmp_path / "persona")
        hf = tmp_path / "persona"
    ours = HFTokenizer.load(hf)
    theirs = transformers.AutoTokenizer.from_pretrained(hf)
    assert theirs.chat_template == ours.chat_template()
    name = sorted(ours.categories)[0]
    history = ["Привет!", "Здравствуй, как жизнь?"]
    messages = [{"role": "system", "content": name}, {"role": "user", "content": history[0]},
                {"role": "assistant", "content": history[1]}, {"role": "user", "content": "Что посоветуешь почитать?"}]
    rendered = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt, cut = ours.encode_source("Что посоветуешь почитать?", name, history, max_len=512)
    assert not cut and list(rendered["input_ids"]) == prompt + [ours.bos_id]
    text = theirs.apply_chat_template(messages[1:], add_generation_prompt=False, tokenize=False)
    assert text == "— Привет!\n— Здравствуй, как жизнь?\n— Что посоветуешь почитать?\n"  # no system: no line


def test_chat_service_answers_from_data_model_without_the_pretrained_folder(trained, pretrained, tmp_path):
    moved = tmp_path / "model"
    (trained / "data" / "model").rename(moved)  # self-contained: no path back to the training machine
    try:
        service = ChatService.load(moved, device="cpu")
        assert service.categories == sorted(PAIRS)
        reply = service.reply("Как дела?", "юмор", DecodingConfig(max_new_tokens=8))
        assert reply.category == "Юмор" and isinstance(reply.answers[0].text, str)
        turns = ["Привет!", "Здравствуй.", "Как жизнь?"]  # trained with prepare.max_history 2: the last two count
        longer = service.reply("Как дела?", "Юмор", DecodingConfig(max_new_tokens=8), history=turns)
        assert longer.src_tokens > reply.src_tokens and longer.history_turns == 2
        src, _, lengths = service._encode(["Как дела?"], ["Юмор"], [turns[-2:]])
        assert lengths[0] == longer.src_tokens
        prompt = service.tokenizer.backend.decode(src[0])  # the most recent turn fits the 40 tokens
        assert prompt.startswith("Категория: Юмор\n— ") and prompt.endswith("— Как жизнь?\n— Как дела?\n")
        assert "Привет" not in prompt and longer.src_tokens <= MAX_SRC_LEN
        beams = service.answer("Как сварить борщ?", None, DecodingConfig(strategy="beam", beam_size=3, n=2,
                                                                          max_new_tokens=8))
        assert len(beams) == 2 and beams[0].score >= beams[1].score
    finally:
        moved.rename(trained / "data" / "model")


def test_retraining_gives_byte_identical_weights_on_cpu(trained):
    weights = trained / "data" / "model" / "hf" / "model.safetensors"
    before = weights.read_bytes()
    done = run_stage("train.py", trained)
    assert done.returncode == 0, done.stderr[-3000:]
    assert weights.read_bytes() == before


def test_missing_pretrained_folder_is_one_line_and_exit_1(tmp_path):
    root = stage_project(tmp_path, tmp_path / "models" / "rugpt3small")
    done = run_stage("train.py", root)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "models/rugpt3small" in lines[0] and "no such folder" in lines[0], done.stderr
    assert not (root / "data" / "model").exists()

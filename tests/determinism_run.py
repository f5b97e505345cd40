"""Train every model type for a few steps and save the weights: tests/test_determinism.py runs this
twice, in two processes with different thread settings in the environment, and compares the files.

usage: python tests/determinism_run.py OUT.pt PRETRAINED_DIR THREADS
"""

import random
import sys

import torch

from chitchat.models import ModelConfig, build_model
from chitchat.text.prompt import Example
from chitchat.training.loop import TrainConfig, set_cpu_threads, train

TYPES = ["gru", "lstm", "cnn", "transformer", "lm", "hf"]


def examples(vocab: int, n: int = 96, lm: bool = False) -> list[Example]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        q = [rng.randrange(5, vocab) for _ in range(rng.randint(2, 20))]
        a = [rng.randrange(5, vocab) for _ in range(rng.randint(2, 20))]
        out.append(Example([] if lm else [4] + q + [3], [2] + a + [3]))
    return out


def model_and_data(kind: str, pretrained: str):
    torch.manual_seed(0)
    if kind == "hf":
        from chitchat.models.hf import load_pretrained

        model, tok = load_pretrained(ModelConfig(type="hf", pretrained=pretrained, dropout=0.1))
        return model, examples(tok.vocab_size), tok.pad_id
    vocab = 500
    lm = kind == "lm"
    cfg = ModelConfig(type="transformer" if lm else kind, task="lm" if lm else "seq2seq", vocab_size=vocab, pad_id=0,
                      emb_dim=64, hidden_dim=128, layers=2, dropout=0.2, max_len=64)
    return build_model(cfg), examples(vocab, lm=lm), 0


def main(out: str, pretrained: str, threads: int) -> None:
    set_cpu_threads(threads)  # what the train stage does: the environment's thread settings do not count
    torch.use_deterministic_algorithms(True)
    weights = {}
    for kind in TYPES:
        model, data, pad = model_and_data(kind, pretrained)
        cfg = TrainConfig(epochs=1, max_steps=6, max_tokens=256, eval_every=3, warmup_steps=2, lr=3e-3,
                          label_smoothing=0.1)
        train(model, data, data[:16], cfg, pad, torch.device("cpu"))
        weights[kind] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(weights, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

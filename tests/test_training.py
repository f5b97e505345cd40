import random

import pytest
import torch

from chitchat.io import config_from
from chitchat.models import ModelConfig, build_model
from chitchat.training.batching import Example, collate, token_budget_batches
from chitchat.training.loop import TrainConfig, backward_window, lr_factor, train

PAD, BOS, EOS, VOCAB = 0, 2, 3, 30


def examples(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = [rng.randrange(5, 12) for _ in range(rng.randint(1, 7))]
        out.append(Example([5] + q + [EOS], [BOS] + q[::-1] + [EOS]))  # answer = reversed question
    return out


def model(dropout=0.0):
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=VOCAB, pad_id=PAD, emb_dim=16, hidden_dim=32, dropout=dropout))


def grads(m):
    return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])


def test_accumulation_equals_one_big_batch():
    data = examples(12)
    whole, split = model(), model()
    backward_window(whole, [collate(data, PAD)], PAD, 0.0, torch.device("cpu"))
    # Uneven micro-batches: a mean of per-batch means would weight the short one too much.
    parts = [collate(data[:2], PAD), collate(data[2:], PAD)]
    nll, n = backward_window(split, parts, PAD, 0.0, torch.device("cpu"))
    assert n == sum(len(e.tgt) - 1 for e in data)
    assert torch.allclose(grads(whole), grads(split), atol=1e-6)


def test_token_budget_batches_cover_everything_within_budget():
    data = examples(300)
    batches = token_budget_batches(data, max_tokens=64, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(300))
    for b in batches:
        assert len(b) * max(max(len(data[i].src), len(data[i].tgt)) for i in b) <= 64
    assert batches == token_budget_batches(data, max_tokens=64, seed=1)
    assert batches != token_budget_batches(data, max_tokens=64, seed=2)


def test_bucketing_pads_less_than_random_batches():
    data = examples(400)
    batches = token_budget_batches(data, max_tokens=128, seed=0)

    def pad_share(bs):
        real = sum(len(data[i].tgt) for b in bs for i in b)
        padded = sum(len(b) * max(len(data[i].tgt) for i in b) for b in bs)
        return 1 - real / padded

    rng = random.Random(0)
    order = list(range(400))
    rng.shuffle(order)
    sizes = [len(b) for b in batches]
    random_batches, start = [], 0
    for size in sizes:
        random_batches.append(order[start : start + size])
        start += size
    assert pad_share(batches) < 0.5 * pad_share(random_batches)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(warmup_steps=10, schedule="cosine")
    assert lr_factor(0, cfg, 100) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 100) == pytest.approx(1.0)
    assert lr_factor(55, cfg, 100) == pytest.approx(0.5)
    assert lr_factor(100, cfg, 100) == pytest.approx(0.0)


def test_train_learns_reversal_is_deterministic_and_keeps_best():
    data, valid = examples(200, 0), examples(40, 1)
    cfg = TrainConfig(epochs=40, max_tokens=256, lr=1e-2, warmup_steps=5, eval_every=10, patience=0)
    logged = []
    m1 = model()
    r1 = train(m1, data, valid, cfg, PAD, torch.device("cpu"), log=lambda s, v: logged.append((s, v)))
    m2 = model()
    r2 = train(m2, data, valid, cfg, PAD, torch.device("cpu"))
    assert r1.best_valid_loss == r2.best_valid_loss
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    valid_losses = [v["valid/loss"] for _, v in logged if "valid/loss" in v]
    assert valid_losses[-1] < 0.3 * valid_losses[0]  # it learned to reverse
    assert r1.best_valid_loss == min(valid_losses)


def test_early_stopping_stops():
    data = examples(100)
    cfg = TrainConfig(epochs=50, max_tokens=128, lr=0.0, warmup_steps=0, eval_every=2, patience=2,
                      schedule="constant")
    result = train(model(), data, data, cfg, PAD, torch.device("cpu"))
    assert result.stopped_early and result.steps == 6  # lr 0: no validation ever improves on the first


def test_unknown_train_param_is_rejected():
    with pytest.raises(ValueError, match="unknown train params: lr_rate"):
        config_from(TrainConfig, {"lr_rate": 1}, "train")

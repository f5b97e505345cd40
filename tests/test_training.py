import random

import pytest
import torch

from chitchat.core.io import config_from
from chitchat.models import ModelConfig, build_model
from chitchat.text.prompt import Example
from chitchat.training.batching import collate, token_budget_batches
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


def test_max_steps_ends_training_and_the_schedule_there():
    data = examples(100)
    cfg = TrainConfig(epochs=50, max_tokens=128, lr=1e-2, warmup_steps=0, eval_every=2, patience=0, max_steps=7)
    seen = []
    result = train(model(), data, data, cfg, PAD, torch.device("cpu"), log=lambda s, v: seen.append((s, v)))
    assert result.steps == 7 and not result.stopped_early
    lrs = [(step, v["train/lr"]) for step, v in seen if "train/lr" in v]
    assert lrs[-1][0] == 7 and lrs[-1][1] < 0.05 * cfg.lr  # the cosine schedule ends at step 7, not after 50 epochs
    assert seen[-1][0] == 7 and "valid/loss" in seen[-1][1]  # the last step is validated (eval_every 2)


def test_unknown_train_param_is_rejected():
    with pytest.raises(ValueError, match="unknown train params: lr_rate"):
        config_from(TrainConfig, {"lr_rate": 1}, "train")


def copy_examples(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = [rng.randrange(5, 12) for _ in range(rng.randint(1, 7))]
        out.append(Example([5] + q + [EOS], [BOS] + q + [EOS]))
    return out


@pytest.mark.parametrize("kind", ["gru", "lstm", "cnn", "transformer"])
def test_every_type_learns_a_copy_task(kind):
    """The annotated-transformer check: can it learn at all (and is nothing masked wrongly)."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(type=kind, vocab_size=VOCAB, pad_id=PAD, emb_dim=32, hidden_dim=64,
                                dropout=0.0, layers=1 if kind in ("gru", "lstm") else 2))
    cfg = TrainConfig(epochs=25, max_tokens=256, lr=5e-3, warmup_steps=10, eval_every=10, patience=0)
    logged = []
    train(m, copy_examples(200, 0), copy_examples(40, 1), cfg, PAD, torch.device("cpu"),
          log=lambda s, v: logged.append(v))
    losses = [v["valid/loss"] for v in logged if "valid/loss" in v]
    assert losses[-1] < 0.5 * losses[0]


class Killed(Exception):
    pass


def test_a_killed_run_resumes_with_the_same_curve_and_weights(tmp_path):
    data, valid = examples(120, 0), examples(30, 1)
    cfg = TrainConfig(epochs=4, max_tokens=128, lr=5e-3, warmup_steps=3, eval_every=4, patience=0,
                      checkpoint_every=5, accum_steps=2)
    full_log = []
    reference = model(dropout=0.2)  # dropout: the RNG state must be restored too
    reference_result = train(reference, data, valid, cfg, PAD, torch.device("cpu"),
                             log=lambda s, v: full_log.append((s, v)))
    assert reference_result.resumed_from_step == 0

    resume = tmp_path / "resume.pt"

    def kill_at_step_12(step, values):
        if step == 12:
            raise Killed  # like kill -9 after step 12: the last checkpoint is from step 10

    with pytest.raises(Killed):
        train(model(dropout=0.2), data, valid, cfg, PAD, torch.device("cpu"), log=kill_at_step_12, resume_path=resume)
    assert resume.exists()

    resumed_log, said = [], []
    resumed = model(dropout=0.2)
    result = train(resumed, data, valid, cfg, PAD, torch.device("cpu"), log=lambda s, v: resumed_log.append((s, v)),
                   resume_path=resume, say=said.append)
    assert resumed_log == full_log
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
    assert result.steps == full_log[-1][0] and not resume.exists()
    assert said == [f"resuming from {resume} at step 10 (same params and data)"] and result.resumed_from_step == 10
    # the totals count the whole run, not only the steps after the resume
    assert result.train_tokens == reference_result.train_tokens and result.seconds > 0


@pytest.mark.parametrize("change", ["params", "data", "damaged"])
def test_a_resume_file_from_other_params_or_data_is_set_aside(tmp_path, change):
    data = examples(60)
    resume = tmp_path / "resume.pt"
    cfg = TrainConfig(epochs=1, max_tokens=128, eval_every=100, checkpoint_every=1)

    def stop(step, values):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train(model(), data, data, cfg, PAD, torch.device("cpu"), log=stop, resume_path=resume)
    saved = resume.read_bytes()
    if change == "params":
        cfg = TrainConfig(epochs=1, max_tokens=128, eval_every=100, checkpoint_every=1, lr=1e-4)
    elif change == "data":  # one token of one answer differs: same count, same lengths
        data = data[:30] + [Example(data[30].src, data[30].tgt[:1] + [11 if data[30].tgt[1] != 11 else 10]
                                    + data[30].tgt[2:])] + data[31:]
    else:
        resume.write_bytes(saved[: len(saved) // 2])  # cut short, as by a full disk
    steps, said = [], []
    result = train(model(), data, data, cfg, PAD, torch.device("cpu"), log=lambda s, v: steps.append(s),
                   resume_path=resume, say=said.append)
    assert steps[0] == 1 and result.resumed_from_step == 0  # started afresh
    aside = tmp_path / "resume.stale.pt"
    problem = "damaged (" if change == "damaged" else "from a run with other params or data"
    assert len(said) == 1 and said[0].startswith(f"{resume} is {problem}")
    assert said[0].endswith("set aside as resume.stale.pt, training from step 0")
    assert aside.is_file() and not resume.exists()  # set aside, not mixed in; the finished run removed its own
    if change != "damaged":
        assert aside.read_bytes() == saved


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_learns_like_fp32(precision):
    """The autocast path (CUDA's default) runs on the CPU too; its curve stays near fp32's."""
    data, valid = examples(200, 0), examples(40, 1)
    cfg = TrainConfig(epochs=15, max_tokens=256, lr=1e-2, warmup_steps=5, eval_every=10, patience=0)
    fp32 = train(model(), data, valid, cfg, PAD, torch.device("cpu"))
    mixed_cfg = TrainConfig(**{**vars(cfg), "precision": precision})
    mixed = train(model(), data, valid, mixed_cfg, PAD, torch.device("cpu"))
    assert fp32.precision == "fp32" and mixed.precision == precision
    assert mixed.best_valid_loss != fp32.best_valid_loss  # autocast really ran
    assert abs(mixed.best_valid_loss - fp32.best_valid_loss) < 0.15 * fp32.best_valid_loss


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    from chitchat.training.precision import Precision, resolve_precision

    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("fp8", torch.device("cpu"))
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    prec = Precision("fp16", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**16))
    before = [p.detach().clone() for p in m.parameters()]
    src, tgt = collate(examples(4), PAD)
    with prec.autocast():
        logits = m(src, tgt[:, :-1])
    prec.backward(logits.float().pow(2).sum() * 1e35)  # times the scale 2**16: past fp32's range
    assert prec.step(opt, m.parameters(), clip_norm=1.0) is False
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert prec.scaler.get_scale() == 2.0**15
    opt.zero_grad()
    with prec.autocast():
        logits = m(src, tgt[:, :-1])
    prec.backward(logits.float().mean())
    assert prec.step(opt, m.parameters(), clip_norm=1.0) is True  # a sane gradient steps


def test_compiled_training_matches_eager():
    """torch.compile (inductor; a C++ compiler on the CPU) changes speed, not the result."""
    data, valid = examples(120, 0), examples(30, 1)
    cfg = TrainConfig(epochs=2, max_tokens=256, lr=1e-2, warmup_steps=5, eval_every=10, patience=0)

    def tiny_transformer():
        torch.manual_seed(0)
        return build_model(ModelConfig(type="transformer", vocab_size=VOCAB, pad_id=PAD, emb_dim=16,
                                       hidden_dim=32, heads=2, dropout=0.0))

    eager, compiled = tiny_transformer(), tiny_transformer()
    window = [collate(data[:20], PAD), collate(data[20:30], PAD)]
    backward_window(eager, window, PAD, 0.1, torch.device("cpu"))
    backward_window(torch.compile(compiled, dynamic=True), window, PAD, 0.1, torch.device("cpu"))
    assert torch.allclose(grads(eager), grads(compiled), atol=1e-5)

    eager, compiled = tiny_transformer(), tiny_transformer()
    r1 = train(eager, data, valid, cfg, PAD, torch.device("cpu"))
    r2 = train(compiled, data, valid, TrainConfig(**{**vars(cfg), "compile": True}), PAD, torch.device("cpu"))
    assert r1.steps == r2.steps
    # Adam's normalized steps amplify float reordering a little over a run; no more than that.
    assert r2.final_train_loss == pytest.approx(r1.final_train_loss, rel=1e-3)
    assert r2.best_valid_loss == pytest.approx(r1.best_valid_loss, rel=1e-3)

import pytest
import torch

from chitchat.core.io import config_from
from chitchat.answering.checkpoint import load_checkpoint, save_checkpoint
from chitchat.models import ModelConfig, build_model
from chitchat.training.loop import target_nll

VOCAB, PAD = 40, 0
VARIANTS = [
    dict(type="gru", attention="general"),
    dict(type="gru", attention="additive", layers=2, residual=True, layer_norm=True),
    dict(type="lstm", attention="dot", bidirectional=False),
    dict(type="lstm", attention="none", layers=2),
    dict(type="cnn", layers=2),
    dict(type="cnn", kernel_size=5, layer_norm=True),
    dict(type="transformer", layers=2),
    dict(type="transformer", positions="learned", tie_embeddings=False, heads=2),
]
IDS = [f"{v['type']}-{i}" for i, v in enumerate(VARIANTS)]


def make(variant, dropout=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, pad_id=PAD, emb_dim=16, hidden_dim=32, dropout=dropout, **variant)
    return build_model(cfg).eval(), cfg


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(5, VOCAB, (3, 7), generator=g)
    src[1, 4:] = PAD
    tgt = torch.randint(5, VOCAB, (3, 6), generator=g)
    return src, tgt


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_output_shape(variant):
    model, _ = make(variant)
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 6, VOCAB)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_padding_does_not_change_real_positions(variant):
    model, _ = make(variant)
    src, tgt = batch()
    longer = torch.cat([src, torch.full((3, 5), PAD)], dim=1)
    assert torch.allclose(model(src, tgt), model(longer, tgt), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_decoder_cannot_see_the_future(variant):
    model, _ = make(variant)
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1) % VOCAB
    a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_incremental_decoding_equals_full(variant):
    model, _ = make(variant)
    src, tgt = batch()
    enc = model.encode(src)
    cache = model.init_cache(enc)
    steps = []
    for i in range(tgt.size(1)):
        logits, cache = model.decode_step(tgt[:, i], enc, cache)
        steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), model(src, tgt), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_loss_falls_on_a_tiny_batch(variant):
    model, _ = make(variant)
    model.train()
    src, tgt = batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = target_nll(model(src, tgt[:, :-1]), tgt[:, 1:], PAD) / tgt[:, 1:].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_save_load_gives_identical_logits(tmp_path, variant):
    model, cfg = make(variant)
    src, tgt = batch()
    save_checkpoint(tmp_path / "model.pt", model, cfg, tokenizer_dir="tokenizer")
    loaded, ckpt = load_checkpoint(tmp_path)
    assert ckpt["tokenizer_dir"] == "tokenizer"
    assert torch.equal(loaded(src, tgt), model(src, tgt))


@pytest.mark.parametrize("bad, message", [
    (dict(type="bert"), "model.type"), (dict(attention="cosine"), "model.attention"),
    (dict(hidden_dim=33), "even"), (dict(type="transformer", emb_dim=30, heads=4), "divisible"),
    (dict(type="cnn", kernel_size=4), "odd"), (dict(positions="rotary"), "model.positions"),
])
def test_bad_config_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=VOCAB, **bad)


def test_unknown_model_param_is_rejected():
    with pytest.raises(ValueError, match="unknown model params: hiden_dim"):
        config_from(ModelConfig, {"hiden_dim": 3}, "model")


def test_same_weights_give_a_byte_identical_checkpoint(tmp_path):
    """DVC hashes data/model: saving the same weights twice must give the same bytes, whatever the
    temporary file's name was."""
    torch.manual_seed(0)
    cfg = ModelConfig(type="gru", vocab_size=50, pad_id=0, emb_dim=8, hidden_dim=8)
    model = build_model(cfg)
    paths = [tmp_path / name / "model.pt" for name in ("a", "b")]
    for path in paths:
        save_checkpoint(path, model, cfg, max_src_len=12)
    assert paths[0].read_bytes() == paths[1].read_bytes()

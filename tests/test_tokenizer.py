import pytest

from chitchat.text.tokenizer import SPECIALS, Tokenizer, train_tokenizer

CORPUS = [
    "Привет, как дела?", "«Ёлки-палки» — сказал он… и ушёл 😂", "нормально))) а у тебя?",
    "Смотри тут: https://otvet.mail.ru/question/123", "СРОЧНО!!! помогите с ЕГЭ по физике",
    "Щука, съешь же ещё этих мягких французских булок", "ответ: 42, но это не точно 🤔",
] * 30
CATEGORIES = ["Авто, Мото", "Юмор", "Еда, Кулинария"]


@pytest.fixture(scope="module", params=["tokenizers", "sentencepiece"])
def tok(request):
    return train_tokenizer(CORPUS, CATEGORIES, kind=request.param, vocab_size=600)


@pytest.mark.parametrize("text", CORPUS[:7])
def test_roundtrip_cyrillic_quotes_dashes_emoji(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.sep_id] == [0, 1, 2, 3, 4]
    assert len(SPECIALS) == 5


def test_one_token_per_category_and_a_shared_unknown(tok):
    ids = {tok.category_id(c) for c in CATEGORIES}
    assert len(ids) == 3 and min(ids) >= len(SPECIALS)
    assert tok.category_id("Нет такой") == tok.unknown_category_id not in ids
    # category and special tokens never show up in decoded text
    assert tok.decode([tok.bos_id, tok.category_id("Юмор")] + tok.encode("да") + [tok.eos_id] + tok.encode("нет")) == "да"


def test_save_load_gives_the_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode_batch(CORPUS[:7]) == tok.encode_batch(CORPUS[:7])
    assert again.categories == tok.categories and again.vocab_size == tok.vocab_size


def test_training_is_deterministic(tok):
    again = train_tokenizer(CORPUS, CATEGORIES, kind=tok.kind, vocab_size=600)
    assert again.encode_batch(CORPUS[:7]) == tok.encode_batch(CORPUS[:7])


def test_sentencepiece_too_small_vocab_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size=50 is too small"):
        train_tokenizer(CORPUS, CATEGORIES, kind="sentencepiece", vocab_size=50)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="tokenizer.kind"):
        train_tokenizer(CORPUS, CATEGORIES, kind="wordpiece")


def test_a_vocab_below_the_alphabet_is_refused_with_the_least_that_works():
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size = 5: too small.* need (\d+) \(the least") as info:
        train_tokenizer(CORPUS, CATEGORIES, kind="tokenizers", vocab_size=5)
    least = int(info.value.args[0].split(" need ")[1].split()[0])
    alphabet = len(set("".join(CORPUS).replace(" ", "")) | {"▁"})
    assert least == len(SPECIALS) + 1 + len(CATEGORIES) + alphabet  # specials, unknown + 3 categories, characters
    exact = train_tokenizer(CORPUS, CATEGORIES, kind="tokenizers", vocab_size=least)  # the least works
    assert exact.vocab_size == least and exact.decode(exact.encode(CORPUS[0])) == CORPUS[0]
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(CORPUS, CATEGORIES, kind="tokenizers", vocab_size=least - 1)

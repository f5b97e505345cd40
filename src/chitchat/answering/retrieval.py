"""The retrieval baseline: TF-IDF over the train questions, answering with a stored train answer.

`model.type: retrieval` serves it alone; every other seq2seq model keeps one beside its checkpoint
(data/model/retrieval) so `decoding.rerank_k` can rank retrieved answers with the model. The score
of a train pair for a question is the cosine of their questions' TF-IDF vectors, plus
`history_weight` times the cosine of their dialogue histories (when both have one), plus
`category_boost` when the categories agree (`category_mode: filter` keeps only such pairs).
Ties go to the earlier train row, so the same index gives the same answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
from scipy import sparse

from chitchat.core.errors import InputError

ANALYZERS = ("char_wb", "word")
CATEGORY_MODES = ("boost", "filter", "off")
QUERY_BLOCK = 64  # questions scored against the whole index at once: bounds the dense score block


@dataclass(frozen=True)
class RetrievalConfig:
    analyzer: str = "char_wb"  # char_wb: character n-grams inside words (robust to Russian endings) | word
    ngram_min: int = 2  # shortest n-gram
    ngram_max: int = 4  # longest n-gram
    min_df: int = 1  # an n-gram must occur in this many train questions
    sublinear_tf: bool = True  # 1 + log(tf) instead of raw counts
    history_weight: float = 0.5  # weight of the history cosine (prepare.max_history > 0)
    category_mode: str = "boost"  # boost | filter (only the question's own category) | off
    category_boost: float = 0.1  # added to the score of pairs of the question's category (mode boost)

    def __post_init__(self):
        checks = [
            ("analyzer", self.analyzer in ANALYZERS, f"one of {', '.join(ANALYZERS)}"),
            ("ngram_min", self.ngram_min >= 1, ">= 1"),
            ("ngram_max", self.ngram_max >= self.ngram_min, f">= ngram_min ({self.ngram_min})"),
            ("min_df", self.min_df >= 1, ">= 1"),
            ("history_weight", 0 <= self.history_weight <= 10, "in [0, 10]"),
            ("category_mode", self.category_mode in CATEGORY_MODES, f"one of {', '.join(CATEGORY_MODES)}"),
            ("category_boost", 0 <= self.category_boost <= 10, "in [0, 10]"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"retrieval.{name} must be {allowed}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Hit:
    """One retrieved train pair."""

    row: int  # its row in the index (the train split's order)
    score: float
    question: str
    answer: str
    category: str


def _vectorizer(cfg: RetrievalConfig, vocabulary: dict | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer  # scikit-learn only where an index is used

    return TfidfVectorizer(analyzer=cfg.analyzer, ngram_range=(cfg.ngram_min, cfg.ngram_max),
                           min_df=1 if vocabulary else cfg.min_df, sublinear_tf=cfg.sublinear_tf,
                           lowercase=True, dtype=np.float32, vocabulary=vocabulary)


def _history_texts(histories: Sequence[Sequence[str] | None], max_history: int) -> list[str]:
    """Each history's last `max_history` turns as one text ('' when there are none)."""
    if max_history <= 0:
        return [""] * len(histories)
    return [" ".join(list(h or [])[-max_history:]) for h in histories]


class RetrievalIndex:
    """TF-IDF vectors of the train questions (and histories) with their answers and categories."""

    def __init__(self, cfg: RetrievalConfig, vectorizer, questions: sparse.csr_matrix,
                 histories: sparse.csr_matrix | None, pairs: pl.DataFrame, max_history: int):
        self.cfg = cfg
        self.vectorizer = vectorizer
        self.questions = questions  # (rows, vocabulary) L2-normalized
        self.histories = histories  # the same for the joined history turns; None without history
        self.pairs = pairs  # question, answer, category: one row per train pair
        self.max_history = max_history
        self._answers = pairs["answer"].to_list()
        self._questions = pairs["question"].to_list()
        names = pairs["category"].to_list()
        self._names = names
        self.categories = sorted(set(names))
        codes = {name: i for i, name in enumerate(self.categories)}
        self._codes = np.array([codes[n] for n in names], dtype=np.int32)
        self._category_code = codes

    @property
    def rows(self) -> int:
        return self.pairs.height

    @classmethod
    def fit(cls, train: pl.DataFrame, cfg: RetrievalConfig, max_history: int = 0) -> "RetrievalIndex":
        """Index every pair of `train` (question, answer, category, optional history)."""
        if train.height == 0:
            raise ValueError("the train split is empty: nothing to retrieve")
        vectorizer = _vectorizer(cfg)
        texts = train["question"].to_list()
        if max_history > 0 and "history" in train.columns:  # one vocabulary for questions and their contexts
            contexts = _history_texts(train["history"].to_list(), max_history)
            vectorizer.fit(texts + [c for c in contexts if c])
            questions, histories = vectorizer.transform(texts).tocsr(), vectorizer.transform(contexts).tocsr()
        else:
            questions, histories = vectorizer.fit_transform(texts).tocsr(), None
        pairs = train.select("question", "answer", "category")
        return cls(cfg, vectorizer, questions, histories, pairs, max_history)

    # -- search ----------------------------------------------------------------------------------
    def search(self, questions: Sequence[str], categories: Sequence[str | None] | None = None,
               histories: Sequence[Sequence[str] | None] | None = None, k: int = 1) -> list[list[Hit]]:
        """The `k` best train pairs for each question, best first."""
        n = len(questions)
        categories = list(categories) if categories is not None else [None] * n
        histories = list(histories) if histories is not None else [None] * n
        k = max(1, min(k, self.rows))
        hits: list[list[Hit]] = []
        for start in range(0, n, QUERY_BLOCK):
            block = slice(start, start + QUERY_BLOCK)
            scores = self._scores(list(questions[block]), categories[block], histories[block])
            hits += [self._top(row, k) for row in scores]
        return hits

    def _scores(self, questions: list[str], categories: list[str | None], histories: list) -> np.ndarray:
        """(len(questions), rows) scores; pairs the category filter rules out get -inf."""
        scores = _cosines(self.questions, self.vectorizer.transform(questions))
        if self.histories is not None and self.cfg.history_weight > 0:
            context = self.vectorizer.transform(_history_texts(histories, self.max_history))
            scores += self.cfg.history_weight * _cosines(self.histories, context)
        if self.cfg.category_mode == "off":
            return scores
        for i, name in enumerate(categories):
            code = self._category_code.get(name) if name is not None else None
            if code is None:
                continue  # no category, or one the index has never seen: nothing to prefer
            same = self._codes == code
            if self.cfg.category_mode == "filter":
                scores[i, ~same] = -np.inf
            else:
                scores[i, same] += self.cfg.category_boost
        return scores

    def _top(self, row: np.ndarray, k: int) -> list[Hit]:
        if k < row.size:
            part = np.argpartition(-row, k - 1)[:k]
            # the k-th score may be tied with rows argpartition left out: take every tied row, then order
            cut = row[part].min()
            part = np.flatnonzero(row >= cut)
        else:
            part = np.arange(row.size)
        order = part[np.lexsort((part, -row[part]))][:k]  # score descending, then earlier row first
        return [Hit(int(i), float(row[i]), self._questions[i], self._answers[i], self._names[i])
                for i in order if np.isfinite(row[i])]

    # -- files -----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the index into `directory` (a fresh folder inside an atomic output)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"retrieval": asdict(self.cfg), "max_history": self.max_history}
        (directory / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        vocabulary = sorted(self.vectorizer.vocabulary_.items(), key=lambda item: item[1])
        (directory / "vocabulary.json").write_text(json.dumps([t for t, _ in vocabulary], ensure_ascii=False),
                                                   encoding="utf-8")
        np.save(directory / "idf.npy", self.vectorizer.idf_.astype(np.float64))
        _save_csr(directory / "questions", self.questions)
        if self.histories is not None:
            _save_csr(directory / "histories", self.histories)
        self.pairs.write_parquet(directory / "pairs.parquet", statistics=False)

    @classmethod
    def load(cls, directory: str | Path) -> "RetrievalIndex":
        """The index `save` wrote; InputError names the folder when it is missing or damaged."""
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise InputError(directory, "no retrieval index here (run `dvc repro` to train one)")
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            cfg = RetrievalConfig(**config["retrieval"])
            tokens = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
            vectorizer = _vectorizer(cfg, {t: i for i, t in enumerate(tokens)})
            vectorizer.idf_ = np.load(directory / "idf.npy")
            questions = _load_csr(directory / "questions", len(tokens))
            histories = _load_csr(directory / "histories", len(tokens)) if (directory / "histories").is_dir() else None
            pairs = pl.read_parquet(directory / "pairs.parquet")
        except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError) as exc:
            raise InputError(directory, f"damaged retrieval index ({exc.__class__.__name__}: {exc}); "
                                        "rerun `dvc repro -f train`") from None
        if questions.shape[0] != pairs.height:
            raise InputError(directory, f"damaged retrieval index: {questions.shape[0]} vectors for "
                                        f"{pairs.height} pairs; rerun `dvc repro -f train`")
        return cls(cfg, vectorizer, questions, histories, pairs, int(config.get("max_history", 0)))


def _cosines(index: sparse.csr_matrix, query: sparse.csr_matrix) -> np.ndarray:
    """(queries, rows) dot products of L2-normalized rows: sparse index times a dense query block,
    far cheaper than a sparse-sparse product whose result is nearly dense for character n-grams."""
    return np.ascontiguousarray((index @ query.T.toarray()).T, dtype=np.float32)


def _save_csr(directory: Path, matrix: sparse.csr_matrix) -> None:
    """A CSR matrix as plain .npy arrays: byte-identical for the same matrix (np.savez zips with timestamps)."""
    directory.mkdir()
    matrix = matrix.tocsr()
    matrix.sort_indices()
    np.save(directory / "data.npy", matrix.data.astype(np.float32))
    np.save(directory / "indices.npy", matrix.indices.astype(np.int32))
    np.save(directory / "indptr.npy", matrix.indptr.astype(np.int64))


def _load_csr(directory: Path, columns: int) -> sparse.csr_matrix:
    data, indices, indptr = (np.load(directory / f"{name}.npy") for name in ("data", "indices", "indptr"))
    return sparse.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, columns))

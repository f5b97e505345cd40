"""Shared helpers: tiny QA dumps written in the dump's schema."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANEKDOT_REL = "data/raw/anekdot_dialogues/extract_dialogues_from_anekdots.tar.xz"  # embedded, a default input
ANEKDOT = REPO / ANEKDOT_REL


def write_jsonl(path: Path, records: list, raw_lines: list[str] | None = None) -> Path:
    """Write records as JSON lines (plus raw, possibly broken, lines) to .jsonl/.gz/.bz2/.xz/.zst/.zip by suffix."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(raw_lines or [])
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("qa_data.jsonl", data)
    elif path.suffix == ".gz":
        import gzip

        path.write_bytes(gzip.compress(data))
    elif path.suffix in (".bz2", ".xz"):
        import bz2
        import lzma

        path.write_bytes((bz2 if path.suffix == ".bz2" else lzma).compress(data))
    elif path.suffix == ".zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def qa_records() -> list[dict]:
    return [
        {"question": "Как завести машину в мороз?", "category": "Авто, Мото",
         "responses": ["Прогрей аккумулятор", "Вызови эвакуатор)))"]},
        {"question": "Что приготовить на ужин?", "category": "Еда, Кулинария",
         "responses": ["Пельмени, конечно!", "https://www.povarenok.ru/recipes/"]},
        {"question": "Есть ли жизнь на Марсе?", "category": "Философия, Непознанное",
         "responses": ["Науке это неизвестно…", "", "Есть ли жизнь на Марсе?"], "url": "https://otvet.mail.ru/question/1"},
    ]

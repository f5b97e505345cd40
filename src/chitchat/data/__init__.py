"""Readers, normalization, filters, deduplication and splitting of question-answer pairs."""

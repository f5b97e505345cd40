"""Data: readers, normalization, filters, deduplication and splitting of question-answer pairs.

Owns everything the prepare, dedup and split stages compute. May import chitchat.core only.
"""

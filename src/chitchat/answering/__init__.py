"""Answering: checkpoint loading, decoding, the retrieval index and retrieve-then-rank, and the
services that answer (ChatService for every seq2seq and hf model, RetrievalChatService for the
retrieval baseline, ContinuationService for language models).

Sits above models: may import chitchat.core, data (normalization), text and models; the
interfaces (CLI, web, bot) and evaluation build on it.
"""

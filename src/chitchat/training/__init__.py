"""Batching by token budget and the training loop."""

"""Evaluation: text metrics, scoring a trained model on a split, and the data report.

May import chitchat.core, data, text, models, training (corpus NLL, batching) and answering.
"""

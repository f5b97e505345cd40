"""Training: batching by token budget, the loop (accumulation, AMP, resume), precision, DDP.

May import chitchat.core, chitchat.text and chitchat.models; never answering, evaluation or serving.
"""

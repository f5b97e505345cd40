"""Text: the BPE tokenizer, the pretrained (Hugging Face) tokenizer and the prompt format.

Owns how text becomes ids and what a model's source looks like. May import chitchat.core.
"""

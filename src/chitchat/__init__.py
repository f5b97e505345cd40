"""chitchat: a reproducible pipeline for generative Russian chit-chat models."""

__version__ = "0.1.0"

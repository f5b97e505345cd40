"""Core: the one error type, atomic writes and params loading, the stage runner, allocator settings.

Owns what every layer shares. Imports nothing from chitchat outside core (tests/test_layers.py).
"""

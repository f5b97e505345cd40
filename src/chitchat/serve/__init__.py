"""Serving: the web front end (FastAPI app in `app.py`, page in `static/`), the Telegram bot
(`bot.py`), and the request caps (`limits.py`) and batcher (`batcher.py`) they share.

Built on chitchat.answering only (plus core); nothing here imports FastAPI at package import, so
the bot can use `limits` without it.
"""

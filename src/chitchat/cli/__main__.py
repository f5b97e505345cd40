"""`python -m chitchat.cli`: the console script without its entry point."""

from chitchat.cli import main

main()

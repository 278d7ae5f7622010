"""Subcommands. Each module defines ``register(subparsers)`` and sets ``func`` on its parser.

``func(args) -> int`` runs the command and returns the exit status.
"""

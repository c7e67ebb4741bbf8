"""The command line, one module per command (or family of commands): each exposes
``register(subparsers)`` and sets ``func`` on its parsers (see ``rankforge.cli``)."""

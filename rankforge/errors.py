"""Error types shared by every boundary of the platform (files, configs, RPCs).

They subclass ValueError so callers that only know the standard library still catch them, while
the CLI and the server can tell "the user's input is wrong" apart from a bug.
"""


class RankforgeError(ValueError):
    """Base class: bad input that the user can fix; the message names the problem."""


class DataError(RankforgeError):
    """An interaction log or feature table is missing, malformed or empty."""


class ConfigError(RankforgeError):
    """A configuration file or setting is invalid."""

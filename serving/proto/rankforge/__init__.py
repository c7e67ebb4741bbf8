"""Proto packages named as in the ``.proto`` files (``rankforge.v1``)."""

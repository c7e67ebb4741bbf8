"""Generated gRPC code for the ``rankforge.v1`` proto package (see ``rankforge.serving.proto``)."""

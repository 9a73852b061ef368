"""Benchmarks that run Capstan against its production backends on this machine (`capstan bench`)."""

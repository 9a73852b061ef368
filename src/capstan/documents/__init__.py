"""Documents: the relational store with a cache-aside read path (seed: synchronous flow)."""

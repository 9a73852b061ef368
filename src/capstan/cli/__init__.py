"""The `capstan` command line."""

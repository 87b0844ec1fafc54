"""The `keyplane` command line."""

"""Readers: every format becomes one `Study`."""

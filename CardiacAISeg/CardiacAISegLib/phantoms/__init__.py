"""Synthetic studies with exact truth: a beating cine heart (``phantom_cine``), first-pass
perfusion with known MBF (``phantom_perfusion``), and both written as files (``phantom``).
docs/algorithms.md §7."""

"""Segmentation networks: architectures, registry, inference and training (torch imported lazily)."""

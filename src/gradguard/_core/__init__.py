"""The shared core: the registry of saved tensors, write interception and source attribution.

Nothing here is public API; `gradguard.detect` (and later `protect`) build on it.
"""

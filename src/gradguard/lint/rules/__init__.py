"""The lint rules, one class per rule, by family: ``hazards`` (GG1xx), ``advice``
(GG2xx), ``noisy`` (GG4xx, off by default).  Importing this package registers them."""
from gradguard.lint.rules import advice, hazards, noisy

__all__ = ["advice", "hazards", "noisy"]

"""The package version (a leaf module, so every layer can import it)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

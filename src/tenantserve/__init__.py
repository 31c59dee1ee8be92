"""tenantserve: open-source multi-tenant ML inference on one endpoint."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

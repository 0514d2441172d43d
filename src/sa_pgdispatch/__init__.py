"""sa_pgdispatch: asynchronous SQL side effects inside PostgreSQL, on pg_cron.

See docs/architecture.md for the layout and the contracts between the parts.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Database plumbing: pool, versioned migrations, registry sync, retention and rollups."""

from park.db.migrate import Edition, detect_edition, migrate
from park.db.pool import open_pool

__all__ = ["Edition", "detect_edition", "migrate", "open_pool"]

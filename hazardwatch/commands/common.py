"""What several commands share: the site file (if given) and the database it is about."""

from __future__ import annotations

import sys

from park.errors import HazardwatchError
from park.settings import load_settings
from park.site import Site
from park.sitefile import load_site


def site_and_database(config: str | None) -> tuple[Site | None, str] | None:
    """The site file named by ``--config`` (or None) and the database URL: ``HAZARDWATCH_DATABASE_URL``
    wins over the site file's ``database.url``. None, after printing what to fix, when there is none
    or the site file is invalid."""
    try:
        site = load_site(config) if config else None
        settings = load_settings(site)
    except HazardwatchError as e:
        print(f"✗ {e}", file=sys.stderr)
        return None
    if settings.database_url is None:
        where = "database.url in the site file" if config else "give --config SITE.yaml with database.url"
        print(f"✗ no database: set HAZARDWATCH_DATABASE_URL=postgresql://… or {where}", file=sys.stderr)
        return None
    return site, settings.database_url.get_secret_value()

"""Push the dashboards (and their data source) to a Grafana with grafana-client."""

from __future__ import annotations

from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from dashboards.build import all_dashboards

FOLDER_UID = "hazardwatch"
FOLDER_TITLE = "hazardwatch 园区监测"


def datasource_body(name: str, host: str, database: str, user: str, password: str | None) -> dict[str, Any]:
    """A PostgreSQL data source with TimescaleDB features on (harmless on plain PostgreSQL)."""
    return {
        "name": name, "type": "grafana-postgresql-datasource", "access": "proxy", "url": host,
        "user": user, "database": database,
        "jsonData": {"sslmode": "disable", "timescaledb": True, "postgresVersion": 1500, "database": database},
        "secureJsonData": {"password": password} if password else {},
    }


def provision(api: GrafanaApi, datasource: dict[str, Any] | None = None) -> list[str]:
    """Create or update the folder, the data source (when given) and every dashboard; return URLs."""
    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as e:
        if e.status_code != 404:
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    if datasource is not None:
        try:
            existing = api.datasource.get_datasource_by_name(datasource["name"])
            api.datasource.update_datasource_by_uid(existing["uid"], datasource)
        except GrafanaClientError as e:
            if e.status_code != 404:
                raise
            api.datasource.create_datasource(datasource)
    urls = []
    for dash in all_dashboards():
        res = api.dashboard.update_dashboard(
            {"dashboard": dash, "folderUid": FOLDER_UID, "overwrite": True,
             "message": "provisioned by hazardwatch"}
        )
        urls.append(str(res.get("url", dash["uid"])))
    return urls

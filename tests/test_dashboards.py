"""Grafana dashboards: every panel's SQL runs on real PostgreSQL and TimescaleDB; push speaks Grafana's API."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import psycopg
from grafana_client import GrafanaApi

from dashboards.build import all_dashboards, panel_queries
from dashboards.provision import FOLDER_UID, datasource_body, provision
from park.db.migrate import migrate
from park.db.registry import sync_registry
from park.sitefile import parse_site
from tests.site_helpers import MINIMAL_SITE

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def expand_macros(sql: str, frm: datetime, to: datetime, sensors: list[int]) -> str:
    """What Grafana's PostgreSQL data source does with its macros and multi-value variables."""
    between = f"BETWEEN '{frm.isoformat()}' AND '{to.isoformat()}'"
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} {between}", sql)
    for name, values in (("district", ["'HM'"]), ("town", ["'LJ'"]), ("enterprise", ["'E001'"]),
                         ("sensor", [str(s) for s in sensors])):
        sql = sql.replace(f"${name}", ",".join(values))
    assert "$" not in sql, f"unexpanded macro left in {sql}"
    return sql


def test_every_panel_query_runs_on_both_databases(db_url: str) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await migrate(conn)
            park = await sync_registry(conn, parse_site(MINIMAL_SITE, environ={}))
            ids = [s.id for s in park.sensors]
            await conn.execute("INSERT INTO readings (ts, sensor_id, value) VALUES (%s, %s, 3.0)", (NOW, ids[0]))
            await conn.execute("INSERT INTO readings_1m (bucket, sensor_id, avg_value, n) VALUES (%s, %s, 3.0, 1)",
                               (NOW, ids[0]))
            await conn.execute(
                "INSERT INTO alarms (dedup_key, sensor_id, enterprise_code, tag, rule, severity, state, raised_at)"
                " VALUES ('k', %s, 'E001', 'LT-1001', 'threshold_hh', 'red', 'active_unacked', %s)", (ids[0], NOW))
            await conn.commit()
            results: dict[str, list[Any]] = {}
            for title, sql in panel_queries(all_dashboards()[0]):
                cur = await conn.execute(expand_macros(sql, NOW - timedelta(hours=1), NOW + timedelta(minutes=1), ids))
                results[title] = await cur.fetchall()
            assert results["红色预警（未关闭）"] == [(1,)]
            assert results["未关闭预警"][0][2] == "LT-1001"
            assert results["监测曲线（原始数据）"] == [(NOW, "LT-1001", 3.0)]
            assert results["enterprise"] == [("E001", "某某化工有限公司")]

    asyncio.run(go())


class _Grafana(BaseHTTPRequestHandler):
    """Answers the handful of Grafana HTTP API calls provisioning makes, checking them as Grafana would."""

    state: ClassVar[dict[str, Any]] = {}

    def _reply(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer tok":
            return self._reply(401, {"message": "Unauthorized"})
        if self.path == f"/api/folders/{FOLDER_UID}":
            return self._reply(200, self.state["folder"]) if "folder" in self.state else \
                self._reply(404, {"message": "folder not found"})
        if self.path.startswith("/api/datasources/name/"):
            return self._reply(404, {"message": "Data source not found"})
        self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/folders":
            self.state["folder"] = {"uid": body["uid"], "title": body["title"]}
            return self._reply(200, self.state["folder"])
        if self.path == "/api/datasources":
            assert body["type"] == "grafana-postgresql-datasource"
            self.state["datasource"] = body
            return self._reply(200, {"datasource": body, "id": 1})
        if self.path == "/api/dashboards/db":
            dash = body["dashboard"]
            if not (dash.get("uid") and dash.get("title") and isinstance(dash.get("panels"), list)):
                return self._reply(400, {"message": "bad dashboard"})
            self.state.setdefault("dashboards", []).append(body)
            return self._reply(200, {"uid": dash["uid"], "url": f"/d/{dash['uid']}", "status": "success"})
        self._reply(404, {"message": "not found"})


def test_push_creates_folder_datasource_and_dashboards() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Grafana)
    _Grafana.state = {}
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        api = GrafanaApi.from_url(f"http://127.0.0.1:{server.server_address[1]}", credential="tok")
        urls = provision(api, datasource_body("hazardwatch", "127.0.0.1:5432", "hw", "postgres", None))
        assert urls == ["/d/hazardwatch-park"]
        assert _Grafana.state["folder"]["uid"] == FOLDER_UID
        pushed = _Grafana.state["dashboards"][0]
        assert pushed["overwrite"] is True and pushed["folderUid"] == FOLDER_UID
        assert pushed["dashboard"]["timezone"] == "Asia/Shanghai"
        # a second push finds the folder and does not create it again
        provision(api)
        assert len(_Grafana.state["dashboards"]) == 2
    finally:
        server.shutdown()
        server.server_close()

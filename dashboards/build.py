"""The dashboards as Grafana JSON (schema of Grafana 10/11), generated rather than hand-kept."""

from __future__ import annotations

from typing import Any

DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "${datasource}"}
SEVERITY_COLOURS = {"red": "red", "orange": "orange", "yellow": "yellow", "blue": "blue"}

# Grafana macros used below: $__timeFilter(col), $__timeFrom(), $__timeTo(), $__interval, and the
# template variables $district, $town, $enterprise, $sensor (multi-value, all by default).
SCOPE = ("a.enterprise_code IN (SELECT code FROM units WHERE level = 'enterprise'"
         " AND code IN ($enterprise))")


def _target(sql: str, fmt: str = "table", ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "rawQuery": True, "editorMode": "code",
            "format": fmt, "rawSql": sql}


def _panel(pid: int, title: str, kind: str, grid: tuple[int, int, int, int], targets: list[dict[str, Any]],
           **extra: Any) -> dict[str, Any]:
    x, y, w, h = grid
    return {"id": pid, "title": title, "type": kind, "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets, **extra}


def _stat_severity(pid: int, sev: str, zh: str, x: int) -> dict[str, Any]:
    sql = (f"SELECT count(*) AS \"{zh}\" FROM alarms a WHERE a.state <> 'closed' AND a.severity = '{sev}'"
           f" AND {SCOPE}")
    return _panel(pid, f"{zh}预警（未关闭）", "stat", (x, 0, 6, 4), [_target(sql)],
                  fieldConfig={"defaults": {"color": {"mode": "fixed", "fixedColor": SEVERITY_COLOURS[sev]},
                                            "thresholds": {"mode": "absolute", "steps": [
                                                {"color": SEVERITY_COLOURS[sev], "value": None}]}},
                               "overrides": []},
                  options={"colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, sql: str, multi: bool = True) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": sql,
                "definition": sql, "refresh": 1, "multi": multi, "includeAll": multi,
                "current": {"text": "All", "value": "$__all"} if multi else {}, "sort": 1}

    return [
        {"name": "datasource", "label": "数据源", "type": "datasource", "query": "grafana-postgresql-datasource",
         "current": {}, "hide": 0},
        query_var("district", "区", "SELECT code AS __value, name AS __text FROM units"
                  " WHERE level = 'district' AND retired_at IS NULL ORDER BY code"),
        query_var("town", "镇/街道", "SELECT code AS __value, name AS __text FROM units WHERE level = 'town'"
                  " AND retired_at IS NULL AND parent_code IN ($district) ORDER BY code"),
        query_var("enterprise", "企业", "SELECT code AS __value, name AS __text FROM units"
                  " WHERE level = 'enterprise' AND retired_at IS NULL AND parent_code IN ($town) ORDER BY code"),
        query_var("sensor", "监测点", "SELECT id AS __value, enterprise_code || ' ' || tag || ' ' || name AS __text"
                  " FROM sensors WHERE retired_at IS NULL AND enterprise_code IN ($enterprise) ORDER BY 2"),
    ]


def park_overview() -> dict[str, Any]:
    """园区总览: the wall screen — open alarms by colour, the alarm list, trends, gateways, ingest."""
    panels = [
        _stat_severity(1, "red", "红色", 0),
        _stat_severity(2, "orange", "橙色", 6),
        _stat_severity(3, "yellow", "黄色", 12),
        _stat_severity(4, "blue", "蓝色", 18),
        _panel(5, "未关闭预警", "table", (0, 4, 24, 10), [_target(
            "SELECT a.raised_at AS \"发生时间\", u.name AS \"企业\", a.tag AS \"位号\", s.name AS \"监测点\","
            " a.severity AS \"等级\", a.rule AS \"规则\", a.value AS \"数值\", a.limit_value AS \"限值\","
            " a.state AS \"状态\", a.escalation_level AS \"已通知至\", a.acked_by AS \"确认人\""
            " FROM alarms a LEFT JOIN sensors s ON s.id = a.sensor_id"
            " LEFT JOIN units u ON u.code = a.enterprise_code"
            f" WHERE a.state <> 'closed' AND {SCOPE}"
            " ORDER BY CASE a.severity WHEN 'red' THEN 4 WHEN 'orange' THEN 3 WHEN 'yellow' THEN 2 ELSE 1 END DESC,"
            " a.raised_at DESC LIMIT 200")]),
        _panel(6, "每小时预警数（ISA-18.2：每人每小时 ≤ 6 可接受，≥ 12 超负荷）", "barchart", (0, 14, 12, 8), [_target(
            "SELECT date_bin(INTERVAL '1 hour', a.raised_at, TIMESTAMPTZ 'epoch') AS time,"
            " count(*) FILTER (WHERE a.severity = 'red') AS \"红色\","
            " count(*) FILTER (WHERE a.severity = 'orange') AS \"橙色\","
            " count(*) FILTER (WHERE a.severity = 'yellow') AS \"黄色\","
            " count(*) FILTER (WHERE a.severity = 'blue') AS \"蓝色\""
            f" FROM alarms a WHERE $__timeFilter(a.raised_at) AND {SCOPE} GROUP BY 1 ORDER BY 1")],
            options={"stacking": "normal", "xTickLabelSpacing": 100}),
        _panel(7, "监测曲线（原始数据）", "timeseries", (12, 14, 12, 8), [_target(
            "SELECT r.ts AS time, s.tag AS metric, r.value FROM readings r JOIN sensors s ON s.id = r.sensor_id"
            " WHERE $__timeFilter(r.ts) AND r.sensor_id IN ($sensor) AND r.quality < 2 ORDER BY 1", "time_series")]),
        _panel(8, "监测趋势（1分钟汇总）", "timeseries", (0, 22, 12, 8), [_target(
            "SELECT m.bucket AS time, s.tag AS metric, m.avg_value AS value FROM readings_1m m"
            " JOIN sensors s ON s.id = m.sensor_id"
            " WHERE $__timeFilter(m.bucket) AND m.sensor_id IN ($sensor) ORDER BY 1", "time_series")]),
        _panel(9, "数据接入量（条/分钟）", "timeseries", (12, 22, 12, 8), [_target(
            "SELECT date_bin(INTERVAL '1 minute', r.ts, TIMESTAMPTZ 'epoch') AS time, count(*) AS \"条/分钟\""
            " FROM readings r WHERE $__timeFilter(r.ts) GROUP BY 1 ORDER BY 1", "time_series")]),
        _panel(10, "企业状态", "table", (0, 30, 24, 8), [_target(
            "SELECT u.name AS \"企业\", u.code AS \"代码\", t.name AS \"所属镇\", u.state AS \"生产状态\","
            " (SELECT count(*) FROM alarms a WHERE a.enterprise_code = u.code AND a.state <> 'closed')"
            " AS \"未关闭预警\","
            " (SELECT max(r.ts) FROM readings r JOIN sensors s ON s.id = r.sensor_id"
            "   WHERE s.enterprise_code = u.code AND r.ts > now() - INTERVAL '1 day') AS \"最近数据\""
            " FROM units u LEFT JOIN units t ON t.code = u.parent_code"
            " WHERE u.level = 'enterprise' AND u.retired_at IS NULL AND u.code IN ($enterprise) ORDER BY u.code")]),
    ]
    return {
        "uid": "hazardwatch-park",
        "title": "园区安全监测总览",
        "tags": ["hazardwatch"],
        "timezone": "Asia/Shanghai",
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "editable": True,
        "templating": {"list": _variables()},
        "panels": panels,
    }


def all_dashboards() -> list[dict[str, Any]]:
    return [park_overview()]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel or variable title, SQL) of every query in ``dashboard``: for tests and review."""
    out = [(p["title"], t["rawSql"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [(v["name"], v["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return out

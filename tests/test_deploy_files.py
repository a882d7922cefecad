"""The shipped deployments, checked statically (no Docker engine or cluster here): compose files parse
and name only files that exist; Kubernetes manifests parse with their kinds and required fields;
Prometheus rules pass the real promtool and its rule unit tests; Grafana provisioning parses and
matches the dashboards the code exports; the systemd unit has its watchdog."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import all_dashboards

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
RULES = DEPLOY / "prometheus" / "hazardwatch-rules.yml"


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


# --- Prometheus -------------------------------------------------------------------------------

def promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: `bash tests/run.sh` installs Debian's prometheus package for it"
    return tool


def test_prometheus_rules_pass_promtool() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_config_passes_promtool_with_the_rules_where_compose_mounts_them(tmp_path: Path) -> None:
    conf = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounts = _compose()["services"]["prometheus"]["volumes"]
    targets = {m.split(":")[1]: (COMPOSE.parent / m.split(":")[0]).resolve() for m in mounts if m.startswith(".")}
    for rf in conf["rule_files"]:
        assert rf in targets, f"{rf} is not mounted into the prometheus container"
        shutil.copy(targets[rf], tmp_path / Path(rf).name)
    conf["rule_files"] = [str(tmp_path / Path(rf).name) for rf in conf["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    r = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    scraped = {t for sc in conf["scrape_configs"] for g in sc["static_configs"] for t in g["targets"]}
    assert scraped == {f"{s}:8080" for s in _compose()["services"] if s.startswith("hazardwatch-")}


# Each case: input series (1-minute steps), when to look, and the alerts expected to fire then
# (their labels). The empty cases are the healthy park: nothing may fire.
ALERT_CASES: list[tuple[str, dict[str, str], str, str, list[dict[str, str]]]] = [
    ("one instance down", {'up{job="hazardwatch",instance="a:8080"}': "1 0 0 0 0",
                           'up{job="hazardwatch",instance="b:8080"}': "1 1 1 1 1"},
     "4m", "HazardwatchInstanceDown", [{"severity": "warning", "job": "hazardwatch", "instance": "a:8080"}]),
    ("both up", {'up{job="hazardwatch",instance="a:8080"}': "1x5", 'up{job="hazardwatch",instance="b:8080"}': "1x5"},
     "4m", "HazardwatchInstanceDown", []),
    ("all down", {'up{job="hazardwatch",instance="a:8080"}': "0x5", 'up{job="hazardwatch",instance="b:8080"}': "0x5"},
     "3m", "HazardwatchAllInstancesDown", [{"severity": "critical"}]),
    ("never scraped", {'up{job="other"}': "1x5"}, "3m", "HazardwatchAllInstancesDown",
     [{"severity": "critical", "job": "hazardwatch"}]),  # absent() keeps the job label
    ("one of two up", {'up{job="hazardwatch",instance="a:8080"}': "0x5",
                       'up{job="hazardwatch",instance="b:8080"}': "1x5"}, "3m", "HazardwatchAllInstancesDown", []),
    ("broker lost", {"hazardwatch_ingest_broker_connected": "1 0 0 0 0 0"}, "5m", "HazardwatchBrokerDisconnected",
     [{"severity": "critical"}]),
    ("broker up", {"hazardwatch_ingest_broker_connected": "1x6"}, "5m", "HazardwatchBrokerDisconnected", []),
    ("one of two brokers lost", {'hazardwatch_ingest_broker_connected{broker="mq-a:1883"}': "1x6",
                                 'hazardwatch_ingest_broker_connected{broker="mq-b:1883"}': "1 0 0 0 0 0"},
     "5m", "HazardwatchBrokerUnreachable", [{"severity": "warning", "broker": "mq-b:1883"}]),
    ("one of two brokers lost, the other carries on", {
        'hazardwatch_ingest_broker_connected{broker="mq-a:1883"}': "1x6",
        'hazardwatch_ingest_broker_connected{broker="mq-b:1883"}': "1 0 0 0 0 0"},
     "5m", "HazardwatchBrokerDisconnected", []),
    ("both brokers up", {'hazardwatch_ingest_broker_connected{broker="mq-a:1883"}': "1x6",
                         'hazardwatch_ingest_broker_connected{broker="mq-b:1883"}': "1x6"},
     "5m", "HazardwatchBrokerUnreachable", []),
    ("sync replica lost", {'hazardwatch_db_sync_replica_confirming{instance="a:8080"}': "1 0 0 0 0",
                           'hazardwatch_db_sync_replica_confirming{instance="b:8080"}': "1 0 0 0 0"},
     "4m", "HazardwatchSyncReplicaLost", [{"severity": "critical"}]),
    ("sync replica confirming", {"hazardwatch_db_sync_replica_confirming": "1x5"}, "4m", "HazardwatchSyncReplicaLost",
     []),
    ("nothing arrives", {"hazardwatch_ingest_messages_total": "100x20"}, "20m", "HazardwatchIngestStopped",
     [{"severity": "critical"}]),
    ("readings arrive", {"hazardwatch_ingest_messages_total": "100+60x20"}, "20m", "HazardwatchIngestStopped", []),
    ("storage failing", {"hazardwatch_ingest_readings_total": "0+600x15",
                         "hazardwatch_ingest_readings_stored_total": "500x15",
                         "hazardwatch_ingest_duplicate_readings_total": "0x15"},
     "15m", "HazardwatchStorageFailing", [{"severity": "critical"}]),
    ("storage fine", {"hazardwatch_ingest_readings_total": "0+600x15",
                      "hazardwatch_ingest_readings_stored_total": "0+600x15",
                      "hazardwatch_ingest_duplicate_readings_total": "0x15"},
     "15m", "HazardwatchStorageFailing", []),
    ("lagging", {"hazardwatch_ingest_lag_seconds": "900x15"}, "15m", "HazardwatchIngestLag", [{"severity": "warning"}]),
    ("fresh", {"hazardwatch_ingest_lag_seconds": "3x15"}, "15m", "HazardwatchIngestLag", []),
    ("outbox backlog", {"hazardwatch_alerting_outbox_pending": "80x15"}, "15m", "HazardwatchOutboxBacklog",
     [{"severity": "critical"}]),
    ("outbox draining", {"hazardwatch_alerting_outbox_pending": "3x15"}, "15m", "HazardwatchOutboxBacklog", []),
    ("sms undeliverable", {'hazardwatch_alerting_attempts_total{channel="sms",outcome="failed"}': "0+2x25",
                           'hazardwatch_alerting_attempts_total{channel="sms",outcome="sent"}': "40x25"},
     "25m", "HazardwatchUndeliverableMessages", [{"severity": "critical", "channel": "sms"}]),
    ("sms flaky but delivering", {'hazardwatch_alerting_attempts_total{channel="sms",outcome="failed"}': "0+2x25",
                                  'hazardwatch_alerting_attempts_total{channel="sms",outcome="sent"}': "0+1x25"},
     "25m", "HazardwatchUndeliverableMessages", []),
    ("contact unreachable", {"hazardwatch_alerting_unreachable_total": "0 0 0 1 1 1"}, "5m",
     "HazardwatchContactUnreachable", [{"severity": "warning"}]),
    ("contacts reached", {"hazardwatch_alerting_unreachable_total": "2x6"}, "5m", "HazardwatchContactUnreachable", []),
    ("stage degraded", {'hazardwatch_stage_degraded{stage="alerting"}': "1x10"}, "10m", "HazardwatchStageDegraded",
     [{"severity": "warning", "stage": "alerting"}]),
]


def test_alert_rules_fire_on_the_faults_they_name_and_stay_quiet_on_a_healthy_park(tmp_path: Path) -> None:
    # annotations are templated text (checked by `promtool check rules`); the unit tests compare labels
    rules = yaml.safe_load(RULES.read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {case[3] for case in ALERT_CASES} == alerts, "every shipped alert needs its unit test"
    tests = [{"name": name, "interval": "1m",
              "input_series": [{"series": s, "values": v} for s, v in series.items()],
              "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                   "exp_alerts": [{"exp_labels": labels} for labels in expected]}]}
             for name, series, at, alert, expected in ALERT_CASES]
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                                       "tests": tests}))
    r = subprocess.run([promtool(), "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --- Compose ------------------------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_compose_parses_and_names_only_files_that_exist() -> None:
    doc = _compose()
    services: dict[str, Any] = doc["services"]
    volumes = set(doc.get("volumes") or {})
    assert {"timescaledb", "mosquitto", "broker-config", "hazardwatch-a", "hazardwatch-b", "prometheus",
            "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: no image or build"
        if "build" in svc:
            ctx = (COMPOSE.parent / svc["build"]["context"]).resolve()
            assert (ctx / svc["build"]["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for m in svc.get("volumes") or []:
            src = m.split(":")[0]
            if src.startswith((".", "/")):
                assert (COMPOSE.parent / src).exists(), f"{name}: mounts {src}, which does not exist"
            else:
                assert src in volumes, f"{name}: named volume {src} is not declared"
        for f in svc.get("env_file") or []:
            assert (COMPOSE.parent / f).exists()
    # every variable compose insists on is in the example environment
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = set(re.findall(r"^(\w+)=", (COMPOSE.parent / "env.example").read_text(), re.M))
    assert required <= example, f"{required - example} missing from env.example"


def test_compose_broker_is_generated_secured_and_hazardwatch_uses_its_account() -> None:
    s = _compose()["services"]
    cmd = " ".join(s["broker-config"]["command"])
    assert "hazardwatch deploy mosquitto" in cmd and "--install-dir /mosquitto/config" in cmd
    assert s["mosquitto"]["ports"] == ["8883:8883"], "only the TLS listener may be published"
    for name in ("hazardwatch-a", "hazardwatch-b"):
        assert ". /broker/hazardwatch.env" in " ".join(s[name]["entrypoint"])
        assert s[name]["environment"]["HAZARDWATCH_MQTT_CLIENT_ID"] == "hazardwatch-park"


def test_dockerfile_copies_what_exists() -> None:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"


# --- Grafana ------------------------------------------------------------------------------------

def test_grafana_provisioning_parses_and_serves_the_exported_dashboards() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/hazardwatch.yaml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert {"name", "type", "access", "url"} <= set(source)
    exported = all_dashboards()
    kinds = {p["datasource"]["type"] for d in exported for p in d["panels"] if "datasource" in p}
    assert kinds == {source["type"]}
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/hazardwatch.yaml").read_text())
    [provider] = prov["providers"]
    assert prov["apiVersion"] == 1 and provider["type"] == "file"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in _compose()["services"]["grafana"]["volumes"]}
    assert provider["options"]["path"] in mounts
    folder = (COMPOSE.parent / mounts[provider["options"]["path"]]).resolve()
    shipped = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}
    assert shipped == {f"{d['uid']}.json": json.loads(json.dumps(d)) for d in exported}, (
        "deploy/grafana/dashboards is stale: hazardwatch dashboards export --out deploy/grafana/dashboards")
    # the variables the data source file uses are set on the grafana service
    env = _compose()["services"]["grafana"]["environment"]
    used = set(re.findall(r"\$\{(\w+)\}", (DEPLOY / "grafana/provisioning/datasources/hazardwatch.yaml").read_text()))
    assert used <= set(env)


# --- Kubernetes ---------------------------------------------------------------------------------

API = {"Namespace": "v1", "Service": "v1", "PersistentVolumeClaim": "v1", "ConfigMap": "v1", "Secret": "v1",
       "Deployment": "apps/v1", "StatefulSet": "apps/v1"}


def _manifests() -> list[dict[str, Any]]:
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in load_all(p)]
    assert docs
    return docs


def test_kubernetes_manifests_have_their_kinds_and_required_fields() -> None:
    docs = _manifests()
    workloads = []
    for d in docs:
        kind = d.get("kind")
        assert kind in API, f"unexpected kind {kind}"
        assert d.get("apiVersion") == API[kind], f"{kind} needs apiVersion {API[kind]}"
        assert d["metadata"].get("name"), f"{kind} without metadata.name"
        if kind != "Namespace":
            assert d["metadata"].get("namespace") == "hazardwatch"
        if kind in ("Deployment", "StatefulSet"):
            spec = d["spec"]
            sel, labels = spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]
            assert sel.items() <= labels.items(), f"{d['metadata']['name']}: selector does not match its pods"
            pod = spec["template"]["spec"]
            vols = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
            for c in pod["containers"]:
                assert c.get("name") and c.get("image")
                for vm in c.get("volumeMounts", []):
                    assert vm["name"] in vols, f"{c['name']} mounts undeclared volume {vm['name']}"
            if kind == "StatefulSet":
                assert spec["serviceName"]
            workloads.append(labels)
        if kind == "Service":
            assert d["spec"]["ports"] and all("port" in p for p in d["spec"]["ports"])
            sel = d["spec"]["selector"]
            assert any(sel.items() <= w.items() for w in workloads + [
                x["spec"]["template"]["metadata"]["labels"] for x in docs if x["kind"] in ("Deployment", "StatefulSet")
            ]), f"service {d['metadata']['name']} selects no pods"
        if kind == "PersistentVolumeClaim":
            assert d["spec"]["resources"]["requests"]["storage"]


def test_kubernetes_secrets_and_config_maps_are_the_ones_the_readme_creates() -> None:
    text = yaml.safe_dump_all(_manifests())
    named = set(re.findall(r"(?:secretName|name): (hazardwatch-[a-z]+)", text))
    refs = {n for n in named if n in text and n not in {"hazardwatch"}}
    readme = (DEPLOY / "kubernetes" / "README.md").read_text()
    made = set(re.findall(r"create (?:secret generic|configmap) (hazardwatch-[a-z]+)", readme))
    declared = {d["metadata"]["name"] for d in _manifests()}
    assert refs - declared <= made, f"referenced but never created: {refs - declared - made}"
    hw = next(d for d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "hazardwatch")
    assert hw["spec"]["replicas"] == 2


# --- systemd ------------------------------------------------------------------------------------

def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        assert current and "=" in line, f"{path.name}: bad line {line!r}"
        k, v = line.split("=", 1)
        sections[current].append((k, v))
    return sections


def test_systemd_unit_runs_the_service_under_a_watchdog() -> None:
    unit = _unit(DEPLOY / "systemd" / "hazardwatch.service")
    svc = dict(unit["Service"])
    assert svc["Type"] == "notify" and int(svc["WatchdogSec"]) > 0 and svc["Restart"] == "always"
    assert "hazardwatch run --config" in svc["ExecStart"]
    assert unit["Install"] == [("WantedBy", "multi-user.target")]
    env_files = [v for k, v in unit["Service"] if k == "EnvironmentFile"]
    assert "/etc/hazardwatch/hazardwatch.env" in env_files
    example = (DEPLOY / "systemd" / "hazardwatch.env.example").read_text()
    assert "HAZARDWATCH_DATABASE_URL=" in example
    drop = _unit(DEPLOY / "systemd" / "mosquitto.service.d" / "hazardwatch.conf")
    assert [v for k, v in drop["Service"] if k == "ExecStart"] == [
        "", "/usr/sbin/mosquitto -c /etc/mosquitto/hazardwatch/mosquitto.conf"]
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze missing (Debian's systemd package)")
    r = subprocess.run([tool, "verify", str(DEPLOY / "systemd" / "hazardwatch.service")], capture_output=True,
                       text=True)
    # the only complaint allowed on a build machine: the service is not installed here
    problems = [x for x in (r.stdout + r.stderr).splitlines() if x.strip() and "is not executable" not in x]
    assert problems == [], problems

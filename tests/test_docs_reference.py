"""docs/ is the repository's own: references generated from the code and current, every key and
metric explained, links that resolve, and nothing that points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from hazardwatch.cli import main as cli
from hazardwatch.reference import CODE_ROOT, stale
from hazardwatch.reference.metrics import find_metrics, without_note
from hazardwatch.reference.sitefile import undocumented

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_generated_references_match_the_code() -> None:
    old = stale(DOCS / "reference")
    assert old == [], f"docs/reference is stale ({', '.join(old)}): run `hazardwatch docs generate`"


def test_check_mode_fails_on_a_stale_reference(tmp_path: Path) -> None:
    assert cli(["docs", "generate", "--out", str(tmp_path)]) == 0
    assert cli(["docs", "generate", "--check", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "site-file.md").read_text(encoding="utf-8")
    (tmp_path / "site-file.md").write_text(text.replace("| `deadband` |", "| `dead_band` |"), encoding="utf-8")
    assert cli(["docs", "generate", "--check", "--out", str(tmp_path)]) == 1


def test_every_site_file_key_is_explained() -> None:
    assert undocumented() == [], "add a line to hazardwatch/reference/sitefile.py NOTES (or a Field description)"


def test_every_metric_says_what_healthy_looks_like() -> None:
    assert len(find_metrics(CODE_ROOT)) >= 20
    assert without_note(CODE_ROOT) == [], "add the metric to hazardwatch/reference/metrics.py HEALTHY"


def _markdown() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + sorted((REPO / "deploy").rglob("*.md"))


def test_links_in_docs_resolve_inside_the_repository() -> None:
    broken = []
    for md in _markdown():
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.exists() or REPO not in path.parents:
                broken.append(f"{md.relative_to(REPO)} → {target}")
    assert broken == []


def test_nothing_cites_a_file_outside_the_repository() -> None:
    offenders = []
    roots = [DOCS, REPO / "deploy", *(REPO / p for p in ("park", "ingest", "rules", "alerting", "hazardwatch",
                                                        "dashboards", "simulators"))]
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and f.suffix in (".md", ".py", ".yaml", ".yml", ".conf", ".html", ".sql", ".service"):
                text = f.read_text(encoding="utf-8", errors="replace")
                if re.search(r"\.\./shared|shared/CONTRACT|BENCHMARKS\.md|DOMAIN\.md|STYLE\.md", text):
                    offenders.append(str(f.relative_to(REPO)))
    assert offenders == []


def test_contract_sections_cited_in_code_exist_in_docs() -> None:
    contract = (DOCS / "contract.md").read_text(encoding="utf-8")
    have = set(re.findall(r"^## (\d+)\. ", contract, re.M))
    cited = set()
    for pkg in ("park", "ingest", "rules", "alerting", "hazardwatch"):
        for f in (REPO / pkg).rglob("*.py"):
            cited |= set(re.findall(r"(?:CONTRACT|docs/contract\.md) §(\d+)", f.read_text(encoding="utf-8")))
    assert cited and cited <= have, f"cited but missing from docs/contract.md: {cited - have}"


def test_guides_come_in_chinese_and_english() -> None:
    for name in ("gateway-guide", "operations"):
        zh = (DOCS / f"{name}.zh.md").read_text(encoding="utf-8")
        en = (DOCS / f"{name}.en.md").read_text(encoding="utf-8")
        assert re.search(r"[\u4e00-\u9fff]{20}", zh) and f"{name}.en.md" in zh and f"{name}.zh.md" in en
        assert len(re.findall(r"^## ", zh, re.M)) >= len(re.findall(r"^## ", en, re.M)) - 1


def test_gateway_guides_explain_every_reject_reason() -> None:
    from ingest.errors import RejectReason

    for guide in ("gateway-guide.zh.md", "gateway-guide.en.md"):
        text = (DOCS / guide).read_text(encoding="utf-8")
        missing = [r.value for r in RejectReason if f"| `{r.value}` |" not in text]
        assert missing == [], f"{guide}: add a row for {missing} to the table of rejections"

"""deploy/'s alert rules and Grafana dashboard, checked offline: their PromQL parses, and names
only metrics and labels that a worker exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from paylinks.jobs.queuestate import QueueState
from paylinks.worker import metrics
from paylinks.worker.monitor import QueueCollector, Scrape
from tests.helpers import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "paylinks.json"
# What Prometheus itself adds: `up` per target, `job` and `instance` on every series.
PROMETHEUS_OWN = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}
# Grafana's variables, which are not PromQL until Grafana fills them in.
GRAFANA_VARIABLES = re.compile(r"\$__(rate_interval|interval|range)\b")


def exported() -> dict[str, set[str]]:
    """Every sample name a worker's /metrics answers with, and its label names: each hook is
    called once, so that every labelled series has a child to show."""
    metrics.created(1, 201)
    metrics.created(1, None, metrics.RECONCILED)
    metrics.retried("timeout")
    metrics.failed("gave up after 8 attempts")
    with metrics.api_call("create") as call:
        call.status = 201
    metrics.RATELIMIT_WAIT.observe(0)
    queue = QueueCollector()
    queue.state = QueueState(
        due=1, deferred=1, running=1, dead_letters=1, oldest_due_age_s=1, open_batches=1, workers=1
    )
    text = generate_latest(Scrape(queue)).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def selectors(expr: Any) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched) of every selector in the expression."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(expr, visit)
    yield from found


def grouping_labels(expr: Any) -> set[str]:
    """Label names of every `by (...)` and `without (...)`."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.update(node.modifier.labels)

    promql_parser.walk(expr, visit)
    return found


def unknown_names(query: str, known: dict[str, set[str]]) -> list[str]:
    """What the query names that no worker exports: metrics, and labels of those metrics."""
    expr = promql_parser.parse(query)
    problems = []
    used: set[str] = set(TARGET_LABELS)
    for name, labels in selectors(expr):
        if name not in known:
            problems.append(f"metric {name}")
            continue
        used |= known[name]
        problems += [f"label {name}{{{label}}}" for label in labels - known[name] - TARGET_LABELS]
    problems += [f"grouping label {label}" for label in grouping_labels(expr) - used]
    return problems


@pytest.fixture(scope="module")
def known() -> dict[str, set[str]]:
    return {**exported(), **PROMETHEUS_OWN}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alert_rules_name_only_what_the_workers_export(known: dict[str, set[str]]) -> None:
    found = rules()
    assert {rule["alert"] for rule in found} >= {
        "PaylinksBacklogNotDraining",
        "PaylinksFailureRatioHigh",
        "PaylinksThrottled",
        "PaylinksDeadLettersGrowing",
    }
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert unknown_names(rule["expr"], known) == [], rule["alert"]


def dashboard_queries() -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], GRAFANA_VARIABLES.sub("5m", target["expr"])


def test_the_grafana_dashboard_names_only_what_the_workers_export(
    known: dict[str, set[str]],
) -> None:
    queries = list(dashboard_queries())
    assert len(queries) >= 10
    for title, query in queries:
        assert unknown_names(query, known) == [], title


def test_the_check_catches_a_name_the_workers_do_not_export(known: dict[str, set[str]]) -> None:
    assert unknown_names("sum(rate(paylinks_checkout_total[5m]))", known) == [
        "metric paylinks_checkout_total"
    ]
    assert unknown_names('max(paylinks_queue_jobs{batch="b1"})', known) == [
        "label paylinks_queue_jobs{batch}"
    ]
    assert unknown_names("sum by (token) (paylinks_api_requests_in_flight)", known) == [
        "grouping label token"
    ]
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(paylinks_checkouts_total[5m])")


def test_the_image_health_check_asks_the_workers_port() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^ENV PAYLINKS_METRICS_PORT=9464$", dockerfile, re.MULTILINE)
    assert re.search(r'^\s+CMD \["paylinks", "health"\]$', dockerfile, re.MULTILINE)
    assert "HEALTHCHECK " in dockerfile

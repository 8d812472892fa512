"""The alerting rules' check (.ci/alert_rules.py): what it refuses, and the shipped rules pass."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("alert_rules", ROOT / ".ci" / "alert_rules.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


alert_rules = _load()
SERIES: dict[str, frozenset[str]] = alert_rules.exported_series()
ANCHORS: set[str] = alert_rules.runbook_anchors((ROOT / "docs" / "operations.md").read_text())
SHIPPED: dict[str, Any] = yaml.safe_load(
    (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()
)


def _problems(expr: str) -> list[str]:
    return list(alert_rules.check_expression("rule", expr, SERIES))


def test_the_shipped_rules_pass() -> None:
    assert alert_rules.check_rules(SHIPPED, SERIES, ANCHORS) == []
    assert len(SHIPPED["groups"][0]["rules"]) >= 8


def test_series_are_read_from_the_metric_objects_with_their_labels() -> None:
    # A counter is exposed as _total, a histogram as _bucket (with `le`), _count and _sum.
    assert SERIES["conduit_http_requests_total"] == {"method", "route", "status"}
    assert SERIES["conduit_http_request_duration_seconds_bucket"] == {"method", "route", "le"}
    assert SERIES["conduit_http_request_duration_seconds_count"] == {"method", "route"}
    assert SERIES["conduit_webhook_deliveries_total"] == {"outcome"}
    assert SERIES["conduit_jobs_oldest_pending_age_seconds"] == {"kind"}
    assert "conduit_http_requests" not in SERIES


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(conduit_http_request_total[5m]) > 1", "series conduit_http_request_total is not"),
        ("conduit_jobs_pending{knd='x'} > 1", "conduit_jobs_pending has no label knd"),
        ("sum by (status) (conduit_jobs_pending) > 1", "groups by status, which no selected"),
        ("sum(rate(conduit_http_requests_total[5m]) > 1", "does not parse"),
        ("rat(conduit_http_requests_total[5m]) > 1", "does not parse"),
        ('{job="conduit-api"} == 0', "select series by name"),
    ],
)
def test_expressions_that_could_never_match_are_refused(expr: str, problem: str) -> None:
    problems = _problems(expr)
    assert len(problems) == 1
    assert problem in problems[0]


def test_known_series_labels_and_target_labels_pass() -> None:
    assert (
        _problems("sum by (job, le) (rate(conduit_webhook_delivery_duration_seconds_bucket[5m]))")
        == []
    )
    assert _problems('up{job="conduit-api", instance="a:9100"} == 0') == []


def _with(change: dict[str, Any], drop: tuple[str, ...] = ()) -> list[str]:
    document = copy.deepcopy(SHIPPED)
    rule = document["groups"][0]["rules"][0]
    for key in drop:
        rule.pop(key)
    for key, value in change.items():
        rule[key] = {**rule[key], **value} if isinstance(value, dict) else value
    return alert_rules.check_rules(document, SERIES, ANCHORS)


@pytest.mark.parametrize(
    ("change", "drop", "problem"),
    [
        ({}, ("for",), "`for` must be a duration"),
        ({"for": "ten minutes"}, (), "`for` must be a duration"),
        ({"labels": {"severity": "page"}}, (), "labels.severity must be one of"),
        ({"annotations": {"description": ""}}, (), "annotations.description missing"),
        ({"annotations": {"runbook_url": "docs/operations.md#nowhere"}}, (), "not a section"),
        ({"annotations": {"runbook_url": "docs/http.md#alerts"}}, (), "not a section"),
        ({"record": "conduit:x"}, (), "unknown keys ['record']"),
        ({}, ("expr",), "`expr` missing"),
        ({"alert": "Conduit down"}, (), "`alert` must be a metric-style name"),
    ],
)
def test_rules_missing_what_an_operator_needs_are_refused(
    change: dict[str, Any], drop: tuple[str, ...], problem: str
) -> None:
    problems = _with(change, drop)
    assert len(problems) == 1
    assert problem in problems[0]


def test_a_file_without_groups_is_refused() -> None:
    assert alert_rules.check_rules({"rules": []}, SERIES, ANCHORS) != []
    document = {"groups": [{"name": "a", "rules": []}, {"name": "a", "rules": [{}]}]}
    problems = alert_rules.check_rules(document, SERIES, ANCHORS)
    assert any("`rules` must be a non-empty list" in p for p in problems)
    assert any("not unique" in p for p in problems)


def test_every_shipped_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.test.yaml").read_text())
    assert alert_rules.untested_alerts(SHIPPED, tests) == []
    for test in tests["tests"]:
        cases = test["alert_rule_test"]
        test["alert_rule_test"] = [c for c in cases if c["alertname"] != "ConduitCacheErrors"]
    assert alert_rules.untested_alerts(SHIPPED, tests) == [
        "alerts: ConduitCacheErrors: no unit test in alerts.test.yaml"
    ]

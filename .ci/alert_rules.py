"""Check the Prometheus alerting rules (deploy/prometheus/alerts.yaml) against the service.

A rule file that Prometheus accepts can still never fire: a misspelt series or label matches
nothing, silently. So besides the structure (groups, rules, `alert`, `expr`, `for`, a
`severity` label, `summary`, `description` and `runbook_url` annotations) every expression is
parsed (promql-parser) and each series it selects must be one the service exports, each label
it matches or groups by one that series carries. The exported series are read from the
metric objects themselves, after importing the API's and the job worker's module graphs, so a
renamed metric fails here. Each runbook_url must point at a section of docs/operations.md, and
each alert must have a unit test in alerts.test.yaml. Where promtool is installed, it checks
the file and runs those unit tests (synthetic series: the alert fires, or stays quiet).

Run by .ci/deploy_check.py; tests/test_alert_rules.py covers what it refuses.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_PATH = "docs/operations.md"
# The entry points whose imports define every series: `conduit serve` and `conduit worker`.
ENTRY_MODULES = ("service.app", "service.job_registry")
# What Prometheus adds itself: `up` for each target, and the target labels on every series.
SCRAPE_SERIES = {"up": frozenset[str]()}
TARGET_LABELS = frozenset({"job", "instance"})
SEVERITIES = frozenset({"critical", "warning", "info"})
RULE_KEYS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")
ALERT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The series a metric of each type exposes, as (suffix, extra label) pairs.
SAMPLE_SUFFIXES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "counter": (("_total", None), ("_created", None)),
    "gauge": (("", None),),
    "histogram": (("_bucket", "le"), ("_count", None), ("_sum", None), ("_created", None)),
    "summary": (("", "quantile"), ("_count", None), ("_sum", None), ("_created", None)),
    "info": (("_info", None),),
    "stateset": (("", None),),
    "enum": (("", None),),
}


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the service exports, with the label names it carries."""
    for name in ENTRY_MODULES:
        importlib.import_module(name)
    series: dict[str, frozenset[str]] = {}
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("service."):
            continue
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                # Label names are not in the public API; `_labelnames` has been stable for years.
                labels = frozenset(metric._labelnames)
                for family in metric.describe():
                    for suffix, extra in SAMPLE_SUFFIXES[family.type]:
                        series[family.name + suffix] = labels | ({extra} if extra else set())
    return series


def runbook_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of `markdown`."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.+?)\s*#*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match[1].lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def check_expression(where: str, expr: str, series: dict[str, frozenset[str]]) -> Iterable[str]:
    """Parse `expr`; name what it selects that the service does not export."""
    try:
        tree = promql_parser.parse(expr)
    except ValueError as exc:
        yield f"{where}: expr does not parse: {exc}"
        return
    known = {**SCRAPE_SERIES, **series}
    selected: list[promql_parser.VectorSelector] = []
    groupings: list[list[str]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selected.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.append(node.modifier.labels)

    promql_parser.walk(tree, visit)
    labels_in_play = set(TARGET_LABELS)
    for selector in selected:
        if selector.name is None:
            yield f"{where}: select series by name, not by labels alone: {selector}"
            continue
        if selector.name not in known:
            yield f"{where}: series {selector.name} is not exported by the service"
            continue
        carried = known[selector.name] | TARGET_LABELS
        labels_in_play |= carried
        for matcher in selector.matchers.matchers:
            if matcher.name not in carried:
                yield f"{where}: {selector.name} has no label {matcher.name}"
    for labels in groupings:
        for label in labels:
            if label not in labels_in_play:
                yield f"{where}: groups by {label}, which no selected series carries"


def check_rule(
    where: str, rule: Any, series: dict[str, frozenset[str]], anchors: set[str]
) -> Iterable[str]:
    """Structure, expression, labels and annotations of one alerting rule."""
    if not isinstance(rule, dict):
        yield f"{where}: a rule must be a mapping"
        return
    unknown = set(rule) - RULE_KEYS
    if unknown:
        yield f"{where}: unknown keys {sorted(unknown)} (alerting rules only)"
    if not ALERT_NAME.fullmatch(str(rule.get("alert", ""))):
        yield f"{where}: `alert` must be a metric-style name"
    expr = rule.get("expr")
    if isinstance(expr, str) and expr.strip():
        yield from check_expression(where, expr, series)
    else:
        yield f"{where}: `expr` missing"
    # Required: without `for`, a single sample over the threshold fires.
    for key in {"for"} | ({"keep_firing_for"} & set(rule)):
        try:
            promql_parser.parse_duration(str(rule.get(key, "")))
        except ValueError:
            yield f"{where}: `{key}` must be a duration such as 5m"
    labels = rule.get("labels")
    if not isinstance(labels, dict) or labels.get("severity") not in SEVERITIES:
        yield f"{where}: labels.severity must be one of {sorted(SEVERITIES)}"
    annotations = rule.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    for key in REQUIRED_ANNOTATIONS:
        if not str(annotations.get(key, "")).strip():
            yield f"{where}: annotations.{key} missing"
    runbook = str(annotations.get("runbook_url", ""))
    path, _, anchor = runbook.partition("#")
    if runbook and (path != RUNBOOK_PATH or anchor not in anchors):
        yield f"{where}: runbook_url {runbook} is not a section of {RUNBOOK_PATH}"


def check_rules(document: Any, series: dict[str, frozenset[str]], anchors: set[str]) -> list[str]:
    """Every problem of a parsed rule file."""
    groups = document.get("groups") if isinstance(document, dict) else None
    if not isinstance(groups, list) or not groups:
        return ["alerts: a rule file is a mapping with a non-empty `groups` list"]
    problems: list[str] = []
    names: set[str] = set()
    for index, group in enumerate(groups):
        group = group if isinstance(group, dict) else {}
        name = group.get("name")
        rules = group.get("rules")
        if not isinstance(name, str) or not name or name in names:
            problems.append(f"alerts: group {index}: `name` missing or not unique")
        names.add(str(name))
        if not isinstance(rules, list) or not rules:
            problems.append(f"alerts: group {name}: `rules` must be a non-empty list")
            continue
        for position, rule in enumerate(rules):
            alert = rule.get("alert") if isinstance(rule, dict) else None
            where = f"alerts: {name}/{alert or position}"
            problems += check_rule(where, rule, series, anchors)
    return problems


def untested_alerts(document: Any, tests: Any) -> list[str]:
    """Alerts of the rule file that no unit test of `tests` evaluates."""
    alerts = {rule.get("alert") for group in document.get("groups", []) for rule in group["rules"]}
    tested = {
        case.get("alertname") for test in tests.get("tests", []) for case in test["alert_rule_test"]
    }
    return [f"alerts: {alert}: no unit test in {RULE_TESTS.name}" for alert in alerts - tested]


def run_promtool() -> list[str]:
    """`promtool check rules` and `promtool test rules`, where promtool is installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            # .ci/run installs it: in CI, its absence is a failure, not a reason to skip.
            return ["promtool not installed (Debian: prometheus): .ci/run installs it"]
        print("  promtool not installed (Debian: prometheus): its check and unit tests skipped")
        return []
    problems = []
    for command in (["check", "rules", RULES], ["test", "rules", RULE_TESTS]):
        done = subprocess.run(
            [promtool, *map(str, command)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            problems.append(f"alerts: promtool {command[0]} failed:\n{done.stdout}{done.stderr}")
    print("  promtool: rules checked, unit tests run")
    return problems


def check_alert_rules() -> list[str]:
    """Check deploy/prometheus/alerts.yaml and its unit tests; return the problems found."""
    document = yaml.safe_load(RULES.read_text())
    anchors = runbook_anchors(RUNBOOK.read_text())
    problems = check_rules(document, exported_series(), anchors)
    if not problems:
        problems += untested_alerts(document, yaml.safe_load(RULE_TESTS.read_text()))
        problems += run_promtool()
    count = sum(len(group.get("rules", [])) for group in document.get("groups", []))
    print(f"  {RULES.relative_to(ROOT)}: {count} alerting rules")
    return problems

"""``examples/reference_service/ops``: what the compose file mounts exists, Prometheus and
promtool accept the config and rules, every expression names a metric the service exports,
and the Grafana dashboard is a dashboard model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI
from tests.reference_service.conftest import Harness

OPS = Path(__file__).resolve().parents[2] / "examples" / "reference_service" / "ops"
DASHBOARD = OPS / "grafana" / "dashboards" / "bastion-service.json"
METRIC = re.compile(r"\b(bastion_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((OPS / "docker-compose.yml").read_text())
    return loaded


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian: apt-get download prometheus; dpkg -x)"
        if IN_CI:
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)
    return found


def expressions() -> list[str]:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


def test_every_file_the_compose_file_mounts_exists() -> None:
    """Volumes, build contexts and Dockerfiles resolve from the compose file's folder."""
    services = compose()["services"]
    assert {"api", "worker", "redis", "postgres", "prometheus", "grafana"} <= services.keys()
    checked = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith("./"), f"{name}: {volume} is not a file of ops/"
            assert (OPS / source).exists(), f"{name} mounts {source}, which does not exist"
            checked += 1
        build = service.get("build")
        if build:
            context = OPS / build["context"]
            assert context.is_dir(), name
            assert (context / build["dockerfile"]).is_file(), name
            assert (context / "pyproject.toml").is_file(), name
    assert checked >= 5
    assert services["api"]["environment"]["BASTION_MODE"] == "real"


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    """`promtool check config` (which follows rule_files) and `promtool check rules` pass."""
    tool = promtool()
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        done = subprocess.run(
            [tool, *args], cwd=OPS, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert alerts == {
        "DeadLetterQueueGrowing",
        "LedgerUnbalanced",
        "HighServerErrorRatio",
        "HighRateLimitedRatio",
        "StoreErrors",
    }


@pytest.mark.anyio
async def test_every_expression_names_a_metric_the_service_exports(harness: Harness) -> None:
    """Scrape the running service: each name in a rule or a panel is one of its families."""
    await harness.client.get("/healthz")
    text = (await harness.client.get("/metrics")).text
    exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    exported |= {name.removesuffix("_total") for name in exported}
    used: set[str] = set()
    for expr in expressions():
        for name in METRIC.findall(expr):
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name.removesuffix(suffix) in exported:
                    name = name.removesuffix(suffix)
            used.add(name)
    assert used, "no metric found in the expressions"
    missing = sorted(name for name in used if name not in exported)
    assert not missing, f"not exported by the service: {missing}"
    assert {"bastion_service_dlq_jobs", "bastion_service_queue_jobs"} <= used


def test_the_dashboard_is_a_grafana_dashboard_model() -> None:
    """uid, title, schemaVersion, panels with unique ids, grid positions and PromQL targets."""
    model = json.loads(DASHBOARD.read_text())
    assert isinstance(model["uid"], str)
    assert model["uid"]
    assert model["title"]
    assert isinstance(model["schemaVersion"], int)
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"].lower() for panel in model["panels"])
    for wanted in (
        "request rate",
        "p95",
        "429",
        "replays",
        "queue depth",
        "dlq",
        "ledger",
        "relayer",
    ):
        assert wanted in titles, wanted
    for panel in model["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table"}
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip()

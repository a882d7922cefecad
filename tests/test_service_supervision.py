"""A bug in one stage is logged with its traceback and that stage restarted; the service goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from hazardwatch.service import ServiceError, degraded_gauge, supervise
from park.health import Health


def test_a_failing_stage_is_restarted_with_its_traceback_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    health, registry = Health(), CollectorRegistry()
    degraded_gauge(registry, health)
    runs: list[int] = []
    healthy = asyncio.Event()

    async def stage() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise KeyError("a bug in the stage")
        health.ok("alerting")
        healthy.set()
        await asyncio.Event().wait()

    async def go() -> None:
        task = asyncio.create_task(supervise("alerting", stage, health, restart_min=0.01))
        await asyncio.wait_for(healthy.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="hazardwatch"):
        asyncio.run(go())
    assert len(runs) == 3 and health.stages["alerting"].restarts == 2
    failures = [r for r in caplog.records if "stage alerting failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info and r.exc_info[0] is KeyError for r in failures)
    assert registry.get_sample_value("hazardwatch_stage_degraded", {"stage": "alerting"}) == 0


def test_a_stage_degraded_shows_in_the_metric() -> None:
    health, registry = Health(), CollectorRegistry()
    degraded_gauge(registry, health)
    health.degraded("rules", "database unavailable")
    assert registry.get_sample_value("hazardwatch_stage_degraded", {"stage": "rules"}) == 1
    health.ok("rules")
    assert registry.get_sample_value("hazardwatch_stage_degraded", {"stage": "rules"}) == 0


def test_a_configuration_error_ends_the_service() -> None:
    async def stage() -> None:
        raise ServiceError("HTTP API could not listen")

    with pytest.raises(ServiceError):
        asyncio.run(supervise("http", stage, Health(), fatal=(ServiceError,), restart_min=0.01))

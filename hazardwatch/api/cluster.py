"""``GET /api/v1/cluster``: leader, standbys, lease, instances, database — for the duty room.

Mounted with one line: ``app.include_router(cluster_router(principal))``, where ``principal`` is
the API's token dependency. Uses ``request.app.state.pool``.
"""

# No `from __future__ import annotations`: FastAPI must see the route's dependency, a local of
# cluster_router, as an object rather than a string it cannot resolve.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request

from hazardwatch.api.auth import PARK_UNIT, Principal
from park.db.cluster import ClusterStatus, cluster_status


def cluster_router(principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/api/v1/cluster", response_model=ClusterStatus, summary="Cluster status",
                description="Which instance leads (fencing epoch, lease age), which stand by, each instance's "
                            "heartbeat, brokers and stages, and the database: primary or replica, replicas streaming "
                            "from it, connections. Only for the park's duty room (a `park` token).")
    async def cluster(request: Request, p: Annotated[Principal, Depends(principal)]) -> Any:
        if p.unit != PARK_UNIT:
            raise HTTPException(403, f"cluster status is for the park's duty room; unit {p.unit} cannot see it")
        try:
            async with request.app.state.pool.connection(timeout=5) as conn:
                return await cluster_status(conn)
        except psycopg.Error:
            raise HTTPException(503, "the database is not reachable; cluster status unknown",
                                headers={"Retry-After": "5"}) from None

    return router

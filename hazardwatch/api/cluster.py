"""``GET /api/v1/cluster``: leader, standbys, lease, instances, database — for the duty room.

Mounted by ``create_app`` on every instance. The database
being away is answered 503 by the application's error mapping.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from hazardwatch.api.auth import PARK_UNIT
from hazardwatch.api.context import Auth, Ctx
from park.db.cluster import ClusterStatus, cluster_status

router = APIRouter(tags=["ops"])


@router.get("/api/v1/cluster", response_model=ClusterStatus, summary="Cluster status",
            responses={403: {"description": "not a duty-room (park) token"}, 503: {"description": "database away"}})
async def cluster(p: Auth, ctx: Ctx) -> ClusterStatus:
    """Which instance leads (fencing epoch, lease age), which stand by, each instance's heartbeat,
    brokers and stages, and the database: primary or replica, replicas streaming from it,
    connections by application. Only for the park's duty room (a `park` token)."""
    if p.unit != PARK_UNIT:
        raise HTTPException(403, f"cluster status is for the park's duty room; unit {p.unit} cannot see it")
    async with ctx.pool.connection(timeout=5) as conn:
        return await cluster_status(conn)

"""Promoting a PostgreSQL streaming replica to primary after the primary is lost.

`capstan db promote URL` runs `pg_promote()` on the replica at URL and waits until it accepts
writes. Capstan processes whose CAPSTAN_DATABASE_URL lists both servers with
`target_session_attrs=read-write` reach it on their next connection: until then every request
that needs the database answers 503 with Retry-After (api/problems.py), and nothing is lost
that was acknowledged, provided the primary replicated synchronously (docs/deployment.md,
"Promoting a replica").
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from capstan.db.engine import create_engine


@dataclass(frozen=True)
class Promotion:
    """What `promote` found and did."""

    promoted: bool  # False: the server was already a primary
    timeline: int


async def promote(url: str, *, wait_seconds: int = 60) -> Promotion:
    """Promote the replica at `url` (a single server); a primary already is left alone."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            in_recovery = (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar_one()
            if in_recovery:
                done = (
                    await conn.execute(
                        text("SELECT pg_promote(true, :wait)"), {"wait": wait_seconds}
                    )
                ).scalar_one()
                if not done:
                    raise TimeoutError(f"the replica was not promoted within {wait_seconds} s")
            timeline = (
                await conn.execute(text("SELECT timeline_id FROM pg_control_checkpoint()"))
            ).scalar_one()
        return Promotion(promoted=bool(in_recovery), timeline=int(timeline))
    finally:
        await engine.dispose()

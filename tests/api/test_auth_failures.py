"""Failed authentication is rate limited per client address, in both modes."""

from __future__ import annotations

import random

import httpx

from tests.conftest import Api, start_api


def client_from(api: Api, address: str, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app_, client=(address, 40000)),  # type: ignore[arg-type]
        base_url="http://capstan.test",
        headers=headers,
    )


def random_address() -> str:
    return "10." + ".".join(str(random.randrange(256)) for _ in range(3))


async def test_an_address_over_its_failure_limit_gets_429_even_with_a_good_key(api: Api) -> None:
    # One failure a minute sustained, three at once: the fourth within the minute is refused.
    settings = api.container.settings.model_copy(
        update={"auth_failures_per_minute": 1, "auth_failures_burst": 3}
    )
    limited = await start_api(settings)
    # Production tests share one Redis: an address of this test's own.
    attacker, bystander = random_address(), random_address()
    try:
        tenant = await limited.tenant()
        async with client_from(limited, attacker, tenant.key) as good:
            # Successes never count: ten of them leave the whole failure budget.
            assert [(await good.get("/v1/documents")).status_code for _ in range(10)] == [200] * 10
        async with client_from(limited, attacker, "cst_0123456789abcdef_wrong") as bad:
            codes = [(await bad.get("/v1/documents")).status_code for _ in range(4)]
            refused = await bad.get("/v1/documents")
        async with client_from(limited, attacker, tenant.key) as good:
            blocked = await good.get("/v1/documents")
        async with client_from(limited, bystander, tenant.key) as other:
            unaffected = await other.get("/v1/documents")
    finally:
        await limited.container.close()

    assert codes == [401, 401, 401, 429]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert "failed authentications" in refused.json()["detail"]
    assert blocked.status_code == 429
    assert unaffected.status_code == 200

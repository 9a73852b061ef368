"""/docs and /redoc work without internet: every script and stylesheet comes from this API."""

from __future__ import annotations

import re

from tests.conftest import Api


async def test_docs_pages_load_their_assets_from_the_api_itself(api: Api) -> None:
    async with api.client() as http:
        for page in ("/docs", "/redoc"):
            html = (await http.get(page)).text
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
            assert assets, page
            assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
            for asset in assets:
                got = await http.get(asset)
                assert got.status_code == 200 and len(got.content) > 1000, asset
        swagger = (await http.get("/docs")).text
        spec = (await http.get("/openapi.json")).json()
    assert "'/openapi.json'" in swagger or '"/openapi.json"' in swagger
    assert spec["openapi"].startswith("3.")

"""The cache contract's Lua scripts have one copy, src/capstan/cache/lua/ (docs/contracts/cache.md):
the Python adapters register exactly those files' text (the gateway's unit test checks its side),
and no Lua is written inline anywhere else."""

from __future__ import annotations

from pathlib import Path

from capstan.cache.redis import RedisCache, RedisLink, RedisRateLimitedReader, RedisRateLimiter

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "src" / "capstan" / "cache" / "lua"


def _text(script: str | bytes) -> str:
    return script.decode() if isinstance(script, bytes) else script


async def test_python_adapters_register_the_shared_files() -> None:
    link = RedisLink("redis://127.0.0.1:1")  # never connects: registering is local
    try:
        cache, limiter, reader = (
            RedisCache(link),
            RedisRateLimiter(link),
            RedisRateLimitedReader(link),
        )
        registered = {
            "cache_fill.lua": cache._fill.script,
            "cache_read.lua": cache._read.script,
            "cache_generation.lua": cache._generation.script,
            "cache_invalidate.lua": cache._invalidate.script,
            "rate_limit.lua": limiter._gcra.script,
            "rate_limited_read.lua": reader._script.script,
        }
    finally:
        await link.close()
    assert sorted(p.name for p in SHARED.glob("*.lua")) == sorted(registered)
    for name, script in registered.items():
        assert _text(script) == (SHARED / name).read_text(encoding="utf-8"), name


def test_gateway_reads_the_shared_files() -> None:
    # rate_limited_read.lua is the API's alone (its lean document read); the gateway's build
    # copies it along with the others.
    cache_ts = (ROOT / "gateway" / "src" / "cache.ts").read_text()
    for name in (
        "cache_fill.lua",
        "cache_read.lua",
        "cache_generation.lua",
        "cache_invalidate.lua",
        "rate_limit.lua",
    ):
        assert f"loadScript('{name}')" in cache_ts, name
    copy = (ROOT / "gateway" / "scripts" / "copy-lua.js").read_text()
    assert "'../../src/capstan/cache/lua'" in copy


def test_no_copy_of_the_scripts_elsewhere() -> None:
    """No source repeats a line of a shared script (the pair that used to drift apart)."""
    lines = {
        line.strip()
        for path in SHARED.glob("*.lua")
        for line in path.read_text().splitlines()
        if len(line.strip()) >= 30 and not line.lstrip().startswith("--")
    }
    sources = [*(ROOT / "src" / "capstan").rglob("*.py"), *(ROOT / "gateway" / "src").rglob("*.ts")]
    copies = [
        f"{path.relative_to(ROOT)}: {line}"
        for path in sources
        for line in lines
        if line in path.read_text()
    ]
    assert copies == [], f"Lua of {SHARED.relative_to(ROOT)} copied into sources: {copies}"

"""Signing, the address guard and the backoff schedule, without servers."""

from __future__ import annotations

import ipaddress

import pytest

from capstan.webhooks.address_guard import (
    AddressRefused,
    ResolutionFailed,
    is_blocked,
    pick_address,
    resolve,
)
from capstan.webhooks.dispatcher import MAX_DELAY_SECONDS, backoff_seconds
from capstan.webhooks.signing import sign, verify

SECRET = "whsec_test"
BODY = b'{"specversion":"1.0","id":"e1"}'


def test_sign_is_hmac_sha256_over_timestamp_and_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, BODY) == f"t=1700000000,v1={expected}"


def test_verify() -> None:
    header = sign(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, header, BODY, now=1_700_000_100)
    assert not verify(SECRET, header, BODY + b"x", now=1_700_000_100)
    assert not verify("whsec_other", header, BODY, now=1_700_000_100)
    # Outside the tolerance window (replay), either side.
    assert not verify(SECRET, header, BODY, now=1_700_000_301)
    assert not verify(SECRET, header, BODY, now=1_699_999_699)
    assert verify(SECRET, header, BODY, tolerance_seconds=600, now=1_700_000_500)
    # Rotation: any of several v1 signatures may match.
    other = sign("whsec_old", 1_700_000_000, BODY).split(",")[1]
    assert verify(SECRET, f"{header}, {other}", BODY, now=1_700_000_000)
    for bad in ("", "t=1700000000", "v1=abc", "t=x,v1=abc", "garbage", header.replace("v1", "v0")):
        assert not verify(SECRET, bad, BODY, now=1_700_000_000)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        # Every IPv6 range that embeds or translates to IPv4, and the special-purpose ones:
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:0808:0808::1",  # 6to4 even of a public IPv4: a relay decides where it lands
        "fec0::1",  # site-local
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8: the translator is inside the network
        "64:ff9b:1::a00:1",  # local-use translation prefix
        "::ffff:8.8.8.8",  # IPv4-mapped, even of a public address
        "::ffff:0:a00:1",  # IPv4-translated
        "::a00:1",  # IPv4-compatible
        "2001::1",  # Teredo
        "2001:db8::1",  # documentation
        "3fff::1",  # documentation
        "100::1",  # discard-only
        "5f00::1",  # SRv6
        "fe80::1%eth0",  # link-local with a zone
    ],
)
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))


async def test_pick_address_checks_every_resolved_address() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(AddressRefused, match=r"refused: 10\.0\.0\.7 is a private address"):
        await pick_address("example.test", 443, allow_private=False, resolver=mixed)
    assert await pick_address("example.test", 443, allow_private=True, resolver=mixed) == (
        "93.184.216.34"
    )
    # Literals are not resolved.
    assert await pick_address("1.1.1.1", 80, allow_private=False, resolver=mixed) == "1.1.1.1"
    with pytest.raises(AddressRefused):
        await pick_address("[::1]", 80, allow_private=False, resolver=mixed)


async def test_resolve_localhost_and_failure() -> None:
    assert set(await resolve("localhost", 80)) & {"127.0.0.1", "::1"}
    with pytest.raises(ResolutionFailed):
        await resolve("does-not-exist.invalid", 80)


def test_backoff_doubles_within_jitter_band_and_is_capped() -> None:
    assert backoff_seconds(2.0, 1, 0.0) == 1.0 and backoff_seconds(2.0, 1, 1.0) == 2.0
    assert backoff_seconds(2.0, 2, 0.0) == 2.0 and backoff_seconds(2.0, 2, 1.0) == 4.0
    assert backoff_seconds(2.0, 5, 1.0) == 32.0
    assert backoff_seconds(2.0, 40, 1.0) == MAX_DELAY_SECONDS
    assert backoff_seconds(2.0, 40, 0.0) == MAX_DELAY_SECONDS / 2

from capstan.cache.gcra import gcra


def test_a_fresh_key_allows_exactly_the_burst_then_refuses_with_a_retry_time() -> None:
    tat, now = 100.0, 100.0
    allowed = 0
    for _ in range(20):
        decision, tat = gcra(tat, now, rate_per_minute=60, burst=5)
        if not decision.allowed:
            assert 0 < decision.retry_after <= 1.0
            break
        allowed += 1
    assert allowed == 5


def test_capacity_returns_at_the_sustained_rate() -> None:
    tat, now = 0.0, 0.0
    for _ in range(3):
        _, tat = gcra(tat, now, rate_per_minute=60, burst=3)
    refused, _ = gcra(tat, now, 60, 3)
    assert not refused.allowed
    later, _ = gcra(tat, now + 1.0, 60, 3)
    assert later.allowed

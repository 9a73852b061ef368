"""Webhooks: tenants register URLs; every matching event is POSTed to them, signed.

Invariants:
- one delivery per (webhook, event): the notifier inserts it with INSERT ... ON CONFLICT DO
  NOTHING in the subscriber runtime's transaction, so a redelivered event adds nothing;
- a webhook only ever receives its own tenant's events, and only while it is active;
- every send is recorded as an attempt (status code or error, duration), in order;
- deliveries are at least once: a dispatcher that dies mid-send leaves the delivery pending and
  it is retried when its lease ends; receivers dedupe by `Capstan-Event-Id`;
- outbound requests go only to public addresses (unless `webhook_allow_private`), to the very
  address that was checked, with a timeout and without following redirects;
- the secret is returned once (at creation) and is never logged, nor is the URL.
"""

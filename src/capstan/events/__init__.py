"""Events: CloudEvents envelopes written to the outbox in the same transaction as the change."""

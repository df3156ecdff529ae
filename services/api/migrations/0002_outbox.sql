-- The transactional outbox. Every payment state change inserts its event here in the same
-- statement, and so the same transaction, as the change itself: an event exists exactly
-- when its change committed. The worker's relay moves unpublished rows to a Redis stream.
--
-- Relaying is two short sessions with the Redis call between them, never one session held
-- across it: the first leases a batch (`FOR UPDATE SKIP LOCKED`, so relays never lease
-- the same rows), the second marks the batch published. A relay that dies between the
-- two leaves its lease to expire, and the rows are published again; downstream dedups by
-- event_id, so a repeat is harmless and a loss is impossible.
CREATE TABLE outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid NOT NULL,
    account_id   uuid NOT NULL,
    payment_id   uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('created', 'succeeded', 'failed')),
    amount       bigint NOT NULL,
    currency     text NOT NULL,
    -- The payment's created_at for `created`, its updated_at for a settlement: the
    -- analytics totals for a range are then plain sums over `payments` for that range.
    occurred_at  timestamptz NOT NULL,
    -- W3C traceparent of the request that caused the change, when it carried one.
    traceparent  text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    leased_by    text,
    leased_until timestamptz,
    published_at timestamptz
);

-- Only unpublished rows are indexed, so the relay's scan stays as small as the backlog.
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

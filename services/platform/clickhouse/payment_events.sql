-- Payment events in ClickHouse: one row per outbox event, written by the worker.
--
-- How duplicates stay invisible. Delivery is at least once: a relay that dies after
-- publishing but before marking its batch published publishes it again, and a consumer
-- that dies after ClickHouse accepted a batch but before acknowledging it inserts the
-- batch again. Every copy of an event carries the same event_id, assigned once by
-- PostgreSQL in the transaction that made the change, and the same account_id and
-- occurred_at_us, so all copies share one sorting key.
--
-- 1. ReplacingMergeTree keeps one row per sorting key when it merges parts. That bounds
--    storage, but merges happen whenever ClickHouse chooses, so it is not relied on for
--    correctness.
-- 2. Every query reads the table through a `GROUP BY event_id` subquery (see
--    `platform::analytics`), which collapses copies that have not been merged yet. A count
--    is therefore a count of distinct events whatever the merge state, and `uniqExact
--    (event_id)` equals `count()` over that subquery.
--
-- Written for ClickHouse 18.16 (the version packaged here) and current releases alike:
-- no Map, JSON or DateTime64. Time is kept twice: occurred_at_us (microseconds since the
-- epoch, as PostgreSQL stores it) for exact ranges and buckets in UTC, and occurred_at
-- (seconds) for partitioning.

CREATE DATABASE IF NOT EXISTS {database};

CREATE TABLE IF NOT EXISTS {database}.payment_events (
    event_id       UUID,
    account_id     UUID,
    payment_id     UUID,
    kind           String,
    amount         Int64,
    currency       String,
    occurred_at_us Int64,
    occurred_at    DateTime,
    trace_id       String,
    inserted_at    DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at_us, event_id);

-- Accounts are tenants. An API key is `tsk_<key id>_<secret>`; only the key id (to find the
-- row) and a SHA-256 of the secret are stored.
CREATE TABLE accounts (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    plan         text NOT NULL DEFAULT 'standard',
    api_key_id   text NOT NULL UNIQUE,
    api_key_hash bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Payment ids are UUIDv7, so ordering by id is ordering by creation time: the keyset
-- pagination index below serves "newest first" without a separate timestamp sort.
CREATE TABLE payments (
    id                  uuid PRIMARY KEY,
    account_id          uuid NOT NULL REFERENCES accounts (id),
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description         text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    status              text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    processor_reference text,
    failure_reason      text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX payments_account_newest_first ON payments (account_id, id DESC);

-- One row per (account, Idempotency-Key). The key and its payment are inserted by one
-- statement; the reference to the payment is checked at commit, when both rows exist.
CREATE TABLE idempotency_keys (
    account_id   uuid NOT NULL REFERENCES accounts (id),
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    payment_id   uuid NOT NULL REFERENCES payments (id) DEFERRABLE INITIALLY DEFERRED,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);

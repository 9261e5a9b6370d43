-- Servers the worker provisions and deploys to (CONTRACT.md section 5), and
-- every job it ran, for idempotency and audit.

CREATE TABLE servers (
    handle             text PRIMARY KEY
                       CHECK (handle ~ '^[A-Za-z0-9._:-]{1,128}$'),
    public_ip          text NOT NULL,
    ssh_port           integer NOT NULL DEFAULT 22 CHECK (ssh_port BETWEEN 1 AND 65535),
    ssh_user           text NOT NULL DEFAULT 'root',
    ssh_key_ref        text NOT NULL,
    provider           text NOT NULL DEFAULT 'manual'
                       CHECK (provider IN ('time4vps', 'manual')),
    provider_server_id text NULL,
    status             text NOT NULL DEFAULT 'new'
                       CHECK (status IN ('new', 'provisioning', 'ready', 'unreachable',
                                         'reinstalling', 'recovering', 'failed')),
    last_error         text NULL,
    -- known_hosts lines pinned by the first successful provision; NULL
    -- until then or after an operator reset.
    host_key           text NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Host keys of deploy targets that are not registered servers, pinned on
-- first contact the same way.
CREATE TABLE host_keys (
    address    text NOT NULL,
    ssh_port   integer NOT NULL,
    host_key   text NOT NULL,
    pinned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (address, ssh_port)
);

CREATE TABLE jobs (
    kind          text NOT NULL CHECK (kind IN ('deploy', 'provision')),
    request_id    text NOT NULL,
    status        text NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    attempts      integer NOT NULL DEFAULT 1,
    worker        text NULL,
    entry_id      text NULL,
    target        text NULL,
    error_code    text NULL,
    result        jsonb NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz NULL,
    finished_at   timestamptz NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, request_id)
);

CREATE INDEX jobs_status_idx ON jobs (status, updated_at);

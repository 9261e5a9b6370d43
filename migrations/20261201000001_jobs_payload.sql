-- The job's payload as the worker parsed it (references, never values),
-- written when the ledger row is claimed; shown by the operator console.
-- NULL for jobs claimed before this column existed.
ALTER TABLE jobs ADD COLUMN payload jsonb NULL;

-- The console's listing: newest first, and the last hour's finished jobs.
CREATE INDEX jobs_created_idx ON jobs (created_at DESC);
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;

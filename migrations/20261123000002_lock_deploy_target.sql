-- What every deploy does first, in one round trip: wait for the target's
-- lock (the advisory lock `lock_server` takes), then read its pinned host
-- key. The lookup is a statement of its own inside a VOLATILE function, so
-- under READ COMMITTED it takes a fresh snapshot after the lock is granted
-- and sees a pin that the previous holder committed meanwhile; one plain
-- SELECT doing both would read with a snapshot from before the wait.
CREATE FUNCTION infra_lock_deploy_target(lock_key text, target_address text, target_port integer)
RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM pg_advisory_lock(hashtext(lock_key));
    -- A registered server's pin wins over a deploy-time pin of its address.
    RETURN (
        SELECT pins.host_key FROM (
            SELECT s.host_key, 0 AS rank FROM servers s
            WHERE s.public_ip = target_address AND s.ssh_port = target_port
              AND s.host_key IS NOT NULL
            UNION ALL
            SELECT h.host_key, 1 AS rank FROM host_keys h
            WHERE h.address = target_address AND h.ssh_port = target_port
        ) pins
        ORDER BY pins.rank
        LIMIT 1
    );
END
$$;

//! Every Lua script the queue code runs: steps that must check ownership
//! and act in one atomic step (a worker that lost an entry to another must
//! neither renew its lease nor publish its result), reads that must not
//! claim more than the free slots, and the operator's dead-letter paging
//! and replay.

use std::sync::LazyLock;

use redis::Script;

/// Renews the lease of entries this consumer still owns by claiming them to
/// itself (`XCLAIM ... 0 <id> JUSTID` resets the idle time without counting
/// a delivery). Returns the ids another consumer owns now.
///
/// An entry pending nowhere is lost only if it is still in the stream
/// (another worker acked it); gone with the data of a Redis restart that
/// kept none, it is nobody else's and its job goes on.
///
/// KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if ok and #p == 1 then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    else
      lost[#lost + 1] = id
    end
  elseif ok and #redis.call('XRANGE', KEYS[1], id, id) == 1 then
    lost[#lost + 1] = id
  end
end
return lost
",
    )
});

/// Publishes a result, copies a dead letter, and acks, only if this
/// consumer still owns the entry. Safe to retry after a lost reply.
///
/// An entry no longer pending was either finished already (its result key
/// exists, or for a dead letter alone, the entry is still in the stream: a
/// retry, or another worker) or lost its pending state with a Redis restart
/// that kept no data: then the result or dead letter is still written,
/// since someone waits for it, and there is nothing to ack.
///
/// With the result, the `job_finished` event that ends the job's progress
/// stream: one round trip for both (a tenth of the machine's CPU per job in
/// the dispatch benchmark was that second one).
///
/// KEYS[1] job stream, KEYS[2] result key, KEYS[3] result stream,
/// KEYS[4] dead-letter stream, KEYS[5] progress stream; ARGV[1] group,
/// ARGV[2] consumer, ARGV[3] entry id, ARGV[4] result JSON ('' for none),
/// ARGV[5] TTL secs, ARGV[6] stream MAXLEN, ARGV[7] `job_finished` event
/// JSON ('' for none), ARGV[8] progress stream TTL secs, ARGV[9] its
/// MAXLEN, ARGV[10..] dead-letter field/value pairs (none: no dead letter).
///
/// Returns 1 done, 0 already finished, -1 owned by another consumer.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not ok or #p == 0 then
  if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
  if ARGV[4] == '' and #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) == 1 then return 0 end
elseif p[1][2] ~= ARGV[2] then
  return -1
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'payload', ARGV[4])
end
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', 'payload', ARGV[7])
  redis.call('EXPIRE', KEYS[5], ARGV[8])
end
if #ARGV > 9 then
  local fields = {}
  for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
end
pcall(redis.call, 'XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
",
    )
});

/// Takes up to ARGV[3] new entries from the two queues, the first before
/// the second, and reads each queue's newest id, in one round trip (three
/// before, for every freed slot). Counts add up to at most ARGV[3], so no
/// entry is handed out that the worker has no slot for.
///
/// KEYS[1], KEYS[2] the queues in the order to serve them; ARGV[1] group,
/// ARGV[2] consumer, ARGV[3] free slots.
///
/// Returns, per queue: {newest id or '0-0', 'ok' or 'nogroup', entries}
/// with entries as `XRANGE` gives them.
pub static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local room = tonumber(ARGV[3])
local out = {}
for i = 1, 2 do
  local newest = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  local state, taken = 'ok', {}
  if room > 0 then
    local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], ARGV[2],
      'COUNT', room, 'STREAMS', KEYS[i], '>')
    if not ok then
      local message = type(reply) == 'table' and reply.err or tostring(reply)
      if string.find(message, 'NOGROUP', 1, true) ~= 1 then
        return redis.error_reply(message)
      end
      state = 'nogroup'
    elseif reply then
      taken = reply[1][2]
    end
  end
  room = room - #taken
  out[i] = {newest[1] and newest[1][1] or '0-0', state, taken}
end
return out
",
    )
});

/// The newest `ARGV[1]` entries of the dead-letter stream, each as
/// `{id, fields, payload_size}` with the payload cut to its first `ARGV[2]`
/// bytes (`payload_size` -1 when there is none), after the stream's length.
/// Trimming here keeps a page of 10 MB letters off the wire.
pub static DEAD_LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cap = tonumber(ARGV[2])
local out = {}
for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])) do
  local fields, size = entry[2], -1
  for i = 1, #fields, 2 do
    if fields[i] == 'payload' then
      size = string.len(fields[i + 1])
      fields[i + 1] = string.sub(fields[i + 1], 1, cap)
    end
  end
  out[#out + 1] = {entry[1], fields, size}
end
return {redis.call('XLEN', KEYS[1]), out}
",
    )
});

/// Moves dead letter `ARGV[1]` of `KEYS[1]` back onto its `stream`, which
/// must be `KEYS[2]` or `KEYS[3]` (the job queues): XADD of its exact
/// payload, then XDEL. A script rather than MULTI because the check must
/// read: two operators replaying one id at once get one replay and one
/// `unknown`, and a crash leaves the letter either moved or untouched.
pub static DEAD_REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return {'unknown'} end
local fields, stream, payload = found[1][2], nil, nil
for i = 1, #fields, 2 do
  if fields[i] == 'stream' then stream = fields[i + 1] end
  if fields[i] == 'payload' then payload = fields[i + 1] end
end
if payload == nil then return {'no_payload'} end
if stream ~= KEYS[2] and stream ~= KEYS[3] then return {'not_a_queue', stream or ''} end
local id = redis.call('XADD', stream, '*', 'payload', payload)
redis.call('XDEL', KEYS[1], ARGV[1])
return {'replayed', stream, id}
",
    )
});

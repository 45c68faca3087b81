-- The keys a cut writes, taken from KEYS at offset B (set before the include): ready, stats,
-- and the rec:* hashes a new record fills (events, info, attempt).
local k_ready, k_stats, k_events, k_info, k_attempt =
  KEYS[B + 1], KEYS[B + 2], KEYS[B + 3], KEYS[B + 4], KEYS[B + 5]

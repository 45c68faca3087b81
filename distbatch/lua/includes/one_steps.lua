-- accumulate_one's less common steps (an expired buffer, the cap, a cut), made at the first
-- that is needed: a closure made on every call costs, and most calls need none. Included where
-- each can first be needed; sets `steps`.
steps = steps or (function()
  local id_prefix = ARGV[3]
  -- @include cut_keys
  -- @include accept_steps
  local function report(kind, id, blob)
    local m = #out
    out[m + 1], out[m + 2], out[m + 3], out[m + 4] = 1, kind, id, blob
  end
  return {close_if_expired = close_if_expired, cut_full = cut_full, drop_oldest = drop_oldest,
          undo_push = undo_push, report = report}
end)()

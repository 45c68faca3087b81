-- `<binding>|<segment>` -> binding (the one place Lua splits a member; keys.py builds it); nil
-- for a member with no `|`, which distbatch never makes (a hostile writer's).
local function binding_of(member)
  local bar = string.find(member, '|', 1, true)
  return bar and string.sub(member, 1, bar - 1)
end

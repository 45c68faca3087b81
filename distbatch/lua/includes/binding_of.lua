-- `<binding>|<segment>` -> binding (the one place Lua splits a member; keys.py builds it).
local function binding_of(member)
  return string.sub(member, 1, string.find(member, '|', 1, true) - 1)
end

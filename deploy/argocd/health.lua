-- Argo CD health of an IncomingEmailServer or OutgoingEmailServer, from the
-- conditions mailroom writes: Stalled=True is Degraded (waiting will not fix
-- it), Ready=True is Healthy, a disabled server is Suspended, anything else
-- (Reconciling, not yet observed, connecting) is Progressing.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for mailroom to report status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for mailroom to observe generation " .. tostring(generation)
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local stalled, ready, reconciling = found["Stalled"], found["Ready"], found["Reconciling"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "") .. ": " .. (stalled.message or "")
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
elseif ready ~= nil and ready.reason == "Disabled" then
  hs.status = "Suspended"
  hs.message = ready.message or "Disabled"
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = (reconciling.reason or "") .. ": " .. (reconciling.message or "")
else
  hs.status = "Progressing"
  hs.message = (ready and ready.message) or "Waiting for Ready"
end
return hs

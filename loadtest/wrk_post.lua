-- wrk script: POST one image file as a raw body, then print one parseable JSON line.
--   wrk -t1 -c8 -d15s --latency -s loadtest/wrk_post.lua 'http://127.0.0.1:8000/classify' -- coffee.jpg [image/jpeg]
-- The file may also be given as the WRK_BODY_FILE environment variable, or several as WRK_BODY_FILES.
-- done() prints: WRK_JSON {"requests":..,"duration_us":..,"p50_us":..,"p99_us":..,"errors":{..}}

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

-- WRK_BODY_FILES (paths separated by ':') instead: each request posts the next of them in turn.
local bodies, next_body = {}, 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2] or "image/jpeg"
  local many = os.getenv("WRK_BODY_FILES")
  if many and many ~= "" then
    for path in string.gmatch(many, "[^:]+") do
      bodies[#bodies + 1] = wrk.format("POST", nil, nil, read_file(path))
    end
    return
  end
  local path = args[1] or os.getenv("WRK_BODY_FILE")
  assert(path, "give the image file after '--' or as WRK_BODY_FILE")
  wrk.body = read_file(path)
end

function request()
  if #bodies == 0 then
    return wrk.format()
  end
  next_body = next_body % #bodies + 1
  return bodies[next_body]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end

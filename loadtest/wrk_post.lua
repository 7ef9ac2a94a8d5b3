-- wrk script: POST one image file as a raw body, then print one parseable JSON line.
--   wrk -t1 -c8 -d15s --latency -s loadtest/wrk_post.lua 'http://127.0.0.1:8000/classify' -- coffee.jpg [image/jpeg]
-- The file may also be given as the WRK_BODY_FILE environment variable.
-- done() prints: WRK_JSON {"requests":..,"duration_us":..,"p50_us":..,"p99_us":..,"errors":{..}}

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  local path = args[1] or os.getenv("WRK_BODY_FILE")
  assert(path, "give the image file after '--' or as WRK_BODY_FILE")
  wrk.method = "POST"
  wrk.body = read_file(path)
  wrk.headers["Content-Type"] = args[2] or "image/jpeg"
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

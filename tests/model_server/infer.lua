-- wrk: POSTs an infer request of one text to the path given on wrk's command
-- line, and counts the answers by status (printed at the end as "status N count").
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["what a great film, i loved it"]}],"parameters":{"timeout":' .. (os.getenv("INFER_TIMEOUT_US") or "10000000") .. '}}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %d %d\n", status, n))
  end
  io.write(string.format("requests %d\n", summary.requests))
  io.write(string.format("latency_us p50 %d p99 %d\n", latency:percentile(50), latency:percentile(99)))
end

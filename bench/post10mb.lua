-- wrk script: POST a 10 MB body to .../echo; the response is the body echoed back.
-- "bytes_moved" counts bytes read, so MB/s here is the echo's download half.
wrk.method = "POST"
wrk.body = string.rep("x", 10000000)
wrk.headers["Content-Type"] = "application/octet-stream"
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "report.lua")

// The product behind the proxy, in another language: answers every request with its method,
// path and the headers it received, as JSON. Prints its port once listening.
"use strict";
const http = require("http");

const server = http.createServer((req, res) => {
  const body = JSON.stringify({ method: req.method, path: req.url, headers: req.headers });
  res.writeHead(200, { "Content-Type": "application/json",
                       "Content-Length": Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 60000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${server.address().port}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));

// A webhook receiver for the tests that checks each delivery with the standardwebhooks package
// (the specification's own JavaScript library: an implementation independent of gateway/webhooks.py).
// POST /__secret {"secret"} sets the endpoint secret; GET /__received lists what arrived:
// {id, timestamp, verified, error, body}. Every other POST is a delivery: 204 if it verifies, 400 if not.
const http = require("http");
const { Webhook } = require("standardwebhooks");

let secret = null;
const received = [];

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    if (req.url === "/__secret") {
      secret = JSON.parse(body).secret;
      res.writeHead(204).end();
      return;
    }
    if (req.url === "/__received") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(received));
      return;
    }
    const entry = { id: req.headers["webhook-id"], timestamp: req.headers["webhook-timestamp"], path: req.url,
                    verified: false, error: null, body };
    try {
      new Webhook(secret).verify(body, req.headers);
      entry.verified = true;
    } catch (err) {
      entry.error = String(err && err.message || err);
    }
    received.push(entry);
    res.writeHead(entry.verified ? 204 : 400).end();
  });
});

server.listen(Number(process.env.PORT), "127.0.0.1", () => process.stdout.write("listening\n"));

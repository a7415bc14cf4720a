/**
 * A lean HTTP/1.1 load generator for bench/serve.mjs: C keep-alive connections on raw
 * sockets, one request in flight per connection (no pipelining), answers read by their
 * Content-Length and thrown away unparsed. Against autocannon (whose JavaScript HTTP
 * parser spent about a core reading multi-megabyte answers at batch 32), it leaves the
 * two cores to the server. Latency: from writing a request to the last byte of its answer.
 *
 *   const r = await httpLoad({ url, path: '/forward', bodies, connections: 4, seconds: 5 });
 *   // { requests, requestsPerSecond, latencyMsP50, latencyMsP99, latencyMsMean, errors, non2xx, bytes, durationSeconds }
 *
 * `session: true`: each connection keeps a pattern-cache session (docs/serving.md,
 * "Sessions"): it sends X-Ghost-Session (its own id) and X-Ghost-Session-Seq (the seq of
 * the last answer), so the server sends rows it believes the client holds as ids. This
 * client does not verify or keep anything (it reads only the answer's seq): it measures
 * the server's side of a session, not a verifying client's.
 */
import { connect } from 'node:net';

const CRLF2 = Buffer.from('\r\n\r\n');

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export function httpLoad({ url, path, bodies, connections, seconds, headers = {}, session = false }) {
  const u = new URL(url);
  const extra = Object.entries({ 'content-type': 'application/octet-stream', ...headers }).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  const requests = bodies.map((b) => Buffer.concat([Buffer.from(`POST ${path} HTTP/1.1\r\nhost: ${u.host}\r\n${extra}content-length: ${b.length}\r\n\r\n`), b]));
  const sessionRequest = (i, id, seq) => {
    const b = bodies[i % bodies.length];
    return Buffer.concat([Buffer.from(`POST ${path} HTTP/1.1\r\nhost: ${u.host}\r\n${extra}x-ghost-session: ${id}\r\nx-ghost-session-seq: ${seq}\r\ncontent-length: ${b.length}\r\n\r\n`), b]);
  };
  let sessions = 0;
  const latencies = [];
  let errors = 0, non2xx = 0, bytes = 0, sent = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const one = () => new Promise((resolve) => {
    const sock = connect({ host: u.hostname, port: Number(u.port), noDelay: true });
    let head = Buffer.alloc(0);
    let left = -1; // body bytes still to come (-1: reading the head)
    let status = 0;
    let started = 0;
    const sessionId = `bench-${process.pid}-${sessions++}-${Math.random().toString(36).slice(2, 10)}`;
    let seq = 0;
    const next = () => {
      if (performance.now() >= end) {
        sock.end();
        resolve();
        return;
      }
      started = performance.now();
      sock.write(session ? sessionRequest(sent++, sessionId, seq) : requests[sent++ % requests.length]);
    };
    const done = () => {
      latencies.push(performance.now() - started);
      if (status < 200 || status > 299) non2xx++;
      left = -1;
      next();
    };
    sock.on('connect', next);
    sock.on('data', (chunk) => {
      let c = chunk;
      while (c.length > 0) {
        if (left < 0) {
          head = head.length === 0 ? c : Buffer.concat([head, c]);
          const at = head.indexOf(CRLF2);
          if (at < 0) return;
          const text = head.subarray(0, at).toString('latin1');
          status = Number(text.slice(9, 12));
          if (session) seq = Number(/\r\nx-ghost-session-seq: *(\d+)/i.exec(text)?.[1] ?? 0);
          const m = /\r\ncontent-length: *(\d+)/i.exec(text);
          if (!m) {
            errors++;
            sock.destroy();
            resolve();
            return;
          }
          left = Number(m[1]);
          c = head.subarray(at + 4);
          head = Buffer.alloc(0);
          bytes += left;
          if (left === 0) done();
          continue;
        }
        const take = Math.min(left, c.length);
        left -= take;
        c = c.subarray(take);
        if (left === 0) done();
      }
    });
    sock.on('error', () => {
      errors++;
      resolve();
    });
    sock.on('close', () => resolve());
  });
  return Promise.all(Array.from({ length: connections }, one)).then(() => {
    const duration = (performance.now() - t0) / 1000;
    const sorted = Float64Array.from(latencies).sort();
    const mean = latencies.reduce((s, x) => s + x, 0) / Math.max(1, latencies.length);
    return {
      requests: latencies.length,
      requestsPerSecond: latencies.length / duration,
      latencyMsP50: percentile(sorted, 50),
      latencyMsP99: percentile(sorted, 99),
      latencyMsMean: mean,
      errors: errors + non2xx,
      connectionErrors: errors,
      non2xx,
      bytes,
      durationSeconds: duration,
    };
  });
}

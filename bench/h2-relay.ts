/**
 * A reference for `npm run bench`: the smallest Node.js HBONE-like tunnel, with none of the agent's work (no
 * capture, policy, telemetry or transparent sockets): HTTP/2 CONNECT over mutual TLS 1.3 with the same windows as
 * the agent, and `pipe` both ways. It shows what Node's streams, HTTP/2 and TLS cost per hop on the machine at hand.
 *   client: --listen host:port=authority (repeatable) --connect host:port --dir D
 *   server: --listen host:port --dir D   (connects each stream to its :authority)
 * D holds ca.crt and the role's <role>.crt and <role>.key. Prints `ready` once listening.
 */
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { parseAuthority } from '../core/hbone/index.js';
import { address, pipeBoth } from './relay-util.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { listen: { type: 'string', multiple: true }, connect: { type: 'string' }, dir: { type: 'string' } },
});
const role = positionals[0];
if ((role !== 'client' && role !== 'server') || !values.dir || !values.listen?.length || (role === 'client' && !values.connect)) {
  process.stderr.write('usage: h2-relay client --listen host:port=authority... --connect host:port --dir D | server --listen host:port --dir D\n');
  process.exit(2);
}
const dir = values.dir;
const creds = {
  key: readFileSync(path.join(dir, `${role}.key`)),
  cert: readFileSync(path.join(dir, `${role}.crt`)),
  ca: readFileSync(path.join(dir, 'ca.crt')),
  minVersion: 'TLSv1.3' as const,
  ALPNProtocols: ['h2'],
};
const WINDOWS = { stream: 4 * 1024 * 1024, session: 16 * 1024 * 1024 };
if (role === 'server') {
  const server = http2.createSecureServer({ ...creds, requestCert: true, rejectUnauthorized: true, settings: { initialWindowSize: WINDOWS.stream } });
  server.on('secureConnection', (socket: tls.TLSSocket) => socket.setNoDelay(true));
  server.on('session', (session) => session.setLocalWindowSize(WINDOWS.session));
  server.on('stream', (stream, headers) => {
    const target = parseAuthority(headers[':authority']);
    if (!target) {
      stream.respond({ ':status': 400 }, { endStream: true });
      return;
    }
    const upstream = net.connect({ ...target, noDelay: true, allowHalfOpen: true }, () => {
      stream.respond({ ':status': 200 });
      pipeBoth(stream, upstream);
    });
    upstream.once('error', () => stream.close(http2.constants.NGHTTP2_CONNECT_ERROR));
  });
  const listen = address(values.listen[0] as string);
  server.listen(listen.port, listen.host, () => process.stdout.write('ready\n'));
} else {
  const peer = address(values.connect as string);
  const session = http2.connect(`https://${peer.host}:${peer.port}`, {
    settings: { initialWindowSize: WINDOWS.stream },
    createConnection: () => tls.connect({ ...peer, ...creds, checkServerIdentity: () => undefined }).setNoDelay(true),
  });
  session.on('error', (err) => {
    process.stderr.write(`h2-relay: ${err.message}\n`);
    process.exit(1);
  });
  session.once('connect', () => {
    session.setLocalWindowSize(WINDOWS.session);
    let pending = values.listen?.length ?? 0;
    for (const spec of values.listen ?? []) {
      const [listenText, authority] = spec.split('=') as [string, string];
      const listen = address(listenText);
      net
        .createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
          const stream = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
          stream.once('response', () => pipeBoth(socket, stream));
          socket.once('error', () => stream.close(http2.constants.NGHTTP2_CANCEL));
        })
        .listen(listen.port, listen.host, () => {
          if (--pending === 0) process.stdout.write('ready\n');
        });
    }
  });
}

/**
 * A reference for `npm run bench`: plain TCP relayed through Node.js, with `pipe` both ways and nothing else (no
 * TLS, no HTTP/2, no capture). Run on both nodes it makes the same two hops as the tunnels, so what it adds over
 * direct is what Node's event loop and streams alone cost there: the floor under any data path written for Node.
 *   --route listen-host:port=connect-host:port (repeatable). Prints `ready` once listening on every route.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';
import { address, pipeBoth } from './relay-util.js';

const { values } = parseArgs({ options: { route: { type: 'string', multiple: true } } });
const routes = (values.route ?? []).map((spec) => {
  const [listen, connect] = spec.split('=');
  if (listen === undefined || connect === undefined) throw new Error(`not listen=connect: ${spec}`);
  return { listen: address(listen), connect: address(connect) };
});
if (routes.length === 0) {
  process.stderr.write('usage: tcp-relay --route listen-host:port=connect-host:port...\n');
  process.exit(2);
}

let pending = routes.length;
for (const route of routes) {
  net
    .createServer({ noDelay: true, allowHalfOpen: true }, (socket) => {
      const upstream = net.connect({ ...route.connect, noDelay: true, allowHalfOpen: true });
      pipeBoth(socket, upstream);
    })
    .listen(route.listen.port, route.listen.host, () => {
      if (--pending === 0) process.stdout.write('ready\n');
    });
}

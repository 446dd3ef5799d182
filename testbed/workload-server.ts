/**
 * The application of a test pod, run inside the pod's network namespace:
 * - HTTP on --http (default 8080): answers every request with JSON naming the pod and the client address it saw;
 * - TCP echo on --echo (default 9000): writes back what it reads, and ends when the client ends.
 * Prints `listening` on stdout once both are bound, so the harness knows the pod is up.
 */
import http from 'node:http';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { name: { type: 'string', default: 'pod' }, http: { type: 'string', default: '8080' }, echo: { type: 'string', default: '9000' } },
});

const httpServer = http.createServer((req, res) => {
  let received = 0;
  req.on('data', (chunk: Buffer) => (received += chunk.length));
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ pod: values.name, client: req.socket.remoteAddress, clientPort: req.socket.remotePort, received }) + '\n');
  });
});
httpServer.keepAliveTimeout = 60_000;

const echoServer = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
});

let bound = 0;
const onListening = () => {
  if (++bound === 2) process.stdout.write('listening\n');
};
httpServer.listen(Number(values.http), '0.0.0.0', onListening);
echoServer.listen(Number(values.echo), '0.0.0.0', onListening);
const stop = () => {
  httpServer.close();
  echoServer.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

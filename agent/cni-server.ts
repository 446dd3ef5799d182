import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import net from 'node:net';
import { dirname } from 'node:path';
import {
  CNI_MESSAGE_LIMIT,
  CNI_PROTOCOL_VERSION,
  CniProtocolError,
  encodeCniMessage,
  parseCniRequest,
  type CniRequest,
  type CniResponse,
} from '../core/cni/index.js';
import { AmbitError, errnoCode } from '../core/errors/index.js';
import type { Logger } from '../core/log/index.js';

/** What the agent does for each request; a thrown CniProtocolError becomes its error response. */
export type CniRequestHandler = (request: CniRequest) => Promise<CniResponse>;

export interface CniServerOptions {
  path: string;
  handle: CniRequestHandler;
  log: Logger;
  /** A client has this long to send its request; then it is dropped (a stalled client never holds others up). */
  requestTimeoutMs?: number;
}

export const CNI_REQUEST_TIMEOUT_MS = 5_000;

/**
 * The agent's end of the CNI socket: a unix socket only root can open (mode 0600 in a 0700 folder), one JSON
 * request and one JSON response per connection. Each connection is independent: a client that connects and stalls
 * is dropped after its timeout, and meanwhile every other client is served.
 */
export class CniServer {
  readonly path: string;
  readonly #server: net.Server;
  readonly #options: CniServerOptions;
  readonly #sockets = new Set<net.Socket>();

  private constructor(options: CniServerOptions) {
    this.path = options.path;
    this.#options = options;
    this.#server = net.createServer((socket) => this.#serve(socket));
  }

  static async listen(options: CniServerOptions): Promise<CniServer> {
    const server = new CniServer(options);
    await server.#listen();
    return server;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#sockets) socket.destroy();
    await closed;
    await unlink(this.path).catch(() => undefined);
  }

  async #listen(): Promise<void> {
    const dir = dirname(this.path);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await removeStaleSocket(this.path);
    // bind() creates the socket file with the process umask: narrowed around the (synchronous) bind so the file
    // is never, even for a moment, connectable by anyone but root.
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) =>
        reject(new AmbitError('CNI_SOCKET_FAILED', `cannot listen on the CNI socket ${this.path}: ${err.message}`, { cause: err }));
      this.#server.once('error', onError);
      const umask = process.umask(0o177);
      try {
        this.#server.listen(this.path, () => {
          this.#server.off('error', onError);
          resolve();
        });
      } finally {
        process.umask(umask);
      }
    });
    await chmod(this.path, 0o600);
  }

  #serve(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    socket.on('error', () => undefined);
    const timeoutMs = this.#options.requestTimeoutMs ?? CNI_REQUEST_TIMEOUT_MS;
    socket.setTimeout(timeoutMs, () => {
      this.#options.log.warn({ timeoutMs }, 'CNI client sent no complete request in time; dropped');
      socket.destroy();
    });
    let received = '';
    let answered = false;
    const respond = (response: CniResponse) => {
      answered = true;
      socket.setTimeout(0);
      socket.end(encodeCniMessage(response));
    };
    const fail = (err: unknown) => {
      const protocolError = err instanceof CniProtocolError ? err : undefined;
      if (!protocolError) this.#options.log.error({ err }, 'CNI request failed');
      respond({
        version: CNI_PROTOCOL_VERSION,
        ok: false,
        error: {
          code: protocolError?.code ?? 'internal',
          message: err instanceof Error ? err.message : String(err),
          ...(protocolError?.supportedVersions ? { supportedVersions: protocolError.supportedVersions } : {}),
        },
      });
    };
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      if (answered) return;
      received += chunk;
      const newline = received.indexOf('\n');
      if (newline === -1 && received.length < CNI_MESSAGE_LIMIT) return;
      socket.pause();
      if (newline === -1 || newline >= CNI_MESSAGE_LIMIT) {
        fail(new CniProtocolError('bad-request', `request is longer than ${CNI_MESSAGE_LIMIT} bytes`));
        return;
      }
      let request: CniRequest;
      try {
        request = parseCniRequest(received.slice(0, newline));
      } catch (err) {
        this.#options.log.warn({ err: (err as Error).message }, 'malformed CNI request refused');
        fail(err);
        return;
      }
      // The runtime waits on this answer; the timeout now guards the handler, not the client.
      socket.setTimeout(0);
      this.#options.handle(request).then(respond, fail);
    });
    socket.once('end', () => {
      if (!answered && received.length > 0 && !received.includes('\n')) fail(new CniProtocolError('bad-request', 'request ended without a newline'));
    });
  }
}

/**
 * A socket file left by an agent that crashed is removed; a live agent's is not (two agents on one node would
 * split the pods between them), and neither is anything that is not a socket.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let stat;
  try {
    stat = await lstat(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) throw new AmbitError('CNI_SOCKET_FAILED', `${path} exists and is not a socket; remove it or choose another --run-dir`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new AmbitError('CNI_SOCKET_FAILED', `another agent is listening on ${path}; is a second agent running on this node?`);
  await unlink(path);
}

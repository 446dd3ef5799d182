/**
 * A plain HTTPS client for the API server double (node:https, no Kubernetes library): what the protocol tests see
 * on the wire, and a fixture that starts a double with a token and a kubeconfig and stops it when the test ends.
 */
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { request, type RequestOptions } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { ApiServer, type ApiServerOptions, type JsonObject } from '../../testbed/index.js';

export const ADMIN_TOKEN = 'admin-token-for-tests';

export interface Double {
  server: ApiServer;
  kubeconfig: string;
  dir: string;
  client: DoubleClient;
}

/** A double with an admin token and its kubeconfig in a fresh folder; both gone when `t` ends, pass or fail. */
export async function startDouble(t: Test, options: ApiServerOptions = {}): Promise<Double> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ambit-apiserver-'));
  const server = await ApiServer.start(options);
  t.teardown(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  server.addToken(ADMIN_TOKEN, { username: 'admin', groups: ['system:masters'] });
  const kubeconfig = path.join(dir, 'kubeconfig');
  await server.writeKubeconfig(kubeconfig, ADMIN_TOKEN);
  return { server, kubeconfig, dir, client: new DoubleClient(server.url, server.caPem, ADMIN_TOKEN) };
}

export interface Reply {
  status: number;
  body: JsonObject;
}

/** One watch stream read as events, line by line, as they arrive. */
export class WatchReader {
  readonly response: IncomingMessage;
  readonly #events: JsonObject[] = [];
  readonly #waiters: (() => void)[] = [];
  #ended = false;
  readonly ended: Promise<void>;

  constructor(response: IncomingMessage) {
    this.response = response;
    const lines = createInterface({ input: response });
    lines.on('line', (line) => {
      this.#events.push(JSON.parse(line) as JsonObject);
      this.#wake();
    });
    this.ended = new Promise((resolve) => {
      lines.on('close', () => {
        this.#ended = true;
        this.#wake();
        resolve();
      });
    });
  }

  /** The next event; rejects when the stream ends first. */
  async next(): Promise<JsonObject> {
    while (this.#events.length === 0) {
      if (this.#ended) throw new Error('the watch stream ended');
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    return this.#events.shift() as JsonObject;
  }

  /** The next `count` events. */
  async take(count: number): Promise<JsonObject[]> {
    const events: JsonObject[] = [];
    for (let i = 0; i < count; i++) events.push(await this.next());
    return events;
  }

  /** Events received and not taken yet. */
  get buffered(): readonly JsonObject[] {
    return this.#events;
  }

  close(): void {
    this.response.destroy();
  }

  #wake(): void {
    for (const waiter of this.#waiters.splice(0)) waiter();
  }
}

export class DoubleClient {
  readonly #url: URL;
  readonly #ca: string;
  readonly #token: string | undefined;

  constructor(url: string, ca: string, token: string | undefined) {
    this.#url = new URL(url);
    this.#ca = ca;
    this.#token = token;
  }

  withToken(token: string | undefined): DoubleClient {
    return new DoubleClient(this.#url.href, this.#ca, token);
  }

  async request(method: string, pathAndQuery: string, body?: unknown, contentType = 'application/json'): Promise<Reply> {
    const response = await this.#open(method, pathAndQuery, body, contentType);
    const chunks: Buffer[] = [];
    for await (const chunk of response) chunks.push(chunk as Buffer);
    return { status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as JsonObject };
  }

  async get(pathAndQuery: string): Promise<Reply> {
    return this.request('GET', pathAndQuery);
  }

  /** Opens a watch (`watch=1` is added); the caller closes it, or the server ends it. */
  async watch(pathAndQuery: string): Promise<WatchReader> {
    const sep = pathAndQuery.includes('?') ? '&' : '?';
    return new WatchReader(await this.#open('GET', `${pathAndQuery}${sep}watch=1`));
  }

  async #open(method: string, pathAndQuery: string, body?: unknown, contentType = 'application/json'): Promise<IncomingMessage> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const options: RequestOptions = {
      method,
      host: this.#url.hostname,
      port: this.#url.port,
      path: pathAndQuery,
      ca: this.#ca,
      agent: false,
      headers: {
        ...(this.#token === undefined ? {} : { authorization: `Bearer ${this.#token}` }),
        ...(text === undefined ? {} : { 'content-type': contentType, 'content-length': Buffer.byteLength(text) }),
      },
    };
    const req = request(options);
    req.end(text);
    const [response] = (await once(req, 'response')) as [IncomingMessage];
    return response;
  }
}

/** `{ type, name, rv }` of a watch event, for compact assertions. */
export function summary(event: JsonObject): { type: unknown; name: unknown; rv: unknown } {
  const object = event.object as JsonObject;
  const metadata = (object.metadata ?? {}) as JsonObject;
  return { type: event.type, name: metadata.name, rv: metadata.resourceVersion };
}

export function pod(name: string, options: { labels?: Record<string, string>; nodeName?: string; ip?: string; ready?: boolean; namespace?: string } = {}): JsonObject {
  return {
    metadata: { name, ...(options.namespace === undefined ? {} : { namespace: options.namespace }), labels: options.labels ?? {} },
    spec: { nodeName: options.nodeName ?? 'node1', containers: [{ name: 'app', image: 'app', ports: [{ name: 'http', containerPort: 8080 }] }] },
    status: {
      phase: 'Running',
      ...(options.ip === undefined ? {} : { podIP: options.ip }),
      conditions: [{ type: 'Ready', status: options.ready === false ? 'False' : 'True' }],
    },
  };
}

import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { pipeline } from 'node:stream';
import { getHeapStatistics } from 'node:v8';
import { createGunzip } from 'node:zlib';
import http2 from 'node:http2';
import type { PeerCertificate } from 'node:tls';
import { AmbitError } from '../core/errors/index.js';
import { InvalidObjectError, type ConvertedObject, type DiscoverySnapshot, type DiscoveryChange, type LocalCollection, type WorkloadStore } from '../core/discovery/index.js';
import { silentLogger, type Logger } from '../core/log/index.js';
import { Backoff, realTimer, type SetTimer } from '../core/timer/index.js';
import type { TrustBundleSource } from '../core/hbone/index.js';
import { spiffeIdFromSan } from '../core/identity/index.js';
import {
  DEFAULT_SILENCE_DEADLINE_MS,
  STREAM_ALPN,
  STREAM_PATH,
  changeKey,
  parseMessage,
  streamLineSplitter,
  type StreamChange,
  type StreamMessage,
} from '../core/stream/index.js';

/** The store source the stream writes as: the agent's CNI networks and its own watch are other sources. */
export const CONTROLLER_SOURCE = 'controller';
/** The debug line of each applied delta, with its version and the keys it changed (core/stream's changeKey). */
export const DELTA_APPLIED_LOG = 'discovery delta applied';
/** Reconnect backoff: from half a second, doubling, with jitter, to 30 s; a stream healthy for a minute forgets. */
const BACKOFF = { initialMs: 500, maxMs: 30_000, resetAfterMs: 60_000 } as const;
/** How much of a refusal's body is read for the log line. */
const MAX_REFUSAL_BYTES = 4096;

export interface ControllerStreamOptions {
  /** `https://host:port` of the controller's Service. */
  readonly url: string;
  /** The SPIFFE ID the controller's certificate must carry (spiffe://<td>/ns/ambit-system/sa/ambit-controller). */
  readonly controllerIdentity: string;
  readonly trustBundle: TrustBundleSource;
  /** The projected service-account token (audience ambit-controller), read again at every connect: kubelet rotates it. */
  readonly tokenFile: string;
  readonly store: WorkloadStore;
  /** How policies reach their store: converted as in local mode, a rejected one standing as its fail-closed form. */
  readonly policies: LocalCollection;
  readonly setTimer?: SetTimer;
  readonly silenceDeadlineMs?: number;
  /** Whether to ask for the gzip encoding (default true); false reads the plain stream, as an older controller sends. */
  readonly compression?: boolean;
  readonly random?: () => number;
  readonly now?: () => number;
  readonly log?: Logger;
}

export interface ControllerStreamEvents {
  /** The first full state was applied (and after every later snapshot). */
  synced: [{ epoch: string; version: number }];
  /** The controller is streaming to this agent: after a snapshot (`resumed` false) or a resume. */
  streaming: [{ resumed: boolean }];
  /** A delta was applied. */
  applied: [{ version: number; changes: number }];
  /** The stream ended or was refused; the client connects again after `retryInMs`. */
  disconnected: [{ reason: string; retryInMs: number }];
}

/**
 * The agent's end of the discovery stream (core/stream/protocol.ts). It keeps the store as the controller last said,
 * whatever happens to the connection: a refused, broken or silent stream changes nothing in the store, and the
 * client connects again with backoff, resuming from its epoch and version. `synced` is what the agent's readiness
 * waits for.
 */
export class ControllerStream extends EventEmitter<ControllerStreamEvents> {
  readonly #options: ControllerStreamOptions;
  readonly #log: Logger;
  readonly #setTimer: SetTimer;
  readonly #backoff: Backoff;
  readonly #now: () => number;
  #epoch: string | undefined;
  #version = 0;
  /** The policy objects as the stream holds them, by key; every change hands all of them to the policy store. */
  readonly #policies = new Map<string, unknown>();
  #session: http2.ClientHttp2Session | undefined;
  /** False after a line that could not be read or applied: the next connect asks for a snapshot, not that line again. */
  #resumable = true;
  #cancelRetry: (() => void) | undefined;
  #closed = false;

  constructor(options: ControllerStreamOptions) {
    super();
    this.#options = options;
    this.#log = (options.log ?? silentLogger()).child({ component: 'controller-stream' });
    this.#setTimer = options.setTimer ?? realTimer;
    this.#backoff = new Backoff(BACKOFF, options.random ?? Math.random);
    this.#now = options.now ?? Date.now;
  }

  /** Whether a full state has been applied. */
  get synced(): boolean {
    return this.#epoch !== undefined;
  }

  get version(): number {
    return this.#version;
  }

  start(): void {
    this.#connect();
  }

  /** Ends the stream; the store keeps what it has. */
  close(): void {
    this.#closed = true;
    this.#cancelRetry?.();
    this.#session?.destroy();
  }

  #connect(): void {
    if (this.#closed) return;
    this.#run().catch((err: unknown) => this.#retry(err instanceof Error ? err.message : String(err)));
  }

  async #run(): Promise<void> {
    const token = (await readFile(this.#options.tokenFile, 'utf8')).trim();
    if (token === '') throw new AmbitError('STREAM_NO_TOKEN', `${this.#options.tokenFile} is empty`);
    if (this.#closed) return;
    const expected = this.#options.controllerIdentity;
    const session = http2.connect(this.#options.url, {
      ca: this.#options.trustBundle.pem(),
      minVersion: 'TLSv1.3',
      ALPNProtocols: [STREAM_ALPN],
      // the controller is known by its SPIFFE ID, not by the Service's DNS name
      checkServerIdentity: (_host: string, cert: PeerCertificate) => {
        const identity = spiffeIdFromSan(cert.subjectaltname);
        return identity === expected ? undefined : new AmbitError('STREAM_WRONG_PEER', `the controller presented ${identity ?? 'no SPIFFE ID'}, not ${expected}`);
      },
    });
    this.#session = session;
    let silence: (() => void) | undefined;
    const ended = new Promise<string>((resolve) => {
      session.on('error', (err) => resolve(err.message));
      session.on('close', () => resolve('the connection closed'));
    });
    const query = this.#epoch === undefined || !this.#resumable ? '' : `?epoch=${encodeURIComponent(this.#epoch)}&version=${this.#version}`;
    // gzip: the controller compresses the snapshot once for all agents (each write a whole member)
    const request = session.request({
      ':method': 'GET',
      ':path': `${STREAM_PATH}${query}`,
      authorization: `Bearer ${token}`,
      ...(this.#options.compression === false ? {} : { 'accept-encoding': 'gzip' }),
    });
    const outcome = new Promise<string>((resolveOutcome) => {
      // once the outcome is known nothing more of this stream is read: not a line the inflater still had
      let settled = false;
      const resolve = (reason: string) => {
        settled = true;
        resolveOutcome(reason);
      };
      const deadline = this.#options.silenceDeadlineMs ?? DEFAULT_SILENCE_DEADLINE_MS;
      const armSilence = () => {
        silence?.();
        silence = this.#setTimer(() => resolve(`no data for ${deadline} ms`), deadline);
      };
      armSilence();
      request.on('response', (headers) => {
        const status = Number(headers[':status']);
        if (status !== 200) {
          let body = '';
          request.setEncoding('utf8');
          request.on('data', (chunk: string) => {
            if (body.length < MAX_REFUSAL_BYTES) body += chunk;
          });
          request.on('end', () => resolve(`refused with ${status}: ${refusalReason(body)}`));
          return;
        }
        const encoding = headers['content-encoding'];
        if (encoding !== undefined && encoding !== 'gzip' && encoding !== 'identity') {
          resolve(`the controller answered in an encoding the agent does not read: ${String(encoding)}`);
          return;
        }
        const lines = streamLineSplitter();
        const state = new Snapshot();
        // closed by its owner (a listener of its own events may close it): nothing more reaches the store
        const take = (chunk: Buffer) => {
          if (settled || this.#closed) return;
          // the silence deadline follows what decodes, not compressed bytes that may decode to nothing
          armSilence();
          try {
            for (const line of lines.push(chunk)) {
              this.#handle(parseMessage(line), state, Buffer.byteLength(line));
              if (settled || this.#closed) return;
            }
          } catch (err) {
            // a line it cannot read or apply would come again on a resume: the next connect asks for a snapshot
            this.#resumable = false;
            resolve(err instanceof Error ? err.message : String(err));
          }
        };
        if (encoding !== 'gzip') {
          request.on('data', take);
          request.on('end', () => resolve('the controller ended the stream'));
          return;
        }
        // piped, so that the request is paused while the inflater is behind (flow control holds the controller),
        // and the end is the inflater's: what it still holds when the request ends is read first
        const gunzip = createGunzip();
        gunzip.on('data', take);
        pipeline(request, gunzip, (err) => {
          if (err === undefined || err === null) {
            resolve('the controller ended the stream');
            return;
          }
          if (!settled) this.#resumable = false;
          resolve(`the stream is not valid gzip: ${err.message}`);
        });
      });
      request.on('error', (err) => resolve(err.message));
      void ended.then(resolve);
    });
    const reason = await outcome;
    silence?.();
    session.destroy();
    if (this.#session === session) this.#session = undefined;
    this.#retry(reason);
  }

  /** `bytes`: the line's length, which a snapshot counts against MAX_SNAPSHOT_BYTES. */
  #handle(message: StreamMessage, snapshot: Snapshot, bytes: number): void {
    switch (message.t) {
      case 'snapshot':
        snapshot.begin(message.epoch, message.version);
        return;
      case 'records':
        snapshot.add(message.changes, bytes);
        return;
      case 'synced': {
        const state = snapshot.finish(message.epoch, message.version);
        this.#options.store.replaceAll(state.discovery, CONTROLLER_SOURCE);
        this.#policies.clear();
        for (const [key, object] of state.policies) this.#policies.set(key, object);
        this.#applyPolicies();
        this.#epoch = message.epoch;
        this.#version = message.version;
        this.#options.store.markSynced(CONTROLLER_SOURCE);
        this.#backoff.healthy(this.#now());
        this.#resumable = true;
        this.#log.info({ epoch: message.epoch, version: message.version, workloads: state.discovery.pods.length, policies: this.#policies.size }, 'discovery snapshot applied');
        this.emit('synced', { epoch: message.epoch, version: message.version });
        this.emit('streaming', { resumed: false });
        return;
      }
      case 'resume':
        if (message.epoch !== this.#epoch || message.version !== this.#version) {
          throw new AmbitError('STREAM_PROTOCOL_ERROR', `discovery stream: resume at ${message.epoch}/${message.version}, but the agent holds ${this.#epoch ?? 'nothing'}/${this.#version}`);
        }
        this.#backoff.healthy(this.#now());
        this.#log.info({ epoch: message.epoch, version: message.version }, 'discovery stream resumed');
        this.emit('streaming', { resumed: true });
        return;
      case 'delta':
        if (snapshot.open || this.#epoch === undefined || message.version !== this.#version + 1) {
          throw new AmbitError('STREAM_PROTOCOL_ERROR', `discovery stream: delta ${message.version} does not follow version ${this.#version}`);
        }
        this.#applyDelta(message.changes);
        this.#version = message.version;
        // per delta, so debug only: what the scale bench reads to time a change from the API server to this store
        if (this.#log.isLevelEnabled('debug')) this.#log.debug({ version: message.version, keys: message.changes.map(changeKey) }, DELTA_APPLIED_LOG);
        this.emit('applied', { version: message.version, changes: message.changes.length });
        return;
      case 'ping':
        return;
    }
  }

  #applyDelta(changes: readonly StreamChange[]): void {
    const discovery: DiscoveryChange[] = [];
    let policiesChanged = false;
    for (const change of changes) {
      if (change.kind !== 'Policy') {
        discovery.push(change);
        continue;
      }
      policiesChanged = true;
      if (change.op === 'delete') this.#policies.delete(change.key);
      else this.#policies.set(change.policy.key, change.policy.object);
    }
    if (discovery.length > 0) this.#options.store.applyBatch(discovery, CONTROLLER_SOURCE);
    if (policiesChanged) this.#applyPolicies();
  }

  /** Converts every policy as the local source does: a rejected one stands in its fail-closed form. */
  #applyPolicies(): void {
    const collection = this.#options.policies;
    const claimed: unknown[] = [];
    for (const object of this.#policies.values()) {
      try {
        const converted = collection.convert(object);
        if (converted !== undefined) claimed.push(converted.object);
      } catch (err) {
        if (!(err instanceof InvalidObjectError)) throw err;
        this.#log.warn({ reason: err.reason, detail: err.message }, 'policy from the controller rejected; it stands as deny-all');
        const failClosed = collection.rejected?.(err, object);
        if (failClosed !== undefined) claimed.push(failClosed.object);
      }
    }
    collection.replaceAll(claimed);
  }

  #retry(reason: string): void {
    if (this.#closed) return;
    const retryInMs = this.#backoff.failed(this.#now());
    this.#log.warn({ reason, retryInMs, heldVersion: this.#version, synced: this.synced }, 'discovery stream down; serving from the last state');
    this.emit('disconnected', { reason, retryInMs });
    this.#cancelRetry = this.#setTimer(() => this.#connect(), retryInMs);
  }
}

/** A snapshot being received: held apart until `synced`, so the store takes it in one batch. */
/**
 * The most JSON one snapshot may hold before it is applied: an eighth of the heap's limit (parsed, records take a few
 * times their JSON), at least 256 MiB; a cluster of 150k pods sends about 130 MB. Compressed, a few MB on the wire
 * could otherwise fill the agent's heap until it dies.
 */
const MAX_SNAPSHOT_BYTES = Math.max(256 * 1024 * 1024, Math.floor(getHeapStatistics().heap_size_limit / 8));

class Snapshot {
  #epoch: string | undefined;
  #version = 0;
  #changes: StreamChange[] = [];
  #bytes = 0;

  get open(): boolean {
    return this.#epoch !== undefined;
  }

  begin(epoch: string, version: number): void {
    this.#epoch = epoch;
    this.#version = version;
    this.#changes = [];
    this.#bytes = 0;
  }

  add(changes: readonly StreamChange[], bytes: number): void {
    if (this.#epoch === undefined) throw new AmbitError('STREAM_PROTOCOL_ERROR', 'discovery stream: records outside a snapshot');
    this.#bytes += bytes;
    if (this.#bytes > MAX_SNAPSHOT_BYTES) {
      throw new AmbitError('STREAM_PROTOCOL_ERROR', `discovery stream: a snapshot of more than ${MAX_SNAPSHOT_BYTES} bytes (of JSON) is not held`);
    }
    for (const change of changes) {
      if (change.op !== 'upsert') throw new AmbitError('STREAM_PROTOCOL_ERROR', 'discovery stream: a delete in a snapshot');
      this.#changes.push(change);
    }
  }

  finish(epoch: string, version: number): { discovery: DiscoverySnapshot; policies: Map<string, unknown> } {
    if (this.#epoch !== epoch || this.#version !== version) {
      throw new AmbitError('STREAM_PROTOCOL_ERROR', `discovery stream: synced ${epoch}/${version} ends no snapshot of that version`);
    }
    const byKind = (kind: ConvertedObject['kind']) => this.#changes.flatMap((c) => (c.kind === kind && c.op === 'upsert' ? [c.object] : []));
    const policies = new Map<string, unknown>();
    for (const change of this.#changes) if (change.kind === 'Policy' && change.op === 'upsert') policies.set(change.policy.key, change.policy.object);
    const discovery = {
      namespaces: byKind('Namespace'),
      pods: byKind('Pod'),
      services: byKind('Service'),
      nodes: byKind('Node'),
      endpointSlices: byKind('EndpointSlice'),
    } as unknown as DiscoverySnapshot;
    this.#epoch = undefined;
    this.#changes = [];
    return { discovery, policies };
  }
}

function refusalReason(body: string): string {
  try {
    const parsed = JSON.parse(body) as { reason?: unknown; message?: unknown };
    return `${String(parsed.reason)}: ${String(parsed.message)}`;
  } catch {
    return body.slice(0, 200) || '(no body)';
  }
}

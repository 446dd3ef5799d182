/**
 * The simulated agents of the scale bench, in a process of their own so that their work is not the bench's: each
 * is a discovery stream client (core/stream/protocol.ts) that counts the bytes it is sent. The first one also reads
 * its deltas, so the bench can say which change each byte carried. Driven over IPC by bench/scale.ts:
 * `{ t: 'report' }` answers with the counts so far; the process ends when its parent goes.
 *   node dist/bench/scale-agents.js URL TOKEN_FILE CA_FILE COUNT
 */
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import { createGunzip } from 'node:zlib';
import { changeKey, parseMessage, STREAM_ALPN, STREAM_PATH, streamLineSplitter } from '../core/stream/index.js';

export interface SimulatedDelta {
  /** When it arrived (ms since the epoch). */
  readonly at: number;
  /** Each change's key and the bytes of its line that it accounts for (the line's envelope shared out evenly). */
  readonly changes: ReadonlyArray<{ readonly key: string; readonly bytes: number }>;
}

export type SimulatedAgentsMessage =
  | { readonly t: 'synced'; readonly agents: number }
  | { readonly t: 'report'; readonly bytes: readonly number[]; readonly deltas: readonly SimulatedDelta[]; readonly failures: readonly string[] };

const SYNCED_MARK = '{"t":"synced"';

function main(): void {
  const [url = '', tokenFile = '', caFile = '', countText = '200'] = process.argv.slice(2);
  const token = readFileSync(tokenFile, 'utf8').trim();
  const ca = readFileSync(caFile, 'utf8');
  const count = Number(countText);
  const bytes = new Array<number>(count).fill(0);
  const failures: string[] = [];
  const deltas: SimulatedDelta[] = [];
  let synced = 0;
  const send = (message: SimulatedAgentsMessage) => process.send?.(message);
  for (let i = 0; i < count; i++) {
    const session = http2.connect(url, { ca, minVersion: 'TLSv1.3', ALPNProtocols: [STREAM_ALPN], checkServerIdentity: () => undefined });
    session.on('error', (err) => failures.push(`agent ${i}: ${err.message}`));
    // as the agent asks: the snapshot comes compressed once for all, each write a whole gzip member
    const request = session.request({ ':method': 'GET', ':path': STREAM_PATH, authorization: `Bearer ${token}`, 'accept-encoding': 'gzip' });
    request.on('error', (err) => failures.push(`agent ${i}: ${err.message}`));
    let gunzip: ReturnType<typeof createGunzip> | undefined;
    request.on('response', (headers) => {
      if (headers[':status'] !== 200) failures.push(`agent ${i}: refused with ${String(headers[':status'])}`);
      if (headers['content-encoding'] === 'gzip') {
        gunzip = createGunzip();
        gunzip.on('data', decoded);
        gunzip.on('error', (err) => failures.push(`agent ${i}: ${err.message}`));
      }
    });
    request.on('close', () => failures.push(`agent ${i}: the stream closed`));
    // the mark may straddle two chunks: the tail of the last one is searched too
    let tail = Buffer.alloc(0);
    let isSynced = false;
    const lines = i === 0 ? streamLineSplitter() : undefined;
    // the bytes sent count as they come (compressed); the lines are read from what they decode to
    request.on('data', (chunk: Buffer) => {
      bytes[i] = (bytes[i] ?? 0) + chunk.length;
      if (gunzip === undefined) decoded(chunk);
      else gunzip.write(chunk);
    });
    const decoded = (chunk: Buffer) => {
      if (!isSynced) {
        if (chunk.includes(SYNCED_MARK) || Buffer.concat([tail, chunk.subarray(0, SYNCED_MARK.length)]).includes(SYNCED_MARK)) {
          isSynced = true;
          send({ t: 'synced', agents: ++synced });
        } else {
          tail = Buffer.from(chunk.subarray(-SYNCED_MARK.length));
        }
      }
      if (lines === undefined) return;
      const at = Date.now();
      for (const line of lines.push(chunk.toString('utf8'))) {
        if (!line.startsWith('{"t":"delta"')) continue;
        const message = parseMessage(line);
        if (message.t !== 'delta') continue;
        const lineBytes = Buffer.byteLength(line) + 1;
        const encoded = message.changes.map((change) => Buffer.byteLength(JSON.stringify(change)));
        const envelope = (lineBytes - encoded.reduce((a, b) => a + b, 0)) / Math.max(1, encoded.length);
        deltas.push({ at, changes: message.changes.map((change, k) => ({ key: changeKey(change), bytes: (encoded[k] ?? 0) + envelope })) });
      }
    };
  }
  process.on('message', (message: { t?: string }) => {
    if (message.t === 'report') send({ t: 'report', bytes, deltas, failures });
  });
  process.on('disconnect', () => process.exit(0));
}

main();

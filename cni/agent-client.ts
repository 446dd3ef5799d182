/**
 * The plugin's side of the agent's CNI socket: connect, send one request line, read one response line, close.
 * One deadline covers the whole exchange. A socket that is not there or refuses fails at once, so a pod outside
 * the mesh does not wait for an agent that is down; only an agent that accepts and then stalls costs the deadline.
 * This file imports only Node built-ins and core files that do: it is bundled into a single executable.
 */
import net from 'node:net';
import { AmbitError, errnoCode } from '../core/errors/index.js';
import { CNI_MESSAGE_LIMIT, encodeCniMessage, parseCniResponse, type CniRequest, type CniResponse } from '../core/cni/index.js';

/** What the common connect failures mean for an operator reading the pod's events. */
const CONNECT_HINTS: Readonly<Record<string, string>> = {
  ENOENT: 'no socket: the agent has not started on this node',
  ECONNREFUSED: 'nothing listens on the socket: the agent is not running',
  EACCES: 'permission denied: the plugin must run as root',
};

/**
 * One request/response exchange with the agent. Rejects with AmbitError `CNI_AGENT_UNREACHABLE` (the message says
 * why, the errno or protocol error is the cause) when the socket cannot be reached, the agent does not answer a
 * full line within `timeoutMs`, closes without answering, or answers something that is not a protocol response.
 */
export function askAgent(socketPath: string, request: CniRequest, timeoutMs: number): Promise<CniResponse> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path: socketPath });
    const chunks: Buffer[] = [];
    let length = 0;
    let settled = false;
    const settle = (err: AmbitError | undefined, response?: CniResponse): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(response as CniResponse);
    };
    const unreachable = (message: string, cause?: unknown): void => settle(new AmbitError('CNI_AGENT_UNREACHABLE', message, cause === undefined ? undefined : { cause }));
    const timer = setTimeout(() => unreachable(`no answer within ${timeoutMs} ms`), timeoutMs);

    socket.on('connect', () => socket.write(encodeCniMessage(request)));
    socket.on('data', (chunk: Buffer) => {
      const newline = chunk.indexOf(0x0a);
      const take = newline < 0 ? chunk : chunk.subarray(0, newline);
      chunks.push(take);
      length += take.length;
      if (length + (newline < 0 ? 0 : 1) > CNI_MESSAGE_LIMIT) {
        unreachable(`garbled reply: longer than ${CNI_MESSAGE_LIMIT} bytes without a newline`);
        return;
      }
      if (newline < 0) return;
      try {
        settle(undefined, parseCniResponse(Buffer.concat(chunks, length).toString('utf8')));
      } catch (err) {
        unreachable(`garbled reply: ${(err as Error).message}`, err);
      }
    });
    socket.on('end', () => unreachable(length === 0 ? 'the agent closed the connection without answering' : 'the agent closed the connection in the middle of its answer'));
    socket.on('close', () => unreachable('the connection closed without an answer'));
    socket.on('error', (err) => {
      const code = errnoCode(err);
      const hint = code === undefined ? undefined : CONNECT_HINTS[code];
      unreachable(code === undefined ? err.message : hint === undefined ? `${code} (${err.message})` : `${code}: ${hint}`, err);
    });
  });
}

/** What the bench's reference relays (h2-relay, tcp-relay) share. */
import { parseAuthority, type Authority } from '../core/hbone/index.js';

type End = NodeJS.ReadWriteStream & { destroy(): void };

/** `address:port`, as the agent parses an HBONE authority; a clear error for anything else. */
export function address(text: string): Authority {
  const parsed = parseAuthority(text);
  if (!parsed) throw new Error(`not address:port: ${text}`);
  return parsed;
}

/** Pipes both ways; an error on either end destroys the other. */
export function pipeBoth(a: End, b: End): void {
  a.pipe(b);
  b.pipe(a);
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
}

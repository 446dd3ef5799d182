/** A real HBONE server and what tests put around it: a mesh CA and certificates, an echo server, a relay that can go silent. */
import { once } from 'node:events';
import type http2 from 'node:http2';
import net from 'node:net';
import { HboneClient, HboneServer, SecureContextCache, type HboneClientOptions, type HboneServerOptions } from '../../core/hbone/index.js';
import { CertificateAuthority, sniForIdentity, TrustBundle } from '../../core/identity/index.js';

export const CLIENT = 'spiffe://cluster.local/ns/a/sa/client';
export const SERVER = 'spiffe://cluster.local/ns/b/sa/server';
export const OTHER = 'spiffe://cluster.local/ns/b/sa/other';

export type MeshPki = Awaited<ReturnType<typeof meshPki>>;

/** A mesh CA, a certificate for each identity, and the TLS context cache both ends build their contexts from. */
export async function meshPki(identities: string[]) {
  const ca = await CertificateAuthority.create({ trustDomain: 'cluster.local' });
  const creds = new Map<string, { keyPem: string; certChainPem: string }>();
  for (const id of identities) {
    const { keyPem, certPem } = await ca.issueKeyAndCert(id);
    creds.set(id, { keyPem, certChainPem: certPem });
  }
  const trustBundle = new TrustBundle(ca.rootPem);
  return { ca, trustBundle, creds, contexts: new SecureContextCache(trustBundle) };
}

/** An HBONE client whose identities have their certificates from `pki`. */
export function hboneClient(pki: MeshPki, options: Partial<HboneClientOptions> = {}): HboneClient {
  return new HboneClient({ contextFor: async (id) => pki.contexts.get(pki.creds.get(id)!), sniFor: sniForIdentity, ...options });
}

/**
 * An HBONE server for SERVER on loopback that answers every CONNECT to a port other than 3 with 200 and echoes its
 * bytes (port 3 is never answered); `options` replace any of that.
 */
export async function echoServer(pki: MeshPki, options: Partial<HboneServerOptions> = {}): Promise<HboneServer> {
  const server = new HboneServer({
    host: '127.0.0.1',
    port: 0,
    trustBundle: pki.trustBundle,
    resolveSni: async (sni) => (sni === sniForIdentity(SERVER) ? { identity: SERVER, context: pki.contexts.get(pki.creds.get(SERVER)!) } : undefined),
    onConnect: (stream: http2.ServerHttp2Stream, request) => {
      if (request.target.port === 3) return;
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    },
    ...options,
  });
  await server.listen();
  return server;
}

/**
 * A TCP relay in front of a server that can go silent: `blackhole()` stops forwarding both ways on the connections
 * it carries, without closing them, which is how a vanished peer node or a dropping firewall looks to the client.
 * Connections made after it are carried again.
 */
export async function silenceableRelay(targetPort: number) {
  const pairs = new Set<{ down: net.Socket; up: net.Socket; silent: boolean }>();
  let fromServer = 0;
  const counted = new EventTarget();
  const relay = net.createServer((down) => {
    const up = net.connect(targetPort, '127.0.0.1');
    const pair = { down, up, silent: false };
    pairs.add(pair);
    down.on('data', (chunk: Buffer) => pair.silent || up.write(chunk));
    up.on('data', (chunk: Buffer) => {
      if (pair.silent) return;
      down.write(chunk);
      fromServer++;
      counted.dispatchEvent(new Event('chunk'));
    });
    const end = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    for (const socket of [down, up]) socket.on('error', end).on('close', end);
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  return {
    port: (relay.address() as net.AddressInfo).port,
    blackhole: () => pairs.forEach((pair) => (pair.silent = true)),
    /** Resolves once `count` more chunks have gone from the server to the client. */
    fromServer: (count: number) =>
      new Promise<void>((resolve) => {
        const until = fromServer + count;
        const onChunk = () => {
          if (fromServer < until) return;
          counted.removeEventListener('chunk', onChunk);
          resolve();
        };
        counted.addEventListener('chunk', onChunk);
      }),
    close: async () => {
      for (const pair of pairs) pair.down.destroy();
      await new Promise((resolve) => relay.close(resolve));
    },
  };
}

/** Sends `text`, half-closes, and resolves with what came back once the stream has closed (and left the pool). */
export function echo(stream: http2.ClientHttp2Stream, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let back = '';
    stream.setEncoding('utf8').on('data', (c: string) => (back += c)).once('close', () => resolve(back)).once('error', reject);
    stream.end(text);
  });
}


/**
 * Sends text on an open echoing stream and resolves with the next chunk that comes back: one exchange at a time,
 * while the stream stays open. Errors are left to the stream's close.
 */
export function roundTripper(stream: http2.ClientHttp2Stream): (text: string) => Promise<string> {
  stream.on('error', () => undefined);
  stream.setEncoding('utf8');
  return async (text) => {
    const back = once(stream, 'data') as Promise<[string]>;
    stream.write(text);
    return (await back)[0];
  };
}

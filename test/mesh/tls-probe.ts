/** A raw TLS client for an HBONE listener, to see what the real server accepts, refuses and presents. */
import type { X509Certificate } from 'node:crypto';
import tls from 'node:tls';

export interface TlsProbeResult {
  /** The handshake completed on the client's side. */
  secure: boolean;
  /** The server resumed a session instead of a full handshake (no certificates exchanged). */
  reused: boolean;
  /** A session (ticket) the server issued, to offer on a later connection. */
  session: Buffer | undefined;
  /** What the server presented. */
  peerCertificate: X509Certificate | undefined;
  /** Bytes the server sent after the handshake: its HTTP/2 SETTINGS when it accepted the client, none when not. */
  received: number;
  error: string | undefined;
}

/**
 * Connects with `options` (ALPN h2, and no check of the server's name: the probe looks at the server, the client's
 * own checks are HboneClient's), sends the HTTP/2 preface and ends once the server's first frame came or the
 * connection closed. A TLS 1.3 server refuses a client certificate after the client's handshake is done, so only
 * the server's first bytes tell an accepted client; a ticket arrives before them, so none is missed.
 */
export function tlsProbe(options: tls.ConnectionOptions): Promise<TlsProbeResult> {
  return new Promise((resolve) => {
    const result: TlsProbeResult = { secure: false, reused: false, session: undefined, peerCertificate: undefined, received: 0, error: undefined };
    const socket = tls.connect({ ALPNProtocols: ['h2'], checkServerIdentity: () => undefined, ...options });
    socket.on('session', (session: Buffer) => (result.session = session));
    socket.on('secureConnect', () => {
      result.secure = true;
      result.reused = socket.isSessionReused();
      result.peerCertificate = socket.getPeerX509Certificate();
      socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    });
    socket.on('data', (chunk: Buffer) => {
      result.received += chunk.length;
      // The server holds a half-closed connection open (HBONE allows half-close): end it from here.
      socket.destroy();
    });
    socket.on('error', (err) => (result.error ??= err.message));
    socket.on('close', () => resolve(result));
  });
}

import { closeSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { AmbitError, errnoCode } from '../errors/index.js';

/** The native addon's surface (native/ambit_sockopt.c). */
interface SockoptAddon {
  originalDst(fd: number, family: 4 | 6): { address: string; port: number };
  setTransparent(fd: number, family: 4 | 6, on: boolean): void;
  transparentSocket(address: string): number;
  releaseFreeMemory(): boolean;
}

/** Where node-gyp puts the addon; this file runs as dist/core/sockopt/sockopt.js. */
export const SOCKOPT_ADDON_PATH = fileURLToPath(new URL('../../../build/Release/ambit_sockopt.node', import.meta.url));

let addon: SockoptAddon | undefined;

// Loaded on first use, so programs and tests that never touch a captured socket run without a compiler.
function loadAddon(): SockoptAddon {
  if (addon) return addon;
  if (!existsSync(SOCKOPT_ADDON_PATH)) {
    throw new AmbitError('ADDON_MISSING', 'the native addon is not built: run `npm ci` (needs python3, make, gcc)');
  }
  try {
    addon = createRequire(import.meta.url)(SOCKOPT_ADDON_PATH) as SockoptAddon;
  } catch (err) {
    throw new AmbitError(
      'ADDON_LOAD_FAILED',
      `cannot load the native addon ${SOCKOPT_ADDON_PATH}: ${(err as Error).message}; rebuild it with \`npm run install\``,
      { cause: err },
    );
  }
  return addon;
}

/** The original destination of a captured connection, as the client addressed it before DNAT. */
export interface OriginalDestination {
  address: string;
  port: number;
  family: 4 | 6;
}

function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new AmbitError('NO_FD', 'the socket has no file descriptor: it is closed, not yet connected, or not a TCP socket');
  }
  return fd;
}

const IPV4_MAPPED = /^::ffff:\d+\.\d+\.\d+\.\d+$/i;

// A dual-stack listener accepts IPv4 clients on an IPv6 socket with an IPv4-mapped local address; iptables (not
// ip6tables) rewrote those, and the kernel answers SOL_IP queries on such sockets.
// The peer's address answers as well as the local one, and the agent has already read it (Node caches it): asking
// for the local address would cost a getsockname() per connection.
function socketFamily(socket: net.Socket): 4 | 6 {
  const address = socket.remoteAddress ?? socket.localAddress;
  if (address !== undefined && IPV4_MAPPED.test(address)) return 4;
  const family = socket.remoteFamily ?? socket.localFamily;
  if (family === 'IPv4') return 4;
  if (family === 'IPv6') return 6;
  throw new AmbitError('NO_FD', 'the socket has no address family: it is closed or not yet connected');
}

/**
 * Where the client meant to connect before nat rewrote the destination. A connection conntrack tracks but nat left
 * alone reports its own local address. Throws ORIGINAL_DST_UNAVAILABLE when conntrack has no entry (cause code
 * ENOENT: nothing in the namespace uses conntrack) or is not loaded (ENOPROTOOPT).
 */
export function originalDestination(socket: net.Socket): OriginalDestination {
  const sockopt = loadAddon();
  const fd = socketFd(socket);
  const family = socketFamily(socket);
  try {
    return { ...sockopt.originalDst(fd, family), family };
  } catch (err) {
    const code = errnoCode(err);
    const hint =
      code === 'ENOENT'
        ? 'the connection was not DNATed (no conntrack entry): was it captured by the nat rules?'
        : code === 'ENOPROTOOPT'
          ? `conntrack does not track IPv${family} here: load nf_conntrack and check the ${family === 4 ? 'iptables' : 'ip6tables'} nat rules`
          : (err as Error).message;
    throw new AmbitError(
      'ORIGINAL_DST_UNAVAILABLE',
      `cannot read the original destination of ${socket.remoteAddress}:${socket.remotePort} -> ${socket.localAddress}:${socket.localPort}: ${hint}`,
      { cause: err },
    );
  }
}

// Argument errors stay TypeErrors; a refused setsockopt says which capability is missing.
function sockoptFailure(err: unknown, option: string): unknown {
  if (err instanceof TypeError) return err;
  const hint = errnoCode(err) === 'EPERM' ? ': the process needs CAP_NET_ADMIN' : '';
  return new AmbitError('SOCKOPT_FAILED', `cannot set ${option}: ${(err as Error).message}${hint}`, { cause: err });
}

/**
 * IP_TRANSPARENT / IPV6_TRANSPARENT: a bind that follows may use a non-local address, and `-m socket --transparent`
 * and TPROXY match the socket's packets.
 */
export function setTransparent(socket: net.Socket, on: boolean): void {
  const sockopt = loadAddon();
  const fd = socketFd(socket);
  const family = socketFamily(socket);
  try {
    sockopt.setTransparent(fd, family, on);
  } catch (err) {
    throw sockoptFailure(err, family === 4 ? 'IP_TRANSPARENT' : 'IPV6_TRANSPARENT');
  }
}

/**
 * A TCP socket bound to `address` with IP_TRANSPARENT (IPV6_TRANSPARENT), not yet connected: `connect()` it and the
 * peer sees `address`, which need not be one of this host's, as the client. The port is picked at connect. The
 * option has to be set before bind(), and Node creates a socket's file descriptor only inside connect(), so the addon
 * makes the descriptor and Node adopts it.
 *
 * Needs CAP_NET_ADMIN (or CAP_NET_RAW): without it this throws SOCKOPT_FAILED whose cause has code EPERM. The replies
 * reach the socket only if the host routes them to itself (the agent's fwmark rule and local route).
 */
export function transparentSocket(address: string, options: { allowHalfOpen?: boolean } = {}): net.Socket {
  const sockopt = loadAddon();
  let fd: number;
  try {
    fd = sockopt.transparentSocket(address);
  } catch (err) {
    if (err instanceof TypeError) throw err;
    const hint = ['EPERM', 'EACCES'].includes(errnoCode(err) ?? '') ? ': the process needs CAP_NET_ADMIN' : '';
    throw new AmbitError('SOCKOPT_FAILED', `cannot open a TCP socket bound transparently to ${address}: ${(err as Error).message}${hint}`, {
      cause: err,
    });
  }
  try {
    return new net.Socket({ fd, allowHalfOpen: options.allowHalfOpen ?? false, readable: true, writable: true });
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/**
 * Returns the C allocator's free pages to the kernel (glibc `malloc_trim`). A proxy frees many I/O buffers after a
 * burst of traffic; without this they stay resident for the life of the process. Returns whether any was released.
 */
export function releaseFreeMemory(): boolean {
  return loadAddon().releaseFreeMemory();
}


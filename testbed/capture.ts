import { execa } from 'execa';
import { AmbitError } from '../core/errors/index.js';
import { registerForExit, releaseFromExit } from './exit-cleanup.js';
import { signalGroup, stopProcess } from './processes.js';

/** How long tcpdump may take to open the interface. */
const CAPTURE_READY_TIMEOUT_MS = 10_000;

export interface Capture {
  /** Stops tcpdump and resolves with everything it captured, as a pcap file. */
  stop(): Promise<Buffer>;
}

/**
 * Captures packets on `iface` inside `netns` with tcpdump (`filter` is a pcap filter expression). Resolves once
 * tcpdump says it is listening, so traffic sent after that is in the capture.
 */
export async function startCapture(netns: string, iface: string, filter: string): Promise<Capture> {
  // --immediate-mode hands each packet over at once and -U writes it at once: without them packets sent just before
  // stop() could still sit in a kernel ring block or a stdio buffer when tcpdump exits.
  const args = ['netns', 'exec', netns, 'tcpdump', '-i', iface, '-n', '--immediate-mode', '-U', '-w', '-', filter];
  const tcpdump = execa('ip', args, { encoding: 'buffer', detached: true, reject: false });
  const cleanup = {
    teardownSync: () => {
      if (tcpdump.pid !== undefined) signalGroup(tcpdump.pid, 'SIGKILL');
    },
  };
  registerForExit(cleanup);
  try {
    await untilListening(tcpdump, `tcpdump on ${iface} in ${netns} (filter: ${filter})`);
  } catch (err) {
    await stopProcess(tcpdump);
    releaseFromExit(cleanup);
    throw err;
  }
  let captured: Promise<Buffer> | undefined;
  return {
    stop() {
      captured ??= (async () => {
        await stopProcess(tcpdump);
        releaseFromExit(cleanup);
        const { stdout } = await tcpdump;
        return Buffer.from(stdout.buffer, stdout.byteOffset, stdout.byteLength);
      })();
      return captured;
    },
  };
}

/**
 * Runs `action` with tcpdump on `iface` inside `netns` and resolves with its result and the packets that crossed
 * meanwhile; tcpdump is stopped whatever happens.
 */
export async function captureDuring<T>(netns: string, iface: string, filter: string, action: () => Promise<T>): Promise<{ result: T; packets: CapturedPacket[] }> {
  const capture = await startCapture(netns, iface, filter);
  try {
    const result = await action();
    return { result, packets: parsePcap(await capture.stop()) };
  } finally {
    await capture.stop();
  }
}

function untilListening(tcpdump: ReturnType<typeof execa>, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    const onData = (chunk: Buffer): void => {
      stderr += chunk.toString();
      if (stderr.includes('listening on')) finish();
    };
    const failure = (why: string): AmbitError => new AmbitError('TESTBED_CAPTURE_FAILED', `${what} ${why}: ${stderr.trim()}`);
    const onExit = (): void => finish(failure('exited before listening'));
    const timeout = `did not start listening within ${CAPTURE_READY_TIMEOUT_MS} ms`;
    const timer = setTimeout(() => finish(failure(timeout)), CAPTURE_READY_TIMEOUT_MS);
    function finish(err?: Error): void {
      clearTimeout(timer);
      tcpdump.stderr?.removeListener('data', onData);
      tcpdump.removeListener('exit', onExit);
      if (err === undefined) resolve();
      else reject(err);
    }
    tcpdump.stderr?.on('data', onData);
    tcpdump.once('exit', onExit);
  });
}

/** One IPv4 packet of a capture, decoded as far as tests need to ask who talked to whom and what crossed the wire. */
export interface CapturedPacket {
  src: string;
  dst: string;
  /** 'tcp', 'udp', 'icmp', or the IP protocol number. */
  protocol: 'tcp' | 'udp' | 'icmp' | number;
  srcPort: number | undefined;
  dstPort: number | undefined;
  /** TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10). */
  tcpFlags: number | undefined;
  payload: Buffer;
}

const LINKTYPE_ETHERNET = 1;
const LINKTYPE_LINUX_SLL = 113;
const LINKTYPE_LINUX_SLL2 = 276;
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_VLAN = 0x8100;

/**
 * Decodes the IPv4 packets of a pcap file (Ethernet, or Linux "cooked" captures from `-i any`); ARP, IPv6 and
 * anything else are skipped.
 */
export function parsePcap(pcap: Buffer): CapturedPacket[] {
  if (pcap.length < 24) throw new AmbitError('TESTBED_BAD_PCAP', `a pcap file has a 24-byte header; got ${pcap.length} bytes`);
  const magic = pcap.readUInt32LE(0);
  const littleEndian = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!littleEndian && pcap.readUInt32BE(0) !== 0xa1b2c3d4 && pcap.readUInt32BE(0) !== 0xa1b23c4d) {
    throw new AmbitError('TESTBED_BAD_PCAP', `not a pcap file (magic 0x${magic.toString(16)})`);
  }
  const u32 = (offset: number): number => (littleEndian ? pcap.readUInt32LE(offset) : pcap.readUInt32BE(offset));
  const linkType = u32(20);
  const packets: CapturedPacket[] = [];
  for (let offset = 24; offset + 16 <= pcap.length; ) {
    const capturedLength = u32(offset + 8);
    const frame = pcap.subarray(offset + 16, offset + 16 + capturedLength);
    offset += 16 + capturedLength;
    const ip = ipv4Payload(frame, linkType);
    const packet = ip === undefined ? undefined : decodeIpv4(ip);
    if (packet !== undefined) packets.push(packet);
  }
  return packets;
}

function ipv4Payload(frame: Buffer, linkType: number): Buffer | undefined {
  let etherType: number;
  let start: number;
  if (linkType === LINKTYPE_ETHERNET) {
    etherType = frame.readUInt16BE(12);
    start = 14;
    if (etherType === ETHERTYPE_VLAN) {
      etherType = frame.readUInt16BE(16);
      start = 18;
    }
  } else if (linkType === LINKTYPE_LINUX_SLL) {
    etherType = frame.readUInt16BE(14);
    start = 16;
  } else if (linkType === LINKTYPE_LINUX_SLL2) {
    etherType = frame.readUInt16BE(0);
    start = 20;
  } else {
    throw new AmbitError('TESTBED_BAD_PCAP', `unsupported pcap link type ${linkType}`);
  }
  return etherType === ETHERTYPE_IPV4 ? frame.subarray(start) : undefined;
}

function decodeIpv4(ip: Buffer): CapturedPacket | undefined {
  if (ip.length < 20 || ip.readUInt8(0) >> 4 !== 4) return undefined;
  const headerLength = (ip.readUInt8(0) & 0x0f) * 4;
  const totalLength = Math.min(ip.readUInt16BE(2), ip.length);
  const protocolNumber = ip.readUInt8(9);
  const src = [...ip.subarray(12, 16)].join('.');
  const dst = [...ip.subarray(16, 20)].join('.');
  const body = ip.subarray(headerLength, totalLength);
  if ((protocolNumber === 6 && body.length >= 20) || (protocolNumber === 17 && body.length >= 8)) {
    const ports = { srcPort: body.readUInt16BE(0), dstPort: body.readUInt16BE(2) };
    if (protocolNumber === 17) return { src, dst, protocol: 'udp', ...ports, tcpFlags: undefined, payload: body.subarray(8) };
    const dataOffset = (body.readUInt8(12) >> 4) * 4;
    return { src, dst, protocol: 'tcp', ...ports, tcpFlags: body.readUInt8(13), payload: body.subarray(dataOffset) };
  }
  const protocol = protocolNumber === 1 ? 'icmp' : protocolNumber;
  return { src, dst, protocol, srcPort: undefined, dstPort: undefined, tcpFlags: undefined, payload: body };
}

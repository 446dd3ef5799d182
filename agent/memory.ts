import type { Logger } from '../core/log/index.js';
import { releaseFreeMemory } from '../core/sockopt/index.js';

/**
 * When, after a busy spell, the agent hands freed memory back to the kernel a second time (V8 releases some pages
 * only after a later collection): a node agent's memory should follow its open connections, not its busiest moment.
 */
const MEMORY_RELEASE_INTERVAL_MS = 5_000;
/** Growth of the resident set, with no busy spell, that is worth a release too (a slow trickle of new connections). */
const MEMORY_RELEASE_GROWTH_BYTES = 8 * 1024 * 1024;
/**
 * The release waits for a quiet second: less CPU than this share of one core. While traffic flows the buffers are
 * reused, and a forced full collection would only stall it (README.md, "How the agent process runs").
 */
const MEMORY_RELEASE_QUIET_CPU_SHARE = 0.05;
const MEMORY_RELEASE_CHECK_MS = 1_000;
/** Consecutive busy seconds that make a busy spell. */
const MEMORY_RELEASE_BUSY_SPELL_S = 2;

/**
 * In the first quiet second after a busy spell, again MEMORY_RELEASE_INTERVAL_MS later, and in a quiet second when
 * the resident set has grown by MEMORY_RELEASE_GROWTH_BYTES since the last release: a memory-reducing major
 * collection (V8's last-resort flavour, the one a low-memory notification runs: it also shrinks the young generation
 * a burst has grown; a full, stop-the-world collection, and only when `gc` is exposed, as AGENT_NODE_FLAGS has it),
 * then the allocator's free pages back to the kernel, and once more in the next quiet second: the native halves of
 * collected sockets and streams are freed by callbacks that run after the collection. V8's own memory reducer (off
 * in AGENT_NODE_FLAGS) shrinks the heap only after several quiet seconds, and glibc never returns pages freed
 * between live allocations. Start-up counts as a busy spell; after it, an idle agent does none of this. Returns the
 * function that stops it.
 */
export function startMemoryRelease(log: Logger): () => void {
  type Collect = (options: { type: 'major'; execution: 'async'; flavor: 'last-resort' }) => Promise<void>;
  const collect = (globalThis as { gc?: Collect }).gc;
  let busySeconds = MEMORY_RELEASE_BUSY_SPELL_S;
  let followUpAt: number | undefined;
  let rssAfterRelease = 0;
  let trimAgain = false;
  let releasing = false;
  /** The release's own CPU, which must not make the next second look busy (and start another release after it). */
  let ownCpuUs = 0;
  const release = async (afterBusy: boolean) => {
    if (releasing) return;
    if (trimAgain) {
      trimAgain = false;
      releaseFreeMemory();
      rssAfterRelease = process.memoryUsage.rss();
      return;
    }
    const followUp = followUpAt !== undefined && Date.now() >= followUpAt;
    const grown = process.memoryUsage.rss() - rssAfterRelease >= MEMORY_RELEASE_GROWTH_BYTES;
    if (!afterBusy && !followUp && !grown) return;
    followUpAt = afterBusy ? Date.now() + MEMORY_RELEASE_INTERVAL_MS : undefined;
    releasing = true;
    const before = process.cpuUsage();
    try {
      await collect?.({ type: 'major', execution: 'async', flavor: 'last-resort' });
      releaseFreeMemory();
    } finally {
      releasing = false;
    }
    const own = process.cpuUsage(before);
    ownCpuUs += own.user + own.system;
    trimAgain = true;
    const why = afterBusy ? 'after a busy spell' : followUp ? 'follow-up' : 'growth';
    log.debug({ why, rssMb: Math.round(process.memoryUsage.rss() / 1048576), cpuMs: Math.round((own.user + own.system) / 1000) }, 'memory released');
  };
  let cpuBefore = process.cpuUsage();
  const timer = setInterval(() => {
    const used = process.cpuUsage(cpuBefore);
    cpuBefore = process.cpuUsage();
    const busy = (used.user + used.system - ownCpuUs) / 1000 >= MEMORY_RELEASE_CHECK_MS * MEMORY_RELEASE_QUIET_CPU_SHARE;
    ownCpuUs = 0;
    // A lone busy second (a rules resync, a scrape) is not traffic worth a release after it.
    const afterBusy = busySeconds >= MEMORY_RELEASE_BUSY_SPELL_S;
    busySeconds = busy ? busySeconds + 1 : 0;
    if (busy) return;
    release(afterBusy).catch((err: unknown) => {
      // Without the addon (never on a real node: capture needs it too) memory is simply not released early.
      clearInterval(timer);
      log.warn({ err }, 'cannot release free memory to the kernel');
    });
  }, MEMORY_RELEASE_CHECK_MS);
  timer.unref();
  return () => clearInterval(timer);
}

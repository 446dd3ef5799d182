/** Calls `callback` once after `delayMs`; the function it returns cancels the call. Injectable, so tests move time. */
export type SetTimer = (callback: () => void, delayMs: number) => () => void;

/** The real clock's timer, unref'd: a renewal or a deadline alone must not keep a process alive. */
export const realTimer: SetTimer = (callback, delayMs) => {
  const timer = setTimeout(callback, delayMs);
  timer.unref();
  return () => clearTimeout(timer);
};

export { Testbed, testbedUnavailableReason, type TestbedNode, type TestbedOptions, type TestbedPod } from './testbed.js';
export type { TestbedCni } from './cni.js';
export { removeStaleTestbeds } from './owner.js';
export { parsePcap, startCapture, type Capture, type CapturedPacket } from './capture.js';

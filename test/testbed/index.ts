export { onPath, Testbed, testbedUnavailableReason, type TestbedNode, type TestbedOptions, type TestbedPod, type TestbedPodOptions } from './testbed.js';
export { readCniConfDir, type CniConflist, type CniErrorObject, type TestbedCni } from './cni.js';
export { removeStaleTestbeds } from './owner.js';
export { parsePcap, startCapture, type Capture, type CapturedPacket } from './capture.js';

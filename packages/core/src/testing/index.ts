// Test tooling for device models and protocol tests (`@vmm/core/testing`),
// kept out of the public entry point: an in-process transport that drives a
// device model through real rings, and the echo device (a tiny test-only
// device kind, also served as a process by echo-backend.ts).
export { InProcessDevice, type HarnessOptions, type HarnessQueue } from './harness.ts';
export { EchoDevice, ECHO_BREAK, ECHO_CONFIG, ECHO_DIE, ECHO_HOLD, ECHO_PARK, ECHO_RELEASE } from './echo-device.ts';
export { echoKind, ECHO_OPTIONS } from './echo-kind.ts';

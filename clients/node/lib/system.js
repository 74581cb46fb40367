// The original TypeScript system's shape: getIPCSystem() and its send(group, type, payload,
// requiresAck = false), so code written for it runs unchanged against ipcpool.
//
// The receiving side (startEnhancedIPC, handlers for tasks and commands) is ipcpool's Python
// supervisor, configured in its TOML [handlers]; registerHandler here takes only the ERROR
// handler, which hears of messages that were given up on (nacked, not acknowledged, no supervisor).

import { IpcpoolError } from './errors.js';
import { IPCMessageType } from './envelope.js';
import { request, send, sendAndWait } from './client.js';
import { resolveRoot } from './spool.js';

/** A system with its own defaults (root, logger, ack policy, ...), for more than one root or policy. */
export function createIPCSystem(defaults = {}) {
  const errorHandlers = [];
  const onGiveUp = (report) => {
    for (const handler of errorHandlers) handler(report);
    return defaults.onGiveUp?.(report);
  };
  const withDefaults = (options) => ({ ...defaults, onGiveUp, ...options });
  return Object.freeze({
    get root() {
      return resolveRoot(defaults.root);
    },
    /** Publish; with requiresAck, resolve once acked (retrying per the ack policy). Resolves with the id. */
    send(group, type, payload, requiresAck = false, options = {}) {
      const merged = withDefaults(options);
      return requiresAck === true ? sendAndWait(group, type, payload, merged) : send(group, type, payload, { ...merged, requiresAck });
    },
    sendAndWait(group, type, payload, options = {}) {
      return sendAndWait(group, type, payload, withDefaults(options));
    },
    request(group, type, payload, options = {}) {
      return request(group, type, payload, withDefaults(options));
    },
    registerHandler(type, handler) {
      if (type !== IPCMessageType.ERROR) {
        throw new IpcpoolError(`handlers for '${type}' messages run in the ipcpool supervisor: name them in its `
          + "config's [handlers] table; this Node client only sends (registerHandler takes IPCMessageType.ERROR, "
          + 'which hears of messages given up on)');
      }
      if (typeof handler !== 'function') throw new TypeError('handler must be a function');
      errorHandlers.push(handler);
    },
  });
}

let system = null;

/**
 * The process's one IPC system, as in the original API. Options (root, logger, ack, ...) apply when
 * it is first made; passing them again to an existing one is refused rather than ignored.
 */
export function getIPCSystem(options) {
  if (system === null) {
    system = createIPCSystem(options ?? {});
  } else if (options !== undefined) {
    throw new IpcpoolError('getIPCSystem() was called before: pass its options on the first call, or use '
      + 'createIPCSystem(options) for a system of its own');
  }
  return system;
}

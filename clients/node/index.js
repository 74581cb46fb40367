// ipcpool's Node.js sender: publish messages into an ipcpool spool (<root>/<group>/messages/) and
// wait for their acks, nacks and responses, as the Python Client does. Plain ESM, no dependencies.

export {
  AckTimeout,
  InvalidMessage,
  IpcpoolError,
  MessageExists,
  MessageFailed,
  MessageNotHandled,
  MessageRejected,
  NoSupervisor,
  ResponseTimeout,
} from './lib/errors.js';
export { GROUP_NAME, IPCMessageType, MAX_MESSAGE_BYTES, MESSAGE_ID, TYPE_NAME } from './lib/envelope.js';
export {
  ACK_DEFAULTS, DEFAULT_REPLY_GROUP, REQUEST_TIMEOUT_MS, prepare, publish, request, send, sendAndWait,
} from './lib/client.js';
export { resolveRoot } from './lib/spool.js';
export { supervisorStatus } from './lib/supervisor.js';
export { createIPCSystem, getIPCSystem } from './lib/system.js';

// Types for ipcpool's Node.js sender (hand-written: the package is plain ESM JavaScript, no build).
// Self-contained: no @types/node needed, so an agent's own tsconfig decides its libs.

/** The original system's message types; any other short type name is allowed too. */
export declare const IPCMessageType: {
  readonly TASK: 'task';
  readonly COMMAND: 'command';
  readonly RESPONSE: 'response';
  readonly ERROR: 'error';
  readonly HEARTBEAT: 'heartbeat';
};
export type IPCMessageType = (typeof IPCMessageType)[keyof typeof IPCMessageType];

/** ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ — a group (folder) name, as ipcpool's message.py. */
export declare const GROUP_NAME: RegExp;
/** ^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$ — a message id (also its file name). */
export declare const MESSAGE_ID: RegExp;
/** ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$ — a message type. */
export declare const TYPE_NAME: RegExp;
/** [spool] max_message_bytes' default (1 MiB). */
export declare const MAX_MESSAGE_BYTES: number;

/** A message as it is on the wire: the original system's keys; unknown keys are kept by ipcpool. */
export interface IPCMessage<P = unknown> {
  id: string;
  type: string;
  groupFolder: string;
  payload: P;
  /** ISO-8601 with milliseconds and Z, e.g. 2024-01-01T00:00:00.000Z */
  timestamp: string;
  requiresAck?: boolean;
  replyTo?: string;
  [extra: string]: unknown;
}

/** acks/<id>.nack: the message ended in errors/. */
export interface NackRecord {
  id: string;
  type: string | null;
  group?: string;
  outcome: 'rejected' | 'failed' | 'poisoned';
  reason: string;
  errorType?: string | null;
  errorFile?: string;
  /** The envelope's own timestamp: a nack of an older message with the same id has another. */
  timestamp: string | null;
  time?: string;
  [key: string]: unknown;
}

/** The payload of a response that says the handler failed. */
export interface FailedResponsePayload {
  requestId: string;
  success: false;
  error: string;
  errorType: string;
  errorFile: string;
}

/** Pino-style: each method takes (fields, message). `console` works too; missing methods do nothing. */
export interface Logger {
  debug?(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
  warn?(fields: Record<string, unknown>, message: string): void;
  error?(fields: Record<string, unknown>, message: string): void;
}

/** An AbortSignal (structurally: no DOM or Node typings needed). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** ipcpool's [ack] section, in milliseconds. Defaults: 30000, 3, 5000, 1.0, 0. */
export interface AckPolicy {
  /** How long one attempt waits for the ack ([ack] timeout). */
  timeoutMs?: number;
  /** Attempts after the first ([ack] max_retries). */
  maxRetries?: number;
  /** Pause between attempts ([ack] retry_delay). */
  retryDelayMs?: number;
  /** Multiplier of the pause per attempt ([ack] backoff). */
  backoff?: number;
  /** Random extra pause, up to this ([ack] jitter). */
  jitterMs?: number;
}
export declare const ACK_DEFAULTS: Readonly<Required<AckPolicy>>;
export declare const REQUEST_TIMEOUT_MS: number;
export declare const DEFAULT_REPLY_GROUP: string;

export interface SpoolOptions {
  /** The spool root; else $IPCPOOL_ROOT, else "data/ipc" (relative to the working directory). */
  root?: string;
  /** [spool] mode: the folder and file modes this sender creates with. Default: the root's own (shared when the root is setgid, as a shared root is; else private). */
  mode?: 'private' | 'shared';
  /** [spool] durability: "power" fsyncs the file, then the folder. Default "process". */
  durability?: 'process' | 'power';
  /** Where the log lines go; false for none. Default: silent, or stderr at $LOG_LEVEL when set. */
  logger?: Logger | false;
}

export interface PrepareOptions {
  /** The message id (and file name); default a random UUID v4. */
  id?: string;
  requiresAck?: boolean;
  replyTo?: string;
  /** Its sequence (1-200 characters): handled one at a time, in publish order, with the others of the key. */
  orderingKey?: string;
  /** More envelope keys, kept by ipcpool (Message.extra in a handler); the envelope's own keys are refused. */
  extra?: Record<string, unknown>;
  /** Seconds from now before a handler may get it (writes notBefore); or notBefore itself. */
  delay?: number;
  notBefore?: Date | string;
  /** Seconds from now after which it is dead-lettered as "expired" instead (writes expiresAt); or expiresAt. */
  ttl?: number;
  expiresAt?: Date | string;
  /** The receiver's [spool] max_message_bytes (default 1 MiB): larger messages throw InvalidMessage. */
  maxMessageBytes?: number;
}

export interface SendOptions extends SpoolOptions, PrepareOptions {}

/** What a sender reports to its give-up hook (and to an IPCMessageType.ERROR handler). */
export interface GiveUpPayload {
  error: string;
  messageId: string;
  recoverable: false;
  attempts?: number;
  reason?: string;
  errorFile?: string;
  outcome?: string;
}

export interface WaitOptions {
  /**
   * When no supervisor is running for the root (status.json: none, a final state, or stale), wait
   * anyway (per the ack policy or timeout) instead of rejecting at once with NoSupervisor.
   */
  waitForSupervisor?: boolean;
  /** Stop waiting (the message stays published); rejects with the signal's reason. */
  signal?: AbortSignalLike;
  /** Hears of each message given up on (nacked, not acknowledged, no supervisor). */
  onGiveUp?: (report: IPCMessage<GiveUpPayload>) => unknown;
}

export interface SendAndWaitOptions extends SpoolOptions, Omit<PrepareOptions, 'requiresAck'>, WaitOptions {
  ack?: AckPolicy;
  /** One attempt's wait, overriding ack.timeoutMs. */
  timeoutMs?: number;
}

export interface RequestOptions extends SpoolOptions, Omit<PrepareOptions, 'requiresAck' | 'replyTo'>, WaitOptions {
  /** The group the response comes back to (replyTo): <root>/<replyGroup>/responses/<id>.json. Default "main". */
  replyGroup?: string;
  /** How long to wait for the response. Default 30000. */
  timeoutMs?: number;
}

/** A message built and encoded, ready to publish. */
export interface PreparedMessage {
  readonly id: string;
  readonly group: string;
  readonly type: string;
  /** <id>.json */
  readonly name: string;
  /** The JSON bytes as they will be written. */
  readonly data: Uint8Array;
  readonly timestamp: string;
  readonly envelope: IPCMessage;
}

export interface SupervisorStatus {
  /** true: a supervisor serves the root; false: none does; null: cannot be told (unreadable, starting). */
  running: boolean | null;
  root: string;
  state?: string | null;
  detail: string;
}

/** Build and encode a message as the receiver will validate it (nothing is published). */
export declare function prepare(group: string, type: string, payload?: unknown, options?: PrepareOptions): PreparedMessage;
/** Queue a prepared message (tmp/, then renamed into messages/). The identical bytes again succeed; others throw MessageExists. */
export declare function publish(message: PreparedMessage, options?: SpoolOptions): Promise<string>;
/** Publish one message; resolves with its id once it is in messages/. */
export declare function send(group: string, type: string, payload?: unknown, options?: SendOptions): Promise<string>;
/** Publish with requiresAck and resolve with the id once acked (retrying per the ack policy). */
export declare function sendAndWait(group: string, type: string, payload?: unknown, options?: SendAndWaitOptions): Promise<string>;
/** Publish with replyTo and resolve with the handler's result. */
export declare function request<R = unknown>(group: string, type: string, payload?: unknown, options?: RequestOptions): Promise<R>;
/** What <root>/.ipcpool/status.json says of the root's supervisor. */
export declare function supervisorStatus(root?: string): Promise<SupervisorStatus>;
/** The absolute spool root the options (or $IPCPOOL_ROOT, or data/ipc) name. */
export declare function resolveRoot(root?: string): string;

/** The original system's object. */
export interface IPCSystem {
  /** The absolute spool root. */
  readonly root: string;
  /** Publish; with requiresAck true, resolve once acked. Resolves with the message id. */
  send(group: string, type: IPCMessageType | string, payload?: unknown, requiresAck?: boolean, options?: SendAndWaitOptions): Promise<string>;
  sendAndWait(group: string, type: IPCMessageType | string, payload?: unknown, options?: SendAndWaitOptions): Promise<string>;
  request<R = unknown>(group: string, type: IPCMessageType | string, payload?: unknown, options?: RequestOptions): Promise<R>;
  /** Only IPCMessageType.ERROR: hears of messages given up on. Other handlers live in the supervisor's [handlers]. */
  registerHandler(type: 'error', handler: (message: IPCMessage<GiveUpPayload>) => unknown): void;
}

export interface IPCSystemOptions extends SpoolOptions, WaitOptions {
  ack?: AckPolicy;
  replyGroup?: string;
}

/** The process's one IPC system; options apply when it is first made (passing them again throws). */
export declare function getIPCSystem(options?: IPCSystemOptions): IPCSystem;
/** A system of its own, with these defaults. */
export declare function createIPCSystem(options?: IPCSystemOptions): IPCSystem;

/** Root of every error this package throws on purpose. */
export declare class IpcpoolError extends Error {}
/** Not a message ipcpool would accept: a bad group, id or type, unencodable, too large. */
export declare class InvalidMessage extends IpcpoolError {}
/** A different message with this name is already queued; publishing would replace it. */
export declare class MessageExists extends IpcpoolError {
  constructor(group: string, file: string);
  readonly group: string;
  /** The file name, <id>.json */
  readonly file: string;
  readonly messageId: string;
}
/** The message ended in errors/ (acks/<id>.nack, or a failed response). */
export declare class MessageNotHandled extends IpcpoolError {
  readonly messageId: string;
  readonly group: string;
  readonly reason: string;
  /** Where the error record is: <group>/errors/<name> */
  readonly errorFile: string;
  readonly outcome: 'rejected' | 'failed' | 'poisoned' | string;
  /** The nack as read, or a failed response's payload. */
  readonly record: NackRecord | FailedResponsePayload | null;
}
/** It never reached a handler (no handler for its type, not allowed in the group, invalid, too large). */
export declare class MessageRejected extends MessageNotHandled {}
/** Its handler raised on every attempt, or it was poison. */
export declare class MessageFailed extends MessageNotHandled {
  /** The exception's type, e.g. RuntimeError, when the handler raised. */
  readonly errorType: string;
}
export declare class AckTimeout extends IpcpoolError {
  readonly messageId: string;
  readonly group: string;
  readonly attempts: number;
  readonly timeoutMs: number;
  readonly hint: string;
}
export declare class ResponseTimeout extends IpcpoolError {
  readonly messageId: string;
  readonly group: string;
  readonly timeoutMs: number;
  readonly hint: string;
}
/**
 * No supervisor is running for the root: "no ipcpool supervisor is running for <root>; the message
 * stays queued and will be handled when one starts". The message was published.
 */
export declare class NoSupervisor extends IpcpoolError {
  readonly root: string;
  readonly messageId: string;
  readonly group: string;
  /** How that was told: no status.json, a final state, a stale status. */
  readonly detail: string;
}

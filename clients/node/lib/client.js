// Sending (ipcpool/client.py's Client, for the file spool): publish, wait for the ack with the
// [ack] retry policy, request/response. Re-sends keep the same id and bytes, and happen only when
// the message is no longer queued, in flight, acknowledged or refused, so a slow handler never
// gets a second copy. A nack answers at once; with no supervisor for the root, the wait ends at
// once with NoSupervisor (the message stays queued) unless the caller chose to wait for one.

import { createHash } from 'node:crypto';

import {
  AckTimeout,
  InvalidMessage,
  MessageFailed,
  MessageNotHandled,
  MessageRejected,
  NoSupervisor,
  ResponseTimeout,
  noSupervisorSentence,
} from './errors.js';
import { checkGroupName, prepare as prepareEnvelope } from './envelope.js';
import { resolveLogger } from './log.js';
import {
  ackPath,
  checkDurability,
  checkMode,
  ensureGroup,
  fileExists,
  nackPath,
  present,
  publishFile,
  readJsonObject,
  resolveRoot,
  responsePath,
  takeResponse,
} from './spool.js';
import { supervisorStatus } from './supervisor.js';
import { waitFor } from './wait.js';

/** The [ack] defaults of ipcpool's config (and of the original system), in milliseconds. */
export const ACK_DEFAULTS = Object.freeze({ timeoutMs: 30000, maxRetries: 3, retryDelayMs: 5000, backoff: 1.0, jitterMs: 0 });
export const REQUEST_TIMEOUT_MS = 30000;
export const DEFAULT_REPLY_GROUP = 'main';

function checkNumber(value, what, { integer = false, min = 0 } = {}) {
  if (typeof value !== 'number' || Number.isNaN(value) || value < min || (integer && !Number.isInteger(value))) {
    throw new TypeError(`${what} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${String(value)}`);
  }
  return value;
}

function ackPolicy(options) {
  const ack = { ...ACK_DEFAULTS, ...(options.ack ?? {}) };
  checkNumber(ack.timeoutMs, 'ack.timeoutMs');
  checkNumber(ack.maxRetries, 'ack.maxRetries', { integer: true });
  checkNumber(ack.retryDelayMs, 'ack.retryDelayMs');
  checkNumber(ack.backoff, 'ack.backoff');
  checkNumber(ack.jitterMs, 'ack.jitterMs');
  if (options.timeoutMs !== undefined) ack.timeoutMs = checkNumber(options.timeoutMs, 'timeoutMs');
  return ack;
}

function settings(options) {
  const root = resolveRoot(options.root);
  return {
    root,
    mode: checkMode(options.mode, root),
    durability: checkDurability(options.durability),
    log: resolveLogger(options.logger),
    waitForSupervisor: options.waitForSupervisor === true,
    signal: options.signal,
    onGiveUp: options.onGiveUp,
  };
}

/** Pause before attempt `attempt + 1`: retry_delay, times backoff per attempt (capped), plus jitter (retry.py). */
export function retryDelayMs(ack, attempt) {
  let delay = ack.retryDelayMs;
  if (ack.backoff > 1) {
    const cap = ack.retryDelayMs * ack.backoff ** Math.max(ack.maxRetries, 1);
    delay = Math.min(Math.max(ack.retryDelayMs * ack.backoff ** (attempt - 1), ack.retryDelayMs), cap);
  }
  return delay + (ack.jitterMs > 0 ? Math.random() * ack.jitterMs : 0);
}

/** Build and encode a message as the receiver will validate it (nothing is published). */
export function prepare(group, type, payload, options = {}) {
  return prepareEnvelope(group, type, payload, options);
}

/**
 * Queue a prepared message: written in tmp/, renamed into messages/. Publishing the identical
 * bytes again is a success (that is the same message); different bytes under a queued name throw
 * MessageExists. Resolves with the message's id.
 */
export async function publish(message, options = {}) {
  const root = resolveRoot(options.root);
  await publishFile(root, message.group, message.name, message.data, {
    mode: checkMode(options.mode, root), durability: checkDurability(options.durability),
  });
  return message.id;
}

/** Publish one message (fire and forget); resolves with its id once it is in messages/. */
export async function send(group, type, payload, options = {}) {
  const message = prepare(group, type, payload, options);
  await publish(message, options);
  resolveLogger(options.logger).debug({ id: message.id, group, type }, 'IPC message sent');
  return message.id;
}

/** Whether a nack answers this very message, not an older one that had the same id. */
// This very message's nack: its timestamp (not an older message's with the same id), or, for a file that did not
// decode, the digest of our very bytes (not another writer's file dropped under our id).
const nackMatches = (message) => {
  const digest = createHash('sha256').update(message.data).digest('hex');
  return (body) => body.timestamp === message.timestamp
    || ((body.timestamp === undefined || body.timestamp === null) && body.sha256 === digest);
};

function reportGiveUp(ctx, error) {
  if (typeof ctx.onGiveUp !== 'function') return;
  const payload = { error: error.message, messageId: error.messageId ?? '', recoverable: false };
  if (error instanceof AckTimeout) payload.attempts = error.attempts;
  if (error instanceof MessageNotHandled) Object.assign(payload, { reason: error.reason, errorFile: error.errorFile, outcome: error.outcome });
  const report = {
    id: `${error.messageId}-error`, type: 'error', groupFolder: error.group ?? '', payload, timestamp: new Date().toISOString(),
  };
  try {
    const result = ctx.onGiveUp(report);
    if (result && typeof result.catch === 'function') {
      result.catch((hookError) => ctx.log.error({ id: error.messageId, error: String(hookError) }, 'error handler failed'));
    }
  } catch (hookError) {
    ctx.log.error({ id: error.messageId, error: String(hookError) }, 'error handler failed');
  }
}

/** A nack as the typed error for its sender. */
export function errorFromNack(messageId, group, body) {
  const reason = String(body.reason || 'moved to the dead letters');
  const outcome = String(body.outcome || 'rejected');
  const details = { errorFile: String(body.errorFile || ''), outcome, record: body };
  if (outcome === 'rejected') return new MessageRejected(messageId, group, reason, details);
  return new MessageFailed(messageId, group, reason, { ...details, errorType: String(body.errorType || '') });
}

function nacked(ctx, message, body) {
  const error = errorFromNack(message.id, message.group, body);
  ctx.log.error({ id: message.id, group: message.group, outcome: error.outcome, reason: error.reason }, 'IPC message not handled');
  reportGiveUp(ctx, error);
  return error;
}

function noSupervisor(ctx, message, status) {
  const error = new NoSupervisor(status.root, message.id, message.group, status.detail);
  ctx.log.error({ id: message.id, group: message.group, detail: status.detail }, error.message);
  reportGiveUp(ctx, error);
  return error;
}

function waitingHint(status) {
  if (status.running === false) return noSupervisorSentence(status.root);
  if (status.running) {
    return 'the supervisor is running: its handler may take longer than the timeout (see [ack] timeout), '
      + 'or it could not read the file (written by another user without shared mode? see errors/)';
  }
  return `is \`ipcpool run\` up for this root? (${status.detail})`;
}

/** The first answer file there: the ack (or response), else a nack that is this message's. */
function answerProbe(message, first, nack, { response = false } = {}) {
  const accept = nackMatches(message);
  return async () => {
    if (response) {
      const body = await takeResponse(first);
      if (body !== null) return { kind: 'response', body };
    } else if (await fileExists(first)) {
      return { kind: 'ack' };
    }
    const body = await readJsonObject(nack);
    if (body !== null && accept(body)) return { kind: 'nack', body };
    return null;
  };
}

/** Reject at once with NoSupervisor when status.json says none is running (unless told to wait for one). */
async function failFastWithoutSupervisor(ctx, message) {
  if (ctx.waitForSupervisor) return;
  const status = await supervisorStatus(ctx.root);
  if (status.running === false) throw noSupervisor(ctx, message, status);
}

/**
 * Publish with requiresAck and wait for its ack, retrying per the [ack] policy. Resolves with the
 * id; rejects with MessageRejected / MessageFailed when it ends in errors/, NoSupervisor when no
 * supervisor serves the root, AckTimeout after every attempt.
 */
export async function sendAndWait(group, type, payload, options = {}) {
  const ctx = settings(options);
  const ack = ackPolicy(options);
  const message = prepare(group, type, payload, { ...options, requiresAck: true });
  const fields = { id: message.id, group, type };
  const files = [ackPath(ctx.root, group, message.id), nackPath(ctx.root, group, message.id)];
  const probe = answerProbe(message, ...files);
  const attempts = ack.maxRetries + 1;
  const judge = (answer, attempt) => {
    if (answer.kind === 'nack') throw nacked(ctx, message, answer.body);
    ctx.log.info({ ...fields, attempt }, 'ACK received');
    return message.id;
  };
  for (let attempt = 1; attempt <= attempts; attempt += 1) {
    if (attempt === 1) {
      await publish(message, { ...options, root: ctx.root });
      ctx.log.info({ ...fields, waiting: 'ACK' }, 'IPC message sent');
      const early = await probe();
      if (early) return judge(early, attempt);
      await failFastWithoutSupervisor(ctx, message);
    } else {
      const nack = await readJsonObject(files[1]);
      if (nack !== null && nackMatches(message)(nack)) throw nacked(ctx, message, nack);
      if (!(await present(ctx.root, group, message.name, message.id))) {
        await publish(message, { ...options, root: ctx.root });
        ctx.log.warn({ ...fields, attempt, resent: true }, 'Retrying IPC message');
      } else {
        ctx.log.warn({ ...fields, attempt, resent: false, why: 'still queued or in flight' }, 'Retrying IPC message');
      }
    }
    // A delayed message cannot be acked before its notBefore: an attempt's wait counts from then.
    const due = message.envelope.notBefore ? Date.parse(message.envelope.notBefore) : 0;
    const answer = await waitFor(files, probe, ack.timeoutMs + Math.max(0, due - Date.now()), ctx.signal);
    if (answer) return judge(answer, attempt);
    ctx.log.warn({ ...fields, attempt, of: attempts, timeoutMs: ack.timeoutMs }, 'ACK timeout');
    await failFastWithoutSupervisor(ctx, message);
    if (attempt < attempts) {
      // The pause between attempts is a wait too: an ack that comes meanwhile ends it.
      const late = await waitFor(files, probe, retryDelayMs(ack, attempt), ctx.signal);
      if (late) return judge(late, attempt);
    }
  }
  const error = new AckTimeout(message.id, group, attempts, ack.timeoutMs, waitingHint(await supervisorStatus(ctx.root)));
  ctx.log.error({ ...fields, attempts }, 'IPC message not acknowledged, giving up');
  reportGiveUp(ctx, error);
  throw error;
}

/** A response file's result, or MessageFailed with the handler's error. */
export function unpackResponse(messageId, group, body) {
  let payload;
  try {
    payload = JSON.parse(body.toString('utf8')).payload;
    if (payload === null || typeof payload !== 'object') throw new TypeError('no payload object');
  } catch (error) {
    throw new InvalidMessage(`unreadable response to ${messageId}: ${error.message}`, { cause: error });
  }
  if (payload.success) return payload.result ?? null;
  const errorType = String(payload.errorType ?? '');
  const text = String(payload.error ?? 'unknown error');
  const reason = errorType ? `handler raised ${errorType}: ${text}` : text;
  throw new MessageFailed(messageId, group, reason, {
    errorFile: String(payload.errorFile || ''), outcome: 'failed', errorType, record: payload,
  });
}

/**
 * Send with replyTo = the reply group (options.replyGroup, default "main": the Python Client's own
 * group) and resolve with the handler's result, read from <replyGroup>/responses/<id>.json (then
 * removed). Rejects with MessageFailed when the handler failed, MessageRejected when no handler
 * took it, NoSupervisor when none serves the root, ResponseTimeout after timeoutMs (default 30 s).
 */
export async function request(group, type, payload, options = {}) {
  const ctx = settings(options);
  const replyGroup = checkGroupName(options.replyGroup ?? DEFAULT_REPLY_GROUP, 'reply group');
  const timeoutMs = checkNumber(options.timeoutMs ?? REQUEST_TIMEOUT_MS, 'timeoutMs');
  await ensureGroup(ctx.root, replyGroup, ctx.mode); // where the response comes back
  const message = prepare(group, type, payload, { ...options, requiresAck: false, replyTo: replyGroup });
  const files = [responsePath(ctx.root, replyGroup, message.id), nackPath(ctx.root, group, message.id)];
  const probe = answerProbe(message, ...files, { response: true });
  await publish(message, { ...options, root: ctx.root });
  ctx.log.info({ id: message.id, group, type, waiting: 'response' }, 'IPC message sent');
  let answer = await probe();
  if (!answer) {
    await failFastWithoutSupervisor(ctx, message);
    answer = await waitFor(files, probe, timeoutMs, ctx.signal);
  }
  if (!answer) {
    const error = new ResponseTimeout(message.id, group, timeoutMs, waitingHint(await supervisorStatus(ctx.root)));
    ctx.log.warn({ id: message.id, group, timeoutMs }, 'Response timeout');
    reportGiveUp(ctx, error);
    throw error;
  }
  if (answer.kind === 'nack') throw nacked(ctx, message, answer.body);
  try {
    const result = unpackResponse(message.id, group, answer.body);
    ctx.log.info({ id: message.id, group }, 'Response received');
    return result;
  } catch (error) {
    if (error instanceof MessageNotHandled) {
      ctx.log.error({ id: message.id, group, reason: error.reason }, 'IPC message not handled');
      reportGiveUp(ctx, error);
    }
    throw error;
  }
}


// Envelopes as ipcpool validates them (ipcpool/message.py): the original system's wire keys,
// the same name rules, JSON bytes that a receiver decodes to exactly what was built.

import { randomUUID } from 'node:crypto';
import { InvalidMessage } from './errors.js';

// JavaScript's $ without the m flag matches only at the very end, as Python's \Z does.
export const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
export const MESSAGE_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
export const TYPE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
export const ENVELOPE_KEYS = Object.freeze(['id', 'type', 'groupFolder', 'payload', 'timestamp', 'requiresAck', 'replyTo']);
export const MAX_MESSAGE_BYTES = 1024 * 1024; // [spool] max_message_bytes' default

/** The original system's message types; any other short type name is allowed too. */
export const IPCMessageType = Object.freeze({
  TASK: 'task',
  COMMAND: 'command',
  RESPONSE: 'response',
  ERROR: 'error',
  HEARTBEAT: 'heartbeat',
});

function short(value) {
  let text;
  try {
    text = typeof value === 'string' ? `'${value}'` : JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length <= 80 ? text : `${text.slice(0, 77)}...`;
}

export function checkGroupName(name, what = 'group name') {
  if (typeof name !== 'string' || !GROUP_NAME.test(name)) {
    throw new InvalidMessage(
      `invalid ${what} ${short(name)}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit`);
  }
  return name;
}

export function checkMessageId(id) {
  if (typeof id !== 'string' || !MESSAGE_ID.test(id)) {
    throw new InvalidMessage(`invalid envelope: id must be 1-128 letters, digits, '_' or '-', got ${short(id)}`);
  }
  return id;
}

export function checkType(type) {
  if (typeof type !== 'string' || !TYPE_NAME.test(type)) {
    throw new InvalidMessage(
      `invalid envelope: type must be a short name of letters, digits, '_', '.', ':' or '-', got ${short(type)}`);
  }
  return type;
}

function toMillis(value, key) {
  const ms = value instanceof Date ? value.getTime() : typeof value === 'string' ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms) || (typeof value === 'string' && !/(Z|[+-]\d\d:?\d\d)$/.test(value))) {
    throw new InvalidMessage(`${key} must be a Date or an ISO-8601 time with its zone (2026-12-24T08:00:00Z)`);
  }
  return ms;
}

function seconds(value, key) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new InvalidMessage(`${key} must be a number of seconds, 0 or more`);
  }
  return value;
}

/**
 * The time window's envelope keys (notBefore, expiresAt) from delay/notBefore and ttl/expiresAt, as the
 * Python client writes them; one that can never open (expiry at or before the due time) throws.
 */
export function timeWindow({ delay, notBefore, ttl, expiresAt } = {}, now = Date.now()) {
  if (delay != null && notBefore != null) throw new InvalidMessage('give delay or notBefore, not both');
  if (ttl != null && expiresAt != null) throw new InvalidMessage('give ttl or expiresAt, not both');
  const keys = {};
  let due = null;
  if (delay != null && seconds(delay, 'delay') > 0) due = now + delay * 1000;
  else if (notBefore != null) due = toMillis(notBefore, 'notBefore');
  if (due !== null) keys.notBefore = new Date(Math.ceil(due)).toISOString();
  let expires = null;
  if (ttl != null) {
    if (seconds(ttl, 'ttl') <= 0) throw new InvalidMessage('ttl must be more than 0 seconds');
    expires = now + ttl * 1000;
  } else if (expiresAt != null) expires = toMillis(expiresAt, 'expiresAt');
  if (expires !== null) {
    if (due !== null && expires <= due) {
      throw new InvalidMessage(`the message would expire (${new Date(expires).toISOString()}) before it is due `
        + `(${new Date(due).toISOString()}): it could never be handed out`);
    }
    keys.expiresAt = new Date(Math.floor(expires)).toISOString();
  }
  return keys;
}

/** A fresh wire envelope, validated as the receiver will validate it. */
export function buildEnvelope(group, type, payload, {
  id, requiresAck = false, replyTo, orderingKey, extra, delay, notBefore, ttl, expiresAt,
} = {}) {
  const window = timeWindow({ delay, notBefore, ttl, expiresAt });
  checkGroupName(group);
  checkType(type);
  if (replyTo !== undefined && replyTo !== null) checkGroupName(replyTo, 'replyTo group');
  if (id !== undefined && id !== null && id !== '') checkMessageId(id);
  if (typeof requiresAck !== 'boolean') {
    throw new InvalidMessage(`invalid envelope: requiresAck must be true or false, got ${short(requiresAck)}`);
  }
  const envelope = {
    id: id || randomUUID(),
    type,
    groupFolder: group,
    // An envelope is an object with a type and a payload: without the key it would be read as legacy JSON.
    payload: payload === undefined ? null : payload,
    timestamp: new Date().toISOString(), // ISO-8601, milliseconds, Z: what the nacks carry back
    requiresAck,
  };
  if (replyTo !== undefined && replyTo !== null) envelope.replyTo = replyTo;
  if (orderingKey !== undefined && orderingKey !== null) {
    if (typeof orderingKey !== 'string' || orderingKey.length < 1 || orderingKey.length > 200) {
      throw new InvalidMessage(
        `invalid envelope: orderingKey must be a string of 1-200 characters, got ${short(orderingKey)}`);
    }
    envelope.orderingKey = orderingKey; // its sequence: handled one at a time, in publish order
  }
  Object.assign(envelope, window);
  if (extra !== undefined && extra !== null) {
    if (typeof extra !== 'object' || Array.isArray(extra)) {
      throw new InvalidMessage(`extra must be an object of additional envelope keys, got ${short(extra)}`);
    }
    for (const [key, value] of Object.entries(extra)) {
      if (ENVELOPE_KEYS.includes(key)) {
        throw new InvalidMessage(`extra key '${key}' is an envelope key; pass it as its own argument or option`);
      }
      envelope[key] = value;
    }
  }
  return envelope;
}

/** The envelope as UTF-8 JSON bytes (compact, as ipcpool writes). */
export function encode(envelope, maxBytes = MAX_MESSAGE_BYTES) {
  let text;
  try {
    text = JSON.stringify(envelope);
  } catch (error) {
    throw new InvalidMessage(`cannot encode as json: ${error.message}`, { cause: error });
  }
  const data = Buffer.from(text, 'utf8');
  if (data.length > maxBytes) {
    throw new InvalidMessage(`message is ${data.length} bytes, over the receiver's limit of ${maxBytes} `
      + '([spool] max_message_bytes)');
  }
  return data;
}

/**
 * One message ready to publish: its id, group, file name, bytes, and the timestamp inside
 * (a nack carries it back, so an older nack of a reused id is told apart).
 */
export function prepare(group, type, payload, options = {}) {
  const envelope = buildEnvelope(group, type, payload, options);
  const data = encode(envelope, options.maxMessageBytes ?? MAX_MESSAGE_BYTES);
  return Object.freeze({
    id: envelope.id,
    group,
    type,
    // A message of a sequence is marked: the supervisor reads its key before it hands it out.
    name: envelope.orderingKey === undefined ? `${envelope.id}.json` : `${envelope.id}.ordered.json`,
    data,
    timestamp: envelope.timestamp,
    envelope,
  });
}

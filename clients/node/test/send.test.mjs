// Publishing: the envelope a handler receives, the spool's folder and file modes, atomic and
// no-replace placement (MessageExists), validation before anything is written.

import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import {
  IPCMessageType, InvalidMessage, IpcpoolError, MessageExists, prepare, publish, send, sendAndWait,
} from '../index.js';
import { startPool, tempDir } from './helpers.mjs';

const ISO_MS_Z = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test('send publishes an envelope the handler receives with the wire keys', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  const id = await send('main', IPCMessageType.TASK, { taskId: 123, prompt: 'Execute this task' }, {
    root: pool.root, replyTo: 'group1', extra: { traceId: 'trace-1', attempt: 2 },
  });
  assert.match(id, UUID_V4);
  const seen = await pool.waitForRecord((r) => r.id === id, `the handler to receive ${id}`);
  assert.equal(seen.type, 'task');
  assert.equal(seen.group, 'main');
  assert.deepEqual(seen.payload, { taskId: 123, prompt: 'Execute this task' });
  assert.equal(seen.requires_ack, false);
  assert.equal(seen.reply_to, 'group1');
  assert.match(seen.timestamp, ISO_MS_Z);
  assert.deepEqual(seen.extra, { traceId: 'trace-1', attempt: 2 }, 'unknown keys reach the handler as Message.extra');
  assert.equal(seen.legacy, false, 'an envelope, not legacy JSON');
});

test('prepare builds exactly the original wire keys', () => {
  const plain = prepare('main', 'task', { taskId: 1 });
  assert.deepEqual(Object.keys(plain.envelope), ['id', 'type', 'groupFolder', 'payload', 'timestamp', 'requiresAck']);
  assert.equal(plain.envelope.requiresAck, false);
  assert.equal(plain.name, `${plain.id}.json`);
  assert.deepEqual(JSON.parse(Buffer.from(plain.data).toString()), plain.envelope);
  const full = prepare('group1', 'command', undefined, { id: 'job-7', requiresAck: true, replyTo: 'main' });
  assert.deepEqual(full.envelope, {
    id: 'job-7', type: 'command', groupFolder: 'group1', payload: null,
    timestamp: full.timestamp, requiresAck: true, replyTo: 'main',
  });
});

test('names, types and envelope keys are validated before anything is written', async (t) => {
  const root = path.join(await tempDir(t), 'ipc');
  const bad = [
    ['../etc', 'task', {}, {}],
    ['main', 'bad type!', {}, {}],
    ['main', 'task', {}, { id: 'a/b' }],
    ['main', 'task', {}, { id: 'x'.repeat(129) }],
    ['main', 'task', {}, { replyTo: 'no such/group' }],
    ['main', 'task', {}, { requiresAck: 'yes' }],
    ['main', 'task', {}, { extra: { payload: 1 } }],
    ['main', 'task', { big: 'x'.repeat(2000) }, { maxMessageBytes: 1000 }],
    ['main', 'task', { n: 10n }, {}],
  ];
  for (const [group, type, payload, options] of bad) {
    await assert.rejects(send(group, type, payload, { root, ...options }), InvalidMessage);
  }
  assert.ok(InvalidMessage.prototype instanceof IpcpoolError);
  await assert.rejects(fsp.access(root), { code: 'ENOENT' }, 'nothing was created for a refused message');
});

test('folders and files get the modes ipcpool uses, whatever the umask', async (t) => {
  const dir = await tempDir(t);
  const oldMask = process.umask(0o077);
  t.after(() => process.umask(oldMask));
  const privateRoot = path.join(dir, 'private');
  const one = prepare('main', 'task', {});
  await publish(one, { root: privateRoot });
  const mode = async (p) => (await fsp.stat(p)).mode & 0o7777;
  for (const sub of ['', 'tmp', 'messages', 'processing', 'acks', 'responses', 'errors']) {
    assert.equal(await mode(path.join(privateRoot, 'main', sub)), 0o700, `private main/${sub}`);
  }
  assert.equal(await mode(path.join(privateRoot, 'main', 'messages', one.name)), 0o600);

  const sharedRoot = path.join(dir, 'shared');
  const two = prepare('main', 'task', {});
  await publish(two, { root: sharedRoot, mode: 'shared' });
  const expected = { '': 0o2750, tmp: 0o3770, messages: 0o3770, processing: 0o2700, acks: 0o2750, responses: 0o2750, errors: 0o2750 };
  for (const [sub, want] of Object.entries(expected)) {
    assert.equal(await mode(path.join(sharedRoot, 'main', sub)), want, `shared main/${sub}`);
  }
  assert.equal(await mode(path.join(sharedRoot, 'main', 'messages', two.name)), 0o640, 'group-readable in spite of umask 077, its writer\'s alone to change');
});

test('without a mode, a sender writes as the root is: shared into a setgid root, private elsewhere', async (t) => {
  const dir = await tempDir(t);
  const oldMask = process.umask(0o077);
  t.after(() => process.umask(oldMask));
  const mode = async (p) => (await fsp.stat(p)).mode & 0o7777;
  const sharedRoot = path.join(dir, 'shared');
  await fsp.mkdir(sharedRoot);
  await fsp.chmod(sharedRoot, 0o2750); // as a shared-mode supervisor (another user, perhaps) made it
  const one = prepare('main', 'task', {});
  await publish(one, { root: sharedRoot });
  assert.equal(await mode(path.join(sharedRoot, 'main', 'messages', one.name)), 0o640, 'its supervisor may read it');
  const privateRoot = path.join(dir, 'private');
  const two = prepare('main', 'task', {});
  await publish(two, { root: privateRoot });
  assert.equal(await mode(path.join(privateRoot, 'main', 'messages', two.name)), 0o600);
});

test('a published message is one link, renamed from tmp/ (the supervisor refuses hard links)', async (t) => {
  const root = path.join(await tempDir(t), 'ipc');
  const message = prepare('main', 'task', { n: 1 });
  await publish(message, { root });
  const st = await fsp.stat(path.join(root, 'main', 'messages', message.name));
  assert.equal(st.nlink, 1);
  assert.deepEqual(await fsp.readdir(path.join(root, 'main', 'tmp')), [], 'no temp file left behind');
  assert.deepEqual(await fsp.readFile(path.join(root, 'main', 'messages', message.name)), Buffer.from(message.data));
});

test('the same id with different bytes while queued is MessageExists; the same bytes pass', async (t) => {
  const root = path.join(await tempDir(t), 'ipc'); // no supervisor: the first copy stays queued
  const first = prepare('main', 'task', { version: 1 }, { id: 'job-42', requiresAck: true });
  await publish(first, { root });
  await publish(first, { root }); // the ack retry path's re-publish: the same message
  const file = path.join(root, 'main', 'messages', 'job-42.json');
  await assert.rejects(send('main', 'task', { version: 2 }, { root, id: 'job-42' }), (error) => {
    assert.ok(error instanceof MessageExists);
    assert.ok(error instanceof IpcpoolError);
    assert.equal(error.group, 'main');
    assert.equal(error.file, 'job-42.json');
    assert.match(error.message, /already queued in group 'main'; refusing to replace it/);
    return true;
  });
  assert.deepEqual(await fsp.readFile(file), Buffer.from(first.data), 'the queued message is untouched');
  assert.deepEqual(await fsp.readdir(path.join(root, 'main', 'tmp')), [], 'the refused copy left no temp file');
});

test('delay and ttl write notBefore and expiresAt; a window that never opens throws', () => {
  const before = Date.now();
  const timed = prepare('main', 'task', {}, { delay: 30, ttl: 60 });
  const due = Date.parse(timed.envelope.notBefore);
  assert.match(timed.envelope.notBefore, ISO_MS_Z);
  assert.ok(due >= before + 30000 && Date.parse(timed.envelope.expiresAt) > due);
  const at = prepare('main', 'task', {}, { notBefore: '2026-12-24T08:00:00Z' });
  assert.equal(at.envelope.notBefore, '2026-12-24T08:00:00.000Z');
  assert.throws(() => prepare('main', 'task', {}, { delay: 60, ttl: 30 }), InvalidMessage);
  assert.throws(() => prepare('main', 'task', {}, { notBefore: '2026-12-24T08:00:00' }), InvalidMessage);
});

test('a delayed message is handled, not before its notBefore; its ack wait counts from then', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  const id = await sendAndWait('main', IPCMessageType.TASK, { n: 1 }, {
    root: pool.root, delay: 1.5, ack: { timeoutMs: 1000, maxRetries: 0 },
  });
  const seen = await pool.waitForRecord((r) => r.id === id, `the handler to receive ${id}`);
  assert.ok(seen.at * 1000 >= Date.parse(seen.extra.notBefore), 'never handed out before its notBefore');
});

test('an orderingKey is on the wire, the file is marked and stamped in publish order', async (t) => {
  const root = await tempDir(t);
  const ids = [];
  for (let n = 0; n < 5; n += 1) ids.push(await send('main', 'task', { n }, { root, orderingKey: 'chat-42' }));
  const dir = path.join(root, 'main', 'messages');
  const times = [];
  for (const id of ids) {
    const file = path.join(dir, `${id}.ordered.json`);
    assert.equal(JSON.parse(await fsp.readFile(file, 'utf8')).orderingKey, 'chat-42');
    times.push((await fsp.stat(file, { bigint: true })).mtimeNs);
  }
  assert.ok(times.every((t, i) => i === 0 || t > times[i - 1]), 'rising modification times');
  assert.throws(() => prepare('main', 'task', {}, { orderingKey: 'x'.repeat(201) }), InvalidMessage);
  const both = prepare('main', 'task', {}, { orderingKey: 'chat-42', delay: 30, ttl: 60 });
  assert.equal(both.envelope.orderingKey, 'chat-42', 'an ordered message can be delayed and expire too');
  assert.ok(both.envelope.notBefore && both.envelope.expiresAt);
});

// Waiting for answers: acks, nacks (typed errors), responses, and the [ack] retry policy.

import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import {
  AckTimeout, IpcpoolError, MessageFailed, MessageNotHandled, MessageRejected, request, sendAndWait,
} from '../index.js';
import { captureLogger, startPool, tempDir } from './helpers.mjs';

test('sendAndWait resolves on the ack', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  const { logger, lines } = captureLogger();
  const id = await sendAndWait('main', 'task', { taskId: 1 }, { root: pool.root, logger });
  await fsp.access(path.join(pool.root, 'main', 'acks', `${id}.ack`));
  const seen = (await pool.readRecords()).find((r) => r.id === id);
  assert.equal(seen.requires_ack, true);
  assert.deepEqual(lines.map((l) => l.message), ['IPC message sent', 'ACK received']);
});

test('a failing handler rejects with MessageFailed carrying the reason', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  await assert.rejects(sendAndWait('main', 'fail', { why: 'disk on fire' }, { root: pool.root }), (error) => {
    assert.ok(error instanceof MessageFailed, error.stack);
    assert.ok(error instanceof MessageNotHandled && error instanceof IpcpoolError);
    assert.equal(error.outcome, 'failed');
    assert.match(error.reason, /RuntimeError: disk on fire/);
    assert.equal(error.errorType, 'RuntimeError');
    assert.match(error.errorFile, /^main\/errors\//);
    assert.equal(error.record.outcome, 'failed');
    assert.equal(error.record.id, error.messageId);
    return true;
  });
});

test('a type with no handler rejects with MessageRejected', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  await assert.rejects(sendAndWait('main', 'nohandler', { x: 1 }, { root: pool.root }), (error) => {
    assert.ok(error instanceof MessageRejected, error.stack);
    assert.ok(!(error instanceof MessageFailed));
    assert.equal(error.outcome, 'rejected');
    assert.equal(error.reason, 'no handler for type nohandler');
    assert.equal(error.record.reason, 'no handler for type nohandler');
    return true;
  });
});

test('request resolves with the handler result and removes the response it read', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  const { logger, lines } = captureLogger();
  const result = await request('main', 'ask', { q: 42 }, { root: pool.root, replyGroup: 'group1', logger });
  assert.deepEqual(result, { echo: { q: 42 }, status: 'completed' });
  const asked = (await pool.readRecords()).find((r) => r.handler === 'answer');
  assert.equal(asked.reply_to, 'group1', 'replyTo is the reply group');
  assert.deepEqual(await fsp.readdir(path.join(pool.root, 'group1', 'responses')), []);
  assert.ok(lines.some((l) => l.message === 'Response received' && l.id === asked.id));
});

test('request replies to "main" by default and rejects with MessageFailed when the handler raises', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  await assert.rejects(request('main', 'ask', { raise: 'no answer for you' }, { root: pool.root }), (error) => {
    assert.ok(error instanceof MessageFailed, error.stack);
    assert.match(error.reason, /ValueError: no answer for you/);
    return true;
  });
  const asked = (await pool.readRecords()).find((r) => r.handler === 'answer');
  assert.equal(asked.reply_to, 'main');
});

test('a nack of an older message with the same id is waited past', { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  const acks = path.join(pool.root, 'main', 'acks');
  const old = { id: 'job-9', type: 'task', outcome: 'failed', reason: 'an earlier life', timestamp: '2000-01-01T00:00:00.000Z' };
  await fsp.writeFile(path.join(acks, 'job-9.nack'), JSON.stringify(old));
  const id = await sendAndWait('main', 'task', { n: 9 }, { root: pool.root, id: 'job-9' });
  assert.equal(id, 'job-9');
  await fsp.access(path.join(acks, 'job-9.ack'));
});

test('a re-send keeps the id and bytes, and happens only when the message is no longer queued', { timeout: 30000 }, async (t) => {
  // No supervisor (waitForSupervisor: true), so nothing takes the message but this test.
  const root = path.join(await tempDir(t), 'ipc');
  const { logger, lines, waitFor } = captureLogger();
  const pending = sendAndWait('main', 'task', { n: 1 }, {
    root, logger, id: 'job-r', waitForSupervisor: true, ack: { timeoutMs: 300, maxRetries: 3, retryDelayMs: 50 },
  }).then((value) => ({ value }), (error) => ({ error }));
  const file = path.join(root, 'main', 'messages', 'job-r.json');
  await waitFor((l) => l.message === 'IPC message sent');
  const bytes = await fsp.readFile(file);
  await fsp.unlink(file); // lost: the next attempt must publish it again
  const resent = await waitFor((l) => l.message === 'Retrying IPC message');
  assert.equal(resent.attempt, 2);
  assert.equal(resent.resent, true);
  assert.deepEqual(await fsp.readFile(file), bytes, 'the same bytes: same id, same timestamp');
  const { error } = await pending;
  assert.ok(error instanceof AckTimeout, String(error));
  assert.equal(error.attempts, 4);
  assert.match(error.hint, /no ipcpool supervisor is running for/);
  const retries = lines.filter((l) => l.message === 'Retrying IPC message');
  assert.deepEqual(retries.map((l) => [l.attempt, l.resent]), [[2, true], [3, false], [4, false]]);
  assert.equal(lines.filter((l) => l.message === 'ACK timeout').length, 4);
  assert.deepEqual(await fsp.readFile(file), bytes, 'still queued, once');
});

// The ack timeout is 30 s and the test's own 10 s: the nack, not a time-out, must end the wait.
test('a nack that arrives while the sender waits ends the wait at once', { timeout: 10000 }, async (t) => {
  const root = path.join(await tempDir(t), 'ipc');
  const { logger, waitFor } = captureLogger();
  const pending = sendAndWait('main', 'task', {}, {
    root, logger, id: 'job-n', waitForSupervisor: true, ack: { timeoutMs: 30000 },
  }).then((value) => ({ value }), (error) => ({ error }));
  await waitFor((l) => l.message === 'IPC message sent');
  const queued = JSON.parse(await fsp.readFile(path.join(root, 'main', 'messages', 'job-n.json'), 'utf8'));
  const nack = { id: 'job-n', type: 'task', outcome: 'poisoned', reason: 'killed its worker 3 times', errorFile: 'main/errors/1-job-n.json', timestamp: queued.timestamp };
  const tmp = path.join(root, 'main', 'tmp', 'nack.tmp');
  await fsp.writeFile(tmp, JSON.stringify(nack));
  await fsp.rename(tmp, path.join(root, 'main', 'acks', 'job-n.nack'));
  const { error } = await pending;
  assert.ok(error instanceof MessageFailed, String(error));
  assert.equal(error.outcome, 'poisoned');
  assert.equal(error.reason, 'killed its worker 3 times');
  assert.equal(error.errorFile, 'main/errors/1-job-n.json');
});

test('with no fs.watch at all (no inotify watches left, a folder that sends no events) the poll finds the answer', { timeout: 30000 }, async (t) => {
  const fs = (await import('node:fs')).default;
  const { waitFor, POLL_MS } = await import('../lib/wait.js');
  const dir = await tempDir(t);
  const file = path.join(dir, 'late.ack');
  const realWatch = fs.watch;
  let tried = 0;
  fs.watch = () => { tried += 1; throw Object.assign(new Error('ENOSPC: no watches left'), { code: 'ENOSPC' }); };
  t.after(() => { fs.watch = realWatch; });
  const probe = async () => fsp.readFile(file, 'utf8').catch((error) => (error.code === 'ENOENT' ? null : Promise.reject(error)));
  setTimeout(() => { fsp.writeFile(file, 'acked'); }, POLL_MS / 2);
  // The wait's own deadline is far past the test's: only the poll can end it in time.
  assert.equal(await waitFor([file], probe, 600000), 'acked');
  assert.ok(tried >= 1, 'the watch was tried first');
});

// No supervisor for the root: told from status.json alone, at once, and the message stays queued
// for the next supervisor; waitForSupervisor waits for one instead.

import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { NoSupervisor, request, sendAndWait, supervisorStatus } from '../index.js';
import { startPool, tempDir, waitUntil } from './helpers.mjs';

const sentence = (root) => `no ipcpool supervisor is running for ${root}; the message stays queued and will be handled when one starts`;
const LONG_ACK = { timeoutMs: 30000, maxRetries: 3, retryDelayMs: 5000 };

// Each of these has a 30 s ack (or response) timeout and a 10 s test timeout: only an answer
// given at once, not one after the first time-out, can pass.
test('sendAndWait with no supervisor rejects at once with NoSupervisor; the message stays queued', { timeout: 10000 }, async (t) => {
  const root = path.join(await tempDir(t), 'ipc');
  await assert.rejects(sendAndWait('main', 'task', { n: 1 }, { root, id: 'job-ns', ack: LONG_ACK }), (error) => {
    assert.ok(error instanceof NoSupervisor, String(error));
    assert.equal(error.message, sentence(root));
    assert.equal(error.messageId, 'job-ns');
    assert.match(error.detail, /no .*status\.json/);
    return true;
  });
  await fsp.access(path.join(root, 'main', 'messages', 'job-ns.json'));
});

test('request with no supervisor rejects at once with NoSupervisor', { timeout: 10000 }, async (t) => {
  const root = path.join(await tempDir(t), 'ipc');
  await assert.rejects(request('main', 'ask', {}, { root, timeoutMs: 30000 }), (error) => {
    assert.ok(error instanceof NoSupervisor, String(error));
    assert.equal(error.message, sentence(root));
    return true;
  });
});

test('after the supervisor stopped: NoSupervisor at once, and the next supervisor handles the message', { timeout: 20000 }, async (t) => {
  const first = await startPool(t);
  // status.json is first written just after "Enhanced IPC system started" (until then: "starting").
  await waitUntil(async () => (await supervisorStatus(first.root)).running === true, { what: 'the first status.json' });
  assert.equal((await first.stop()).code, 0);
  const status = await supervisorStatus(first.root);
  assert.equal(status.running, false);
  assert.equal(status.state, 'stopped');
  const error = await sendAndWait('main', 'task', { after: 'stop' }, { root: first.root, ack: LONG_ACK }).catch((e) => e);
  assert.ok(error instanceof NoSupervisor, String(error));
  assert.match(error.detail, /stopped/);
  const second = await startPool(t, { dir: first.dir, root: first.root });
  const seen = await second.waitForRecord((r) => r.id === error.messageId, 'the queued message to be handled');
  assert.deepEqual(seen.payload, { after: 'stop' });
});

test('waitForSupervisor: true waits until a supervisor starts, then resolves on the ack', { timeout: 20000 }, async (t) => {
  const dir = await tempDir(t);
  const root = path.join(dir, 'ipc');
  const pending = sendAndWait('main', 'task', { n: 2 }, { root, waitForSupervisor: true, ack: LONG_ACK })
    .then((value) => ({ value }), (error) => ({ error }));
  await startPool(t, { dir, root });
  const { value, error } = await pending;
  assert.equal(error, undefined);
  await fsp.access(path.join(root, 'main', 'acks', `${value}.ack`));
});

async function stateDir(t) {
  const root = path.join(await tempDir(t), 'ipc');
  await fsp.mkdir(path.join(root, '.ipcpool'), { recursive: true });
  return root;
}

const writeStatus = (root, status) => fsp.writeFile(path.join(root, '.ipcpool', 'status.json'), JSON.stringify(status));
const setMtime = (file, ms) => fsp.utimes(file, ms / 1000, ms / 1000);

test('supervisorStatus reads status.json: fresh, final, stale, starting, unreadable', async (t) => {
  const now = Date.now();
  const root = await stateDir(t);
  const status = { state: 'running', interval: 2.0, writtenAt: now / 1000 - 1, supervisor: { pid: 7 } };
  await writeStatus(root, status);
  assert.equal((await supervisorStatus(root)).running, true, 'fresh');

  for (const state of ['stopped', 'halted', 'failed']) {
    await writeStatus(root, { ...status, state });
    assert.equal((await supervisorStatus(root)).running, false, state);
  }
  await writeStatus(root, { ...status, state: 'draining' });
  assert.equal((await supervisorStatus(root)).running, true, 'draining is still a supervisor');

  await writeStatus(root, { ...status, writtenAt: now / 1000 - 60 });
  const stale = await supervisorStatus(root);
  assert.equal(stale.running, false, 'not rewritten for 60 s at a 2 s interval: gone (SIGKILLed)');
  assert.match(stale.detail, /last written 6\d\.\ds ago/);

  // A supervisor that took the lock after the last status was written is starting, not absent.
  const lock = path.join(root, '.ipcpool', 'lock');
  await fsp.writeFile(lock, '123\n');
  await writeStatus(root, { ...status, state: 'stopped', writtenAt: now / 1000 - 30 });
  await setMtime(lock, now - 2000);
  const starting = await supervisorStatus(root);
  assert.equal(starting.running, null);
  assert.equal(starting.state, 'starting');
  await setMtime(lock, now - 10 * 60 * 1000); // a lock older than the last status: that supervisor stopped
  assert.equal((await supervisorStatus(root)).running, false);

  const unreadable = await stateDir(t);
  await fsp.mkdir(path.join(unreadable, '.ipcpool', 'status.json'));
  assert.equal((await supervisorStatus(unreadable)).running, null, 'cannot tell: no fail-fast');
});

test('a starting supervisor (lock newer than any status) is not reported missing', { timeout: 10000 }, async (t) => {
  const root = await stateDir(t);
  await fsp.writeFile(path.join(root, '.ipcpool', 'lock'), '123\n');
  // Cannot be told, so no fail-fast: the wait runs its (short) course and ends in a timeout.
  const error = await sendAndWait('main', 'task', {}, { root, ack: { timeoutMs: 200, maxRetries: 0 } }).catch((e) => e);
  assert.equal(error.name, 'AckTimeout', String(error));
  assert.match(error.hint, /has not written status\.json yet/);
});

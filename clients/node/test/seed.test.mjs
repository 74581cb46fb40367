// The original system's API: its documented send example, verbatim (examples/seed-send.ts), run
// as an agent would run it: ipc-enhanced.js copied beside it, the package installed, the spool
// root from IPCPOOL_ROOT. And getIPCSystem's shape, and the README's plain-fs snippet.

import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { IPCMessageType, IpcpoolError, NoSupervisor, createIPCSystem, getIPCSystem } from '../index.js';
import { NODE_DIR, agentDir, run, startPool, tempDir } from './helpers.mjs';

test("the seed's send example runs unchanged, its task acked, IPCPOOL_ROOT honoured", { timeout: 30000 }, async (t) => {
  const pool = await startPool(t);
  const agent = await agentDir(pool.dir);
  const source = await fsp.readFile(path.join(agent, 'agent.mjs'), 'utf8');
  assert.match(source, /^import \{ getIPCSystem, IPCMessageType \} from '\.\/ipc-enhanced\.js';$/m);
  assert.match(source, /\}, true\); \/\/ requiresAck = true$/m);
  const { code, output } = await run(process.execPath, ['agent.mjs'], {
    cwd: agent, env: { ...process.env, IPCPOOL_ROOT: pool.root, LOG_LEVEL: 'info' },
  });
  assert.equal(code, 0, output);
  const records = await pool.readRecords();
  const task = records.find((r) => r.type === 'task');
  assert.ok(task, `the task reached its handler: ${JSON.stringify(records)}`);
  assert.deepEqual(task.payload, { taskId: 123, prompt: 'Execute this task', scheduleType: 'once' });
  assert.equal(task.requires_ack, true);
  await fsp.access(path.join(pool.root, 'main', 'acks', `${task.id}.ack`)); // it returned after the ack
  assert.match(output, /INFO ipcpool: ACK received id=/, 'LOG_LEVEL=info shows the original phrases on stderr');
  const command = await pool.waitForRecord((r) => r.type === 'command', 'the command to reach its handler');
  assert.equal(command.group, 'group1');
  assert.deepEqual(command.payload, { command: 'restart', args: [] });
  await assert.rejects(fsp.access(path.join(agent, 'data')), { code: 'ENOENT' }, 'not the default data/ipc: IPCPOOL_ROOT');
});

test('getIPCSystem is one object; options are refused once it exists', () => {
  const ipc = getIPCSystem();
  assert.equal(getIPCSystem(), ipc);
  assert.throws(() => getIPCSystem({ root: '/elsewhere' }), IpcpoolError);
  assert.deepEqual({ ...IPCMessageType }, {
    TASK: 'task', COMMAND: 'command', RESPONSE: 'response', ERROR: 'error', HEARTBEAT: 'heartbeat',
  });
  for (const name of ['send', 'sendAndWait', 'request', 'registerHandler']) assert.equal(typeof ipc[name], 'function');
});

test('registerHandler takes the ERROR handler (messages given up on) and refuses the others', { timeout: 10000 }, async (t) => {
  const root = path.join(await tempDir(t), 'ipc');
  const ipc = createIPCSystem({ root, logger: false });
  assert.throws(() => ipc.registerHandler(IPCMessageType.TASK, () => {}), /run in the ipcpool supervisor/);
  const reports = [];
  ipc.registerHandler(IPCMessageType.ERROR, (message) => reports.push(message));
  const id = await ipc.send('main', IPCMessageType.TASK, { n: 1 }); // no ack asked: published, nothing to wait for
  await fsp.access(path.join(root, 'main', 'messages', `${id}.json`));
  const error = await ipc.send('main', IPCMessageType.TASK, { n: 2 }, true).catch((e) => e);
  assert.ok(error instanceof NoSupervisor, String(error));
  assert.equal(reports.length, 1);
  assert.equal(reports[0].type, 'error');
  assert.equal(reports[0].payload.messageId, error.messageId);
  assert.equal(reports[0].payload.error, error.message);
});

test("the README's plain-fs snippet (examples/plain-fs.mjs) publishes and gets its ack", { timeout: 30000 }, async (t) => {
  const readme = await fsp.readFile(path.join(NODE_DIR, 'README.md'), 'utf8');
  const snippet = await fsp.readFile(path.join(NODE_DIR, 'examples', 'plain-fs.mjs'), 'utf8');
  assert.ok(readme.includes(`\`\`\`js\n${snippet}\`\`\``), 'the README shows examples/plain-fs.mjs verbatim');
  const pool = await startPool(t);
  const { code, output } = await run(process.execPath, [path.join(NODE_DIR, 'examples', 'plain-fs.mjs')], {
    cwd: pool.dir, env: { ...process.env, IPCPOOL_ROOT: pool.root },
  });
  assert.equal(code, 0, output);
  const seen = (await pool.readRecords()).find((r) => r.payload?.taskId === 7);
  assert.ok(seen, 'the handler got it');
  assert.equal(seen.requires_ack, true);
  await fsp.access(path.join(pool.root, 'main', 'acks', `${seen.id}.ack`));
});

test("the README's Node.js example runs as written (only its root pointed at the test's pool)", { timeout: 60000 }, async (t) => {
  const readme = await fsp.readFile(path.join(NODE_DIR, '..', '..', 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### From Node.js'));
  const example = section.match(/```js\n([\s\S]*?)```/)[1];
  assert.match(example, /const root = '\/data\/ipc';/, 'the example names its root where this test expects it');
  const pool = await startPool(t);
  const agent = await agentDir(pool.dir);
  await fsp.writeFile(path.join(agent, 'readme.mjs'), example.replace("'/data/ipc'", JSON.stringify(pool.root)));
  const { code, output } = await run(process.execPath, ['readme.mjs'], { cwd: agent, env: process.env });
  assert.equal(code, 0, output);
  assert.equal(output, '', 'every call succeeded: nothing printed');
  await pool.waitForRecord((r) => r.payload?.taskId === 123, 'the fire-and-forget task handled too');
  const ids = (await pool.readRecords()).filter((r) => r.type === 'task').map((r) => r.payload.taskId);
  assert.deepEqual(ids.sort(), [123, 124, 125, 126], 'each handled once');
});

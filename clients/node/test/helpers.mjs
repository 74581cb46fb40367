// Test helpers: a temp root per test, a real `ipcpool run` in its own process group (always
// stopped), waits on log lines and files with deadlines (never fixed sleeps).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const NODE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const HANDLERS_DIR = path.join(NODE_DIR, 'test', 'handlers');
export const REPO_VENV_BIN = path.resolve(NODE_DIR, '..', '..', '.venv', 'bin', 'ipcpool');
const STARTED = 'Enhanced IPC system started';

/** The ipcpool executable: $IPCPOOL_BIN, else the repository's .venv, else `ipcpool` on PATH. */
export function ipcpoolBin() {
  if (process.env.IPCPOOL_BIN) return process.env.IPCPOOL_BIN;
  if (fs.existsSync(REPO_VENV_BIN)) return REPO_VENV_BIN;
  return 'ipcpool';
}

const cleanups = new WeakMap(); // test context -> its clean-ups, run last-in first-out

/**
 * Run `fn` after the test, before what was deferred earlier (a supervisor is stopped before its
 * folder is removed); one failing clean-up does not skip the others.
 */
export function defer(t, fn) {
  let stack = cleanups.get(t);
  if (!stack) {
    stack = [];
    cleanups.set(t, stack);
    t.after(async () => {
      const errors = [];
      while (stack.length) {
        try {
          await stack.pop()();
        } catch (error) {
          errors.push(error);
        }
      }
      if (errors.length) throw errors[0];
    });
  }
  stack.push(fn);
}

/** A fresh folder for one test, removed after it. */
export async function tempDir(t) {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ipcpool-node-'));
  defer(t, () => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Poll `predicate` (sync or async) until it returns something truthy; fail with `what` at the deadline. */
export async function waitUntil(predicate, { timeoutMs = 20000, intervalMs = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await new Promise((resolve) => { setTimeout(resolve, intervalMs); });
  }
}

function toml(value) {
  if (typeof value === 'boolean' || typeof value === 'number') return String(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(toml).join(', ')}]`;
  throw new TypeError(`no TOML for ${value}`);
}

export const DEFAULT_HANDLERS = Object.freeze({
  task: 'node_handlers:record',
  command: 'node_handlers:record',
  fail: 'node_handlers:fail',
  ask: 'node_handlers:answer',
});

/** A TOML config with fast test timers (as tests/conftest.py's write_config); `sections` override any key. */
export async function writeConfig(file, root, { handlers = DEFAULT_HANDLERS, groups = ['main', 'group1'], sections = {} } = {}) {
  const base = {
    spool: { root, groups, settle_time: 0.3, rescan_interval: 1.0 },
    pool: { workers: 1, handler_timeout: 10.0, shutdown_grace: 5.0, kill_grace: 0.5 },
    retry: { attempts: 2, delay: 0.01 },
    heartbeat: { interval: 0.25, miss_limit: 4 },
    ack: { timeout: 5.0, max_retries: 1, retry_delay: 0.1 },
  };
  for (const [name, values] of Object.entries(sections)) base[name] = { ...(base[name] ?? {}), ...values };
  const lines = [];
  for (const [name, values] of Object.entries(base)) {
    lines.push(`[${name}]`, ...Object.entries(values).map(([key, value]) => `${key} = ${toml(value)}`), '');
  }
  lines.push('[handlers]', ...Object.entries(handlers).map(([type, ref]) => `${JSON.stringify(type)} = ${JSON.stringify(ref)}`));
  await fsp.writeFile(file, `${lines.join('\n')}\n`);
  return file;
}

let poolCount = 0;
const running = new Set(); // supervisors not yet stopped: killed on the way out if a test crashed

process.on('exit', () => {
  for (const child of running) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * `ipcpool run` on a temp root: own process group, handlers from test/handlers on PYTHONPATH,
 * each delivery recorded under `records`. Resolves once it logged "Enhanced IPC system started";
 * stopped after the test (SIGTERM, then SIGKILL of its group if it does not exit).
 */
export async function startPool(t, { dir, root, wait = true, ...configOptions } = {}) {
  dir ??= await tempDir(t);
  root ??= path.join(dir, 'ipc');
  const records = path.join(dir, 'records');
  await fsp.mkdir(records, { recursive: true });
  poolCount += 1;
  const config = await writeConfig(path.join(dir, `pool-${poolCount}.toml`), root, configOptions);
  const env = {
    ...process.env,
    PYTHONPATH: [HANDLERS_DIR, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
    IPCPOOL_TEST_RECORDS: records,
    IPCPOOL_ROOT: root, // the config names it too; an inherited IPCPOOL_ROOT must not send it elsewhere
    LOG_LEVEL: 'info',
  };
  const child = spawn(ipcpoolBin(), ['run', '--config', config], {
    cwd: dir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  // Never what keeps the test process alive: if a test dies before stopping it, the exit hook kills its group.
  child.unref();
  child.stdout.unref?.();
  child.stderr.unref?.();
  let output = '';
  const listeners = new Set();
  const onData = (chunk) => {
    output += chunk.toString();
    for (const listener of listeners) listener();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      running.delete(child);
      for (const listener of listeners) listener();
      resolve({ code, signal });
    });
    child.on('error', (error) => {
      running.delete(child);
      output += `\n[spawn error] ${error.message}`;
      for (const listener of listeners) listener();
      resolve({ code: null, signal: null, error });
    });
  });
  const gone = () => child.exitCode !== null || child.signalCode !== null || !running.has(child);

  /** Resolve when the log (since `from`) contains `text`; reject if the supervisor exits first or at the deadline. */
  const waitForLog = (text, { from = 0, timeoutMs = 20000 } = {}) => new Promise((resolve, reject) => {
    let timer;
    const check = () => {
      if (output.indexOf(text, from) >= 0) {
        listeners.delete(check);
        clearTimeout(timer);
        resolve(output);
      } else if (gone()) {
        listeners.delete(check);
        clearTimeout(timer);
        reject(new Error(`ipcpool run exited before logging "${text}":\n${output}`));
      }
    };
    timer = setTimeout(() => {
      listeners.delete(check);
      reject(new Error(`timed out after ${timeoutMs / 1000}s waiting for "${text}" in the supervisor's log:\n${output}`));
    }, timeoutMs);
    listeners.add(check);
    check();
  });

  const stop = async () => {
    if (!gone()) {
      child.kill('SIGTERM');
      let timer;
      const deadline = new Promise((resolve) => { timer = setTimeout(resolve, 15000, 'late'); });
      const first = await Promise.race([exited, deadline]);
      clearTimeout(timer);
      if (first === 'late' && !gone()) {
        process.kill(-child.pid, 'SIGKILL'); // its group: the supervisor and whatever it started
      }
    }
    return exited;
  };
  defer(t, stop);

  const pool = {
    dir, root, config, records, child, exited, stop, waitForLog,
    get output() { return output; },
    readRecords: () => readRecords(records),
    waitForRecord: (predicate, what = 'a handler record') => waitUntil(
      async () => (await readRecords(records)).find(predicate), { what }),
  };
  if (wait) await waitForLog(STARTED);
  return pool;
}

/** Every delivery the test handlers recorded, in the order of their lines per worker. */
export async function readRecords(dir) {
  let names;
  try {
    names = await fsp.readdir(dir);
  } catch {
    return [];
  }
  const found = [];
  for (const name of names.filter((n) => n.endsWith('.jsonl')).sort()) {
    const text = await fsp.readFile(path.join(dir, name), 'utf8');
    for (const line of text.split('\n')) {
      if (line.trim()) found.push(JSON.parse(line));
    }
  }
  return found;
}

/** A logger that keeps every line, and can wait for one. */
export function captureLogger() {
  const lines = [];
  const logger = {};
  for (const level of ['debug', 'info', 'warn', 'error']) {
    logger[level] = (fields, message) => lines.push({ level, message, ...fields });
  }
  return {
    logger,
    lines,
    waitFor: (predicate, what = 'a log line') => waitUntil(() => lines.find(predicate), { what, intervalMs: 10 }),
  };
}

/** An agent's folder: an example (copied under the name `as`), ipc-enhanced.js beside it, ipcpool in node_modules. */
export async function agentDir(dir, exampleFile = 'seed-send.ts', as = 'agent.mjs') {
  const agent = path.join(dir, 'agent');
  await fsp.mkdir(path.join(agent, 'node_modules'), { recursive: true });
  await fsp.symlink(NODE_DIR, path.join(agent, 'node_modules', 'ipcpool'), 'dir');
  await fsp.copyFile(path.join(NODE_DIR, 'ipc-enhanced.js'), path.join(agent, 'ipc-enhanced.js'));
  await fsp.copyFile(path.join(NODE_DIR, 'ipc-enhanced.d.ts'), path.join(agent, 'ipc-enhanced.d.ts'));
  await fsp.copyFile(path.join(NODE_DIR, 'examples', exampleFile), path.join(agent, as));
  await fsp.writeFile(path.join(agent, 'package.json'), '{"type": "module", "private": true}\n');
  return agent;
}

/** Run a command to its end: its exit code and its output (stdout and stderr together). */
export function run(command, args, options) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => { output += chunk; });
    child.stderr.on('data', (chunk) => { output += chunk; });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, output }));
  });
}

/** Whether `npx` can run TypeScript 5 here (fetched from the npm registry on first use). */
export async function typescriptAvailable() {
  try {
    const { code, output } = await run('npx', ['-y', '-p', 'typescript@5', 'tsc', '--version'], { env: process.env });
    if (code === 0 && /Version 5\./.test(output)) return { ok: true, version: output.trim() };
    return { ok: false, why: output.trim().slice(-400) || `exit code ${code}` };
  } catch (error) {
    return { ok: false, why: error.message };
  }
}

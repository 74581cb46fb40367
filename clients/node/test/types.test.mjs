// index.d.ts compiles (tsc --noEmit, strict) against the seed's send example, verbatim, and
// examples/usage.ts (every call, with @ts-expect-error lines that must stay errors). TypeScript
// comes from the npm registry through npx, never as a dependency. Skipped only when npx cannot
// fetch it and IPCPOOL_REQUIRE_NODE is unset; under CI (IPCPOOL_REQUIRE_NODE=1) that fails.

import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import test from 'node:test';
import { NODE_DIR, agentDir, run, tempDir, typescriptAvailable } from './helpers.mjs';

const TSCONFIG = {
  compilerOptions: {
    strict: true,
    noEmit: true,
    target: 'es2022',
    module: 'nodenext',
    moduleResolution: 'nodenext',
    lib: ['es2022'], // no DOM, and types: [] (no @types/node): the .d.ts must stand on its own
    types: [],
    skipLibCheck: false,
  },
  files: ['agent.ts', 'usage.ts'],
};

test('index.d.ts compiles against the seed example and examples/usage.ts', { timeout: 300000 }, async (t) => {
  const typescript = await typescriptAvailable();
  if (!typescript.ok) {
    if (process.env.IPCPOOL_REQUIRE_NODE) {
      assert.fail(`npx cannot run typescript@5 (IPCPOOL_REQUIRE_NODE is set, so this fails): ${typescript.why}`);
    }
    t.skip(`npx cannot fetch typescript@5, so the types are not checked (set IPCPOOL_REQUIRE_NODE=1 to fail instead): ${typescript.why}`);
    return;
  }
  const agent = await agentDir(await tempDir(t), 'seed-send.ts', 'agent.ts');
  await fsp.copyFile(path.join(NODE_DIR, 'examples', 'usage.ts'), path.join(agent, 'usage.ts'));
  await fsp.writeFile(path.join(agent, 'tsconfig.json'), JSON.stringify(TSCONFIG, null, 2));
  const { code, output } = await run('npx', ['-y', '-p', 'typescript@5', 'tsc', '-p', 'tsconfig.json'], { cwd: agent, env: process.env });
  assert.equal(code, 0, `tsc (${typescript.version}) found errors:\n${output}`);
});

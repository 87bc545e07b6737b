#!/usr/bin/env node
// Builds an ovsb plugin written in JavaScript into a WebAssembly component.
//
//   node plugin-sdk/js/build.mjs SRC_ENTRY OUT_WASM [--wit DIR] [--debug] [--keep]
//
// SRC_ENTRY is an ES module whose default export is a class extending `Plugin` from
// '@ovsb/plugin-sdk'. The steps:
//   1. generate an entry module that imports `ovsb:plugin/host@0.1.0`, hands it to the SDK
//      (`useHost`) and exports the world's `configure` / `onCall` / `onResult` from the plugin
//      class (`exportPlugin`);
//   2. bundle entry, plugin and SDK into one ES module with esbuild ('@ovsb/plugin-sdk' always
//      resolves to the SDK next to this script; `ovsb:*` imports stay external);
//   3. load that bundle natively once with a stub host, to report a wrong default export early;
//   4. run ComponentizeJS (library API) on it against the WIT package `wit/` of the repository
//      this script belongs to (or --wit DIR), world `plugin`, with every WASI feature disabled:
//      the component imports nothing but `ovsb:plugin/host`.
// The toolchain (ComponentizeJS, esbuild) comes from the plugin project's node_modules when it
// has them (its lock file pins them), else from this SDK's (`setup.sh`).
//
// Module top-level code runs at BUILD time (ComponentizeJS snapshots the initialised module with
// Wizer): do not call host functions (log, kv, upstream, nowMs) there; do it in the hooks.

import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const SDK_DIR = dirname(fileURLToPath(import.meta.url));
const SDK_INDEX = join(SDK_DIR, 'src', 'index.js');
const SDK_TESTING = join(SDK_DIR, 'src', 'testing.js');
const HOST_IMPORT = 'ovsb:plugin/host@0.1.0';

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error('usage: node build.mjs SRC_ENTRY OUT_WASM [--wit DIR] [--debug] [--keep]');
  process.exit(2);
}

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { positional: [], wit: process.env.OVSB_WIT, debug: false, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--wit') opts.wit = argv[++i] ?? usage('--wit needs a directory');
    else if (arg === '--debug') opts.debug = true;
    else if (arg === '--keep') opts.keep = true;
    else if (arg === '-h' || arg === '--help') usage();
    else if (arg.startsWith('-')) usage(`unknown option ${arg}`);
    else opts.positional.push(arg);
  }
  if (opts.positional.length !== 2) usage('expected SRC_ENTRY and OUT_WASM');
  return opts;
}

/** The directory of package `name` in node_modules above `dir`, or undefined. */
function packageDir(name, dir) {
  for (let at = dir; ; at = dirname(at)) {
    const candidate = join(at, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dirname(at) === at) return undefined;
  }
}

/** Imports package `name` from the project's node_modules (cwd) if there, else from the SDK's. */
async function load(name) {
  for (const place of [process.cwd(), SDK_DIR]) {
    const dir = packageDir(name, place);
    if (dir === undefined) continue;
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const exp = pkg.exports?.['.'] ?? pkg.exports;
    const file =
      (typeof exp === 'string' ? exp : (exp?.import?.default ?? exp?.import ?? exp?.default)) ?? pkg.main ?? 'index.js';
    return import(pathToFileURL(join(dir, typeof file === 'string' ? file : 'index.js')).href);
  }
  fail(`cannot find ${name}: run \`npm ci\` in your plugin project, or ${join(SDK_DIR, 'setup.sh')}`);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const src = resolve(opts.positional[0]);
  const out = resolve(opts.positional[1]);
  const wit = resolve(opts.wit ?? join(SDK_DIR, '..', '..', 'wit'));
  if (!existsSync(src)) fail(`the plugin module ${src} does not exist`);
  if (!existsSync(join(wit, 'plugin.wit'))) {
    fail(`no plugin.wit in ${wit}: pass --wit DIR (the wit/ directory of an ovsb clone) or set OVSB_WIT`);
  }
  if (!existsSync(dirname(out))) fail(`the output directory ${dirname(out)} does not exist`);

  const started = Date.now();
  const esbuildModule = await load('esbuild');
  const esbuild = esbuildModule.build ? esbuildModule : esbuildModule.default;
  const { componentize } = await load('@bytecodealliance/componentize-js');

  const work = mkdtempSync(join(tmpdir(), 'ovsb-js-build-'));
  const bail = (message) => {
    if (!opts.keep) rmSync(work, { recursive: true, force: true });
    fail(message);
  };
  try {
    // 1. The entry: the world's exports from the plugin's default export.
    const entry = join(work, 'entry.js');
    const entryFor = (hostModule) => `
import * as host from ${JSON.stringify(hostModule)};
import { useHost, exportPlugin } from ${JSON.stringify(SDK_INDEX)};
import PluginClass from ${JSON.stringify(src)};
useHost(host);
const plugin = exportPlugin(PluginClass);
export function configure(config) { return plugin.configure(config); }
export function onCall(call) { return plugin.onCall(call); }
export function onResult(call, outcome) { return plugin.onResult(call, outcome); }
`;
    writeFileSync(entry, entryFor(HOST_IMPORT));

    // 2. One bundled ES module.
    const bundle = join(work, 'bundle.js');
    const common = {
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      mainFields: ['module', 'main'],
      target: 'es2022',
      logLevel: 'silent',
      alias: { '@ovsb/plugin-sdk/testing': SDK_TESTING, '@ovsb/plugin-sdk': SDK_INDEX },
    };
    try {
      await esbuild.build({ ...common, entryPoints: [entry], outfile: bundle, external: ['ovsb:*', 'wasi:*'] });
    } catch (err) {
      const lines = (err.errors ?? []).map(
        (e) => `${e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : ''}${e.text}`,
      );
      bail(`cannot bundle ${src}:\n  ${lines.join('\n  ') || err.message}`);
    }

    // 3. A native dry run with a stub host: catches a wrong default export before the slow step.
    const stub = join(work, 'stub-host.js');
    writeFileSync(stub, 'export {};\n');
    const check = join(work, 'check.mjs');
    writeFileSync(join(work, 'check-entry.js'), entryFor(stub));
    await esbuild.build({ ...common, entryPoints: [join(work, 'check-entry.js')], outfile: check });
    try {
      await import(pathToFileURL(check).href);
    } catch (err) {
      const hint = err.message.startsWith('no ovsb host')
        ? 'it calls a host function (log, kv, upstream, nowMs, the context) at module top level, which runs at build time: move that into the constructor or a hook'
        : err.message;
      bail(`${src}: ${hint}`);
    }

    // 4. The component.
    let result;
    try {
      result = await componentize({
        sourcePath: bundle,
        witPath: wit,
        worldName: 'plugin',
        disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
        debugBuild: opts.debug,
      });
    } catch (err) {
      fail(`ComponentizeJS failed on ${src} (bundle kept in ${work}):\n${err.stack ?? err}`);
    }
    writeFileSync(out, result.component);
    const size = statSync(out).size;
    console.log(
      `built ${out} (${(size / 1048576).toFixed(1)} MiB) from ${src} in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  } finally {
    if (!opts.keep) rmSync(work, { recursive: true, force: true });
    else console.log(`kept the build files in ${work}`);
  }
}

await main();

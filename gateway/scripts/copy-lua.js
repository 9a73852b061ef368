// Part of `npm run build`: copies the cache contract's Lua scripts (docs/contracts/cache.md)
// into dist/lua, where src/cache.ts reads them. Their only copy is the Python package data in
// ../src/capstan/cache/lua, so dist/ is self-contained and runs the same text as the API.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const from = path.resolve(__dirname, '../../src/capstan/cache/lua');
const to = path.resolve(__dirname, '../dist/lua');
const names = fs.readdirSync(from).filter((name) => name.endsWith('.lua'));
if (names.length === 0) throw new Error(`no Lua scripts in ${from}`);
fs.rmSync(to, { recursive: true, force: true });
fs.mkdirSync(to, { recursive: true });
for (const name of names) fs.copyFileSync(path.join(from, name), path.join(to, name));

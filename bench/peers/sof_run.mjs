// Runs one ViewDefinition with the SQL-on-FHIR v2 reference implementation (sof-js) over NDJSON files and prints
// {"seconds": ..., "rows": [...]} on stdout; `seconds` covers reading and parsing the files and evaluating the view.
// Used by bench/bench_views.py --reference DIR, where DIR is the sof-js folder of a checkout of
// https://github.com/FHIR/sql-on-fhir-v2 with its dependencies installed (`npm install` in that folder).
// Usage: node sof_run.mjs SOF_JS_DIR VIEW.json FILE.ndjson [FILE.ndjson ...]
import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

const [sofDir, viewFile, ...files] = process.argv.slice(2)
const { evaluate } = await import(pathToFileURL(`${sofDir}/src/index.js`).href)
const view = JSON.parse(readFileSync(viewFile, 'utf8'))
const start = performance.now()
const resources = files
  .flatMap((f) => readFileSync(f, 'utf8').split('\n'))
  .filter((line) => line.trim())
  .map((line) => JSON.parse(line))
  .filter((r) => r.resourceType === view.resource)
const rows = evaluate(view, resources, false)
const seconds = (performance.now() - start) / 1000
process.stdout.write(JSON.stringify({ seconds, rows }))

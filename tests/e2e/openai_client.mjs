// The official `openai` Node SDK, unchanged, against shardtune-server's /v1 (docs/openai-api.md):
// run by openai_test.sh with the SDK installed in a folder of its own. Prints "ok: ..." or
// "FAILED: ..." per check (the shell counts them) and exits 1 when any failed.
// Usage: node openai_client.mjs SDK_DIR BASE_URL WORK_DIR
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const [sdkDir, baseURL, work] = process.argv.slice(2);
const require = createRequire(path.join(sdkDir, 'node_modules', 'x.js'));
const OpenAI = require('openai').default ?? require('openai');

let failures = 0;
const ok = (name) => console.log(`ok: ${name}`);
const fail = (name, why) => {
  failures++;
  console.log(`FAILED: ${name}: ${why}`);
};
const expectEq = (name, got, want) =>
  JSON.stringify(got) === JSON.stringify(want) ? ok(name) : fail(name, `expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
const expectTrue = (name, cond, detail = '') => (cond ? ok(name) : fail(name, detail || 'false'));
// `call` must be refused with `ErrorClass`; `check(error)` adds checks on it.
async function expectRefused(name, call, ErrorClass, check = () => {}) {
  try {
    await call();
    fail(name, 'it succeeded');
  } catch (e) {
    if (!(e instanceof ErrorClass)) return fail(name, `expected ${ErrorClass.name}, got ${e.constructor.name}: ${e.message}`);
    ok(name);
    check(e);
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const client = (key) => new OpenAI({ apiKey: key, baseURL, maxRetries: 0, timeout: 20000 });
const a = client('key-a');
const b = client('key-b');

// 1. Files: upload a chat JSONL file, read it back; a bad one is stored with its problems.
const chatPath = path.join(work, 'chat.jsonl');
const file = await a.files.create({ file: fs.createReadStream(chatPath), purpose: 'fine-tune' });
expectTrue('upload: an id file-...', file.id.startsWith('file-'), file.id);
expectEq('upload: object file', file.object, 'file');
expectEq('upload: status processed', file.status, 'processed');
expectEq('upload: bytes', file.bytes, fs.statSync(chatPath).size);
expectEq('upload: filename', file.filename, 'chat.jsonl');
expectEq('files.retrieve', (await a.files.retrieve(file.id)).id, file.id);
const listed = await a.files.list();
expectTrue('files.list holds it', listed.data.some((f) => f.id === file.id));
const content = await (await a.files.content(file.id)).text();
expectEq('files.content: the bytes uploaded', content, fs.readFileSync(chatPath, 'utf8'));
const bad = await a.files.create({ file: fs.createReadStream(path.join(work, 'bad.jsonl')), purpose: 'fine-tune' });
expectEq('a bad file: status error', bad.status, 'error');
expectTrue('a bad file: its problems name file:line', (bad.status_details ?? '').includes('bad.jsonl:2:'), bad.status_details);

// 2. Refused jobs: each a BadRequestError naming the field and a code.
const base = { model: 'tiny-chat', training_file: file.id };
await expectRefused('a bad training file -> 400', () => a.fineTuning.jobs.create({ ...base, training_file: bad.id }),
  OpenAI.BadRequestError, (e) => {
    expectEq('its code', e.code, 'invalid_training_file');
    expectEq('its param', e.param, 'training_file');
    expectTrue('its message has the problems at file:line', e.message.includes('bad.jsonl:2:'), e.message);
    expectTrue('and their codes', e.message.includes('[unrecognized_role]'), e.message);
  });
await expectRefused('method.type dpo -> 400', () => a.fineTuning.jobs.create({ ...base, method: { type: 'dpo' } }),
  OpenAI.BadRequestError, (e) => {
    expectEq('param method.type', e.param, 'method.type');
    expectEq('code unsupported_method', e.code, 'unsupported_method');
  });
await expectRefused('n_epochs 0 -> 400', () => a.fineTuning.jobs.create({ ...base, hyperparameters: { n_epochs: 0 } }),
  OpenAI.BadRequestError, (e) => expectEq('param hyperparameters.n_epochs', e.param, 'hyperparameters.n_epochs'));
await expectRefused('an unknown key -> 400', () => a.fineTuning.jobs.create({ ...base, temperature: 1 }),
  OpenAI.BadRequestError, (e) => expectEq('param names the key', e.param, 'temperature'));
await expectRefused('an unknown model -> 400', () => a.fineTuning.jobs.create({ ...base, model: 'gpt-5' }),
  OpenAI.BadRequestError, (e) => expectEq('code model_not_found', e.code, 'model_not_found'));
await expectRefused('a missing training file -> 400', () => a.fineTuning.jobs.create({ ...base, training_file: 'file-none' }),
  OpenAI.BadRequestError, (e) => expectEq('param training_file', e.param, 'training_file'));

// 3. A job with suffix, seed, metadata and hyperparameters; two more (auto, to cancel).
const job = await a.fineTuning.jobs.create({
  ...base, validation_file: file.id, suffix: 'e2e', seed: 7, metadata: { run: 'e2e' },
  method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 3, batch_size: 4, learning_rate_multiplier: 'auto' } } },
});
expectEq('create: object fine_tuning.job', job.object, 'fine_tuning.job');
expectTrue('create: validating_files or queued', ['validating_files', 'queued'].includes(job.status), job.status);
expectEq('create: model', job.model, 'tiny-chat');
expectEq('create: seed', job.seed, 7);
expectEq('create: metadata', job.metadata, { run: 'e2e' });
expectEq('create: suffix', job.user_provided_suffix, 'e2e');
expectEq('create: hyperparameters resolved', job.hyperparameters, { n_epochs: 3, batch_size: 4, learning_rate_multiplier: 1 });
expectEq('create: method', job.method?.type, 'supervised');
expectEq('create: fine_tuned_model null until it succeeds', job.fine_tuned_model, null);
expectEq('create: training_file', job.training_file, file.id);
const auto = await a.fineTuning.jobs.create({ ...base, metadata: { run: 'auto' }, hyperparameters: { n_epochs: 'auto' } });
expectEq('auto: 16 examples -> n_epochs ceil(100/16) = 7, batch_size 1', auto.hyperparameters,
  { n_epochs: 7, batch_size: 1, learning_rate_multiplier: 1 });
expectTrue('auto: a seed is chosen', Number.isInteger(auto.seed));
const other = await a.fineTuning.jobs.create({ ...base, suffix: 'other' });
const cancelled = await a.fineTuning.jobs.cancel(other.id);
expectEq('cancel another job -> cancelled', cancelled.status, 'cancelled');
await a.fineTuning.jobs.cancel(auto.id);

// 4. Listing: limit 1, then the SDK's auto-paging (after = the last id), with a job created meanwhile.
const first = await a.fineTuning.jobs.list({ limit: 1 });
expectEq('list limit 1: one job, the newest', first.data.map((j) => j.id), [other.id]);
expectEq('list limit 1: has_more', first.has_more, true);
const paged = [];
let late = null;
for await (const j of a.fineTuning.jobs.list({ limit: 1 })) {
  paged.push(j.id);
  if (!late) late = await a.fineTuning.jobs.create({ ...base, suffix: 'late' });
}
expectEq('auto-paging lists each job once, newest first, none created meanwhile', paged, [other.id, auto.id, job.id]);
await a.fineTuning.jobs.cancel(late.id);
const byMetadata = await a.fineTuning.jobs.list({ metadata: { run: 'e2e' } });
expectEq('list metadata[run]=e2e', byMetadata.data.map((j) => j.id), [job.id]);

// 5. Stream the events until the job succeeds.
let done = null;
const seen = new Set();
for (let i = 0; i < 240 && !done; i++) {
  for (const e of (await a.fineTuning.jobs.listEvents(job.id, { limit: 10 })).data) seen.add(e.id);
  const now = await a.fineTuning.jobs.retrieve(job.id);
  if (['succeeded', 'failed', 'cancelled'].includes(now.status)) done = now;
  else await sleep(250);
}
expectEq('the job succeeds', done?.status, 'succeeded');
if (done?.status !== 'succeeded') console.log(JSON.stringify(done));
expectEq('fine_tuned_model is ft:BASE:SUFFIX:ID', done?.fine_tuned_model, `ft:tiny-chat:e2e:${job.id}`);
expectTrue('trained_tokens counted', done?.trained_tokens > 0, String(done?.trained_tokens));
expectTrue('finished_at set', done?.finished_at >= done?.created_at);
const events = [];
for await (const e of a.fineTuning.jobs.listEvents(job.id, { limit: 5 })) events.push(e);
expectTrue('events were seen while it ran', seen.size > 0);
expectEq('events: each once (auto-paging)', new Set(events.map((e) => e.id)).size, events.length);
expectTrue('events: newest first', events.every((e, i) => i === 0 || e.created_at <= events[i - 1].created_at));
const metrics = events.filter((e) => e.type === 'metrics');
expectTrue('metrics events with step and train_loss', metrics.length >= 4 &&
  metrics.every((e) => Number.isInteger(e.data.step) && typeof e.data.train_loss === 'number'), JSON.stringify(metrics[0]));
expectTrue('a metrics event with valid_loss', metrics.some((e) => typeof e.data.valid_loss === 'number'));
expectTrue('message events, level info', events.some((e) => e.type === 'message' && e.level === 'info'));

// 6. Checkpoints: one per epoch, newest first, with metrics.
const checkpoints = (await a.fineTuning.jobs.checkpoints.list(job.id)).data;
expectEq('checkpoints: one per epoch but the last (that is the final model), newest first', checkpoints.map((c) => c.step_number), [8, 4]);
expectEq('checkpoint object', checkpoints[0]?.object, 'fine_tuning.job.checkpoint');
expectEq('fine_tuned_model_checkpoint', checkpoints[0]?.fine_tuned_model_checkpoint, `ft:tiny-chat:e2e:${job.id}:ckpt-step-8`);
expectTrue('checkpoint metrics: train_loss and valid_loss', checkpoints.every((c) =>
  typeof c.metrics.train_loss === 'number' && typeof c.metrics.valid_loss === 'number' &&
  typeof c.metrics.full_valid_mean_token_accuracy === 'number'), JSON.stringify(checkpoints[0]));
const page = await a.fineTuning.jobs.checkpoints.list(job.id, { limit: 1 });
expectEq('checkpoints limit 1: has_more', [page.data.length, page.has_more], [1, true]);

// 7. Pause a running job (it checkpoints and stops), resume it (queued again), cancel it.
const waitFor = async (id, statuses) => {
  for (let i = 0; i < 300; i++) {
    const now = await a.fineTuning.jobs.retrieve(id);
    if (statuses.includes(now.status)) return now;
    await sleep(100);
  }
  return a.fineTuning.jobs.retrieve(id);
};
const long = await a.fineTuning.jobs.create({ ...base, suffix: 'long', hyperparameters: { n_epochs: 50, batch_size: 1 } });
expectEq('a long job runs', (await waitFor(long.id, ['running', 'failed', 'succeeded'])).status, 'running');
await expectRefused('resume a running job -> 409', () => a.fineTuning.jobs.resume(long.id), OpenAI.ConflictError);
const pausing = await a.fineTuning.jobs.pause(long.id);
expectTrue('pause answers with the job', ['running', 'paused'].includes(pausing.status), pausing.status);
expectEq('the job pauses', (await waitFor(long.id, ['paused', 'failed', 'succeeded'])).status, 'paused');
expectEq('resume -> queued', (await a.fineTuning.jobs.resume(long.id)).status, 'queued');
expectEq('cancel it', (await a.fineTuning.jobs.cancel(long.id)).id, long.id);

// 8. Continued fine-tuning from the result; tenants and keys.
const continued = await a.fineTuning.jobs.create({ ...base, model: done?.fine_tuned_model, suffix: 'more' });
expectEq('a job may start from ft:...', continued.model, done?.fine_tuned_model);
await a.fineTuning.jobs.cancel(continued.id);
await expectRefused('another tenant may not start from it', () => b.fineTuning.jobs.create({ ...base, model: done?.fine_tuned_model }),
  OpenAI.BadRequestError, (e) => expectEq('code model_not_found', e.code, 'model_not_found'));
await expectRefused('a bad key -> 401', () => client('nope').fineTuning.jobs.list(), OpenAI.AuthenticationError,
  (e) => {
    expectEq('status 401', e.status, 401);
    expectEq('code invalid_api_key', e.code, 'invalid_api_key');
  });
await expectRefused("another tenant's job -> 404", () => b.fineTuning.jobs.retrieve(job.id), OpenAI.NotFoundError);
await expectRefused("another tenant's events -> 404", () => b.fineTuning.jobs.listEvents(job.id), OpenAI.NotFoundError);
await expectRefused("another tenant's cancel -> 404", () => b.fineTuning.jobs.cancel(other.id), OpenAI.NotFoundError);
await expectRefused("another tenant's file -> 404", () => b.files.retrieve(file.id), OpenAI.NotFoundError);
expectEq("another tenant's list is empty", (await b.fineTuning.jobs.list()).data, []);
await expectRefused('cancel a finished job -> 409', () => a.fineTuning.jobs.cancel(job.id), OpenAI.ConflictError);
await expectRefused('delete a file an unfinished job names -> refused', async () => {
  const busy = await a.fineTuning.jobs.create({ ...base, suffix: 'busy' });
  try {
    await a.files.delete(file.id);
  } finally {
    await a.fineTuning.jobs.cancel(busy.id);
  }
}, OpenAI.ConflictError);
expectEq('delete the bad file', (await a.files.delete(bad.id)).deleted, true);
await expectRefused('a deleted file -> 404', () => a.files.retrieve(bad.id), OpenAI.NotFoundError);

console.log(`job ${job.id}`);
process.exit(failures ? 1 : 0);

// Fills a BullMQ queue with N benchmark jobs (batches of 1000) and leaves them queued, so that
// scripts/bench.sh can read Redis' memory per queued job the same way it does for orcs.
//   node bullmq-fill.mjs <bullmq install dir> <redis port> <N>
import { createRequire } from 'node:module';

const [dir, port, n] = process.argv.slice(2);
const require = createRequire(`${dir}/package.json`);
const { Queue } = require('bullmq');

const queue = new Queue('bench', { connection: { host: '127.0.0.1', port: Number(port) } });
const pad = 'x'.repeat(60);
for (let start = 0; start < Number(n); start += 1000) {
  const jobs = [];
  for (let i = start; i < Math.min(Number(n), start + 1000); i++) {
    jobs.push({ name: 'job', data: { i, t: Date.now() + 0.5, pad }, opts: { removeOnComplete: true } });
  }
  await queue.addBulk(jobs);
}
await queue.close();

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mergeExpositions } from '../../../src/admin/cluster-metrics.js';

const WORKERS = `# HELP a_total A
# TYPE a_total counter
a_total{scope="imap",worker="1"} 3

# HELP b B
# TYPE b gauge
b{worker="1"} 1
`;
const PRIMARY = `# HELP a_total A
# TYPE a_total counter
a_total{scope="admin",worker="primary"} 2
`;

test('a family both have keeps one header and gets the primary samples after the workers', () => {
  assert.equal(
    mergeExpositions(WORKERS, PRIMARY),
    `# HELP a_total A
# TYPE a_total counter
a_total{scope="imap",worker="1"} 3
a_total{scope="admin",worker="primary"} 2

# HELP b B
# TYPE b gauge
b{worker="1"} 1
`,
  );
});

test('with no worker answering, the primary family stands alone; nothing from either side is empty', () => {
  assert.equal(mergeExpositions('', PRIMARY), PRIMARY);
  assert.equal(mergeExpositions(WORKERS, ''), WORKERS);
  assert.equal(mergeExpositions('', ''), '');
});

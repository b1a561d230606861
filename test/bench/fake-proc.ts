import { startFakeUpstream } from '../helpers/fake-upstream.js';

/**
 * One light fake upstream (implicit TLS, accepts any token, holds IDLE) in its own process:
 * Dovecot forks per session, and one process cannot hold more than ~20,000 open files.
 */
const fake = await startFakeUpstream({ tls: 'implicit' });
process.send?.({ port: fake.port, caFile: fake.caFile });
process.on('disconnect', () => {
  void fake.close().finally(() => process.exit(0));
});

import { type FakeGraph, startFakeGraph } from './fake-graph.js';
import { startOP, type TestOP } from './op.js';
import { type Stack, startStack } from './stack.js';

/** The audience the test OP gives Graph tokens (RFC 8707 resource). */
export const GRAPH_AUDIENCE = 'https://graph.test';

export interface GraphStack {
  op: TestOP;
  graph: FakeGraph;
  stack: Stack;
  close(): Promise<void>;
}

/**
 * The whole proxy with provider "local" in `smtp_delivery: graph` mode: a real oidc-provider that
 * mints Graph-audience tokens from the mailbox's grant, and the fake Graph checking them.
 */
export async function startGraphStack(providerKeys: string[] = []): Promise<GraphStack> {
  const op = await startOP({
    accessTokenTtl: 3600,
    clientCredentials: true,
    resources: { [GRAPH_AUDIENCE]: { scope: 'mail.send mail.readwrite' } },
  });
  let graph: FakeGraph | undefined;
  try {
    const g = await startFakeGraph({
      introspect: {
        url: op.introspection.url,
        clientId: op.introspection.id,
        secret: op.introspection.secret,
      },
      audience: GRAPH_AUDIENCE,
    });
    graph = g;
    const stack = await startStack({
      op,
      providerYaml: () =>
        [
          'smtp_delivery: graph',
          `graph_url: ${g.url}`,
          `graph_resource: ${GRAPH_AUDIENCE}`,
          ...providerKeys,
        ].join('\n'),
    });
    return {
      op,
      graph: g,
      stack,
      async close() {
        await stack.close();
        await g.stop();
        await op.close();
      },
    };
  } catch (err) {
    await graph?.stop();
    await op.close();
    throw err;
  }
}

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { parseAllDocuments } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';

/**
 * The files that run the proxy as a service: the systemd unit (checked by systemd's own
 * `systemd-analyze verify` and `systemd-sysusers`) and the Kubernetes manifests (checked against
 * the Kubernetes API schemas, unknown fields included, and against the proxy's own config loader).
 */

const UNIT = 'config/systemd/imap-oauth-proxy.service';
const SYSUSERS = 'config/systemd/imap-oauth-proxy.sysusers.conf';
const K8S = 'config/kubernetes';
/** A tool that hangs fails the test instead of stalling the suite. */
const TOOL_MS = 30_000;

const scratch = mkdtempSync(join(tmpdir(), 'iop-service-files-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** Reads a constant like `const SHUTDOWN_DRAIN_MS = 10_000;` so the stop timeouts follow the code. */
function sourceMs(file: string, name: string): number {
  const m = new RegExp(`const ${name} = ([\\d_]+);`).exec(readFileSync(file, 'utf8'));
  assert.ok(m, `${name} not found in ${file}: update this test to the new drain constant`);
  return Number(m[1]!.replaceAll('_', ''));
}
const DRAIN_S = sourceMs('src/net/listener.ts', 'SHUTDOWN_DRAIN_MS') / 1000;
// The primary kills a worker that has not stopped within its drain plus this grace.
const WORKER_STOP_S = DRAIN_S + sourceMs('src/app/cluster.ts', 'STOP_GRACE_MS') / 1000;

function run(cmd: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: TOOL_MS });
  if (r.error) throw new Error(`${cmd}: ${r.error.message} (test/preflight.mjs installs it)`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ---------------------------------------------------------------------------------------------
// systemd

type Unit = Map<string, Map<string, string[]>>;

/** systemd's unit syntax: [Section], Key=Value (repeatable, in order), # and ; comments. */
function parseUnit(text: string, file: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const head = /^\[([A-Za-z]+)\]$/.exec(line);
    if (head) {
      section = new Map();
      unit.set(head[1]!, section);
      return;
    }
    const kv = /^([A-Za-z0-9]+)=(.*)$/.exec(line);
    if (!kv) throw new Error(`${file}:${i + 1}: not "Key=Value": ${line}`);
    if (!section) throw new Error(`${file}:${i + 1}: ${kv[1]} before any [Section]`);
    section.set(kv[1]!, [...(section.get(kv[1]!) ?? []), kv[2]!]);
  });
  return unit;
}

/** The value in force: systemd's last assignment wins (an empty one resets a list). */
function one(unit: Unit, section: string, key: string): string {
  const v = unit.get(section)?.get(key);
  assert.ok(v, `[${section}] ${key}= is missing`);
  return v.at(-1)!;
}

function seconds(v: string): number {
  const m = /^(\d+)(s|min)?$/.exec(v);
  assert.ok(m, `not a time span: ${v}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
}

/** `systemd-analyze verify` on a copy (same file name); it reports problems on stderr only. */
function verifyUnit(text: string): { status: number | null; stderr: string } {
  const dir = mkdtempSync(join(scratch, 'unit-'));
  const file = join(dir, 'imap-oauth-proxy.service');
  // verify checks that ExecStart's binary exists: point it at this machine's node.
  writeFileSync(file, text.replaceAll('/usr/bin/node ', `${process.execPath} `));
  const r = run('systemd-analyze', ['verify', file]);
  return { status: r.status, stderr: r.stderr.trim() };
}

describe('systemd unit', () => {
  const text = readFileSync(UNIT, 'utf8');
  const unit = parseUnit(text, UNIT);

  test('systemd-analyze verify accepts it without a warning, and flags a misspelt key', () => {
    const clean = verifyUnit(text);
    assert.equal(clean.stderr, '', 'no warnings');
    assert.equal(clean.status, 0);
    const typo = verifyUnit(text.replace('NoNewPrivileges=', 'NoNewPrivilege='));
    assert.match(typo.stderr, /Unknown key 'NoNewPrivilege'/, 'the check has teeth');
  });

  test('the unit parser refuses what is not a unit file', () => {
    assert.throws(() => parseUnit('User=x\n', 'f'), /f:1: User before any \[Section\]/);
    assert.throws(() => parseUnit('[Service]\nUser x\n', 'f'), /f:2: not "Key=Value"/);
  });

  test('runs serve as its own user, with state and config where the README says', () => {
    assert.equal(one(unit, 'Service', 'User'), 'imap-oauth-proxy');
    assert.equal(one(unit, 'Service', 'Group'), 'imap-oauth-proxy');
    assert.match(
      one(unit, 'Service', 'ExecStart'),
      /^\/usr\/bin\/node \/opt\/imap-oauth-proxy\/dist\/cli\.js serve --config \/etc\/imap-oauth-proxy\/config\.yaml$/,
    );
    assert.equal(one(unit, 'Service', 'ExecReload'), '/bin/kill -HUP $MAINPID');
    assert.equal(one(unit, 'Service', 'StateDirectory'), 'imap-oauth-proxy');
    assert.equal(one(unit, 'Service', 'EnvironmentFile'), '/etc/imap-oauth-proxy/env');
    assert.equal(one(unit, 'Install', 'WantedBy'), 'multi-user.target');
  });

  test('restarts on failure, and gives the drain its time before systemd kills', () => {
    assert.equal(one(unit, 'Service', 'Restart'), 'on-failure');
    const restartSec = seconds(one(unit, 'Service', 'RestartSec'));
    assert.ok(restartSec >= 1 && restartSec <= 30, `RestartSec ${restartSec}s`);
    // A SIGHUP before serve handles it (start-up) is a clean exit to systemd: this brings it back.
    assert.equal(one(unit, 'Service', 'RestartForceExitStatus'), 'SIGHUP');
    assert.equal(one(unit, 'Service', 'KillMode'), 'mixed', 'SIGTERM to the main process, which drains');
    const stop = seconds(one(unit, 'Service', 'TimeoutStopSec'));
    assert.ok(
      stop > DRAIN_S && stop > WORKER_STOP_S,
      `TimeoutStopSec ${stop}s vs drain ${DRAIN_S}s/${WORKER_STOP_S}s`,
    );
    assert.ok(Number(one(unit, 'Service', 'LimitNOFILE')) >= 20_000, 'two sockets per session');
  });

  test('hardening: no capabilities, read-only system, IP and Unix sockets only, JIT allowed', () => {
    const expect: Record<string, string> = {
      NoNewPrivileges: 'yes',
      ProtectSystem: 'strict',
      ProtectHome: 'yes',
      PrivateTmp: 'yes',
      PrivateDevices: 'yes',
      ProtectKernelTunables: 'yes',
      ProtectKernelModules: 'yes',
      ProtectKernelLogs: 'yes',
      ProtectControlGroups: 'yes',
      RestrictNamespaces: 'yes',
      LockPersonality: 'yes',
      MemoryDenyWriteExecute: 'no',
      CapabilityBoundingSet: '',
      AmbientCapabilities: '',
    };
    for (const [key, value] of Object.entries(expect)) assert.equal(one(unit, 'Service', key), value, key);
    assert.deepEqual(one(unit, 'Service', 'RestrictAddressFamilies').split(/\s+/).sort(), [
      'AF_INET',
      'AF_INET6',
      'AF_UNIX',
    ]);
    assert.ok(unit.get('Service')?.get('SystemCallFilter')?.includes('@system-service'));
    // Each exception says why, next to it.
    assert.match(text, /# Off: V8's JIT[^\n]*\nMemoryDenyWriteExecute=no/);
    assert.match(text, /#[^\n]*CAP_NET_BIND_SERVICE[^\n]*\n(#[^\n]*\n)*CapabilityBoundingSet=\n/);
  });

  test('config/example.yaml under the unit keeps its data in the StateDirectory', () => {
    const env: NodeJS.ProcessEnv = {};
    for (const assignment of unit.get('Service')?.get('Environment') ?? []) {
      const [name, ...value] = assignment.split('=');
      env[name!] = value.join('=').replaceAll('%S', '/var/lib');
    }
    const { config } = parseConfig(
      readFileSync('config/example.yaml', 'utf8'),
      join(scratch, 'example.yaml'),
      env,
    );
    assert.equal(config.data_dir, `/var/lib/${one(unit, 'Service', 'StateDirectory')}`);
    assert.equal(one(unit, 'Service', 'WorkingDirectory'), '%S/imap-oauth-proxy');
  });

  test('systemd-sysusers creates the unit’s system user from the sysusers.d snippet', () => {
    const root = mkdtempSync(join(scratch, 'root-'));
    mkdirSync(join(root, 'etc'));
    const r = run('systemd-sysusers', [`--root=${root}`, join(process.cwd(), SYSUSERS)]);
    assert.equal(r.status, 0, r.stderr);
    const entry = readFileSync(join(root, 'etc/passwd'), 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${one(unit, 'Service', 'User')}:`));
    assert.ok(entry, 'the user exists');
    const [, , uid, gid, , home, shell] = entry.split(':');
    assert.ok(Number(uid) > 0 && Number(uid) < 1000, `a system uid (${uid})`);
    assert.match(
      readFileSync(join(root, 'etc/group'), 'utf8'),
      new RegExp(`^imap-oauth-proxy:x:${gid}:`, 'm'),
    );
    assert.equal(home, '/var/lib/imap-oauth-proxy');
    assert.equal(shell, '/usr/sbin/nologin');
  });
});

// ---------------------------------------------------------------------------------------------
// Kubernetes

type Obj = Record<string, unknown>;
interface Manifest {
  file: string;
  doc: Obj;
}

const MODELS: Record<string, { prototype: { validate(): void } }> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

/**
 * Validates against the API schema, and also fails on fields the schema does not know (as
 * `kubectl apply --validate=strict` does): the generated validator reads every field it knows,
 * so a field it never read is unknown — a misspelt probe or limit would otherwise pass silently.
 */
function validateStrict(doc: Obj): string[] {
  const kind = `${doc.apiVersion}/${doc.kind}`;
  const model = MODELS[kind];
  if (!model) return [`no Kubernetes schema known for ${kind}`];
  const read = new Map<object, Set<string>>();
  const track = (value: unknown): unknown => {
    if (value === null || typeof value !== 'object') return value;
    return new Proxy(value, {
      get(target, key, receiver) {
        if (typeof key === 'string') {
          const keys = read.get(target) ?? new Set<string>();
          keys.add(key);
          read.set(target, keys);
        }
        return track(Reflect.get(target, key, receiver));
      },
    });
  };
  try {
    model.prototype.validate.call(track(doc) as never);
  } catch (err) {
    return [(err as Error).message];
  }
  const unknown: string[] = [];
  const walk = (value: unknown, path: string): void => {
    if (Array.isArray(value))
      value.forEach((v, i) => {
        walk(v, `${path}/${i}`);
      });
    else if (value !== null && typeof value === 'object')
      for (const [k, v] of Object.entries(value)) {
        if (read.get(value)?.has(k)) walk(v, `${path}/${k}`);
        else unknown.push(`${path}/${k}: unknown field`);
      }
  };
  walk(doc, '');
  return unknown;
}

function loadManifests(): { kustomization: Obj; manifests: Manifest[] } {
  const manifests: Manifest[] = [];
  let kustomization: Obj | undefined;
  for (const file of readdirSync(K8S).sort()) {
    assert.match(file, /\.yaml$/, `${K8S}/${file}: only YAML manifests here`);
    for (const d of parseAllDocuments(readFileSync(join(K8S, file), 'utf8'))) {
      assert.deepEqual(d.errors, [], `${file}: YAML syntax`);
      const doc = d.toJS() as Obj;
      if (file === 'kustomization.yaml') kustomization = doc;
      else manifests.push({ file, doc });
    }
  }
  assert.ok(kustomization, 'kustomization.yaml');
  return { kustomization, manifests };
}

function find<T = Obj>(manifests: Manifest[], kind: string, name: string): T {
  const m = manifests.find(({ doc }) => doc.kind === kind && (doc.metadata as Obj).name === name);
  assert.ok(m, `${kind} ${name}`);
  return m.doc as T;
}

interface Container {
  image: string;
  args: string[];
  ports: { name: string; containerPort: number }[];
  envFrom: { secretRef: { name: string } }[];
  readinessProbe: { httpGet: { path: string; port: string | number } };
  livenessProbe: { httpGet: { path: string; port: string | number } };
  lifecycle: { preStop: { exec: { command: string[] } } };
  securityContext: {
    allowPrivilegeEscalation: boolean;
    readOnlyRootFilesystem: boolean;
    capabilities: { drop: string[] };
  };
  volumeMounts: { name: string; mountPath: string; subPath?: string }[];
}
interface PodSpec {
  terminationGracePeriodSeconds: number;
  securityContext: { runAsNonRoot: boolean; runAsUser: number };
  containers: Container[];
  volumes: { name: string; configMap?: { name: string }; secret?: { secretName: string }; emptyDir?: Obj }[];
}
interface DeploymentDoc {
  spec: {
    replicas: number;
    selector: { matchLabels: Obj };
    template: { metadata: { labels: Obj }; spec: PodSpec };
  };
}
interface ServiceDoc {
  spec: { type: string; selector: Obj; ports: { name: string; port: number; targetPort: string | number }[] };
}
interface SecretDoc {
  type: string;
  stringData: Record<string, string>;
}

/** The port a client expects for each protocol and TLS mode, as the LoadBalancer serves it. */
const STANDARD_PORT: Record<string, number> = {
  'imap/starttls': 143,
  'imap/implicit': 993,
  'smtp/starttls': 587,
  'smtp/implicit': 465,
  'pop3/starttls': 110,
  'pop3/implicit': 995,
};

describe('Kubernetes manifests', () => {
  const { kustomization, manifests } = loadManifests();
  const deployment = find<DeploymentDoc>(manifests, 'Deployment', 'imap-oauth-proxy');
  const pod = deployment.spec.template.spec;
  const container = pod.containers[0]!;
  const portOf = (ref: string | number): number => {
    const p = typeof ref === 'number' ? ref : container.ports.find((x) => x.name === ref)?.containerPort;
    assert.ok(p, `container port ${ref}`);
    return p;
  };

  /** config.yaml as the pod reads it: its Secret mounts laid out under a temp dir, env from envFrom. */
  const podConfig = (env?: NodeJS.ProcessEnv): Config => {
    let text = find<{ data: Record<string, string> }>(manifests, 'ConfigMap', 'imap-oauth-proxy-config').data[
      'config.yaml'
    ]!;
    assert.ok(text, 'the ConfigMap holds config.yaml');
    const root = mkdtempSync(join(scratch, 'pod-'));
    for (const mount of container.volumeMounts) {
      const secretName = pod.volumes.find((v) => v.name === mount.name)?.secret?.secretName;
      if (!secretName) continue;
      const dir = join(root, mount.name);
      mkdirSync(dir);
      for (const [key, value] of Object.entries(find<SecretDoc>(manifests, 'Secret', secretName).stringData))
        writeFileSync(join(dir, key), value);
      text = text.replaceAll(`${mount.mountPath}/`, `${dir}/`);
    }
    const envSecret = find<SecretDoc>(manifests, 'Secret', container.envFrom[0]!.secretRef.name);
    return parseConfig(text, join(root, 'config.yaml'), env ?? { ...envSecret.stringData }).config;
  };

  test('kustomization.yaml lists every manifest, none twice, and none sets a namespace', () => {
    const listed = kustomization.resources as string[];
    assert.deepEqual([...listed].sort(), [...new Set(manifests.map((m) => m.file))].sort());
    for (const { file, doc } of manifests)
      assert.equal((doc.metadata as Obj).namespace, undefined, `${file}: namespace-less`);
  });

  test('every manifest validates against the Kubernetes API schema, unknown fields refused', () => {
    for (const { file, doc } of manifests)
      assert.deepEqual(validateStrict(doc), [], `${file}: ${doc.kind} ${(doc.metadata as Obj).name}`);
  });

  test('the strict validation catches a misspelt field, a wrong type and an unknown kind', () => {
    const d = structuredClone(find<Obj>(manifests, 'Deployment', 'imap-oauth-proxy'));
    const spec = (d.spec as { template: { spec: Obj } }).template.spec;
    spec.terminationGracePeriodSecond = spec.terminationGracePeriodSeconds;
    assert.deepEqual(validateStrict(d), ['/spec/template/spec/terminationGracePeriodSecond: unknown field']);
    delete spec.terminationGracePeriodSecond;
    (d.spec as Obj).replicas = 'two';
    assert.match(validateStrict(d)[0] ?? '', /replicas must be integer/);
    assert.deepEqual(validateStrict({ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor' }), [
      'no Kubernetes schema known for monitoring.coreos.com/v1/ServiceMonitor',
    ]);
  });

  test("the ConfigMap's config.yaml passes the proxy's own loader: PostgreSQL, PROXY protocol, admin on the pod address", () => {
    const config = podConfig();
    assert.equal(config.store.driver, 'postgres');
    assert.match(config.store.postgres_url ?? '', /^postgres:\/\//);
    assert.equal(config.admin.address, '0.0.0.0');
    assert.equal(config.workers, 1, 'scaled by replicas');
    for (const l of config.listeners) {
      assert.equal(l.address, '0.0.0.0', l.name);
      assert.ok(l.proxy_protocol?.trusted.length, `${l.name}: PROXY protocol from the load balancer`);
      assert.ok(l.cert_file && l.key_file, `${l.name}: one certificate for every replica, from the Secret`);
    }
    const mount = (path: string) => container.volumeMounts.find((m) => m.mountPath === path)?.name;
    assert.ok(
      pod.volumes.find((v) => v.name === mount(config.data_dir))?.emptyDir,
      'data_dir on an emptyDir',
    );
    assert.ok(pod.volumes.find((v) => v.name === mount('/tmp'))?.emptyDir, '/tmp on an emptyDir');
    assert.deepEqual(container.args, ['serve', '--config', '/etc/imap-oauth-proxy/config.yaml']);
    const configMount = container.volumeMounts.find(
      (m) => m.mountPath === '/etc/imap-oauth-proxy/config.yaml',
    );
    assert.equal(configMount?.subPath, 'config.yaml');
  });

  test('the Secret is a template: placeholders only, each one a ${VAR} the config reads', () => {
    const secret = find<SecretDoc>(manifests, 'Secret', container.envFrom[0]!.secretRef.name);
    const tls = find<SecretDoc>(manifests, 'Secret', 'imap-oauth-proxy-tls');
    assert.equal(tls.type, 'kubernetes.io/tls');
    for (const s of [secret, tls])
      for (const [k, v] of Object.entries(s.stringData)) assert.match(v, /REPLACE/, `${k}: no real secret`);
    const text = find<{ data: Record<string, string> }>(manifests, 'ConfigMap', 'imap-oauth-proxy-config')
      .data['config.yaml']!;
    const vars = [...text.matchAll(/\$\{([A-Z0-9_]+)\}/g)].map((m) => m[1]);
    assert.deepEqual([...new Set(vars)].sort(), Object.keys(secret.stringData).sort());
    assert.throws(
      () => podConfig({ ...secret.stringData, PG_URL: undefined }),
      /environment variable PG_URL is not set/,
    );
  });

  test('ports agree: config listeners, container ports, Services; mail on the standard numbers', () => {
    const config = podConfig();
    const listenerPorts = config.listeners.map((l) => l.port).sort();
    const admin = portOf('admin');
    assert.equal(admin, config.admin.port);
    assert.deepEqual(
      container.ports
        .map((p) => p.containerPort)
        .filter((p) => p !== admin)
        .sort(),
      listenerPorts,
    );
    const mail = find<ServiceDoc>(manifests, 'Service', 'imap-oauth-proxy');
    assert.equal(mail.spec.type, 'LoadBalancer');
    assert.deepEqual(mail.spec.ports.map((p) => portOf(p.targetPort)).sort(), listenerPorts);
    for (const l of config.listeners) {
      const svc = mail.spec.ports.find((p) => portOf(p.targetPort) === l.port);
      assert.equal(svc?.port, STANDARD_PORT[`${l.protocol}/${l.tls}`], `${l.name} (${l.protocol}, ${l.tls})`);
    }
    const adminSvc = find<ServiceDoc>(manifests, 'Service', 'imap-oauth-proxy-admin');
    assert.equal(adminSvc.spec.type, 'ClusterIP');
    assert.deepEqual(
      adminSvc.spec.ports.map((p) => portOf(p.targetPort)),
      [config.admin.port],
    );
  });

  test('probes: readiness on /readyz, liveness on /healthz, both on the admin port', () => {
    const config = podConfig();
    assert.equal(container.readinessProbe.httpGet.path, '/readyz');
    assert.equal(portOf(container.readinessProbe.httpGet.port), config.admin.port);
    assert.equal(container.livenessProbe.httpGet.path, '/healthz');
    assert.equal(portOf(container.livenessProbe.httpGet.port), config.admin.port);
  });

  test('two non-root replicas, read-only root, drained before they are killed, one kept by the PDB', () => {
    assert.equal(deployment.spec.replicas, 2);
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.ok(pod.securityContext.runAsUser > 0);
    assert.equal(container.securityContext.readOnlyRootFilesystem, true);
    assert.equal(container.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(container.securityContext.capabilities.drop, ['ALL']);
    const [sleep, secs] = container.lifecycle.preStop.exec.command;
    assert.equal(sleep, 'sleep');
    assert.ok(pod.terminationGracePeriodSeconds > Number(secs) + DRAIN_S, 'preStop plus the drain fit');
    const labels = deployment.spec.template.metadata.labels;
    assert.deepEqual(deployment.spec.selector.matchLabels, labels);
    const pdb = find<{ spec: { minAvailable: number; selector: { matchLabels: Obj } } }>(
      manifests,
      'PodDisruptionBudget',
      'imap-oauth-proxy',
    );
    assert.equal(pdb.spec.minAvailable, 1);
    assert.deepEqual(pdb.spec.selector.matchLabels, labels);
    for (const name of ['imap-oauth-proxy', 'imap-oauth-proxy-admin'])
      assert.deepEqual(find<ServiceDoc>(manifests, 'Service', name).spec.selector, labels, name);
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    assert.equal(container.image, `imap-oauth-proxy:${version}`, 'the image of this version');
  });
});

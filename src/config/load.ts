import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { basename, dirname, isAbsolute, resolve } from 'node:path';
import { type Document, isMap, isScalar, LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { applyPreset, hasUpstream } from './presets.js';
import { type Config, configSchema, FILE_SECRET_KEYS, PROTOCOL_NAMES, type Protocol } from './schema.js';

/** Config keys whose values are file system paths, resolved against the config file's folder. */
const PATH_KEYS = new Set([
  'data_dir',
  'cert_file',
  'key_file',
  'ca_file',
  'sqlite_path',
  'private_key_file',
  'service_account_file',
]);

type Path = (string | number)[];

export interface LoadedConfig {
  config: Config;
  file: string;
}

class Problems {
  readonly list: string[] = [];
  constructor(
    private readonly file: string,
    private readonly doc: Document.Parsed,
    private readonly lines: LineCounter,
  ) {}

  add(path: Path, message: string): void {
    this.list.push(`${this.file}:${this.where(path)}: ${formatPath(path) || '(top level)'}: ${message}`);
  }

  private where(path: Path): string {
    // Walk up until a node with a source range exists (a missing key points at its parent).
    for (let n = path.length; n >= 0; n--) {
      const node = n === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n), true);
      const range = (node as { range?: [number, number, number] } | null | undefined)?.range;
      if (range) {
        const pos = this.lines.linePos(range[0]);
        return `${pos.line}:${pos.col}`;
      }
    }
    return '1:1';
  }
}

export function formatPath(path: Path): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${p}` : p;
  return out;
}

/** Reads, substitutes, validates and resolves a config file. Throws ConfigError listing every problem. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const abs = resolve(file);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read config file (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  return parseConfig(text, abs, env);
}

export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const msgs = doc.errors.map((e) => {
      const pos = lines.linePos(e.pos[0]);
      return `${file}:${pos.line}:${pos.col}: YAML syntax: ${e.message.split('\n')[0]}`;
    });
    throw new ConfigError(msgs.join('\n'));
  }
  const problems = new Problems(file, doc, lines);
  if (doc.contents && !isMap(doc.contents) && !(isScalar(doc.contents) && doc.contents.value == null)) {
    throw new ConfigError(`${file}:1:1: the config must be a mapping of keys (e.g. "listeners:")`);
  }
  const raw = doc.toJS({ maxAliasCount: 50 }) ?? {};
  const baseDir = dirname(file);
  const expanded = expand(raw, [], { env, baseDir, problems });
  if (problems.list.length > 0) throw new ConfigError(problems.list.join('\n'));

  const parsed = configSchema.safeParse(expanded);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.add(issue.path as Path, describeIssue(issue));
    throw new ConfigError(problems.list.join('\n'));
  }
  const config = parsed.data;
  config.data_dir = resolvePath(config.data_dir, baseDir);
  config.store.sqlite_path ??= resolve(config.data_dir, 'proxy.db');
  const protocols = new Set(config.listeners.map((l) => l.protocol));
  for (const [name, p] of Object.entries(config.providers))
    config.providers[name] = applyPreset(p, protocols);
  crossCheck(config, problems);
  if (problems.list.length > 0) throw new ConfigError(problems.list.join('\n'));
  return { config, file };
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return `unknown key(s): ${issue.keys.join(', ')}`;
  if (issue.code === 'invalid_type' && issue.input === undefined)
    return `required (expected ${issue.expected})`;
  return issue.message;
}

interface ExpandCtx {
  env: NodeJS.ProcessEnv;
  baseDir: string;
  problems: Problems;
}

/** `${VAR}` / `${VAR:-default}` in strings, `<secret>_file` indirection, path resolution. */
function expand(value: unknown, path: Path, ctx: ExpandCtx): unknown {
  if (typeof value === 'string') return substituteEnv(value, path, ctx);
  if (Array.isArray(value)) return value.map((v, i) => expand(v, [...path, i], ctx));
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const here = [...path, k];
    const secretKey = k.endsWith('_file') ? k.slice(0, -'_file'.length) : null;
    if (secretKey && FILE_SECRET_KEYS.includes(secretKey)) {
      if (k in out || secretKey in (value as Record<string, unknown>)) {
        ctx.problems.add(here, `give either ${secretKey} or ${k}, not both`);
        continue;
      }
      const fileName = expand(v, here, ctx);
      if (typeof fileName !== 'string') {
        ctx.problems.add(here, 'expected a file path');
        continue;
      }
      try {
        out[secretKey] = readFileSync(resolvePath(fileName, ctx.baseDir), 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        ctx.problems.add(here, `cannot read ${fileName} (${(err as NodeJS.ErrnoException).code ?? err})`);
      }
      continue;
    }
    let e = expand(v, here, ctx);
    // A bare encryption.key_file name stays bare: the keyring finds it in data_dir, beside the store.
    const keyFileInDataDir =
      k === 'key_file' && path.length === 1 && path[0] === 'encryption' && isBareName(e);
    if (PATH_KEYS.has(k) && typeof e === 'string' && e !== '' && !keyFileInDataDir)
      e = resolvePath(e, ctx.baseDir);
    out[k] = e;
  }
  return out;
}

/** A value that is exactly one `${VAR}` keeps YAML's scalar typing (numbers, booleans). */
function substituteEnv(s: string, path: Path, ctx: ExpandCtx): unknown {
  const out = replaceVars(s, path, ctx);
  if (out === s || !/^\$\{[^}]+\}$/.test(s)) return out;
  if (/^-?\d+(\.\d+)?$/.test(out)) return Number(out);
  if (out === 'true' || out === 'false') return out === 'true';
  return out;
}

function replaceVars(s: string, path: Path, ctx: ExpandCtx): string {
  return s.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g,
    (_m, name: string, def: string | undefined) => {
      const v = ctx.env[name];
      if (v !== undefined && v !== '') return v;
      if (def !== undefined) return def;
      ctx.problems.add(path, `environment variable ${name} is not set`);
      return '';
    },
  );
}

function isBareName(v: unknown): boolean {
  return typeof v === 'string' && v !== '' && basename(v) === v && v !== '~' && v !== '.' && v !== '..';
}

function resolvePath(p: string, baseDir: string): string {
  if (p === '~' || p.startsWith('~/')) return resolve(homedir(), p.slice(2));
  return isAbsolute(p) ? p : resolve(baseDir, p);
}

/** Rules that span several keys. */
function crossCheck(config: Config, problems: Problems): void {
  const names = new Map<string, number>();
  const binds = new Map<string, number>();
  config.listeners.forEach((l, i) => {
    if (names.has(l.name)) problems.add(['listeners', i, 'name'], `duplicate listener name "${l.name}"`);
    names.set(l.name, i);
    const bind = `${l.address}:${l.port}`;
    if (l.port !== 0 && binds.has(bind))
      problems.add(['listeners', i, 'port'], `${bind} is used by another listener`);
    binds.set(bind, i);
    if ((l.cert_file === undefined) !== (l.key_file === undefined)) {
      problems.add(
        ['listeners', i],
        'give both cert_file and key_file, or neither (a self-signed pair is generated)',
      );
    }
    if (l.tls === 'none' && l.allow_cleartext_login === false && l.cert_file) {
      problems.add(['listeners', i, 'tls'], 'cert_file is unused with tls: none');
    }
    for (const key of ['cert_file', 'key_file'] as const) {
      const problem = unreadable(l[key]);
      if (problem) problems.add(['listeners', i, key], problem);
    }
    l.proxy_protocol?.trusted.forEach((entry, j) => {
      const problem = badCidr(entry);
      if (problem) problems.add(['listeners', i, 'proxy_protocol', 'trusted', j], problem);
    });
    l.allow_from?.forEach((entry, j) => {
      const problem = badCidr(entry);
      if (problem) problems.add(['listeners', i, 'allow_from', j], problem);
    });
    // A password in cleartext is acceptable only from a network the admin named (a scanner's VLAN).
    if (l.allow_cleartext_login && !l.allow_from) {
      problems.add(
        ['listeners', i, 'allow_cleartext_login'],
        'needs allow_from (the client networks allowed to send passwords without TLS, e.g. [192.168.10.0/24])',
      );
    }
    if (l.server_name !== undefined && l.protocol !== 'smtp') {
      problems.add(['listeners', i, 'server_name'], 'server_name applies to smtp listeners only');
    }
  });
  const protocols = new Set(config.listeners.map((l) => l.protocol));
  for (const [name, p] of Object.entries(config.providers)) {
    const at = ['providers', name];
    if (p.preset === 'oidc' && !p.issuer && !p.token_endpoint) {
      problems.add(at, 'an oidc provider needs issuer (discovery) or token_endpoint');
    }
    // Errors point at the spelling the file used: upstream (older) or upstreams.imap.
    const upstreamAt = (proto: Protocol) =>
      proto === 'imap' && p.upstream ? [...at, 'upstream'] : [...at, 'upstreams', proto];
    for (const proto of protocols) {
      if (hasUpstream(p, proto)) continue;
      problems.add(
        upstreamAt(proto),
        proto === 'imap'
          ? 'upstreams.imap.host (or upstream.host) is required for this preset'
          : `upstreams.${proto}.host is required for this preset: a listener speaks ${proto}`,
      );
    }
    if (p.client_auth === 'private_key_jwt' && !p.private_key_file) {
      problems.add([...at, 'private_key_file'], 'required when client_auth is private_key_jwt');
    }
    if (!p.allow_insecure_http) {
      for (const key of HTTP_URL_KEYS) {
        if (p[key]?.startsWith('http:'))
          problems.add(
            [...at, key],
            'http:// needs allow_insecure_http: true on this provider (local testing only)',
          );
      }
    }
    for (const proto of PROTOCOL_NAMES) {
      const caProblem = unreadable(p.upstreams?.[proto]?.ca_file);
      if (caProblem) problems.add([...upstreamAt(proto), 'ca_file'], caProblem);
    }
    const needsSecret = p.client_auth === 'client_secret_basic' || p.client_auth === 'client_secret_post';
    if (needsSecret && p.client_id && !p.client_secret && !p.service_account_file) {
      problems.add(
        [...at, 'client_secret'],
        `required with client_auth ${p.client_auth} (or use client_secret_file)`,
      );
    }
  }
  if (config.store.driver === 'postgres' && !config.store.postgres_url) {
    problems.add(['store', 'postgres_url'], 'required when store.driver is postgres');
  }
  if (!config.encryption.key && !config.encryption.key_file) {
    problems.add(['encryption'], 'set encryption.key (e.g. ${IMAP_PROXY_KEY}) or encryption.key_file');
  }
}

const HTTP_URL_KEYS = [
  'issuer',
  'authorization_endpoint',
  'token_endpoint',
  'device_authorization_endpoint',
  'revocation_endpoint',
  'graph_url',
] as const;

/** Read now, so a missing or unreadable file fails check-config instead of the first TLS handshake. */
function unreadable(file: string | undefined): string | undefined {
  if (file === undefined || file === '') return undefined;
  try {
    readFileSync(file);
    return undefined;
  } catch (err) {
    return `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})`;
  }
}

/** The forms the PROXY protocol trust list accepts (an address, or address/prefix), checked strictly. */
function badCidr(entry: string): string | undefined {
  const [, address = '', prefix] = /^([^/\s]+)(?:\/(\d{1,3}))?$/.exec(entry) ?? [];
  const family = isIP(address);
  if (family === 0) return `"${entry}" is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)`;
  const max = family === 4 ? 32 : 128;
  if (prefix !== undefined && Number(prefix) > max) return `"${entry}": prefix length must be 0-${max}`;
  return undefined;
}

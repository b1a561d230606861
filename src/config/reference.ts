import { configJsonSchema } from './json-schema.js';

interface Node {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, Node>;
  items?: Node;
  additionalProperties?: Node | boolean;
  anyOf?: Node[];
  required?: string[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
}

function typeOf(n: Node): string {
  if (n.enum) return n.enum.map((e) => `\`${String(e)}\``).join(' \\| ');
  if (n.const !== undefined) return `\`${String(n.const)}\``;
  if (n.anyOf) return n.anyOf.map(typeOf).join(' \\| ');
  if (n.type === 'array') return `list of ${n.items ? typeOf(n.items) : 'values'}`;
  if (n.type === 'object') return 'mapping';
  const t = Array.isArray(n.type) ? n.type.join(' \\| ') : (n.type ?? 'value');
  if (t === 'integer' || t === 'number') {
    const lo = n.minimum ?? n.exclusiveMinimum;
    const hi = n.maximum !== undefined && n.maximum < Number.MAX_SAFE_INTEGER ? n.maximum : undefined;
    if (lo !== undefined && hi !== undefined) return `${t} ${lo}–${hi}`;
    if (lo !== undefined) return `${t} ≥ ${lo}`;
  }
  return t;
}

function fmtDefault(n: Node): string {
  if (n.default === undefined) return '';
  if (typeof n.default === 'object')
    return Object.keys(n.default as object).length === 0 ? '' : `\`${JSON.stringify(n.default)}\``;
  return `\`${String(n.default)}\``;
}

/** The config reference table in the README, generated from the schema. */
export function configReferenceMarkdown(): string {
  const rows: string[] = ['| key | type | default | meaning |', '| --- | --- | --- | --- |'];
  const walk = (n: Node, path: string, required: boolean) => {
    const children = n.properties;
    if (children && path !== '') {
      rows.push(
        `| \`${path}\` | ${typeOf(n)} | ${fmtDefault(n)} | ${n.description ?? ''}${required ? ' (required)' : ''} |`,
      );
    }
    if (children) {
      for (const [k, c] of Object.entries(children))
        walk(c, path ? `${path}.${k}` : k, n.required?.includes(k) ?? false);
      return;
    }
    if (n.type === 'array' && n.items?.properties) {
      rows.push(`| \`${path}\` | list | | ${n.description ?? ''}${required ? ' (required)' : ''} |`);
      for (const [k, c] of Object.entries(n.items.properties))
        walk(c, `${path}[].${k}`, n.items.required?.includes(k) ?? false);
      return;
    }
    if (typeof n.additionalProperties === 'object' && n.additionalProperties.properties) {
      rows.push(
        `| \`${path}\` | mapping of name → provider | | ${n.description ?? ''}${required ? ' (required)' : ''} |`,
      );
      for (const [k, c] of Object.entries(n.additionalProperties.properties)) {
        walk(c, `${path}.<name>.${k}`, n.additionalProperties.required?.includes(k) ?? false);
      }
      return;
    }
    rows.push(
      `| \`${path}\` | ${typeOf(n)} | ${fmtDefault(n)} | ${n.description ?? ''}${required ? ' (required)' : ''} |`,
    );
  };
  walk(configJsonSchema() as Node, '', false);
  return `${rows.join('\n')}\n`;
}

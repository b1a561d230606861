import { until } from '../../helpers/deadline.js';

/**
 * A scriptable "browser" for oidc-provider's dev pages: a cookie jar, manual redirects and
 * form submission (hidden inputs kept, named fields filled). Used where the device flow's
 * user side must run without Chromium.
 */
export class FormDriver {
  readonly #jar = new Map<string, string>();

  async #request(
    url: string,
    body?: URLSearchParams,
  ): Promise<{ url: string; status: number; html: string; location?: string }> {
    const res = await fetch(url, {
      method: body ? 'POST' : 'GET',
      redirect: 'manual',
      headers: {
        cookie: [...this.#jar].map(([k, v]) => `${k}=${v}`).join('; '),
        ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      },
      body,
    });
    for (const c of res.headers.getSetCookie()) {
      const pair = c.split(';')[0] ?? '';
      const eq = pair.indexOf('=');
      this.#jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    const html = await res.text();
    const loc = res.headers.get('location');
    return { url, status: res.status, html, ...(loc ? { location: new URL(loc, url).toString() } : {}) };
  }

  /** GET/POST and follow redirects; stops at the first 200 page (or any non-redirect). */
  async go(url: string, body?: URLSearchParams): Promise<{ url: string; status: number; html: string }> {
    let r = await this.#request(url, body);
    for (let i = 0; i < 10 && r.location; i++) r = await this.#request(r.location);
    return r;
  }

  /** Submits the page's first form, overriding/adding `fields`. */
  async submit(page: { url: string; html: string }, fields: Record<string, string>) {
    const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(page.html);
    if (!form) throw new Error(`no form on ${page.url}: ${page.html.slice(0, 200)}`);
    const action = /action="([^"]*)"/i.exec(form[1] ?? '')?.[1] ?? page.url;
    const params = new URLSearchParams();
    for (const m of (form[2] ?? '').matchAll(/<input\b([^>]*)>/gi)) {
      const name = /name="([^"]*)"/i.exec(m[1] ?? '')?.[1];
      const value = /value="([^"]*)"/i.exec(m[1] ?? '')?.[1] ?? '';
      if (name) params.set(name, value);
    }
    for (const [k, v] of Object.entries(fields)) params.set(k, v);
    return this.go(new URL(action.replace(/&amp;/g, '&'), page.url).toString(), params);
  }

  /** Enters the device flow's user code at `url` and signs in as `user`. */
  async approveDevice(url: string, code: string, user: string) {
    return this.signIn(await this.submit(await this.go(url), { user_code: code }), user);
  }

  /** Completes oidc-provider's confirm, login and consent forms as `user`. */
  async signIn(page: { url: string; status: number; html: string }, user: string) {
    let p = page;
    for (let step = 0; step < 6 && /<form/i.test(p.html); step++) {
      p = await this.submit(p, /name="login"/.test(p.html) ? { login: user, password: 'x' } : {});
    }
    return p;
  }
}

/** Waits for `account connect` to print its prompt into `out`; returns it with the URL and code. */
export async function devicePrompt(out: string[]): Promise<{ prompt: string; url: string; code: string }> {
  await until(() => out.some((l) => l.includes('enter the code')), 30_000, 'the CLI to print the code');
  const prompt = out.join('\n');
  const url = /open\n\n {4}(\S+)/.exec(prompt)?.[1];
  const code = /enter the code\n\n {4}(\S+)/.exec(prompt)?.[1];
  if (!url || !code) throw new Error(`no sign-in URL and code in the prompt:\n${prompt}`);
  return { prompt, url, code };
}

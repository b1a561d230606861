/** Lower-cased, trimmed login: the one form stored and looked up (login names are case-insensitive). */
export function normalizeLogin(login: string): string {
  return login.trim().toLowerCase();
}

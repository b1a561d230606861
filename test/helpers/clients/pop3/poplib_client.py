"""Retrieves message 1 with Python's poplib (run by poplib.ts under /usr/bin/python3).

Usage: poplib_client.py HOST PORT starttls|implicit CAFILE USER default|user|plain|login OUTFILE
The password comes from $POP3_PASSWORD. poplib has USER/PASS only; AUTH PLAIN and AUTH LOGIN
go through its own command/response primitives. retr() hands back dot-unstuffed lines without
their ends; they are written joined by CRLF, as on the wire. The trace goes to stdout.
"""

import base64
import os
import poplib
import ssl
import sys


def b64(data):
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


def auth(p, mech, user, password):
    steps = [b64("\0" + user + "\0" + password)] if mech == "PLAIN" else [b64(user), b64(password)]
    # _shortcmd raises on -ERR; a continuation "+ " passes like "+OK".
    resp = p._shortcmd("AUTH " + mech)
    for step in steps:
        if not resp.startswith(b"+ "):
            raise poplib.error_proto(resp)
        resp = p._shortcmd(step)
    if not resp.startswith(b"+OK"):
        raise poplib.error_proto(resp)


def main():
    host, port, mode, cafile, user, way, out = sys.argv[1:8]
    password = os.environ["POP3_PASSWORD"]
    ctx = ssl.create_default_context(cafile=cafile)
    if mode == "implicit":
        p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=60)
    else:
        p = poplib.POP3(host, int(port), timeout=60)
    p.set_debuglevel(1)
    if mode == "starttls":
        p.stls(context=ctx)
    if way in ("default", "user"):
        p.user(user)
        p.pass_(password)
    else:
        auth(p, way.upper(), user, password)
    _, lines, _ = p.retr(1)
    with open(out, "wb") as f:
        f.write(b"\r\n".join(lines) + b"\r\n")
    p.quit()


if __name__ == "__main__":
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    main()

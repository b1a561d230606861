#!/usr/bin/env python3
"""Log in with Python's imaplib the way a legacy client does, fetch one message, print JSON.

Usage: imaplib_client.py HOST PORT {starttls,implicit,none} CAFILE USER PASSWORD [login|plain] [UID]
The password is read from the IMAP_PASSWORD environment variable when PASSWORD is "-".
With IMAPLIB_DEBUG=1 imaplib's protocol trace goes to stderr (it shows the password: redact it).
"""
import base64
import imaplib
import json
import os
import ssl
import sys


def main() -> int:
    host, port, mode, cafile, user, password = sys.argv[1:7]
    mech = sys.argv[7] if len(sys.argv) > 7 else "login"
    uid = sys.argv[8] if len(sys.argv) > 8 else None
    if password == "-":
        password = os.environ["IMAP_PASSWORD"]
    if os.environ.get("IMAPLIB_DEBUG") == "1":
        imaplib.Debug = 4
    ctx = ssl.create_default_context(cafile=cafile)
    out = {"mechanism": mech}
    try:
        if mode == "implicit":
            c = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=20)
        else:
            c = imaplib.IMAP4(host, int(port), timeout=20)
            if mode == "starttls":
                c.starttls(ssl_context=ctx)
        if mech == "plain":
            typ, data = c.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
        else:
            typ, data = c.login(user, password)
        out["login"] = typ
        out["login_text"] = data[0].decode(errors="replace") if data and data[0] else ""
        out["capabilities"] = list(c.capabilities)
        typ, data = c.select("INBOX")
        out["select"] = typ
        out["exists"] = int(data[0]) if data and data[0] else 0
        if uid:
            typ, data = c.uid("FETCH", uid, "(BODY.PEEK[])")
            body = data[0][1] if data and isinstance(data[0], tuple) else b""
            out["message_b64"] = base64.b64encode(body).decode()
        c.logout()
    except imaplib.IMAP4.error as e:
        out["error"] = str(e)
    except (OSError, ssl.SSLError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

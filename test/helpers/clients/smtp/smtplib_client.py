"""Sends one message with Python's smtplib (run by smtplib.ts under /usr/bin/python3).

Usage: smtplib_client.py HOST PORT starttls|implicit CAFILE USER default|login EHLO FROM TO FILE
The password comes from $SMTP_PASSWORD. The file is read as text and handed to sendmail() as
a str, so smtplib itself turns LF into CRLF and dot-stuffs. The trace goes to stderr.
"""

import os
import smtplib
import ssl
import sys


def main():
    host, port, mode, cafile, user, way, ehlo, sender, rcpt, path = sys.argv[1:11]
    password = os.environ["SMTP_PASSWORD"]
    ctx = ssl.create_default_context(cafile=cafile)
    with open(path, encoding="ascii", newline="") as f:
        message = f.read()
    if mode == "implicit":
        s = smtplib.SMTP_SSL(host, int(port), local_hostname=ehlo, context=ctx, timeout=60)
    else:
        s = smtplib.SMTP(host, int(port), local_hostname=ehlo, timeout=60)
    s.set_debuglevel(1)
    if mode == "starttls":
        s.starttls(context=ctx)
    if way == "login":
        s.ehlo_or_helo_if_needed()
        s.user, s.password = user, password
        s.auth("LOGIN", s.auth_login)
    else:
        s.login(user, password)
    s.sendmail(sender, [rcpt], message)
    s.quit()


if __name__ == "__main__":
    if len(sys.argv) != 11:
        sys.exit(__doc__)
    main()

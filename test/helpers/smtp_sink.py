"""A recording SMTP sink for tests (run by test/helpers/smtp-sink.ts under /usr/bin/python3).

Usage: smtp_sink.py <dir>. Listens on 127.0.0.1 at a port the kernel picks and prints
"READY <port>" once accepting. For message N it writes <dir>/N.eml (the DATA content as
received, dot-unstuffed, line endings untouched) and then <dir>/N.json (envelope), renamed
into place, before answering 250: a reader that sees N.json sees the whole message.
"""

import asyncio
import json
import os
import sys

from aiosmtpd.smtp import SMTP

# Messages under test may be far larger than RFC 5322's limits: accept what the proxy must pass.
DATA_SIZE_LIMIT = 128 * 1024 * 1024
LINE_LENGTH_LIMIT = 64 * 1024 * 1024


class RecordingSMTP(SMTP):
    line_length_limit = LINE_LENGTH_LIMIT


class Recorder:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, "%06d" % self.count)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        meta = {"mailFrom": envelope.mail_from, "rcptTos": list(envelope.rcpt_tos)}
        with open(base + ".json.tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 OK: recorded"


async def main(directory):
    recorder = Recorder(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RecordingSMTP(
            recorder,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname="sink.localhost",
            loop=loop,
        ),
        host="127.0.0.1",
        port=0,
    )
    port = server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: smtp_sink.py <existing directory>")
    asyncio.run(main(sys.argv[1]))

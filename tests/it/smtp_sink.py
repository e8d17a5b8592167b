"""aiosmtpd handler for anpi's e-mail tests: saves each message as one JSON file.

Run: python -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_sink.Sink OUT_DIR [DELAY_MS]
(PYTHONPATH=tests/it). Each file holds the envelope, the subject, the Message-ID, the decoded
text part and every attachment (hex), written to a temporary name first and then renamed, so a
reader never sees half a file. With DELAY_MS, each message is saved and then acknowledged that
much later: a client killed in between has delivered a mail it never heard was accepted.
"""
import asyncio
import email
import email.policy
import json
import os
import uuid


class Sink:
    def __init__(self, out, delay_ms=0):
        self.out = out
        self.delay = delay_ms / 1000.0
        os.makedirs(out, exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) not in (1, 2):
            parser.error("smtp_sink.Sink needs the output folder (and optionally DELAY_MS)")
        return cls(args[0], int(args[1]) if len(args) == 2 else 0)

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        text = ""
        attachments = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            if part.get_filename():
                attachments.append({
                    "filename": part.get_filename(),
                    "content_type": part.get_content_type(),
                    "hex": part.get_payload(decode=True).hex(),
                })
            elif part.get_content_type() == "text/plain":
                text += part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "message_id": str(msg["message-id"]),
            "text": text,
            "attachments": attachments,
        }
        name = uuid.uuid4().hex
        tmp = os.path.join(self.out, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.rename(tmp, os.path.join(self.out, name + ".json"))
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 Message accepted for delivery"

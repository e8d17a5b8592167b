"""aiosmtpd handler for anpi's e-mail tests: saves each message as one JSON file.

Run: python -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_sink.Sink OUT_DIR  (PYTHONPATH=tests/it)
Each file holds the envelope, the subject, the decoded text part and every attachment (hex),
written to a temporary name first and then renamed, so a reader never sees half a file.
"""
import email
import email.policy
import json
import os
import uuid


class Sink:
    def __init__(self, out):
        self.out = out
        os.makedirs(out, exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("smtp_sink.Sink needs the output folder")
        return cls(args[0])

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
            "text": text,
            "attachments": attachments,
        }
        name = uuid.uuid4().hex
        tmp = os.path.join(self.out, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.rename(tmp, os.path.join(self.out, name + ".json"))
        return "250 Message accepted for delivery"

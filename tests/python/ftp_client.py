"""Python's ftplib against Cairn's FTP server (tests/files.rs runs it).

Usage: ftp_client.py HOST PORT OTHER_PORT HTTP_ADDR

Stores, lists (LIST, NLST, MLSD), reads (whole and resumed with REST), appends (APPE),
resumes an upload (REST + STOR), renames, makes and removes folders, asks SIZE and MDTM,
deletes; checks files written over FTP through another node's FTP and over HTTP, and a file
written over HTTP through FTP. Exits non-zero on the first wrong answer.
"""

import hashlib
import io
import json
import os
import sys
import urllib.request
from ftplib import FTP, error_perm

host, port, other_port, http = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def connect(p):
    ftp = FTP()
    ftp.connect(host, p, timeout=60)
    ftp.login()  # anonymous
    return ftp


def retr(ftp, path, rest=None):
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {path}", out.write, rest=rest)
    return out.getvalue()


def http_get(path):
    with urllib.request.urlopen(f"http://{http}/v1/files/{path}", timeout=60) as r:
        return r.read()


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


a = connect(port)
b = connect(other_port)
body = os.urandom(700 * 1024 + 13)

# Store and read back, here, on another node, and over HTTP.
a.mkd("/ftp")
a.cwd("/ftp")
a.storbinary("STOR data.bin", io.BytesIO(body))
check(retr(a, "data.bin") == body, "RETR returns what STOR stored")
check(retr(b, "/ftp/data.bin") == body, "another node's FTP returns it")
check(http_get("ftp/data.bin") == body, "HTTP returns it")
check(a.size("data.bin") == len(body), "SIZE")
mdtm = a.sendcmd("MDTM data.bin")
check(mdtm.startswith("213 "), f"MDTM answers a time ({mdtm})")

# Listings.
a.storbinary("STOR notes.txt", io.BytesIO(b"hello"))
a.mkd("/ftp/sub")
check(sorted(a.nlst()) == ["data.bin", "notes.txt", "sub"], f"NLST {sorted(a.nlst())}")
lines = []
a.retrlines("LIST", lines.append)
check(any(l.endswith(" data.bin") and str(len(body)) in l for l in lines), f"LIST {lines}")
check(any(l.startswith("d") and l.endswith(" sub") for l in lines), "LIST shows the folder")
facts = dict(a.mlsd())
check(facts["data.bin"]["type"] == "file" and int(facts["data.bin"]["size"]) == len(body), f"MLSD {facts}")
check(facts["sub"]["type"] == "dir", "MLSD shows the folder")

# A read resumed at an offset (REST).
check(retr(a, "data.bin", rest=300_000) == body[300_000:], "RETR after REST 300000")

# APPE appends.
a.storbinary("APPE notes.txt", io.BytesIO(b", world"))
check(retr(b, "/ftp/notes.txt") == b"hello, world", "APPE appended")

# A cut-off upload resumed: REST n + STOR keeps the first n bytes.
part = body[:400_000]
a.storbinary("STOR resumed.bin", io.BytesIO(part))
a.storbinary("STOR resumed.bin", io.BytesIO(body[250_000:]), rest=250_000)
check(retr(a, "resumed.bin") == body, "REST 250000 + STOR resumed the upload")
want = hashlib.sha256(body).hexdigest()
meta = json.loads(urllib.request.urlopen(f"http://{http}/v1/files?prefix=ftp/resumed", timeout=60).read())
check(meta["items"][0]["sha256"] == want, "the resumed file's SHA-256 over HTTP")

# Rename (RNFR/RNTO), atomically visible everywhere.
a.rename("/ftp/data.bin", "/ftp/sub/moved.bin")
check(retr(b, "/ftp/sub/moved.bin") == body, "the renamed file on another node")
try:
    retr(b, "/ftp/data.bin")
    check(False, "the old name is gone")
except error_perm as e:
    check(str(e).startswith("550"), f"the old name answers 550 ({e})")

# A file written over HTTP is read over FTP.
req = urllib.request.Request(f"http://{http}/v1/files/ftp/from-http.txt", data=b"via http", method="PUT")
urllib.request.urlopen(req, timeout=60).read()
check(retr(a, "from-http.txt") == b"via http", "a file PUT over HTTP read over FTP")

# Folders: a non-empty one is not removed; emptied, it is.
try:
    a.rmd("/ftp/sub")
    check(False, "RMD of a non-empty folder refused")
except error_perm as e:
    check(str(e).startswith("550"), f"RMD of a non-empty folder refused ({e})")
a.delete("/ftp/sub/moved.bin")
a.rmd("/ftp/sub")
check("sub" not in a.nlst("/ftp"), "RMD removed the emptied folder")
try:
    a.cwd("/nowhere")
    check(False, "CWD to a missing folder refused")
except error_perm as e:
    check(str(e).startswith("550"), f"CWD to a missing folder refused ({e})")

# Delete, and bad names.
a.delete("notes.txt")
try:
    a.delete("notes.txt")
    check(False, "deleting a missing file refused")
except error_perm as e:
    check(str(e).startswith("550"), f"deleting a missing file refused ({e})")
try:
    a.storbinary("STOR /bad\x01name", io.BytesIO(b"x"))
    check(False, "a control character in a name refused")
except error_perm as e:
    check(str(e)[:3] in ("550", "553"), f"a bad name refused ({e})")

a.quit()
b.quit()
print("ftp client: all checks passed")

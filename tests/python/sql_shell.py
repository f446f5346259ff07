"""`cairn sql` driven through a pseudo-terminal, as a person at a keyboard would use it.

Usage: sql_shell.py CAIRN_BINARY POSTGRES_URL HISTORY_FILE

Checks the prompt and the continuation prompt of a statement spanning lines, a result
drawn as a table, \\timing, \\x, \\dt and \\d, an error with its SQLSTATE and position,
Ctrl-C cancelling an endless statement (57014) with the shell still usable after it,
Ctrl-C clearing a half-typed statement, \\q, and the history file: a second session
recalls the first one's last statement with the up arrow.
"""

import sys

import pexpect

binary, url, history = sys.argv[1], sys.argv[2], sys.argv[3]
PROMPT = "cairn=> "
MORE = "cairn-> "


def start():
    shell = pexpect.spawn(
        binary,
        ["sql", url, "--history", history],
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
        env={"TERM": "xterm", "PATH": "/usr/bin:/bin", "RUST_LOG": "error"},
    )
    shell.expect_exact(PROMPT)
    return shell


shell = start()

shell.sendline("CREATE TABLE pets (id integer PRIMARY KEY, name text NOT NULL);")
shell.expect_exact("CREATE TABLE")
shell.expect_exact(PROMPT)

# One statement over three lines: the prompt says it is not finished.
shell.sendline("INSERT INTO pets VALUES")
shell.expect_exact(MORE)
shell.sendline("  (1, 'Rex'),")
shell.expect_exact(MORE)
shell.sendline("  (2, 'Tom');")
shell.expect_exact("INSERT 0 2")
shell.expect_exact(PROMPT)

shell.sendline("SELECT id, name FROM pets ORDER BY id;")
shell.expect(r" id \| name\s*\r\n----\+------\s*\r\n 1  \| Rex\s*\r\n 2  \| Tom\s*\r\n\(2 rows\)")
shell.expect_exact(PROMPT)

shell.sendline("\\timing")
shell.expect_exact("Timing is on.")
shell.expect_exact(PROMPT)
shell.sendline("SELECT count(*) AS n FROM pets;")
shell.expect(r"Time: \d+\.\d{3} ms")
shell.expect_exact(PROMPT)
shell.sendline("\\timing off")
shell.expect_exact("Timing is off.")
shell.expect_exact(PROMPT)

shell.sendline("\\x")
shell.expect_exact("Expanded display is on.")
shell.expect_exact(PROMPT)
shell.sendline("SELECT id, name FROM pets WHERE id = 2;")
shell.expect(r"-\[ RECORD 1 \]-\s*\r\nid   \| 2\s*\r\nname \| Tom")
shell.expect_exact(PROMPT)
shell.sendline("\\x off")
shell.expect_exact("Expanded display is off.")
shell.expect_exact(PROMPT)

shell.sendline("\\dt")
shell.expect(r" pets \| table")
shell.expect_exact(PROMPT)
shell.sendline("\\d pets")
shell.expect(r" name\s+\| text\s+\| not null")
shell.expect(r"PRIMARY KEY \| pets_pkey \| id")
shell.expect_exact(PROMPT)

# An error names its SQLSTATE and the session goes on.
shell.sendline("SELECT * FROM no_such_table;")
shell.expect_exact('ERROR:  42P01: relation "no_such_table" does not exist')
shell.expect_exact(PROMPT)

# Ctrl-C while a statement runs cancels it on the server; the shell stays.
shell.sendline(
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n;"
)
shell.expect(pexpect.TIMEOUT, timeout=1.5)
shell.sendintr()
shell.expect_exact("ERROR:  57014")
shell.expect_exact(PROMPT)

# Ctrl-C while typing drops the half-typed statement.
shell.sendline("SELECT 'never")
shell.expect_exact(MORE)
shell.sendintr()
shell.expect_exact(PROMPT)
shell.sendline("SELECT 40 + 2 AS answer;")
shell.expect(r" answer\s*\r\n-+\s*\r\n 42")
shell.expect_exact(PROMPT)

shell.sendline("\\q")
shell.expect(pexpect.EOF)
shell.close()
assert shell.exitstatus == 0, f"exit status {shell.exitstatus}"

# The next session recalls the last statement from the history file.
shell = start()
shell.send("\x1b[A")
shell.expect_exact("SELECT 40 + 2 AS answer;")
shell.send("\r")
shell.expect(r" 42")
shell.expect_exact(PROMPT)
shell.sendeof()
shell.expect(pexpect.EOF)
shell.close()
assert shell.exitstatus == 0, f"exit status {shell.exitstatus}"
print("sql shell: ok")

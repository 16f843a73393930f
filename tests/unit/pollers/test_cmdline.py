"""Command-line redaction for process samples: a pure function, table-tested."""

from __future__ import annotations

import pytest

from streams.pollers.cmdline import MAX_LENGTH, describe_cmdline, is_secret_name, redact_argv


@pytest.mark.parametrize("argv, expected", [
    # options with a secret-looking name: attached with '=' or as the next argument
    (["app", "--db-password=hunter2", "--api-token", "tok_live_abc", "-v"],
     ["app", "--db-password=***", "--api-token", "***", "-v"]),
    (["java", "-Djavax.net.ssl.keyStorePassword=changeit", "-Xmx1g", "Main"],
     ["java", "-Djavax.net.ssl.keyStorePassword=***", "-Xmx1g", "Main"]),
    (["app", "--client_secret", "s", "--SECRET-KEY=k", "--pass", "p", "--key=k1", "--api-key", "k2"],
     ["app", "--client_secret", "***", "--SECRET-KEY=***", "--pass", "***", "--key=***", "--api-key", "***"]),
    (["app", "-password", "x", "--auth-token=", "--db-pw", "y"], ["app", "-password", "***", "--auth-token=",
                                                                  "--db-pw", "***"]),
    # ... but an option naming where the secret is keeps its value
    (["app", "--password-file", "/run/secrets/db", "--token-path=/t", "--sasl-mechanism", "PLAIN"],
     ["app", "--password-file", "/run/secrets/db", "--token-path=/t", "--sasl-mechanism", "PLAIN"]),
    # key=value pairs anywhere: env-style, libpq strings, query strings
    (["env", "PGPASSWORD=hunter2", "psql", "host=db password=hunter2 dbname=x"],
     ["env", "PGPASSWORD=***", "psql", "host=db password=*** dbname=x"]),
    (["worker", "token=abc", "mode=fast"], ["worker", "token=***", "mode=fast"]),
    (["curl", "https://api.example/v1?sig=abc&x=1&access_token=t"],
     ["curl", "https://api.example/v1?sig=***&x=1&access_token=***"]),
    (["app", "--url=https://h/p?token=abc"], ["app", "--url=https://h/p?token=***"]),
    # URLs with userinfo
    (["app", "postgres://bot:s3cr3t@db:5432/x", "--broker=amqp://u:p@ss@mq/"],
     ["app", "postgres://bot:***@db:5432/x", "--broker=amqp://u:***@mq/"]),
    (["git", "clone", "https://ghp_tok@github.com/o/r"], ["git", "clone", "https://***@github.com/o/r"]),
    # headers
    (["curl", "-H", "Authorization: Bearer abc.def", "-H", "X-Api-Key: k", "-H", "Accept: text/plain"],
     ["curl", "-H", "Authorization: ***", "-H", "X-Api-Key: ***", "-H", "Accept: text/plain"]),
    (["curl", "--header=Authorization: Basic dXNlcjpw"], ["curl", "--header=Authorization: ***"]),
    # per program
    (["/usr/bin/mysql", "-uroot", "-phunter2", "-p", "mydb"], ["/usr/bin/mysql", "-uroot", "-p***", "-p", "mydb"]),
    (["ssh", "-p", "2222", "host"], ["ssh", "-p", "2222", "host"]),  # -p is a port elsewhere
    (["sshpass", "-p", "hunter2", "ssh", "h"], ["sshpass", "-p", "***", "ssh", "h"]),
    (["sshpass", "-phunter2", "ssh", "h"], ["sshpass", "-p***", "ssh", "h"]),
    (["redis-cli", "-a", "hunter2", "ping"], ["redis-cli", "-a", "***", "ping"]),
    (["curl", "-u", "bot:hunter2", "--proxy-user=p:q", "-Ux:y", "https://h"],
     ["curl", "-u", "bot:***", "--proxy-user=p:***", "-Ux:***", "https://h"]),
    # nothing secret: unchanged
    (["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"],
     ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"]),
    (["zkServer", "--session-timeout", "30", "host:2181"], ["zkServer", "--session-timeout", "30", "host:2181"]),
    ([], []),
])
def test_redact_argv(argv, expected):
    before = list(argv)
    assert redact_argv(argv) == expected
    assert argv == before  # pure


@pytest.mark.parametrize("name, secret", [
    ("--db-password", True), ("PGPASSWORD", True), ("api_key", True), ("X-Auth-Token", True),
    ("--adminpass", True), ("--passphrase", True), ("--password-file", False), ("--passive", False),
    ("--bypass-cache", True), ("--port", False), ("--host", False), ("--session-timeout", False), ("", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_name_mode_never_shows_arguments_and_full_mode_is_redacted_then_cut():
    argv = ["/usr/bin/python3", "worker.py", "--db-password=hunter2"]
    assert describe_cmdline("python3", argv, "name") == "python3"
    assert describe_cmdline("python3", argv, "full") == "/usr/bin/python3 worker.py --db-password=***"
    assert describe_cmdline("kthreadd", [], "full") == "kthreadd"
    long = ["app", *(["-v"] * 200), "--token=" + "t" * 300]
    out = describe_cmdline("app", long, "full")
    assert len(out) == MAX_LENGTH and "ttt" not in out
    # the secret sits where the cut falls: redaction first, so no part of it survives
    cut = ["app", "x" * (MAX_LENGTH - 20), "--password=" + "s" * 50]
    assert "sss" not in describe_cmdline("app", cut, "full")

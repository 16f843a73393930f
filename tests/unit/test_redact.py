import pytest

from streams.redact import redact_url


@pytest.mark.parametrize("url, shown", [
    ("https://bot:s3cr3t@hooks.example:8443/alarm?sig=abc#frag", "https://***@hooks.example:8443/alarm?***"),
    ("https://token@hooks.example/x", "https://***@hooks.example/x"),
    ("http://hooks.example/x?streams-ssl-verify=0", "http://hooks.example/x?***"),
    ("http://[fd00::1]:80/x", "http://[fd00::1]:80/x"),
    ("log://warning", "log://warning"),
    ("not a url ?token=1", "not a url ***"),
    ("user:pw@host", "user:pw***"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert "s3cr3t" not in redact_url(url) and "sig=" not in redact_url(url)

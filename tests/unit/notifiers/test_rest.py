import ipaddress

import pytest

from streams.config import NotifierSettings
from streams.notifiers.base import NotificationError
from streams.notifiers.rest import HostPolicy


def test_metadata_and_link_local_are_denied_by_default():
    policy = HostPolicy(NotifierSettings())
    for host in ("169.254.169.254", "fd00:ec2::254", "169.254.1.1"):
        with pytest.raises(NotificationError, match="denied_networks") as err:
            policy.check_host(host)
        assert not err.value.retryable
    policy.check_host("10.1.2.3")
    policy.check_host("hooks.example")
    with pytest.raises(NotificationError):  # an IPv4-mapped IPv6 address is the same address
        policy.check_address(ipaddress.ip_address("::ffff:169.254.169.254"))


def test_allowed_hosts_by_name_wildcard_and_network():
    policy = HostPolicy(NotifierSettings(allowed_hosts=["hooks.example", "*.ops.example", "10.0.0.0/8"]))
    for ok in ("hooks.example", "HOOKS.example", "a.ops.example", "10.9.9.9"):
        policy.check_host(ok)
    for bad in ("evil.example", "ops.example", "192.168.1.1"):
        with pytest.raises(NotificationError, match="allowed_hosts"):
            policy.check_host(bad)

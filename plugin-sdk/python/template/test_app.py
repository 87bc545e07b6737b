"""Native tests of {{name}}, with the SDK's mock host: ./test.sh"""

import pytest

from ovsb_plugin import ConfigError, ok
from ovsb_plugin.testing import Harness, MockHost

from app import HelloPlugin


def test_hello_world_is_answered_by_the_plugin():
    host = MockHost.fresh()
    harness = Harness(HelloPlugin, {"greeting": "hi"})
    assert harness.call("hello_world") == ok("hi from test-instance")
    assert host.upstream_calls == [], "answered without the node"


def test_other_calls_go_to_the_node_untouched():
    host = MockHost.fresh()
    host.set_upstream_results({"eth_chainId": "0x1"})
    harness = Harness(HelloPlugin, "null")
    assert harness.call("eth_chainId") == ok("0x1")
    assert [call.method for call in host.upstream_calls] == ["eth_chainId"]


def test_only_hello_world_is_selected():
    host = MockHost.fresh()
    Harness(HelloPlugin)
    assert host.selected_methods == [(["hello_world"], False)]


def test_a_bad_configuration_says_what_is_wrong():
    MockHost.fresh()
    with pytest.raises(ConfigError, match="unknown field `greting`, expected `greeting`"):
        Harness(HelloPlugin, {"greting": "hi"})
    with pytest.raises(ConfigError, match="greeting must be a string, got a number"):
        Harness(HelloPlugin, {"greeting": 1})
    with pytest.raises(ConfigError, match="greeting must not be empty"):
        Harness(HelloPlugin, {"greeting": ""})

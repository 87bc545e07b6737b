"""Native tests of python-plugin (per-binding method quotas), with the SDK's mock host: ./test.sh"""

import pytest

from ovsb_plugin import LIMIT_EXCEEDED, ConfigError, Hooks, Level, err, ok
from ovsb_plugin.testing import Harness, MockHost

from app import QuotaPlugin

CONFIG = {"quotas": {"eth_call": 3, "eth_getLogs": 1}, "window_ms": 60000}


@pytest.fixture
def host():
    host = MockHost.fresh()
    host.set_now_ms(28_333_333 * 60_000 + 10_000)  # 10 s into the 60 s window 28333333
    host.set_upstream_results({"eth_call": "0x", "eth_getLogs": [], "eth_blockNumber": "0x10", "eth_chainId": "0x1"})
    return host


def exceeded(limit, method, retry_after_ms):
    return err(
        LIMIT_EXCEEDED,
        f"quota exceeded: at most {limit} {method} calls per 60 s for this binding",
        {"reason": "quota", "limit": limit, "retry_after_ms": retry_after_ms},
    )


def test_calls_within_the_quota_reach_the_node_and_the_next_is_refused(host):
    harness = Harness(QuotaPlugin, CONFIG)
    for _ in range(3):
        assert harness.call("eth_call", [{}, "latest"]) == ok("0x")
    assert harness.call("eth_call", [{}, "latest"]) == exceeded(3, "eth_call", 50_000)
    assert len(host.upstream_calls) == 3
    assert harness.call("eth_getLogs", [{}]) == ok([])
    assert harness.call("eth_getLogs", [{}]) == exceeded(1, "eth_getLogs", 50_000)


def test_the_quota_is_per_binding_and_anonymous_calls_share_one(host):
    harness = Harness(QuotaPlugin, CONFIG)
    assert harness.call("eth_getLogs") == ok([])
    assert harness.call("eth_getLogs").error.code == LIMIT_EXCEEDED
    host.set_context(binding_id="other-binding")
    assert harness.call("eth_getLogs") == ok([])
    host.set_context(binding_id=None)
    assert harness.call("eth_getLogs") == ok([])
    assert harness.call("eth_getLogs").error.code == LIMIT_EXCEEDED
    assert set(host.kv_dump()) == {
        "quota:test-binding:eth_getLogs:28333333",
        "quota:other-binding:eth_getLogs:28333333",
        "quota:anonymous:eth_getLogs:28333333",
    }


def test_a_new_window_starts_a_new_count_and_old_counters_expire(host):
    harness = Harness(QuotaPlugin, CONFIG)
    assert harness.call("eth_getLogs") == ok([])
    host.advance_ms(49_999)
    assert harness.call("eth_getLogs") == exceeded(1, "eth_getLogs", 1)
    host.advance_ms(1)
    assert harness.call("eth_getLogs") == ok([])
    host.advance_ms(30_000)
    assert list(host.kv_dump()) == ["quota:test-binding:eth_getLogs:28333334"], "the first window's counter expired"


def test_the_first_refusal_in_a_window_is_logged_once(host):
    harness = Harness(QuotaPlugin, CONFIG)
    for _ in range(4):
        harness.call("eth_getLogs")
    assert host.logs == [
        (Level.INFO, "binding test-binding reached its quota of 1 eth_getLogs calls per 60 s (next window in 50000 ms)")
    ]
    host.advance_ms(60_000)
    harness.call("eth_getLogs")
    harness.call("eth_getLogs")
    assert len(host.logs) == 2


def test_quota_status_reports_the_callers_use_and_the_block(host):
    harness = Harness(QuotaPlugin, CONFIG)
    harness.call("eth_call")
    for _ in range(3):
        harness.call("eth_getLogs")
    assert harness.call("quota_status") == ok({"eth_call": 1, "eth_getLogs": 1, "block": "0x10"})
    assert host.upstream_calls[-1].method == "eth_blockNumber"
    host.set_context(binding_id="other-binding")
    assert harness.call("quota_status").result == {"eth_call": 0, "eth_getLogs": 0, "block": "0x10"}


def test_quota_status_passes_on_the_nodes_error(host):
    host.set_upstream(lambda call: err(-32000, "node down"))
    assert Harness(QuotaPlugin, CONFIG).call("quota_status") == err(-32000, "node down")


def test_only_the_quotad_methods_and_quota_status_are_selected(host):
    harness = Harness(QuotaPlugin, CONFIG)
    assert host.selected_methods == [(["eth_call", "eth_getLogs", "quota_status"], False)]
    assert harness.hooks == Hooks.ON_CALL
    for _ in range(10):
        assert harness.call("eth_chainId") == ok("0x1")
    assert host.kv_dump() == {}


@pytest.mark.parametrize(
    "config, message",
    [
        ("null", 'expected the quotas, like {"quotas": {"eth_call": 100, "eth_getLogs": 10}, "window_ms": 60000}'),
        ({"quota": {}}, "unknown field `quota`, expected `quotas` or `window_ms`"),
        ({"window_ms": 60000}, "missing field `quotas`"),
        ({"quotas": []}, "quotas must be an object, got an array"),
        ({"quotas": {}}, "quotas must name at least one method"),
        ({"quotas": {"eth_call": "100"}}, "quotas.eth_call must be an integer, got a string"),
        ({"quotas": {"eth_call": 0}}, "quotas.eth_call must be at least 1, got 0"),
        ({"quotas": {"eth_call": 1.5}}, "quotas.eth_call must be an integer, got 1.5"),
        ({"quotas": {"eth_*": 1}}, "'eth_*' is a pattern; quotas are per exact method name"),
        ({"quotas": {"quota_status": 1}}, "quota_status is this plugin's own method"),
        ({"quotas": {"eth_call": 1}, "window_ms": "60s"}, "window_ms must be an integer, got a string"),
        ({"quotas": {"eth_call": 1}, "window_ms": 10}, "window_ms must be at least 1000, got 10"),
        ("[1]", "expected an object like"),
    ],
)
def test_bad_configurations_say_what_is_wrong(host, config, message):
    with pytest.raises(ConfigError) as raised:
        Harness(QuotaPlugin, config)
    assert str(raised.value).startswith("invalid configuration: ")
    assert message in str(raised.value)


def test_a_window_that_is_not_whole_seconds_is_shown_in_ms(host):
    harness = Harness(QuotaPlugin, {"quotas": {"eth_call": 1}, "window_ms": 1500})
    harness.call("eth_call")
    assert harness.call("eth_call").error.message == "quota exceeded: at most 1 eth_call calls per 1500 ms for this binding"

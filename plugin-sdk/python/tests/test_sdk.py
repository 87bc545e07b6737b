"""Tests of the SDK against its mock host."""

from dataclasses import dataclass, field

import pytest

import ovsb_plugin
from ovsb_plugin import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LIMIT_EXCEEDED,
    Call,
    Config,
    ConfigError,
    Hooks,
    KvError,
    Level,
    Methods,
    Plugin,
    RpcError,
    err,
    export,
    glob_matches,
    kv,
    log,
    now_ms,
    ok,
    ok_raw,
    upstream,
    upstream_raw,
)
from ovsb_plugin.testing import Harness, MockHost, context


class Defaults(Plugin):
    pass


def test_codes_are_the_json_rpc_ones():
    assert (ovsb_plugin.PARSE_ERROR, ovsb_plugin.INVALID_REQUEST, ovsb_plugin.METHOD_NOT_FOUND) == (-32700, -32600, -32601)
    assert (ovsb_plugin.INVALID_PARAMS, ovsb_plugin.INTERNAL_ERROR, ovsb_plugin.LIMIT_EXCEEDED) == (-32602, -32603, -32005)


# --- pass-through defaults ----------------------------------------------------------------------


def test_the_default_hooks_pass_through_and_decline_themselves(host):
    host.set_upstream(lambda call: ok_raw("1"))
    harness = Harness(Defaults)
    assert harness.hooks == Hooks.ON_CALL | Hooks.ON_RESULT
    assert host.declined_hooks == Hooks.NONE
    assert harness.call("m", [1]) == ok_raw("1")
    assert host.declined_hooks == Hooks.ON_CALL | Hooks.ON_RESULT
    assert host.upstream_calls == [Call("m", [1])]
    assert host.selected_methods == [], "no select-methods call: every call is seen"


def test_a_plugin_overriding_on_call_only_declines_on_result(host):
    class Upper(Plugin):
        def on_call(self, ctx, call):
            call.method = call.method.upper()
            return call

    host.set_upstream(lambda call: call.method)
    assert Harness(Upper).call("abc") == ok("ABC")
    assert host.declined_hooks == Hooks.ON_RESULT


def test_the_default_configure_takes_no_configuration():
    Harness(Defaults, "null")
    Harness(Defaults, "{}")
    with pytest.raises(ConfigError, match=r"^invalid configuration: unknown field `x`, expected no fields$"):
        Harness(Defaults, '{"x": 1}')


# --- method selection ---------------------------------------------------------------------------


def test_globs_match_the_whole_name_like_the_host():
    assert glob_matches("eth_*", "eth_call") and glob_matches("eth_*", "eth_")
    assert not glob_matches("eth_*", "net_version")
    assert glob_matches("eth_get?lock*", "eth_getBlockByNumber")
    assert not glob_matches("eth_get?lock*", "eth_getBalance")
    assert glob_matches("*Number", "eth_blockNumber") and not glob_matches("*Number", "eth_blockNumbers")
    assert glob_matches("a*b*c", "axxbyybzc") and not glob_matches("a*b*c", "axxbyyb")
    assert not glob_matches("exact", "Exact") and not glob_matches("exact", "exactly")
    assert glob_matches("*", "") and not glob_matches("?", "")
    assert glob_matches("eth_?", "eth_é") and not glob_matches("eth_??", "eth_é")


def test_methods_matching_not_matching_and_or():
    methods = Methods.matching("eth_chainId", "eth_getBlockBy*")
    assert methods.sees("eth_getBlockByHash") and not methods.sees("eth_blockNumber")
    methods = Methods.not_matching(["eth_*"]).or_(Methods.matching("debug_*"))
    assert methods.sees("debug_traceCall") and methods.sees("net_version") and not methods.sees("eth_call")
    assert (Methods.matching("a") | Methods.all()) == Methods.all()
    assert Methods.all().sees("anything")
    assert not Methods.matching().sees("anything")


def test_selected_methods_are_declared_at_configure_and_others_pass_the_plugin_by(host):
    class Refuser(Plugin):
        def methods(self):
            return Methods.not_matching("eth_*").or_(Methods.matching("eth_sign*"))

        def on_call(self, ctx, call):
            raise RpcError(-32601, f"{call.method} is disabled")

    host.set_upstream(lambda call: "node")
    harness = Harness(Refuser)
    assert host.selected_methods == [(["eth_*"], True), (["eth_sign*"], False)]
    assert harness.call("eth_call") == ok("node")
    assert harness.call("eth_signTypedData").error == RpcError(-32601, "eth_signTypedData is disabled")
    assert harness.call("debug_x").error.code == -32601
    assert [c.method for c in host.upstream_calls] == ["eth_call"]


# --- calls and outcomes -------------------------------------------------------------------------


def test_call_params_are_parsed_lazily_and_set_params_rewrites_them():
    call = Call("eth_getBalance", params_raw='["0xabc", "latest"]')
    assert call.params_raw == '["0xabc", "latest"]'
    assert call.params == ["0xabc", "latest"]
    call.set_params(["0xabc", "0x10"])
    assert call.params_raw == '["0xabc","0x10"]' and call.params == ["0xabc", "0x10"]
    call.set_params(None)
    assert call.params_raw is None and call.params is None
    assert Call("eth_chainId").params is None


def test_malformed_params_are_invalid_params_naming_the_method(host):
    class Reader(Plugin):
        def on_call(self, ctx, call):
            return ok(len(call.params))

    outcome = Harness(Reader).call_raw("eth_getBalance", "[1,")
    assert outcome.error.code == INVALID_PARAMS
    assert outcome.error.message.startswith("invalid params for eth_getBalance: ")


def test_outcome_helpers():
    assert ok({"a": 1}).result_raw == '{"a":1}' and ok({"a": 1}).result == {"a": 1}
    assert ok_raw("[1, 2]").result == [1, 2]
    e = err(LIMIT_EXCEEDED, "slow down", {"retry_after_ms": 5})
    assert not e.is_ok and e.error.data == {"retry_after_ms": 5} and e.error.data_raw == '{"retry_after_ms":5}'
    with pytest.raises(RpcError) as raised:
        e.result
    assert raised.value.code == LIMIT_EXCEEDED
    assert err(RpcError(1, "x")) == err(1, "x")


# --- errors and exceptions ----------------------------------------------------------------------


class Failing(Plugin):
    def on_call(self, ctx, call):
        if call.method == "rpc_error":
            raise RpcError(LIMIT_EXCEEDED, "too many", {"retry_after_ms": 10})
        if call.method == "crash":
            raise ValueError("boom")
        if call.method == "none":
            return None
        return call

    def on_result(self, ctx, call, outcome):
        if call.method == "crash_later":
            {}["missing"]
        return outcome


def test_rpc_error_raised_from_a_hook_answers_with_it(host):
    outcome = Harness(Failing).call("rpc_error")
    assert outcome == err(LIMIT_EXCEEDED, "too many", {"retry_after_ms": 10})
    assert host.upstream_calls == [] and host.logs == []


def test_other_exceptions_become_internal_errors_and_are_logged(host):
    harness = Harness(Failing)
    outcome = harness.call("crash")
    assert outcome.error == RpcError(INTERNAL_ERROR, "plugin Failing failed in on_call: ValueError: boom")
    [(level, line)] = host.logs
    assert level == Level.ERROR and line.startswith("Failing.on_call raised ValueError: boom\n")
    assert "Traceback" in line
    host.set_upstream(lambda call: 1)
    outcome = harness.call("crash_later")
    assert outcome.error == RpcError(INTERNAL_ERROR, "plugin Failing failed in on_result: KeyError: 'missing'")
    assert harness.call("none").error.message.startswith("plugin Failing failed in on_call: TypeError: on_call returned NoneType")


def test_an_error_from_upstream_escaping_a_hook_answers_with_it(host):
    class Proxy(Plugin):
        def on_call(self, ctx, call):
            return ok({"block": upstream("eth_blockNumber")})

    host.set_upstream(lambda call: err(-32000, "node down"))
    assert Harness(Proxy).call("x") == err(-32000, "node down")


def test_a_configure_that_raises_is_a_config_error_naming_the_plugin(host):
    class Broken(Plugin):
        @classmethod
        def configure(cls, config):
            raise RuntimeError("no")

    with pytest.raises(ConfigError, match=r"^plugin Broken failed to configure: RuntimeError: no$"):
        Harness(Broken)
    assert host.log_lines(Level.ERROR)[0].startswith("Broken.configure raised RuntimeError: no")


# --- configuration ------------------------------------------------------------------------------


@dataclass
class Settings:
    greeting: str = "hello"
    requests_per_second: float = 10
    burst: int = 1
    allow: list[str] = field(default_factory=list)
    quotas: dict[str, int] = field(default_factory=dict)
    note: "str | None" = None


def parse_error(text):
    with pytest.raises(ConfigError) as raised:
        Config(text).parse(Settings)
    return str(raised.value)


def test_config_parse_fills_defaults_and_checks_types():
    assert Config("null").parse(Settings) == Settings()
    s = Config('{"greeting": "hi", "requests_per_second": 2.5, "allow": ["a"], "quotas": {"x": 3}, "burst": 2.0}').parse(Settings)
    assert (s.greeting, s.requests_per_second, s.allow, s.quotas, s.burst) == ("hi", 2.5, ["a"], {"x": 3}, 2)
    assert parse_error('{"greting": "hi"}') == (
        "invalid configuration: unknown field `greting`, expected `greeting`, `requests_per_second`, "
        "`burst`, `allow`, `quotas` or `note`"
    )
    assert parse_error('{"requests_per_second": "10"}') == "invalid configuration: requests_per_second must be a number, got a string"
    assert parse_error('{"burst": 1.5}') == "invalid configuration: burst must be an integer, got a number"
    assert parse_error('{"allow": ["a", 1]}') == "invalid configuration: allow[1] must be a string, got a number"
    assert parse_error('{"quotas": {"eth_call": true}}') == "invalid configuration: quotas.eth_call must be an integer, got a boolean"
    assert parse_error("[1]") == "invalid configuration: expected an object, got an array"
    assert parse_error("{").startswith("invalid configuration: not valid JSON: ")


def test_config_parse_reports_missing_fields():
    @dataclass
    class Required:
        greeting: str

    with pytest.raises(ConfigError, match="^invalid configuration: missing field `greeting`$"):
        Config("{}").parse(Required)


def test_config_object_and_field_getters():
    fields = Config('{"greeting": "hi", "n": 3, "rps": "x", "q": {"a": 1}}').object('{"greeting": "hi"}')
    assert fields.string("greeting") == "hi" and fields.integer("n", minimum=1) == 3
    assert fields.string("absent", "default") == "default"
    with pytest.raises(ConfigError, match="^invalid configuration: rps must be a number, got a string$"):
        fields.number("rps")
    with pytest.raises(ConfigError, match="^invalid configuration: n must be at least 5, got 3$"):
        fields.integer("n", minimum=5)
    with pytest.raises(ConfigError, match="^invalid configuration: q.a must be a string, got a number$"):
        fields.object("q").string("a")
    with pytest.raises(ConfigError, match="^invalid configuration: missing field `x`$"):
        fields.string("x")
    with pytest.raises(ConfigError, match=r"^invalid configuration: unknown field `x`, expected `a` or `b`$"):
        Config('{"x": 1}').object(fields=["a", "b"])
    with pytest.raises(ConfigError, match=r'^invalid configuration: expected an object like \{"a": 1\}, got an array$'):
        Config("[1]").object('{"a": 1}')
    assert Config("null").object() == {}


# --- host functions -----------------------------------------------------------------------------


def test_kv_entries_expire_when_the_mock_clock_passes_their_ttl(host):
    kv.set("k", b"v", ttl_ms=100)
    host.advance_ms(99)
    assert kv.get("k") == b"v"
    host.advance_ms(1)
    assert kv.get("k") is None


def test_kv_incr_counts_from_zero_keeps_its_first_ttl_and_refuses_non_integers(host):
    assert kv.incr("n", 5, ttl_ms=100) == 5
    host.advance_ms(60)
    assert kv.incr("n", -2, ttl_ms=1000) == 3, "the ttl applies only when the key is created"
    assert kv.get("n") == b"3" and kv.get_text("n") == "3" and kv.get_int("n") == 3
    host.advance_ms(40)
    assert kv.get("n") is None and kv.get_int("n") == 0
    assert kv.incr("n") == 1
    kv.set("s", "x")
    with pytest.raises(KvError, match="not an integer"):
        kv.incr("s")
    kv.set("max", str(2**63 - 1))
    with pytest.raises(KvError, match="overflow"):
        kv.incr("max")


def test_compare_and_swap_only_swaps_on_the_expected_value(host):
    assert kv.compare_and_swap("c", None, b"1")
    assert not kv.compare_and_swap("c", None, b"2")
    assert kv.compare_and_swap("c", b"1", "2", ttl_ms=10)
    assert kv.get("c") == b"2"
    host.advance_ms(10)
    assert kv.compare_and_swap("c", None, b"3"), "an expired key counts as absent"
    assert kv.delete("c") and not kv.delete("c")
    assert host.kv_dump() == {}


def test_upstream_without_a_script_is_an_error_and_is_recorded(host):
    outcome = upstream_raw(Call("eth_chainId"))
    assert outcome.error.code == INTERNAL_ERROR
    with pytest.raises(RpcError):
        upstream("eth_chainId")
    assert [c.method for c in host.upstream_calls] == ["eth_chainId", "eth_chainId"]


def test_upstream_results_by_method(host):
    host.set_upstream_results({"eth_blockNumber": "0x10"})
    assert upstream("eth_blockNumber") == "0x10"
    assert upstream_raw("eth_getLogs", [{}]).error.code == -32601
    assert host.upstream_calls[1] == Call("eth_getLogs", [{}])


def test_log_now_and_context(host):
    class Watcher(Plugin):
        def on_call(self, ctx, call):
            log.trace("t")
            log.debug("d")
            log.info(f"{ctx.instance_id} {ctx.binding_id} {ctx.plan} {ctx.request_id}")
            log.warn("w")
            log.error("e")
            return ok(now_ms())

    host.set_now_ms(42)
    host.set_context(binding_id=None)
    assert Harness(Watcher).call("x") == ok(42)
    assert host.logs == [
        (Level.TRACE, "t"),
        (Level.DEBUG, "d"),
        (Level.INFO, "test-instance None test-plan test-request"),
        (Level.WARN, "w"),
        (Level.ERROR, "e"),
    ]
    host.set_context(context(instance_id="other"))
    assert host.call_context().instance_id == "other"


def test_export_builds_the_world_class_without_the_bindings():
    world = export(Defaults)
    assert world.__name__ == "WitWorld" and world.runtime.plugin_cls is Defaults
    with pytest.raises(TypeError):
        export(object)

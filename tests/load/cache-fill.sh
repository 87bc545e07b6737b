#!/usr/bin/env bash
# 100,000 distinct reads through one binding of the first-party chain (method-filter, rate-limit
# with a limit out of reach, cache), in batches of 1000 eth_getBalance at an old block, against a
# real anvil, with the default key-value share (25,000 entries per plugin): the cache fills its
# share four times over and evicts its oldest answers; every call of the reading binding, and a
# call of another binding after each batch, must be served (issue #29). Prints the time taken.
#
#   tests/load/cache-fill.sh        (a debug build; bounded: the test is killed after 15 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OVSB_TEST_POSTGRES_URL=${OVSB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
timeout 900 cargo test -p ovsb --test all first_party_plugins::state::a_hundred_thousand_distinct_reads_leave_every_binding_served \
    -- --ignored --nocapture --exact 2>&1 | grep -E "distinct reads|test result|panicked|FAILED"

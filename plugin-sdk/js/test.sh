#!/bin/sh
# Runs the SDK's tests (node --test). OVSB_COMPONENT_TESTS=1 also builds a component and runs it.
set -e
cd "$(dirname "$0")"
# (no setup needed: the tests run natively)
exec node --test test/

#!/bin/sh
# Runs the SDK's tests with node --test, natively against the mock host.
# OVSB_COMPONENT_TESTS=1 also builds a probe plugin into a component and runs it (needs the
# toolchain: ./setup.sh, run here then).
set -e
cd "$(dirname "$0")"
if [ "$OVSB_COMPONENT_TESTS" = 1 ]; then ./setup.sh; fi
exec node --test test/*.test.js

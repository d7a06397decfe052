#!/usr/bin/env bash
# Installs what the tests need when it is missing (Deno 2.9.3 and Node 24 / Bun 1.4 from npm, etcd
# and openssl from Debian), runs the whole suite (deno task test) and prints "N passed, N failed".
# The same script CI runs.
exec "$(dirname "$0")/.ci/run" "$@"

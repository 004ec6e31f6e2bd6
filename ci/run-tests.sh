#!/usr/bin/env bash
# Runs a test command (ci/test.sh: `cargo test --workspace ...`), shows its outline (results,
# skips, failures) and the summary, and exits with the command's own exit status: a failing test,
# a crashed test binary or a build error fails the run whatever the log says.
#   ci/run-tests.sh LOGFILE COMMAND [ARGS...]
# The full output goes to LOGFILE (printed in full when the command fails). Last lines:
#   backend suites skipped (no device): N     (lines starting with `skipped:`)
#   tests: N passed, 0 failed                 (sum of the `test result: ok. N passed` lines)
set -uo pipefail
log=${1:?usage: ci/run-tests.sh LOGFILE COMMAND [ARGS...]}
shift
"$@" > "$log" 2>&1
status=$?
grep -E '^(test result|running|skipped:|test .* FAILED|failures:|---- )' "$log"
if [ "$status" -ne 0 ]; then
  cat "$log"
  echo "tests failed: \`$*\` exited with status $status"
  exit "$status"
fi
passed=$(grep -oE '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
skipped=$(grep -c '^skipped:' "$log")
echo "backend suites skipped (no device): $skipped"
echo "tests: $passed passed, 0 failed"

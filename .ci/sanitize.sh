#!/usr/bin/env bash
# Sanitizer step: build the C++ extension with -fsanitize=address,undefined (setup.py's
# LLMKERN_SANITIZE=1) in a throw-away copy of the tree, so the normal build is untouched, and run
# the CPU-kernel tests (every cpu-backend test and every ISA path) under it. Any ASan or UBSan
# report aborts the test process and fails this step.
#
#   bash .ci/sanitize.sh [extra pytest args]      (LLMKERN_SANITIZE_KEEP=1 keeps the copy)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/llmkern-sanitize.XXXXXX")
if [ -z "${LLMKERN_SANITIZE_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; fi
# Tracked and untracked-but-not-ignored files: the tree as it would be committed, no old builds
# (tar keeps symbolic links as links).
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$work"
cd "$work"

echo "--- building llmkern._C with ASan + UBSan in $work"
# -O0 (LLMKERN_DEBUG): compiles several times faster than -O3 and hides no UB from the sanitizers.
LLMKERN_SANITIZE=1 LLMKERN_DEBUG=1 LLMKERN_NO_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" \
  python setup.py build_ext --inplace >build.log 2>&1 || { tail -50 build.log; exit 1; }
echo "    built in $(( $(date +%s) - t0 ))s"

libasan=$(gcc -print-file-name=libasan.so)
libstdcxx=$(gcc -print-file-name=libstdc++.so)
[ -f "$libasan" ] || { echo "libasan.so not found (gcc -print-file-name gave $libasan)"; exit 1; }
# Python and torch are not instrumented: leaks at exit are theirs (noise); every other report
# aborts. The extension was built with -fno-sanitize-recover=all, so UBSan reports abort too.
# libstdc++ is preloaded too: python does not link it, and ASan must find the real __cxa_throw
# at start-up or the first C++ exception (a TORCH_CHECK) aborts.
export LD_PRELOAD="$libasan $libstdcxx"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"

python - <<'PY'
import llmkern, os
from llmkern import _ext
assert llmkern.__file__.startswith(os.getcwd()), f"imported {llmkern.__file__}, not the sanitized copy"
assert _ext.available(), f"sanitized llmkern._C failed to load: {_ext.load_error}"
print("    sanitized extension loaded; detected ISA", _ext._C.detected_isa())
PY

# The CPU kernel tests: tests/cpu/ (-k matches the folder's name), the cpu backend's cases
# elsewhere (property tests included: they draw an ISA path per example) and the
# ISA-parametrised cases (cpu_isa fixture ids); fewer examples, bounded time.
echo "--- CPU kernel tests under ASan + UBSan"
export LLMKERN_PROPERTY_EXAMPLES="${LLMKERN_PROPERTY_EXAMPLES:-25}"
log="$work/sanitize-pytest.log"
set +e
python -m pytest tests -q -p no:cacheprovider -m "not gpu and not slow" \
  -k "cpu or scalar or avx2 or avx512 or amx" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if grep -qE "AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer" "$log"; then
  echo "sanitizer report found: failing"
  exit 1
fi
if [ "$rc" -eq 5 ]; then
  echo "no CPU kernel test collected: failing"
  exit 1
fi
echo "--- sanitizer step: pytest exit $rc, $(( $(date +%s) - t0 ))s"
exit "$rc"

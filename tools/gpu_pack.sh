#!/usr/bin/env bash
# Packs what a lent GPU machine needs from here (it has no cargo): the release `xlsr` and the
# GPU test binaries, stripped, in gpu-pack.tgz (ignored by git; about 20 MB, so it travels in
# the device call's 64 MiB with the tree and .gl). gpu_check.sh unpacks it when it is there.
#   TESTS='coop fp16 attention model kernels' the test targets to pack
# Device call: carry ['.gl', 'gpu-pack.tgz'], command `bash tools/gpu_check.sh` (plus its knobs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
dir=$(mktemp -d)
mkdir -p "$dir/tests"
strip -o "$dir/xlsr" target/release/xlsr
for t in ${TESTS:-coop fp16 attention model kernels}; do
  # The executable cargo builds for this test target (the newest, whatever its hash).
  exe=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("kind") == ["test"]:
        print(m["executable"])')
  [ -x "$exe" ] || { echo "gpu_pack: no test binary for $t" >&2; exit 1; }
  strip -o "$dir/tests/$t" "$exe"
done
tar czf gpu-pack.tgz -C "$dir" .
rm -rf "$dir"
echo "gpu-pack.tgz: $(du -h gpu-pack.tgz | cut -f1) ($(git rev-parse --short HEAD)$(git diff --quiet || echo ', uncommitted changes'))"

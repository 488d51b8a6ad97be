#!/usr/bin/env bash
# Run the article's benchmark (bench/article.py) over a few worker settings, each against a
# fresh private redis-server, and write bench/out/article-<label>.json per configuration.
# Usage: bench/article_sweep.sh [N]   (default N=10000; results feed bench/RESULTS.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-10000}
cd "$root"
run() {  # label prefetch worker-args...
    local label=$1 prefetch=$2
    shift 2
    local workers=()
    for spec in "$@"; do workers+=(--worker "$spec"); done
    echo "== $label (prefetch $prefetch): $*"
    WORKLOAD_PREFETCH_MULTIPLIER=$prefetch .venv/bin/python bench/article.py -n "$n" \
        --redis-server "${workers[@]}" --label "$label" --out "bench/out/article-$label.json" \
        2>/dev/null | tail -1
}
run prefork-c2-p1 1 "-P prefork -c 2"
run prefork-c2-p16 16 "-P prefork -c 2"
run prefork-c4-p4 4 "-P prefork -c 4"
run threads-c8-p1 1 "-P threads -c 8"
run solo-x2-p1 1 "-P solo" "-P solo"
run solo-x2-p32 32 "-P solo" "-P solo"

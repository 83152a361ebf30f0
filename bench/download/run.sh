#!/usr/bin/env bash
# Download throughput from the local Hub test server on loopback: `qlora download` vs `curl`
# from the same server in the same run, for one large file (1 GB of random bytes, generated
# here) and for a many-file repository (200 files of 1 MB); and `qlora download --workers 1`
# (one file at a time, as before) vs the default 4 and 8 workers, on the many-file repository
# with no added latency and with LATENCY_MS before each file's first byte (a second server
# started with --latency-ms: a far Hub or CDN). Prints a Markdown section and writes it to
# bench/download/README.md; UPDATE_DOCS=1 also replaces the "Downloads" section of
# docs/BENCHMARKS.md (other sections are kept).
#
#   bash bench/download/run.sh            # dev profile (what the tests build)
#   PROFILE=release bash bench/download/run.sh
#   BIG_MB=256 MANY=50 LAT_FILES=50 bash bench/download/run.sh   # smaller
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-dev}
BIG_MB=${BIG_MB:-1024}
MANY=${MANY:-200}
LATENCY_MS=${LATENCY_MS:-100}
LAT_FILES=${LAT_FILES:-100}
flag=(); [ "$PROFILE" = release ] && flag=(--release)
cargo build -q "${flag[@]}" --bin qlora -p qlora-studio
cargo build -q "${flag[@]}" --bin qlora-hub-testserver -p qlora-hub-testserver
dir=target/debug; [ "$PROFILE" = release ] && dir=target/release
QLORA=$PWD/$dir/qlora
SERVER=$PWD/$dir/qlora-hub-testserver

work=$(mktemp -d)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
  [ -n "${slow_pid:-}" ] && kill "$slow_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root/bench/big" "$work/root/bench/many"
echo '{"model_type": "llama"}' > "$work/root/bench/big/config.json"
head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom > "$work/root/bench/big/model.safetensors"
for i in $(seq -w 1 "$MANY"); do head -c 1048576 /dev/urandom > "$work/root/bench/many/part-$i.bin"; done

"$SERVER" --root "$work/root" > "$work/url" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/url" ] && break; sleep 0.1; done
URL=$(cat "$work/url")
# The server hashes each file once on first sight; do it now so neither client pays for it.
curl -sfI "$URL/bench/big/resolve/main/model.safetensors" > /dev/null
curl -sf "$URL/api/models/bench/many/tree/main?recursive=true" > /dev/null
"$SERVER" --root "$work/root" --latency-ms "$LATENCY_MS" > "$work/slow-url" &
slow_pid=$!
for _ in $(seq 50); do [ -s "$work/slow-url" ] && break; sleep 0.1; done
SLOW=$(cat "$work/slow-url")
curl -sf "$SLOW/api/models/bench/many/tree/main?recursive=true" > /dev/null

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1/1e6/($3-$2):.0f}')"; }

# curl: one process, connection reuse, writing files on the same disk.
t0=$(now); curl -sfL -o "$work/curl-big" "$URL/bench/big/resolve/main/model.safetensors"; t1=$(now)
curl_big=$(mbps "$((BIG_MB * 1048576))" "$t0" "$t1")
cfg="$work/curl.cfg"; : > "$cfg"
for i in $(seq -w 1 "$MANY"); do printf 'url = "%s/bench/many/resolve/main/part-%s.bin"\noutput = "%s/curl-many/part-%s.bin"\n' "$URL" "$i" "$work" "$i" >> "$cfg"; done
mkdir -p "$work/curl-many"
t0=$(now); curl -sfL -K "$cfg"; t1=$(now)
curl_many=$(mbps "$((MANY * 1048576))" "$t0" "$t1"); curl_many_s=$(python3 -c "print(f'{$t1-$t0:.2f}')")
rm -rf "$work/curl-big" "$work/curl-many"

# qlora: into a fresh cache, verifying SHA-256 / git blob ids before linking.
export HF_ENDPOINT=$URL HF_HOME=$work/home
t0=$(now); "$QLORA" download bench/big --cache-dir "$work/cache" > /dev/null 2>&1; t1=$(now)
q_big=$(mbps "$((BIG_MB * 1048576))" "$t0" "$t1")
t0=$(now); "$QLORA" download bench/many --include '*' --cache-dir "$work/cache" > /dev/null 2>&1; t1=$(now)
q_many=$(mbps "$((MANY * 1048576))" "$t0" "$t1"); q_many_s=$(python3 -c "print(f'{$t1-$t0:.2f}')")

# Workers: the many-file repository into a fresh cache each time, without and with latency
# (the first LAT_FILES files only, so one file at a time stays short).
lat_glob=()
for i in $(seq -w 1 "$LAT_FILES"); do lat_glob+=(--include "part-$(printf "%0${#MANY}d" "$((10#$i))").bin"); done
workers_row() { # label endpoint bytes args...
  local label=$1 endpoint=$2 bytes=$3; shift 3
  local row="| $label |"
  for w in 1 4 8; do
    rm -rf "$work/wcache"
    t0=$(now); HF_ENDPOINT=$endpoint "$QLORA" download bench/many "$@" --workers "$w" --cache-dir "$work/wcache" > /dev/null 2>&1; t1=$(now)
    row+=" $(python3 -c "print(f'{$t1-$t0:.2f}')") s ($(mbps "$bytes" "$t0" "$t1") MB/s) |"
  done
  echo "$row"
}
w_plain=$(workers_row "${MANY} files of 1 MiB, no added latency" "$URL" "$((MANY * 1048576))" --include '*')
w_slow=$(workers_row "${LAT_FILES} files of 1 MiB, ${LATENCY_MS} ms before each file's first byte" "$SLOW" "$((LAT_FILES * 1048576))" "${lat_glob[@]}")
rm -rf "$work/wcache"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
section=$(cat <<MD
## Downloads

\`bash bench/download/run.sh\` ($(date -u +%Y-%m-%d), profile \`$PROFILE\`, $(nproc) cores, $cpu). Local Hub test
server on loopback; both clients fetch from the same server in the same run, the files already
in the page cache. \`qlora download\` also hashes every byte (SHA-256 for LFS files, git blob id
otherwise) before linking it into the snapshot; curl only writes.

| case | curl | qlora download (default 4 workers) |
|---|---|---|
| one file, ${BIG_MB} MiB (LFS, through the 302 to the CDN port) | ${curl_big} MB/s | ${q_big} MB/s |
| ${MANY} files of 1 MiB | ${curl_many} MB/s (${curl_many_s} s) | ${q_many} MB/s (${q_many_s} s) |

qlora's time includes its process start, the repo info and tree listing, and the final fsync of
each blob.

Files at once (\`qlora download --workers N\`; 1 is the one-file-at-a-time path of before, 4 the
default, 8 what \`hf download\` uses), same run, a fresh cache each time:

| case | --workers 1 | --workers 4 | --workers 8 |
|---|---|---|---|
${w_plain}
${w_slow}

One run of each, in turn, on a shared 2-core machine (other builds were running): the
numbers move by tens of percent between runs, disk writeback of the large file dominating;
they show the same order of throughput as curl, not a ranking. Added latency is what workers
hide: each file's wait overlaps the others' transfers.
MD
)
printf '# Download benchmark\n\nLast run of `bench/download/run.sh`:\n\n%s\n' "$section" > bench/download/README.md
if [ "${UPDATE_DOCS:-0}" = 1 ]; then
python3 - "$section" <<'PY'
import pathlib, re, sys
p = pathlib.Path("docs/BENCHMARKS.md")
text = p.read_text() if p.exists() else "# Benchmarks\n"
new = sys.argv[1].strip() + "\n"
pat = re.compile(r"^## Downloads\n.*?(?=^## |\Z)", re.S | re.M)
text = pat.sub(lambda m: new + "\n", text) if pat.search(text) else text.rstrip("\n") + "\n\n" + new
p.write_text(text)
PY
fi
echo "$section"

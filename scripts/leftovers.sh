#!/usr/bin/env bash
# What the test suite may leave behind on the host, as root:
#
#   leftovers.sh snapshot          > before   # network namespaces, cgroups and host iptables rules of mirrord now
#   leftovers.sh check MARKER      < before   # fails (and cleans up) when the run left any behind
#
# A process is the suite's when its environment carries MIRRORD_TEST_RUN=MARKER
# (scripts/test.sh sets it for the test run only). Network namespaces
# (mrd-pod-*, mrd-node-*), cgroups (mirrord-test-*) and host iptables rules
# mentioning MIRRORD are the suite's when they were not there before the run.
set -uo pipefail

state() {
  ip netns list 2>/dev/null | awk '$1 ~ /^mrd-/ { print "netns " $1 }'
  for root in /sys/fs/cgroup /sys/fs/cgroup/pids /sys/fs/cgroup/cpu /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/memory /sys/fs/cgroup/unified; do
    [ -d "$root" ] && find "$root" -maxdepth 1 -type d -name 'mirrord-test-*' -printf 'cgroup %p\n'
  done
  if command -v iptables-save >/dev/null 2>&1; then
    for save in iptables-save ip6tables-save; do
      "$save" -t nat 2>/dev/null | grep MIRRORD | sed "s/^/$save /"
    done
  fi
  return 0
}

suite_processes() {
  local marker=$1 environ pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    [ "$pid" = $$ ] && continue
    if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "MIRRORD_TEST_RUN=$marker"; then
      printf '%s %s\n' "$pid" "$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-160)"
    fi
  done
}

case "${1:-}" in
  snapshot) state ;;
  check)
    marker=${2:?usage: leftovers.sh check MARKER < snapshot}
    before=$(cat)
    found=0
    while read -r pid cmd; do
      [ -n "$pid" ] || continue
      echo "left running by the test suite: pid $pid: $cmd" >&2
      kill -KILL "$pid" 2>/dev/null
      found=1
    done < <(suite_processes "$marker")
    while read -r kind what; do
      [ -n "$kind" ] || continue
      grep -qxF "$kind $what" <<<"$before" && continue
      echo "left behind by the test suite: $kind $what" >&2
      found=1
      case "$kind" in
        netns) ip netns del "$what" ;;
        cgroup) find "$what" -depth -type d -exec rmdir {} + 2>/dev/null ;;
      esac
    done < <(state)
    if ((found)); then
      echo "the test suite left the above behind (removed now); a test does not clean up after itself" >&2
      exit 1
    fi
    echo "nothing left behind: no process, network namespace, cgroup or host iptables rule of the suite remains"
    ;;
  *)
    echo "usage: leftovers.sh snapshot | check MARKER" >&2
    exit 2
    ;;
esac
